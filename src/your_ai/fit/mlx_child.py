"""The fit test on the MLX engine (``benchmark --engine mlx``), in this process.

It trains as ``train --engine mlx`` does: the model loaded by the MLX engine's loader (a resolved model's
safetensors, or with ``--synthetic`` a random model of the preset's exact architecture), its base quantized
with ``--quantize 4`` (MLX's 4-bit, group size 64), LoRA on the last N layers, every layer recomputed in the
backward pass with ``--grad-checkpoint``, then N steps of the engine's own optimizer step (the weighted
distrust objective, gradients clipped to ``train``'s default norm, AdamW, warm-up and cosine schedule) on
random token ids, each timed. The peak is MLX's own counter (``mx.get_peak_memory``), reset when the fit
test starts, so the weights are in it. ``your_ai.fit.child`` classifies how it ended.

Importing this module imports MLX.
"""

from __future__ import annotations

import functools
import time

import mlx.core as mx
import numpy as np
from transformers.optimization import _get_cosine_schedule_with_warmup_lr_lambda

from your_ai.data.examples import Example
from your_ai.fit.faults import injected_fault, trigger_fault
from your_ai.fit.plan import (
    LEARNING_RATE,
    FitTest,
    mlx_step_mode,
    resolve_tested_model,
    step_shape,
)
from your_ai.fit.result import FitResult, phase, record_step_times
from your_ai.mlx_engine.loop import build_optimizer, optimizer_step
from your_ai.mlx_engine.loss import make_batch
from your_ai.mlx_engine.model import (
    MlxModel,
    load_mlx_model,
    prepare_for_training,
    random_mlx_model,
)
from your_ai.model.architecture import architecture_from_config
from your_ai.model.presets import params_label
from your_ai.model.resolve import model_shape
from your_ai.step import memory
from your_ai.train.defaults import DEFAULTS
from your_ai.train.plan import Objective

WARMUP_STEPS = 1


def train_on_mlx(test: FitTest, result: FitResult, peak: memory.PeakMemory) -> None:
    """Resolve, load and train ``test`` on MLX, filling in ``result`` (a pass, with its speed); what fails
    is raised for ``fit.child`` to classify."""
    phase("resolving")
    loaded = _load(test, result)
    architecture = architecture_from_config(loaded.config)
    seq_length = test.config.seq_length_for(architecture)
    _describe(test, result, loaded, architecture, seq_length)
    batch = _random_batch(test, architecture.vocab_size, seq_length)
    times = _run_steps(test, loaded, batch, result)
    peak.sample()
    record_step_times(result, times, test.config.batch_size * seq_length)
    phase("done")


def _load(test: FitTest, result: FitResult) -> MlxModel:
    """The model as ``train --engine mlx`` builds it: quantized base, LoRA, recomputation as asked."""
    resolved = resolve_tested_model(test, result)
    if resolved is None:
        architecture = model_shape(test.model, synthetic=True).architecture
    fault = injected_fault(test.model, test.config)
    if fault:
        trigger_fault(fault)
    phase("loading")
    started = time.monotonic()
    loaded = random_mlx_model(architecture) if resolved is None else load_mlx_model(resolved)
    prepare_for_training(loaded, test.config.lora, quantize=test.config.quantize,
                         grad_checkpoint=test.config.grad_checkpoint, seed=0)
    result.load_time_s = round(time.monotonic() - started, 3)
    return loaded


def _describe(test: FitTest, result: FitResult, loaded: MlxModel, architecture, seq_length: int) -> None:
    """What the result says of the model and the step: its shape, dtype, the step mode and its estimate."""
    result.config.update(seq_length=seq_length, lora_layers=min(test.config.lora_layers, architecture.num_hidden_layers),
                         dtype=str(loaded.dtype).replace("mlx.core.", ""), step_mode="plain")
    result.architecture = loaded.architecture_name
    result.parameter_count = architecture.parameter_count()
    if result.params is None:
        result.params = params_label(result.parameter_count)
    mode = mlx_step_mode(step_shape(architecture, memory.MLX_DEVICE, test.config), test.config, test.max_memory_gb)
    result.estimate_gb = mode.estimate_gb
    result.notes.extend([*loaded.notes, f"step mode {mode.reason}"])


def _random_batch(test: FitTest, vocab_size: int, seq_length: int):
    """A batch of random token ids with random authority weights and provenance entropies, weighted by the
    distrust objective normalised over it, as the torch engine's fit test trains on."""
    rng = np.random.default_rng(0)
    size = test.config.batch_size
    ids = rng.integers(0, vocab_size, (size, seq_length)).tolist()
    auth, entropy = (rng.random(size) * 0.99).tolist(), (rng.random(size) * 8.0).tolist()
    objective = Objective.from_dataset("weighted", 2.7, 1.0, auth, entropy)
    examples = [Example(row, list(row), a, e) for row, a, e in zip(ids, auth, entropy)]
    return make_batch(examples, 0, objective)


def _run_steps(test: FitTest, loaded: MlxModel, batch, result: FitResult) -> list[float]:
    """The fit test's steps through the MLX engine's optimizer step; each step's seconds."""
    steps = test.config.steps
    schedule = functools.partial(_get_cosine_schedule_with_warmup_lr_lambda, num_warmup_steps=min(WARMUP_STEPS, steps - 1),
                                 num_training_steps=steps, num_cycles=0.5)
    optimizer = build_optimizer(loaded, LEARNING_RATE, DEFAULTS["weight_decay"])
    times = []
    for step in range(1, steps + 1):
        phase(f"step {step}/{steps}")
        began = time.perf_counter()
        try:
            optimizer_step(loaded, optimizer, [batch], LEARNING_RATE * schedule(step - 1), DEFAULTS["max_grad_norm"])
        except ArithmeticError as error:  # a gradient that is not finite: the step is skipped, as on torch
            result.notes.append(f"step {step}: {error}")
        mx.synchronize()
        times.append(time.perf_counter() - began)
    return times
