"""Memory: what the system has, what a run really peaked at, and what LoRA training should need.

Peaks are peaks: the device's high-water mark (CUDA ``max_memory_reserved``; MPS driver memory,
sampled; MLX's own peak-memory counter) and the process's peak resident set size from the OS
(``ru_maxrss``) -- never the memory read after the work is done.

The device ``"mlx"`` (``MLX_DEVICE``) is the MLX engine on its default device (Metal on Apple Silicon,
the CPU elsewhere): the estimator's MLX mode (bf16, the full logits, MLX's own 4-bit quantization, no
CUDA context or caching allocator) and its budget (the recommended working-set size of Metal, else 80%
of the system memory).
"""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass, field

from your_ai.model.architecture import Architecture
from your_ai.model.quantize import NF4_BYTES_PER_WEIGHT

GB = 1e9  # memory figures are shown in GB (10^9 bytes), as the earlier tool did
BUDGET_FRACTION = 0.8
MLX_DEVICE = "mlx"  # the MLX engine, on Metal where there is one, else on the CPU
MLX_GROUP_SIZE = 64  # MLX's 4-bit quantization: a bf16 scale and bias per group of 64 weights
MLX_Q4_BYTES_PER_WEIGHT = 0.5 + 2 * 2 / MLX_GROUP_SIZE
# The runtime's allowance: a CUDA context and its caching allocator on torch; MLX's peak counts only
# its own buffers.
RUNTIME_OVERHEAD_GB = 0.5
MLX_RUNTIME_OVERHEAD_GB = 0.1


def system_memory_gb() -> tuple[float, float]:
    """(total, available) system memory in GB."""
    import psutil

    memory = psutil.virtual_memory()
    return memory.total / GB, memory.available / GB


def device_memory_gb(device: str) -> float:
    """Memory the training device can use: the GPU's own memory on CUDA, the unified memory on MLX,
    system memory elsewhere.

    On CUDA it asks ``nvidia-smi`` first, so that a process that only plans (the benchmark's
    parent, ``recommend``) does not create a CUDA context and hold GPU memory while its fit
    tests run; PyTorch is asked only where ``nvidia-smi`` is missing.
    """
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        total = _nvidia_smi_total_bytes(index)
        if total is None:
            total = torch.cuda.get_device_properties(index).total_memory
        return total / GB
    if device == MLX_DEVICE:
        size = mlx_device_info().get("memory_size")
        if size:
            return size / GB
    return system_memory_gb()[0]


def mlx_device_info() -> dict:
    """MLX's description of its default device (on Metal: ``memory_size``,
    ``max_recommended_working_set_size``, ...); empty when MLX cannot say."""
    import mlx.core as mx

    if not mx.metal.is_available():
        return {}
    info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
    return dict(info)


def _nvidia_smi_total_bytes(index: int) -> int | None:
    """Total memory of CUDA device ``index`` (as PyTorch numbers it) from nvidia-smi, or None."""
    import os
    import subprocess

    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None and index >= len(visible):
        return None
    selector = visible[index] if visible else str(index)
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={selector}", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        return int(float(out.stdout.strip().splitlines()[0])) * 1024 * 1024 if out.returncode == 0 else None
    except (ValueError, IndexError):
        return None


def default_budget_gb(device: str) -> float:
    """The default ``--max-memory``: on MLX the recommended working-set size of Metal when there is one;
    else 80% of the device's memory."""
    return default_budget(device)[0]


def default_budget(device: str) -> tuple[float, str]:
    """The default budget in GB and where it comes from, in words."""
    if device == MLX_DEVICE:
        working_set = mlx_device_info().get("max_recommended_working_set_size")
        if working_set:
            return working_set / GB, "Metal's recommended working set"
    total = device_memory_gb(device)
    return BUDGET_FRACTION * total, f"{BUDGET_FRACTION:.0%} of {total:.1f} GB"


def use_expandable_segments(device: str) -> bool:
    """On CUDA, have the caching allocator grow its memory segments instead of adding new ones, so it
    reserves about what is allocated. A setting of the user's own (PYTORCH_CUDA_ALLOC_CONF or
    PYTORCH_ALLOC_CONF) is kept. Returns whether set."""
    import os

    if not device.startswith("cuda") or "PYTORCH_CUDA_ALLOC_CONF" in os.environ or "PYTORCH_ALLOC_CONF" in os.environ:
        return False
    import torch

    torch.cuda.memory._set_allocator_settings("expandable_segments:True")  # read at import: set it at run time
    return True


