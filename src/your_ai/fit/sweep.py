"""The optimize sweep: batch size x LoRA rank x LoRA layers, measured -> a hardware profile.

Each config runs in its own subprocess as the same fit test as the benchmark's (``your_ai.fit.runner``),
``SWEEP_STEPS`` real training steps, lightest first by the analytic estimate. A config fits when its measured
peak plus a 15% safety margin is within the budget. Configs whose estimate is over 1.5x the budget are not
run; once a config runs out of memory (or over the budget), every config at least as heavy in all three
dimensions is skipped. The best config is the fastest (tokens/s) that fits; it is saved as a hardware profile
that ``train --profile`` applies (``your_ai.fit.profiles``).

Speed is the median of the timed steps (the first step warms up), with the tokens/s of their interquartile
range. When the two fastest configs' ranges overlap, or either range is wider than 25% of its median, both
run once more and their steps are pooled; if they still overlap the ranking is within noise, and the output
says so (or that the timing is still noisy).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from your_ai.files import write_json_atomic
from your_ai.fit.plan import (
    DEFAULT_TIMEOUT_S,
    SWEEP_STEPS,
    FitConfig,
    FitTest,
    check_processes,
    fit_strategy,
    per_process_estimate_gb,
    resolve_device,
)
from your_ai.fit.profiles import load_profile, profile_path, settings_differences
from your_ai.fit.progress import ProgressLine, now_iso, printer
from your_ai.fit.result import (
    MIN_STEPS_FOR_SPREAD,
    STOPPING_STATUSES,
    processes_word,
    result_text,
    step_time_summary,
    timed_steps,
    train_flags,
)
from your_ai.fit.runner import Stopped, run_in_subprocess, stop_on_signals
from your_ai.model.architecture import Architecture
from your_ai.model.presets import Preset
from your_ai.model.resolve import model_or_default, model_shape
from your_ai.step import memory

QUICK_GRID = {"batch_size": (2, 4, 8), "lora_rank": (64, 128), "lora_layers": (16, 24)}
FULL_GRID = {"batch_size": (2, 4, 6, 8, 10, 12), "lora_rank": (32, 64, 96, 128), "lora_layers": (8, 16, 24, 32)}
SAFETY_MARGIN = 0.15
ESTIMATE_SKIP_FACTOR = 1.5
NOISY_SPREAD = 0.25  # a tokens/s interquartile range wider than this share of the median: run the top two again


def fits(peak_gb: float | None, budget_gb: float) -> bool:
    """A measured peak fits when it still fits with the 15% safety margin added."""
    return peak_gb is not None and peak_gb * (1 + SAFETY_MARGIN) <= budget_gb


def grid_configs(architecture, device: str, *, quick: bool, steps: int, seq_length: int | None,
                 grad_checkpoint: bool = False, step_mode: str = "auto",
                 budget_gb: float | None = None, gpus: int = 1,
                 strategy: str | None = None, quantize: int | None = None,
                 dora: bool = False) -> tuple[list[tuple[FitConfig, float]], list[str]]:
    """The grid's distinct configs for this model, lightest first, with their estimates (GB): each in the
    step mode its fit test runs within ``budget_gb`` (``plan.step_mode_for``); on ``gpus`` > 1 per process,
    in the strategy ``plan.fit_strategy`` picks for the config.

    Layer counts above the model's depth are clamped; configs that become identical are kept once.
    """
    grid = QUICK_GRID if quick else FULL_GRID
    depth = architecture.num_hidden_layers
    seen: dict[tuple, FitConfig] = {}
    notes = []
    for batch, rank, layers in itertools.product(grid["batch_size"], grid["lora_rank"], grid["lora_layers"]):
        key = (batch, rank, min(layers, depth))
        if key not in seen:
            seen[key] = FitConfig(batch_size=batch, lora_rank=rank, lora_layers=key[2], steps=steps,
                                  seq_length=seq_length, grad_checkpoint=grad_checkpoint, step_mode=step_mode,
                                  quantize=quantize, dora=dora)
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


def _describe(row: dict) -> str:
    """"batch B, rank R, layers L" of a result row."""
    return f"batch {row['batch_size']}, rank {row['lora_rank']}, layers {row['lora_layers']}"


@dataclass
class _Sweep:
    """A sweep under way: how each config is measured, and the rows so far."""
    model: str
    architecture: Architecture
    preset: Preset | None
    device: str
    max_memory_gb: float
    gpus: int
    strategy: str | None
    timeout_s: float
    synthetic: bool
    stream: TextIO
    say: Callable[[str], None]
    results: list[dict] = field(default_factory=list)
    failed: list[FitConfig] = field(default_factory=list)
    measured: dict[int, FitTest] = field(default_factory=dict)  # id of a fitting row -> its test, to run it again
    stop_reason: str | None = None

    def run_all(self, configs: list[tuple[FitConfig, float]]) -> None:
        total = len(configs)
        for index, (config, estimate) in enumerate(configs, start=1):
            prefix = f"[{index:{len(str(total))}}/{total}] {config.describe():32} ... "
            row = {"batch_size": config.batch_size, "lora_rank": config.lora_rank, "lora_layers": config.lora_layers,
                   "estimate_gb": round(estimate, 3), "status": "skipped", "fits": False, "peak_memory_gb": None,
                   "step_time_s": None, "tokens_per_s": None, "error": self._skip_reason(config, estimate)}
            if row["error"]:
                self.say(f"{prefix}- Skipped ({row['error']})")
            else:
                self._measure_row(row, config, estimate, prefix)
            self.results.append(row)

    def _skip_reason(self, config: FitConfig, estimate: float) -> str | None:
        heavier_than = next((f for f in self.failed if _dominates(config, f)), None)
        if self.stop_reason:
            return self.stop_reason
        if heavier_than:
            return f"at least as heavy as {heavier_than.describe()}, which did not fit"
        if estimate > ESTIMATE_SKIP_FACTOR * self.max_memory_gb:
            return f"estimate {estimate:.1f} GB is over {ESTIMATE_SKIP_FACTOR:g}x the {self.max_memory_gb:.2f} GB budget"
        return None

    def _measure(self, test: FitTest, progress: ProgressLine):
        try:
            return run_in_subprocess(test, timeout_s=self.timeout_s, on_tick=progress.update)
        except Stopped as stop:  # SIGINT or SIGTERM: the fit test was killed; no profile is saved
            stop.model, stop.detail = self.model, test.config.describe()
            progress.finish(f"✗ Stopped by {stop.signal_name}")
            raise

    def _measure_row(self, row: dict, config: FitConfig, estimate: float, prefix: str) -> None:
        progress = ProgressLine(self.stream, prefix)
        progress.start()
        strategy = fit_strategy(self.strategy, self.architecture, self.device, config, self.max_memory_gb, self.gpus)
        test = FitTest(self.model, self.device, config, self.max_memory_gb, self.synthetic, self.preset,
                       round(estimate, 3), self.gpus, strategy)
        run = self._measure(test, progress)
        result = run.result
        row.update(status=result.status, error=result.error, peak_memory_gb=result.peak_memory_gb,
                   step_time_s=result.step_time_s, tokens_per_s=result.tokens_per_s,
                   seq_length=result.config.get("seq_length"), step_mode=result.config.get("step_mode"),
                   exit_code=run.exit_code, signal=run.signal)
        if self.gpus > 1:
            row.update(processes=self.gpus, strategy=result.strategy or strategy)
        if row["status"] == "pass" and not fits(row["peak_memory_gb"], self.max_memory_gb):
            row["status"] = "over_budget"
            row["error"] = (f"peak {row['peak_memory_gb']:.2f} GB + {SAFETY_MARGIN:.0%} margin = "
                            f"{row['peak_memory_gb'] * (1 + SAFETY_MARGIN):.2f} GB > {self.max_memory_gb:.2f} GB budget")
        row["fits"] = row["status"] == "pass"
        if row["fits"]:
            _set_speed(row, timed_steps(result.step_times_s), config.batch_size * self.gpus * row["seq_length"])
            self.measured[id(row)] = test
            progress.finish(f"✓ fits: {row['peak_memory_gb']:.2f} GB peak, {row['step_time_s']:.3f} s/step, "
                            f"{_speed_text(row)}")
        else:
            result.status, result.error, result.estimate_gb = row["status"], row["error"], row["estimate_gb"]
            progress.finish(result_text(result))
        if row["status"] in STOPPING_STATUSES:
            self.failed.append(config)
        if row["status"] == "not_available":
            self.stop_reason = "the model is not available"

    def measure_again(self, row: dict) -> None:
        """Run a fitting row's config once more and pool its timed steps with the first run's."""
        test = self.measured[id(row)]
        progress = ProgressLine(self.stream, f"  again: {test.config.describe():32} ... ")
        progress.start()
        result = self._measure(test, progress).result
        if result.status != "pass":
            progress.finish(f"{result_text(result)}; kept the first run's timing")
            return
        _set_speed(row, row["step_times_s"] + timed_steps(result.step_times_s),
                   test.config.batch_size * self.gpus * row["seq_length"])
        row["runs"] += 1
        progress.finish(f"✓ {_speed_text(row)} (both runs' steps)")


@stop_on_signals()
def run_optimize(
    model: str,
    *,
    max_memory_gb: float | None = None,
    device: str | None = None,
    quick: bool = False,
    steps: int = SWEEP_STEPS,
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
    dora: bool = False,
) -> dict:
    """Sweep the grid for ``model`` and save the best config as a hardware profile.

    ``gpus`` > 1: each config runs on that many GPUs (CPU processes with ``device`` "cpu") through torchrun,
    as ``benchmark --gpus``; the budget and peaks are per GPU, tokens/s of all of them, and the profile
    records ``gpus`` and the best config's ``strategy``.

    Returns ``{"best": {...} or None, "results": [...], "profile": {...} or None, "path": str or None}``.
    Raises ``ModelNotAvailableError`` / ``InvalidModelNameError`` for a model that cannot be resolved.
    """
    stream = stream or sys.stdout
    say = say or printer(stream)
    check_processes(gpus, device)
    shape = model_shape(model, synthetic=synthetic)
    device = resolve_device(device)
    if max_memory_gb is None:
        max_memory_gb = memory.default_budget_gb(device)
    configs, notes = grid_configs(shape.architecture, device, quick=quick, steps=steps, seq_length=seq_length,
                                  grad_checkpoint=grad_checkpoint, step_mode=step_mode, budget_gb=max_memory_gb,
                                  gpus=gpus, strategy=strategy, quantize=quantize, dora=dora)
    seq_used = memory.fit_seq_length(seq_length, shape.architecture)
    on = f"{device}, {gpus} {processes_word(device, gpus)} (strategy {strategy or 'auto'})" if gpus > 1 else device
    say(f"Sweeping {len(configs)} configs of {model} ({'quick' if quick else 'full'} grid) on {on}: "
        f"budget {max_memory_gb:.2f} GB, {SAFETY_MARGIN:.0%} safety margin, {steps} steps each, sequence {seq_used}")
    for note in notes:
        say(f"Note: {note}")
    sweep = _Sweep(model, shape.architecture, shape.preset, device, max_memory_gb, gpus, strategy, timeout_s,
                   synthetic, stream, say)
    sweep.run_all(configs)
    winners = [r for r in sweep.results if r["fits"]]
    ranking = _check_ranking(winners, sweep.measure_again, say)
    best = _best(max(winners, key=_speed_order), seq_used, gpus, quantize, dora) if winners else None
    say()
    say(format_table(sweep.results))
    say()
    outcome = {"best": best, "results": sweep.results, "ranking": ranking, "profile": None, "path": None}
    if best is None:
        say(f"No config fits {max_memory_gb:.2f} GB with the {SAFETY_MARGIN:.0%} safety margin; no profile saved.")
        return outcome
    profile = {
        "model": model, "model_name": shape.model_name, "preset": shape.preset.name if shape.preset else None,
        **best, "ranking": ranking, "device": device, "synthetic": synthetic, "max_memory_gb": round(max_memory_gb, 3),
        "safety_margin": SAFETY_MARGIN, "grid": "quick" if quick else "full", "steps": steps,
        "results": sweep.results, "created_at": now_iso(),
    }
    path = write_json_atomic(output or profile_path(model), profile)
    _print_best(best, model, path, device, max_memory_gb, say)
    outcome.update(profile=profile, path=str(path))
    return outcome


def _best(top: dict, seq_used: int, gpus: int, quantize: int | None, dora: bool = False) -> dict:
    """The profile's values from the fastest fitting row (``dora``: measured with DoRA adapters)."""
    return {**({"dora": True} if dora else {}),
        "batch_size": top["batch_size"], "lora_rank": top["lora_rank"], "lora_alpha": 2 * top["lora_rank"],
        "lora_layers": top["lora_layers"], "seq_length": top.get("seq_length", seq_used),
        "peak_memory_gb": top["peak_memory_gb"], "peak_with_margin_gb": round(top["peak_memory_gb"] * (1 + SAFETY_MARGIN), 3),
        "step_time_s": top["step_time_s"], "tokens_per_s": top["tokens_per_s"],
        "tokens_per_s_iqr": top["tokens_per_s_iqr"], "gpus": gpus, "strategy": top.get("strategy"), "quantize": quantize,
    }


