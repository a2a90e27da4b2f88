"""The tokenized cache: the first run's build against a later run's opening.

Tokenizes a corpus with a model's tokenizer three ways and reports the seconds of each: in memory
(``tokenize_records``, what ``train`` did before the cache), building the cache entry (with
``--workers`` processes) and opening it again (a later run or ``--resume``, the checks included),
then reads every example back. The corpus is the demo corpus, or N synthetic raw documents of
``bench/prepare_throughput.py`` (``--docs``).

    HF_HUB_CACHE=/path/to/hub python bench/token_cache.py --model smollm2-135m
    python bench/token_cache.py --model smollm2-135m --docs 100000 --workers 2

Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from prepare_throughput import generate  # noqa: E402

DEMO = Path(__file__).parents[1] / "src" / "your_ai" / "assets" / "demo_corpus.jsonl"


def measure(data_file: Path, tokenizer, max_seq_length: int, workers: int, cache_dir: Path) -> dict:
    from your_ai.data.examples import tokenize_records
    from your_ai.data.records import read_records
    from your_ai.data.score_cache import read_file_scores
    from your_ai.data.token_cache import CachedExamples, cached_tokens

    records, scores = read_records(data_file).records, read_file_scores(data_file)
    weights, entropies = scores.auth_weights.tolist(), scores.prov_entropies.tolist()
    started = time.perf_counter()
    expected, _ = tokenize_records(records, weights, entropies, tokenizer, max_seq_length)
    in_memory_s = time.perf_counter() - started
    started = time.perf_counter()
    _, built = cached_tokens(cache_dir, data_file, len(records), tokenizer, max_seq_length, workers)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    tokens, reused = cached_tokens(cache_dir, data_file, len(records), tokenizer, max_seq_length, workers)
    open_s = time.perf_counter() - started
    started = time.perf_counter()
    examples = list(CachedExamples(tokens, weights, entropies))
    read_all_s = time.perf_counter() - started
    assert (built.status, reused.status) == ("built", "reused")
    assert examples == expected, "the cache gives other examples than tokenize_records"
    size = sum(path.stat().st_size for path in built.path.iterdir())
    return {"records": len(records), "tokens": int(len(tokens.input_ids)), "cache_mb": size / 2**20,
            "in_memory_s": in_memory_s, "build_s": build_s, "open_s": open_s, "read_all_s": read_all_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="Model whose tokenizer is used (default tiny).")
    parser.add_argument("--docs", type=int, help="Synthetic documents instead of the demo corpus.")
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=1, help="Tokenizing processes of the build (default 1).")
    parser.add_argument("--json", type=Path, default=Path("token_cache.json"), help="Where to write the JSON.")
    args = parser.parse_args(argv)

    from your_ai.model.load import load_tokenizer
    from your_ai.model.resolve import resolve_model

    tokenizer = load_tokenizer(resolve_model(args.model))
    root = Path(tempfile.mkdtemp(prefix="token-cache-bench-"))
    try:
        data_file = DEMO
        if args.docs:
            generate(root / "raw", args.docs, shards=1, carried=1.0)
            data_file = root / "raw" / "raw-00.jsonl"
        row = {"corpus": f"{args.docs} synthetic documents" if args.docs else "demo corpus", "model": args.model,
               "max_seq_length": args.max_seq_length, "workers": args.workers,
               **measure(data_file, tokenizer, args.max_seq_length, args.workers, root / "cache")}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{row['corpus']}: {row['records']} records, {row['tokens']} tokens, cache {row['cache_mb']:.1f} MB | "
          f"in memory {row['in_memory_s']:.2f} s, build {row['build_s']:.2f} s ({args.workers} workers), "
          f"open {row['open_s']:.3f} s, read every example {row['read_all_s']:.2f} s")
    result = {"benchmark": "token_cache", "date": time.strftime("%Y-%m-%d"),
              "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
              "rows": [row]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
