"""Which presets (or given models) should fit a memory budget, from the analytic estimate (no model
is loaded: a given model's shape comes from its config, ``model.resolve.model_shape``).

Each model is estimated in the run ``your-ai train --model MODEL`` makes on this device: train's defaults
for the model's size and the device (``train.defaults``: batch size, LoRA rank and layers, sequence length),
each replaced by the flag given. The budget is 80% of the memory given (or of the training device's memory:
the GPU's own memory on CUDA, system memory elsewhere; on the MLX engine, Metal's recommended working set
where there is one, as ``train --engine mlx`` uses). Estimates assume the device's training dtype (bf16 on
CUDA, MPS and MLX, fp32 on the CPU). ``your-ai benchmark`` measures what really fits.

When nothing fits, the advice says what would: 4-bit weights (``--quantize 4``) when a preset fits that way,
a smaller batch or sequence only when the weights themselves fit, else the built-in ``tiny`` model.
"""

from __future__ import annotations

from your_ai.fit.plan import FitConfig, estimate_for, fit_device
from your_ai.hardware import pick_device
from your_ai.model.architecture import Architecture
from your_ai.model.errors import InvalidModelNameError, ModelResolutionError
from your_ai.model.presets import PRESETS, TINY
from your_ai.model.resolve import model_shape, short_label
from your_ai.step import memory
from your_ai.train.defaults import choose

CONFIG_KEYS = ("batch_size", "lora_rank", "lora_layers", "seq_length")
TRAIN_FLAGS = {"batch_size": "--batch-size", "lora_rank": "--lora-rank", "lora_layers": "--lora-layers",
               "seq_length": "--max-seq-length", "quantize": "--quantize"}


def train_config(name: str, architecture: Architecture, device: str, given: dict, quantize: int | None) -> FitConfig:
    """The config ``your-ai train --model NAME`` runs on ``device``: train's defaults for the model's size and
    the device, with the values in ``given`` (None: not given) instead; DoRA adapters with ``given["dora"]``.
    On the MLX engine (``device`` "mlx") the defaults are those ``train`` reads for the device it detects
    (the GPU on a Mac with Metal, else the CPU)."""
    defaults_device = pick_device() if device == memory.MLX_DEVICE else device
    rule = choose(name, defaults_device, architecture.parameter_count(), builtin=name == TINY.name).rule
    defaults = {"batch_size": rule.batch_size, "lora_rank": rule.lora_rank, "lora_layers": rule.lora_layers,
                "seq_length": rule.max_seq_length}
    values = {key: defaults[key] if given.get(key) is None else given[key] for key in CONFIG_KEYS}
    return FitConfig(**values, steps=1, quantize=quantize, dora=bool(given.get("dora")))


def recommend_presets(
    memory_gb: float | None = None,
    batch_size: int | None = None,
    lora_rank: int | None = None,
    lora_layers: int | None = None,
    seq_length: int | None = None,
    device: str | None = None,
    quantize: int | None = None,
    models: list[str] | None = None,
    dora: bool = False,
    engine: str | None = None,
) -> dict:
    """Every preset (smallest first) with its estimate and whether it fits 80% of ``memory_gb``, each in the
    run ``train`` makes of it (``train_config``: its defaults, or the values given); ``quantize`` 4: with the
    decoder linears in 4 bits (QLoRA); ``dora``: DoRA adapters. ``engine`` (None: auto, as ``train``): on
    the MLX engine the estimate is MLX's (``device`` "mlx"). ``models``: instead of the presets, these
    (presets, hub ids, directories), in ``report["models"]``, each with ``error`` when it has no estimate."""
    if memory_gb is not None and not memory_gb > 0:
        raise ValueError(f"memory={memory_gb!r} must be a positive number of GB")
    device = fit_device(device, engine) or pick_device()
    memory_gb, source, budget, budget_source = _budget(device, memory_gb)
    given = {"batch_size": batch_size, "lora_rank": lora_rank, "lora_layers": lora_layers, "seq_length": seq_length,
             **({"dora": True} if dora else {})}
    report = {
        "memory_gb": round(memory_gb, 2),
        "memory_source": source,
        "budget_fraction": round(budget / memory_gb, 3),
        "budget_gb": round(budget, 2),
        "budget_source": budget_source,
        "device": device,
        "engine": "mlx" if device == memory.MLX_DEVICE else "torch",
        "weight_bytes": memory.training_dtype_bytes(device),
        "config": {**given, "quantize": quantize},  # as given; None: train's default for each model
    }
    if models:
        return {**report, "models": [_model_row(name, device, given, quantize, budget) for name in models]}
    rows = _preset_rows(device, given, quantize, budget)
    fitting = [row["preset"] for row in rows if row["fits"]]
    quantized = None
    if quantize is None and not dora:  # what 4-bit weights would fit, for the advice (DoRA reads whole weights)
        in_4_bits = [row for row in _preset_rows(device, given, 4, budget) if row["fits"]]
        largest = in_4_bits[-1] if in_4_bits else None
        quantized = {"quantize": 4, "fitting": [row["preset"] for row in in_4_bits],
                     "largest_fit": largest and largest["preset"], "estimate_gb": largest and largest["estimate_gb"]}
    return {**report, "presets": rows, "fitting": fitting, "largest_fit": fitting[-1] if fitting else None,
            "quantized": quantized}