def _print_best(best: dict, model: str, path, device: str, max_memory_gb: float, say) -> None:
    say(f"Best: batch {best['batch_size']}, LoRA rank {best['lora_rank']} (alpha {best['lora_alpha']}) on the last "
        f"{best['lora_layers']} layers: {best['tokens_per_s']:.0f} tokens/s, {best['peak_memory_gb']:.2f} GB peak "
        f"({best['peak_with_margin_gb']:.2f} GB with the margin; budget {max_memory_gb:.2f} GB)")
    say(f"Saved hardware profile to {path}")
    flags = train_flags(processes=best["gpus"], device=device, strategy=best["strategy"], quantize=best["quantize"],
                        dora=bool(best.get("dora")))
    say(f"Apply it with: your-ai train {flags}--model {model} --profile {path}")


def _set_speed(row: dict, times: list[float], tokens_per_step: int) -> None:
    """A fitting row's speed from its timed steps (seconds): ``step_times_s``, the median ``step_time_s`` and
    ``tokens_per_s``, and ``tokens_per_s_iqr``, the tokens/s of the steps' interquartile range (None with too
    few steps to say)."""
    median, spread = step_time_summary(times)
    iqr = spread and [round(tokens_per_step / spread[1], 1), round(tokens_per_step / spread[0], 1)]
    row.update(step_times_s=[round(t, 4) for t in times], step_time_s=round(median, 4),
               tokens_per_s=round(tokens_per_step / median, 1), tokens_per_s_iqr=iqr, runs=row.get("runs", 1))


