"""4-bit QLoRA: the decoder layers' linear weights in NF4 under LoRA adapters trained in full precision.

NF4 comes from torchao's ``NF4Tensor`` (the QLoRA data type: blocks of 64 weights, one
8-bit-quantized scale per block, double-quantized in groups of 256 blocks). It is a tensor
subclass written in plain PyTorch, so the same code runs on CUDA and on the CPU, and it
implements FSDP2's all-gather hooks, so a quantized model can be sharded.

A quantized model is never materialised in full precision: it is built on the meta device
and each weight is created (random, for ``--synthetic``) or read from the checkpoint's
safetensors files one tensor at a time, moved to the device and quantized there: the host
never holds more than one tensor, the device about a quarter of the full-precision weights.

Embeddings, norms and the output head stay in the training dtype, as in QLoRA.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

from your_ai.model.architecture import load_config
from your_ai.model.load import weight_files
from your_ai.model.meta import decoder_layers, parameters_on_meta

QUANTIZE_BITS = (4,)
NF4_BLOCK_SIZE = 64  # weights per NF4 block
NF4_SCALER_BLOCK_SIZE = 256  # blocks per group of the double-quantized scales
# Bytes per quantized weight: 4 bits, plus one 8-bit scale per block of 64 (the fp32 factor
# of each group of 256 scales is negligible).
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / NF4_BLOCK_SIZE


class QuantizationError(ValueError):
    """Quantization cannot be used as asked; the message says why and what to do."""


def check_bits(bits: int | None) -> int | None:
    """``bits`` (None: no quantization) if supported, else a ``QuantizationError`` naming it."""
    if bits is None:
        return None
    if bits not in QUANTIZE_BITS:
        raise QuantizationError(f"--quantize {bits}: supported values are {', '.join(map(str, QUANTIZE_BITS))} (NF4)")
    return bits


def check_available() -> None:
    if importlib.util.find_spec("torchao") is None:
        raise QuantizationError("--quantize 4 needs torchao: pip install 'your-ai[qlora]' (or pip install torchao)")


def quiet_torchao_import() -> None:
    """Silence the warnings torchao logs when it is imported (by us, or by PEFT when installed).

    NF4 is plain PyTorch: torchao's optional compiled kernels (built for other torch versions or
    GPUs) are not needed, so "Failed to load ...so" and its registration notices are not the
    user's concern."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _nf4_tensor_class():
    check_available()
    quiet_torchao_import()
    try:
        from torchao.quantization import NF4Tensor
    except ImportError:  # torchao < 0.13 kept it under dtypes
        from torchao.dtypes.nf4tensor import NF4Tensor
    return NF4Tensor


def is_quantized(tensor) -> bool:
    return type(tensor).__name__ == "NF4Tensor"


def scaler_block_size(numel: int) -> int | None:
    """Blocks per scale group for a weight of ``numel`` values: 256 where it divides the block
    count (every real model), else the largest divisor below it; None if ``numel`` is not a
    multiple of the 64-value block (such a weight stays unquantized)."""
    if numel % NF4_BLOCK_SIZE:
        return None
    blocks = numel // NF4_BLOCK_SIZE
    for size in range(min(NF4_SCALER_BLOCK_SIZE, blocks), 0, -1):
        if blocks % size == 0:
            return size
    return None


def to_nf4(weight):
    """``weight`` (2-D, on its device) as an NF4 tensor, or None if its size does not allow it."""
    group = scaler_block_size(weight.numel())
    if group is None:
        return None
    return _nf4_tensor_class().from_tensor(weight.contiguous(), NF4_BLOCK_SIZE, group)


def quantized_weight_names(model) -> set[str]:
    """Names of the weights ``--quantize`` turns into NF4: every linear layer inside the decoder layers."""
    import torch

    layer_ids = {id(layer) for layer in decoder_layers(model)}
    names = set()
    for prefix, module in model.named_modules():
        if id(module) in layer_ids:
            names.update(f"{prefix}.{name}.weight" for name, sub in module.named_modules()
                         if isinstance(sub, torch.nn.Linear))
    return names


def _set_tensor(model, name: str, value, *, quantize: bool) -> bool:
    """Put ``value`` in place of the parameter or buffer ``name``; NF4 when ``quantize`` and possible.
    Returns whether it was quantized."""
    import torch

    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._buffers:
        module._buffers[leaf] = value
        return False
    nf4 = to_nf4(value) if quantize else None
    module._parameters[leaf] = torch.nn.Parameter(nf4 if nf4 is not None else value, requires_grad=False)
    return nf4 is not None


def _empty_model(config, dtype):
    """The model with every parameter on the meta device (buffers real, on the CPU)."""
    from transformers import AutoModelForCausalLM

    with parameters_on_meta():
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _finish(model, device: str) -> None:
    """Move buffers to ``device``, tie the head if the config says so, and check nothing is left on meta."""
    for module in model.modules():
        for key, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[key] = buffer.to(device)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [name for name, parameter in model.named_parameters() if parameter.device.type == "meta"]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise QuantizationError(f"the checkpoint has no tensor for {shown}")


