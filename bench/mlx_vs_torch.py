"""The MLX engine against the torch engine on one machine: the same model, LoRA, objective and batch, one
optimizer step as ``train`` takes it (forward, backward, clipping, AdamW), timed and its memory measured.

Each engine runs in its own process (``--engine torch|mlx`` is the child), so one engine's memory does
not count in the other's. A child loads the model, takes one warm-up step and then ``--steps`` timed steps
(median reported), on a batch of ``--batch-size`` records of the demo corpus tokenized to at most
``--seq`` tokens. Reported per engine: the loss of the first step (the same batch and adapters, so
the same number within fp32 rounding), the step time, tokens per second, the engine's own peak
(MLX: ``mx.get_peak_memory``; torch on the CPU has no allocator counter: none) and the process's
peak resident set size (``ru_maxrss``, everything the process held, Python and libraries included).

Both engines run in fp32 on the CPU here (on a Mac, MLX would run bf16 on the GPU).

    HF_HUB_CACHE=/work/hf-cache python bench/mlx_vs_torch.py                   # SmolLM2-135M-Instruct
    python bench/mlx_vs_torch.py --model tiny --steps 3                         # the built-in tiny model
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from your_ai.data.examples import tokenize_records
from your_ai.data.records import read_records
from your_ai.data.score_cache import read_file_scores
from your_ai.model.load import load_tokenizer
from your_ai.model.lora import LoraSettings
from your_ai.model.resolve import DEFAULT_MODEL, resolve_model
from your_ai.train.args import demo_corpus_path
from your_ai.train.plan import Objective


def batch_examples(model: str, batch_size: int, seq: int):
    """The first ``batch_size`` records of the demo corpus, tokenized, and the objective of the corpus."""
    records = read_records(demo_corpus_path()).records
    scores = read_file_scores(demo_corpus_path())
    weights, entropies = scores.auth_weights.tolist(), scores.prov_entropies.tolist()
    objective = Objective.from_dataset("weighted", 2.7, 1.0, weights, entropies)
    tokenizer = load_tokenizer(resolve_model(model))
    examples, _ = tokenize_records(records[:batch_size], weights[:batch_size], entropies[:batch_size], tokenizer, seq)
    return examples, objective, tokenizer.pad_token_id


def torch_steps(model: str, settings: LoraSettings, examples, objective, pad_id: int, steps: int):
    """(first loss, step times, engine peak GB or None) of the torch engine's plain step in fp32 on the CPU."""
    from your_ai.data.examples import collate
    from your_ai.train.loss import StepLoss
    from your_ai.train.setup import build_optimizer, load_for_training
    from your_ai.train.step import MicroBatch, optimizer_step

    loaded = load_for_training(model, settings, "cpu")
    step_loss = StepLoss(loaded.model, objective, False)
    optimizer = build_optimizer(loaded.model, 1e-4)
    batch = [MicroBatch(collate(examples, pad_id))]
    times, first = [], None
    for _ in range(steps + 1):
        started = time.perf_counter()
        output = optimizer_step(step_loss, batch, optimizer, None, 1.0)
        times.append(time.perf_counter() - started)
        first = float(output.parts[0].total) if first is None else first
    return first, times[1:], None


def mlx_steps(model: str, settings: LoraSettings, examples, objective, pad_id: int, steps: int):
    """(first loss, step times, MLX peak GB) of the MLX engine's step in fp32 on the CPU."""
    import mlx.core as mx

    from your_ai.mlx_engine.loop import build_optimizer, optimizer_step, use_device
    from your_ai.mlx_engine.loss import make_batch
    from your_ai.step.memory import MLX_DEVICE, PeakMemory

    peak = PeakMemory(MLX_DEVICE)
    from your_ai.mlx_engine.model import add_lora, load_mlx_model

    use_device("cpu")
    loaded = add_lora(load_mlx_model(resolve_model(model), dtype=mx.float32), settings)
    optimizer = build_optimizer(loaded, 1e-4, 0.01)
    batch = [make_batch(examples, pad_id, objective)]
    peak.reset()
    times, first = [], None
    for _ in range(steps + 1):
        started = time.perf_counter()
        output = optimizer_step(loaded, optimizer, batch, 1e-4, 1.0)
        times.append(time.perf_counter() - started)
        first = output.parts[0].total if first is None else first
    return first, times[1:], peak.peak_gb()


def child(options) -> None:
    import torch

    torch.set_num_threads(options.threads)
    settings = LoraSettings(rank=options.rank, layers=options.layers)
    examples, objective, pad_id = batch_examples(options.model, options.batch_size, options.seq)
    run = torch_steps if options.engine == "torch" else mlx_steps
    first, times, engine_peak = run(options.model, settings, examples, objective, pad_id, options.steps)
    tokens = sum(len(example.input_ids) for example in examples)
    print(json.dumps({"engine": options.engine, "first_loss": first, "step_s": statistics.median(times),
                      "tokens": tokens, "tokens_per_s": tokens / statistics.median(times), "engine_peak_gb": engine_peak,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engine", choices=("torch", "mlx"), help="run one engine here (the child)")
    options = parser.parse_args()
    if options.engine:
        return child(options)
    rows = []
    for engine in ("torch", "mlx"):
        command = [sys.executable, __file__, *sys.argv[1:], "--engine", engine]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{options.model}: batch {options.batch_size}, up to {options.seq} tokens ({rows[0]['tokens']} in all), "
          f"LoRA rank {options.rank} on q/k/v/o of the last {options.layers} layers, fp32, {options.threads} threads, "
          f"median of {options.steps} steps")
    print("| engine | first-step loss | step time | tokens/s | engine peak | process peak RSS |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        engine_peak = f"{row['engine_peak_gb']:.2f} GB" if row["engine_peak_gb"] is not None else "—"
        print(f"| {row['engine']} | {row['first_loss']:.5f} | {row['step_s']:.3f} s | {row['tokens_per_s']:,.0f} | "
              f"{engine_peak} | {row['peak_rss_gb']:.2f} GB |")


if __name__ == "__main__":
    main()
