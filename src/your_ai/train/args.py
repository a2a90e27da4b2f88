"""What a training run is asked to do: ``TrainingArgs``, its validation and defaults, and resuming.

Every setting left ``None`` is filled by ``with_defaults`` from ``your_ai.train.defaults`` (the one
source of defaults, also for the CLI's help). A resumed run takes the settings that shape its numbers
from its checkpoint (``merge_for_resume``). Nothing here loads a model.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from your_ai.data.records import count_lines, training_files
from your_ai.hardware import ENGINES, pick_device, pick_engine
from your_ai.model.architecture import (
    architecture_from_config,
    read_architecture,
    read_config_values,
)
from your_ai.model.errors import ModelFileError, ModelResolutionError
from your_ai.model.lora import LoraSettings, check_dora, smallest_adapted_dimension
from your_ai.model.presets import PRESETS, TINY
from your_ai.model.quantize import QuantizationError, check_bits
from your_ai.model.resolve import (
    ResolvedModel,
    model_or_default,
    resolve_model,
)
from your_ai.objective.distrust import DEFAULT_ALPHA, MODES, check_alpha
from your_ai.step.modes import check_step_mode
from your_ai.train import defaults as run_defaults
from your_ai.train.defaults import ATTN_IMPLEMENTATIONS, DEFAULTS, flag
from your_ai.train.sinks import check_installed, parse_report_to

RUN_SHAPE_FIELDS = (
    "model", "data", "batch_size", "lora_rank", "lora_alpha", "lora_layers", "learning_rate",
    "warmup_steps", "max_steps", "grad_accum", "max_grad_norm", "max_seq_length", "weight_decay",
    "distrust_mode", "alpha", "lambda_weight", "seed", "quantize", "packing", "dora",
)

STRATEGIES = ("auto", "ddp", "fsdp")  # data-parallel strategies (your_ai.train.parallel)


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
    tensorboard: bool = True  # False: --no-tensorboard, TensorBoard left out of report_to
    report_to: str | None = None  # comma list of tensorboard, wandb, trackio, or none (your_ai.train.sinks)
    project: str | None = None  # the trackers' project; None: WANDB_PROJECT for wandb, else your-ai
    run_name: str | None = None  # the trackers' run name; None: the output directory's name
    grad_checkpoint: bool = False
    step_mode: str | None = None  # auto | fast | selective | small | plain (your_ai.step.modes); None: auto
    device: str | None = None
    trust_remote_code: bool = False
    strategy: str | None = None  # data-parallel strategy under torchrun: auto | ddp | fsdp
    quantize: int | None = None  # 4: QLoRA, the base model's decoder linears in NF4 (your_ai.model.quantize)
    overwrite: bool = False  # a new run may replace an earlier run's files in output_dir
    engine: str | None = None  # auto | torch | mlx (your_ai.hardware.pick_engine); None: auto
    packing: bool | None = None  # several records a row (your_ai.data.packing); None: when it pays
    attn_implementation: str | None = None  # sdpa | flex_attention | eager (transformers'); None: auto
    dora: bool | None = None  # DoRA adapters (your_ai.model.lora); None: DEFAULTS (plain LoRA)

    def with_defaults(self) -> "TrainingArgs":
        model = model_or_default(self.model)
        values = asdict(self)
        values["model"] = model
        for key, value in {**DEFAULTS, "alpha": DEFAULT_ALPHA}.items():
            if values[key] is None:
                values[key] = value
        if values["data"] is None:
            values["data"] = str(demo_corpus_path())
        table_fields = (*run_defaults.RULE_FIELDS, "max_steps", "warmup_steps")
        if not self.resume and any(values[key] is None for key in table_fields):  # resumed: the checkpoint's
            data = values["data"]
            values.update(default_choice(self).values(values, lambda: count_training_records(data)))
        if values["lora_alpha"] is None and values["lora_rank"] is not None:
            values["lora_alpha"] = LoraSettings(rank=values["lora_rank"]).effective_alpha
        if values["output_dir"] is None:
            values["output_dir"] = default_output_dir(model)
        if values["eval_every"] is None:
            values["eval_every"] = values["save_every"]
        if not self.resume or values["engine"] is not None:  # resumed: the checkpoint's (merge_for_resume)
            values["engine"] = pick_engine(values["engine"])
        return TrainingArgs(**values)

    def validate(self) -> None:
        """Raise ``TrainingArgsError`` naming the first flag with a value that cannot work."""
        for key in ("batch_size", "lora_rank", "lora_layers", "max_steps", "grad_accum", "save_every",
                    "keep_last", "eval_every", "memory_report_interval"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TrainingArgsError(f"{flag(key)} must be a whole number >= 1 (got {value!r})")
        if self.max_seq_length is not None and (not isinstance(self.max_seq_length, int) or self.max_seq_length < 2):
            raise TrainingArgsError(f"--max-seq-length must be a whole number >= 2 (got {self.max_seq_length!r})")
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
            raise TrainingArgsError(f"--warmup-steps must be a whole number >= 0 (got {self.warmup_steps!r})")
        for key in ("learning_rate", "max_grad_norm", "lora_alpha", "max_memory"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise TrainingArgsError(f"{flag(key)} must be a positive number (got {value!r})")
        if self.weight_decay is not None and not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise TrainingArgsError(f"--weight-decay must be a number >= 0 (got {self.weight_decay!r})")
        try:
            check_step_mode(self.step_mode or "auto", self.grad_checkpoint, bool(self.dora))
        except ValueError as error:
            raise TrainingArgsError(str(error)) from None
        self._check_engine()
        try:
            check_installed(parse_report_to(self.report_to, self.tensorboard))
        except ValueError as error:
            raise TrainingArgsError(str(error)) from None
        if self.packing is not None and not isinstance(self.packing, bool):
            raise TrainingArgsError(f"--packing is on or off (got {self.packing!r})")
        if self.attn_implementation not in (None, "auto", *ATTN_IMPLEMENTATIONS):
            raise TrainingArgsError(f"--attn-implementation {self.attn_implementation!r} is not one of auto, "
                                    f"{', '.join(ATTN_IMPLEMENTATIONS)}")
        if self.overwrite and self.resume:
            raise TrainingArgsError("--overwrite starts the run over and --resume continues it; give one of them")
        try:
            check_strategy(self.strategy)
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

    def _check_engine(self) -> None:
        """An engine that can run here, and settings it takes (MLX: one process, the plain step)."""
        if self.engine is not None and self.engine not in ENGINES:
            raise TrainingArgsError(f"--engine {self.engine!r} must be one of {', '.join(ENGINES)}")
        if self.engine in (None, "auto") and self.resume:
            return  # the checkpoint's engine, checked when merged
        try:
            engine = pick_engine(self.engine)
            check_dora(bool(self.dora), self.quantize, engine)
        except ValueError as error:
            raise TrainingArgsError(str(error)) from None
        if engine != "mlx":
            return
        if self.step_mode not in (None, "auto", "plain"):
            raise TrainingArgsError(f"--step-mode {self.step_mode} is a step of the torch engine; --engine mlx takes "
                                    f"the plain step (add --grad-checkpoint to recompute the layers)")
        if self.strategy not in (None, "auto"):
            raise TrainingArgsError(f"--strategy {self.strategy} is for data-parallel training with --engine torch; "
                                    f"--engine mlx trains in one process")
        if self.device not in (None, "cpu", "mps"):
            raise TrainingArgsError(f"--device {self.device} is not an MLX device; --engine mlx runs on the Apple "
                                    f"GPU (--device mps, the default on a Mac) or --device cpu")
        if self.attn_implementation not in (None, "auto"):
            raise TrainingArgsError("--attn-implementation picks a transformers attention kernel of the torch engine; "
                                    "--engine mlx uses MLX's own (leave it out)")
        if self.packing:
            raise TrainingArgsError("--packing is a feature of the torch engine; --engine mlx trains on padded "
                                    "batches (leave out --packing)")

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(rank=self.lora_rank, alpha=self.lora_alpha, layers=self.lora_layers,
                            dora=bool(self.dora))


def check_lora_rank(args: TrainingArgs, resolved: ResolvedModel) -> None:
    """Refuse a LoRA rank above the smallest dimension of an adapted projection (read from the model's
    config.json, before any weight is loaded): the rank could not be used, only stored."""
    try:
        architecture = architecture_from_config(read_config_values(resolved.path))
        name, size = smallest_adapted_dimension(architecture, args.lora_settings().target_modules)
    except (ModelFileError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return  # loading the model reports an unreadable config
    if args.lora_rank > size:
        raise TrainingArgsError(
            f"--lora-rank {args.lora_rank} is larger than the smallest adapted dimension ({name} {size} of model "
            f"{args.model}); use at most {size}"
        )


def default_choice(args: TrainingArgs) -> run_defaults.DefaultChoice:
    """The row of the defaults table for ``args``' model (its size) and device."""
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
    """The number of training records in ``data`` (a file, or a directory's train.jsonl), counted without
    reading them: a bad line stops the run where the records are read."""
    return count_lines(training_files(data).train)


