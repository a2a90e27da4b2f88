"""The architecture of a model read from its ``config.json``, without loading its weights."""

from __future__ import annotations

from collections.abc import Mapping

from your_ai.model.presets import Architecture


def architecture_from_config(config) -> Architecture:
    """The estimator's view of a model's config (decoder-only, Llama-like models): a ``config.json``
    dict or a transformers config object (whose attribute names and defaults then apply)."""
    if isinstance(config, Mapping):
        get = config.get
    else:
        def get(key, default=None):
            return getattr(config, key, default)
    try:
        heads = int(get("num_attention_heads"))
        return Architecture(
            model_type=str(get("model_type") or "llama"),
            hidden_size=int(get("hidden_size")),
            intermediate_size=int(get("intermediate_size")),
            num_hidden_layers=int(get("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=int(get("num_key_value_heads") or heads),
            vocab_size=int(get("vocab_size")),
            max_position_embeddings=int(get("max_position_embeddings") or 2048),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        )
    except (TypeError, ValueError):
        missing = [key for key in ("num_attention_heads", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "vocab_size") if not isinstance(get(key), (int, float))]
        raise ValueError(f"model config has no usable {', '.join(missing) or 'shape'} for the memory "
                         "estimate") from None


def read_model_config(model_dir):
    """A model directory's ``config.json``, nothing else read: a transformers config object when its
    ``model_type`` is one transformers knows (``AutoConfig``), else the plain dict (a model with its own
    code). A ``ValueError`` naming the file (and line) when it is missing or not valid JSON."""
    import json
    from pathlib import Path

    path = Path(model_dir) / "config.json"
    try:
        values = json.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a model config is a JSON object, not {type(values).__name__}")
    from transformers import CONFIG_MAPPING

    if values.get("model_type") not in CONFIG_MAPPING:
        return values
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path.parent, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path}: not a usable {values['model_type']} config ({error})") from None


def read_architecture(model_dir) -> Architecture:
    """``architecture_from_config`` of ``model_dir/config.json`` (``read_model_config``); errors name the file."""
    from pathlib import Path

    config = read_model_config(model_dir)
    try:
        return architecture_from_config(config)
    except ValueError as error:
        raise ValueError(f"{Path(model_dir) / 'config.json'}: {error}") from None