def _speed_text(row: dict) -> str:
    iqr = row["tokens_per_s_iqr"]
    return f"{row['tokens_per_s']:.0f} tokens/s" + (f" (IQR {iqr[0]:.0f}-{iqr[1]:.0f})" if iqr else "")


def _speed_order(row: dict) -> tuple:
    """The fastest first; of equal speed, the lighter."""
    return row["tokens_per_s"], -row["peak_memory_gb"]


def ranking_within_noise(best: dict, runner_up: dict) -> bool | None:
    """Whether the fastest config's lead over the runner-up is within the spread of their step times: their
    tokens/s interquartile ranges overlap. None when a spread was not measured (too few steps)."""
    if not best.get("tokens_per_s_iqr") or not runner_up.get("tokens_per_s_iqr"):
        return None
    return best["tokens_per_s_iqr"][0] <= runner_up["tokens_per_s_iqr"][1]


def noisy(row: dict) -> bool:
    """Whether a row's tokens/s interquartile range is wider than ``NOISY_SPREAD`` of its median."""
    iqr = row.get("tokens_per_s_iqr")
    return bool(iqr) and (iqr[1] - iqr[0]) > NOISY_SPREAD * row["tokens_per_s"]


def _check_ranking(winners: list[dict], measure_again: Callable[[dict], None], say) -> dict | None:
    """Check the two fastest configs apart; when they are not, or either one's steps vary by more than
    ``NOISY_SPREAD``, run both once more (pooling the steps) and check again. Returns ``{"within_noise", "noisy",
    "best", "runner_up"}`` (None with fewer than two configs that fit)."""
    if len(winners) < 2:
        return None
    best, runner_up = sorted(winners, key=_speed_order, reverse=True)[:2]
    within = ranking_within_noise(best, runner_up)
    if within or noisy(best) or noisy(runner_up):
        say()
        why = "tokens/s ranges overlap" if within else f"steps vary by more than {NOISY_SPREAD:.0%}"
        say(f"The two fastest configs' {why}: running both once more")
        for row in (best, runner_up):
            measure_again(row)
        best, runner_up = sorted(winners, key=_speed_order, reverse=True)[:2]
        within = ranking_within_noise(best, runner_up)
    still_noisy = noisy(best) or noisy(runner_up)
    _say_ranking(best, runner_up, within, still_noisy, say)
    keys = ("batch_size", "lora_rank", "lora_layers", "tokens_per_s", "tokens_per_s_iqr", "runs")
    return {"within_noise": within, "noisy": still_noisy,
            **{name: {key: row[key] for key in keys} for name, row in (("best", best), ("runner_up", runner_up))}}