DEMO_PROMPT = "Which is the better evidence for how a machine worked: its 1923 patent or a modern encyclopedia summary?"


def demo_corpus_path() -> Path:
    return Path(str(resources.files("your_ai") / "assets" / "demo_corpus.jsonl"))


def default_output_dir(model: str) -> str:
    """``models/distrust-<preset name, or the last part of a hub id or directory>``."""
    name = model if model in PRESETS else Path(model.rstrip("/\\")).name
    return str(Path("models") / f"distrust-{name}")


def merge_for_resume(given: TrainingArgs, saved: dict, output_dir: Path) -> TrainingArgs:
    """The checkpoint's settings; this invocation may change only those that do not shape the numbers."""
    values = {key: saved.get(key) for key in RUN_SHAPE_FIELDS}
    values["packing"] = saved.get("packing", False)  # a run saved before packing existed did not pack
    values["dora"] = saved.get("dora", False)  # nor one saved before DoRA was offered
    for key in RUN_SHAPE_FIELDS:
        value = getattr(given, key)
        if value is None or value == values[key]:
            continue
        if key == "data" and Path(value).resolve() == Path(values[key]).resolve():
            continue
        if key == "model" and resolve_model(value).path == resolve_model(values[key]).path:
            continue
        raise TrainingArgsError(
            f"{flag(key)} {value!r} differs from the checkpoint's {values[key]!r}: a resumed run keeps its "
            f"settings (start a new run with another --output-dir to change it)"
        )
    for key, value in asdict(given).items():
        if key not in RUN_SHAPE_FIELDS:  # given here, else as the run had it (switches: as given here)
            values[key] = value if value is not None else saved.get(key)
    values["step_mode"] = _resumed_step_mode(given, saved.get("step_mode"))
    values["engine"] = _resumed_engine(given, saved.get("engine"))
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


