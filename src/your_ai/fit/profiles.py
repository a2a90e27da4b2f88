"""Hardware profiles: the best config the optimize sweep measured for a model on this machine, saved as JSON,
which ``train --profile`` (or ``--auto-optimize``) applies."""

from __future__ import annotations

import json
import os
from pathlib import Path

from your_ai.hardware import config_dir
from your_ai.model.presets import PRESETS
from your_ai.model.resolve import looks_like_path

PROFILE_KEYS = ("batch_size", "lora_rank", "lora_alpha", "lora_layers")


def profile_path(model: str) -> Path:
    """``<config dir>/profiles/<model>.json`` (hub ids as org--name, directories by their name)."""
    if model in PRESETS:
        stem = model
    elif looks_like_path(model):
        stem = Path(model).expanduser().resolve().name
    else:
        stem = model.replace("/", "--")
    return config_dir() / "profiles" / f"{stem}.json"


def load_profile(path: str | os.PathLike) -> dict:
    """A saved hardware profile, checked: ``model`` and positive ``batch_size``, ``lora_rank``,
    ``lora_alpha``, ``lora_layers``. Errors name the file and the value."""
    target = Path(path)
    if not target.is_file():
        raise ValueError(f"hardware profile {str(target)!r} does not exist (create one with: your-ai optimize --model M)")
    try:
        profile = json.loads(target.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{target}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(profile, dict):
        raise ValueError(f"{target}: a hardware profile is a JSON object, not {type(profile).__name__}")
    if not isinstance(profile.get("model"), str) or not profile["model"]:
        raise ValueError(f"{target}: model={profile.get('model')!r} must be a model name")
    for key in PROFILE_KEYS:
        value = profile.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
                key != "lora_alpha" and not float(value).is_integer()):
            kind = "a positive number" if key == "lora_alpha" else "a positive integer"
            raise ValueError(f"{target}: {key}={value!r} must be {kind}")
        if key != "lora_alpha":
            profile[key] = int(value)
    return profile


def apply_profile(options: dict, profile: dict, source: str) -> tuple[dict, str]:
    """Fill ``train`` options from a hardware profile; flags the user gave explicitly win.

    Returns the new options and a line saying what was applied. A profile made for another
    model than ``options['model']`` is refused.
    """
    model = options.get("model")
    if model and model != profile["model"]:
        raise ValueError(f"{source}: profile is for model {profile['model']!r}, not {model!r}")
    applied = dict(options)
    applied["model"] = model or profile["model"]
    taken = []
    for key in PROFILE_KEYS:
        if applied.get(key) is None:
            applied[key] = profile[key]
            taken.append(f"{key.replace('_', '-')} {profile[key]:g}")
    if applied.get("max_seq_length") is None and profile.get("seq_length"):
        applied["max_seq_length"] = int(profile["seq_length"])
        taken.append(f"max-seq-length {applied['max_seq_length']}")
    if applied.get("quantize") is None and profile.get("quantize"):  # measured with 4-bit weights
        applied["quantize"] = int(profile["quantize"])
        taken.append(f"quantize {applied['quantize']}")
    note = f"Applied hardware profile {source}: {', '.join(taken) or 'nothing (all set by flags)'}"
    return applied, note
