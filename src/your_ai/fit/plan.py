"""What a fit test runs and what it is expected to take: its config, the request the parent makes of it,
and the analytic estimates (step mode, memory, strategy) it is planned with, from the architecture alone."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from your_ai.fit.result import FitResult
from your_ai.hardware import pick_device
from your_ai.model.architecture import Architecture
from your_ai.model.lora import LoraSettings, check_dora
from your_ai.model.presets import PRESETS, Preset
from your_ai.model.quantize import check_bits
from your_ai.model.resolve import ResolvedModel, resolve_model
from your_ai.step import memory
from your_ai.step.modes import (
    PLAIN_HEAD_MODEL_TYPES,
    StepMode,
    check_step_mode,
    mode_estimate,
    plain_mode,
    select_step_mode,
)

MLX_STEP_MODES = ("auto", "plain")  # the MLX engine's step: mlx-lm's forward through the full logits

DEFAULT_STEPS = 5  # training steps of a benchmark's fit test
SWEEP_STEPS = 15  # training steps of each config of the optimize sweep
DEFAULT_TIMEOUT_S = 1800  # seconds per fit test
DEFAULT_LOG = "benchmark_log.jsonl"
LEARNING_RATE = 1e-4


@dataclass(frozen=True)
class FitConfig:
    """What one fit test trains: the benchmark's fixed conservative config by default."""
    batch_size: int = 2
    lora_rank: int = 64
    lora_layers: int = 16
    steps: int = DEFAULT_STEPS
    seq_length: int | None = None  # --max-seq-length; None: 1024, or the model's context if smaller
    grad_checkpoint: bool = False
    step_mode: str = "auto"  # your_ai.step.modes.STEP_MODES; auto: the fastest that fits the budget
    quantize: int | None = None  # 4: QLoRA, NF4 decoder linears (your_ai.model.quantize)
    dora: bool = False  # DoRA adapters (your_ai.model.lora), in the plain step

    def __post_init__(self) -> None:
        for name in ("batch_size", "lora_rank", "lora_layers", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.seq_length is not None and self.seq_length < 2:
            raise ValueError(f"seq_length={self.seq_length!r} must be at least 2")
        check_step_mode(self.step_mode, self.grad_checkpoint, self.dora)
        check_bits(self.quantize)

    @property
    def lora(self) -> LoraSettings:
        return LoraSettings(rank=self.lora_rank, layers=self.lora_layers, dora=self.dora)

    def seq_length_for(self, architecture: Architecture) -> int:
        """The sequence length it trains on for a model of ``architecture``."""
        return memory.fit_seq_length(self.seq_length, architecture)

    def result_config(self) -> dict:
        """The ``config`` of a result: as asked (the fit test fills in what it used: sequence, dtype, ...)."""
        return {
            "batch_size": self.batch_size, "lora_rank": self.lora_rank, "lora_layers": self.lora_layers,
            "seq_length": self.seq_length, "steps": self.steps, "dtype": None,
            "grad_checkpoint": self.grad_checkpoint, "step_mode": self.step_mode, "quantize": self.quantize,
            **({"dora": True} if self.dora else {}),  # DoRA runs only: LoRA results keep their shape
        }

    def cli_args(self) -> list[str]:
        """The ``benchmark --fit-test`` options that reproduce this config."""
        args = [
            "--batch-size", str(self.batch_size), "--lora-rank", str(self.lora_rank),
            "--lora-layers", str(self.lora_layers), "--steps", str(self.steps),
        ]
        if self.seq_length is not None:
            args += ["--max-seq-length", str(self.seq_length)]
        if self.grad_checkpoint:
            args.append("--grad-checkpoint")
        if self.step_mode != "auto":
            args += ["--step-mode", self.step_mode]
        if self.quantize:
            args += ["--quantize", str(self.quantize)]
        if self.dora:
            args.append("--dora")
        return args

    def describe(self) -> str:
        """"batch B, rank R, layers L"."""
        return f"batch {self.batch_size}, {'DoRA ' if self.dora else ''}rank {self.lora_rank}, layers {self.lora_layers}"


@dataclass(frozen=True)
class FitTest:
    """One fit test the parent asks for: the model, where, with what config and budget, and what it knows of
    the model beforehand (its preset, the estimate). The same for every outcome of that test."""
    model: str  # preset, hub id or directory, as given
    device: str
    config: FitConfig
    max_memory_gb: float | None
    synthetic: bool = False
    preset: Preset | None = None  # default: the preset named ``model``, if any
    estimate_gb: float | None = None
    processes: int = 1  # > 1: under torchrun on that many processes
    strategy: str | None = None  # ddp or fsdp on several processes

    def result(self, status: str = "error", error: str | None = None) -> FitResult:
        """A result of this fit test before anything is measured: what the fit test fills in, or what the
        parent reports for a test that gave no result of its own (timeout, crash, over budget before loading)."""
        preset = self.preset or PRESETS.get(self.model)
        return FitResult(
            model=self.model, preset=preset.name if preset else None,
            model_name=preset.hub_id if preset else self.model, params=preset.params if preset else None,
            config=self.config.result_config(), device=self.device, synthetic=self.synthetic,
            max_memory_gb=None if self.max_memory_gb is None else round(self.max_memory_gb, 3),
            status=status, error=error, estimate_gb=self.estimate_gb,
        )

    def command(self) -> list[str]:
        """``your-ai benchmark --fit-test MODEL ...``; on several processes the same under torchrun
        (``parallel.launch_command``) with ``--strategy``."""
        where = ["--engine", "mlx"] if self.device == memory.MLX_DEVICE else ["--device", self.device]
        arguments = ["--fit-test", self.model, "--max-memory", repr(float(self.max_memory_gb)), *where,
                     *self.config.cli_args()]
        if self.synthetic:
            arguments.append("--synthetic")
        if self.processes > 1:
            from your_ai.train.launch import launch_command

            return launch_command(self.processes, [*arguments, "--strategy", self.strategy or "auto"], "benchmark")
        return [sys.executable, "-m", "your_ai", "benchmark", *arguments]


# ---------------------------------------------------------------------------- estimates

def step_mode_for(architecture: Architecture, device: str, config: FitConfig,
                  budget_gb: float | None = None) -> StepMode:
    """The step mode a fit test of ``config`` runs on ``device`` within ``budget_gb`` (None: no budget), as
    the fit test chooses it (``step.modes.select_step_mode``), from the architecture alone. On MLX it is the
    plain step (``mlx_step_mode``)."""
    check_fit_dora(config, device)
    if device == memory.MLX_DEVICE:
        return mlx_step_mode(step_shape(architecture, device, config), config, budget_gb)
    return select_step_mode(
        config.step_mode, step_shape(architecture, device, config), budget_gb,
        grad_checkpoint=config.grad_checkpoint, full_logits=architecture.model_type not in PLAIN_HEAD_MODEL_TYPES,
    )


def check_fit_dora(config: FitConfig, device: str | None) -> None:
    """``model.lora.check_dora`` on the engine ``device`` runs (``fit_device``'s "mlx": the MLX engine, which
    takes DoRA on a 4-bit base; any other: the torch engine, which does not)."""
    check_dora(config.dora, config.quantize, "mlx" if device == memory.MLX_DEVICE else "torch")


def check_fit_engine(config: FitConfig, device: str | None) -> None:
    """The settings of ``config`` that the engine ``device`` runs cannot take, refused before any fit test
    starts: ``check_fit_dora``'s, and on MLX a ``--step-mode`` other than auto or plain."""
    check_fit_dora(config, device)
    if device == memory.MLX_DEVICE:
        check_mlx_step_mode(config)


def check_mlx_step_mode(config: FitConfig) -> None:
    if config.step_mode not in MLX_STEP_MODES:
        raise ValueError(f"--step-mode {config.step_mode} is a step of the torch engine; the MLX engine runs "
                         f"{' or '.join(MLX_STEP_MODES)}")


def mlx_step_mode(shape: memory.StepShape, config: FitConfig, budget_gb: float | None) -> StepMode:
    """The MLX engine's step: the forward through the full logits, every layer recomputed in the backward
    pass with ``--grad-checkpoint``; ``--step-mode`` auto or plain."""
    check_mlx_step_mode(config)
    mode = plain_mode(shape, grad_checkpoint=config.grad_checkpoint, budget_gb=budget_gb)
    recomputed = ", every layer recomputed (--grad-checkpoint)" if config.grad_checkpoint else ""
    within = "" if budget_gb is None else (
        f", {'within' if mode.fits else 'above'} the {budget_gb:.2f} GB budget")
    return replace(mode, reason=f"plain: the MLX forward through the full logits{recomputed}; {shape.describe()} "
                                f"is estimated at {mode.estimate_gb:.2f} GB{within}")


def estimate_for(architecture: Architecture, device: str, config: FitConfig,
                 budget_gb: float | None = None) -> memory.MemoryEstimate:
    """The analytic estimate for a fit test of ``config`` on ``device`` (training dtype assumed), in the
    step mode it runs within ``budget_gb`` (``step_mode_for``)."""
    return mode_estimate(step_shape(architecture, device, config), step_mode_for(architecture, device, config, budget_gb))


def step_shape(architecture: Architecture, device: str, config: FitConfig) -> memory.StepShape:
    """The shape of a fit test of ``config`` on ``device``, as the memory estimator takes it."""
    return memory.StepShape(architecture, config.batch_size, config.seq_length_for(architecture), config.lora_rank,
                            config.lora_layers, device, config.quantize, dora=config.dora)


def fit_strategy(strategy: str | None, architecture: Architecture, device: str, config: FitConfig,
                 budget_gb: float | None, processes: int) -> str | None:
    """How a fit test on ``processes`` processes holds the model (None for one process): ``--strategy``
    ``ddp`` or ``fsdp`` as given; ``auto``: ``ddp`` when the one-device estimate fits ``budget_gb``, else
    ``fsdp`` (``parallel.pick_strategy``)."""
    if processes <= 1:
        return None
    if strategy in ("ddp", "fsdp"):
        return strategy
    from your_ai.train.parallel import pick_strategy

    fits = budget_gb is None or estimate_for(architecture, device, config, budget_gb).total_gb <= budget_gb
    return pick_strategy(strategy, fits)


def per_process_estimate_gb(architecture: Architecture, device: str, config: FitConfig, budget_gb: float | None,
                            processes: int = 1, strategy: str | None = None) -> float:
    """The analytic estimate for one process of a fit test (``estimate_for``): under ``fsdp`` its share of the
    weights, the rest whole, in the step mode the fit test picks for that share."""
    if strategy != "fsdp" or processes <= 1:
        return estimate_for(architecture, device, config, budget_gb).total_gb
    saved = memory.sharding_saves_gb(architecture, device, processes, config.quantize)
    return estimate_for(architecture, device, config, None if budget_gb is None else budget_gb + saved).total_gb - saved


# ---------------------------------------------------------------------------- where it runs

def check_processes(gpus: int, device: str | None) -> None:
    """``--gpus N`` (N > 1) is refused, with ``parallel.check_gpus``' message as a ValueError, on a machine
    that cannot run N processes (fewer CUDA GPUs, MPS, the MLX engine); ``device`` "cpu" runs N CPU
    processes."""
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"--gpus {gpus!r} must be a whole number >= 1")
    if gpus > 1 and device == memory.MLX_DEVICE:
        raise ValueError(f"--gpus {gpus} runs the torch engine under torchrun; the MLX engine runs one process")
    if gpus > 1:
        from your_ai.train.launch import DistributedError, check_gpus

        try:
            check_gpus(gpus, device)
        except DistributedError as error:
            raise ValueError(str(error)) from None


