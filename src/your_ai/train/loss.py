"""The training loss: one forward pass to the objective's parts (``compute_loss``), the same as a module
the parallel strategy wraps (``StepLoss``), the parts of a whole global batch across processes, and
``evaluate`` over a validation set.
"""

from __future__ import annotations

import torch

from your_ai.data.examples import Example, collate
from your_ai.objective.distrust import LossParts, distrust_objective
from your_ai.step.head import (
    model_per_sample_cross_entropy,
    plain_per_sample_cross_entropy,
)
from your_ai.train.parallel import Strategy
from your_ai.train.plan import Objective


def compute_loss(model, batch: dict, objective: Objective, *, fast_head: bool | str = False,
                 chunk_tokens: int | None = None) -> LossParts:
    """One forward pass -> total (to differentiate), mean cross-entropy and mean distrust value.

    ``batch`` holds ``input_ids``, ``attention_mask``, ``labels`` (-100 where not learned),
    ``auth_weight`` and ``prov_entropy`` (``data.examples.collate``), or a packed batch
    (``data.packing.collate_packed``: several examples a row, each its own sample). Labels are not passed to the model, so the
    model computes no loss of its own. ``fast_head``: the same per-sample cross-entropy without
    the full logits (``your_ai.step.fast``; True or a head name: "auto", "chunked", "liger"), in
    chunks of ``chunk_tokens`` (None: the vocabulary's default, ``StepMode.chunk_tokens``).
    """
    if fast_head:
        per_sample = model_per_sample_cross_entropy(model, batch, head="auto" if fast_head is True else fast_head,
                                                    chunk_tokens=chunk_tokens)
    else:
        per_sample = plain_per_sample_cross_entropy(model, batch)
    return distrust_objective(
        per_sample,
        batch["auth_weight"],
        batch["prov_entropy"],
        mode=objective.mode,
        alpha=objective.alpha,
        lambda_weight=objective.lambda_weight,
        weighting=objective.weighting,
    )


class StepLoss(torch.nn.Module):
    """``compute_loss`` as a module: DistributedDataParallel sees the forward pass of either loss path."""

    def __init__(self, model, objective: Objective, fast_head: bool | str, chunk_tokens: int | None = None):
        super().__init__()
        self.model, self.objective, self.fast_head, self.chunk_tokens = model, objective, fast_head, chunk_tokens

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = compute_loss(self.model, batch, self.objective, fast_head=self.fast_head,
                             chunk_tokens=self.chunk_tokens)
        return parts.total, parts.cross_entropy, parts.distrust


def global_loss_parts(parts: LossParts, count: int, tokens: int, objective: Objective,
                      strategy: Strategy) -> tuple[LossParts, int]:
    """The loss parts of the whole global batch (what one process would log for it) and its tokens,
    from each process's parts over its ``count`` samples (one process: as they are)."""
    if not strategy.distributed:
        return parts, tokens
    total, cross_entropy, distrust_value, samples, tokens = strategy.all_sum(
        [float(parts.total) * count, float(parts.cross_entropy) * count, float(parts.distrust) * count,
         count, tokens])
    cross_entropy, mean_distrust = cross_entropy / samples, distrust_value / samples
    if objective.mode == "weighted":
        total = total / samples
    else:  # mean cross-entropy + lambda * sum of the distrust values
        total = cross_entropy + objective.lambda_weight * distrust_value
    as_tensor = lambda value: torch.tensor(value, dtype=torch.float32)  # noqa: E731
    return LossParts(as_tensor(total), as_tensor(cross_entropy), as_tensor(mean_distrust)), int(tokens)


@torch.no_grad()
def evaluate(model, examples: list[Example], objective: Objective, batch_size: int, pad_token_id: int,
             device: str, *, fast_head: bool | str = False, chunk_tokens: int | None = None) -> dict[str, float]:
    """The objective over ``examples`` (in order), averaged per sample: val_loss, val_cross_entropy, val_distrust.

    ``fast_head``, ``chunk_tokens``: as in ``compute_loss`` (training passes the loss path it trains with)."""
    was_training = model.training
    model.eval()
    totals = {"val_loss": 0.0, "val_cross_entropy": 0.0, "val_distrust": 0.0}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {key: value.to(device) for key, value in collate(chunk, pad_token_id).items()}
        parts = compute_loss(model, batch, objective, fast_head=fast_head, chunk_tokens=chunk_tokens)
        totals["val_loss"] += float(parts.total) * len(chunk)
        totals["val_cross_entropy"] += float(parts.cross_entropy) * len(chunk)
        totals["val_distrust"] += float(parts.distrust) * len(chunk)
    if was_training:
        model.train()
    return {key: value / len(examples) for key, value in totals.items()}
