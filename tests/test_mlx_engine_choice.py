"""Which engine a command runs on (``hardware.pick_engine``), with or without MLX installed."""

from __future__ import annotations

import pytest

from your_ai import hardware
from your_ai.train.args import TrainingArgs, TrainingArgsError


def test_auto_is_mlx_on_apple_silicon_with_mlx_and_torch_elsewhere(monkeypatch):
    monkeypatch.setattr(hardware, "mlx_available", lambda: True)
    monkeypatch.setattr(hardware, "is_apple_silicon", lambda: True)
    assert hardware.pick_engine(None) == hardware.pick_engine("auto") == "mlx"
    assert hardware.pick_engine("torch") == "torch"
    monkeypatch.setattr(hardware, "is_apple_silicon", lambda: False)
    assert hardware.pick_engine("auto") == "torch" and hardware.pick_engine("mlx") == "mlx"
    monkeypatch.setattr(hardware, "is_apple_silicon", lambda: True)
    monkeypatch.setattr(hardware, "mlx_available", lambda: False)
    assert hardware.pick_engine("auto") == "torch"


def test_mlx_asked_for_without_mlx_names_what_to_install(monkeypatch):
    monkeypatch.setattr(hardware, "mlx_available", lambda: False)
    with pytest.raises(ValueError, match=r"--engine mlx needs MLX and mlx-lm.*pip install 'your-ai\[mlx\]'"):
        hardware.pick_engine("mlx")
    with pytest.raises(TrainingArgsError, match=r"pip install 'your-ai\[mlx\]'"):
        TrainingArgs(engine="mlx").validate()
    with pytest.raises(TrainingArgsError, match="--engine 'jax' must be one of auto, torch, mlx"):
        TrainingArgs(engine="jax").validate()
