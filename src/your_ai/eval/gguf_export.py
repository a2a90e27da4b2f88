"""A merged model as one GGUF file, the format llama.cpp, LM Studio and Ollama run.

Written with the ``gguf`` package the way llama.cpp's own converter writes the Llama, Mistral and Qwen2
families: tensor names from ``gguf.tensor_mapping`` (``token_embd``, ``blk.N.attn_q`` ...), the
``general.*`` and ``<arch>.*`` hyperparameters, and the tokenizer (``gguf_tokenizer``). Two details
matter for llama.cpp to compute the same thing as transformers:

- Llama and Mistral (llama.cpp architecture ``llama``) rotate query/key pairs that are adjacent, where
  transformers rotates the first half of a head against the second: the rows of ``q_proj`` and
  ``k_proj`` are permuted to match. Qwen2 (``qwen2``) rotates halves as transformers does: no permutation.
- A tied output layer has no ``output.weight``: llama.cpp then uses ``token_embd.weight``.

Weights are written as the chosen quantization (``GGUF_QUANTIZATIONS``), each tensor in the type llama.cpp
would give it (``tensor_types``): f32 and f16 to q8_0 as its converter (``convert_hf_to_gguf.py``) writes
them, the 4- and 5-bit types as its ``llama-quantize`` makes them from an f16 file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from your_ai.errors import UserError
from your_ai.model.architecture import architecture_from_config

EXPORT_FORMATS = ("hf", "gguf")  # `your-ai export --format`: a Hugging Face folder, or one GGUF file
GGUF_QUANTIZATIONS = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "f16", "bf16", "f32")
BLOCK_QUANTIZATIONS = ("q5_1", "q5_0", "q4_1", "q4_0")  # llama-quantize's types; the output layer is kept at 8 bits
DEFAULT_GGUF_QUANTIZATION = "q8_0"  # near the f16 output at about half its size; what local runners use widely
GGUF_FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}  # transformers model_type -> llama.cpp arch
PERMUTED_FAMILIES = ("llama", "mistral")  # query/key rows reordered for llama.cpp's rotary embedding
OUTPUT_TENSOR, TOKEN_EMBEDDING = "output.weight", "token_embd.weight"


class GgufExportError(UserError):
    """A model that cannot be written as GGUF; the message says why and what can."""


def gguf_architecture(model_type: str) -> str:
    """llama.cpp's architecture for a transformers ``model_type``; ``GgufExportError`` for other families."""
    if model_type not in GGUF_FAMILIES:
        raise GgufExportError(f"GGUF export supports the {', '.join(GGUF_FAMILIES)} families; this model's "
                              f"architecture is {model_type!r}: export it as a Hugging Face folder (--format hf)")
    return GGUF_FAMILIES[model_type]


def write_gguf(model, tokenizer, tokenizer_folder: Path, path: Path, quantization: str, name: str,
               say: Callable[[str], None]) -> None:
    """Write ``model`` (a transformers causal LM of a supported family) and ``tokenizer``, saved in
    ``tokenizer_folder``, to the GGUF file ``path`` (written there directly: the caller renames it)."""
    import gguf

    from your_ai.eval.gguf_tokenizer import add_tokenizer

    if quantization not in GGUF_QUANTIZATIONS:
        raise GgufExportError(f"--quantize {quantization!r} is not one of {', '.join(GGUF_QUANTIZATIONS)}")
    config = model.config
    architecture = gguf_architecture(config.model_type)
    writer = gguf.GGUFWriter(path=None, arch=architecture)
    _add_hyperparameters(writer, config, quantization, name)
    rows = model.get_input_embeddings().weight.shape[0]
    add_tokenizer(writer, tokenizer, tokenizer_folder, rows, say)
    tensors = list(gguf_tensors(model, architecture))
    kinds = tensor_types([(tensor_name, shape) for tensor_name, shape, _ in tensors], quantization)
    for tensor_name, shape, _ in tensors:  # the header lists every tensor before the data
        kind = kinds[tensor_name]
        writer.add_tensor_info(tensor_name, _stored_shape(shape, kind), _stored_dtype(kind),
                               _stored_bytes(shape, kind), raw_dtype=kind)
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor_name, _, data in tensors:  # one tensor in memory at a time
        writer.write_tensor_data(_encoded(data(), kinds[tensor_name]))
    writer.close()


def file_type(quantization: str):
    """``general.file_type``: llama.cpp's ``LlamaFileType`` of a file of ``quantization`` (``GGUF_QUANTIZATIONS``)."""
    import gguf

    return gguf.LlamaFileType["ALL_F32" if quantization == "f32" else f"MOSTLY_{quantization.upper()}"]


