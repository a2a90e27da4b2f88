"""GGUF files as models: ``--model path/to/file.gguf``, or a folder holding one ``.gguf`` file and no
``config.json``.

transformers' GGUF reader (``from_pretrained(..., gguf_file=...)``) turns the file into a model and a
tokenizer, which are saved once as an ordinary Hugging Face model directory (safetensors, config,
tokenizer) in the your-ai cache, under the sha256 of the file:

    <your-ai cache>/gguf/<sha256>/            the converted model
    <your-ai cache>/gguf/.sha256/<key>        the sha256 of a file, by path, size and modification time
    <your-ai cache>/gguf/.locks/<sha256>.lock one conversion at a time

A conversion is built in a staging folder beside its target and renamed into place, so a killed one
leaves nothing that looks complete (the next conversion removes its leftovers). Quantized weights (Q4_K,
Q8_0 ...) are dequantized on the way: training then runs on the dequantized weights. The default model's
packaged GGUF goes through the same ``dequantize_gguf`` (``model.default_model``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from your_ai.files import file_sha256, write_text_atomic
from your_ai.model.errors import InvalidModelNameError, ModelFileError

GGUF_SUFFIX = ".gguf"
FLOAT_TYPES = ("F32", "F16", "BF16")
_announced: set[Path] = set()  # conversions this process has already reported


@dataclass(frozen=True)
class GgufHeader:
    """What the header of a GGUF file says, read without loading its weights."""

    path: Path
    architecture: str
    tensor_types: tuple[str, ...]  # the GGML types of its matrices (F16, Q4_K ...), sorted, once each

    @property
    def quantized_types(self) -> tuple[str, ...]:
        return tuple(kind for kind in self.tensor_types if kind not in FLOAT_TYPES)


def gguf_file_of(path: Path) -> Path | None:
    """The GGUF file ``path`` names: itself when it is a ``.gguf`` file; the one ``.gguf`` file of a folder
    without ``config.json``; None for anything else. Several ``.gguf`` files: ``InvalidModelNameError``
    listing them."""
    if path.is_file():
        return path if path.suffix.lower() == GGUF_SUFFIX else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    files = sorted(item for item in path.iterdir() if item.suffix.lower() == GGUF_SUFFIX and item.is_file())
    if len(files) > 1:
        raise InvalidModelNameError(f"model directory {str(path)!r} holds {len(files)} GGUF files "
                                    f"({', '.join(item.name for item in files)}); pass one of them with --model")
    return files[0] if files else None


def read_header(path: Path) -> GgufHeader:
    """The architecture and tensor types of the GGUF file ``path``; ``ModelFileError`` naming the file for one
    that cannot be read (truncated, not GGUF) or whose architecture transformers cannot load."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelFileError(f"reading {path} needs the `gguf` package: pip install gguf")
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        field = reader.fields["general.architecture"]
        architecture = str(field.contents())
        kinds = sorted({tensor.tensor_type.name for tensor in reader.tensors if len(tensor.shape) > 1})
    except (ValueError, KeyError, IndexError, OSError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"{path}: not a readable GGUF file ({reason}); it may be truncated or damaged: "
                             f"download it again") from None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    readable = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})  # those two are key groups
    if architecture not in readable:
        raise ModelFileError(f"{path}: GGUF architecture {architecture!r} cannot be loaded by transformers; "
                             f"it reads {', '.join(readable)}")
    return GgufHeader(path, architecture, tuple(kinds))


def storage_dtype(header: GgufHeader):
    """The dtype a conversion saves: that of float weights (f32, f16, bf16), bf16 for quantized ones."""
    import torch

    if header.quantized_types or "BF16" in header.tensor_types:
        return torch.bfloat16
    return torch.float16 if "F16" in header.tensor_types else torch.float32


def dequantize_gguf(gguf: Path, output: Path, *, name_or_path: str, dtype) -> None:
    """The model and tokenizer of the GGUF file ``gguf``, read by transformers (quantized weights
    dequantized), saved with safetensors in ``output`` in ``dtype``; ``config._name_or_path`` is
    ``name_or_path``. ``ModelFileError`` naming the file when transformers cannot read it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModelFileError(f"reading {gguf.name} needs the `gguf` package: pip install gguf")
    folder, name = str(gguf.parent), gguf.name
    options = {}
    try:  # newer transformers keep GGUF weights quantized unless told to dequantize them
        from transformers import GgufConfig

        options["quantization_config"] = GgufConfig(gguf_file=name, dequantize=True)
    except (ImportError, TypeError):
        pass  # older versions always dequantize GGUF weights on load
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, **options)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelFileError(f"transformers could not read {gguf}: {str(error).strip().splitlines()[0]}") from None
    model.hf_quantizer = None  # the weights are plain tensors now: save them as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = name_or_path
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)


def converted_model(gguf: Path, cache: Path, say: Callable[[str], None] | None = None) -> Path:
    """The Hugging Face model directory converted from the GGUF file ``gguf`` in the your-ai cache ``cache``:
    converted on first use, reused afterwards; ``say`` (default: stderr) tells which, once per process."""
    from filelock import FileLock

    say = say or _to_stderr
    gguf = gguf.absolute()
    header = read_header(gguf)
    root = Path(cache) / "gguf"
    digest = remembered_sha256(gguf.resolve(), root / ".sha256")
    target = root / digest
    if (target / "config.json").is_file():
        _announce(gguf, f"Using {gguf.name}, converted before: {target}", say)
        return target
    (root / ".locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".locks" / f"{digest}.lock")):
        if (target / "config.json").is_file():  # another process converted it meanwhile
            return target
        for stale in root.glob(f".{digest}.*"):  # left by a killed conversion (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        kinds = ", ".join(header.tensor_types) or "no matrices"
        say(f"Converting {gguf.name} ({header.architecture}, {kinds}) into a Hugging Face model, once: {target}")
        if header.quantized_types:
            say(f"Note: {gguf.name} holds quantized weights ({', '.join(header.quantized_types)}): transformers "
                "dequantizes them, and training runs on the dequantized weights")
        started = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=root))
        try:
            dequantize_gguf(gguf, staging, name_or_path=str(gguf), dtype=storage_dtype(header))
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _announced.add(gguf)
        say(f"Converted in {time.perf_counter() - started:.0f} s; later commands reuse it")
        return target


def _announce(gguf: Path, line: str, say: Callable[[str], None]) -> None:
    if gguf not in _announced:
        _announced.add(gguf)
        say(line)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def remembered_sha256(path: Path, memo: Path) -> str:
    """The sha256 of ``path``, remembered in the folder ``memo`` by path, size and modification time, so a
    large file is read through once, not by every command."""
    stat = path.stat()
    key = hashlib.sha1(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}".encode()).hexdigest()
    remembered = memo / key
    try:
        value = remembered.read_text().strip()
        if len(value) == 64:
            return value
    except OSError:
        pass
    value = file_sha256(path)
    write_text_atomic(remembered, value)
    return value
