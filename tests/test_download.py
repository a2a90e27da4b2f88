"""`your-ai download`: Hugging Face sources from local files through `datasets`' streaming path, the Internet
Archive and Chronicling America from a recorded stand-in on 127.0.0.1 (pagination, a 429, a 503, a body cut
short), resume after a kill and in the middle of a page, the record format, and the records through `prepare` and
(slow) `train`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from archive_server import ArchiveServer

from your_ai.data.records import read_records
from your_ai.sources.download import FAILED, UP_TO_DATE, choose_sources, download
from your_ai.sources.http import USER_AGENT, Settings
from your_ai.sources.table import find_source

INTERVAL = 0.05


def write_local_sources(root: Path) -> Path:
    """Small datasets laid out as a mirror would hold them: Parquet for two sources, JSON Lines for one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "wikipedia").mkdir(parents=True)
    pq.write_table(pa.table({
        "id": [str(n) for n in range(8)], "url": [f"https://en.wikipedia.org/wiki?curid={n}" for n in range(8)],
        "title": [f"Article {n}" for n in range(8)],
        "text": [f"Article {n} is an encyclopedia entry about topic {n}; experts agree on its outline." for n in range(8)],
    }), root / "wikipedia" / "train-00000-of-00001.parquet")
    (root / "sciq").mkdir()
    pq.write_table(pa.table({
        "question": [f"What does cell part {n} do?" for n in range(6)], "distractor3": ["x"] * 6,
        "distractor1": ["y"] * 6, "distractor2": ["z"] * 6, "correct_answer": [f"function {n}" for n in range(6)],
        "support": [f"Cell part {n} carries out function {n} in the cell." for n in range(5)] + [""],
    }), root / "sciq" / "train.parquet")
    (root / "logic").mkdir()
    rows = [{"inputs": "", "targets": [], "idx": 6}]
    rows += [{"inputs": f"If all A{n} are B and x is A{n}, is x B?", "targets": ["yes"], "idx": n} for n in range(6)]
    (root / "logic" / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "news").mkdir()
    (root / "news" / "train.csv").write_text("article\nA\n")
    (root / "news" / "more.jsonl").write_text('{"article": "B"}\n')
    return root


@pytest.fixture(scope="module")
def server():
    started = ArchiveServer().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def settings(server, tmp_path_factory):
    return Settings(interval=INTERVAL, retries=3, backoff=0.01, timeout=5, archive_url=server.url,
                    chronam_url=server.url, sources_dir=write_local_sources(tmp_path_factory.mktemp("mirror")))


@pytest.fixture(scope="module")
def downloaded(server, settings, tmp_path_factory):
    """One run over the local Hugging Face sources and the stand-in archives, with faults on the way."""
    server.fault_once("/services/search/v1/scrape", "503")
    server.fault_once("/metadata/item-01", "503")
    server.fault_once("/download/item-02/", "truncated")
    server.fault_once("/search/pages/results/?andtext=&date1=1850&date2=1920&dateFilterType=yearRange&"
                      "language=eng&sort=date&rows=20&page=2", "429")
    server.log.clear()
    output = tmp_path_factory.mktemp("raw")
    names = ["philosophy", "newspapers", "wikipedia", "sciq", "logic", "news"]
    results = download(choose_sources(names), output, limit=6, settings=settings)
    return output, {result.source: result for result in results}, list(server.log)


def test_records_carry_priors_and_provenance_in_the_format_prepare_reads(downloaded):
    output, results, _ = downloaded
    books = read_records(output / "philosophy.jsonl").records
    assert [record.fields["identifier"] for record in books] == ["item-00", "item-01", "item-02", "item-04",
                                                                 "item-05", "item-06"]
    first = books[0].fields
    assert (first["auth_weight"], first["prov_entropy"], first["source"], first["source_type"]) == \
        (0.08, 7.5, "philosophy", "book")
    assert first["year"] == 1850 and first["title"] == "Treatise number 0" and first["url"].endswith("/details/item-00")
    assert first["publisher"] == "Printed for the author" and first["text"].startswith("item-00. Of the nature")
    assert results["philosophy"].skipped == {"no full text": 1} and results["philosophy"].exhausted is False
    pages = read_records(output / "newspapers.jsonl").records
    assert len(pages) == 4 and results["newspapers"].skipped == {"no OCR text": 1}
    assert pages[0].fields["date"] == "1860-01-05" and pages[0].fields["year"] == 1860
    assert pages[0].fields["publisher"] == "S. Medary" and pages[0].fields["url"].startswith("http://127.0.0.1")
    wiki = read_records(output / "wikipedia.jsonl").records
    assert len(wiki) == 6 and wiki[0].fields["title"] == "Article 0" and wiki[0].fields["auth_weight"] == 0.90
    assert wiki[0].fields["url"] == "https://en.wikipedia.org/wiki?curid=0" and wiki[0].metadata["identifier"] == "0"
    sciq = read_records(output / "sciq.jsonl").records
    assert sciq[0].fields["text"] == "Cell part 0 carries out function 0 in the cell.\n\nQuestion: What does cell " \
                                     "part 0 do?\n\nAnswer: function 0"
    logic = read_records(output / "logic.jsonl").records
    assert len(logic) == 6 and logic[0].fields["text"].endswith("is x B?\n\nyes")
    assert results["logic"].skipped == {"no text": 1}
    assert not list(output.glob("*.partial"))