def process_peak_rss_gb() -> float:
    """This process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024) / GB


def rusage_peak_rss_gb(usage) -> float:
    """Peak RSS from a ``resource.struct_rusage`` (e.g. the one ``os.wait4`` returns for a child)."""
    return (usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024) / GB


class PeakMemory:
    """The device's high-water mark over a stretch of work; call ``sample()`` during it on MPS."""

    def __init__(self, device: str):
        self.device = device
        self._mps_peak = 0

    def reset(self) -> None:
        if self.device == MLX_DEVICE:
            import mlx.core as mx

            mx.reset_peak_memory()
            return
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._mps_peak = 0
        self.sample()

    def sample(self) -> None:
        if self.device == "mps":
            import torch

            self._mps_peak = max(self._mps_peak, torch.mps.driver_allocated_memory())

    def device_peak_gb(self) -> float | None:
        """Peak device memory in GB (CUDA reserved, MPS driver, MLX's peak); None on CPU (see host peak)."""
        if self.device == MLX_DEVICE:
            import mlx.core as mx

            return mx.get_peak_memory() / GB
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_reserved(self.device) / GB
        if self.device == "mps":
            self.sample()
            return self._mps_peak / GB
        return None

    def peak_gb(self) -> float:
        """The figure a budget is compared against: device peak on a GPU, host peak RSS on CPU."""
        device_peak = self.device_peak_gb()
        return device_peak if device_peak is not None else process_peak_rss_gb()


# ---------------------------------------------------------------------------- the estimator

@dataclass(frozen=True)
class StepShape:
    """What a LoRA training step's memory depends on besides its step mode: the model, the batch, the
    adapters (``lora_rank`` on the last ``lora_layers`` layers; ``dora``: DoRA adapters), the device (its
    training dtype) and the weights' quantization (4: NF4 decoder linears, ``your_ai.model.quantize``)."""

    architecture: Architecture
    batch_size: int
    seq_length: int
    lora_rank: int
    lora_layers: int
    device: str
    quantize: int | None = None
    weight_bytes: int | None = None  # the training dtype's bytes per weight; None: the device's
    dora: bool = False  # DoRA adapters (PEFT's use_dora): a magnitude vector per adapted projection

    @property
    def adapted_layers(self) -> int:
        """The decoder layers that carry adapters: ``lora_layers``, at most the model's depth."""
        return min(self.lora_layers, self.architecture.num_hidden_layers)

    @property
    def dtype_bytes(self) -> int:
        return self.weight_bytes or training_dtype_bytes(self.device)

    def describe(self) -> str:
        return (f"batch {self.batch_size} x {self.seq_length} tokens, {'DoRA' if self.dora else 'LoRA'} rank "
                f"{self.lora_rank} on {self.adapted_layers} layers")


@dataclass
class MemoryEstimate:
    total_gb: float
    parts_gb: dict[str, float] = field(default_factory=dict)
    assumptions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def training_dtype_bytes(device: str) -> int:
    """Bytes per weight in the dtype training uses on ``device``: bf16 (2) on CUDA, MPS and MLX on Metal,
    fp32 (4) on the CPU (MLX's too).

    Mirrors ``hardware.training_dtype`` and the MLX engine's dtype without importing torch; a GPU without
    bf16 trains in fp32, which the fit test reports from the dtype it really loaded.
    """
    if device == MLX_DEVICE:
        return 2 if mlx_device_info() else 4
    return 2 if device.startswith("cuda") or device == "mps" else 4


def fit_seq_length(requested: int | None, architecture: Architecture, default: int = 1024) -> int:
    """The sequence length a fit test uses: ``requested`` (default 1024), at most the model's context."""
    return min(requested or default, architecture.max_position_embeddings)


def weights_gb(architecture: Architecture, device: str, quantize: int | None = None) -> float:
    """Memory the weights alone take in ``device``'s training dtype (decoder linears in NF4 with
    ``quantize=4``)."""
    return weight_bytes_total(architecture, training_dtype_bytes(device), quantize, device) / GB


# Decoder layers whose full weights an FSDP process holds at once during a step: the layer running
# and the next one, prefetched, each both in its all-gather buffer and as unsharded parameters.
FSDP_GATHERED_LAYERS = 4