def build_quantized_random_model(config, *, dtype, device: str, seed: int = 0):
    """A random-weight model of ``config``'s shape with NF4 decoder linears, one weight at a time.

    Weights are drawn as ``transformers`` initialises them (``_init_weights``), so apart from the
    4-bit rounding the model matches ``architecture.build_random_model``'s distribution (not its values).
    """
    import torch

    model = _empty_model(config, dtype)
    quantize = quantized_weight_names(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for prefix, module in model.named_modules():
            own = list(module.named_parameters(recurse=False))
            if not own:
                continue
            module.to_empty(device=device, recurse=False)
            model._init_weights(module)
            for name, parameter in list(module.named_parameters(recurse=False)):
                full_name = f"{prefix}.{name}" if prefix else name
                _set_tensor(model, full_name, parameter.detach(), quantize=full_name in quantize)
    finally:
        torch.random.set_rng_state(generator_state)
    _finish(model, device)
    model.eval()
    return model


def _checkpoint_tensors(files: list[Path], device: str) -> Iterator[tuple[str, Path, object]]:
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt", device=device) as handle:
            for name in handle.keys():
                yield name, path, handle.get_tensor(name)


def load_quantized_model(model_dir: Path, *, dtype, device: str, trust_remote_code: bool = False):
    """The model in ``model_dir`` with NF4 decoder linears, read one tensor at a time to ``device``."""
    config = load_config(model_dir, trust_remote_code=trust_remote_code)
    model = _empty_model(config, dtype)
    quantize = quantized_weight_names(model)
    known = set(model.state_dict())
    for name, path, tensor in _checkpoint_tensors(weight_files(model_dir), device):
        if name not in known:
            if name.endswith("rotary_emb.inv_freq"):  # older checkpoints saved this buffer
                continue
            raise QuantizationError(f"{path}: tensor {name!r} is not a parameter of {type(model).__name__} "
                                    "(quantized loading needs the model's own tensor names)")
        _set_tensor(model, name, tensor.to(dtype) if tensor.is_floating_point() else tensor,
                    quantize=name in quantize)
    _finish(model, device)
    model.eval()
    return model


# ---------------------------------------------------------------------------- faster dequantization on CUDA

_compiled_dequantize = None  # torch.compile of NF4Tensor.get_original_weight, made on first use
_compile_failed = False


def _dequantize(weight, dtype):
    """``weight`` (NF4) as a dense ``dtype`` tensor: on CUDA through one compiled kernel (torchao's
    eager dequantization makes several elementwise passes over the weight), falling back to the eager
    path if compilation is not possible here."""
    global _compiled_dequantize, _compile_failed
    if weight.device.type == "cuda" and not _compile_failed:
        import torch

        try:
            if _compiled_dequantize is None:
                _compiled_dequantize = torch.compile(lambda nf4: nf4.get_original_weight(), dynamic=False)
            return _compiled_dequantize(weight).to(dtype)
        except Exception as error:  # noqa: BLE001 -- no Triton, an unsupported GPU: keep training, eagerly
            import warnings

            _compile_failed = True
            warnings.warn(f"NF4 dequantization runs uncompiled (slower): {type(error).__name__}: {error}")
    return weight.to(dtype)


def _nf4_linear_function():
    import torch
    import torch.nn.functional as F

    class NF4Linear(torch.autograd.Function):
        """``input @ dequantize(weight).T`` keeping only the 4-bit weight for the backward pass."""

        @staticmethod
        def forward(ctx, input, weight):
            ctx.save_for_backward(weight)
            return F.linear(input, _dequantize(weight, input.dtype))

        @staticmethod
        def backward(ctx, grad_output):
            (weight,) = ctx.saved_tensors
            return grad_output @ _dequantize(weight, grad_output.dtype), None

    return NF4Linear


def use_compiled_dequantization(model) -> int:
    """Make every NF4 linear layer of ``model`` dequantize through ``_dequantize`` (compiled on CUDA);
    returns how many. The numbers are those of torchao's own path up to bf16 rounding (the compiled
    kernel rounds once instead of after each step)."""
    import torch

    function = _nf4_linear_function()

    def forward(module, input):
        output = function.apply(input, module.weight)
        return output if module.bias is None else output + module.bias

    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and is_quantized(module.weight):
            module.forward = forward.__get__(module)
            count += 1
    return count


def quantized_summary(model) -> dict:
    """How many weights are NF4 and how many bytes the model's weights take."""
    count, quantized_numel, nbytes = 0, 0, 0
    for parameter in model.parameters():
        if is_quantized(parameter):
            count += 1
            quantized_numel += parameter.numel()
            nbytes += sum(getattr(parameter, key).numel() * getattr(parameter, key).element_size()
                          for key in parameter.__tensor_flatten__()[0])
        else:
            nbytes += parameter.numel() * parameter.element_size()
    return {"quantized_tensors": count, "quantized_weights": quantized_numel, "weight_bytes": nbytes}