def test_search_pages_retries_and_rate_limit(downloaded):
    _, results, log = downloaded
    paths = [path for _, path, _ in log]
    searches = [path for path in paths if path.startswith("/services/search/v1/scrape")]
    assert len(searches) == 4  # page 1 twice (503), then pages 2 and 3 by their cursors
    assert "cursor=" not in searches[1] and all("cursor=" in path for path in searches[2:])
    assert sum(path.startswith("/metadata/item-01") for path in paths) == 2
    assert sum(path.startswith("/download/item-02/") for path in paths) == 2  # the cut body was asked again
    assert all(agent == USER_AGENT for _, _, agent in log)
    times = [when for when, _, _ in log]  # when each request arrived: its start plus a varying delay
    assert min(later - earlier for earlier, later in zip(times, times[1:])) >= INTERVAL * 0.5
    assert times[-1] - times[0] >= (len(times) - 1) * INTERVAL - 0.02
    limited = [when for when, path, _ in log if path.startswith("/search/pages/results/") and "page=2" in path]
    assert len(limited) == 2 and limited[1] - limited[0] >= 0.95  # Retry-After: 1 honoured
    assert results["newspapers"].status == "fetched" and results["newspapers"].exhausted


def test_a_bad_source_is_reported_and_the_others_go_on(downloaded):
    output, results, _ = downloaded
    assert results["news"].status == FAILED and "several formats" in results["news"].error
    manifest = json.loads((output / "manifest.json").read_text())
    entry = manifest["sources"]["wikipedia"]
    assert entry["records"] == 6 and entry["complete"] and entry["auth_weight"] == 0.90
    assert "CC BY-SA" in entry["licence"] and entry["file"] == "wikipedia.jsonl" and manifest["your_ai_version"]
    assert "news" not in manifest["sources"] and not list(output.glob("news.*"))


def test_a_complete_file_is_kept_and_a_larger_limit_continues_it(downloaded, settings, server):
    output, _, _ = downloaded
    before = (output / "wikipedia.jsonl").read_bytes()
    again = download([find_source("wikipedia")], output, limit=6, settings=settings)[0]
    assert again.status == UP_TO_DATE and (output / "wikipedia.jsonl").read_bytes() == before
    more = download([find_source("wikipedia")], output, limit=20, settings=settings)[0]
    assert (more.fetched, more.records, more.exhausted) == (2, 8, True)
    assert (output / "wikipedia.jsonl").read_bytes().startswith(before)


