"""LoRA training under the Empirical Distrust objective: ``TrainingArgs`` and the loop.

The pieces the loop wires together are small and usable on their own (the fit probe uses
them too): ``load_for_training`` (model + LoRA on a device), ``compute_loss`` (one forward
pass -> ``LossParts``) and ``build_optimizer`` (AdamW over the trainable parameters).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shlex
import signal
import sys
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import get_cosine_schedule_with_warmup

from your_ai.train.checkpoints import (
    ADAPTER_WEIGHTS_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    CheckpointError,
    OutputDirContents,
    checkpoints_dir,
    find_resumable_checkpoint,
    inspect_output_dir,
    list_checkpoints,
    load_adapter_weights,
    load_training_state,
    read_trainer_state,
    remove_run_entries,
    remove_stale_temporaries,
    save_adapter,
    save_best,
    save_checkpoint,
    set_aside_damaged,
    step_dir_name,
)
from your_ai.train import parallel as distributed
from your_ai.data.records import (
    TRAIN_FILE,
    VAL_FILE,
    BatchSampler,
    DataPosition,
    Example,
    TrainingFiles,
    collate,
    no_records,
    read_records,
    record_scores,
    tokenize_records,
    training_files,
)
from your_ai.files import write_json_atomic

from your_ai.objective.distrust import (
    DEFAULT_ALPHA,
    MODES,
    DistrustWeighting,
    LossParts,
    check_alpha,
    distrust_objective,
    per_sample_cross_entropy,
)
from your_ai.hardware import pick_device, training_dtype
from your_ai.model.lora import LoraSettings, apply_lora, smallest_adapted_dimension
from your_ai.model.resolve import (
    InvalidModelNameError,
    ResolvedModel,
    build_config,
    build_model_from_config,
    build_random_model,
    load_model,
    load_tokenizer,
    model_or_default,
    resolve_model,
)
from your_ai.model.quantize import QuantizationError, check_bits
from your_ai.step.modes import STEP_MODES, StepMode, select_step_mode
from your_ai.step.memory import (
    PeakMemory,
    default_budget_gb,
    sharding_saves_gb,
    use_expandable_segments,
)
from your_ai.model.architecture import architecture_from_config, read_architecture
from your_ai.model.meta import parameters_on_meta
from your_ai.model.presets import PRESETS, TINY
from your_ai.train import defaults as run_defaults
from your_ai.train.step import MicroBatch, NonFiniteGradient, optimizer_step
# ---------------------------------------------------------------------------- model

@dataclass
class TrainingModel:
    """A model ready to train: PEFT-wrapped, on its device, in its training dtype."""

    model: Any  # peft.PeftModel
    tokenizer: Any  # None for a synthetic (random-weight) model
    resolved: ResolvedModel | None  # None for a synthetic model
    architecture_name: str  # e.g. "LlamaForCausalLM"
    dtype: torch.dtype
    notes: list[str] = field(default_factory=list)


def load_for_training(
    model: str,
    lora: LoraSettings,
    device: str,
    *,
    grad_checkpoint: bool = False,
    synthetic: bool = False,
    trust_remote_code: bool = False,
    quantize: int | None = None,
    seed: int = 0,
    on_meta: bool = False,
) -> TrainingModel:
    """Resolve and load ``model`` (or build a random-weight copy of preset ``model`` when
    ``synthetic``) in ``training_dtype(device)`` on ``device``, and wrap it with fresh LoRA adapters
    (``lora.reset_adapters`` with ``seed``).

    ``quantize`` 4: the decoder layers' linear weights in NF4 (QLoRA, ``your_ai.model.quantize``), built or
    read one tensor at a time. ``on_meta``: the model's parameters on the meta device, nothing read
    or allocated (``distributed.shard_and_load`` shards and fills them). Resolution errors
    (``ModelNotAvailableError``, ``InvalidModelNameError``) propagate.
    """
    from your_ai.model import quantize as nf4
    dtype = training_dtype(device)
    notes: list[str] = []
    if quantize:
        if on_meta:
            raise QuantizationError("--quantize 4 builds its 4-bit weights whole on each process; it cannot start "
                                    "from sharded weights")
        nf4.check_available()
    if synthetic:
        if model not in PRESETS:
            raise InvalidModelNameError(
                f"synthetic models are built from presets; {model!r} is not one of: {', '.join(PRESETS)}"
            )
        architecture = PRESETS[model].architecture
        tokenizer, resolved = None, None
    else:
        resolved = resolve_model(model)
        tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    with parameters_on_meta() if on_meta else nullcontext():
        if synthetic and quantize:
            base = nf4.build_quantized_random_model(build_config(architecture), dtype=dtype, device=device)
        elif synthetic:
            base = build_random_model(architecture, dtype=dtype, device=device)
        elif quantize:
            base = nf4.load_quantized_model(resolved.path, dtype=dtype, device=device,
                                            trust_remote_code=trust_remote_code)
        elif on_meta:
            base = build_model_from_config(resolved, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        else:
            base = load_model(resolved, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if on_meta:  # tying inside the meta block makes a new tensor of the head: tie it to the embeddings again
        base.tie_weights()
    if quantize:
        if device.startswith("cuda"):
            nf4.use_compiled_dequantization(base)
        summary = nf4.quantized_summary(base)
        notes.append(f"QLoRA: {summary['quantized_tensors']} linear weights of the decoder layers in NF4 "
                     f"({summary['quantized_weights']:,} weights); the model's weights take "
                     f"{summary['weight_bytes'] / 1e9:.2f} GB")
    base.config.use_cache = False
    if grad_checkpoint:
        _enable_checkpointing(base)
    with parameters_on_meta() if on_meta else nullcontext(), warnings.catch_warnings():
        # PEFT asks transformers a deprecated question; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model, note = apply_lora(base, lora, seed)
    if note:
        notes.append(note)
    return TrainingModel(
        model=peft_model,
        tokenizer=tokenizer,
        resolved=resolved,
        architecture_name=type(base).__name__,
        dtype=dtype,
        notes=notes,
    )


@dataclass
class PreparedStep:
    """The step mode applied to a model: what ``compute_loss(..., fast_head=...)`` takes, and notes."""

    mode: StepMode
    fast_head: bool  # the chunked head (False: the full logits)
    notes: list[str] = field(default_factory=list)

    @property
    def chunk_tokens(self) -> int | None:
        """Tokens per chunk of the chunked head (None: the full logits)."""
        return (self.mode.chunk_tokens or None) if self.fast_head else None


def apply_step_mode(model, requested: str, lora: LoraSettings, batch_size: int, seq_length: int, device: str,
                    budget_gb: float, *, grad_checkpoint: bool = False, kept: dict | None = None,
                    quantize: int | None = None) -> PreparedStep:
    """Choose the step mode for ``requested`` (``step_modes.STEP_MODES``) and a budget, and apply it.

    ``model`` comes from ``load_for_training`` with ``grad_checkpoint`` only for ``plain`` (the plain
    step uses Hugging Face gradient checkpointing; the other modes decide what is recomputed).
    ``kept``: a ``StepMode.to_dict()`` saved with a checkpoint, reused as it was (a resumed run).
    A model whose head is not a plain linear layer trains through the full logits (the reason says so).
    """
    from your_ai.step import fast as fast_step
    try:
        architecture = architecture_from_config(model.config.to_dict())
    except ValueError as error:
        raise TrainingError(f"the step mode needs the model's shape: {error}") from None
    full_logits = not fast_step.supports_fast_head(model)
    shape = (architecture, batch_size, seq_length, lora, device)
    try:
        if kept is not None and kept.get("name") in fast_step.MODE_NAMES:
            mode = fast_step.resumed_mode(kept, *shape, budget_gb, full_logits=full_logits, quantize=quantize)
        else:
            mode = fast_step.select_step_mode(requested, *shape, budget_gb, grad_checkpoint=grad_checkpoint,
                                              full_logits=full_logits, quantize=quantize)
    except ValueError as error:
        raise TrainingArgsError(str(error)) from None
    if mode.name == "plain":
        return PreparedStep(mode, False)
    try:
        setup = fast_step.prepare_step(model, mode)
    except ValueError as error:
        raise TrainingError(f"step mode {mode.name}: {error}; --step-mode plain trains this model") from None
    return PreparedStep(mode, not full_logits, setup.notes)


def _enable_checkpointing(base) -> None:
    """Recompute activations in the backward pass (non-reentrant), across transformers versions."""
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.enable_input_require_grads()


# ---------------------------------------------------------------------------- loss

@dataclass(frozen=True)
class Objective:
    """How the distrust term enters the loss (see ``your_ai.objective.distrust``).

    ``weighted`` needs ``weighting`` (fixed once from the training set); ``additive`` adds
    ``lambda_weight * sum(d)`` to the mean cross-entropy and changes no gradient.
    """

    mode: str = "weighted"
    alpha: float = DEFAULT_ALPHA
    lambda_weight: float = 1.0
    weighting: DistrustWeighting | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"distrust mode {self.mode!r} must be one of {', '.join(MODES)}")
        check_alpha(self.alpha)

    @classmethod
    def from_dataset(cls, mode: str, alpha: float, lambda_weight: float, auth_weights, prov_entropies) -> "Objective":
        """The objective for a training set: in weighted mode the normaliser is fixed here, once."""
        weighting = None
        if mode == "weighted":
            weighting = DistrustWeighting.from_dataset(auth_weights, prov_entropies, alpha, lambda_weight)
        return cls(mode=mode, alpha=alpha, lambda_weight=lambda_weight, weighting=weighting)


def compute_loss(model, batch: dict, objective: Objective, *, fast_head: bool | str = False,
                 chunk_tokens: int | None = None) -> LossParts:
    """One forward pass -> total (to differentiate), mean cross-entropy and mean distrust value.

    ``batch`` holds ``input_ids``, ``attention_mask``, ``labels`` (-100 where not learned),
    ``auth_weight`` and ``prov_entropy``. Labels are not passed to the model, so the
    model computes no loss of its own. ``fast_head``: the same per-sample cross-entropy without
    the full logits (``your_ai.step.fast``; True or a head name: "auto", "chunked", "liger"), in
    chunks of ``chunk_tokens`` (None: the vocabulary's default, ``StepMode.chunk_tokens``).
    """
    if fast_head:
        from your_ai.step.fast import model_per_sample_cross_entropy

        per_sample = model_per_sample_cross_entropy(model, batch, head="auto" if fast_head is True else fast_head,
                                                    chunk_tokens=chunk_tokens)
    else:
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        per_sample = per_sample_cross_entropy(output.logits, batch["labels"])
    return distrust_objective(
        per_sample,
        batch["auth_weight"],
        batch["prov_entropy"],
        mode=objective.mode,
        alpha=objective.alpha,
        lambda_weight=objective.lambda_weight,
        weighting=objective.weighting,
    )


def build_optimizer(model, learning_rate: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.999, eps 1e-8) over the trainable (LoRA) parameters only; on CUDA and the CPU
    its fused implementation (one kernel for all parameters: on an H100, 4% more tokens/s in the 7B
    fast step than the default multi-tensor path)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters")
    fused = parameters[0].device.type in ("cuda", "cpu") or None
    return torch.optim.AdamW(
        parameters, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay, fused=fused
    )


class _StepLoss(torch.nn.Module):
    """``compute_loss`` as a module: DistributedDataParallel sees the forward pass of either loss path."""

    def __init__(self, model, objective: Objective, fast_head: bool | str, chunk_tokens: int | None = None):
        super().__init__()
        self.model, self.objective, self.fast_head, self.chunk_tokens = model, objective, fast_head, chunk_tokens

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = compute_loss(self.model, batch, self.objective, fast_head=self.fast_head,
                             chunk_tokens=self.chunk_tokens)
        return parts.total, parts.cross_entropy, parts.distrust


def _global_parts(parts: LossParts, count: int, tokens: int, objective: Objective, world, device: str):
    """The loss parts of the whole global batch (what one process would log for it) and its tokens,
    from each rank's parts over its ``count`` samples."""
    total, cross_entropy, distrust_value, samples, tokens = distributed.all_sum(
        [float(parts.total.detach()) * count, float(parts.cross_entropy) * count, float(parts.distrust) * count,
         count, tokens], world, device)
    cross_entropy, mean_distrust = cross_entropy / samples, distrust_value / samples
    if objective.mode == "weighted":
        total = total / samples
    else:  # mean cross-entropy + lambda * sum of the distrust values
        total = cross_entropy + objective.lambda_weight * distrust_value
    as_tensor = lambda value: torch.tensor(value, dtype=torch.float32)  # noqa: E731
    return LossParts(as_tensor(total), as_tensor(cross_entropy), as_tensor(mean_distrust)), int(tokens)


# ---------------------------------------------------------------------------- configuration

# Defaults that do not depend on the model, the device or the data; those that do come from
# the table in ``your_ai.train.defaults`` (batch, LoRA rank and layers, sequence length, learning
# rate, checkpoint interval; steps from epochs over the data, warm-up as a fraction of the steps).
DEFAULTS: dict[str, Any] = {
    "grad_accum": 1,
    "max_grad_norm": 1.0,
    "weight_decay": 0.01,
    "distrust_mode": "weighted",
    "alpha": DEFAULT_ALPHA,
    "lambda_weight": 1.0,
    "keep_last": 3,
    "memory_report_interval": 10,
    "seed": 42,
    "step_mode": "auto",
}

# Settings that shape the run's numbers: a resumed run keeps the checkpoint's values.
RUN_SHAPE_FIELDS = (
    "model", "data", "batch_size", "lora_rank", "lora_alpha", "lora_layers", "learning_rate",
    "warmup_steps", "max_steps", "grad_accum", "max_grad_norm", "max_seq_length", "weight_decay",
    "distrust_mode", "alpha", "lambda_weight", "seed", "quantize",
)


class TrainingArgsError(ValueError):
    """A training setting that cannot work; the message names the flag."""


class TrainingError(Exception):
    """Training cannot start or go on; the message says what to do."""


class MemoryLimitExceeded(Exception):
    """The measured peak went above ``--max-memory``; a checkpoint was saved first."""

    def __init__(self, peak_gb: float, limit_gb: float, step: int, checkpoint: Path):
        self.peak_gb, self.limit_gb, self.step, self.checkpoint = peak_gb, limit_gb, step, checkpoint
        super().__init__(
            f"peak memory {peak_gb:.2f} GB went above --max-memory {limit_gb:.2f} GB at step {step}; "
            f"saved checkpoint {checkpoint}. Lower --batch-size, --max-seq-length or --lora-rank, "
            f"or add --grad-checkpoint, then continue with --resume"
        )


@dataclass
class TrainingArgs:
    """Everything a training run needs. ``None`` means the default (``DEFAULTS``, and the table of
    ``your_ai.train.defaults`` for the model, the device and the data); ``with_defaults()`` fills them in."""

    model: str | None = None  # preset, hub id or directory; None: models.DEFAULT_MODEL
    data: str | None = None  # JSONL file, or directory with train.jsonl (+ val.jsonl); None: the demo corpus
    output_dir: str | None = None  # None: models/distrust-<preset or model name>
    batch_size: int | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None  # None: 2 * rank
    lora_layers: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    max_steps: int | None = None
    grad_accum: int | None = None
    max_grad_norm: float | None = None
    max_seq_length: int | None = None
    weight_decay: float | None = None
    distrust_mode: str | None = None
    alpha: float | None = None
    lambda_weight: float | None = None
    save_every: int | None = None
    keep_last: int | None = None
    eval_every: int | None = None  # None: save_every
    memory_report_interval: int | None = None
    seed: int | None = None
    max_memory: float | None = None  # GB; None: 80% of the device's memory
    metrics_file: str | None = None  # None: <output_dir>/metrics.jsonl
    save_best: bool = False
    resume: bool = False
    tensorboard: bool = True
    grad_checkpoint: bool = False
    step_mode: str | None = None  # auto | fast | selective | small | plain (your_ai.step.modes); None: auto
    device: str | None = None
    trust_remote_code: bool = False
    strategy: str | None = None  # data-parallel strategy under torchrun: auto | ddp | fsdp
    quantize: int | None = None  # 4: QLoRA, the base model's decoder linears in NF4 (your_ai.model.quantize)
    overwrite: bool = False  # a new run may replace an earlier run's files in output_dir

    def with_defaults(self) -> "TrainingArgs":
        model = model_or_default(self.model)
        values = asdict(self)
        values["model"] = model
        for key, value in DEFAULTS.items():
            if values[key] is None:
                values[key] = value
        if values["data"] is None:
            values["data"] = str(demo_corpus_path())
        table_fields = (*run_defaults.RULE_FIELDS, "max_steps", "warmup_steps")
        if not self.resume and any(values[key] is None for key in table_fields):  # resumed: the checkpoint's
            data = values["data"]
            values.update(default_choice(self).values(values, lambda: count_training_records(data)))
        if values["output_dir"] is None:
            values["output_dir"] = default_output_dir(model)
        if values["eval_every"] is None:
            values["eval_every"] = values["save_every"]
        return TrainingArgs(**values)

    def validate(self) -> None:
        """Raise ``TrainingArgsError`` naming the first flag with a value that cannot work."""
        for key in ("batch_size", "lora_rank", "lora_layers", "max_steps", "grad_accum", "save_every",
                    "keep_last", "eval_every", "memory_report_interval"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TrainingArgsError(f"{_flag(key)} must be a whole number >= 1 (got {value!r})")
        if self.max_seq_length is not None and (not isinstance(self.max_seq_length, int) or self.max_seq_length < 2):
            raise TrainingArgsError(f"--max-seq-length must be a whole number >= 2 (got {self.max_seq_length!r})")
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
            raise TrainingArgsError(f"--warmup-steps must be a whole number >= 0 (got {self.warmup_steps!r})")
        for key in ("learning_rate", "max_grad_norm", "lora_alpha", "max_memory"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise TrainingArgsError(f"{_flag(key)} must be a positive number (got {value!r})")
        if self.weight_decay is not None and not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise TrainingArgsError(f"--weight-decay must be a number >= 0 (got {self.weight_decay!r})")
        if self.step_mode is not None and self.step_mode not in STEP_MODES:
            raise TrainingArgsError(f"--step-mode {self.step_mode!r} must be one of {', '.join(STEP_MODES)}")
        if self.overwrite and self.resume:
            raise TrainingArgsError("--overwrite starts the run over and --resume continues it; give one of them")
        if self.grad_checkpoint and self.step_mode in ("fast", "selective"):
            raise TrainingArgsError(f"--grad-checkpoint recomputes every layer; it cannot go with --step-mode "
                                    f"{self.step_mode} (use auto, small or plain)")
        try:
            distributed.check_strategy(self.strategy)
        except ValueError as error:
            raise TrainingArgsError(str(error)) from None
        try:
            check_bits(self.quantize)
        except QuantizationError as error:
            raise TrainingArgsError(str(error)) from None
        if self.distrust_mode is not None and self.distrust_mode not in MODES:
            raise TrainingArgsError(f"--distrust-mode {self.distrust_mode!r} must be one of {', '.join(MODES)}")
        if self.alpha is not None:
            try:
                check_alpha(self.alpha)
            except ValueError as error:
                raise TrainingArgsError(f"--alpha: {error}") from None
        if self.lambda_weight is not None:
            high = 1.0 if (self.distrust_mode or DEFAULTS["distrust_mode"]) == "weighted" else math.inf
            if not (0.0 <= self.lambda_weight <= high):
                bound = "in [0, 1] in weighted mode" if high == 1.0 else ">= 0"
                raise TrainingArgsError(f"--lambda-weight must be {bound} (got {self.lambda_weight!r})")

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(rank=self.lora_rank, alpha=self.lora_alpha, layers=self.lora_layers)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def default_choice(args: TrainingArgs) -> run_defaults.DefaultChoice:
    """The row of the defaults table for ``args``' model (its size) and device."""
    from your_ai.model.resolve import ModelResolutionError

    model = model_or_default(args.model)
    if model in PRESETS:
        parameters = PRESETS[model].architecture.parameter_count()
    else:
        try:
            parameters = read_architecture(resolve_model(model).path).parameter_count()
        except (ModelResolutionError, ValueError, OSError):  # reported where the model is loaded
            parameters = None
    try:
        device = pick_device(args.device)
    except ValueError:  # an unusable --device is reported where the run starts
        device = None
    return run_defaults.choose(model, device, parameters, builtin=model in (TINY.name, TINY.hub_id))


def count_training_records(data: str) -> int:
    """The number of training records in ``data`` (a file, or a directory's train.jsonl)."""
    return len(read_records(training_files(data).train).records)


# The prompt a demo run (no --data) answers with the base and the fine-tuned model at the end.
DEMO_PROMPT = "Which is the better evidence for how a machine worked: its 1923 patent or a modern encyclopedia summary?"


def demo_corpus_path() -> Path:
    return Path(str(resources.files("your_ai") / "assets" / "demo_corpus.jsonl"))


def default_output_dir(model: str) -> str:
    """``models/distrust-<preset name, or the last part of a hub id or directory>``."""
    name = model if model in PRESETS else Path(model.rstrip("/\\")).name
    return str(Path("models") / f"distrust-{name}")


def _merge_for_resume(given: TrainingArgs, saved: dict, output_dir: Path) -> TrainingArgs:
    """The checkpoint's settings; this invocation may change only those that do not shape the numbers."""
    values = {key: saved.get(key) for key in RUN_SHAPE_FIELDS}
    for key in RUN_SHAPE_FIELDS:
        value = getattr(given, key)
        if value is None or value == values[key]:
            continue
        if key == "data" and Path(value).resolve() == Path(values[key]).resolve():
            continue
        if key == "model" and resolve_model(value).path == resolve_model(values[key]).path:
            continue
        raise TrainingArgsError(
            f"{_flag(key)} {value!r} differs from the checkpoint's {values[key]!r}: a resumed run keeps its "
            f"settings (start a new run with another --output-dir to change it)"
        )
    for key, value in asdict(given).items():
        if key not in RUN_SHAPE_FIELDS:  # given here, else as the run had it (switches: as given here)
            values[key] = value if value is not None else saved.get(key)
    values["step_mode"] = _resumed_step_mode(given, saved.get("step_mode"))
    values["output_dir"] = str(output_dir)  # where the checkpoint was found
    return TrainingArgs(**values).with_defaults()


def _resumed_step_mode(given: TrainingArgs, saved: str | None) -> str:
    """The step mode of a resumed run. The loss path (the plain step or the fast step) stays as the
    run started. Within the fast step, ``--step-mode`` or ``--grad-checkpoint`` given now changes
    only what is recomputed, which changes no number; otherwise the checkpoint's mode is kept."""
    saved = saved or "plain"  # a run saved before step modes existed took the plain step
    wanted = given.step_mode
    if wanted is not None and (wanted == "plain") != (saved == "plain"):
        raise TrainingArgsError(
            f"--step-mode {wanted!r} differs from the checkpoint's {saved!r}: a resumed run keeps its loss path "
            f"(the plain step or the fast step); start a new run with another --output-dir to change it"
        )
    if wanted is not None:
        return wanted
    if given.grad_checkpoint and saved != "plain":
        return "small"
    return saved


# ---------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    output_dir: Path  # the final adapter and tokenizer are here
    steps: int
    final_loss: float | None
    best_val_loss: float | None
    peak_memory_gb: float
    elapsed_s: float
    resumed_from: int | None  # step of the checkpoint a resumed run started from
    stopped_early: bool  # ``stop_after`` was reached before max_steps
    normaliser: float | None  # mean distrust value of the training set (weighted mode)
    notes: list[str] = field(default_factory=list)
    step_mode: dict | None = None  # the StepMode the run used (your_ai.step.modes), with its reason
    world_size: int = 1  # training processes (data-parallel under torchrun)
    rank: int = 0  # this process's rank; only rank 0 prints and writes
    max_steps: int | None = None
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM": stopped after a step, with a checkpoint
    resume_command: str | None = None  # the command that continues a stopped run
    already_finished: bool = False  # --resume of a run that had done all its steps: nothing was done

    @property
    def exit_code(self) -> int:
        """0; 128 + the signal's number for a run stopped by SIGINT (130) or SIGTERM (143)."""
        return 128 + signal.Signals[self.stopped_by].value if self.stopped_by else 0


def train(args: TrainingArgs, *, stop_after: int | None = None, console=None) -> TrainResult:
    """Fine-tune with LoRA under the distrust objective; returns where the adapter is.

    Nothing is loaded or written until the data has been read, checked and scored.
    ``stop_after`` ends the run (with a checkpoint) after that many steps, as an interruption
    would, without changing the schedule; ``resume`` continues from the newest checkpoint.

    Started by torchrun (``WORLD_SIZE`` > 1 in the environment), every process runs this loop
    data-parallel (``your_ai.train.parallel``): each trains on its slice of global batches of
    ``batch_size`` x world size samples, and rank 0 alone prints and writes.
    """
    planned = _plan(args)  # first: a resumed run trains on the device its checkpoint names (--device)
    if planned.finished:
        return _finished_result(planned)
    world, device = distributed.start(pick_device(planned.args.device))
    use_expandable_segments(device)
    try:
        return _train(args, planned, world, device, stop_after=stop_after, console=console)
    finally:
        distributed.stop(world)


def _finished_result(planned: _Plan) -> TrainResult:
    """``--resume`` of a run that already did all its steps: nothing loaded, nothing written."""
    state = planned.state
    return TrainResult(output_dir=planned.output_dir, steps=state["step"], final_loss=None,
                       best_val_loss=state.get("best_val_loss"), peak_memory_gb=0.0, elapsed_s=0.0,
                       resumed_from=state["step"], stopped_early=False, normaliser=state.get("normaliser"),
                       max_steps=planned.args.max_steps, already_finished=True)


def _train(args: TrainingArgs, planned: _Plan, world: distributed.World, device: str, *,
           stop_after: int | None, console) -> TrainResult:
    import io

    from rich.console import Console

    if not world.main:
        console = Console(file=io.StringIO())  # rank 0 alone reports
    console = console or Console(soft_wrap=True)
    started = time.perf_counter()
    mode_given = args.step_mode is not None or args.grad_checkpoint
    given = args
    args, output_dir, checkpoint, saved_state = planned.args, planned.output_dir, planned.checkpoint, planned.state
    notes: list[str] = list(planned.notes)
    if checkpoint is None:
        explained = default_choice(given).describe(asdict(given), args)
        if explained:
            notes.append(explained)
    warning = run_defaults.warmup_warning(args.warmup_steps, args.max_steps)
    if warning:
        notes.append(warning)

    # data: read, check, score -- before any model is loaded or anything written
    files = training_files(args.data)
    train_records = read_records(files.train).records
    if not train_records:
        raise no_records(files.train)
    val_records = read_records(files.val).records if files.val else []
    if args.save_best and not val_records:
        raise TrainingArgsError(
            f"--save-best needs a validation set: pass a directory holding {TRAIN_FILE} and {VAL_FILE} as --data"
        )
    train_w, train_h, computed = record_scores(train_records)
    val_w, val_h, val_computed = record_scores(val_records)
    if computed or val_computed:
        notes.append(
            f"scored {computed + val_computed} record(s) without auth_weight/prov_entropy from their text and metadata"
        )
    digest = _data_digest(files)
    if saved_state is not None and saved_state.get("data_sha256") != digest:
        raise TrainingError(f"the data in {args.data} changed since checkpoint {checkpoint}; a resumed run needs the same data")
    objective = Objective.from_dataset(args.distrust_mode, args.alpha, args.lambda_weight, train_w, train_h)
    normaliser = objective.weighting.normaliser if objective.weighting else None
    differing = distributed.check_same({"data_sha256": digest, "normaliser": normaliser}, world)
    if differing is not None:
        raise TrainingError(
            f"rank {differing['rank']} read different training data than rank {world.rank} from {args.data} "
            f"(sha256 {differing['data_sha256'][:12]} vs {digest[:12]}); every process needs the same data"
        )
    resolved = resolve_model(args.model)
    _check_lora_rank(args, resolved)
    limit_gb = args.max_memory if args.max_memory is not None else default_budget_gb(device)
    sharding_saves = _sharding_saves_gb(args, world, device, limit_gb, resolved, notes)
    sharded = sharding_saves is not None
    if world.distributed:
        how = "FSDP, parameters sharded" if sharded else "DistributedDataParallel"
        notes.append(
            f"data-parallel over {world.size} processes ({world.backend}, {how}): global batch "
            f"{args.batch_size * world.size} = --batch-size {args.batch_size} x {world.size}"
        )
    saved_world = (saved_state or {}).get("world_size", 1)
    if saved_state is not None and saved_world != world.size:
        notes.append(f"the checkpoint was saved by {saved_world} process(es); the run goes on with {world.size} "
                     f"from the same sample (global batch now {args.batch_size * world.size})")

    # tokenizer and examples
    base_model = str(resolved.path) if resolved.source == "local" else args.model
    tokenizer = load_tokenizer(resolved, trust_remote_code=args.trust_remote_code)
    train_examples, inexact = tokenize_records(train_records, train_w, train_h, tokenizer, args.max_seq_length)
    val_examples, _ = tokenize_records(val_records, val_w, val_h, tokenizer, args.max_seq_length)
    if inexact:
        notes.append(f"{inexact} chat record(s) learned whole: the chat template does not render turn by turn")
    empty = sum(1 for example in train_examples if example.target_tokens == 0)
    if empty:
        notes.append(f"{empty} training record(s) have nothing to learn within --max-seq-length {args.max_seq_length}")

    # model, optimizer, schedule
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    loaded = load_for_training(
        args.model, args.lora_settings(), device,
        grad_checkpoint=args.grad_checkpoint and args.step_mode == "plain", trust_remote_code=args.trust_remote_code,
        quantize=args.quantize, seed=args.seed,
        on_meta=sharded and not args.quantize,  # 4-bit weights are built whole on each rank, then sharded
    )
    notes.extend(loaded.notes)
    model = loaded.model
    step_loss = _StepLoss(model, objective, False)  # the head is the step mode's, set below
    if sharded:
        read = distributed.shard_and_load(step_loss, world, device, loaded.resolved.path, args.seed)
        if read:
            notes.append(f"each process read only its shards of the {read} base weight tensors")
    step_budget_gb = limit_gb + (sharding_saves or 0.0)  # the step mode's estimate holds the whole model
    prepared = apply_step_mode(
        model, args.step_mode, args.lora_settings(), args.batch_size, args.max_seq_length, device, step_budget_gb,
        grad_checkpoint=args.grad_checkpoint, kept=(saved_state or {}).get("step_mode") if not mode_given else None,
        quantize=args.quantize,
    )
    step_mode = prepared.mode
    step_loss.fast_head, step_loss.chunk_tokens = prepared.fast_head, prepared.chunk_tokens
    notes.extend(prepared.notes)
    args = replace(args, step_mode=step_mode.name)  # saved with each checkpoint: a resumed run keeps its mode
    model.train()
    if checkpoint is not None:
        load_adapter_weights(model, checkpoint)
    optimizer = build_optimizer(model, args.learning_rate, args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    step, position, best_val = 0, DataPosition(), None
    tokens_seen, elapsed_before = 0, 0.0
    if checkpoint is not None:
        set_optimizer_state = (lambda saved: distributed.set_full_optimizer_state(model, optimizer, saved)) \
            if sharded else None
        state = load_training_state(checkpoint, optimizer=optimizer, scheduler=scheduler,
                                    set_optimizer_state=set_optimizer_state)
        step, best_val = state["step"], state.get("best_val_loss")
        position = DataPosition(**state["position"])
        tokens_seen, elapsed_before = state.get("tokens_seen", 0), state.get("elapsed_s", 0.0)
    resumed_from = step if checkpoint is not None else None

    if world.main:
        _clear_for_this_run(planned, notes)
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output_dir)
    peak = PeakMemory(device)
    peak.reset()
    trainable = [p for p in model.parameters() if p.requires_grad]
    pad_id = tokenizer.pad_token_id

    _print_plan(console, args, loaded, device, files, len(train_examples), len(val_examples), objective, notes,
                resumed_from, limit_gb, trainable, step_mode)

    def state_for_checkpoint() -> dict:
        return {
            "args": asdict(args),
            "position": asdict(sampler.position),
            "data_sha256": digest,
            "best_val_loss": best_val,
            "normaliser": objective.weighting.normaliser if objective.weighting else None,
            "tokens_seen": tokens_seen,
            "elapsed_s": elapsed_before + time.perf_counter() - started,
            "step_mode": step_mode.to_dict(),
            "world_size": world.size,
        }

    def full_states() -> tuple[dict | None, dict | None]:
        """Sharded: the full state dicts gathered to rank 0 (every rank takes part); else ``None``s."""
        return distributed.full_states(model, optimizer, world) if sharded else (None, None)

    def checkpoint_now() -> Path:
        model_state, optimizer_state = full_states()
        if world.main:
            save_checkpoint(output_dir, step, model=model, optimizer=optimizer, scheduler=scheduler,
                            trainer_state=state_for_checkpoint(), base_model=base_model, keep_last=args.keep_last,
                            model_state=model_state, optimizer_state=optimizer_state)
        distributed.barrier(world)
        return checkpoints_dir(output_dir) / step_dir_name(step)

    # the position counts samples of the shared order: the same for every rank and any number of ranks
    sampler = BatchSampler(len(train_examples), args.batch_size * world.size, args.seed, position)
    if not sharded:
        step_loss = distributed.wrap(step_loss, world, device)
    reporter = _Reporter(console, output_dir, args, start_step=step) if world.main else None
    last_saved, final_loss, stopped_early, stopped_by = (step if checkpoint is not None else None), None, False, None
    window = _Window()
    stop = _StopOnSignal(quiet=not world.main)
    stop.install()  # SIGINT / SIGTERM from here on: finish the step, save a checkpoint, stop
    try:
        while step < args.max_steps:
            learning_rate = scheduler.get_last_lr()[0]
            micro_batches, shares = [], []
            for _ in range(args.grad_accum):
                shared = sampler.next()
                mine = distributed.rank_slice(shared, world, args.batch_size)
                # a rank left without samples (a short last batch) takes part with zero weight
                batch = collate([train_examples[i] for i in (mine or shared[:1])], pad_id)
                batch = {key: value.to(device) for key, value in batch.items()}
                micro_batches.append(MicroBatch(batch, distributed.loss_scale(len(mine), len(shared), world)))
                shares.append(len(mine))
            try:
                output = optimizer_step(step_loss, micro_batches, optimizer, scheduler, args.max_grad_norm)
            except NonFiniteGradient as error:  # checked before the update: the adapter stays as it was
                raise TrainingError(
                    f"{error} at step {step + 1}; lower --learning-rate (now {args.learning_rate:g}) or --max-grad-norm"
                ) from None
            grad_norm = output.grad_norm
            for parts, micro, count in zip(output.parts, micro_batches, shares):
                tokens = int(micro.batch["attention_mask"].sum()) if count else 0
                if world.distributed:
                    parts, tokens = _global_parts(parts, count, tokens, objective, world, device)
                window.add(parts, tokens, args.grad_accum)
                tokens_seen += tokens
            step += 1
            peak.sample()
            peak_gb = distributed.all_max(peak.peak_gb(), world, device)  # every rank stops at the same step
            if step % args.memory_report_interval == 0 or step == args.max_steps or step == 1:
                final_loss = window.loss()
                if reporter is not None:
                    reporter.train(step, sampler.position.epoch, window, learning_rate, grad_norm, peak_gb,
                                   elapsed_before + time.perf_counter() - started)
                window = _Window()
            # sharded parameters: every rank evaluates (the layers are gathered collectively); else rank 0 alone
            if (world.main or sharded) and val_examples and (step % args.eval_every == 0 or step == args.max_steps):
                with distributed.gathered(step_loss):
                    val = evaluate(model, val_examples, objective, args.batch_size, pad_id, device,
                                   fast_head=prepared.fast_head, chunk_tokens=prepared.chunk_tokens)
                improved = best_val is None or val["val_loss"] < best_val
                if improved:
                    best_val = val["val_loss"]
                if reporter is not None:
                    reporter.eval(step, val, improved and args.save_best)
                if improved and args.save_best:
                    model_state = distributed.full_states(model, None, world)[0] if sharded else None
                    if world.main:
                        save_best(output_dir, model=model, tokenizer=loaded.tokenizer, base_model=base_model,
                                  info={"step": step, **val}, state_dict=model_state)
            if peak_gb > limit_gb:
                saved = checkpoint_now()
                raise MemoryLimitExceeded(peak_gb, limit_gb, step, saved)
            if step % args.save_every == 0 or step == args.max_steps:
                checkpoint_now()
                last_saved = step
            stopped_by = stop.agreed(world, device) if step < args.max_steps else None
            if stopped_by or (stop_after is not None and step >= stop_after and step < args.max_steps):
                if last_saved != step:
                    checkpoint_now()
                stopped_early = True
                break
    finally:
        stop.restore()
        if reporter is not None:
            reporter.close()

    if final_loss is None and window.steps:
        final_loss = window.loss()
    if not stopped_early:
        model_state = distributed.full_states(model, None, world)[0] if sharded else None
        if world.main:
            save_adapter(model, output_dir, base_model=base_model, tokenizer=loaded.tokenizer, state_dict=model_state)
    distributed.barrier(world)
    elapsed = time.perf_counter() - started
    result = TrainResult(
        output_dir=output_dir,
        steps=step,
        final_loss=final_loss,
        best_val_loss=best_val,
        peak_memory_gb=peak.peak_gb(),
        elapsed_s=elapsed,
        resumed_from=resumed_from,
        stopped_early=stopped_early,
        normaliser=normaliser,
        notes=notes,
        step_mode=step_mode.to_dict(),
        world_size=world.size,
        rank=world.rank,
        max_steps=args.max_steps,
        stopped_by=stopped_by,
        resume_command=resume_command(args, world.size) if stopped_early else None,
    )
    if not stopped_early and world.main:
        write_json_atomic(output_dir / SUMMARY_FILE, {**asdict(result), "output_dir": str(output_dir),
                                                          "args": asdict(args), "base_model": base_model})
    return result


class _StopOnSignal:
    """SIGINT (Ctrl-C) and SIGTERM (a cluster's preemption) during the loop: the step in progress
    finishes, a checkpoint is written and the run stops. Further signals are ignored until the process
    exits, so a second Ctrl-C cannot cut the checkpoint (or the message after it) short. Installed from
    the main thread only."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, quiet: bool = False):
        self.received = 0  # the first signal's number
        self.quiet = quiet
        self.previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}

    def restore(self) -> None:
        """The handlers as they were, unless a signal came: then the run is stopping and stays deaf to
        further signals (the caller exits; the CLI ignores them while the interpreter shuts down)."""
        if self.received:
            return
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def _handle(self, number: int, frame) -> None:
        name = signal.Signals(number).name
        if not self.received:
            self.received = number
            message = f"{name}: finishing this step, then saving a checkpoint and stopping"
        else:
            message = f"{name} ignored: the run is saving its checkpoint and stopping"
        if not self.quiet:
            print(f"\n{message}", file=sys.stderr, flush=True)

    def agreed(self, world, device: str) -> str | None:
        """The signal's name when any process received one (every process takes part and gets the
        same answer, so all stop at the same step); ``None`` otherwise."""
        number = int(distributed.all_max(float(self.received), world, device))
        return signal.Signals(number).name if number else None


def resume_command(args: TrainingArgs, world_size: int = 1) -> str:
    """The command that continues this run: its model and output directory, ``--resume``, and the
    switches that apply as given (a resumed run takes every other setting from its checkpoint)."""
    words = ["your-ai", "train", "--model", args.model, "--output-dir", str(args.output_dir), "--resume"]
    if world_size > 1:
        words += ["--gpus", str(world_size)]
    if args.device:
        words += ["--device", args.device]
    for flag, given in (("--save-best", args.save_best), ("--no-tensorboard", not args.tensorboard),
                        ("--grad-checkpoint", args.grad_checkpoint), ("--trust-remote-code", args.trust_remote_code)):
        if given:
            words.append(flag)
    return shlex.join(words)


def _clear_for_this_run(planned: _Plan, notes: list[str]) -> None:
    """Before the first write: ``--overwrite`` removes the earlier run's files; a resumed run sets its
    damaged checkpoints aside (renamed, not deleted)."""
    if planned.replaced is not None:
        removed = remove_run_entries(planned.replaced)
        notes.append(f"--overwrite: removed the earlier run's {_names(removed, shown=len(removed))} "
                     f"from {planned.output_dir}")
    for path in planned.damaged:
        if path.exists():
            set_aside_damaged(path)


def _check_lora_rank(args: TrainingArgs, resolved: ResolvedModel) -> None:
    """Refuse a LoRA rank above the smallest dimension of an adapted projection (read from the model's
    config.json, before any weight is loaded): the rank could not be used, only stored."""
    try:
        config = json.loads((Path(resolved.path) / "config.json").read_text())
        name, size = smallest_adapted_dimension(config, args.lora_settings().target_modules)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return  # loading the model reports an unreadable config
    if args.lora_rank > size:
        raise TrainingArgsError(
            f"--lora-rank {args.lora_rank} is larger than the smallest adapted dimension ({name} {size} of model "
            f"{args.model}); use at most {size}"
        )


def _sharding_saves_gb(args: TrainingArgs, world, device: str, limit_gb: float, resolved: ResolvedModel,
                       notes: list[str]) -> float | None:
    """``None`` when the processes hold the whole model (one process, DDP); when they shard it (FSDP), the
    memory each saves. Sharded: ``--strategy fsdp``, or ``auto`` when no step mode fits the whole model
    in one device's budget (the choice is noted)."""
    asked = args.strategy or "auto"  # checked by TrainingArgs.validate
    if not world.distributed or asked == "ddp":
        return None
    architecture = read_architecture(resolved.path)
    if asked == "auto":
        smallest = select_step_mode("auto", architecture, args.batch_size, args.max_seq_length,
                                    args.lora_settings(), device, limit_gb, quantize=args.quantize)
        if distributed.pick_strategy(args.strategy, smallest.fits) != "fsdp":
            return None
        notes.append(f"--strategy auto: the whole model does not fit one device's {limit_gb:.2f} GB budget "
                     f"(estimated {smallest.estimate_gb:.2f} GB), so its weights are sharded (fsdp)")
    return sharding_saves_gb(architecture, device, world.size, args.quantize)


@dataclass
class _Plan:
    """What ``_plan`` decided before anything is loaded: the settings, the output directory, and for a
    resumed run the checkpoint and its state."""

    args: TrainingArgs
    output_dir: Path
    checkpoint: Path | None = None
    state: dict | None = None
    notes: list[str] = field(default_factory=list)
    damaged: list[Path] = field(default_factory=list)  # checkpoints that do not load: set aside, never deleted
    replaced: OutputDirContents | None = None  # --overwrite: the earlier run's files, removed before writing

    @property
    def finished(self) -> bool:
        """A resumed run whose checkpoint is at --max-steps and whose final adapter is written."""
        return (self.state is not None and self.state.get("step", 0) >= self.args.max_steps
                and (self.output_dir / ADAPTER_WEIGHTS_FILE).is_file())


def _plan(given: TrainingArgs) -> _Plan:
    """Defaults, the output directory's rules, resume merge and validation."""
    given.validate()
    provisional = given.with_defaults()
    output_dir = Path(provisional.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainingError(f"--output-dir {output_dir} is a file; pass a directory")
    if not given.resume:
        replaced = _check_new_run_dir(output_dir, given.overwrite)
        args = replace(provisional, data=str(Path(provisional.data).resolve()), model=_absolute_if_dir(provisional.model))
        args.validate()
        return _Plan(args, output_dir, replaced=replaced)
    point = find_resumable_checkpoint(output_dir)
    if point.checkpoint is None:
        raise TrainingError(_nothing_to_resume(output_dir, point.damaged))
    state = read_trainer_state(point.checkpoint)
    args = _merge_for_resume(given, state["args"], output_dir)
    args.validate()
    return _Plan(args, output_dir, point.checkpoint, state, point.notes, [path for path, _ in point.damaged])


def _check_new_run_dir(output_dir: Path, overwrite: bool) -> OutputDirContents | None:
    """A new run writes into an empty or new directory. One holding an earlier run is refused, or with
    ``overwrite`` returned (its files are removed once the run starts writing); one holding anything
    a training run does not write is refused, also with ``overwrite``."""
    contents = inspect_output_dir(output_dir)
    if contents.empty:
        return None
    if not contents.is_run:
        held = _names(contents.other_entries or contents.run_entries)
        raise TrainingError(
            f"--output-dir {output_dir} is not empty and holds no training run ({held}); pass a new or empty "
            f"--output-dir" + (" (--overwrite replaces only a training run)" if overwrite else "")
        )
    if not overwrite:
        raise TrainingError(
            f"{output_dir} already holds a training run ({_run_status(output_dir)}); continue it with --resume, "
            f"start it over with --overwrite (removes its adapter, checkpoints, metrics and best/), "
            f"or pass another --output-dir"
        )
    if contents.other_entries:
        raise TrainingError(
            f"--overwrite: {output_dir} also holds {_names(contents.other_entries)}, which training does not "
            f"write; move them away or pass another --output-dir (nothing was removed)"
        )
    return contents


def _names(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _run_status(output_dir: Path) -> str:
    """How far the run in ``output_dir`` got, from its summary or its newest checkpoint."""
    try:
        summary = json.loads((output_dir / SUMMARY_FILE).read_text())
        return f"finished {summary['steps']} of {summary['args']['max_steps']} steps"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = list_checkpoints(output_dir)
    if not found:
        return "stopped before its first checkpoint"
    try:
        total = read_trainer_state(found[-1][1])["args"]["max_steps"]
        return f"checkpoint at step {found[-1][0]} of {total}"
    except (CheckpointError, KeyError, TypeError):
        return f"checkpoint at step {found[-1][0]}"


def _nothing_to_resume(output_dir: Path, damaged: list[tuple[Path, str]]) -> str:
    if damaged:
        reasons = "; ".join(reason for _, reason in damaged)
        return (f"--resume: no checkpoint in {checkpoints_dir(output_dir)} can be loaded ({reasons}); "
                f"start over with --overwrite or pass another --output-dir")
    if (output_dir / SUMMARY_FILE).is_file():
        return (f"--resume: {output_dir} holds a run that {_run_status(output_dir)} and has no checkpoints; "
                f"nothing to resume (start over with --overwrite, or pass another --output-dir)")
    return f"--resume: no complete checkpoint in {checkpoints_dir(output_dir)}"


def _absolute_if_dir(model: str) -> str:
    """A model directory as an absolute path (so a resumed run finds it from anywhere); other names as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if model not in PRESETS and path.is_dir() else model


def _data_digest(files: TrainingFiles) -> str:
    digest = hashlib.sha256()
    for path in (files.train, files.val):
        if path is not None:
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


@torch.no_grad()
def evaluate(model, examples: list[Example], objective: Objective, batch_size: int, pad_token_id: int,
             device: str, *, fast_head: bool | str = False, chunk_tokens: int | None = None) -> dict[str, float]:
    """The objective over ``examples`` (in order), averaged per sample: val_loss, val_cross_entropy, val_distrust.

    ``fast_head``, ``chunk_tokens``: as in ``compute_loss`` (training passes the loss path it trains with)."""
    was_training = model.training
    model.eval()
    totals = {"val_loss": 0.0, "val_cross_entropy": 0.0, "val_distrust": 0.0}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {key: value.to(device) for key, value in collate(chunk, pad_token_id).items()}
        parts = compute_loss(model, batch, objective, fast_head=fast_head, chunk_tokens=chunk_tokens)
        totals["val_loss"] += float(parts.total) * len(chunk)
        totals["val_cross_entropy"] += float(parts.cross_entropy) * len(chunk)
        totals["val_distrust"] += float(parts.distrust) * len(chunk)
    if was_training:
        model.train()
    return {key: value / len(examples) for key, value in totals.items()}


class _Window:
    """Loss parts and tokens since the last report."""

    def __init__(self) -> None:
        self.total = self.cross_entropy = self.distrust = 0.0
        self.tokens, self.steps = 0, 0.0
        self.started = time.perf_counter()

    def add(self, parts: LossParts, tokens: int, grad_accum: int) -> None:
        self.total += float(parts.total.detach()) / grad_accum
        self.cross_entropy += float(parts.cross_entropy) / grad_accum
        self.distrust += float(parts.distrust) / grad_accum
        self.tokens += tokens
        self.steps += 1.0 / grad_accum

    def loss(self) -> float:
        return self.total / max(self.steps, 1e-9)

    def metrics(self) -> dict[str, float]:
        steps = max(self.steps, 1e-9)
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return {
            "loss": self.total / steps,
            "cross_entropy": self.cross_entropy / steps,
            "distrust": self.distrust / steps,
            "tokens_per_second": self.tokens / seconds,
        }


class _Reporter:
    """Progress bar and log lines on the console, the metrics JSONL file, TensorBoard."""

    def __init__(self, console, output_dir: Path, args: TrainingArgs, start_step: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = console
        self.metrics_path = Path(args.metrics_file) if args.metrics_file else output_dir / METRICS_FILE
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self.metrics = open(self.metrics_path, "a", encoding="utf-8")
        self.writer = None
        if args.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(output_dir / TENSORBOARD_DIR), purge_step=start_step or None)
        self.progress = Progress(
            TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"), console=console, transient=True,
        )
        self.task = self.progress.add_task("train", total=args.max_steps, completed=start_step, status="")
        self.max_steps = args.max_steps
        self.step_mode = args.step_mode
        self.progress.start()

    def _write(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()

    def train(self, step, epoch, window: _Window, learning_rate, grad_norm, peak_gb, elapsed) -> None:
        values = window.metrics()
        record = {"kind": "train", "step": step, "epoch": epoch, **values, "learning_rate": learning_rate,
                  "grad_norm": grad_norm, "peak_memory_gb": peak_gb, "elapsed_s": elapsed, "step_mode": self.step_mode}
        self._write(record)
        if self.writer is not None:
            for key in ("loss", "cross_entropy", "distrust", "learning_rate", "grad_norm", "tokens_per_second",
                        "peak_memory_gb"):
                self.writer.add_scalar(f"train/{key}", record[key], step)
            self.writer.flush()
        line = (f"step {step}/{self.max_steps} | loss {values['loss']:.4f} | ce {values['cross_entropy']:.4f} | "
                f"distrust {values['distrust']:.2f} | lr {learning_rate:.2e} | grad norm {grad_norm:.3f} | "
                f"{values['tokens_per_second']:.0f} tok/s | peak {peak_gb:.2f} GB")
        self.progress.console.print(line, highlight=False)
        self.progress.update(self.task, completed=step, status=f"loss {values['loss']:.4f}")

    def eval(self, step: int, values: dict, saved_best: bool) -> None:
        self._write({"kind": "eval", "step": step, **values})
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"val/{key[4:]}", value, step)
            self.writer.flush()
        best = " (best so far, saved to best/)" if saved_best else ""
        self.progress.console.print(
            f"step {step}: val loss {values['val_loss']:.4f} | val ce {values['val_cross_entropy']:.4f}{best}",
            highlight=False,
        )

    def close(self) -> None:
        self.progress.stop()
        self.metrics.close()
        if self.writer is not None:
            self.writer.close()


def _print_plan(console, args, loaded, device, files, n_train, n_val, objective, notes, resumed_from, limit_gb,
                trainable, step_mode) -> None:
    parameters = sum(p.numel() for p in trainable)
    console.print(f"Model: {args.model} ({loaded.architecture_name}, {str(loaded.dtype).replace('torch.', '')} on {device})",
                  highlight=False)
    console.print(f"Data: {files.train} ({n_train} records)" + (f", validation {files.val} ({n_val})" if files.val else ""),
                  highlight=False)
    console.print(
        f"LoRA: rank {args.lora_rank}, alpha {args.lora_settings().effective_alpha:g}, last {args.lora_layers} layers, "
        f"{parameters:,} trainable parameters | batch {args.batch_size} x {args.grad_accum}, seq {args.max_seq_length}, "
        f"lr {args.learning_rate:g}, {args.max_steps} steps",
        highlight=False,
    )
    if objective.weighting is not None:
        console.print(
            f"Objective: weighted (lambda {objective.lambda_weight:g}, alpha {objective.alpha:g}); normaliser "
            f"d_bar = {objective.weighting.normaliser:.4f} (mean distrust value over {n_train} training records)",
            highlight=False,
        )
    else:
        console.print(
            f"Objective: additive (CE + {objective.lambda_weight:g} * sum d): the distrust term is a constant and "
            f"changes no gradient", highlight=False,
        )
    console.print(f"Memory limit: {limit_gb:.2f} GB | output: {args.output_dir}", highlight=False)
    console.print(f"Step mode: {step_mode.reason}", highlight=False)
    if resumed_from is not None:
        console.print(f"Resuming from step {resumed_from}", highlight=False)
    for note in notes:
        console.print(f"Note: {note}", highlight=False)