def _budget(device: str, memory_gb: float | None) -> tuple[float, str, float, str]:
    """The memory planned for and where it comes from, and the budget and where it comes from: 80% of the
    memory given; else the device's default budget (``memory.default_budget``: on MLX, Metal's recommended
    working set when there is one, else 80% of the device's memory)."""
    if memory_gb is not None:
        budget = memory.BUDGET_FRACTION * memory_gb
        return memory_gb, "given", budget, f"{memory.BUDGET_FRACTION:.0%} of {memory_gb:.1f} GB"
    memory_gb = memory.device_memory_gb(device)
    on_metal = device == memory.MLX_DEVICE and bool(memory.mlx_device_info())
    source = f"detected {'GPU' if device.startswith('cuda') else 'Metal' if on_metal else 'system'} memory"
    budget, budget_source = memory.default_budget(device)
    return memory_gb, source, budget, budget_source


def _preset_rows(device: str, given: dict, quantize: int | None, budget: float) -> list[dict]:
    presets = sorted((p for p in PRESETS.values() if p is not TINY), key=lambda p: p.architecture.parameter_count())
    return [_preset_row(preset, device, given, quantize, budget) for preset in presets]


def _preset_row(preset, device: str, given: dict, quantize: int | None, budget: float) -> dict:
    return {
        "preset": preset.name,
        "hub_id": preset.hub_id,
        "params": preset.params,
        "tier": preset.tier,
        "recommended": preset.recommended,
        **_estimate(preset.name, preset.architecture, device, given, quantize, budget),
        "warnings": list(preset.warnings),
    }


def _estimate(name: str, architecture, device: str, given: dict, quantize: int | None, budget: float) -> dict:
    """A row's config and estimate, in the step mode train would pick, and whether it fits ``budget``."""
    config = train_config(name, architecture, device, given, quantize)
    estimate = estimate_for(architecture, device, config, budget)
    return {"config": {key: getattr(config, key) for key in CONFIG_KEYS}, "estimate_gb": round(estimate.total_gb, 2),
            "parts_gb": estimate.parts_gb, "fits": estimate.total_gb <= budget}


def _model_row(name: str, device: str, given: dict, quantize: int | None, budget: float) -> dict:
    """The row of a given model (preset, hub id or directory), its shape read from its config (a preset not
    on this machine: the preset's); ``error`` says why a model has no estimate (not available, bad config).
    A name that is none of the three raises ``ValueError``."""
    try:
        shape = model_shape(name, preset_when_missing=True)
    except InvalidModelNameError as error:
        raise ValueError(f"--model {name}: {error}") from None
    except (ModelResolutionError, ValueError) as error:
        return {"model": name, "label": short_label(name), "preset": None, "model_name": name, "params": None,
                "parameter_count": None, "config": None, "estimate_gb": None, "parts_gb": None, "fits": None,
                "error": str(error)}
    return {"model": name, "label": shape.label, "preset": shape.preset.name if shape.preset else None,
            "model_name": shape.model_name, "params": shape.params, "parameter_count": shape.parameter_count,
            **_estimate(name, shape.architecture, device, given, quantize, budget), "error": None}


def config_text(config: dict) -> str:
    """"batch 2, rank 128 on 16 layers, 1024 tokens"."""
    return (f"batch {config['batch_size']}, rank {config['lora_rank']} on {config['lora_layers']} layers, "
            f"{config['seq_length']} tokens")


