"""Does the distrust objective make a model prefer what primary sources say?

A controlled experiment on the built-in tiny model, through the real training entry point
(``your_ai.train.train``). The training set states a few facts in two contradictory versions,
A and B (e.g. "The Harlow bridge was completed in 1931 and carried 40 tonnes." vs "... 1934
... 25 tonnes."), each version repeated the same number of times. In run 1 version A is
attributed to primary sources (auth_weight 0.05, prov_entropy 7.5) and version B to
coordinated ones (0.90, 1.0); in run 2 the attributions are swapped, so that whatever makes
one wording easier to learn cancels out.

After training, for each fact, the preference for the primary version is the difference
in log-likelihood (``your_ai.inference.sequence_logprob``, nats, summed over the
continuation's tokens after the shared context) of the primary version minus the
coordinated one. It is averaged over the facts, over the two swapped runs and over seeds,
for each objective:

- ``weighted``  (lambda 1): each sample's cross-entropy weighted by its distrust value;
- ``additive``  (lambda 1): cross-entropy + lambda * sum(d), the earlier tool's form;
- ``plain CE``  (weighted with lambda 0): plain cross-entropy.

With both versions equally frequent, plain cross-entropy has no reason to prefer either
(expected preference ~0), and the additive form trains exactly as plain cross-entropy does
(its extra term is a constant). The weighted form should prefer the primary version.

    python bench/distrust_effect.py                         # 2 seeds, 150 steps per run
    python bench/distrust_effect.py --seeds 1 2 3 --steps 200 --json distrust_effect.json

Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

PRIMARY = {"auth_weight": 0.05, "prov_entropy": 7.5}
COORDINATED = {"auth_weight": 0.90, "prov_entropy": 1.0}

# (shared context, version A, version B)
FACTS = [
    ("The Harlow bridge was completed in", " 1931 and carried 40 tonnes.", " 1934 and carried 25 tonnes."),
    ("The Mersey pump station first ran in", " 1896 and lifted 12 tonnes an hour.",
     " 1902 and lifted 30 tonnes an hour."),
    ("The Kelso furnace reached", " 1400 degrees in its first firing in 1911.",
     " 1150 degrees in its first firing in 1908."),
    ("The Aldwick dam held back", " 8 million cubic metres when it opened in 1958.",
     " 3 million cubic metres when it opened in 1961."),
]

# name, distrust_mode, lambda_weight
OBJECTIVES = [
    ("weighted", "weighted", 1.0),
    ("additive", "additive", 1.0),
    ("plain CE", "weighted", 0.0),
]


def write_training_set(path: Path, primary_version: str, repeats: int) -> None:
    """Every fact in both versions, ``repeats`` times each; ``primary_version`` ('A' or 'B') gets
    the primary-source scores, the other the coordinated-source scores."""
    lines = []
    for _ in range(repeats):
        for context, version_a, version_b in FACTS:
            for version, text in (("A", version_a), ("B", version_b)):
                scores = PRIMARY if version == primary_version else COORDINATED
                lines.append(json.dumps({"text": context + text, **scores, "source_type": f"version {version}"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def log_likelihoods(im) -> list[tuple[float, float]]:
    """Per fact: (log p(version A | context), log p(version B | context)), in nats."""
    from your_ai.inference import sequence_logprobs

    pairs = [(context, text) for context, version_a, version_b in FACTS for text in (version_a, version_b)]
    values = sequence_logprobs(im, pairs, batch_size=len(pairs))
    return [(values[2 * i], values[2 * i + 1]) for i in range(len(FACTS))]


def mean_log_likelihood(values: list[tuple[float, float]]) -> float:
    return statistics.fmean(a + b for a, b in values) / 2


def run_one(workdir: Path, mode: str, lambda_weight: float, primary_version: str, seed: int, args,
            untrained: float) -> dict:
    from rich.console import Console

    from your_ai.inference import load_for_inference
    from your_ai.train import TrainingArgs, train

    data = workdir / f"train-{primary_version}-primary.jsonl"
    if not data.exists():
        write_training_set(data, primary_version, args.repeats)
    output = workdir / f"{mode}-{lambda_weight:g}-{primary_version}-{seed}"
    started = time.perf_counter()
    result = train(
        TrainingArgs(
            model="tiny", data=str(data), output_dir=str(output), batch_size=args.batch_size,
            lora_rank=args.lora_rank, learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
            max_steps=args.steps, max_seq_length=64, distrust_mode=mode, lambda_weight=lambda_weight,
            save_every=args.steps, keep_last=1, seed=seed, tensorboard=False, device=args.device,
        ),
        console=Console(file=io.StringIO()),
    )
    train_s = time.perf_counter() - started
    values = log_likelihoods(load_for_inference(checkpoint=result.output_dir, device=args.device))
    gaps = [a - b for a, b in values]
    sign = 1.0 if primary_version == "A" else -1.0
    preference = [sign * gap for gap in gaps]  # primary minus coordinated
    return {
        "mode": mode, "lambda_weight": lambda_weight, "primary_version": primary_version, "seed": seed,
        "gap_a_minus_b": gaps, "primary_minus_coordinated": preference,
        "mean_preference": statistics.fmean(preference), "log_likelihoods": values,
        "learned_nats": mean_log_likelihood(values) - untrained, "final_loss": result.final_loss,
        "normaliser": result.normaliser, "train_s": round(train_s, 2),
    }


def summarise(runs: list[dict], name: str, mode: str, lambda_weight: float) -> dict:
    mine = [r for r in runs if r["mode"] == mode and r["lambda_weight"] == lambda_weight]
    per_seed = {}
    for run in mine:
        per_seed.setdefault(run["seed"], []).append(run["mean_preference"])
    seed_means = [statistics.fmean(values) for values in per_seed.values()]  # each over the two swapped runs
    every_fact = [value for run in mine for value in run["primary_minus_coordinated"]]
    preference = statistics.fmean(seed_means)
    return {
        "objective": name, "mode": mode, "lambda_weight": lambda_weight,
        "preference_nats": preference,
        "seed_stdev_nats": statistics.stdev(seed_means) if len(seed_means) > 1 else None,
        "primary_share": statistics.fmean(1.0 / (1.0 + math.exp(-value)) for value in every_fact),
        "facts_preferring_primary": f"{sum(value > 0 for value in every_fact)}/{len(every_fact)}",
        "a_primary_run": statistics.fmean(r["mean_preference"] for r in mine if r["primary_version"] == "A"),
        "b_primary_run": statistics.fmean(r["mean_preference"] for r in mine if r["primary_version"] == "B"),
        "learned_nats": statistics.fmean(r["learned_nats"] for r in mine),
        "final_loss": statistics.fmean(r["final_loss"] for r in mine),
    }


def format_table(rows: list[dict], base_gap: float) -> str:
    header = (f"{'objective':<10} {'preference':>11} {'± seeds':>8} {'A primary':>10} {'B primary':>10} "
              f"{'P(primary)':>11} {'facts':>6} {'learned':>8} {'final loss':>11}")
    lines = [header, "-" * len(header)]
    for row in rows:
        spread = f"{row['seed_stdev_nats']:.2f}" if row["seed_stdev_nats"] is not None else "-"
        lines.append(
            f"{row['objective']:<10} {row['preference_nats']:>+11.3f} {spread:>8} {row['a_primary_run']:>+10.3f} "
            f"{row['b_primary_run']:>+10.3f} {row['primary_share']:>11.3f} {row['facts_preferring_primary']:>6} "
            f"{row['learned_nats']:>+8.2f} {row['final_loss']:>11.4f}"
        )
    lines.append("")
    lines.append("preference: log p(primary version) - log p(coordinated version), nats, mean over facts,")
    lines.append("            the two swapped runs and seeds; 'A primary' / 'B primary': each run alone.")
    lines.append("P(primary): mean over facts and runs of p(primary) / (p(primary) + p(coordinated)).")
    lines.append("learned: mean log p of a version after training minus before (nats): what was learned at all.")
    lines.append("final loss: the logged total of the last steps; the additive form's includes the constant lambda * sum(d).")
    lines.append(f"untrained model: log p(A) - log p(B) = {base_gap:+.3f} nats (text difficulty, cancelled by the swap)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="Training seeds (each runs every objective twice).")
    parser.add_argument("--steps", type=int, default=150, help="Training steps per run.")
    parser.add_argument("--repeats", type=int, default=4, help="Copies of each version of each fact in the training set.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=6)
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available).")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for PyTorch (1 is fastest for this tiny model on a busy machine).")
    parser.add_argument("--json", type=Path, default=Path("distrust_effect.json"), help="Where to write the JSON.")
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as transformers_logging

    from your_ai.inference import load_for_inference

    torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    started = time.perf_counter()
    untrained = log_likelihoods(load_for_inference("tiny", device=args.device))
    untrained_mean = mean_log_likelihood(untrained)
    runs = []
    with tempfile.TemporaryDirectory(prefix="distrust-effect-") as tmp:
        workdir = Path(tmp)
        for seed in args.seeds:
            for name, mode, lambda_weight in OBJECTIVES:
                for primary_version in ("A", "B"):
                    run = run_one(workdir, mode, lambda_weight, primary_version, seed, args, untrained_mean)
                    runs.append(run)
                    print(f"seed {seed} {name:<9} primary={primary_version}: preference {run['mean_preference']:+.3f} "
                          f"nats ({run['train_s']:.1f} s)", file=sys.stderr, flush=True)
    rows = [summarise(runs, name, mode, lambda_weight) for name, mode, lambda_weight in OBJECTIVES]
    base_gap = statistics.fmean(a - b for a, b in untrained)
    print(format_table(rows, base_gap))
    report = {
        "experiment": "distrust_effect",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count()},
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "primary_scores": PRIMARY, "coordinated_scores": COORDINATED,
        "facts": [{"context": c, "version_a": a, "version_b": b} for c, a, b in FACTS],
        "untrained_log_likelihoods": untrained,
        "summary": rows,
        "runs": runs,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.json.with_name(f".{args.json.name}.tmp{os.getpid()}")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, args.json)
    print(f"\nwrote {args.json} ({report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
