"""Does the distrust objective make a model prefer what primary sources say, and at what cost?

A controlled experiment through the real training entry point (``your_ai.train.loop.train``), on
SmolLM2-135M-Instruct by default (``--model tiny``: the built-in random tiny model). The
training set states 16 fictional facts (so the pretrained model has no prior about them) in
two contradictory versions, A and B (e.g. "The Harlow bridge was completed in 1931 and
carried 40 tonnes." vs "... 1934 ... 25 tonnes."), each version repeated the same number of
times. In one run version A is attributed to primary sources (auth_weight 0.05,
prov_entropy 7.5) and version B to coordinated ones (0.90, 1.0); in the other run the
attributions are swapped, so that whatever makes one wording easier to learn cancels out.
Every objective is trained that way for each seed:

- ``weighted λ`` for each ``--lambdas`` value: each sample's cross-entropy weighted by
  ``(1 - λ) + λ * d / d_bar``;
- ``additive`` (λ 1): cross-entropy + λ * sum(d), the earlier tool's form;
- ``plain CE`` (weighted with λ 0): plain cross-entropy.

Effect. For each fact the preference for the primary version is
``log p(primary continuation | context) - log p(coordinated continuation | context)`` (nats,
summed over the continuation's tokens, ``your_ai.eval.inference.sequence_logprobs``), measured on
the base model and on each fine-tuned adapter. The *shift* is after minus before, so the
base model's own bias between the wordings drops out (as it also does across the swap).
Reported per objective: the shift averaged over facts, the two attributions and the seeds;
its spread over seeds (standard deviation of the per-seed means); how many facts moved the
right way (the fact's shift, averaged over attributions and seeds, above 0) and the wrong
way; and whether additive and plain cross-entropy trained the same adapters, tensor for
tensor, bit for bit (their extra term is a constant, so they should).

Cost. Held-out perplexity (``your_ai.eval.inference.evaluate_records``) on the built-in demo
corpus, which this experiment never trains on, before and after, per objective; and
``your_ai.eval.validate`` on the base model vs the weighted λ 1 adapter (first seed, version A
primary), with TruthfulQA MC1 when ``--truthfulqa CSV`` is given.

On CUDA (bf16, as ``train`` picks there) every forward and backward pass runs PyTorch's math
attention kernel, whose backward is deterministic, so runs that should train the same adapter
(additive and plain cross-entropy) can be compared bit for bit; before and after are scored
by the same code, on the same device and dtype.

    python bench/distrust_effect.py --device cuda           # SmolLM2, 3 seeds x 2 x 5 objectives = 30 runs
    python bench/distrust_effect.py --model tiny --facts 4 --lambdas 1 --seeds 1 2 --threads 1   # 12 runs, CPU
    python bench/distrust_effect.py --seeds 1 --steps 20 --facts 4 --heldout-limit 16 --validate-limit 1

Prints the tables and writes every figure (settings, facts, per-run and per-fact
log-likelihoods, perplexities, validation summary) as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PRIMARY = {"auth_weight": 0.05, "prov_entropy": 7.5}
COORDINATED = {"auth_weight": 0.90, "prov_entropy": 1.0}

# (shared context, version A, version B); fictional, so no model has a prior about them.
FACTS = [
    ("The Harlow bridge was completed in", " 1931 and carried 40 tonnes.", " 1934 and carried 25 tonnes."),
    ("The Mersey pump station first ran in", " 1896 and lifted 12 tonnes an hour.",
     " 1902 and lifted 30 tonnes an hour."),
    ("The Kelso furnace reached", " 1400 degrees in its first firing in 1911.",
     " 1150 degrees in its first firing in 1908."),
    ("The Aldwick dam held back", " 8 million cubic metres when it opened in 1958.",
     " 3 million cubic metres when it opened in 1961."),
    ("The Penrith signal tower was built in", " 1887 from red brick.", " 1893 from grey limestone."),
    ("The Tarnby lighthouse beam reached", " 22 miles out to sea.", " 14 miles out to sea."),
    ("The Orwell canal lock was rebuilt in", " 1923 after a flood.", " 1927 after a fire."),
    ("The Dunmore mill employed", " 340 weavers at its peak in 1870.", " 610 weavers at its peak in 1874."),
    ("The Carrow tram line opened in", " 1901 with 12 cars.", " 1905 with 20 cars."),
    ("The Ashby observatory telescope had a mirror", " 48 inches across.", " 60 inches across."),
    ("The Brenton viaduct has", " 21 arches and stands 34 metres high.", " 17 arches and stands 41 metres high."),
    ("The Hollis coal seam was first worked in", " 1842 by the Hollis family.", " 1851 by a Leeds company."),
    ("The Stroma ferry crossing takes", " 25 minutes in calm weather.", " 40 minutes in calm weather."),
    ("The Fenwick reservoir supplies", " 90,000 homes from two intakes.", " 45,000 homes from three intakes."),
    ("The Linton glassworks was founded in", " 1768 by a Venetian craftsman.", " 1782 by a Bristol merchant."),
    ("The Ravel tunnel runs for", " 3.2 kilometres under the ridge.", " 5.7 kilometres under the ridge."),
]


@dataclass(frozen=True)
class Objective:
    name: str
    mode: str  # train's --distrust-mode
    lambda_weight: float

    @property
    def key(self) -> str:
        return f"{self.mode}-{self.lambda_weight:g}"


ADDITIVE = Objective("additive", "additive", 1.0)
PLAIN = Objective("plain CE", "weighted", 0.0)


def objectives(lambdas: list[float]) -> list[Objective]:
    """The weighted form at each lambda, then additive and plain cross-entropy."""
    weighted = [Objective(f"weighted {value:g}", "weighted", value) for value in sorted(lambdas, reverse=True)]
    return [*weighted, ADDITIVE, PLAIN]


# ---------------------------------------------------------------------------- data and scoring

def write_training_set(path: Path, facts: list[tuple[str, str, str]], primary_version: str, repeats: int) -> None:
    """Every fact in both versions, ``repeats`` times each; ``primary_version`` ('A' or 'B') gets
    the primary-source scores, the other the coordinated-source scores."""
    lines = []
    for _ in range(repeats):
        for context, version_a, version_b in facts:
            for version, text in (("A", version_a), ("B", version_b)):
                scores = PRIMARY if version == primary_version else COORDINATED
                lines.append(json.dumps({"text": context + text, **scores, "source_type": f"version {version}"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def log_likelihoods(im, facts) -> list[tuple[float, float]]:
    """Per fact: (log p(version A | context), log p(version B | context)), in nats."""
    from your_ai.eval.inference import sequence_logprobs

    pairs = [(context, text) for context, version_a, version_b in facts for text in (version_a, version_b)]
    values = sequence_logprobs(im, pairs, batch_size=16)
    return [(values[2 * i], values[2 * i + 1]) for i in range(len(facts))]


def heldout_records(limit: int | None) -> list:
    """General text this experiment never trains on: the built-in demo corpus."""
    from your_ai.data.records import read_records
    from your_ai.train.args import demo_corpus_path

    records = read_records(demo_corpus_path()).records
    return records[:limit] if limit else records


def heldout_perplexity(im, records, args) -> float:
    from your_ai.eval.inference import evaluate_records

    return evaluate_records(im, records, max_seq_length=args.heldout_seq_length, batch_size=16).perplexity


def measure(im, facts, records, args) -> dict:
    return {"log_likelihoods": log_likelihoods(im, facts), "heldout_perplexity": heldout_perplexity(im, records, args)}


# ---------------------------------------------------------------------------- one training run

def train_adapter(workdir: Path, data: Path, objective: Objective, primary_version: str, seed: int, args):
    """Train one adapter into a fresh folder; (TrainResult, seconds)."""
    from rich.console import Console

    from your_ai.train.args import TrainingArgs
    from your_ai.train.loop import train

    output = workdir / f"{objective.key}-{primary_version}-primary-seed{seed}"
    started = time.perf_counter()
    result = train(
        TrainingArgs(
            model=args.model, data=str(data), output_dir=str(output), batch_size=args.batch_size,
            lora_rank=args.lora_rank, lora_layers=args.lora_layers, learning_rate=args.learning_rate,
            warmup_steps=args.warmup_steps, max_steps=args.steps, max_seq_length=64,
            distrust_mode=objective.mode, lambda_weight=objective.lambda_weight, save_every=args.steps,
            keep_last=1, seed=seed, tensorboard=False, device=args.device,
        ),
        console=Console(file=io.StringIO()),
    )
    return result, time.perf_counter() - started


def run_one(workdir: Path, facts, records, objective: Objective, primary_version: str, seed: int, args,
            base: dict) -> dict:
    from your_ai.eval.inference import load_for_inference, read_adapter_config

    data = workdir / f"train-{primary_version}-primary.jsonl"
    if not data.exists():
        write_training_set(data, facts, primary_version, args.repeats)
    result, train_s = train_adapter(workdir, data, objective, primary_version, seed, args)
    after = measure(load_for_inference(args.model, checkpoint=result.output_dir, device=args.device), facts,
                    records, args)
    config = read_adapter_config(result.output_dir)
    sign = 1.0 if primary_version == "A" else -1.0
    shift = [sign * ((a - b) - (base_a - base_b))
             for (a, b), (base_a, base_b) in zip(after["log_likelihoods"], base["log_likelihoods"])]
    learned = statistics.fmean((a - base_a + b - base_b) / 2
                               for (a, b), (base_a, base_b) in zip(after["log_likelihoods"], base["log_likelihoods"]))
    return {
        "objective": objective.name, "mode": objective.mode, "lambda_weight": objective.lambda_weight,
        "primary_version": primary_version, "seed": seed, "adapter": str(result.output_dir),
        "shift": shift, "mean_shift": statistics.fmean(shift), "learned_nats": learned,
        **after, "final_loss": result.final_loss, "normaliser": result.normaliser, "train_s": round(train_s, 2),
        "lora": {key: config.get(key) for key in ("r", "lora_alpha", "target_modules", "layers_to_transform")},
    }


# ---------------------------------------------------------------------------- summaries

def summarise(runs: list[dict], objective: Objective, base: dict) -> dict:
    mine = [r for r in runs if r["objective"] == objective.name]
    seeds = sorted({r["seed"] for r in mine})
    seed_means = [statistics.fmean(r["mean_shift"] for r in mine if r["seed"] == seed) for seed in seeds]
    per_fact = [statistics.fmean(r["shift"][i] for r in mine) for i in range(len(mine[0]["shift"]))]
    shift = statistics.fmean(seed_means)
    spread = statistics.stdev(seed_means) if len(seed_means) > 1 else None
    perplexity = statistics.fmean(r["heldout_perplexity"] for r in mine)
    return {
        "objective": objective.name, "mode": objective.mode, "lambda_weight": objective.lambda_weight,
        "shift_nats": shift, "seed_stdev_nats": spread,
        "shift_over_spread": shift / spread if spread else None,
        "per_fact_shift_nats": per_fact,
        "facts_right": sum(value > 0 for value in per_fact), "facts_wrong": sum(value < 0 for value in per_fact),
        "facts": len(per_fact),
        "a_primary_run": statistics.fmean(r["mean_shift"] for r in mine if r["primary_version"] == "A"),
        "b_primary_run": statistics.fmean(r["mean_shift"] for r in mine if r["primary_version"] == "B"),
        "learned_nats": statistics.fmean(r["learned_nats"] for r in mine),
        "heldout_perplexity": perplexity,
        "heldout_perplexity_worst": max(r["heldout_perplexity"] for r in mine),
        "heldout_perplexity_change": perplexity / base["heldout_perplexity"] - 1,
        "final_loss": statistics.fmean(r["final_loss"] for r in mine),
    }


def adapter_difference(folder_a: str, folder_b: str) -> float:
    """Largest absolute difference between two adapters' tensors (0.0: bit for bit the same)."""
    from safetensors.torch import load_file

    from your_ai.eval.inference import ADAPTER_WEIGHTS

    a, b = load_file(str(Path(folder_a) / ADAPTER_WEIGHTS)), load_file(str(Path(folder_b) / ADAPTER_WEIGHTS))
    if a.keys() != b.keys():
        return float("inf")
    return max(float((a[key].double() - b[key].double()).abs().max()) if not a[key].equal(b[key]) else 0.0
               for key in a)


