"""Per-list teacher standardisation (distill/normalise.py) and the losses' ``teacher_norm`` option, against values
computed by hand (the numbers below were worked out with plain ``math``; the derivations are in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from dcd_itr.distill.losses import (
    DynamicDistillationLoss,
    StaticDistillationLoss,
    WeightedDistillationLoss,
    build_loss,
)
from dcd_itr.distill.normalise import normalise_teacher, standardise_logits


def tensor(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_standardise_logits_hand_computed():
    # [2, 1, 0]: mean 1, population std sqrt(2/3) = 0.81650 -> (±1/0.81650, 0) = (1.22474, 0, -1.22474)
    # [4, -1, 0.5]: mean 7/6, deviations (17/6, -13/6, -2/3), variance (289 + 169 + 16)/108 = 4.38889,
    #   std 2.09497 -> (1.35245, -1.03422, -0.31822)
    z = standardise_logits(tensor([[2.0, 1.0, 0.0], [4.0, -1.0, 0.5]]))
    expected = tensor([[1.224745, 0.0, -1.224745], [1.352447, -1.034224, -0.318223]])
    assert torch.allclose(z, expected, atol=1e-5)
    assert torch.allclose(z.mean(dim=1), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.pow(2).mean(dim=1), torch.ones(2, dtype=torch.float64), atol=1e-5)


def test_standardise_ignores_scale_and_shift_and_keeps_order():
    teacher = tensor([[19.0, -3.0, -8.5, 0.25], [2.0, 2.5, -1.0, 0.0]])
    z = standardise_logits(teacher)
    assert torch.allclose(standardise_logits(7.0 * teacher - 40.0), z, atol=1e-9)
    assert torch.equal(z.argsort(dim=1), teacher.argsort(dim=1))


def test_constant_list_becomes_zeros_not_nan():
    z = standardise_logits(tensor([[3.0, 3.0, 3.0]]))
    assert torch.equal(z, torch.zeros(1, 3, dtype=torch.float64))


def test_normalise_teacher_kinds():
    teacher = tensor([[2.0, 1.0, 0.0]])
    assert normalise_teacher(teacher, "none") is teacher
    assert torch.allclose(normalise_teacher(teacher, "zscore"), standardise_logits(teacher))
    with pytest.raises(ValueError, match="teacher_norm"):
        normalise_teacher(teacher, "minmax")
    with pytest.raises(ValueError, match="teacher_norm"):
        StaticDistillationLoss(teacher_norm="minmax")


def test_listwise_kl_on_standardised_teacher_hand_computed():
    # teacher [2, 1, 0] -> z = (1.22474, 0, -1.22474); p = softmax(z) = (0.72455, 0.21290, 0.06256) at T = 1;
    # student [1, 0.5, -0.5]: q = softmax = (0.54655, 0.33150, 0.12195); KL(p || q) = Σ p (log p − log q) = 0.068232.
    # At T = 0.5: p = softmax(2z), q = softmax(2s); T² · KL = 0.25 · 0.132006 = 0.033001.
    student, teacher = tensor([[1.0, 0.5, -0.5]]), tensor([[2.0, 1.0, 0.0]])
    at_1 = StaticDistillationLoss(alpha=1.0, temperature=1.0, distance="kl", teacher_norm="zscore")
    assert at_1(student, teacher)["kd"].item() == pytest.approx(0.0682324, abs=1e-6)
    at_half = StaticDistillationLoss(alpha=1.0, temperature=0.5, distance="kl", teacher_norm="zscore")
    assert at_half(student, teacher)["kd"].item() == pytest.approx(0.0330015, abs=1e-6)
    # the loss sees only the standardised list: a teacher on another scale gives the same loss
    assert at_1(student, 25.0 * teacher - 9.0)["loss"].item() == pytest.approx(
        0.0682324, rel=1e-4
    )  # ε moves it 4e-6


@pytest.mark.parametrize(
    "loss_class", [DynamicDistillationLoss, StaticDistillationLoss, WeightedDistillationLoss]
)
@pytest.mark.parametrize("distance", ["mse", "kl", "margin_mse"])
def test_zscore_option_equals_a_prestandardised_teacher(loss_class, distance):
    student = tensor([[1.0, 0.5, -0.5], [0.2, 0.9, -0.3], [1.5, 0.0, 1.0]])
    teacher = tensor([[20.0, 1.0, -9.0], [0.5, 0.4, 0.1], [4.0, -1.0, 0.5]])
    with_option = loss_class(distance=distance, temperature=0.5, teacher_norm="zscore")(student, teacher)
    by_hand = loss_class(distance=distance, temperature=0.5)(student, standardise_logits(teacher))
    for key, value in by_hand.items():
        assert with_option[key].item() == pytest.approx(value.item(), rel=1e-9), key
    # and the dynamic weights see the standardised teacher: its entropies are not all ~0 as the raw row 0's is
    assert math.isfinite(with_option["loss"].item())


def test_build_loss_accepts_teacher_norm():
    loss = build_loss("dcd", distance="kl", teacher_norm="zscore", label="ce")
    assert "teacher_norm='zscore'" in repr(loss)
