"""Training defaults: the one source of them for ``TrainingArgs``, the CLI's help and the docs.

``DEFAULTS`` holds those that depend on nothing (the distrust alpha is the objective's own,
``your_ai.objective.distrust.DEFAULT_ALPHA``). The others fit the model, the device and the data: one
small table (docs/training.md shows it, from ``defaults_table``): the model's size class x the device gives
the batch size, LoRA rank and layers, sequence length, learning rate and how many passes over the data
(epochs); the steps follow from the epochs and the number of training records, the warm-up is a fraction
of the steps. Only settings the user did not give are filled in, and ``DefaultChoice.describe`` says where
each one came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SMALL_MODEL_PARAMETERS = 1_000_000_000  # below: the "small" class (SmolLM2-135M, ...)
WARMUP_FRACTION = 0.1
MIN_STEPS = 10
ATTN_IMPLEMENTATIONS = ("sdpa", "flex_attention", "eager")  # transformers' attention kernels that take any mask

# Defaults that do not depend on the model, the device or the data.
DEFAULTS: dict[str, Any] = {
    "grad_accum": 1,
    "max_grad_norm": 1.0,
    "weight_decay": 0.01,
    "distrust_mode": "weighted",
    "lambda_weight": 1.0,
    "keep_last": 3,
    "memory_report_interval": 10,
    "seed": 42,
    "step_mode": "auto",
    "report_to": "tensorboard",
    "dora": False,
}


@dataclass(frozen=True)
class Rule:
    """One row of the table."""

    batch_size: int
    lora_rank: int
    lora_layers: int
    max_seq_length: int
    learning_rate: float
    epochs: float  # passes over the training records; the steps follow from them
    save_every: int


# (size class, device class) -> rule. "demo" is the built-in tiny model; "gpu" is CUDA or MPS.
RULES: dict[tuple[str, str], Rule] = {
    ("demo", "cpu"): Rule(4, 16, 16, 256, 1e-3, 1.0, 20),
    ("demo", "gpu"): Rule(4, 16, 16, 256, 1e-3, 1.0, 20),
    ("small", "cpu"): Rule(4, 8, 8, 128, 2e-3, 0.5, 500),
    ("small", "gpu"): Rule(8, 64, 32, 1024, 2e-4, 3.0, 500),
    ("large", "cpu"): Rule(2, 128, 16, 1024, 5e-5, 1.0, 500),
    ("large", "gpu"): Rule(2, 128, 16, 1024, 5e-5, 1.0, 500),
}

SIZE_LABELS = {"demo": "`tiny` (demo)", "small": "small (< 1B parameters)", "large": "large (>= 1B)"}

RULE_FIELDS = ("batch_size", "lora_rank", "lora_layers", "max_seq_length", "learning_rate", "save_every")


@dataclass(frozen=True)
class DefaultChoice:
    """What the defaults depend on, and the row they pick."""

    size_class: str
    device_class: str
    parameters: int | None  # None: unknown (the model could not be read yet)
    model: str
    device: str

    @property
    def rule(self) -> Rule:
        return RULES[(self.size_class, self.device_class)]

    def values(self, given: dict[str, Any], train_records) -> dict[str, Any]:
        """The table's values for the settings missing from ``given`` (None), with the steps from the
        epochs over ``train_records()`` (called only when the steps are not given) and the warm-up
        as a fraction of the steps."""
        filled = {key: getattr(self.rule, key) for key in RULE_FIELDS if given.get(key) is None}
        batch = (given.get("batch_size") or self.rule.batch_size) * (given.get("grad_accum") or 1)
        steps = given.get("max_steps")
        if steps is None:
            steps = filled["max_steps"] = steps_for(self.rule.epochs, train_records(), batch)
        if given.get("warmup_steps") is None:
            filled["warmup_steps"] = warmup_for(steps)
        return filled

    def describe(self, given: dict[str, Any], args) -> str:
        """One line: the row used and where each defaulted value came from."""
        size = f"{self.parameters / 1e6:,.0f}M parameters, " if self.parameters else ""
        parts = [f"{flag(key)} {getattr(args, key):g}" for key in RULE_FIELDS if given.get(key) is None]
        if given.get("max_steps") is None:
            per_step = args.batch_size * args.grad_accum
            parts.append(f"--max-steps {args.max_steps} ({self.rule.epochs:g} epoch(s) over the training records "
                         f"at {per_step} per step, at least {MIN_STEPS})")
        if given.get("warmup_steps") is None:
            parts.append(f"--warmup-steps {args.warmup_steps} ({WARMUP_FRACTION:.0%} of the steps)")
        if not parts:
            return ""
        return (f"defaults for a {self.size_class} model ({size}{self.model}) on {self.device}: "
                + ", ".join(parts))


def defaults_table() -> str:
    """``RULES`` as a Markdown table, one row per size class and device (``any`` when both devices share a
    rule): what docs/training.md shows."""
    lines = ["| model | device | batch | LoRA rank | LoRA layers | max seq length | learning rate | epochs | save every |",
             "|---|---|---|---|---|---|---|---|---|"]
    for size, label in SIZE_LABELS.items():
        cpu, gpu = RULES[(size, "cpu")], RULES[(size, "gpu")]
        for device, rule in ([("any", cpu)] if cpu == gpu else [("CPU", cpu), ("GPU (CUDA, MPS)", gpu)]):
            lines.append(f"| {label} | {device} | {rule.batch_size} | {rule.lora_rank} | {rule.lora_layers} | "
                         f"{rule.max_seq_length} | {rule.learning_rate:g} | {rule.epochs:g} | {rule.save_every} |")
    return "\n".join(lines)


def steps_for(epochs: float, records: int, batch: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``records`` at ``batch`` records per step (at least MIN_STEPS)."""
    return max(MIN_STEPS, math.ceil(epochs * records / max(batch, 1)))


def warmup_for(steps: int) -> int:
    """WARMUP_FRACTION of the steps, at least 1 and always shorter than the run."""
    return min(max(1, round(WARMUP_FRACTION * steps)), steps - 1)


def warmup_warning(warmup_steps: int, max_steps: int) -> str | None:
    """A warning when the warm-up is not shorter than the run (the peak learning rate is never reached)."""
    if warmup_steps < max_steps:
        return None
    return (f"--warmup-steps {warmup_steps} is not shorter than the run ({max_steps} steps): the learning rate "
            f"never reaches its peak; lower --warmup-steps")


def choose(model: str, device: str | None, parameters: int | None, builtin: bool) -> DefaultChoice:
    """The row for a model of ``parameters`` (``builtin``: the tiny demo model) on ``device``."""
    if builtin:
        size_class = "demo"
    elif parameters is not None and parameters < SMALL_MODEL_PARAMETERS:
        size_class = "small"
    else:
        size_class = "large"
    device_class = "cpu" if device in (None, "cpu") else "gpu"
    return DefaultChoice(size_class, device_class, parameters, model, device or "cpu")


def flag(key: str) -> str:
    """The CLI flag of a setting: ``lora_rank`` -> ``--lora-rank``."""
    return "--" + key.replace("_", "-")