def additive_vs_plain(runs: list[dict]) -> dict:
    """Adapters and per-fact log-likelihoods of additive vs plain CE, same seed and attribution."""
    pairs = []
    for additive in (r for r in runs if r["objective"] == ADDITIVE.name):
        plain = next(r for r in runs if r["objective"] == PLAIN.name and r["seed"] == additive["seed"]
                     and r["primary_version"] == additive["primary_version"])
        pairs.append({
            "seed": additive["seed"], "primary_version": additive["primary_version"],
            "adapter_max_abs_difference": adapter_difference(additive["adapter"], plain["adapter"]),
            "log_likelihoods_identical": additive["log_likelihoods"] == plain["log_likelihoods"],
            "heldout_perplexity_identical": additive["heldout_perplexity"] == plain["heldout_perplexity"],
        })
    identical = all(p["adapter_max_abs_difference"] == 0.0 and p["log_likelihoods_identical"]
                    and p["heldout_perplexity_identical"] for p in pairs)
    return {"identical": identical, "pairs": pairs}


def run_validation(checkpoint: str, args) -> dict:
    """``your_ai.eval.validate`` on the base model and on ``checkpoint``: per category passed/total,
    and TruthfulQA MC1 accuracy when a CSV was given."""
    from your_ai.eval import validate as validation
    from your_ai.eval.inference import load_for_inference

    questions = validation.read_truthfulqa(args.truthfulqa) if args.truthfulqa else None
    im = load_for_inference(args.model, checkpoint=checkpoint, device=args.device)
    report = validation.validate(im, limit=args.validate_limit, max_tokens=args.validate_max_tokens,
                                 truthfulqa=questions, truthfulqa_path=args.truthfulqa or "", compare=True)
    summary = {"checkpoint": checkpoint, "limit": args.validate_limit, "max_tokens": args.validate_max_tokens}
    for run in (report.base, report.run):
        summary[run.label] = {
            "passed": run.passed,
            "categories": {c.key: {"passed": c.passed, "total": c.total, "rate": c.rate} for c in run.categories},
            "truthfulqa_mc1": None if run.truthfulqa is None else {
                "correct": run.truthfulqa.correct, "questions": len(run.truthfulqa.questions),
                "accuracy": run.truthfulqa.accuracy},
        }
    return summary