def format_recommendation(report: dict) -> str:
    """The report as a table with the largest preset that fits; with given models, a verdict for each."""
    dtype = "bf16" if report["weight_bytes"] == 2 else "fp32"
    weights = f"{dtype} weights"
    if report["config"].get("quantize"):
        weights = f"decoder linear weights in {four_bit_format(report)}, the rest in {dtype}"
    flags = "".join(f" {TRAIN_FLAGS[key]} {value}" for key, value in report["config"].items()
                    if value is not None and key in TRAIN_FLAGS) + (" --dora" if report["config"].get("dora") else "")
    flags += engine_flag(report)
    lines = [
        f"Memory: {report['memory_gb']:.1f} GB ({report['memory_source']}, {report['device']}); "
        f"budget {report['budget_gb']:.1f} GB ({report['budget_source']})",
        f"Estimated LoRA training memory of `your-ai train --model MODEL{flags}` on "
        f"{report['device']} (train's defaults for each model where no flag is given), {weights}",
        "",
    ]
    if "models" in report:
        return "\n".join(lines + _model_verdicts(report))
    lines.append(f"  {'Preset':<20} {'Params':>6} {'Estimate':>10}  {'Fits':<4}  Config")
    for row in report["presets"]:
        mark = "yes" if row["fits"] else "no"
        lines.append(f"  {row['preset']:<20} {row['params']:>6} {row['estimate_gb']:>7.1f} GB  {mark:<4}  "
                     f"{config_text(row['config'])}")
    lines.append("")
    if report["largest_fit"]:
        lines.append(f"Largest that fits: {report['largest_fit']}")
    else:
        lines.append(f"No preset fits {report['budget_gb']:.1f} GB.")
    lines.extend(_advice(report))
    lines.append(f"These are estimates; `your-ai benchmark{engine_flag(report)}` measures the real peak on this "
                 "machine.")
    return "\n".join(lines)


def four_bit_format(report: dict) -> str:
    """What ``--quantize 4`` stores the decoder's linear weights as on the report's engine."""
    return f"MLX 4-bit (group size {memory.MLX_GROUP_SIZE})" if report["engine"] == "mlx" else "4-bit NF4"


def engine_flag(report: dict) -> str:
    return " --engine mlx" if report["engine"] == "mlx" else ""


def _model_verdicts(report: dict) -> list[str]:
    """One verdict line per given model: fits or not with its estimate and config, or why there is none."""
    budget = report["budget_gb"]
    lines = []
    for row in report["models"]:
        name = f"{row['label']} ({row['params']})" if row["params"] else row["label"]
        if row["error"]:
            lines.append(f"  {name}: no estimate: {row['error']}")
        elif row["fits"]:
            lines.append(f"  {name}: fits, estimated {row['estimate_gb']:.1f} GB of the {budget:.1f} GB budget "
                         f"({config_text(row['config'])})")
        else:
            lines.append(f"  {name}: does not fit, estimated {row['estimate_gb']:.1f} GB > the {budget:.1f} GB budget "
                         f"({config_text(row['config'])})")
    names = ",".join(row["model"] for row in report["models"])
    return [*lines, "", f"These are estimates; `your-ai benchmark{engine_flag(report)} --models {names}` measures "
                        "the real peak."]


def _advice(report: dict) -> list[str]:
    """What would fit: a larger preset with 4-bit weights; when nothing fits, a smaller batch or sequence only
    if the smallest preset's weights fit the budget, else the built-in tiny model."""
    rows, budget, quantized = report["presets"], report["budget_gb"], report.get("quantized")
    names = [row["preset"] for row in rows]
    lines = []
    helps = quantized and quantized["largest_fit"] and (
        not report["largest_fit"] or names.index(quantized["largest_fit"]) > names.index(report["largest_fit"]))
    if helps:
        name = quantized["largest_fit"]
        fits = f"a larger preset fits: {name}" if report["largest_fit"] else f"{name} fits"
        engine = engine_flag(report)
        lines.append(f"With --quantize 4 (QLoRA: the decoder linear weights in {four_bit_format(report)}) {fits} "
                     f"(estimated {quantized['estimate_gb']:.1f} GB). Check with `your-ai recommend{engine} --quantize "
                     f"4`; train with `your-ai train{engine} --quantize 4 --model {name}`.")
    if report["largest_fit"] or not rows:
        return lines
    smallest = rows[0]
    weights = smallest["parts_gb"]["weights"]
    if weights <= budget:
        lines.append(f"The weights of {smallest['preset']} take {weights:.1f} GB of the budget: a smaller "
                     "--batch-size / --max-seq-length may make it fit.")
    else:
        in_bits = " in 4 bits" if report["config"].get("quantize") else ""
        lines.append(f"The weights alone of the smallest preset, {smallest['preset']}, need {weights:.1f} GB{in_bits}: "
                     "a smaller batch or sequence cannot make it fit.")
        if not helps:
            lines.append("Try the built-in 'tiny' model for a demo (`your-ai train --model tiny`), or a machine "
                         "with more memory.")
    return lines
