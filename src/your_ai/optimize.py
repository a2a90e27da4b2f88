"""The optimizer sweep: batch size x LoRA rank x LoRA layers, measured -> a hardware profile.

Each config runs in its own subprocess through the same fit probe as the benchmark
(``your_ai.benchmark.run_probe_subprocess``), ~15 real training steps, lightest first by
the analytic estimate. A config fits when its measured peak plus a 15% safety margin is
within the budget. Configs whose estimate is over 1.5x the budget are not run; once a
config runs out of memory (or over the budget), every config at least as heavy in all three
dimensions is skipped. The best config is the fastest (tokens/s) that fits; it is saved as
a hardware profile that ``train --profile`` applies.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from your_ai import memory
from your_ai.benchmark import (
    DEFAULT_TIMEOUT_S,
    STOPPING_STATUSES,
    ProgressLine,
    check_processes,
    now_iso,
    processes_word,
    resolve_device,
    result_text,
    run_probe_subprocess,
    train_flags,
)
from your_ai.files import write_json_atomic
from your_ai.presets import PRESETS
from your_ai.probe import FitConfig, fit_strategy, per_process_estimate_gb

QUICK_GRID = {"batch_size": (2, 4, 8), "lora_rank": (64, 128), "lora_layers": (16, 24)}
FULL_GRID = {"batch_size": (2, 4, 6, 8, 10, 12), "lora_rank": (32, 64, 96, 128), "lora_layers": (8, 16, 24, 32)}
DEFAULT_STEPS = 15
SAFETY_MARGIN = 0.15
ESTIMATE_SKIP_FACTOR = 1.5
PROFILE_KEYS = ("batch_size", "lora_rank", "lora_alpha", "lora_layers")


def fits(peak_gb: float | None, budget_gb: float) -> bool:
    """A measured peak fits when it still fits with the 15% safety margin added."""
    return peak_gb is not None and peak_gb * (1 + SAFETY_MARGIN) <= budget_gb


def grid_configs(architecture, device: str, *, quick: bool, steps: int, seq_length: int | None,
                 grad_checkpoint: bool = False, step_mode: str = "auto",
                 budget_gb: float | None = None, gpus: int = 1,
                 strategy: str | None = None, quantize: int | None = None) -> tuple[list[tuple[FitConfig, float]], list[str]]:
    """The grid's distinct configs for this model, lightest first, with their estimates (GB): each in the
    step mode its fit test runs within ``budget_gb`` (``probe.step_mode_for``); on ``gpus`` > 1 per process,
    in the strategy ``probe.fit_strategy`` picks for the config.

    Layer counts above the model's depth are clamped; configs that become identical are kept once.
    """
    grid = QUICK_GRID if quick else FULL_GRID
    depth = architecture.num_hidden_layers
    seen: dict[tuple, FitConfig] = {}
    notes = []
    for batch, rank, layers in itertools.product(grid["batch_size"], grid["lora_rank"], grid["lora_layers"]):
        used = min(layers, depth)
        key = (batch, rank, used)
        if key not in seen:
            seen[key] = FitConfig(batch_size=batch, lora_rank=rank, lora_layers=used, steps=steps,
                                  seq_length=seq_length, grad_checkpoint=grad_checkpoint, step_mode=step_mode,
                                  quantize=quantize)
    clamped = sorted({layers for layers in grid["lora_layers"] if layers > depth})
    if clamped:
        notes.append(f"LoRA layers {', '.join(map(str, clamped))} clamped to the model's {depth} layers "
                     "(each clamped config is tested once)")
    configs = [(config, per_process_estimate_gb(architecture, device, config, budget_gb, gpus,
                                                fit_strategy(strategy, architecture, device, config, budget_gb, gpus)))
               for config in seen.values()]
    configs.sort(key=lambda item: (item[1], item[0].batch_size, item[0].lora_rank, item[0].lora_layers))
    return configs, notes


def _dominates(config: FitConfig, failed: FitConfig) -> bool:
    return (config.batch_size >= failed.batch_size and config.lora_rank >= failed.lora_rank
            and config.lora_layers >= failed.lora_layers)


def _describe(config: FitConfig) -> str:
    return f"batch {config.batch_size}, rank {config.lora_rank}, layers {config.lora_layers}"


def run_optimize(
    model: str,
    *,
    max_memory_gb: float | None = None,
    device: str | None = None,
    quick: bool = False,
    steps: int = DEFAULT_STEPS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    synthetic: bool = False,
    seq_length: int | None = None,
    grad_checkpoint: bool = False,
    step_mode: str = "auto",
    output: str | os.PathLike | None = None,
    stream: TextIO | None = None,
    say: Callable[[str], None] | None = None,
    gpus: int = 1,
    strategy: str | None = None,
    quantize: int | None = None,
) -> dict:
    """Sweep the grid for ``model`` and save the best config as a hardware profile.

    ``gpus`` > 1: each config runs on that many GPUs (CPU processes with ``device`` "cpu") through torchrun,
    as ``benchmark --gpus``; the budget and peaks are per GPU, tokens/s of all of them, and the profile
    records ``gpus`` and the best config's ``strategy``.

    Returns ``{"best": {...} or None, "results": [...], "profile": {...} or None, "path": str or None}``.
    Raises ``ModelNotAvailableError`` / ``InvalidModelNameError`` for a model that cannot be resolved.
    """
    stream = stream or sys.stdout
    if say is None:
        def say(text: str = "") -> None:
            stream.write(text + "\n")
            stream.flush()
    check_processes(gpus, device)
    architecture, model_name, preset = _architecture_of(model, synthetic)
    device = resolve_device(device)
    if max_memory_gb is None:
        max_memory_gb = memory.default_budget_gb(device)
    configs, notes = grid_configs(architecture, device, quick=quick, steps=steps, seq_length=seq_length,
                                  grad_checkpoint=grad_checkpoint, step_mode=step_mode, budget_gb=max_memory_gb,
                                  gpus=gpus, strategy=strategy, quantize=quantize)
    seq_used = memory.fit_seq_length(seq_length, architecture)
    on = f"{device}, {gpus} {processes_word(device, gpus)} (strategy {strategy or 'auto'})" if gpus > 1 else device
    say(f"Sweeping {len(configs)} configs of {model} ({'quick' if quick else 'full'} grid) on {on}: "
        f"budget {max_memory_gb:.2f} GB, {SAFETY_MARGIN:.0%} safety margin, {steps} steps each, sequence {seq_used}")
    for note in notes:
        say(f"Note: {note}")

    results: list[dict] = []
    failed: list[FitConfig] = []
    stop_reason = None
    total = len(configs)
    for index, (config, estimate) in enumerate(configs, start=1):
        prefix = f"[{index:{len(str(total))}}/{total}] {_describe(config):32} ... "
        row = {"batch_size": config.batch_size, "lora_rank": config.lora_rank, "lora_layers": config.lora_layers,
               "estimate_gb": round(estimate, 3), "status": "skipped", "fits": False, "peak_memory_gb": None,
               "step_time_s": None, "tokens_per_s": None, "error": None}
        heavier_than = next((f for f in failed if _dominates(config, f)), None)
        if stop_reason:
            row["error"] = stop_reason
        elif heavier_than:
            row["error"] = f"at least as heavy as {_describe(heavier_than)}, which did not fit"
        elif estimate > ESTIMATE_SKIP_FACTOR * max_memory_gb:
            row["error"] = (f"estimate {estimate:.1f} GB is over {ESTIMATE_SKIP_FACTOR:g}x "
                            f"the {max_memory_gb:.2f} GB budget")
        else:
            progress = ProgressLine(stream, prefix)
            progress.start()
            config_strategy = fit_strategy(strategy, architecture, device, config, max_memory_gb, gpus)
            run = run_probe_subprocess(model, max_memory_gb, device, config, timeout_s=timeout_s, synthetic=synthetic,
                                       preset=preset, estimate_gb=round(estimate, 3), on_tick=progress.update,
                                       processes=gpus, strategy=config_strategy)
            result = run.result
            row.update(status=result["status"], error=result.get("error"), peak_memory_gb=result.get("peak_memory_gb"),
                       step_time_s=result.get("step_time_s"), tokens_per_s=result.get("tokens_per_s"),
                       seq_length=result["config"].get("seq_length"), step_mode=result["config"].get("step_mode"),
                       exit_code=run.exit_code, signal=run.signal)
            if gpus > 1:
                row.update(processes=gpus, strategy=result.get("strategy") or config_strategy)
            if row["status"] == "pass" and not fits(row["peak_memory_gb"], max_memory_gb):
                row["status"] = "over_budget"
                row["error"] = (f"peak {row['peak_memory_gb']:.2f} GB + {SAFETY_MARGIN:.0%} margin = "
                                f"{row['peak_memory_gb'] * (1 + SAFETY_MARGIN):.2f} GB > {max_memory_gb:.2f} GB budget")
            row["fits"] = row["status"] == "pass"
            if row["fits"]:
                progress.finish(f"✓ fits: {row['peak_memory_gb']:.2f} GB peak, {row['step_time_s']:.3f} s/step, "
                                f"{row['tokens_per_s']:.0f} tokens/s")
            else:
                progress.finish(result_text({**result, **row, "estimate_gb": round(estimate, 3)}))
            if row["status"] in STOPPING_STATUSES:
                failed.append(config)
            if row["status"] == "not_available":
                stop_reason = "the model is not available"
            results.append(row)
            continue
        say(f"{prefix}- Skipped ({row['error']})")
        results.append(row)

    winners = [r for r in results if r["fits"]]
    best = None
    if winners:
        top = max(winners, key=lambda r: (r["tokens_per_s"], -r["peak_memory_gb"]))
        best = {
            "batch_size": top["batch_size"], "lora_rank": top["lora_rank"], "lora_alpha": 2 * top["lora_rank"],
            "lora_layers": top["lora_layers"], "seq_length": top.get("seq_length", seq_used),
            "peak_memory_gb": top["peak_memory_gb"],
            "peak_with_margin_gb": round(top["peak_memory_gb"] * (1 + SAFETY_MARGIN), 3),
            "step_time_s": top["step_time_s"], "tokens_per_s": top["tokens_per_s"],
            "gpus": gpus, "strategy": top.get("strategy"), "quantize": quantize,
        }
    say()
    say(format_table(results))
    say()
    outcome = {"best": best, "results": results, "profile": None, "path": None}
    if best is None:
        say(f"No config fits {max_memory_gb:.2f} GB with the {SAFETY_MARGIN:.0%} safety margin; no profile saved.")
        return outcome
    profile = {
        "model": model, "model_name": model_name, "preset": preset.name if preset else None,
        **{key: best[key] for key in ("batch_size", "lora_rank", "lora_alpha", "lora_layers", "seq_length",
                                      "peak_memory_gb", "peak_with_margin_gb", "step_time_s", "tokens_per_s",
                                      "gpus", "strategy", "quantize")},
        "device": device, "synthetic": synthetic, "max_memory_gb": round(max_memory_gb, 3),
        "safety_margin": SAFETY_MARGIN, "grid": "quick" if quick else "full", "steps": steps,
        "results": results, "created_at": now_iso(),
    }
    path = write_json_atomic(output or profile_path(model), profile)
    say(f"Best: batch {best['batch_size']}, LoRA rank {best['lora_rank']} (alpha {best['lora_alpha']}) on the last "
        f"{best['lora_layers']} layers: {best['tokens_per_s']:.0f} tokens/s, {best['peak_memory_gb']:.2f} GB peak "
        f"({best['peak_with_margin_gb']:.2f} GB with the margin; budget {max_memory_gb:.2f} GB)")
    say(f"Saved hardware profile to {path}")
    flags = train_flags({"processes": gpus, "device": device, "strategy": best["strategy"], "quantize": quantize})
    say(f"Apply it with: your-ai train {flags}--model {model} --profile {path}")
    outcome.update(profile=profile, path=str(path))
    return outcome


def _architecture_of(model: str, synthetic: bool):
    """(architecture, model_name, preset) of ``model`` without loading it."""
    from your_ai.models import InvalidModelNameError, resolve_model

    if synthetic:
        if model not in PRESETS:
            raise InvalidModelNameError(
                f"synthetic models are built from presets; {model!r} is not one of: {', '.join(PRESETS)}")
        preset = PRESETS[model]
        return preset.architecture, preset.hub_id, preset
    resolved = resolve_model(model)
    return memory.read_architecture(resolved.path), resolved.hub_id or str(resolved.path), resolved.preset


def format_table(results: list[dict]) -> str:
    """The sweep's results as a fixed-width table."""
    def number(value, width, digits):
        return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    header = f"{'Batch':>5} {'Rank':>5} {'Layers':>6} {'Est GB':>7} {'Peak GB':>8} {'+15% GB':>8} {'Step s':>7} {'Tokens/s':>9}  Status"
    lines = [header, "-" * len(header)]
    for row in results:
        margin = row["peak_memory_gb"] * (1 + SAFETY_MARGIN) if row["peak_memory_gb"] is not None else None
        status = "fits" if row["fits"] else row["status"]
        lines.append(
            f"{row['batch_size']:>5} {row['lora_rank']:>5} {row['lora_layers']:>6} {number(row['estimate_gb'], 7, 2)} "
            f"{number(row['peak_memory_gb'], 8, 2)} {number(margin, 8, 2)} {number(row['step_time_s'], 7, 3)} "
            f"{number(row['tokens_per_s'], 9, 0)}  {status}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- profiles

def profile_path(model: str) -> Path:
    """``<config dir>/profiles/<model>.json`` (hub ids as org--name, directories by their name)."""
    from your_ai.hardware import config_dir

    if model in PRESETS:
        stem = model
    elif Path(model).is_absolute() or model.startswith((".", "~")) or Path(model).exists():
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


def profile_for_training(model: str | None, *, profile: str | None, auto: bool, max_memory_gb: float | None,
                         device: str | None, say: Callable[[str], None]) -> tuple[dict, str] | None:
    """The profile ``train`` should apply: ``--profile FILE``, or with ``--auto-optimize`` the saved
    profile of this model, measured now with the quick sweep when there is none. None otherwise."""
    if profile:
        return load_profile(profile), profile
    if not auto:
        return None
    from your_ai.models import model_or_default

    model = model_or_default(model)
    target = profile_path(model)
    if target.is_file():
        return load_profile(target), str(target)
    say(f"No hardware profile for {model} yet: running the quick optimize sweep first.")
    outcome = run_optimize(model, quick=True, max_memory_gb=max_memory_gb, device=device, say=say)
    if outcome["profile"] is None:
        raise ValueError(f"--auto-optimize: no configuration of {model} fits the memory budget")
    return outcome["profile"], outcome["path"]