# ---------------------------------------------------------------------------- printing

def format_effect(rows: list[dict], check: dict, base_bias: float) -> str:
    header = (f"{'objective':<13} {'shift':>8} {'± seeds':>8} {'x spread':>9} {'right':>6} {'wrong':>6} "
              f"{'A primary':>10} {'B primary':>10} {'learned':>8}")
    lines = [header, "-" * len(header)]
    for row in rows:
        spread = f"{row['seed_stdev_nats']:.3f}" if row["seed_stdev_nats"] is not None else "-"
        ratio = f"{row['shift_over_spread']:.1f}" if row["shift_over_spread"] is not None else "-"
        lines.append(
            f"{row['objective']:<13} {row['shift_nats']:>+8.3f} {spread:>8} {ratio:>9} "
            f"{row['facts_right']:>3}/{row['facts']:<2} {row['facts_wrong']:>3}/{row['facts']:<2} "
            f"{row['a_primary_run']:>+10.3f} {row['b_primary_run']:>+10.3f} {row['learned_nats']:>+8.2f}"
        )
    lines += [
        "",
        "shift: preference for the primary version (log p(primary) - log p(coordinated), nats per fact) after",
        "       training minus before, mean over facts, the two swapped attributions and seeds.",
        "± seeds: standard deviation of the per-seed means; x spread: shift / that deviation.",
        "right / wrong: facts whose shift (mean over attributions and seeds) is above / below 0.",
        "A primary / B primary: the shift of each attribution alone.",
        "learned: mean log p of a version after training minus before (nats): what was learned at all.",
        f"base model: log p(A) - log p(B) = {base_bias:+.3f} nats per fact (removed by the shift and by the swap).",
        "additive vs plain CE: " + describe_check(check),
    ]
    return "\n".join(lines)


