"""How long a run waits for its data, and the memory it takes: the first run against a later one.

Writes N synthetic raw documents (``bench/prepare_throughput.py``'s generator; ``--carried`` of them carry
their own scores, the others are scored), then, each in a fresh process with an empty or a filled
``YOUR_AI_CACHE``, does what ``train`` does before it loads the model: ``read_run_data`` (the records
checked and scored, or their scores loaded from the cache) and ``RunData.tokenize`` (the tokenized cache
built or opened). Reports each process's seconds (the tokenizer loaded before), its peak RSS, and at the end
its anonymous memory and the pages of mapped files (the memory-mapped tokens) it holds (Linux):

- ``first``: an empty cache (the first run on the file);
- ``later``: the cache the first run filled (a later run, or ``--resume``).

    HF_HUB_CACHE=<hub cache with SmolLM2> python bench/run_data.py --docs 200000 --model smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from prepare_throughput import generate  # noqa: E402

CHILD = """
import json, resource, sys, time
started = time.perf_counter()
from your_ai.model.load import load_tokenizer
from your_ai.model.resolve import resolve_model
from your_ai.train.args import TrainingArgs
from your_ai.train.plan import plan_run, read_run_data

tokenizer = load_tokenizer(resolve_model(sys.argv[1]))
imported = time.perf_counter()
args = TrainingArgs(model=sys.argv[1], data=sys.argv[2], output_dir=sys.argv[3], max_seq_length=1024)
notes = []
planned = plan_run(args)
data = read_run_data(planned, notes)
scored = time.perf_counter()
data.tokenize(tokenizer, 1024, notes)
done = time.perf_counter()
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith("Rss"))
print(json.dumps({"records": len(data.train_scores), "scores_s": scored - imported, "tokens_s": done - scored,
                  "total_s": done - imported, "cache": [use.status for use in data.token_caches],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "end_rss_anon_mb": int(status["RssAnon"].split()[0]) / 1024,
                  "end_rss_file_mb": int(status["RssFile"].split()[0]) / 1024}))
"""


def measure(model: str, data_file: Path, root: Path, cache: Path) -> dict:
    environment = {**os.environ, "YOUR_AI_CACHE": str(cache)}
    run = subprocess.run([sys.executable, "-c", CHILD, model, str(data_file), str(root / "out")],
                         capture_output=True, text=True, env=environment)
    if run.returncode != 0:
        sys.exit(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="Model whose tokenizer is used (default tiny).")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--carried", type=float, default=0.2, help="Share of records carrying their own scores.")
    parser.add_argument("--json", type=Path, default=Path("run_data.json"), help="Where to write the JSON.")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="run-data-bench-"))
    try:
        generate(root / "raw", args.docs, shards=1, carried=args.carried)
        data_file = root / "raw" / "raw-00.jsonl"
        rows = [{"run": name, **measure(args.model, data_file, root, root / "cache")} for name in ("first", "later")]
        size_mb = data_file.stat().st_size / 2**20
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.docs} records ({size_mb:.0f} MB), {args.model} tokenizer, {os.cpu_count()} CPUs")
    for row in rows:
        print(f"{row['run']:6} scores {row['scores_s']:7.2f} s  tokens {row['tokens_s']:7.2f} s  "
              f"total {row['total_s']:7.2f} s  peak RSS {row['peak_rss_mb']:7.0f} MB (at the end: "
              f"{row['end_rss_anon_mb']:.0f} MB anonymous, {row['end_rss_file_mb']:.0f} MB mapped files)  {row['cache']}")
    result = {"benchmark": "run_data", "date": time.strftime("%Y-%m-%d"), "docs": args.docs, "file_mb": size_mb,
              "model": args.model, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                               "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
              "rows": rows}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