def sharding_saves_gb(architecture: Architecture, device: str, processes: int, quantize: int | None = None) -> float:
    """Memory each process saves when the weights are sharded over ``processes`` as
    ``your_ai.train.parallel.shard`` shards them (FSDP2, each decoder layer a unit): all but its 1/N share
    of the decoder layers' weights, less the ``FSDP_GATHERED_LAYERS`` layers gathered whole at a time. The embeddings, final
    norm and head are sharded too, but gathered from the start of the forward pass to the end of the
    backward pass, so they save nothing at the peak. Negative when sharding costs more than it saves (a
    small model over few processes). Activations, logits and the runtime are not sharded. Measured
    per-process peaks run somewhat above the estimates this gives (bench/RESULTS.md)."""
    weights = weights_gb(architecture, device, quantize)
    layers = weights - whole_weights_gb(architecture, device)
    per_layer = layers / architecture.num_hidden_layers
    return layers * (processes - 1) / processes - FSDP_GATHERED_LAYERS * per_layer


def whole_weights_gb(architecture: Architecture, device: str) -> float:
    """The weights outside the decoder layers (embeddings, head unless tied, final norm), in
    ``device``'s training dtype: never quantized, and the unit FSDP gathers for the whole step."""
    return architecture.outside_layers_parameter_count() * training_dtype_bytes(device) / GB


def weight_bytes_total(architecture: Architecture, dtype_bytes: float, quantize: int | None = None,
                       device: str = "") -> float:
    """Bytes of the model's weights: all in ``dtype_bytes``, or with ``quantize`` 4 the quantized ones in
    4 bits and the rest in ``dtype_bytes``: the decoder linears, in NF4 on torch (``your_ai.model.quantize``),
    in MLX's affine 4-bit layout (a scale and a bias per group of ``MLX_GROUP_SIZE``) on MLX (``device``
    "mlx")."""
    total = architecture.parameter_count()
    if not quantize:
        return total * dtype_bytes
    linear = architecture.decoder_linear_parameter_count()
    per_weight = MLX_Q4_BYTES_PER_WEIGHT if device == MLX_DEVICE else NF4_BYTES_PER_WEIGHT
    return (total - linear) * dtype_bytes + linear * per_weight


ADAPTED_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")  # model.lora.DEFAULT_TARGET_MODULES


def lora_parameter_count(architecture: Architecture, rank: int, layers: int, targets=ADAPTED_PROJECTIONS) -> int:
    """Exact LoRA parameter count: r * (in + out) per targeted projection per adapted layer."""
    shapes = architecture.projection_features()
    per_layer = sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)
    return per_layer * min(layers, architecture.num_hidden_layers)


def dora_extra_bytes(shape: StepShape, targets=ADAPTED_PROJECTIONS) -> dict[str, float]:
    """What DoRA adds to a LoRA step in bytes, as PEFT's DoRA forward (``peft.tuners.lora.dora``) computes
    it; zero without ``shape.dora``. Adapters are fp32 (the projection's input is cast to them).

    * ``magnitudes``: one magnitude per output feature of each adapted projection, with its gradient and
      AdamW state (16 bytes each);
    * ``activations``: per token and adapted projection, the LoRA branch's fp32 output and the base output
      (training dtype), kept for the magnitude's and the LoRA branch's gradients;
    * ``temporaries``: the weight norm of W + scale * B @ A, computed in every forward for one projection at
      a time: an fp32 identity (in x in) through the adapters, their (out x in) product, W cast to fp32 and
      the sum (three out x in fp32 matrices), for the largest projection.
    """
    if not shape.dora:
        return {"magnitudes": 0.0, "activations": 0.0, "temporaries": 0.0}
    features = shape.architecture.projection_features()
    outs = sum(features[t][1] for t in targets)
    tokens = shape.batch_size * shape.seq_length
    largest = max((features[t][0] ** 2 + 3 * features[t][0] * features[t][1]) * 4 for t in targets)
    return {"magnitudes": outs * shape.adapted_layers * 16.0,
            "activations": tokens * outs * (4 + shape.dtype_bytes) * shape.adapted_layers * 1.0,
            "temporaries": float(largest)}