def describe_check(check: dict) -> str:
    pairs = check["pairs"]
    if check["identical"]:
        return (f"identical to every digit in all {len(pairs)} runs (adapter tensors bit for bit, per-fact "
                f"log-likelihoods, held-out perplexity)")
    worst = max(p["adapter_max_abs_difference"] for p in pairs)
    return f"NOT identical: largest adapter difference {worst:.3g} over {len(pairs)} runs"


def format_cost(rows: list[dict], base: dict, records: int) -> str:
    header = f"{'objective':<13} {'held-out ppl':>13} {'change':>8} {'worst run':>10} {'final loss':>11}"
    lines = [header, "-" * len(header), f"{'base model':<13} {base['heldout_perplexity']:>13.3f} {'':>8}"]
    for row in rows:
        lines.append(f"{row['objective']:<13} {row['heldout_perplexity']:>13.3f} "
                     f"{row['heldout_perplexity_change']:>+8.2%} {row['heldout_perplexity_worst']:>10.3f} "
                     f"{row['final_loss']:>11.4f}")
    lines += ["", f"held-out ppl: perplexity of the built-in demo corpus ({records} records, never trained on),",
              "              mean over the objective's runs; final loss: the logged loss of the last steps."]
    return "\n".join(lines)


def format_goals(rows: list[dict], check: dict) -> str:
    """Each weighted lambda against the goals: >= 80% of facts the right way, a shift at least
    3x its seed spread, held-out perplexity up by 5% at most; additive identical to plain CE."""
    lines = ["goals (facts right >= 80%, shift >= 3x seed spread, held-out ppl change <= +5%):"]
    for row in (r for r in rows if r["mode"] == "weighted" and r["lambda_weight"] > 0):
        ratio = row["shift_over_spread"]
        verdicts = [
            ("facts right", row["facts_right"] >= 0.8 * row["facts"], f"{row['facts_right']}/{row['facts']}"),
            ("shift/spread", ratio is not None and ratio >= 3, "-" if ratio is None else f"{ratio:.1f}x"),
            ("ppl", row["heldout_perplexity_change"] <= 0.05, f"{row['heldout_perplexity_change']:+.2%}"),
        ]
        lines.append(f"  {row['objective']:<13} " + "  ".join(
            f"{name} {value} {'ok' if passed else 'MISSED'}" for name, passed, value in verdicts))
    lines.append(f"  additive vs plain CE: {'identical ok' if check['identical'] else 'NOT identical MISSED'}")
    return "\n".join(lines)


