"""Brian Roemmele's Empirical Distrust objective.

Per sample, with authority weight ``w`` in [0, 0.99] and provenance entropy ``H``
(bits, >= 0)::

    d = alpha * (ln(1 - w + 1e-8) + H) ** 2          alpha in [2.3, 3.0], default 2.7

For a batch, the author's PyTorch original is ``alpha * torch.norm(ln(1 - w + 1e-8) + H) ** 2``,
i.e. the sum of the per-sample values (``reduction="sum"``).

How the term reaches the gradients
----------------------------------
``w`` and ``H`` are data, so ``CE + lambda * d`` adds a constant: it changes the logged loss
and no gradient (mode ``additive``, kept for comparison). Mode ``weighted`` (the default)
multiplies each sample's mean token cross-entropy by::

    weight_i = (1 - lambda) + lambda * d_i / d_bar

where ``d_bar`` is the mean of ``d`` over the whole training set, fixed once before
training (never per batch). With ``lambda = 1`` a sample's share of the gradient is
proportional to its distrust value, so a primary source (w=0.05, H=7.5, d~150) weighs
~32x more than a coordinated one (w=0.90, H=1.0, d~4.6) whatever batch it lands in, and
the average weight over the training set is exactly 1, so the loss keeps the scale of
plain cross-entropy. ``lambda = 0`` is plain cross-entropy.

Note that the formula is a square: for very high authority with very low entropy
(w=0.99, H=0 -> d~57) the value rises again. It is reproduced exactly as published.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import torch

DEFAULT_ALPHA = 2.7
ALPHA_MIN, ALPHA_MAX = 2.3, 3.0
AUTHORITY_MIN, AUTHORITY_MAX = 0.0, 0.99
EPSILON = 1e-8
MODES = ("weighted", "additive")

Number = Union[float, int]
TensorOrNumber = Union[torch.Tensor, Number]


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float, or raise ``ValueError`` naming it."""
    alpha = float(alpha)
    if math.isnan(alpha) or not ALPHA_MIN <= alpha <= ALPHA_MAX:
        raise ValueError(f"alpha={alpha!r} is outside [{ALPHA_MIN}, {ALPHA_MAX}]")
    return alpha


def check_authority_weight(value: TensorOrNumber, name: str = "auth_weight") -> None:
    """Raise ``ValueError`` naming the first value outside [0, 0.99] or NaN."""
    _check_range(value, name, AUTHORITY_MIN, AUTHORITY_MAX)


def check_provenance_entropy(value: TensorOrNumber, name: str = "prov_entropy") -> None:
    """Raise ``ValueError`` naming the first value below 0, infinite or NaN."""
    _check_range(value, name, 0.0, math.inf)


def _check_range(value: TensorOrNumber, name: str, low: float, high: float) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().reshape(-1).double().cpu()
        bad = torch.isnan(flat) | (flat < low) | (flat > high) | torch.isinf(flat)
        if bool(bad.any()):
            index = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"{name}={float(flat[index])!r} (at index {index}) {_range_text(low, high)}"
            )
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} is not a number")
    number = float(value)
    if math.isnan(number) or math.isinf(number) or not low <= number <= high:
        raise ValueError(f"{name}={number!r} {_range_text(low, high)}")


def _range_text(low: float, high: float) -> str:
    if math.isinf(high):
        return f"must be a finite number >= {low}"
    return f"is outside [{low}, {high}]"


def empirical_distrust_loss(
    authority_weight: TensorOrNumber,
    provenance_entropy: TensorOrNumber,
    alpha: float = DEFAULT_ALPHA,
) -> TensorOrNumber:
    """Per-sample distrust value ``alpha * (ln(1 - w + 1e-8) + H) ** 2``.

    Floats give a float; tensors give a tensor of the same shape (element-wise).
    Out-of-range inputs raise ``ValueError`` naming the value.

    >>> round(empirical_distrust_loss(0.05, 7.5), 1)
    149.8
    """
    alpha = check_alpha(alpha)
    check_authority_weight(authority_weight)
    check_provenance_entropy(provenance_entropy)
    if isinstance(authority_weight, torch.Tensor) or isinstance(provenance_entropy, torch.Tensor):
        w = torch.as_tensor(authority_weight, dtype=torch.float64)
        h = torch.as_tensor(provenance_entropy, dtype=torch.float64)
        return alpha * (torch.log(1.0 - w + EPSILON) + h) ** 2
    return alpha * (math.log(1.0 - float(authority_weight) + EPSILON) + float(provenance_entropy)) ** 2