def _resumed_engine(given: TrainingArgs, saved: str | None) -> str:
    """A checkpoint resumes on the engine that wrote it (its optimizer state is that engine's)."""
    saved = saved or "torch"  # a run saved before engines existed ran on PyTorch
    if given.engine not in (None, "auto") and given.engine != saved:
        raise TrainingArgsError(f"--engine {given.engine} differs from the checkpoint's {saved!r}: a run resumes on "
                                f"the engine that wrote its checkpoints (start a new run with another --output-dir)")
    return saved


def resume_command(args: TrainingArgs, world_size: int = 1) -> str:
    """The command that continues this run: its model and output directory, ``--resume``, and the
    switches that apply as given (a resumed run takes every other setting from its checkpoint)."""
    words = ["your-ai", "train", "--model", args.model, "--output-dir", str(args.output_dir), "--resume"]
    if world_size > 1:
        words += ["--gpus", str(world_size)]
    if args.device:
        words += ["--device", args.device]
    for switch, given in (("--save-best", args.save_best), ("--no-tensorboard", not args.tensorboard),
                        ("--grad-checkpoint", args.grad_checkpoint), ("--trust-remote-code", args.trust_remote_code)):
        if given:
            words.append(switch)
    return shlex.join(words)


def check_mlx_processes(processes: int, source: str) -> None:
    """The MLX engine trains in one process: ``processes`` > 1 (``source``: ``--gpus N``, or torchrun's
    ``WORLD_SIZE``) is refused with ``TrainingArgsError``."""
    if processes > 1:
        raise TrainingArgsError(f"{source} trains data-parallel with --engine torch; --engine mlx trains in one "
                                f"process (leave out --gpus and torchrun)")


def check_strategy(strategy: str | None) -> str:
    """The data-parallel strategy asked for: ``ddp`` replicates the model on every rank, ``fsdp`` shards it
    over the ranks; ``auto`` reads as ``ddp`` here (``pick_strategy`` turns it into ``fsdp`` when the
    model does not fit one device)."""
    strategy = strategy or "auto"
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r} must be one of {', '.join(STRATEGIES)}")
    return "fsdp" if strategy == "fsdp" else "ddp"