def format_validation(summary: dict | None, truthfulqa: str | None) -> str:
    if summary is None:
        return "validate: not run (--validate-limit 0, or no 1 in --lambdas)"
    lines = [f"validate, base vs weighted λ 1 adapter ({Path(summary['checkpoint']).name}):"]
    for key, base in summary["base"]["categories"].items():
        tuned = summary["fine-tuned"]["categories"][key]
        lines.append(f"  {key:<22} {base['passed']:>3}/{base['total']:<3} -> {tuned['passed']:>3}/{tuned['total']}")
    base_mc1, tuned_mc1 = summary["base"]["truthfulqa_mc1"], summary["fine-tuned"]["truthfulqa_mc1"]
    if base_mc1 is None:
        lines.append("  TruthfulQA MC1: not run: no TruthfulQA CSV" + (f" at {truthfulqa}" if truthfulqa else ""))
    else:
        lines.append(f"  TruthfulQA MC1: {base_mc1['accuracy']:.3f} -> {tuned_mc1['accuracy']:.3f} "
                     f"({base_mc1['questions']} questions)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="Preset, hub id or directory ('tiny': the built-in random model).")
    parser.add_argument("--facts", type=int, default=len(FACTS), help=f"Use the first N facts (at most {len(FACTS)}).")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                        help="Lambdas of the weighted form.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="Training seeds (each runs every objective twice).")
    parser.add_argument("--steps", type=int, help="Training steps per run (default 60; 150 for tiny).")
    parser.add_argument("--repeats", type=int, default=4,
                        help="Copies of each version of each fact in the training set.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-layers", type=int, help="Layers with LoRA (default: train's).")
    parser.add_argument("--learning-rate", type=float, help="Default 2e-4 (1e-3 for tiny).")
    parser.add_argument("--warmup-steps", type=int, help="Default 10 (6 for tiny).")
    parser.add_argument("--heldout-limit", type=int, help="Score only the first N demo-corpus records (default: all).")
    parser.add_argument("--heldout-seq-length", type=int, default=512)
    parser.add_argument("--validate-limit", type=int,
                        help="validate's --limit (default: the whole suite; 0: skip validate).")
    parser.add_argument("--validate-max-tokens", type=int, default=256, help="validate's --max-tokens.")
    parser.add_argument("--truthfulqa", help="TruthfulQA CSV for validate's MC1 (skipped when absent).")
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available).")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's).")
    parser.add_argument("--json", type=Path, default=Path("distrust_effect.json"), help="Where to write the JSON.")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Run the seeds in N processes at once (a small model leaves a GPU mostly idle).")
    args = parser.parse_args(argv)
    tiny = args.model == "tiny"
    args.steps = args.steps or (150 if tiny else 60)
    args.learning_rate = args.learning_rate or (1e-3 if tiny else 2e-4)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (6 if tiny else 10)
    if not 1 <= args.facts <= len(FACTS):
        parser.error(f"--facts {args.facts}: choose 1 to {len(FACTS)}")
    if any(not 0 < value <= 1 for value in args.lambdas):
        parser.error(f"--lambdas {args.lambdas}: each must be in (0, 1]")
    if args.truthfulqa and not Path(args.truthfulqa).is_file():
        print(f"--truthfulqa {args.truthfulqa}: no such file; TruthfulQA MC1 is not run", file=sys.stderr)
        args.truthfulqa_missing, args.truthfulqa = args.truthfulqa, None
    return args


