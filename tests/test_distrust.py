"""The algorithm's numbers (SPEC section 1) and its input checks."""

import math

import pytest
import torch

from your_ai import (
    DistrustWeighting,
    batch_empirical_distrust_loss,
    distrust_objective,
    empirical_distrust_loss,
)
from your_ai.objective.distrust import per_sample_cross_entropy

PRIMARY = (0.05, 7.5)
COORDINATED = (0.90, 1.0)


def test_reference_values():
    primary = empirical_distrust_loss(*PRIMARY)
    coordinated = empirical_distrust_loss(*COORDINATED)
    assert primary == pytest.approx(2.7 * (math.log(0.95 + 1e-8) + 7.5) ** 2, rel=1e-12)
    assert primary == pytest.approx(149.8, abs=0.1)
    assert 2.7 * 7.449**2 == pytest.approx(primary, rel=1e-3)
    assert coordinated == pytest.approx(2.7 * (math.log(0.10 + 1e-8) + 1.0) ** 2, rel=1e-12)
    assert coordinated == pytest.approx(4.6, abs=0.05)
    assert primary / coordinated == pytest.approx(32.5, abs=0.5)


def test_alpha_scales_linearly():
    assert empirical_distrust_loss(*PRIMARY, alpha=3.0) / empirical_distrust_loss(*PRIMARY, alpha=2.3) == pytest.approx(3.0 / 2.3)


def test_tensor_input_is_elementwise_and_matches_floats():
    w = torch.tensor([PRIMARY[0], COORDINATED[0]])
    h = torch.tensor([PRIMARY[1], COORDINATED[1]])
    values = empirical_distrust_loss(w, h)
    assert values.shape == (2,)
    assert values[0].item() == pytest.approx(empirical_distrust_loss(*PRIMARY), rel=1e-6)
    assert values[1].item() == pytest.approx(empirical_distrust_loss(*COORDINATED), rel=1e-6)


def test_batch_sum_is_the_authors_norm_squared_form():
    w = torch.tensor([0.05, 0.5, 0.9], dtype=torch.float64)
    h = torch.tensor([7.5, 3.0, 1.0], dtype=torch.float64)
    original = 2.7 * torch.norm(torch.log(1 - w + 1e-8) + h) ** 2
    assert batch_empirical_distrust_loss(w, h).item() == pytest.approx(original.item(), rel=1e-12)
    assert batch_empirical_distrust_loss(w, h, reduction="mean").item() == pytest.approx(original.item() / 3, rel=1e-12)
    assert batch_empirical_distrust_loss(w, h, reduction="none").shape == (3,)
    with pytest.raises(ValueError, match="reduction='max'"):
        batch_empirical_distrust_loss(w, h, reduction="max")


@pytest.mark.parametrize(
    "w, h, alpha, fragment",
    [
        (1.0, 1.0, 2.7, "auth_weight=1.0"),
        (-0.1, 1.0, 2.7, "auth_weight=-0.1"),
        (float("nan"), 1.0, 2.7, "auth_weight=nan"),
        (0.5, -0.5, 2.7, "prov_entropy=-0.5"),
        (0.5, float("nan"), 2.7, "prov_entropy=nan"),
        (0.5, 1.0, 2.2, "alpha=2.2"),
        (0.5, 1.0, 3.1, "alpha=3.1"),
        (0.5, 1.0, float("nan"), "alpha=nan"),
    ],
)
def test_out_of_range_inputs_are_rejected_naming_the_value(w, h, alpha, fragment):
    with pytest.raises(ValueError) as error:
        empirical_distrust_loss(w, h, alpha)
    assert fragment in str(error.value)


def test_tensor_check_names_the_value_and_its_index():
    with pytest.raises(ValueError, match=r"auth_weight=0\.995.*index 2"):
        empirical_distrust_loss(torch.tensor([0.1, 0.2, 0.995]), torch.tensor([1.0, 1.0, 1.0]))


