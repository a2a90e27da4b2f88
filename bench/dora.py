"""DoRA against LoRA: step time and peak memory of one training step on the same shape, one JSON line each.

    python bench/dora.py                                  # configs S and T (bench/gpu_lora.py) on CUDA
    python bench/dora.py --configs S --custom llama-8b:4:2048:16:32
    python bench/dora.py --smoke                          # the tiny model, 2 x 64 tokens, on the CPU

Random weights of the preset's real shape (``load_for_training(..., synthetic=True)``, bf16 on CUDA), adapters
on q/k/v/o of the last N layers, AdamW on the adapters (``train.build_optimizer``), the distrust-weighted
objective (``train.compute_loss``) on a random batch (``gpu_lora.make_batch``). Variants:

  lora        LoRA in the plain step (the Hugging Face forward through the full logits)
  dora        DoRA in the plain step, the step a DoRA run trains in
  lora-fast   LoRA in the fast step (nothing recomputed, the chunked head): what a LoRA run gets by default

Each variant runs in a fresh process of this script (``--run-one``), so each peak is its own: the device's
peak (CUDA ``max_memory_reserved``, with ``max_memory_allocated`` beside it) or, on the CPU, the process's
peak RSS (``step.memory.PeakMemory``), from before the model is built. Timing: --warmup steps, then --steps
timed steps (synchronized on CUDA); the median step time and tokens/s. Each line also carries the memory
estimate of that step (``step.modes.mode_estimate``) and ``dora_over_lora`` ratios on the dora line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from gpu_lora import (  # noqa: E402
    CONFIGS,
    SMOKE,
    BenchConfig,
    environment,
    make_batch,
    objective_for,
    parse_custom,
    synchronize,
)

VARIANTS = ("lora", "dora", "lora-fast")
GB = 1e9


def spec(config: BenchConfig) -> str:
    return f"{config.preset}:{config.batch_size}:{config.seq_length}:{config.lora_rank}:{config.lora_layers}"


def run_one(config: BenchConfig, variant: str, device: str, warmup: int, steps: int) -> dict:
    """Build the model for ``variant`` and time its steps (in this process, which does nothing else)."""
    import torch

    from your_ai.model.architecture import architecture_from_config
    from your_ai.model.lora import LoraSettings
    from your_ai.step import fast as fast_step
    from your_ai.step.memory import PeakMemory, StepShape
    from your_ai.step.modes import mode_estimate, mode_with, plain_mode
    from your_ai.train.loss import compute_loss
    from your_ai.train.setup import build_optimizer, load_for_training

    if device == "cpu":
        torch.set_num_threads(1)  # a CPU smoke run checks the script, not the speed
    dora = variant == "dora"
    peak = PeakMemory(device)
    peak.reset()
    loaded = load_for_training(config.preset, LoraSettings(rank=config.lora_rank, layers=config.lora_layers,
                                                           dora=dora), device, synthetic=True)
    model = loaded.model
    model.train()
    shape = StepShape(architecture_from_config(model.config.to_dict()), config.batch_size, config.seq_length,
                      config.lora_rank, config.lora_layers, device, dora=dora)
    mode = mode_with(shape, 0) if variant == "lora-fast" else plain_mode(shape)
    if variant == "lora-fast":
        fast_step.prepare_step(model, mode)
    optimizer = build_optimizer(model, 1e-5)
    batch = make_batch(config, device)
    objective = objective_for(batch)
    chunk = mode.chunk_tokens or None

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss(model, batch, objective, fast_head=chunk is not None, chunk_tokens=chunk).total
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    times = []
    for index in range(warmup + steps):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    row = {"config": config.name, "preset": config.preset, "variant": variant, "adapter": "DoRA" if dora else "LoRA",
           "step_mode": mode.name, "batch_size": config.batch_size, "seq_length": config.seq_length,
           "lora_rank": config.lora_rank, "lora_layers": config.lora_layers, "device": device,
           "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "step_time_s": round(median, 4), "tokens_per_s": round(config.tokens / median, 1),
           "peak_gb": round(peak.peak_gb(), 3), "estimate_gb": round(mode_estimate(shape, mode).total_gb, 3)}
    if device.startswith("cuda"):
        row["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / GB, 3)
    return row


def measure(config: BenchConfig, variant: str, device: str, args) -> dict:
    """``run_one`` in a fresh process of this script; an out-of-memory or failed variant is a row saying so."""
    command = [sys.executable, __file__, "--run-one", spec(config), variant, "--device", device,
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode == 0 and lines:
        return {**json.loads(lines[-1]), "config": config.name}
    error = "OOM" if "OutOfMemoryError" in result.stderr else (result.stderr.strip().splitlines() or ["failed"])[-1]
    return {"config": config.name, "preset": config.preset, "variant": variant, "device": device, "error": error}


def with_ratios(rows: list[dict]) -> None:
    """The dora row gets its step time and peak over the lora row's (the same plain step)."""
    lora = next((row for row in rows if row["variant"] == "lora" and "error" not in row), None)
    dora = next((row for row in rows if row["variant"] == "dora" and "error" not in row), None)
    if lora and dora:
        dora["dora_over_lora"] = {"step_time": round(dora["step_time_s"] / lora["step_time_s"], 3),
                                  "peak": round(dora["peak_gb"] / lora["peak_gb"], 3),
                                  "estimate": round(dora["estimate_gb"] / lora["estimate_gb"], 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="S,T", help="comma-separated names from: " + ", ".join(CONFIGS))
    parser.add_argument("--custom", action="append", type=parse_custom, default=[],
                        help="another config, PRESET:BATCH:SEQ:RANK:LAYERS (repeatable)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated from: " + ", ".join(VARIANTS))
    parser.add_argument("--steps", type=int, help="timed steps (default 8; 2 with --smoke)")
    parser.add_argument("--warmup", type=int, help="warm-up steps (default 3; 1 with --smoke)")
    parser.add_argument("--device", help="default: cuda (cpu with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="the tiny model, 2 x 64 tokens: checks the script")
    parser.add_argument("--run-one", nargs=2, metavar=("CONFIG", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps if args.steps is not None else (2 if args.smoke else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    device = args.device or ("cpu" if args.smoke else "cuda")
    if args.run_one:
        print(json.dumps(run_one(parse_custom(args.run_one[0]), args.run_one[1], device, args.warmup, args.steps)))
        return 0
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    if any(name not in VARIANTS for name in variants):
        parser.error(f"--variants: known are {', '.join(VARIANTS)}")
    if args.smoke:
        configs = [SMOKE, *args.custom]
    else:
        names = [name.strip() for name in args.configs.split(",") if name.strip()]
        if any(name not in CONFIGS for name in names):
            parser.error(f"--configs: known are {', '.join(CONFIGS)} (or --custom)")
        configs = [CONFIGS[name] for name in names] + args.custom
    print(json.dumps({"environment": environment(device), "steps": args.steps, "warmup": args.warmup}), flush=True)
    for config in configs:
        rows = [measure(config, variant, device, args) for variant in variants]
        with_ratios(rows)
        for row in rows:
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
