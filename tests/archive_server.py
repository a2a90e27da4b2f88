"""A stand-in for the Internet Archive and Chronicling America on 127.0.0.1: their search (the Internet Archive's
scrape API, paged by cursor), metadata and full-text answers in the real formats, served from a few recorded items,
with faults served once each on request (a 429 with Retry-After, a 503, a body cut short)."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

PAGE_ROWS = 3  # items per search page, whatever rows= or count= asks (so that a few items span several pages)
SCRAPE_MIN_COUNT = 100  # the scrape API's least count=
BOOK = ("Of the nature of things. It is the business of the natural philosopher to observe, to measure and to "
        "record what he sees, and to set down the experiment as he made it, with every reading in its place. ")


def archive_items(count: int = 7, without_text: tuple[str, ...] = ("item-03",)) -> dict[str, dict]:
    items = {}
    for number in range(count):
        identifier = f"item-{number:02d}"
        year = 1850 + number
        items[identifier] = {
            "doc": {"identifier": identifier, "title": f"Treatise number {number}", "date": f"{year}-01-01T00:00:00Z",
                    "year": str(year), "publisher": "Printed for the author", "creator": ["Anonymous"]},
            "text": f"{identifier}. " + BOOK * 3 + f"London, {year}.",
            "has_text": identifier not in without_text,
        }
    return items


def newspaper_pages(count: int = 5, blank: tuple[int, ...] = (2,)) -> list[dict]:
    pages = []
    for number in range(count):
        date = f"18{60 + number}0105"
        pages.append({
            "sequence": 1, "county": ["Franklin"], "edition": None, "frequency": "Weekly",
            "id": f"/lccn/sn8400{number}/{date[:4]}-01-05/ed-1/seq-1/", "subject": [], "city": ["Columbus"],
            "date": date, "title": f"The Columbus gazette {number}. [volume]", "end_year": 1922,
            "note": [], "state": ["Ohio"], "section_label": "", "type": "page",
            "place_of_publication": "Columbus, Ohio", "start_year": 1850, "edition_label": "",
            "publisher": "S. Medary", "language": ["English"], "alt_title": [], "lccn": f"sn8400{number}",
            "country": "Ohio", "ocr_eng": "" if number in blank else f"LOCAL NEWS {number}. " + BOOK * 2,
            "batch": "ohi_ariel_ver01", "title_normal": "columbus gazette.",
            "url": f"https://chroniclingamerica.loc.gov/lccn/sn8400{number}/{date[:4]}-01-05/ed-1/seq-1.json",
            "place": ["Ohio--Franklin--Columbus"], "page": "",
        })
    return pages


class ArchiveServer:
    """``start()`` it; ``url`` is its address. ``faults`` maps a request path (with its query) to the faults
    still to serve, first first: "429", "503" or "truncated". ``log`` holds (time, path, user agent)."""

    def __init__(self):
        self.items = archive_items()
        self.pages = newspaper_pages()
        self.faults: dict[str, list[str]] = {}
        self.log: list[tuple[float, str, str]] = []
        self.delay = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.log.append((time.monotonic(), self.path, self.headers.get("User-Agent", "")))
                if server.delay:
                    time.sleep(server.delay)
                server.answer(self)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> ArchiveServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fault_once(self, path_start: str, *faults: str) -> None:
        self.faults[path_start] = list(faults)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        for start, faults in self.faults.items():
            if handler.path.startswith(start) and faults:
                return self._fault(handler, faults.pop(0), self._body(handler.path)[1])
        status, body = self._body(handler.path)
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _fault(self, handler, fault: str, body: bytes) -> None:
        if fault == "truncated":
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body[: len(body) // 2])
            handler.close_connection = True
            return
        handler.send_response(int(fault))
        if fault == "429":
            handler.send_header("Retry-After", "1")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _body(self, path: str) -> tuple[int, bytes]:
        parts = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(parts.query)
        page = int(query.get("page", ["1"])[0])
        if parts.path == "/services/search/v1/scrape":
            return self._archive_scrape(query)
        if parts.path.startswith("/metadata/"):
            identifier = urllib.parse.unquote(parts.path.removeprefix("/metadata/"))
            return (200, json.dumps(self._metadata(identifier)).encode()) if identifier in self.items else (200, b"{}")
        if parts.path.startswith("/download/"):
            identifier, name = parts.path.removeprefix("/download/").split("/", 1)
            item = self.items.get(identifier)
            if item and item["has_text"] and name == f"{identifier}_djvu.txt":
                return 200, item["text"].encode()
            return 404, b"not found"
        if parts.path == "/search/pages/results/":
            return 200, json.dumps(self._chronam_search(page)).encode()
        return 404, b"not found"

    def _archive_scrape(self, query) -> tuple[int, bytes]:
        """A page of the scrape API: the items after the cursor's identifier, and a cursor unless it is the last."""
        count = int(query.get("count", ["5000"])[0])
        if count < SCRAPE_MIN_COUNT:
            return 400, json.dumps({"error": f"count must be at least {SCRAPE_MIN_COUNT}"}).encode()
        fields = query.get("fields", ["identifier"])[0].split(",")
        docs = [item["doc"] for _, item in sorted(self.items.items())]
        cursor = query.get("cursor", [""])[0]
        if cursor:
            after = json.loads(base64.urlsafe_b64decode(cursor))["after"]
            docs = [doc for doc in docs if doc["identifier"] > after]
        page = [{name: doc[name] for name in fields if name in doc} for doc in docs[:PAGE_ROWS]]
        answer = {"items": page, "count": len(page), "total": len(docs)}
        if len(docs) > PAGE_ROWS:
            answer["cursor"] = base64.urlsafe_b64encode(json.dumps({"after": page[-1]["identifier"]}).encode()).decode()
        return 200, json.dumps(answer).encode()

    def _metadata(self, identifier: str) -> dict:
        item = self.items[identifier]
        files = [{"name": f"{identifier}.pdf", "source": "original", "format": "Text PDF", "size": "91234"},
                 {"name": f"{identifier}_meta.xml", "source": "original", "format": "Metadata"}]
        if item["has_text"]:
            files.append({"name": f"{identifier}_djvu.txt", "source": "derivative", "format": "DjVuTXT",
                          "original": f"{identifier}_djvu.xml", "size": str(len(item["text"]))})
        doc = item["doc"]
        return {"created": 1700000000, "d1": "ia800100.us.archive.org", "dir": f"/7/items/{identifier}",
                "files": files, "files_count": len(files), "item_last_updated": 1600000000, "item_size": 123456,
                "metadata": {"identifier": identifier, "mediatype": "texts", "collection": ["americana"],
                             "title": doc["title"], "creator": "Anonymous", "date": doc["year"],
                             "publisher": doc["publisher"], "language": "eng",
                             "licenseurl": "https://creativecommons.org/publicdomain/mark/1.0/"},
                "server": "ia800100.us.archive.org", "uniq": 123, "workable_servers": ["ia800100.us.archive.org"]}

    def _chronam_search(self, page: int) -> dict:
        start = (page - 1) * PAGE_ROWS
        items = self.pages[start:start + PAGE_ROWS]
        return {"totalItems": len(self.pages), "endIndex": start + len(items), "startIndex": start + 1,
                "itemsPerPage": PAGE_ROWS, "items": items}