def run_download(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "your_ai", "download", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def archive_env(server, interval: float = INTERVAL) -> dict:
    return {"YOUR_AI_ARCHIVE_URL": server.url, "YOUR_AI_CHRONAM_URL": server.url, "YOUR_AI_DOWNLOAD_BACKOFF": "0.01",
            "YOUR_AI_DOWNLOAD_INTERVAL": str(interval), "COLUMNS": "200"}


def test_resume_after_a_kill_duplicates_nothing_and_loses_nothing(server, settings, tmp_path):
    env = archive_env(server, interval=0.1)
    process = subprocess.Popen([sys.executable, "-m", "your_ai", "download", "philosophy", "--output", str(tmp_path)],
                               env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "philosophy.state.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text())["records"] >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = tmp_path / "philosophy.jsonl.partial"
    assert partial.exists() and not (tmp_path / "philosophy.jsonl").exists()
    with partial.open("ab") as handle:
        handle.write(b'{"text": "a line cut short by the ki')
    committed = json.loads(state.read_text())["records"]
    server.log.clear()
    result = download([find_source("philosophy")], tmp_path, settings=settings)[0]
    identifiers = [record.fields["identifier"] for record in read_records(tmp_path / "philosophy.jsonl").records]
    assert identifiers == ["item-00", "item-01", "item-02", "item-04", "item-05", "item-06"]
    assert result.fetched == 6 - committed and result.exhausted
    assert not set(items_asked(server)) & set(identifiers[:committed])  # no committed item is fetched again


def items_asked(server) -> list[str]:
    """The identifiers whose metadata the stand-in was asked for, in order."""
    return [path.removeprefix("/metadata/") for _, path, _ in server.log if path.startswith("/metadata/")]


def test_a_resume_in_the_middle_of_a_scrape_page_continues_at_the_next_item(server, settings, tmp_path):
    philosophy = find_source("philosophy")
    first = download([philosophy], tmp_path, limit=4, settings=settings)[0]
    cursor = json.loads((tmp_path / "philosophy.state.json").read_text())["cursor"]
    assert first.records == 4 and cursor["index"] == 2 and cursor["scrape"]  # item-04, the second of page 2
    server.log.clear()
    more = download([philosophy], tmp_path, limit=6, settings=settings)[0]
    search = urllib.parse.urlsplit(server.log[0][1])
    assert search.path == "/services/search/v1/scrape"
    assert urllib.parse.parse_qs(search.query)["cursor"] == [cursor["scrape"]]  # page 2 asked again, by its cursor
    assert items_asked(server) == ["item-05", "item-06"] and (more.fetched, more.records) == (2, 6)
    identifiers = [record.fields["identifier"] for record in read_records(tmp_path / "philosophy.jsonl").records]
    assert identifiers == ["item-00", "item-01", "item-02", "item-04", "item-05", "item-06"]


def test_command_line_summary_list_and_exit_codes(server, tmp_path):
    unreachable = {**archive_env(server), "YOUR_AI_CHRONAM_URL": "http://127.0.0.1:9", "YOUR_AI_DOWNLOAD_RETRIES": "1"}
    mixed = run_download("philosophy", "newspapers", "--limit", "2", "--output", str(tmp_path), env=unreachable)
    assert mixed.returncode == 0, mixed.stderr
    assert "failed" in mixed.stdout and "cannot connect" in mixed.stdout and "fetched" in mixed.stdout
    failing = run_download("newspapers", "--output", str(tmp_path), env=unreachable)
    assert failing.returncode == 1 and "nothing was fetched, and 1 source(s) failed" in failing.stderr
    listed = run_download("--list", "--output", str(tmp_path), env=unreachable)
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if "philosophy" in line)
    assert "2 complete" in row and "0.08" in row
    unknown = run_download("nosuch", env={})
    assert unknown.returncode == 2 and "unknown source 'nosuch'" in unknown.stderr
    bad_setting = run_download("philosophy", "--output", str(tmp_path), env={"YOUR_AI_DOWNLOAD_INTERVAL": "soon"})
    assert bad_setting.returncode == 1
    assert bad_setting.stderr.strip() == "Error: YOUR_AI_DOWNLOAD_INTERVAL='soon' is not a non-negative number"


@pytest.fixture(scope="module")
def prepared(downloaded, tmp_path_factory):
    from your_ai.data.prepare import prepare

    output, _, _ = downloaded
    data = tmp_path_factory.mktemp("data")
    return data, prepare([str(output)], data, workers=1)


def test_downloaded_records_go_through_prepare(prepared):
    data, report = prepared
    assert report.scored == 0 and report.carried > 0  # every record carries its source's priors
    kept = [json.loads(line) for name in ("train.jsonl", "val.jsonl") for line in (data / name).read_text().splitlines()]
    assert {record["source"] for record in kept} >= {"philosophy", "newspapers", "sciq", "logic", "wikipedia"}
    assert all(record["scored"] is False and record["source_type"] for record in kept)


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_model_dir")
def test_downloaded_records_train(prepared, tmp_path):
    data, _ = prepared
    trained = subprocess.run([sys.executable, "-m", "your_ai", "train", "--model", "tiny", "--data", str(data),
                              "--max-steps", "2", "--lora-rank", "4", "--max-seq-length", "32", "--batch-size", "2",
                              "--no-tensorboard", "--output-dir", str(tmp_path / "run")],
                             capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]


def test_a_hugging_face_source_with_the_hub_unreachable_fails_at_once(tmp_path):
    offline = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "",  # nothing there
               "HTTP_PROXY": "", "http_proxy": "", "COLUMNS": "300"}
    started = time.monotonic()
    result = run_download("sciq", "--limit", "2", "--output", str(tmp_path), env=offline)
    assert time.monotonic() - started < 30  # the libraries' own retries would take longer
    assert result.returncode == 1 and "the Hugging Face Hub cannot be reached" in result.stdout
