"""A short `your-ai train` run of a random-weight model of a preset's real shape, on a GPU.

    python bench/gpu_train_smoke.py --preset hermes-mistral-7b --steps 30
    python bench/gpu_train_smoke.py --extra "--step-mode small" --extra "--step-mode small --compile"

Builds the preset's exact architecture with random weights (bf16), saves it with the tiny
model's tokenizer (token ids < 2048 are valid in every preset's vocabulary) into a temporary
directory, then runs the real CLI (`your-ai train --model DIR ...`) on the demo corpus and
reports step time, tokens/s and peak memory from the run's metrics file, once for each
`--extra` set of flags (the same model directory). Prints a table and writes JSON (`--json-out`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_model_dir(preset_name: str, target: Path) -> float:
    import torch

    from your_ai.model.resolve import build_random_model, tiny_assets_dir
    from your_ai.model.presets import get_preset

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hermes-mistral-7b")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--lora-layers", type=int, default=16)
    parser.add_argument("--extra", action="append", help="extra flags for `your-ai train`, e.g. '--grad-checkpoint'; "
                        "repeat it to train once per set")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--data", type=Path, help="training JSONL (default: long documents made by joining "
                        "demo-corpus texts, so that every sample fills --seq-length)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    model_dir = work / args.preset
    build_seconds = build_model_dir(args.preset, model_dir)
    data = args.data or long_documents(work / "long.jsonl", count=64)
    results = [train_once(args, model_dir, data, work, extra, build_seconds) for extra in args.extra or [""]]
    print(f"{'preset':20} {'flags':32} {'tokens/s':>10} {'peak GB':>8} {'loss':>8} {'wall s':>7}")
    for result in results:
        print(f"{args.preset:20} {result['extra_flags']:32} {result['median_tokens_per_s']:>10} "
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
        "median_tokens_per_s": round(statistics.median(r["tokens_per_second"] for r in later), 1),
        "peak_memory_gb": round(max(r.get("peak_memory_gb", 0.0) for r in steps), 2),
        "final_loss": steps[-1].get("loss"),
        "reports": steps,
    }
    result["median_step_time_s"] = round(args.batch_size * args.seq_length / result["median_tokens_per_s"], 3)
    return result


if __name__ == "__main__":
    main()
