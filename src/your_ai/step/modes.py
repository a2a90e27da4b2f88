"""Step modes: how much of a LoRA training step is recomputed, chosen from a memory budget.

A mode is a ``StepMode``: ``fast`` recomputes nothing, ``small`` recomputes every adapted layer
in the backward pass, ``selective`` only as many adapted layers as the memory estimate needs;
``plain`` is the Hugging Face forward through the full logits (with Hugging Face gradient
checkpointing of every layer under ``--grad-checkpoint``), the step the others are compared
against. DoRA adapters (``StepShape.dora``) train in the plain step only: ``auto`` picks it for them
and says why (``DORA_PLAIN``), an explicit fast mode is refused. ``select_step_mode`` turns a
``--step-mode`` (``STEP_MODES``, ``check_step_mode``), the step's ``StepShape`` and a budget into a mode
with the reason for it; ``your_ai.step.fast.prepare_step`` applies it to a model.

Choosing needs only the analytic estimate (``your_ai.step.memory``), so this module imports no torch:
the benchmark's parent process and ``recommend`` use it too.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, replace

from your_ai.step.memory import MemoryEstimate, StepShape, estimate_training_memory

MODE_NAMES = ("fast", "selective", "small")
# What ``--step-mode`` accepts: ``auto`` picks among MODE_NAMES for the budget; ``plain`` is the
# Hugging Face forward through the full logits (gradient checkpointing of every layer with
# ``--grad-checkpoint``), the step the fast modes are compared against.
STEP_MODES = ("auto", *MODE_NAMES, "plain")

# Model types whose causal-LM head is a plain bias-free linear layer on the decoder's output
# (no logit scaling or soft-capping), so the chunked head computes exactly their logits.
PLAIN_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

# Liger-Kernel's patch function for each model type it fuses here.
LIGER_PATCHES = {
    "llama": "apply_liger_kernel_to_llama",
    "mistral": "apply_liger_kernel_to_mistral",
    "qwen2": "apply_liger_kernel_to_qwen2",
}

# Why a DoRA run takes the plain step: the fast step computes the LoRA projections its own way.
DORA_PLAIN = "DoRA: the fast step does not support it; plain step"

CHUNK_FP32_BYTES = 512 * 2**20  # fp32 logits of one chunk of the chunked head
# Modes that recompute layers are short of memory: their head chunks are 4x smaller (the head's
# matmuls stay large enough to run at full speed).
RECOMPUTE_CHUNK_FP32_BYTES = 128 * 2**20


def default_chunk_tokens(vocab_size: int, fp32_bytes: int = CHUNK_FP32_BYTES) -> int:
    """Tokens per head chunk: the largest power of two whose fp32 logits fit ``fp32_bytes``,
    within [256, 8192] (4096 for a 32k vocabulary, 1024 for 128k; a quarter of that, at least
    256, with ``RECOMPUTE_CHUNK_FP32_BYTES``)."""
    tokens = max(1, fp32_bytes // (4 * vocab_size))
    return max(256, min(8192, 1 << (tokens.bit_length() - 1)))


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


@dataclass(frozen=True)
class StepMode:
    """How much of the step is recomputed: ``checkpointed_layers`` of the adapted layers.

    ``chunk_tokens`` 0: the loss goes through the full logits (the plain step, or a model whose
    head is not a plain linear layer).
    """

    name: str  # fast | selective | small | plain
    checkpointed_layers: int
    adapted_layers: int
    estimate_gb: float
    budget_gb: float | None
    fits: bool
    fused_kernels: bool
    chunk_tokens: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def fused_kernels_available(device: str, model_type: str) -> bool:
    """The fused kernels (Liger's SwiGLU and RoPE, PyTorch's RMSNorm) apply: CUDA, ``liger_kernel`` installed,
    a known model type."""
    return device.startswith("cuda") and model_type in LIGER_PATCHES and liger_available()


def check_step_mode(step_mode: str, grad_checkpoint: bool = False, dora: bool = False) -> str:
    """``step_mode`` when it is one of ``STEP_MODES`` and goes with ``grad_checkpoint`` (which recomputes every
    layer: not with ``fast`` or ``selective``) and with ``dora`` (the plain step only: ``auto`` or ``plain``);
    a ``ValueError`` saying why not otherwise."""
    if step_mode not in STEP_MODES:
        raise ValueError(f"--step-mode {step_mode!r} must be one of {', '.join(STEP_MODES)}")
    if dora and step_mode in MODE_NAMES:
        raise ValueError(f"--step-mode {step_mode} does not support --dora (DoRA trains in the plain step); "
                         f"use --step-mode auto or plain")
    if grad_checkpoint and step_mode in ("fast", "selective"):
        raise ValueError(f"--grad-checkpoint recomputes every layer; it cannot go with --step-mode {step_mode} "
                         f"(use auto, small or plain)")
    return step_mode


def runs_plain(step_mode: str, dora: bool = False) -> bool:
    """Whether ``--step-mode step_mode`` trains in the plain step (``plain``, or ``auto`` with DoRA): the
    model is then loaded with Hugging Face gradient checkpointing under ``--grad-checkpoint``."""
    return step_mode == "plain" or (dora and step_mode == "auto")


def mode_estimate(shape: StepShape, mode: StepMode) -> MemoryEstimate:
    """The memory estimate of ``shape`` stepped in ``mode``."""
    return estimate_training_memory(shape, recomputed_layers=mode.checkpointed_layers,
                                    logits_chunk_tokens=mode.chunk_tokens or None, fused_kernels=mode.fused_kernels)


def mode_with(shape: StepShape, checkpointed_layers: int, *, budget_gb: float | None = None,
              fused_kernels: bool | None = None, reason: str | None = None, full_logits: bool = False) -> StepMode:
    """The step mode that recomputes ``checkpointed_layers`` adapted layers (clamped to [0, adapted]).

    ``full_logits``: the model's head is not a plain linear layer, so the loss goes through the
    full logits (``supports_fast_head``) and the estimate counts them.
    """
    adapted = shape.adapted_layers
    count = max(0, min(checkpointed_layers, adapted))
    if fused_kernels is None:
        fused_kernels = fused_kernels_available(shape.device, shape.architecture.model_type)
    chunk = 0 if full_logits else default_chunk_tokens(
        shape.architecture.vocab_size, RECOMPUTE_CHUNK_FP32_BYTES if count else CHUNK_FP32_BYTES)
    name = "fast" if count == 0 else "small" if count == adapted else "selective"
    mode = StepMode(name, count, adapted, 0.0, budget_gb, True, fused_kernels, chunk, reason or "")
    estimate = mode_estimate(shape, mode).total_gb
    if reason is None:
        reason = f"{name}: {count} of {adapted} adapted layers recomputed in the backward pass; estimated {estimate:.2f} GB"
        if budget_gb is not None:
            reason += f" of {budget_gb:.2f} GB"
    return replace(mode, estimate_gb=round(estimate, 3), fits=budget_gb is None or estimate <= budget_gb,
                   reason=reason)


def choose_mode(shape: StepShape, budget_gb: float, *, fused_kernels: bool | None = None,
                full_logits: bool = False) -> StepMode:
    """The fastest mode whose memory estimate fits ``budget_gb``: the fewest recomputed layers.

    When even ``small`` does not fit, returns ``small`` with ``fits=False`` and says so.
    """
    if not budget_gb > 0:
        raise ValueError(f"budget_gb={budget_gb!r} must be a positive number of GB")
    adapted = shape.adapted_layers
    if fused_kernels is None:
        fused_kernels = fused_kernels_available(shape.device, shape.architecture.model_type)

    def with_count(count: int, reason: str | None = None) -> StepMode:
        return mode_with(shape, count, budget_gb=budget_gb, fused_kernels=fused_kernels, full_logits=full_logits,
                         reason=reason)

    fast = with_count(0).estimate_gb
    if fast <= budget_gb:
        return with_count(0, f"fast: nothing recomputed; {shape.describe()} is estimated at {fast:.2f} GB, "
                             f"within the {budget_gb:.2f} GB budget")
    for count in range(1, adapted + 1):
        needed = with_count(count).estimate_gb
        if needed <= budget_gb:
            name = "small" if count == adapted else "selective"
            return with_count(count, f"{name}: {count} of {adapted} adapted layers recomputed in the backward pass "
                                     f"so that {shape.describe()} fits the {budget_gb:.2f} GB budget (estimated "
                                     f"{needed:.2f} GB; {fast:.2f} GB without recomputation)")
    needed = with_count(adapted).estimate_gb
    return with_count(adapted, f"small: {shape.describe()} is estimated at {needed:.2f} GB even with every adapted "
                               f"layer recomputed, above the {budget_gb:.2f} GB budget; lower the batch size or "
                               f"the sequence length")


def plain_mode(shape: StepShape, *, grad_checkpoint: bool = False, budget_gb: float | None = None,
               reason: str | None = None, origin: str = "--step-mode plain") -> StepMode:
    """The plain step: the Hugging Face forward through the full logits; with ``grad_checkpoint``,
    Hugging Face gradient checkpointing of every layer. ``origin``: why it was chosen, for the reason."""
    adapted = shape.adapted_layers
    mode = StepMode("plain", adapted if grad_checkpoint else 0, adapted, 0.0, budget_gb, True, False, 0, "")
    estimate = mode_estimate(shape, mode).total_gb
    if reason is None:
        recomputed = ", every layer recomputed (--grad-checkpoint)" if grad_checkpoint else ""
        reason = (f"plain: the Hugging Face forward through the full logits{recomputed} ({origin}); "
                  f"{shape.describe()} is estimated at {estimate:.2f} GB{_against(estimate, budget_gb)}")
    return replace(mode, estimate_gb=round(estimate, 3), fits=budget_gb is None or estimate <= budget_gb,
                   reason=reason)


def _against(estimate: float, budget_gb: float | None) -> str:
    if budget_gb is None:
        return ""
    return f", {'within' if estimate <= budget_gb else 'above'} the {budget_gb:.2f} GB budget"


def select_step_mode(requested: str, shape: StepShape, budget_gb: float | None, *, grad_checkpoint: bool = False,
                     full_logits: bool = False) -> StepMode:
    """The ``StepMode`` for ``--step-mode requested`` (one of ``STEP_MODES``), ``shape`` and a budget in GB.

    * ``auto``: ``choose_mode``, the fastest mode whose estimate fits ``budget_gb`` (no budget:
      ``fast``); ``grad_checkpoint`` makes it ``small``;
    * ``fast`` / ``small``: nothing / every adapted layer recomputed, whatever the budget;
    * ``selective``: the fewest recomputed adapted layers that fit the budget, at least one;
    * ``plain``: the Hugging Face forward through the full logits (``plain_mode``); also ``auto`` for
      DoRA adapters (``shape.dora``), which the other modes refuse.

    ``grad_checkpoint`` recomputes every layer, so it cannot go with ``fast`` or ``selective``
    (``check_step_mode``). ``full_logits``: the model's head is not a plain linear layer
    (``supports_fast_head``). The reason says which mode, why, and the estimate against the budget.
    """
    check_step_mode(requested, grad_checkpoint, shape.dora)
    if budget_gb is not None and not budget_gb > 0:
        raise ValueError(f"budget_gb={budget_gb!r} must be a positive number of GB")
    if runs_plain(requested, shape.dora):
        origin = DORA_PLAIN if requested == "auto" else "--step-mode plain"
        return plain_mode(shape, grad_checkpoint=grad_checkpoint, budget_gb=budget_gb, origin=origin)
    if requested == "auto" and not grad_checkpoint and budget_gb is not None:
        chosen = choose_mode(shape, budget_gb, full_logits=full_logits)
    else:
        if grad_checkpoint:
            count, origin = shape.adapted_layers, "--grad-checkpoint"
        elif requested == "auto":
            count, origin = 0, "no memory budget"
        elif requested == "selective":
            fewest = 1 if budget_gb is None else choose_mode(shape, budget_gb, full_logits=full_logits
                                                             ).checkpointed_layers
            count, origin = max(1, fewest), "--step-mode selective: the fewest that fit, at least one"
        else:
            count, origin = (0 if requested == "fast" else shape.adapted_layers), f"--step-mode {requested}"
        chosen = _explained(shape, count, budget_gb, origin, full_logits=full_logits)
    return _with_head(chosen, full_logits)


def resumed_mode(saved: dict, shape: StepShape, budget_gb: float | None, *, full_logits: bool = False) -> StepMode:
    """The mode a run saved with its checkpoint (``StepMode.to_dict()`` of fast, selective or small),
    for the run resumed: the same recomputed layers, fused kernels when still available here."""
    if saved.get("name") not in MODE_NAMES:
        raise ValueError(f"saved step mode {saved.get('name')!r} is not one of {', '.join(MODE_NAMES)}")
    fused = bool(saved.get("fused_kernels")) and fused_kernels_available(shape.device, shape.architecture.model_type)
    mode = _explained(shape, int(saved["checkpointed_layers"]), budget_gb, "kept from the checkpoint",
                      fused_kernels=fused, full_logits=full_logits)
    return _with_head(mode, full_logits)


def _explained(shape: StepShape, count: int, budget_gb: float | None, origin: str, *,
               fused_kernels: bool | None = None, full_logits: bool = False) -> StepMode:
    """``mode_with`` whose reason says what is recomputed, why (``origin``) and the estimate."""
    mode = mode_with(shape, count, budget_gb=budget_gb, fused_kernels=fused_kernels, full_logits=full_logits)
    what = "nothing recomputed" if mode.checkpointed_layers == 0 else (
        f"{mode.checkpointed_layers} of {mode.adapted_layers} adapted layers recomputed in the backward pass")
    return replace(mode, reason=f"{mode.name}: {what} ({origin}); {shape.describe()} is estimated at "
                                f"{mode.estimate_gb:.2f} GB{_against(mode.estimate_gb, budget_gb)}")


def _with_head(mode: StepMode, full_logits: bool) -> StepMode:
    if not full_logits:
        return mode
    return replace(mode, reason=mode.reason + "; the loss goes through the full logits (the model's head is not "
                                              "a plain linear layer)")
