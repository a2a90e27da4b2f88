"""Step modes: how much of a LoRA training step is recomputed, chosen from a memory budget.

A mode is a ``StepMode``: ``fast`` recomputes nothing, ``small`` recomputes every adapted layer
in the backward pass, ``selective`` only as many adapted layers as the memory estimate needs;
``plain`` is the Hugging Face forward through the full logits (with Hugging Face gradient
checkpointing of every layer under ``--grad-checkpoint``), the step the others are compared
against. ``select_step_mode`` turns a ``--step-mode`` (``STEP_MODES``) and a budget into a mode
with the reason for it; ``your_ai.step.fast.prepare_step`` applies it to a model.

Choosing needs only the analytic estimate (``your_ai.step.memory``), so this module imports no torch:
the benchmark's parent process and ``recommend`` use it too.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, replace

from your_ai.model.lora import LoraSettings
from your_ai.step.memory import estimate_for_device
from your_ai.model.presets import Architecture

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


def estimate_mode_gb(architecture: Architecture, batch_size: int, seq_length: int, lora: LoraSettings,
                     device: str, checkpointed_layers: int, *, fused_kernels: bool, chunk_tokens: int,
                     quantize: int | None = None) -> float:
    """The memory estimate of the fast step with ``checkpointed_layers`` adapted layers recomputed."""
    return estimate_for_device(
        architecture, device, batch_size=batch_size, seq_length=seq_length, lora_rank=lora.rank,
        lora_layers=lora.layers, grad_checkpoint=checkpointed_layers > 0, checkpointed_layers=checkpointed_layers,
        logits_chunk_tokens=chunk_tokens, fused_kernels=fused_kernels, quantize=quantize,
    ).total_gb


def mode_with(architecture: Architecture, batch_size: int, seq_length: int, lora: LoraSettings, device: str,
              checkpointed_layers: int, *, budget_gb: float | None = None, fused_kernels: bool | None = None,
              reason: str | None = None, full_logits: bool = False, quantize: int | None = None) -> StepMode:
    """The step mode that recomputes ``checkpointed_layers`` adapted layers (clamped to [0, adapted]).

    ``full_logits``: the model's head is not a plain linear layer, so the loss goes through the
    full logits (``supports_fast_head``) and the estimate counts them.
    """
    adapted = min(lora.layers, architecture.num_hidden_layers)
    count = max(0, min(checkpointed_layers, adapted))
    if fused_kernels is None:
        fused_kernels = fused_kernels_available(device, architecture.model_type)
    chunk = 0 if full_logits else default_chunk_tokens(
        architecture.vocab_size, RECOMPUTE_CHUNK_FP32_BYTES if count else CHUNK_FP32_BYTES)
    estimate = estimate_mode_gb(architecture, batch_size, seq_length, lora, device, count,
                                fused_kernels=fused_kernels, chunk_tokens=chunk, quantize=quantize)
    name = "fast" if count == 0 else "small" if count == adapted else "selective"
    fits = budget_gb is None or estimate <= budget_gb
    if reason is None:
        reason = f"{name}: {count} of {adapted} adapted layers recomputed in the backward pass; estimated {estimate:.2f} GB"
        if budget_gb is not None:
            reason += f" of {budget_gb:.2f} GB"
    return StepMode(name, count, adapted, round(estimate, 3), budget_gb, fits, fused_kernels, chunk, reason)


def choose_mode(architecture: Architecture, batch_size: int, seq_length: int, lora: LoraSettings, device: str,
                budget_gb: float, *, fused_kernels: bool | None = None, full_logits: bool = False,
                quantize: int | None = None) -> StepMode:
    """The fastest mode whose memory estimate fits ``budget_gb``: the fewest recomputed layers.

    When even ``small`` does not fit, returns ``small`` with ``fits=False`` and says so.
    """
    if not budget_gb > 0:
        raise ValueError(f"budget_gb={budget_gb!r} must be a positive number of GB")
    adapted = min(lora.layers, architecture.num_hidden_layers)
    if fused_kernels is None:
        fused_kernels = fused_kernels_available(device, architecture.model_type)

    def estimate(count: int) -> float:
        return mode_with(architecture, batch_size, seq_length, lora, device, count,
                         fused_kernels=fused_kernels, full_logits=full_logits, quantize=quantize).estimate_gb

    shape = _shape(batch_size, seq_length, lora, adapted)
    fast = estimate(0)
    if fast <= budget_gb:
        return mode_with(architecture, batch_size, seq_length, lora, device, 0, budget_gb=budget_gb,
                         fused_kernels=fused_kernels, full_logits=full_logits, quantize=quantize,
                         reason=f"fast: nothing recomputed; {shape} is estimated at {fast:.2f} GB, "
                                f"within the {budget_gb:.2f} GB budget")
    for count in range(1, adapted + 1):
        needed = estimate(count)
        if needed <= budget_gb:
            name = "small" if count == adapted else "selective"
            return mode_with(
                architecture, batch_size, seq_length, lora, device, count, budget_gb=budget_gb,
                fused_kernels=fused_kernels, full_logits=full_logits, quantize=quantize,
                reason=f"{name}: {count} of {adapted} adapted layers recomputed in the backward pass so that "
                       f"{shape} fits the {budget_gb:.2f} GB budget (estimated {needed:.2f} GB; "
                       f"{fast:.2f} GB without recomputation)",
            )
    needed = estimate(adapted)
    return mode_with(
        architecture, batch_size, seq_length, lora, device, adapted, budget_gb=budget_gb,
        fused_kernels=fused_kernels, full_logits=full_logits, quantize=quantize,
        reason=f"small: {shape} is estimated at {needed:.2f} GB even with every adapted layer recomputed, "
               f"above the {budget_gb:.2f} GB budget; lower the batch size or the sequence length",
    )


def plain_mode(architecture: Architecture, batch_size: int, seq_length: int, lora: LoraSettings, device: str, *,
               grad_checkpoint: bool = False, budget_gb: float | None = None, reason: str | None = None,
               quantize: int | None = None) -> StepMode:
    """The plain step: the Hugging Face forward through the full logits; with ``grad_checkpoint``,
    Hugging Face gradient checkpointing of every layer."""
    adapted = min(lora.layers, architecture.num_hidden_layers)
    estimate = estimate_for_device(
        architecture, device, batch_size=batch_size, seq_length=seq_length, lora_rank=lora.rank,
        lora_layers=lora.layers, grad_checkpoint=grad_checkpoint, quantize=quantize,
    ).total_gb
    fits = budget_gb is None or estimate <= budget_gb
    if reason is None:
        recomputed = ", every layer recomputed (--grad-checkpoint)" if grad_checkpoint else ""
        reason = (f"plain: the Hugging Face forward through the full logits{recomputed} (--step-mode plain); "
                  f"{_shape(batch_size, seq_length, lora, adapted)} is estimated at {estimate:.2f} GB"
                  f"{_against(estimate, budget_gb)}")
    return StepMode("plain", adapted if grad_checkpoint else 0, adapted, round(estimate, 3), budget_gb, fits,
                    False, 0, reason)


def _shape(batch_size: int, seq_length: int, lora: LoraSettings, adapted: int) -> str:
    return f"batch {batch_size} x {seq_length} tokens, LoRA rank {lora.rank} on {adapted} layers"


def _against(estimate: float, budget_gb: float | None) -> str:
    if budget_gb is None:
        return ""
    return f", {'within' if estimate <= budget_gb else 'above'} the {budget_gb:.2f} GB budget"


def select_step_mode(requested: str, architecture: Architecture, batch_size: int, seq_length: int,
                     lora: LoraSettings, device: str, budget_gb: float | None, *, grad_checkpoint: bool = False,
                     full_logits: bool = False, quantize: int | None = None) -> StepMode:
    """The ``StepMode`` for ``--step-mode requested`` (one of ``STEP_MODES``) and a budget in GB.

    * ``auto``: ``choose_mode``, the fastest mode whose estimate fits ``budget_gb`` (no budget:
      ``fast``); ``grad_checkpoint`` makes it ``small``;
    * ``fast`` / ``small``: nothing / every adapted layer recomputed, whatever the budget;
    * ``selective``: the fewest recomputed adapted layers that fit the budget, at least one;
    * ``plain``: the Hugging Face forward through the full logits (``plain_mode``).

    ``grad_checkpoint`` recomputes every layer, so it cannot go with ``fast`` or ``selective``.
    ``full_logits``: the model's head is not a plain linear layer (``supports_fast_head``).
    ``quantize``: 4 for NF4 decoder linears (``your_ai.model.quantize``), counted in the estimate.
    The reason says which mode, why, and the estimate against the budget.
    """
    if requested not in STEP_MODES:
        raise ValueError(f"step mode {requested!r} must be one of {', '.join(STEP_MODES)}")
    if grad_checkpoint and requested in ("fast", "selective"):
        raise ValueError(f"--grad-checkpoint recomputes every layer; it cannot go with --step-mode {requested} "
                         f"(use auto, small or plain)")
    if budget_gb is not None and not budget_gb > 0:
        raise ValueError(f"budget_gb={budget_gb!r} must be a positive number of GB")
    if requested == "plain":
        return plain_mode(architecture, batch_size, seq_length, lora, device, grad_checkpoint=grad_checkpoint,
                          budget_gb=budget_gb, quantize=quantize)
    adapted = min(lora.layers, architecture.num_hidden_layers)
    if requested == "auto" and not grad_checkpoint and budget_gb is not None:
        chosen = choose_mode(architecture, batch_size, seq_length, lora, device, budget_gb, full_logits=full_logits,
                             quantize=quantize)
    else:
        if grad_checkpoint:
            count, origin = adapted, "--grad-checkpoint"
        elif requested == "auto":
            count, origin = 0, "no memory budget"
        elif requested == "selective":
            fewest = 1 if budget_gb is None else choose_mode(
                architecture, batch_size, seq_length, lora, device, budget_gb, full_logits=full_logits,
                quantize=quantize,
            ).checkpointed_layers
            count, origin = max(1, fewest), "--step-mode selective: the fewest that fit, at least one"
        else:
            count, origin = (0 if requested == "fast" else adapted), f"--step-mode {requested}"
        chosen = _explained(architecture, batch_size, seq_length, lora, device, count, budget_gb, origin,
                            full_logits=full_logits, quantize=quantize)
    return _with_head(chosen, full_logits)


def resumed_mode(saved: dict, architecture: Architecture, batch_size: int, seq_length: int, lora: LoraSettings,
                 device: str, budget_gb: float | None, *, full_logits: bool = False,
                 quantize: int | None = None) -> StepMode:
    """The mode a run saved with its checkpoint (``StepMode.to_dict()`` of fast, selective or small),
    for the run resumed: the same recomputed layers, fused kernels when still available here."""
    if saved.get("name") not in MODE_NAMES:
        raise ValueError(f"saved step mode {saved.get('name')!r} is not one of {', '.join(MODE_NAMES)}")
    fused = bool(saved.get("fused_kernels")) and fused_kernels_available(device, architecture.model_type)
    mode = _explained(architecture, batch_size, seq_length, lora, device, int(saved["checkpointed_layers"]),
                      budget_gb, "kept from the checkpoint", fused_kernels=fused, full_logits=full_logits,
                      quantize=quantize)
    return _with_head(mode, full_logits)


def _explained(architecture, batch_size, seq_length, lora, device, count, budget_gb, origin, *,
               fused_kernels=None, full_logits=False, quantize=None) -> StepMode:
    """``mode_with`` whose reason says what is recomputed, why (``origin``) and the estimate."""
    mode = mode_with(architecture, batch_size, seq_length, lora, device, count, budget_gb=budget_gb,
                     fused_kernels=fused_kernels, full_logits=full_logits, quantize=quantize)
    what = "nothing recomputed" if mode.checkpointed_layers == 0 else (
        f"{mode.checkpointed_layers} of {mode.adapted_layers} adapted layers recomputed in the backward pass")
    return replace(mode, reason=f"{mode.name}: {what} ({origin}); "
                                f"{_shape(batch_size, seq_length, lora, mode.adapted_layers)} is estimated at "
                                f"{mode.estimate_gb:.2f} GB{_against(mode.estimate_gb, budget_gb)}")


def _with_head(mode: StepMode, full_logits: bool) -> StepMode:
    if not full_logits:
        return mode
    return replace(mode, reason=mode.reason + "; the loss goes through the full logits (the model's head is not "
                                              "a plain linear layer)")