def tensor_types(tensors: list[tuple[str, tuple[int, ...]]], quantization: str) -> dict:
    """The GGML type each tensor (GGUF name, shape) is stored in, as llama.cpp chooses it for a file of
    ``quantization``:

    - one-dimensional tensors (norms, biases, ``rope_freqs``) stay f32;
    - in a 4- or 5-bit file the output layer (the token embedding when the output is tied to it) is Q8_0:
      ``llama-quantize`` keeps it at Q6_K, or Q8_0 when its rows do not split into Q6_K's blocks of 256, and
      the ``gguf`` package writes Q8_0 but not Q6_K; every other matrix, ``token_embd`` included, gets the
      file's type;
    - a matrix whose rows do not split into its type's blocks of 32 is f16 (``convert_hf_to_gguf.py``'s
      fallback; ``llama-quantize`` refuses such a tensor for the 4- and 5-bit types)."""
    import gguf

    names = {name for name, _ in tensors}
    output = OUTPUT_TENSOR if OUTPUT_TENSOR in names else TOKEN_EMBEDDING
    kinds = gguf.GGMLQuantizationType
    chosen = {}
    for name, shape in tensors:
        kind = kinds.F32 if len(shape) <= 1 else kinds[quantization.upper()]
        if name == output and quantization in BLOCK_QUANTIZATIONS:
            kind = kinds.Q8_0
        block, _ = gguf.GGML_QUANT_SIZES[kind]
        chosen[name] = kinds.F16 if shape[-1] % block else kind
    return chosen


def rope_settings(config) -> dict:
    """The rotary embedding's settings, from ``rope_parameters`` (newer transformers) or ``rope_theta`` and
    ``rope_scaling``; ``rope_type`` is ``default`` when unscaled."""
    settings = dict(getattr(config, "rope_scaling", None) or {})
    settings.update(getattr(config, "rope_parameters", None) or {})
    settings.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    settings["rope_type"] = settings.get("rope_type", settings.get("type")) or "default"
    return settings


def _add_hyperparameters(writer, config, quantization: str, name: str) -> None:
    import gguf

    writer.add_name(name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_file_type(file_type(quantization))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    dim = architecture_from_config(config).head_dim
    writer.add_rope_dimension_count(dim)
    if dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    rope = rope_settings(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    kind = rope["rope_type"]
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif kind not in ("default", "llama3"):  # llama3 scaling travels as the rope_freqs tensor
        raise GgufExportError(f"rope scaling {kind!r} cannot be written as GGUF (default, linear, yarn and "
                              "llama3 can)")


def permute_for_llama_cpp(weight, heads: int):
    """Reorder the rows of a query or key projection (``heads`` heads) so that llama.cpp's rotation of adjacent
    pairs equals transformers' rotation of the first half of each head against the second."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def llama3_rope_factors(config):
    """llama.cpp's ``rope_freqs``: for each rotary frequency, the factor llama 3 scaling divides it by."""
    import torch

    rope = rope_settings(config)
    dim = architecture_from_config(config).head_dim
    base = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    frequencies = 1.0 / float(rope["rope_theta"]) ** base
    factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    context = float(rope["original_max_position_embeddings"])
    factors = []
    for frequency in frequencies.tolist():
        wavelength = 2 * math.pi / frequency
        if wavelength < context / high:
            factors.append(1.0)
        elif wavelength > context / low:
            factors.append(factor)
        else:
            smooth = (context / wavelength - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def gguf_tensors(model, architecture: str) -> Iterator[tuple[str, tuple[int, ...], Callable[[], object]]]:
    """(GGUF name, shape, a function giving the float32 numpy data) of every tensor to write."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(_arch_enum(architecture), config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GgufExportError(f"tensor {hf_name} has no GGUF name for the {architecture} architecture")
        permuted_heads = None
        if config.model_type in PERMUTED_FAMILIES and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            permuted_heads = heads
        elif config.model_type in PERMUTED_FAMILIES and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            permuted_heads = kv_heads
        yield gguf_name, tuple(tensor.shape), partial(_float_data, tensor, permuted_heads)
    if rope_settings(config)["rope_type"] == "llama3":
        factors = llama3_rope_factors(config)
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS], tuple(factors.shape), factors.numpy


def _float_data(tensor, permuted_heads: int | None):
    data = tensor.detach().to("cpu").float()
    if permuted_heads:
        data = permute_for_llama_cpp(data, permuted_heads)
    return data.numpy()


def _arch_enum(architecture: str):
    import gguf

    return next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == architecture)


def _stored_dtype(kind):
    import gguf
    import numpy as np

    kinds = gguf.GGMLQuantizationType
    return {kinds.F32: np.float32, kinds.F16: np.float16}.get(kind, np.uint8)


def _stored_shape(shape: tuple[int, ...], kind) -> tuple[int, ...]:
    import gguf

    kinds = gguf.GGMLQuantizationType
    return shape if kind in (kinds.F32, kinds.F16) else gguf.quants.quant_shape_to_byte_shape(shape, kind)


def _stored_bytes(shape: tuple[int, ...], kind) -> int:
    import numpy as np

    return int(np.prod(_stored_shape(shape, kind), dtype=np.int64)) * np.dtype(_stored_dtype(kind)).itemsize


def _encoded(data, kind):
    """Float32 ``data`` in the GGML type ``kind``."""
    import gguf
    import numpy as np

    kinds = gguf.GGMLQuantizationType
    if kind == kinds.F32:
        return data.astype(np.float32)
    if kind == kinds.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, kind)
