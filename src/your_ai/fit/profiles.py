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
    differences = settings_differences(profile, options)
    if differences:
        note += (f"\nThe profile was measured with {'; '.join(differences)}: what fitted there may not fit this run "
                 f"(measure this run's settings with `your-ai optimize --model {applied['model']}` and the same flags)")
    return applied, note


def settings_differences(profile: dict, run: dict) -> list[str]:
    """What ``run`` (train's options: ``max_seq_length``, ``quantize``, ``dora``; None where not given, so the
    profile's value applies) sets differently from what ``profile`` was measured with, one phrase each."""
    differences = []
    measured_length, length = profile.get("seq_length"), run.get("max_seq_length")
    if length is not None and measured_length is not None and int(measured_length) != length:
        differences.append(f"--max-seq-length {measured_length} (this run: {length})")
    measured_bits, bits = profile.get("quantize") or None, run.get("quantize")
    if bits is not None and measured_bits != bits:
        differences.append(f"{'--quantize ' + str(measured_bits) if measured_bits else 'full-precision weights'} "
                           f"(this run: --quantize {bits})")
    if bool(profile.get("dora")) != bool(run.get("dora")):
        differences.append(f"{'DoRA' if profile.get('dora') else 'LoRA'} adapters "
                           f"(this run: {'DoRA' if run.get('dora') else 'LoRA'})")
    return differences