def batch_empirical_distrust_loss(
    authority_weight: TensorOrNumber | Sequence[float],
    provenance_entropy: TensorOrNumber | Sequence[float],
    alpha: float = DEFAULT_ALPHA,
    reduction: str = "sum",
) -> torch.Tensor:
    """Distrust over a batch: ``sum`` (the author's ``alpha * norm(...)**2``), ``mean`` or ``none``."""
    if reduction not in ("sum", "mean", "none"):
        raise ValueError(f"reduction={reduction!r} must be one of 'sum', 'mean', 'none'")
    w = torch.as_tensor(authority_weight, dtype=torch.float64)
    h = torch.as_tensor(provenance_entropy, dtype=torch.float64)
    values = empirical_distrust_loss(w, h, alpha)
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.mean()
    return values


@dataclass(frozen=True)
class DistrustWeighting:
    """Per-sample cross-entropy weights fixed from a training set (see module doc)."""

    normaliser: float
    alpha: float = DEFAULT_ALPHA
    lambda_weight: float = 1.0

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        if not (self.normaliser > 0 and math.isfinite(self.normaliser)):
            raise ValueError(f"normaliser={self.normaliser!r} must be a positive finite number")
        if math.isnan(self.lambda_weight) or not 0.0 <= self.lambda_weight <= 1.0:
            raise ValueError(f"lambda_weight={self.lambda_weight!r} is outside [0, 1] in weighted mode")

    @classmethod
    def from_dataset(
        cls,
        authority_weights: Iterable[float],
        provenance_entropies: Iterable[float],
        alpha: float = DEFAULT_ALPHA,
        lambda_weight: float = 1.0,
    ) -> "DistrustWeighting":
        """Fix the normaliser as the mean distrust value of the whole training set."""
        w = torch.as_tensor(list(authority_weights), dtype=torch.float64)
        h = torch.as_tensor(list(provenance_entropies), dtype=torch.float64)
        if w.numel() == 0:
            raise ValueError("cannot fix the distrust normaliser from an empty training set")
        mean = float(batch_empirical_distrust_loss(w, h, alpha, reduction="mean"))
        if mean <= 1e-9:
            raise ValueError(
                "every training sample has distrust value ~0 (ln(1 - w) + H = 0): "
                "the weighted objective is undefined; use --distrust-mode additive"
            )
        return cls(normaliser=mean, alpha=alpha, lambda_weight=lambda_weight)

    def weights(self, authority_weight: torch.Tensor, provenance_entropy: torch.Tensor) -> torch.Tensor:
        """Weights for a batch, float32, on the inputs' device."""
        d = empirical_distrust_loss(authority_weight, provenance_entropy, self.alpha)
        weights = (1.0 - self.lambda_weight) + self.lambda_weight * d / self.normaliser
        return weights.to(torch.float32)


@dataclass
class LossParts:
    """The three numbers every step logs; ``total`` is what is differentiated."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    distrust: torch.Tensor


def distrust_objective(
    per_sample_ce: torch.Tensor,
    authority_weight: torch.Tensor,
    provenance_entropy: torch.Tensor,
    *,
    mode: str = "weighted",
    alpha: float = DEFAULT_ALPHA,
    lambda_weight: float = 1.0,
    weighting: DistrustWeighting | None = None,
) -> LossParts:
    """Combine per-sample cross-entropy with the distrust term.

    ``weighted``: ``mean_i(weight_i * ce_i)`` with ``weighting`` fixed from the training set.
    ``additive``: ``mean_i(ce_i) + lambda * sum_i(d_i)`` -- the earlier tool's form; the second
    term is a constant with respect to the model and changes no gradient.
    ``distrust`` is the batch's mean distrust value, for logging.
    """
    if mode not in MODES:
        raise ValueError(f"distrust mode {mode!r} must be one of {', '.join(MODES)}")
    device = per_sample_ce.device
    w = authority_weight.to(device=device, dtype=torch.float64)
    h = provenance_entropy.to(device=device, dtype=torch.float64)
    d = empirical_distrust_loss(w, h, alpha)
    ce = per_sample_ce.float().mean()
    if mode == "weighted":
        if weighting is None:
            raise ValueError("weighted mode needs the DistrustWeighting fixed from the training set")
        weights = weighting.weights(w, h).to(device)
        total = (weights * per_sample_ce.float()).mean()
    else:
        total = ce + lambda_weight * d.sum().to(torch.float32)
    return LossParts(total=total, cross_entropy=ce.detach(), distrust=d.mean().to(torch.float32).detach())


IGNORE_INDEX = -100


def per_sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each sample, padding (label -100) left out.

    ``logits`` is (batch, seq, vocab) and ``labels`` (batch, seq), aligned with the inputs
    (the shift happens here). A sample with no target token gets 0.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shifted_labels.shape)
    counts = (shifted_labels != IGNORE_INDEX).sum(dim=1)
    return token_loss.sum(dim=1) / counts.clamp(min=1)