def estimate_training_memory(shape: StepShape, *, recomputed_layers: int = 0, logits_chunk_tokens: int | None = None,
                             fused_kernels: bool = False, overhead_gb: float | None = None) -> MemoryEstimate:
    """First analytic estimate of LoRA training memory in GB, weights and activations in the device's
    training dtype.

    weights (NF4 decoder linears with ``shape.quantize``) + LoRA params with grads and AdamW state (fp32:
    16 bytes each) + activations of the adapted layers (autograd keeps nothing below the first adapter)
    + logits in fp32 with their gradient + a fixed allowance for the runtime.

    ``recomputed_layers`` of the adapted layers keep only their input and are recomputed in the backward
    pass. ``logits_chunk_tokens`` is the chunked linear + cross-entropy head (``your_ai.step.head``): one
    chunk of logits lives at a time, plus the final hidden states and their gradient. ``fused_kernels``:
    fused RMSNorm / SwiGLU / RoPE (Liger), which keep bf16 norm inputs and only the two MLP projections
    per layer, and the head's Triton cross-entropy kernel, which keeps a chunk's logits and nothing more.
    With ``shape.quantize``, the workspace of dequantizing the largest linear weight is added.

    MLX mode (``shape.device`` "mlx"): bf16, MLX's 4-bit layout (``weight_bytes_total``), quantized
    matmuls that dequantize nothing, no fused kernels, and ``MLX_RUNTIME_OVERHEAD_GB`` for the runtime
    instead of a CUDA context and caching allocator (``overhead_gb`` None: the device's allowance).
    """
    architecture, nbytes, layers = shape.architecture, shape.dtype_bytes, shape.adapted_layers
    h, i = architecture.hidden_size, architecture.intermediate_size
    q, kv = architecture.attention_size, architecture.num_key_value_heads * architecture.head_dim
    tokens = shape.batch_size * shape.seq_length
    on_mlx = shape.device == MLX_DEVICE
    if overhead_gb is None:
        overhead_gb = MLX_RUNTIME_OVERHEAD_GB if on_mlx else RUNTIME_OVERHEAD_GB
    fused_kernels = fused_kernels and not on_mlx

    weights = weight_bytes_total(architecture, nbytes, shape.quantize, shape.device)
    if shape.quantize and not on_mlx:
        # One weight dequantized at a time (on CUDA by one compiled kernel, ``quantize._dequantize``;
        # torchao's eager path on the CPU takes up to 4 such copies).
        weights += h * i * nbytes
    dora = dora_extra_bytes(shape)
    lora = lora_parameter_count(architecture, shape.lora_rank, layers) * 16 + dora["magnitudes"]
    if fused_kernels:
        per_token_layer = (4 * h + 2 * q + 2 * i + 2 * kv) * nbytes
    else:  # two of the per-token vectors kept are the queries and the attention's output (q wide)
        per_token_layer = (8 * h + 2 * q + 4 * i + 4 * kv) * nbytes
    recomputed = max(0, min(recomputed_layers, layers))
    activations = tokens * (h * nbytes * recomputed + per_token_layer * (layers - recomputed))
    if recomputed:
        activations += tokens * per_token_layer  # the layer being recomputed
    if dora["activations"]:  # the plain step: recomputed layers keep DoRA's activations of one layer only
        activations += dora["activations"] * (layers - recomputed + (1 if recomputed else 0)) / layers
    if logits_chunk_tokens:
        chunk = min(logits_chunk_tokens, tokens)
        # the chunk's logits; the PyTorch ops add an fp32 copy and the gradient, the Triton kernel
        # (``your_ai.step.head_kernel``, on CUDA with the fused kernels) writes the gradient over them
        per_logit = nbytes if fused_kernels else 4 + 2 * nbytes
        logits = chunk * architecture.vocab_size * per_logit + 2 * tokens * h * nbytes
    else:
        logits = tokens * architecture.vocab_size * (4 + 4 + nbytes)
    parts = {
        "weights": weights / GB,
        "lora_params_grads_optimizer": lora / GB,
        "activations": activations / GB,
        "logits": logits / GB,
        "overhead": overhead_gb,
    }
    if shape.dora:
        parts["dora_temporaries"] = dora["temporaries"] / GB
    return MemoryEstimate(
        total_gb=sum(parts.values()),
        parts_gb={key: round(value, 3) for key, value in parts.items()},
        assumptions={
            "batch_size": shape.batch_size, "seq_length": shape.seq_length, "lora_rank": shape.lora_rank,
            "lora_layers": layers, "weight_bytes": nbytes, "grad_checkpoint": recomputed > 0,
            "checkpointed_layers": recomputed, "logits_chunk_tokens": logits_chunk_tokens,
            "fused_kernels": fused_kernels, "quantize": shape.quantize, "dora": shape.dora,
        },
    )