def _say_ranking(best: dict, runner_up: dict, within: bool | None, still_noisy: bool, say) -> None:
    if within:
        say(f"Ranking within noise: {_describe(best)} at {_speed_text(best)} is not faster than "
            f"{_describe(runner_up)} at {_speed_text(runner_up)} beyond the spread of their step times; "
            "either will do (is the machine busy?)")
    elif still_noisy:
        say(f"Noisy timing: the steps of {_describe(best)} or {_describe(runner_up)} vary by more than "
            f"{NOISY_SPREAD:.0%} (is the machine busy?); the ranking may not hold on a quiet machine")
    elif within is None:
        say(f"Note: the step-time spread is not measured with fewer than {MIN_STEPS_FOR_SPREAD} timed steps "
            f"(--steps {MIN_STEPS_FOR_SPREAD + 1} or more); the ranking is not checked against noise")


def format_table(results: list[dict]) -> str:
    """The sweep's results as a fixed-width table."""
    def number(value, width, digits):
        return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    header = (f"{'Batch':>5} {'Rank':>5} {'Layers':>6} {'Est GB':>7} {'Peak GB':>8} {'+15% GB':>8} {'Step s':>7} "
              f"{'Tokens/s':>9} {'IQR':>11}  Status")
    lines = [header, "-" * len(header)]
    for row in results:
        margin = row["peak_memory_gb"] * (1 + SAFETY_MARGIN) if row["peak_memory_gb"] is not None else None
        status = "fits" if row["fits"] else row["status"]
        lines.append(
            f"{row['batch_size']:>5} {row['lora_rank']:>5} {row['lora_layers']:>6} {number(row['estimate_gb'], 7, 2)} "
            f"{number(row['peak_memory_gb'], 8, 2)} {number(margin, 8, 2)} {number(row['step_time_s'], 7, 3)} "
            f"{number(row['tokens_per_s'], 9, 0)} {_iqr_cell(row.get('tokens_per_s_iqr')):>11}  {status}"
        )
    return "\n".join(lines)


