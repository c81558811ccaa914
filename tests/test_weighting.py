"""Named weightings, label terms, pairwise distances and the masked InfoNCE, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dcd_itr.distill.contrastive import SymmetricInfoNCELoss
from dcd_itr.distill.losses import (
    DynamicDistillationLoss,
    StaticDistillationLoss,
    WeightedDistillationLoss,
    build_loss,
)
from dcd_itr.distill.weighting import (
    distill_weights,
    effective_sample_size,
    label_weights,
    pairwise_distance,
)
from test_losses import (
    STUDENT,
    TEACHER,
    bce_row,
    ce_row,
    close,
    entropy,
    hand_weights,
    kl_distance,
    mean,
    mse_distance,
    softmax,
    tensor,
)


def normalised(values: list[float]) -> list[float]:
    return [v / sum(values) for v in values]


def test_label_weight_schemes_match_hand_values() -> None:
    entropies = [entropy(row, 1.0) for row in TEACHER]
    h = torch.tensor(entropies, dtype=torch.float64)
    assert label_weights(h, "uniform").tolist() == pytest.approx([1 / 3] * 3)
    assert label_weights(h, "entropy").tolist() == pytest.approx(normalised(entropies))
    tempered = normalised([e**0.5 for e in entropies])
    assert label_weights(h, "tempered", gamma=0.5).tolist() == pytest.approx(tempered)
    mixed = [0.75 * w + 0.25 / 3 for w in normalised(entropies)]
    assert label_weights(h, "mixed", mix=0.25).tolist() == pytest.approx(mixed)
    assert label_weights(h, "tempered", gamma=0.0).tolist() == pytest.approx([1 / 3] * 3)
    assert label_weights(torch.zeros(4), "tempered").tolist() == [0.25] * 4  # all sure: uniform, not NaN


def test_distill_weight_schemes_match_hand_values() -> None:
    entropies = [entropy(row, 1.0) for row in TEACHER]
    h = torch.tensor(entropies, dtype=torch.float64)
    w = label_weights(h, "entropy")
    assert distill_weights(h, w, "paper").tolist() == pytest.approx(hand_weights(TEACHER, 1.0)[1])
    confidence = softmax([-2.0 * e for e in entropies])
    assert distill_weights(h, w, "confidence", kappa=2.0).tolist() == pytest.approx(confidence)
    assert distill_weights(h, w, "uniform").tolist() == pytest.approx([1 / 3] * 3)


def test_effective_sample_size() -> None:
    assert effective_sample_size(torch.full((8,), 1 / 8)).item() == pytest.approx(8.0)
    assert effective_sample_size(torch.tensor([1.0, 0.0, 0.0])).item() == pytest.approx(1.0)
    assert effective_sample_size(torch.tensor([0.5, 0.25, 0.25])).item() == pytest.approx(1 / 0.375)


def test_margin_mse_matches_hand_value() -> None:
    temperature = 2.0
    expected = []
    for s, t in zip(STUDENT, TEACHER, strict=True):
        squares = [((t[0] - t[j]) / 2 - (s[0] - s[j]) / 2) ** 2 for j in (1, 2)]
        expected.append(4.0 * mean(squares))
    got = pairwise_distance(tensor(STUDENT), tensor(TEACHER), temperature, "margin_mse")
    assert got.tolist() == pytest.approx(expected)
    shifted = pairwise_distance(tensor(TEACHER) + 5.0, tensor(TEACHER), 1.0, "margin_mse")
    assert shifted.abs().max().item() < 1e-12  # a shift of all scores is no error: it compares margins


def test_ranknet_matches_hand_value_and_vanishes_when_orders_agree() -> None:
    def bce(logit: float, target: float) -> float:
        return -(
            target * math.log(1 / (1 + math.exp(-logit))) + (1 - target) * math.log(1 / (1 + math.exp(logit)))
        )

    expected = []
    for s, t in zip(STUDENT, TEACHER, strict=True):
        pairs = [(j, k) for j in range(3) for k in range(3) if j != k]
        cross = [bce(s[j] - s[k], 1 / (1 + math.exp(-(t[j] - t[k])))) for j, k in pairs]
        floor = [bce(t[j] - t[k], 1 / (1 + math.exp(-(t[j] - t[k])))) for j, k in pairs]
        expected.append(mean(cross) - mean(floor))
    got = pairwise_distance(tensor(STUDENT), tensor(TEACHER), 1.0, "ranknet")
    assert got.tolist() == pytest.approx(expected)
    same = pairwise_distance(tensor(TEACHER), tensor(TEACHER), 1.0, "ranknet")
    assert same.abs().max().item() < 1e-12


def test_weighted_loss_matches_hand_value() -> None:
    # tempered label weights at a weight temperature of 2, confidence distillation weights, KL at T = 1, CE labels
    entropies = [entropy(row, 2.0) for row in TEACHER]
    w = normalised([e**0.5 for e in entropies])
    r = softmax([-1.5 * e for e in entropies])
    kd = sum(ri * kl_distance(s, t, 1.0) for ri, s, t in zip(r, STUDENT, TEACHER, strict=True))
    gt = sum(wi * ce_row(s) for wi, s in zip(w, STUDENT, strict=True))
    loss = WeightedDistillationLoss(
        alpha=0.3,
        distance="kl",
        label="ce",
        label_weighting="tempered",
        gamma=0.5,
        distill_weighting="confidence",
        kappa=1.5,
        weight_temperature=2.0,
    )
    terms = loss(tensor(STUDENT), tensor(TEACHER))
    assert close(terms["kd"], kd) and close(terms["gt"], gt)
    assert close(terms["loss"], 0.3 * kd + 0.7 * gt)
    assert close(terms["label_ess"], 1 / sum(x * x for x in w))
    assert close(terms["distill_ess"], 1 / sum(x * x for x in r))


def test_weighted_loss_reduces_to_dcd_and_static() -> None:
    student, teacher = tensor(STUDENT), tensor(TEACHER)
    as_dcd = WeightedDistillationLoss(label_weighting="entropy", distill_weighting="paper", label="bce")
    dcd = DynamicDistillationLoss()
    for key in ("loss", "kd", "gt", "label_ess", "distill_ess"):
        assert close(as_dcd(student, teacher)[key], dcd(student, teacher)[key].item())
    as_static = WeightedDistillationLoss(label_weighting="uniform", distill_weighting="uniform", label="ce")
    static = StaticDistillationLoss()
    for key in ("loss", "kd", "gt"):
        assert close(as_static(student, teacher)[key], static(student, teacher)[key].item())
    assert close(as_static(student, teacher)["label_ess"], 3.0)


def test_label_controls_dcd_with_ce_and_static_with_bce() -> None:
    label, distill = hand_weights(TEACHER, 1.0)
    kd = sum(r * mse_distance(s, t, 1.0) for r, s, t in zip(distill, STUDENT, TEACHER, strict=True))
    gt = sum(w * ce_row(s) for w, s in zip(label, STUDENT, strict=True))
    terms = DynamicDistillationLoss(label="ce")(tensor(STUDENT), tensor(TEACHER))
    assert close(terms["gt"], gt) and close(terms["loss"], 0.2 * kd + 0.8 * gt)
    static = StaticDistillationLoss(label="bce")(tensor(STUDENT), tensor(TEACHER))
    assert close(static["gt"], mean([bce_row(s) for s in STUDENT]))
    with pytest.raises(ValueError, match="label must be one of"):
        build_loss("static", label="hinge")
    with pytest.raises(ValueError, match="label_weighting"):
        build_loss("weighted", label_weighting="random")


def test_infonce_excluded_pairs_are_no_negatives() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, -1.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    excluded = torch.zeros(3, 3, dtype=torch.bool)
    excluded[0, 1] = True  # caption 1 has the text of a caption of image 0
    terms = SymmetricInfoNCELoss()(logits, excluded)

    def ce(row: list[float], target: int) -> float:
        return -math.log(softmax(row)[target])

    image_to_text = mean([ce([2.0, 0.0], 0), ce([0.5, 1.5, -1.0], 1), ce([0.0, 3.0, 1.0], 2)])
    # columns as rows: caption 1 over images drops image 0
    text_to_image = mean([ce([2.0, 0.5, 0.0], 0), ce([1.5, 3.0], 0), ce([0.0, -1.0, 1.0], 2)])
    assert close(terms["loss"], 0.5 * (image_to_text + text_to_image))
    diagonal_kept = SymmetricInfoNCELoss()(logits, torch.ones(3, 3, dtype=torch.bool))
    assert close(diagonal_kept["loss"], 0.0)  # only the positives remain: CE of a one-entry softmax


def test_weighted_with_ce_labels_and_zscored_kl_reduces_to_dcd_ce() -> None:
    """The ablation's ``dcd-tw`` row is ``dcd-ce`` with a weight temperature: at T_w = T the two losses agree on
    the scenes settings (CE labels, z-scored teacher lists, listwise KL)."""
    student, teacher = tensor(STUDENT), tensor(TEACHER)
    settings = {"label": "ce", "distance": "kl", "teacher_norm": "zscore", "alpha": 0.8}
    as_dcd = WeightedDistillationLoss(label_weighting="entropy", distill_weighting="paper", **settings)
    dcd = DynamicDistillationLoss(**settings)
    for key in ("loss", "kd", "gt", "label_ess", "distill_ess"):
        assert close(as_dcd(student, teacher)[key], dcd(student, teacher)[key].item())


def test_weight_temperature_sharpens_label_weights_of_zscored_lists() -> None:
    """Label weights at T_w = 0.25 on z-scored lists, by hand: z_i = (t_i - mean) / population std, H_i the entropy
    of softmax(z_i / 0.25), w = H / sum H; the label ESS is 1 / sum w^2."""
    hand_z = []
    for row in TEACHER:
        mu = mean(row)
        sigma = math.sqrt(mean([(t - mu) ** 2 for t in row]))
        hand_z.append([(t - mu) / (sigma + 1e-6) for t in row])
    w = normalised([entropy(row, 0.25) for row in hand_z])
    loss = WeightedDistillationLoss(
        label_weighting="entropy",
        distill_weighting="paper",
        label="ce",
        distance="kl",
        teacher_norm="zscore",
        weight_temperature=0.25,
    )
    terms = loss(tensor(STUDENT), tensor(TEACHER))
    assert close(terms["label_ess"], 1 / sum(x * x for x in w))
    at_one = WeightedDistillationLoss(
        label_weighting="entropy", distill_weighting="paper", label="ce", distance="kl", teacher_norm="zscore"
    )(tensor(STUDENT), tensor(TEACHER))
    w_one = normalised([entropy(row, 1.0) for row in hand_z])
    assert close(at_one["label_ess"], 1 / sum(x * x for x in w_one))
    assert terms["label_ess"] < at_one["label_ess"]  # sharper entropies, less uniform weights
