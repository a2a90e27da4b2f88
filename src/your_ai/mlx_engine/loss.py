"""The training loss in MLX: a batch of examples (``data.examples.collate``'s, carried over to MLX with the
objective's per-sample weights), the per-sample cross-entropy, and the distrust objective as the torch
engine computes it.

The weights and distrust values come from ``your_ai.objective`` itself (the weighting fixed once from the
training set): only the per-sample cross-entropy and its weighted mean are computed here, in MLX.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx import nn

from your_ai.data.examples import Example, collate
from your_ai.objective.distrust import IGNORE_INDEX, LossParts, empirical_distrust_loss
from your_ai.train.plan import Objective


@dataclass
class MlxBatch:
    """One micro-batch in MLX: right-padded ``input_ids`` and ``labels`` (IGNORE_INDEX where nothing is
    learned), each sample's weight on its cross-entropy, the constant the objective adds (additive mode),
    the batch's mean distrust value (for the log) and its tokens."""

    input_ids: mx.array
    labels: mx.array
    weights: mx.array  # float32, one per sample: the objective's weight (weighted mode) or 1 (additive)
    offset: float  # additive mode: lambda * sum of the distrust values; weighted: 0
    distrust: float
    tokens: int


def make_batch(examples: list[Example], pad_token_id: int, objective: Objective) -> MlxBatch:
    """``examples`` collated as the torch engine collates them, with the objective's weights for each sample."""
    batch = collate(examples, pad_token_id)
    distrust = empirical_distrust_loss(batch["auth_weight"], batch["prov_entropy"], objective.alpha)
    if objective.mode == "weighted":
        weights, offset = objective.weighting.weights(batch["auth_weight"], batch["prov_entropy"]).numpy(), 0.0
    else:
        weights = np.ones(len(examples), dtype=np.float32)
        offset = float(np.float32(objective.lambda_weight * float(distrust.sum())))
    return MlxBatch(mx.array(batch["input_ids"].numpy().astype(np.int32)),
                    mx.array(batch["labels"].numpy().astype(np.int32)), mx.array(weights), offset,
                    float(distrust.mean()), int(batch["attention_mask"].sum()))


def per_sample_cross_entropy(logits: mx.array, labels: mx.array) -> mx.array:
    """Mean next-token cross-entropy of each sample (fp32), padding (IGNORE_INDEX) left out; 0 for a sample
    with no target token. The same as ``objective.distrust.per_sample_cross_entropy``."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    token_loss = nn.losses.cross_entropy(logits[:, :-1, :].astype(mx.float32), mx.where(mask, targets, 0),
                                         reduction="none")
    counts = mx.maximum(mask.sum(axis=1), 1).astype(mx.float32)
    return (token_loss * mask).sum(axis=1) / counts


def batch_loss(model, batch: MlxBatch) -> tuple[mx.array, mx.array]:
    """(total, mean cross-entropy) of one batch: total = mean(weight_i * ce_i) + offset, what is
    differentiated (the objective's ``weighted`` and ``additive`` forms)."""
    per_sample = per_sample_cross_entropy(model(batch.input_ids), batch.labels)
    total = (batch.weights * per_sample).mean() + batch.offset
    return total, per_sample.mean()


def loss_parts(total: mx.array, cross_entropy: mx.array, batch: MlxBatch) -> LossParts:
    """The step's loss parts as the reporter takes them (numbers)."""
    return LossParts(float(total), float(cross_entropy), batch.distrust)


def evaluate(model, examples: list[Example], objective: Objective, batch_size: int, pad_token_id: int
             ) -> dict[str, float]:
    """The objective over ``examples`` (in order), averaged per sample: val_loss, val_cross_entropy, val_distrust."""
    totals = {"val_loss": 0.0, "val_cross_entropy": 0.0, "val_distrust": 0.0}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = make_batch(chunk, pad_token_id, objective)
        total, cross_entropy = batch_loss(model, batch)
        totals["val_loss"] += float(total) * len(chunk)
        totals["val_cross_entropy"] += float(cross_entropy) * len(chunk)
        totals["val_distrust"] += batch.distrust * len(chunk)
    return {key: value / len(examples) for key, value in totals.items()}
