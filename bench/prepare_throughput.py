"""Throughput and peak memory of ``your-ai prepare`` on synthetic raw documents.

Generates N raw JSONL documents (patents, lab notebooks, reports, news, blog posts, press
releases, encyclopedia articles; about 5% exact and 5% near duplicates; 20% carrying their
own scores) into a temporary directory, runs ``python -m your_ai prepare`` on them in a
child process, and reports documents per second (wall time of the child, interpreter start
included), documents per CPU-second of the child and its scoring processes (less sensitive
to other load on the machine) and the child's peak resident memory (``os.wait4`` rusage).
It also times the citation scorer alone, in this process, on the documents that prepare scores
(CPU milliseconds per document, the best of three passes over up to 5,000 of them).

    python bench/prepare_throughput.py                     # 100,000 documents
    python bench/prepare_throughput.py --docs 100000 1000000 --json prepare_throughput.json
    python bench/prepare_throughput.py --docs 1000000 --carried 1.0   # the pipeline without the scorer

Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = [
    # template, source_type, years, source
    ("US Patent {n} filed in {year}. The inventor describes an apparatus for {topic}; the original manuscript "
     "and drawings are kept in the archive.", "patent", (1880, 1965), None),
    ("Lab notebook entry, {year}. Measurements of {topic} recorded by hand during experiment {n}; "
     "a photograph and a scan of the page are attached.", "lab_notebook", (1920, 1968), None),
    ("Technical report {n} ({year}) of the university laboratory on {topic}, with data tables and "
     "references (Smith et al., 1979) [1] [2].", "report", (1970, 1995), "university"),
    ("News article from {year} on {topic}: the local council discussed report {n} at its meeting.",
     "news", (1972, 1994), "newspaper"),
    ("My blog post {n} about {topic}, written in {year} after reading a few articles.", "blog", (2005, 2024), None),
    ("The WHO announced in {year} that experts agree the scientific consensus on {topic} is clear; "
     "studies show the guidance {n} is widely accepted.", "press_release", (2010, 2025), "WHO"),
    ("{topic} (article {n}) is widely accepted as described on Wikipedia in {year}; experts agree [1] [2] [3].",
     "encyclopedia", (2005, 2025), "Wikipedia"),
]
TOPICS = ["soil chemistry", "radio valves", "vitamin D", "crop rotation", "steam boilers", "water purity",
          "bridge loads", "insulin", "glass annealing", "tidal records", "seed storage", "lead paint"]
FILLER = ("the of and a to in is was for on that by with as at from this which were be are an or it has had "
          "sample value method result table figure note record page volume series measured observed").split()


def generate(directory: Path, docs: int, seed: int = 0, shards: int = 4, carried: float = 0.2) -> dict:
    """Write ``docs`` raw documents into ``shards`` JSONL files; returns what was written.

    ``carried`` is the share of new documents that carry their own scores (not scored by prepare)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    handles = [(directory / f"raw-{i:02d}.jsonl").open("w", encoding="utf-8") for i in range(shards)]
    recent: list[dict] = []
    counts = {"exact": 0, "near": 0, "carried": 0}
    size = 0
    try:
        for n in range(docs):
            roll = rng.random()
            if recent and roll < 0.05:
                record = dict(rng.choice(recent))
                counts["exact"] += 1
            elif recent and roll < 0.10:
                record = dict(rng.choice(recent))
                record["text"] = record["text"].upper().replace(".", " !")
                counts["near"] += 1
            else:
                template, source_type, (first, last), source = rng.choice(KINDS)
                year = rng.randint(first, last)
                body = template.format(n=n, year=year, topic=rng.choice(TOPICS))
                filler = " ".join(rng.choices(FILLER, k=rng.randint(40, 160)))
                record = {"text": f"{body} {filler}.", "year": year, "source_type": source_type,
                          "identifier": f"doc-{n}"}
                if source:
                    record["source"] = source
                if rng.random() < carried:
                    record["auth_weight"] = round(rng.uniform(0.0, 0.99), 4)
                    record["prov_entropy"] = round(rng.uniform(0.0, 9.0), 4)
                    counts["carried"] += 1
                if len(recent) < 5000:
                    recent.append(record)
                else:
                    recent[rng.randrange(len(recent))] = record
            line = json.dumps(record) + "\n"
            size += len(line)
            handles[n % shards].write(line)
    finally:
        for handle in handles:
            handle.close()
    return {**counts, "bytes": size}


