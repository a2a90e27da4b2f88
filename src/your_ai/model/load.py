"""Loading a resolved model's folder: its weights (safetensors only), its tokenizer, or a model of its
shape built without reading weights.

Every file that cannot be used ends in a ``ModelFileError`` naming it (``your_ai.model.errors``).
"""

from __future__ import annotations

import json
from pathlib import Path

from your_ai.model.architecture import load_config
from your_ai.model.errors import ModelFileError, refused_model_file
from your_ai.model.resolve import ResolvedModel


def build_model_from_config(resolved: ResolvedModel, *, dtype=None, device: str | None = None,
                            trust_remote_code: bool = False):
    """The model of a resolved model's ``config.json``, built without reading its weights (its parameters
    are the architecture's fresh initialisation; under ``meta.parameters_on_meta``, nothing)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(resolved.path, trust_remote_code=trust_remote_code)
    with torch.device(device or "cpu"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32,
                                                trust_remote_code=trust_remote_code)


def load_model(resolved: ResolvedModel, *, dtype=None, device: str | None = None, trust_remote_code: bool = False):
    """Load a resolved model's weights (safetensors only) onto ``device``; a ``ModelFileError`` naming the
    file when its config or weights cannot be used."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(resolved.path, trust_remote_code=trust_remote_code)
    weight_files(resolved.path)  # every file complete, before transformers reads them
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path,
            config=config,
            dtype=dtype or torch.float32,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            local_files_only=True,
        )
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):
            raise
        raise ModelFileError(f"{resolved.path}: the weights do not have the sizes its config.json gives (see the "
                             "report above); restore config.json or download the model again") from error
    return model.to(device) if device else model


def weight_files(model_dir) -> list[Path]:
    """The safetensors files holding a model directory's weights (those its index names when sharded), each
    checked to be a complete safetensors file; a ``ModelFileError`` naming the file or directory otherwise
    (pickled weights are never read)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    single = model_dir / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = [model_dir / name for name in sorted(set(weight_map.values()))]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ModelFileError(f"{index}: not a safetensors index ({error}); download the model again") from error
    elif single.is_file():
        files = [single]
    elif pickled := sorted(model_dir.glob("pytorch_model*.bin")):
        raise ModelFileError(f"{model_dir}: the weights are only in {pickled[0].name} (a pickle, which your-ai "
                             "never loads); convert them to model.safetensors, e.g. with the safetensors "
                             "library, on a machine where you trust the file")
    else:
        raise ModelFileError(f"{model_dir}: no model.safetensors or model.safetensors.index.json "
                             "(weights are read from safetensors only)")
    for file in files:
        _check_safetensors(file)
    return files


def _check_safetensors(file: Path) -> None:
    """A ``ModelFileError`` naming ``file`` when it is missing or not a complete safetensors file (reads its header)."""
    from safetensors import SafetensorError, safe_open

    if not file.is_file():
        raise ModelFileError(f"{file}: missing (named in model.safetensors.index.json); download the model again")
    try:
        with safe_open(str(file), framework="pt"):
            pass
    except SafetensorError as error:
        raise ModelFileError(f"{file}: not a complete safetensors file ({error}); download it again") from error


def load_tokenizer(resolved: ResolvedModel, *, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token (the end-of-sequence token when it has none); a
    ``ModelFileError`` naming the folder when its tokenizer files (or config.json) cannot be used."""
    from transformers import AutoTokenizer

    if (resolved.path / "config.json").is_file():  # the tokenizer reads it too: a broken one is named as such
        load_config(resolved.path, trust_remote_code=trust_remote_code)
    with refused_model_file(f"{resolved.path}: its tokenizer cannot be loaded ({{reason}}); restore tokenizer.json and "
                      "tokenizer_config.json (e.g. download the model again)"):
        tokenizer = AutoTokenizer.from_pretrained(
            resolved.path, trust_remote_code=trust_remote_code, local_files_only=True
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
