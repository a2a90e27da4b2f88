"""Memory in MLX: the peak MLX itself counts (``mx.get_peak_memory``: Metal's allocations on a Mac, the
CPU build's elsewhere) and the budget a run or a fit test is measured against."""

from __future__ import annotations

import mlx.core as mx

from your_ai.hardware import GB
from your_ai.step.memory import BUDGET_FRACTION, system_memory_gb


def on_apple_gpu() -> bool:
    return mx.default_device() == mx.gpu and mx.metal.is_available()


def default_budget_gb() -> float:
    """The Mac's recommended working-set size for Metal (what the GPU may hold of unified memory);
    without Metal, 80% of the RAM."""
    if on_apple_gpu():
        return mx.device_info()["max_recommended_working_set_size"] / GB
    return BUDGET_FRACTION * system_memory_gb()[0]


def reset_peak() -> None:
    mx.reset_peak_memory()


def peak_gb() -> float:
    """The peak of MLX's memory since the last ``reset_peak``, in GB."""
    return mx.get_peak_memory() / GB
