"""The optimizer step that ``train`` runs, usable on its own (the fit test times this same step).

Contract of ``optimizer_step(step_loss, micro_batches, optimizer, scheduler, max_grad_norm)``:

1. the gradients are zeroed (set to ``None``);
2. for each micro-batch, in order: ``step_loss(batch)`` gives (total, cross-entropy, distrust) and
   ``total * scale / len(micro_batches)`` is differentiated. Every micro-batch but the last runs under
   ``no_sync`` (no gradient all-reduce or reduce-scatter across processes; one process: no effect);
3. the gradients of the optimizer's parameters are clipped to ``max_grad_norm`` (their norm before
   clipping is returned);
4. a norm that is not finite raises ``NonFiniteGradient`` before the update: the parameters, the
   optimizer's state and the schedule stay as they were;
5. ``optimizer.step()``, then ``scheduler.step()`` (``scheduler`` None: the learning rate stays).

``step_loss`` is a module returning the loss parts of a batch (``your_ai.train.loss.StepLoss``), as it
is or wrapped by the parallel strategy (DDP, FSDP). ``scale`` is this process's share of the global
batch (``Strategy.loss_scale``; 1.0 on one process). The step neither moves batches between devices
nor reduces anything across processes but the gradients: what it returns is this process's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from your_ai.objective.distrust import LossParts
from your_ai.train.parallel import local_float, no_sync


class NonFiniteGradient(ArithmeticError):
    """The loss or its gradient is not finite; nothing was updated."""

    def __init__(self, grad_norm: float):
        self.grad_norm = grad_norm
        super().__init__(f"the loss or its gradient became {grad_norm}")


@dataclass
class MicroBatch:
    """One forward and backward pass of a step: ``batch`` (tensors on the model's device, as
    ``data.examples.collate`` builds it) and the factor on its mean loss."""

    batch: dict
    scale: float = 1.0


@dataclass
class StepOutput:
    """What a step measured on this process: each micro-batch's loss parts (detached) and the gradient
    norm before clipping."""

    parts: list[LossParts]
    grad_norm: float


def optimizer_step(step_loss: torch.nn.Module, micro_batches: Sequence[MicroBatch], optimizer: torch.optim.Optimizer,
                   scheduler=None, max_grad_norm: float = 1.0) -> StepOutput:
    """One optimizer step over ``micro_batches`` (gradient accumulation); see the module's contract."""
    optimizer.zero_grad(set_to_none=True)
    count = len(micro_batches)
    parts = []
    for index, micro in enumerate(micro_batches):
        with no_sync(step_loss, sync=index == count - 1):
            total, cross_entropy, distrust = step_loss(micro.batch)
            (total * (micro.scale / count)).backward()
        parts.append(LossParts(total.detach(), cross_entropy.detach(), distrust.detach()))
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    grad_norm = local_float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm))
    if not math.isfinite(grad_norm):
        raise NonFiniteGradient(grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return StepOutput(parts, grad_norm)
