"""The architecture of a model, and the one reader of a model folder's ``config.json``.

``Architecture`` is a decoder-only (Llama-like) model's shape: enough for the memory estimator and to build
a random-weight model of that shape (``build_random_model``). ``read_config_values`` reads and checks ``config.json``, naming the
file in every error (``ModelFileError``); ``load_config`` makes transformers' config of it and
``read_architecture`` the architecture, without reading any weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from your_ai.files import read_json_object
from your_ai.model.errors import ModelFileError, refused_model_file

# Sizes in a model's config.json that must be positive integers.
SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings")
RESTORE = "restore the file (e.g. download the model again)"


@dataclass(frozen=True)
class Architecture:
    model_type: str  # "llama", "mistral", "qwen2"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    head_dim: int = 0  # config.json's head_dim where it has one (Mistral-Nemo: 128, not 5120 / 32); 0: hidden / heads

    def __post_init__(self):
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @property
    def attention_size(self) -> int:
        """Output features of the query projection (input features of o_proj): heads x head_dim."""
        return self.num_attention_heads * self.head_dim

    def projection_features(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear projection of a decoder layer."""
        h, i, q = self.hidden_size, self.intermediate_size, self.attention_size
        kv = self.num_key_value_heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def config_dict(self) -> dict[str, Any]:
        """Keyword arguments for ``transformers.AutoConfig.for_model``."""
        values = asdict(self)
        if self.model_type == "qwen2":
            values["use_sliding_window"] = False
        return values

    def parameter_count(self) -> int:
        """Exact parameter count of the decoder (embeddings, layers, norm, head)."""
        h, i, layers = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        q, kv = self.attention_size, self.num_key_value_heads * self.head_dim
        attention = h * q * 2 + h * kv * 2
        if self.model_type == "qwen2":
            attention += q + 2 * kv  # q/k/v biases
        per_layer = attention + 3 * h * i + 2 * h
        return self.outside_layers_parameter_count() + layers * per_layer

    def outside_layers_parameter_count(self) -> int:
        """Parameters outside the decoder layers: the input embeddings, the head unless tied to them,
        and the final norm."""
        h = self.hidden_size
        return self.vocab_size * h * (1 if self.tie_word_embeddings else 2) + h

    def decoder_linear_parameter_count(self) -> int:
        """Weights of the decoder layers' linear projections (q/k/v/o, gate/up/down): what 4-bit
        quantization turns into NF4."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads * self.head_dim
        return self.num_hidden_layers * (h * self.attention_size * 2 + h * kv * 2 + 3 * h * i)


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
            head_dim=int(get("head_dim") or 0),
        )
    except (TypeError, ValueError):
        missing = [key for key in ("num_attention_heads", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "vocab_size") if not isinstance(get(key), (int, float))]
        raise ValueError(f"model config has no usable {', '.join(missing) or 'shape'} for the memory "
                         "estimate") from None


def read_config_values(model_dir) -> dict:
    """The values of ``model_dir/config.json``: a JSON object whose sizes (``SIZE_FIELDS``) are positive
    integers. A ``ModelFileError`` naming the file (and the line, for invalid JSON) otherwise."""
    path = Path(model_dir) / "config.json"
    try:
        values = read_json_object(path)
    except OSError as error:
        raise ModelFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    except ValueError as error:
        line = getattr(error.__cause__, "lineno", None)
        raise ModelFileError(f"{path}{f':{line}' if line else ''}: {error}; {RESTORE}") from None
    bad = [f"{name}={value!r}" for name in SIZE_FIELDS if (value := values.get(name)) is not None
           and (isinstance(value, bool) or not isinstance(value, int) or value <= 0)]
    if bad:
        raise ModelFileError(f"{path}: {', '.join(bad)} must be a positive integer; {RESTORE}")
    return values


def load_config(model_dir, *, trust_remote_code: bool = False):
    """The transformers config of a model folder (``read_config_values``, then ``AutoConfig``); a
    ``ModelFileError`` naming its ``config.json`` when transformers refuses it too (an unknown
    ``model_type``, a value the config refuses)."""
    read_config_values(model_dir)
    return _auto_config(model_dir, trust_remote_code)


def _auto_config(model_dir, trust_remote_code: bool):
    from transformers import AutoConfig

    with refused_model_file(f"{Path(model_dir) / 'config.json'}: {{reason}}; {RESTORE}"):
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code, local_files_only=True)


def read_architecture(model_dir) -> Architecture:
    """The architecture in ``model_dir/config.json``, no weights read: through transformers' config (its
    attribute names and defaults) when transformers knows the ``model_type``, else from the file's values
    (a model with its own code). A ``ModelFileError`` naming the file when it has no usable shape."""
    from transformers import CONFIG_MAPPING

    values = read_config_values(model_dir)
    config = _auto_config(model_dir, False) if values.get("model_type") in CONFIG_MAPPING else values
    try:
        return architecture_from_config(config)
    except ValueError as error:
        raise ModelFileError(f"{Path(model_dir) / 'config.json'}: {error}") from None


def build_config(architecture: Architecture, extra_config: dict | None = None):
    """The transformers config of ``architecture`` (with ``extra_config``'s values on top)."""
    from transformers import AutoConfig

    values = architecture.config_dict()
    model_type = values.pop("model_type")
    values.update(extra_config or {})
    return AutoConfig.for_model(model_type, **values)


def build_random_model(
    architecture: Architecture,
    *,
    dtype=None,
    device: str | None = None,
    seed: int = 0,
    extra_config: dict | None = None,
):
    """A model of ``architecture``'s exact shape with random weights, built on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    config = build_config(architecture, extra_config)
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    return model