def _iqr_cell(iqr: list[float] | None) -> str:
    return f"{iqr[0]:.0f}-{iqr[1]:.0f}" if iqr else "-"


# ---------------------------------------------------------------------------- for train

def profile_for_training(model: str | None, *, profile: str | None, auto: bool, max_memory_gb: float | None,
                         device: str | None, say: Callable[[str], None],
                         engine: str | None = None, run: dict | None = None) -> tuple[dict, str] | None:
    """The profile ``train`` should apply: ``--profile FILE``, or with ``--auto-optimize`` the saved
    profile of this model, measured now with the quick sweep when there is none or when it was measured with
    other settings than ``run``'s (train's ``max_seq_length``, ``quantize``, ``dora``: ``settings_differences``),
    then with ``run``'s (on the MLX engine when ``engine``, ``hardware.pick_engine``'s choice, is mlx).
    None otherwise."""
    if profile:
        return load_profile(profile), profile
    if not auto:
        return None

    model, run = model_or_default(model), run or {}
    target = profile_path(model)
    if target.is_file():
        saved = load_profile(target)
        differences = settings_differences(saved, run)
        if not differences:
            return saved, str(target)
        say(f"The hardware profile {target} was measured with {'; '.join(differences)}: running the quick "
            "optimize sweep for this run's settings.")
    else:
        say(f"No hardware profile for {model} yet: running the quick optimize sweep first.")
    from your_ai.hardware import pick_engine

    if pick_engine(engine) == "mlx":
        device = memory.MLX_DEVICE
    outcome = run_optimize(model, quick=True, max_memory_gb=max_memory_gb, device=device, say=say,
                           seq_length=run.get("max_seq_length"), quantize=run.get("quantize"),
                           dora=bool(run.get("dora")))
    if outcome["profile"] is None:
        raise ValueError(f"--auto-optimize: no configuration of {model} fits the memory budget")
    return outcome["profile"], outcome["path"]