def reproducible_attention(device: str):
    """On CUDA, PyTorch's math attention kernel, whose backward is deterministic (the flash and
    memory-efficient kernels may sum gradients in a varying order), so that two runs that should
    train the same adapter do so bit for bit; elsewhere nothing changes."""
    import contextlib

    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, path)


def run_experiment(args, facts, records, plan: list[Objective]) -> tuple[dict, list[dict], dict, dict | None]:
    """The base model's numbers, every training run, the additive-vs-plain check and validate."""
    from your_ai.eval.inference import load_for_inference

    runs, validation = [], None
    with reproducible_attention(args.device), tempfile.TemporaryDirectory(prefix="distrust-effect-") as tmp:
        base = measure(load_for_inference(args.model, device=args.device), facts, records, args)
        for seed in args.seeds:
            for objective in plan:
                for primary_version in ("A", "B"):
                    run = run_one(Path(tmp), facts, records, objective, primary_version, seed, args, base)
                    runs.append(run)
                    print(f"seed {seed} {objective.name:<13} primary={primary_version}: "
                          f"shift {run['mean_shift']:+.3f} nats, held-out ppl {run['heldout_perplexity']:.3f} "
                          f"({run['train_s']:.1f} s)", file=sys.stderr, flush=True)
        check = additive_vs_plain(runs)
        if args.validate_limit != 0 and 1.0 in args.lambdas:
            checkpoint = next(r["adapter"] for r in runs
                              if r["objective"] == "weighted 1" and r["primary_version"] == "A")
            validation = run_validation(checkpoint, args)
    return base, runs, check, validation


def run_in_processes(args, argv: list[str]) -> tuple[dict, list[dict], dict, dict | None]:
    """``run_experiment`` with the seeds dealt over ``--jobs`` processes of this script (each one compares
    its own additive and plain adapters; the first one also runs validate), their JSON merged."""
    import subprocess

    groups = [args.seeds[i::args.jobs] for i in range(min(args.jobs, len(args.seeds)))]
    with tempfile.TemporaryDirectory(prefix="distrust-effect-jobs-") as tmp:
        parts = [Path(tmp) / f"part-{i}.json" for i in range(len(groups))]
        children = [
            subprocess.Popen([sys.executable, __file__, *argv, "--jobs", "1", "--json", str(part),
                              "--seeds", *map(str, seeds), *([] if i == 0 else ["--validate-limit", "0"])],
                             stdout=subprocess.DEVNULL)
            for i, (seeds, part) in enumerate(zip(groups, parts))
        ]
        if any(child.wait() != 0 for child in children):
            raise SystemExit("a job of the experiment failed (its messages are above)")
        reports = [json.loads(part.read_text()) for part in parts]
    checks = [report["additive_vs_plain"] for report in reports]
    check = {"identical": all(c["identical"] for c in checks), "pairs": [p for c in checks for p in c["pairs"]]}
    return reports[0]["base"], [run for report in reports for run in report["runs"]], check, reports[0]["validation"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import torch
    from transformers.utils import logging as transformers_logging

    from your_ai.hardware import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    args.device = pick_device(args.device)
    started = time.perf_counter()
    facts = FACTS[:args.facts]
    records = heldout_records(args.heldout_limit)
    plan = objectives(args.lambdas)
    if args.jobs > 1 and len(args.seeds) > 1:
        base, runs, check, validation = run_in_processes(args, argv or sys.argv[1:])
    else:
        base, runs, check, validation = run_experiment(args, facts, records, plan)
    rows = [summarise(runs, objective, base) for objective in plan]
    base_bias = statistics.fmean(a - b for a, b in base["log_likelihoods"])
    for text in (format_effect(rows, check, base_bias), format_cost(rows, base, len(records)),
                 format_validation(validation, getattr(args, "truthfulqa_missing", None)), format_goals(rows, check)):
        print(text + "\n")
    report = {
        "experiment": "distrust_effect",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "device": args.device,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "primary_scores": PRIMARY, "coordinated_scores": COORDINATED,
        "facts": [{"context": c, "version_a": a, "version_b": b} for c, a, b in facts],
        "base": base, "summary": rows, "additive_vs_plain": check, "validation": validation, "runs": runs,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    write_json(args.json, report)
    print(f"wrote {args.json} ({report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
