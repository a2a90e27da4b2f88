"""Sample packing on the CPU: the padding share of unpacked batches, and useful tokens/s packed vs unpacked.

    python bench/packing.py --json-out packing.json

For the demo corpus and a long-tailed synthetic corpus (``gpu_train_smoke.long_tailed_corpus``:
lognormal word counts, median 151 words, 90th percentile 525, a few past --max-seq-length), tokenised
with the `tiny` model's tokenizer as `train` does: the padding share of unpacked batches (each padded
to its longest record) and of packed rows, over the first epoch's order. Then a short real
`your-ai train --model tiny` on each corpus, `--no-packing` and `--packing` alternated
(`--repeats` times each, the best kept), and the useful (non-padding) tokens/s from its metrics file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from gpu_train_smoke import long_tailed_corpus

from your_ai.data.examples import tokenize_record
from your_ai.data.packing import estimate_packing
from your_ai.data.records import read_records
from your_ai.model.load import load_tokenizer
from your_ai.model.resolve import resolve_model
from your_ai.train.args import demo_corpus_path


def token_lengths(path: Path, max_seq_length: int) -> list[int]:
    tokenizer = load_tokenizer(resolve_model("tiny"))
    return [len(tokenize_record(record, tokenizer, max_seq_length)[0]) for record in read_records(path).records]


def padding(path: Path, batch_size: int, max_seq_length: int) -> dict:
    lengths = token_lengths(path, max_seq_length)
    estimate = estimate_packing(lengths, batch_size, max_seq_length, seed=42)
    return {"records": len(lengths), "median_tokens": statistics.median(lengths),
            "truncated": sum(n >= max_seq_length for n in lengths),
            "unpacked_padding": round(estimate.unpacked_padding, 3), "packed_padding": round(estimate.packed_padding, 3),
            "packed_rows": estimate.rows}


def useful_tokens_per_s(path: Path, work: Path, flag: str, args, repeat: int) -> float:
    work = work / f"{path.stem}{flag}-{repeat}"
    work.mkdir()
    metrics = work / "metrics.jsonl"
    command = [sys.executable, "-m", "your_ai", "train", "--model", "tiny", "--data", str(path), "--device", "cpu",
               "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-seq-length",
               str(args.seq_length), "--memory-report-interval", "5", "--save-every", str(10 * args.steps),
               "--metrics-file", str(metrics), "--output-dir", str(work / "out"), "--no-tensorboard", flag]
    subprocess.run(command, check=True, capture_output=True, text=True)
    reports = [json.loads(line) for line in metrics.read_text().splitlines() if '"train"' in line]
    return round(statistics.median(r["tokens_per_second"] for r in reports[1:] or reports), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=6000, help="records of the long-tailed corpus")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20, help="steps of each timed `train` run")
    parser.add_argument("--train-seq-length", type=int, default=512, help="--max-seq-length of the timed runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind, alternated; the best is kept")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="packing-"))
    corpora = {"demo": demo_corpus_path(), "long-tailed": long_tailed_corpus(work / "long-tailed.jsonl", args.records)}
    results = {}
    for name, path in corpora.items():
        results[name] = padding(path, args.batch_size, args.seq_length)
        timed = argparse.Namespace(**{**vars(args), "seq_length": args.train_seq_length})
        for repeat in range(args.repeats):  # alternated, the best of each kept: the CPU may be shared
            for flag in ("--no-packing", "--packing"):
                key = f"useful_tokens_per_s{flag[1:].replace('-', '_')}"
                measured = useful_tokens_per_s(path, work, flag, timed, repeat)
                results[name][key] = max(results[name].get(key, 0.0), measured)
        print(name, json.dumps(results[name]))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
