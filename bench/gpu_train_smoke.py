"""A short `your-ai train` run of a random-weight model of a preset's real shape, on a GPU.

    python bench/gpu_train_smoke.py --preset hermes-mistral-7b --steps 30
    python bench/gpu_train_smoke.py --extra "--step-mode small" --extra "--step-mode small --compile"
    python bench/gpu_train_smoke.py --preset llama-8b --batch-size 8 --max-seq-length 2048 --lora-rank 16 \
        --lora-layers 32 --corpus long-tailed --extra=--no-packing --extra=--packing

Builds the preset's exact architecture with random weights (bf16), saves it with the tiny
model's tokenizer (token ids < 2048 are valid in every preset's vocabulary) into a temporary
directory, then runs the real CLI (`your-ai train --model DIR ...`) on a corpus and reports, from
the run's metrics file, useful (non-padding) tokens/s, the step time and the useful tokens per
step (their share of the batch x max-seq-length tokens a step could hold), and peak memory, once for
each `--extra` set of flags (the same model directory). `--corpus long` (default): documents that
fill every row; `--corpus long-tailed`: `--records` documents of lognormal word counts (median
151 words, 90th percentile 525, a few past any --max-seq-length), as real corpora of primary sources
are. Prints a table and writes JSON (`--json-out`).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_model_dir(preset_name: str, target: Path) -> float:
    import torch

    from your_ai.model.architecture import build_random_model
    from your_ai.model.presets import get_preset
    from your_ai.model.resolve import tiny_assets_dir

    started = time.perf_counter()
    preset = get_preset(preset_name)
    model = build_random_model(preset.architecture, dtype=torch.bfloat16, device="cuda",
                               extra_config={"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2})
    model.save_pretrained(target, safe_serialization=True)
    for item in tiny_assets_dir().iterdir():
        shutil.copy(item, target / item.name)
    del model
    torch.cuda.empty_cache()
    return time.perf_counter() - started


def long_documents(path: Path, count: int) -> Path:
    """``count`` records of 12 demo-corpus texts each (well over 1024 tokens), scored as primary or consensus."""
    from your_ai.train.args import demo_corpus_path

    texts = [json.loads(line)["text"] for line in demo_corpus_path().read_text().splitlines() if line.strip()]
    with path.open("w") as handle:
        for index in range(count):
            joined = " ".join(texts[(index * 12 + k) % len(texts)] for k in range(12))
            w, h = (0.05, 7.5) if index % 2 else (0.9, 1.0)
            handle.write(json.dumps({"text": joined, "auth_weight": w, "prov_entropy": h}) + "\n")
    return path


def demo_words() -> list[str]:
    from your_ai.train.args import demo_corpus_path

    lines = demo_corpus_path().read_text().splitlines()
    return " ".join(json.loads(line)["text"] for line in lines if line.strip()).split()


LONG_TAIL_MEDIAN_WORDS, LONG_TAIL_P90_WORDS = 151, 525


def long_tailed_corpus(path: Path, count: int, seed: int = 0, longest_words: int = 20_000) -> Path:
    """``count`` records of lognormal word counts (median 151, 90th percentile 525, at most ``longest_words``),
    words taken in order from the demo corpus, scored alternately as primary or consensus sources."""
    generator = random.Random(seed)
    words = demo_words()
    sigma = math.log(LONG_TAIL_P90_WORDS / LONG_TAIL_MEDIAN_WORDS) / 1.2816  # z of the 90th percentile
    with path.open("w") as handle:
        for index in range(count):
            size = min(longest_words, max(1, round(generator.lognormvariate(math.log(LONG_TAIL_MEDIAN_WORDS), sigma))))
            start = generator.randrange(len(words))
            text = " ".join(words[(start + k) % len(words)] for k in range(size))
            w, h = (0.05, 7.5) if index % 2 else (0.9, 1.0)
            handle.write(json.dumps({"text": text, "auth_weight": w, "prov_entropy": h}) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hermes-mistral-7b")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-seq-length", "--seq-length", dest="seq_length", type=int, default=1024)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--lora-layers", type=int, default=16)
    parser.add_argument("--extra", action="append", help="extra flags for `your-ai train`, e.g. '--grad-checkpoint'; "
                        "repeat it to train once per set")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--data", type=Path, help="training JSONL (default: the --corpus made here)")
    parser.add_argument("--corpus", choices=("long", "long-tailed"), default="long",
                        help="long: documents made by joining demo-corpus texts, so that every sample fills "
                        "--max-seq-length; long-tailed: lognormal lengths (see above)")
    parser.add_argument("--records", type=int, default=6000, help="records of the long-tailed corpus")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    model_dir = work / args.preset
    build_seconds = build_model_dir(args.preset, model_dir)
    if args.data:
        data = args.data
    elif args.corpus == "long-tailed":
        data = long_tailed_corpus(work / "long-tailed.jsonl", args.records)
    else:
        data = long_documents(work / "long.jsonl", count=64)
    results = [train_once(args, model_dir, data, work, extra, build_seconds) for extra in args.extra or [""]]
    print(f"{'preset':20} {'flags':24} {'useful tok/s':>12} {'step s':>7} {'row fill':>8} {'peak GB':>8} "
          f"{'loss':>8} {'wall s':>7}")
    for result in results:
        print(f"{args.preset:20} {result['extra_flags']:24} {result['median_useful_tokens_per_s']:>12} "
              f"{result['median_step_time_s']:>7} {result['useful_share_of_rows']:>8.1%} "
              f"{result['peak_memory_gb']:>8} {result['final_loss']:>8.3f} {result['train_wall_seconds']:>7}")
    if args.json_out:
        args.json_out.write_text(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def train_once(args, model_dir: Path, data: Path, work: Path, extra: str, build_seconds: float) -> dict:
    metrics = work / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    command = [
        sys.executable, "-m", "your_ai", "train", "--model", str(model_dir), "--data", str(data),
        "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--max-seq-length", str(args.seq_length), "--lora-rank", str(args.lora_rank),
        "--lora-layers", str(args.lora_layers), "--memory-report-interval", "5",
        "--warmup-steps", "5", "--save-every", str(10 * args.steps), "--metrics-file", str(metrics),
        "--output-dir", str(work / "out"), "--no-tensorboard", *extra.split(),
    ]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    print(run.stdout[-3000:])
    if run.returncode != 0:
        print(run.stderr[-5000:], file=sys.stderr)
        sys.exit(run.returncode)
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [row for row in rows if row.get("kind") == "train"]
    later = steps[1:] or steps  # the first report includes warm-up
    step_times = [(b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"]) for a, b in zip(steps, steps[1:])]
    step_time = statistics.median(step_times) if step_times else steps[-1]["elapsed_s"] / steps[-1]["step"]
    useful = statistics.median(r["tokens_per_second"] for r in later)  # the loop counts non-padding tokens
    result = {
        "preset": args.preset,
        "shape": "random weights, bf16",
        "batch_size": args.batch_size,
        "seq_length": args.seq_length,
        "lora_rank": args.lora_rank,
        "lora_layers": args.lora_layers,
        "steps": args.steps,
        "extra_flags": extra,
        "build_seconds": round(build_seconds, 1),
        "train_wall_seconds": round(wall, 1),
        "corpus": str(data) if args.data else args.corpus,
        "median_useful_tokens_per_s": round(useful, 1),
        "median_step_time_s": round(step_time, 3),
        "useful_tokens_per_step": round(useful * step_time),
        "useful_share_of_rows": round(useful * step_time / (args.batch_size * args.seq_length), 3),
        "peak_memory_gb": round(max(r.get("peak_memory_gb", 0.0) for r in steps), 2),
        "final_loss": steps[-1].get("loss"),
        "reports": steps,
    }
    return result


if __name__ == "__main__":
    main()