def fit_device(device: str | None, engine: str | None = None) -> str | None:
    """Where the fit tests run, before the device is resolved: "mlx" when ``engine`` (``--engine``, None:
    auto, ``hardware.pick_engine``) is the MLX engine, which runs on its own device (``--device`` is then
    refused), else ``device`` as given."""
    from your_ai.hardware import pick_engine

    if pick_engine(engine) != "mlx":
        return device
    if device not in (None, memory.MLX_DEVICE):
        raise ValueError(f"--device {device} is a device of the torch engine; the MLX engine runs on Metal "
                         f"(the CPU where there is no Metal): leave out --device or use --engine torch")
    return memory.MLX_DEVICE


def resolve_device(device: str | None) -> str:
    """The training device (cuda > mps > cpu, or the one asked for; "mlx": the MLX engine)."""
    if device in ("cpu", memory.MLX_DEVICE):
        return device

    return pick_device(device)


def resolve_tested_model(test: "FitTest", result: FitResult) -> ResolvedModel | None:
    """The fit test's model found on this machine (None for ``--synthetic``), its name and preset recorded in
    ``result``; a model that is not there raises ``ModelNotAvailableError``."""
    if test.synthetic:
        return None
    resolved = resolve_model(test.model)
    result.model_name = resolved.hub_id or str(resolved.path)
    if resolved.preset and not result.preset:  # a preset's hub id
        result.preset, result.params = resolved.preset.name, resolved.preset.params
    return resolved