def scorer_cpu_ms(raw_dir: Path, sample: int = 5000, repeats: int = 3) -> float:
    """CPU milliseconds per document of ``score_document`` on up to ``sample`` documents that carry no scores."""
    from your_ai.objective.scoring import score_document
    from your_ai.objective.scoring_rules import METADATA_FIELDS

    documents = []
    for path in sorted(raw_dir.glob("*.jsonl")):
        for line in path.open(encoding="utf-8"):
            record = json.loads(line)
            if "auth_weight" not in record and len(documents) < sample:
                documents.append((record["text"], {key: record[key] for key in METADATA_FIELDS if key in record}))
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for text, metadata in documents:
            score_document(text, metadata)
        best = min(best, time.process_time() - started)
    return 1000 * best / max(1, len(documents))


def run_prepare(raw_dir: Path, out_dir: Path, workers: int | None = None) -> dict:
    """Run ``python -m your_ai prepare`` as a child; wall time, peak RSS and its JSON report.

    The peak RSS is the largest of the child and its scoring processes (``os.wait4``)."""
    command = [sys.executable, "-m", "your_ai", "prepare", "--input", str(raw_dir), "--output", str(out_dir),
               "--json"]
    if workers is not None:
        command += ["--workers", str(workers)]
    stdout = tempfile.TemporaryFile()
    stderr = tempfile.TemporaryFile()
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=stdout, stderr=stderr)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    stdout.seek(0)
    stderr.seek(0)
    output, errors = stdout.read().decode(), stderr.read().decode()
    if child.returncode != 0:
        raise SystemExit(f"prepare failed with exit code {child.returncode}:\n{errors[-4000:]}")
    # ru_maxrss is in kilobytes on Linux, in bytes on macOS.
    peak_bytes = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    return {"command": command, "wall_s": wall, "peak_rss_mb": peak_bytes / 2**20,
            "cpu_s": usage.ru_utime + usage.ru_stime, "report": json.loads(output)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[100_000], help="Document counts to run (default 100000).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic documents.")
    parser.add_argument("--carried", type=float, default=0.2,
                        help="Share of documents that carry their scores (default 0.2; 1.0 measures the pipeline "
                             "without the scorer).")
    parser.add_argument("--workdir", type=Path, help="Where to put the documents (default: a temporary directory).")
    parser.add_argument("--workers", type=int, help="Scoring processes for prepare (default: its own, all CPUs).")
    parser.add_argument("--keep", action="store_true", help="Keep the generated documents and outputs.")
    parser.add_argument("--json", type=Path, default=Path("prepare_throughput.json"), help="Where to write the JSON.")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="prepare-bench-", dir=args.workdir))
    rows = []
    try:
        for docs in args.docs:
            raw_dir, out_dir = root / f"raw-{docs}", root / f"out-{docs}"
            started = time.perf_counter()
            generated = generate(raw_dir, docs, args.seed, carried=args.carried)
            generate_s = time.perf_counter() - started
            result = run_prepare(raw_dir, out_dir, args.workers)
            report = result.pop("report")
            row = {
                "docs": docs,
                "workers": args.workers or "all CPUs",
                "carried_share": args.carried,
                "input_mb": generated["bytes"] / 2**20,
                "generate_s": generate_s,
                **result,
                "docs_per_s": docs / result["wall_s"],
                "docs_per_cpu_s": docs / result["cpu_s"],
                "scorer_cpu_ms_per_doc": scorer_cpu_ms(raw_dir),
                "duplicates": report["exact_duplicates"] + report["near_duplicates"],
                "scored": report["scored"],
                "carried": report["carried"],
                "train": report["train"],
                "val": report["val"],
                "balance": report["balance"]["message"],
            }
            rows.append(row)
            print(f"{docs} documents: {row['docs_per_s']:.0f} docs/s, peak RSS {row['peak_rss_mb']:.0f} MB",
                  file=sys.stderr, flush=True)
            if not args.keep:
                shutil.rmtree(raw_dir)
                shutil.rmtree(out_dir)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"{'docs':>9} {'input MB':>9} {'wall s':>8} {'cpu s':>8} {'docs/s':>8} {'docs/cpu-s':>10} "
          f"{'peak RSS MB':>12} {'dups':>8} {'scored':>8} {'train':>8} {'val':>7} {'scorer ms/doc':>13}")
    for row in rows:
        print(f"{row['docs']:>9} {row['input_mb']:>9.1f} {row['wall_s']:>8.1f} {row['cpu_s']:>8.1f} "
              f"{row['docs_per_s']:>8.0f} {row['docs_per_cpu_s']:>10.0f} {row['peak_rss_mb']:>12.0f} "
              f"{row['duplicates']:>8} {row['scored']:>8} {row['train']:>8} {row['val']:>7} "
              f"{row['scorer_cpu_ms_per_doc']:>13.3f}")
    result = {
        "benchmark": "prepare_throughput",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
