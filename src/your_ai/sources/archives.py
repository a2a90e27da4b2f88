"""The public archives: the Internet Archive (its scrape API to list the items of a search, item metadata, the
item's OCR full text) and the Library of Congress's Chronicling America (its JSON page search, whose results carry
the OCR text).

Both walk result pages in a stable order. A page is named by its key (the scrape API's cursor, or Chronicling
America's page number); the fetcher's cursor is that key and the position in the page after the last item handled,
so a resumed download asks for the same page again and carries on after that item.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Iterator

from your_ai.sources.fetched import (
    MAX_TEXT_CHARS,
    MIN_TEXT_CHARS,
    Fetched,
    clip_text,
    make_record,
    year_of,
)
from your_ai.sources.http import Client, FetchError, Settings
from your_ai.sources.table import Source

SCRAPE_COUNT = 1000  # items per scrape page (the API takes 100 to 10,000)
ARCHIVE_FIELDS = ("identifier", "title", "date", "year", "publisher", "creator", "licenseurl")
CHRONAM_ROWS = 20
GONE = (403, 404, 410)  # statuses that skip an item rather than fail its source
TEXT_BYTES = MAX_TEXT_CHARS * 4  # the most of an item's text asked for (a UTF-8 character is at most 4 bytes)


def _pages(first: Any, index: int, fetch_page) -> Iterator[tuple[Any, int, dict]]:
    """(page key, position after the item, item) from item ``index`` of page ``first`` on; ``fetch_page(key)``
    returns (items, the key of the next page or None after the last)."""
    key = first
    while True:
        items, following = fetch_page(key)
        for position in range(index, len(items)):
            yield key, position + 1, items[position]
        if not items or following is None:
            return
        key, index = following, 0


# ---------------------------------------------------------------------------------------- Internet Archive


def archive_scrape_url(settings: Settings, source: Source, cursor: str | None) -> str:
    query = [("q", source.query), ("fields", ",".join(ARCHIVE_FIELDS)), ("count", SCRAPE_COUNT)]
    if cursor:
        query.append(("cursor", cursor))
    return f"{settings.archive_url}/services/search/v1/scrape?{urllib.parse.urlencode(query)}"


def archive_items(source: Source, cursor: dict[str, Any], settings: Settings, client: Client) -> Iterator[Fetched]:
    """The Internet Archive items matching ``source.query``, each as its full text and metadata. ``cursor``:
    ``scrape``, the scrape cursor that asked for the page (None for the first), and ``index``, its items handled."""
    def fetch_page(scrape: str | None):
        answer = client.get_json(archive_scrape_url(settings, source, scrape))
        where = f"{settings.archive_url}/services/search/v1/scrape"
        if isinstance(answer, dict) and answer.get("error"):
            raise FetchError(f"{where}: {answer['error']}")
        if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
            raise FetchError(f"{where}: unexpected answer (no items)")
        return answer["items"], answer.get("cursor") or None

    for scrape, index, doc in _pages(cursor.get("scrape"), cursor.get("index", 0), fetch_page):
        yield archive_item(source, doc, {"scrape": scrape, "index": index}, settings, client)


def archive_item(source: Source, doc: dict, cursor: dict, settings: Settings, client: Client) -> Fetched:
    identifier = doc.get("identifier")
    if not identifier:
        return Fetched(cursor, skipped="no identifier")
    quoted = urllib.parse.quote(identifier, safe="")
    try:
        item = client.get_json(f"{settings.archive_url}/metadata/{quoted}")
        item = item if isinstance(item, dict) else {}
        files = [entry for entry in item.get("files", []) if isinstance(entry, dict)]
        text_file = next((entry.get("name") for entry in files if entry.get("format") == "DjVuTXT"), None) \
            or next((entry["name"] for entry in files if str(entry.get("name")).endswith("_djvu.txt")), None)
        if not text_file:
            return Fetched(cursor, skipped="no full text")
        body = client.get(f"{settings.archive_url}/download/{quoted}/{urllib.parse.quote(text_file)}",
                          headers={"Range": f"bytes=0-{TEXT_BYTES - 1}"})
    except FetchError as error:
        if error.status in GONE:  # this item is not there (any more): the next one may be
            return Fetched(cursor, skipped="item not available")
        raise
    text = clip_text(body.decode("utf-8", errors="replace"))
    if len(text) < MIN_TEXT_CHARS:
        return Fetched(cursor, skipped="text too short")
    metadata = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
    value = {**doc, **metadata}.get
    return Fetched(cursor, make_record(
        source, text, year=year_of(value("year"), value("date")), date=_first(value("date")),
        identifier=identifier, url=f"{settings.archive_url}/details/{identifier}",
        title=_first(value("title")), publisher=value("publisher") or None, creator=value("creator"),
        licence=value("licenseurl"),
    ))


def _first(value):
    return value[0] if isinstance(value, list) and value else value


# --------------------------------------------------------------------------------------- Chronicling America


def chronam_search_url(settings: Settings, source: Source, page: int) -> str:
    first, last = source.years
    query = [("andtext", ""), ("date1", first), ("date2", last), ("dateFilterType", "yearRange"),
             ("language", "eng"), ("sort", "date"), ("rows", CHRONAM_ROWS), ("page", page), ("format", "json")]
    return f"{settings.chronam_url}/search/pages/results/?{urllib.parse.urlencode(query)}"


def chronam_pages(source: Source, cursor: dict[str, Any], settings: Settings, client: Client) -> Iterator[Fetched]:
    """Newspaper pages from ``source.years``, each as its OCR text and the paper's metadata."""
    def fetch_page(page: int):
        answer = client.get_json(chronam_search_url(settings, source, page))
        if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
            raise FetchError(f"{settings.chronam_url}/search/pages/results/: unexpected answer (no items)")
        items = answer["items"]
        return items, page + 1 if int(answer.get("endIndex", 0)) < int(answer.get("totalItems", 0)) else None

    for page, index, item in _pages(cursor.get("page", 1), cursor.get("index", 0), fetch_page):
        yield chronam_page(source, item, {"page": page, "index": index}, settings)


def chronam_page(source: Source, item: dict, cursor: dict, settings: Settings) -> Fetched:
    text = clip_text(item.get("ocr_eng") or "")
    if len(text) < MIN_TEXT_CHARS:
        return Fetched(cursor, skipped="no OCR text" if not text else "text too short")
    page_id = item.get("id") or ""
    date = str(item.get("date") or "")
    return Fetched(cursor, make_record(
        source, text, year=year_of(date), date=f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 else date,
        identifier=page_id or None, url=f"{settings.chronam_url}{page_id}" if page_id else item.get("url"),
        title=item.get("title"), publisher=item.get("publisher"), place=item.get("place_of_publication"),
    ))