def test_boundaries_are_accepted():
    assert empirical_distrust_loss(0.0, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert empirical_distrust_loss(0.99, 0.0) > 0
    assert empirical_distrust_loss(0.5, 1.0, alpha=2.3) > 0
    assert empirical_distrust_loss(0.5, 1.0, alpha=3.0) > 0


def test_weighting_normaliser_is_the_training_set_mean_and_weights_keep_the_ratio():
    weighting = DistrustWeighting.from_dataset([PRIMARY[0], COORDINATED[0]], [PRIMARY[1], COORDINATED[1]])
    expected_mean = (empirical_distrust_loss(*PRIMARY) + empirical_distrust_loss(*COORDINATED)) / 2
    assert weighting.normaliser == pytest.approx(expected_mean)
    weights = weighting.weights(torch.tensor([PRIMARY[0], COORDINATED[0]]), torch.tensor([PRIMARY[1], COORDINATED[1]]))
    assert weights.mean().item() == pytest.approx(1.0, rel=1e-6)
    assert (weights[0] / weights[1]).item() == pytest.approx(32.5, abs=0.5)


def test_weights_do_not_depend_on_the_batch():
    weighting = DistrustWeighting.from_dataset([0.05, 0.5, 0.9], [7.5, 3.0, 1.0])
    alone = weighting.weights(torch.tensor([0.05]), torch.tensor([7.5]))
    together = weighting.weights(torch.tensor([0.05, 0.9]), torch.tensor([7.5, 1.0]))
    assert alone[0].item() == pytest.approx(together[0].item())


def test_lambda_zero_is_plain_cross_entropy():
    weighting = DistrustWeighting.from_dataset([0.05, 0.9], [7.5, 1.0], lambda_weight=0.0)
    weights = weighting.weights(torch.tensor([0.05, 0.9]), torch.tensor([7.5, 1.0]))
    assert torch.allclose(weights, torch.ones(2))


def test_empty_or_degenerate_training_set_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        DistrustWeighting.from_dataset([], [])
    with pytest.raises(ValueError, match="distrust value ~0"):
        DistrustWeighting.from_dataset([0.0], [0.0])


def _gradient_of(mode: str, w: float, h: float, weighting) -> torch.Tensor:
    parameter = torch.tensor([1.0, -2.0], requires_grad=True)
    per_sample_ce = (parameter**2).sum().unsqueeze(0)  # the "model": same CE for any sample
    parts = distrust_objective(
        per_sample_ce, torch.tensor([w]), torch.tensor([h]), mode=mode, weighting=weighting, lambda_weight=1.0
    )
    parts.total.backward()
    return parameter.grad.clone()


def test_weighted_mode_reaches_the_gradients_and_additive_mode_does_not():
    weighting = DistrustWeighting.from_dataset([0.05, 0.9], [7.5, 1.0])
    primary = _gradient_of("weighted", *PRIMARY, weighting)
    coordinated = _gradient_of("weighted", *COORDINATED, weighting)
    assert (primary.norm() / coordinated.norm()).item() == pytest.approx(32.5, abs=0.5)

    additive_primary = _gradient_of("additive", *PRIMARY, None)
    additive_coordinated = _gradient_of("additive", *COORDINATED, None)
    assert torch.equal(additive_primary, additive_coordinated)


def test_additive_mode_logs_the_term_in_the_total():
    ce = torch.tensor([2.0, 4.0])
    parts = distrust_objective(ce, torch.tensor([0.05, 0.9]), torch.tensor([7.5, 1.0]), mode="additive", lambda_weight=0.1)
    d_sum = empirical_distrust_loss(*PRIMARY) + empirical_distrust_loss(*COORDINATED)
    assert parts.cross_entropy.item() == pytest.approx(3.0)
    assert parts.total.item() == pytest.approx(3.0 + 0.1 * d_sum, rel=1e-5)
    assert parts.distrust.item() == pytest.approx(d_sum / 2, rel=1e-5)


def test_weighted_mode_needs_a_weighting_and_modes_are_checked():
    ce = torch.tensor([1.0])
    with pytest.raises(ValueError, match="weighted mode needs"):
        distrust_objective(ce, torch.tensor([0.1]), torch.tensor([1.0]), mode="weighted")
    with pytest.raises(ValueError, match="'multiplicative'"):
        distrust_objective(ce, torch.tensor([0.1]), torch.tensor([1.0]), mode="multiplicative")


def test_per_sample_cross_entropy_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    padded = labels.clone()
    padded[1, 3:] = -100
    values = per_sample_cross_entropy(logits, padded)
    expected_first = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:])
    expected_second = torch.nn.functional.cross_entropy(logits[1, :2], labels[1, 1:3])
    assert values[0].item() == pytest.approx(expected_first.item(), rel=1e-5)
    assert values[1].item() == pytest.approx(expected_second.item(), rel=1e-5)
