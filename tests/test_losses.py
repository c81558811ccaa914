"""Distillation losses against values computed by hand in plain Python (``math``), not with torch."""

from __future__ import annotations

import math

import pytest
import torch

from dcd_itr.distill.losses import (
    LOSSES,
    DynamicDistillationLoss,
    LabelOnlyLoss,
    StaticDistillationLoss,
    WeightedSoftLabelLoss,
    build_loss,
    dynamic_sample_weights,
)

# Three anchors, K = 3, positive at column 0. Teacher rows have clearly different entropies:
# row 1 is nearly uniform (unsure teacher), row 2 is peaked (sure teacher).
TEACHER = [[2.0, 1.0, 0.0], [0.5, 0.4, 0.1], [4.0, -1.0, 0.5]]
STUDENT = [[1.0, 0.5, -0.5], [0.2, 0.9, -0.3], [1.5, 0.0, 1.0]]


def tensor(rows: list[list[float]], requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=requires_grad)


# ---- plain-Python reference implementations -------------------------------------------------------------


def softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    return [e / sum(exps) for e in exps]


def entropy(row: list[float], temperature: float) -> float:
    return -sum(p * math.log(p) for p in softmax([x / temperature for x in row]) if p > 0)


def hand_weights(teacher: list[list[float]], temperature: float) -> tuple[list[float], list[float]]:
    entropies = [entropy(row, temperature) for row in teacher]
    label = [h / sum(entropies) for h in entropies]
    distill = softmax([(1.0 - w) ** 2 for w in label])
    return label, distill


def mse_distance(student_row: list[float], teacher_row: list[float], temperature: float) -> float:
    squares = [
        (t / temperature - s / temperature) ** 2 for s, t in zip(student_row, teacher_row, strict=True)
    ]
    return temperature**2 * sum(squares) / len(squares)


def kl_distance(student_row: list[float], teacher_row: list[float], temperature: float) -> float:
    p = softmax([t / temperature for t in teacher_row])
    q = softmax([s / temperature for s in student_row])
    return temperature**2 * sum(pj * (math.log(pj) - math.log(qj)) for pj, qj in zip(p, q, strict=True))


def bce_row(student_row: list[float]) -> float:
    # BCEWithLogits(x, 1) = log(1 + e^-x); BCEWithLogits(x, 0) = log(1 + e^x)
    terms = [
        math.log1p(math.exp(-x)) if j == 0 else math.log1p(math.exp(x)) for j, x in enumerate(student_row)
    ]
    return sum(terms) / len(terms)


def ce_row(row: list[float]) -> float:
    return -math.log(softmax(row)[0])


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def close(actual: torch.Tensor, expected: float) -> bool:
    return math.isclose(actual.item(), expected, rel_tol=1e-10, abs_tol=1e-12)


# ---- dcd -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_dcd_matches_hand_computation(temperature: float) -> None:
    alpha = 0.2
    label, distill = hand_weights(TEACHER, temperature)
    kd = sum(r * mse_distance(s, t, temperature) for r, s, t in zip(distill, STUDENT, TEACHER, strict=True))
    gt = sum(w * bce_row(s) for w, s in zip(label, STUDENT, strict=True))

    terms = DynamicDistillationLoss(alpha=alpha, temperature=temperature)(tensor(STUDENT), tensor(TEACHER))

    assert close(terms["kd"], kd)
    assert close(terms["gt"], gt)
    assert close(terms["loss"], alpha * kd + (1 - alpha) * gt)
    assert close(terms["teacher_entropy"], mean([entropy(row, temperature) for row in TEACHER]))
    assert close(terms["label_weight_max"], max(label))
    assert close(terms["distill_weight_max"], max(distill))
    weights = dynamic_sample_weights(tensor(TEACHER), temperature)
    for actual, expected in zip(weights, (label, distill), strict=True):
        assert torch.allclose(actual, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_dcd_closed_form_with_a_certain_teacher() -> None:
    # Row 0: uniform teacher, H = ln 2. Row 1: exp(-1000) underflows to 0 in float64, so H = 0 exactly.
    # Hence w = (1, 0), r = softmax((0, 1)) = (1, e) / (1 + e).
    teacher, student = [[0.0, 0.0], [1000.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]
    r0, r1 = 1 / (1 + math.e), math.e / (1 + math.e)
    kd = r0 * (1.0**2 + 0.0) / 2 + r1 * (1000.0**2 + 0.0) / 2
    gt = 1.0 * (math.log1p(math.exp(-1.0)) + math.log(2.0)) / 2
    terms = DynamicDistillationLoss(alpha=0.5)(tensor(student), tensor(teacher))
    assert close(terms["kd"], kd)
    assert close(terms["gt"], gt)
    assert close(terms["loss"], 0.5 * kd + 0.5 * gt)


def test_dcd_reference_reduction_matches_hand_value() -> None:
    # Reference code: one MSE over all (i, j), then times sum_i r_i (= 1), so the r-weighting does nothing.
    squares = [
        (t - s) ** 2
        for s_row, t_row in zip(STUDENT, TEACHER, strict=True)
        for s, t in zip(s_row, t_row, strict=True)
    ]
    kd = mean(squares)
    label, _ = hand_weights(TEACHER, 1.0)
    gt = sum(w * bce_row(s) for w, s in zip(label, STUDENT, strict=True))
    terms = DynamicDistillationLoss(reduction="reference")(tensor(STUDENT), tensor(TEACHER))
    assert close(terms["kd"], kd)
    assert close(terms["gt"], gt)
    assert close(terms["loss"], 0.2 * kd + 0.8 * gt)


def test_per_sample_and_reference_differ_when_entropies_differ() -> None:
    per_sample = DynamicDistillationLoss(reduction="per_sample")(tensor(STUDENT), tensor(TEACHER))
    reference = DynamicDistillationLoss(reduction="reference")(tensor(STUDENT), tensor(TEACHER))
    assert abs(per_sample["kd"].item() - reference["kd"].item()) > 1e-3
    assert torch.equal(per_sample["gt"], reference["gt"])  # the label term is not affected


def test_weights_sum_to_one_and_follow_teacher_entropy() -> None:
    label, distill = dynamic_sample_weights(tensor(TEACHER), 1.0)
    assert math.isclose(label.sum().item(), 1.0, rel_tol=1e-12)
    assert math.isclose(distill.sum().item(), 1.0, rel_tol=1e-12)
    entropies = [entropy(row, 1.0) for row in TEACHER]
    unsure, sure = entropies.index(max(entropies)), entropies.index(min(entropies))
    assert unsure == 1 and sure == 2  # the example is built this way
    assert label[unsure] > label[sure]  # hard sample: learn more from the label
    assert distill[unsure] < distill[sure]  # sure teacher: learn more from the teacher


def test_equal_entropies_give_uniform_weights_and_plain_mse() -> None:
    # Rows are permutations of one row, so every teacher entropy is equal but the rows still differ.
    teacher = [[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]]
    label, distill = dynamic_sample_weights(tensor(teacher), 1.0)
    assert torch.allclose(label, torch.full((3,), 1 / 3, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(distill, torch.full((3,), 1 / 3, dtype=torch.float64), rtol=1e-12)

    terms = DynamicDistillationLoss()(tensor(STUDENT), tensor(teacher))
    squares = [
        (t - s) ** 2
        for s_row, t_row in zip(STUDENT, teacher, strict=True)
        for s, t in zip(s_row, t_row, strict=True)
    ]
    assert close(terms["kd"], mean(squares))
    assert close(terms["gt"], mean([bce_row(s) for s in STUDENT]))
    reference = DynamicDistillationLoss(reduction="reference")(tensor(STUDENT), tensor(teacher))
    assert close(reference["kd"], terms["kd"].item())


@pytest.mark.parametrize("distance", ["mse", "kl"])
@pytest.mark.parametrize(
    "teacher", [[[2.0, 1.0, 0.0]] * 3, [[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]]]
)
def test_dcd_with_equal_entropies_agrees_with_static_on_kd(distance: str, teacher: list[list[float]]) -> None:
    dcd = DynamicDistillationLoss(temperature=2.0, distance=distance)(tensor(STUDENT), tensor(teacher))
    static = StaticDistillationLoss(temperature=2.0, distance=distance)(tensor(STUDENT), tensor(teacher))
    assert close(dcd["kd"], static["kd"].item())
    assert not close(dcd["gt"], static["gt"].item())  # BCE vs softmax CE: the label terms differ by design


def test_dcd_kl_distance_matches_hand_value() -> None:
    temperature = 2.0
    _, distill = hand_weights(TEACHER, temperature)
    kd = sum(r * kl_distance(s, t, temperature) for r, s, t in zip(distill, STUDENT, TEACHER, strict=True))
    terms = DynamicDistillationLoss(temperature=temperature, distance="kl")(tensor(STUDENT), tensor(TEACHER))
    assert close(terms["kd"], kd)
    reference = DynamicDistillationLoss(temperature=temperature, distance="kl", reduction="reference")
    assert close(
        reference(tensor(STUDENT), tensor(TEACHER))["kd"],
        mean([kl_distance(s, t, 2.0) for s, t in zip(STUDENT, TEACHER, strict=True)]),
    )


def test_all_zero_entropy_falls_back_to_uniform_weights() -> None:
    teacher = [[1000.0, 0.0, 0.0], [1000.0, 0.0, 0.0]]  # exp(-1000) underflows: H = 0 exactly for both rows
    label, distill = dynamic_sample_weights(tensor(teacher), 1.0)
    assert label.tolist() == [0.5, 0.5]
    assert distill.tolist() == [0.5, 0.5]
    terms = DynamicDistillationLoss()(tensor(STUDENT[:2]), tensor(teacher))
    assert all(torch.isfinite(value) for value in terms.values())


def test_single_anchor_batch() -> None:
    terms = DynamicDistillationLoss()(tensor(STUDENT[:1]), tensor(TEACHER[:1]))
    assert close(terms["kd"], mse_distance(STUDENT[0], TEACHER[0], 1.0))
    assert close(terms["gt"], bce_row(STUDENT[0]))


def test_dcd_gradient_is_correct() -> None:
    teacher = tensor(TEACHER)
    loss = DynamicDistillationLoss(temperature=2.0)
    assert torch.autograd.gradcheck(
        lambda s: loss(s, teacher)["loss"], (tensor(STUDENT, requires_grad=True),)
    )


# ---- baselines -------------------------------------------------------------------------------------------


def test_static_matches_hand_value() -> None:
    kd = mean([mse_distance(s, t, 2.0) for s, t in zip(STUDENT, TEACHER, strict=True)])
    gt = mean([ce_row(s) for s in STUDENT])
    terms = StaticDistillationLoss(alpha=0.3, temperature=2.0)(tensor(STUDENT), tensor(TEACHER))
    assert close(terms["kd"], kd)
    assert close(terms["gt"], gt)
    assert close(terms["loss"], 0.3 * kd + 0.7 * gt)


def test_wsl_matches_hand_value() -> None:
    temperature = 2.0
    weights = [1 - math.exp(-ce_row(s) / (ce_row(t) + 1e-7)) for s, t in zip(STUDENT, TEACHER, strict=True)]
    kd = mean([v * kl_distance(s, t, temperature) for v, s, t in zip(weights, STUDENT, TEACHER, strict=True)])
    gt = mean([ce_row(s) for s in STUDENT])
    terms = WeightedSoftLabelLoss(temperature=temperature)(tensor(STUDENT), tensor(TEACHER))
    assert close(terms["distill_weight_mean"], mean(weights))
    assert close(terms["kd"], kd)
    assert close(terms["gt"], gt)
    assert close(terms["loss"], 0.2 * kd + gt)  # CE at full weight (spec and reference), not (1 - alpha) * CE


def test_wsl_weight_is_one_minus_inverse_e_when_student_equals_teacher() -> None:
    # ce_s / ce_t = 1 (up to epsilon), so v = 1 - exp(-1); and the KL term is zero.
    terms = WeightedSoftLabelLoss()(tensor(TEACHER[:1]), tensor(TEACHER[:1]))
    assert math.isclose(terms["distill_weight_mean"].item(), 1 - math.exp(-1), rel_tol=1e-6)
    assert close(terms["kd"], 0.0)


def test_wsl_guards_a_certain_teacher() -> None:
    teacher = [[1000.0, 0.0, 0.0], [1000.0, 0.0, 0.0]]  # CE(t, 0) = 0 exactly: the epsilon keeps v finite
    terms = WeightedSoftLabelLoss()(tensor(STUDENT[:2]), tensor(teacher))
    assert all(torch.isfinite(value) for value in terms.values())
    assert close(terms["distill_weight_mean"], 1.0)


def test_label_only_is_cross_entropy_and_ignores_teacher() -> None:
    loss = LabelOnlyLoss()
    terms = loss(tensor(STUDENT), tensor(TEACHER))
    assert set(terms) == {"loss", "gt"}
    assert close(terms["loss"], mean([ce_row(s) for s in STUDENT]))
    assert torch.equal(terms["loss"], loss(tensor(STUDENT), -tensor(TEACHER))["loss"])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_reaches_student_not_teacher(name: str) -> None:
    student, teacher = tensor(STUDENT, requires_grad=True), tensor(TEACHER, requires_grad=True)
    terms = build_loss(name)(student, teacher)
    terms["loss"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    for key, value in terms.items():
        assert value.dim() == 0, key
        if key not in ("loss", "kd", "gt"):
            assert not value.requires_grad, key  # diagnostics are detached


def test_dcd_weights_are_detached() -> None:
    label, distill = dynamic_sample_weights(tensor(TEACHER, requires_grad=True), 1.0)
    assert not label.requires_grad and not distill.requires_grad


# ---- construction and validation -------------------------------------------------------------------------


def test_build_loss_returns_each_class_with_its_options() -> None:
    assert {name: type(build_loss(name)) for name in LOSSES} == LOSSES
    loss = build_loss("dcd", alpha=0.5, temperature=2.0, reduction="reference", distance="kl")
    assert (loss.alpha, loss.temperature, loss.reduction, loss.distance) == (0.5, 2.0, "reference", "kl")


def test_build_loss_rejects_unknown_names_and_arguments() -> None:
    with pytest.raises(ValueError, match="unknown loss 'kd'.*dcd, none, static, weighted, wsl"):
        build_loss("kd")
    with pytest.raises(
        ValueError, match="unknown argument\\(s\\) beta.*alpha, temperature, reduction, distance, label"
    ):
        build_loss("dcd", beta=1.0)
    with pytest.raises(ValueError, match="'none' got unknown argument\\(s\\) alpha.*no arguments"):
        build_loss("none", alpha=0.2)
    with pytest.raises(ValueError, match="unknown argument\\(s\\) reduction"):
        build_loss("static", reduction="reference")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
        ({"distance": "l1"}, "distance"),
        ({"reduction": "mean"}, "reduction"),
    ],
)
def test_invalid_options_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamicDistillationLoss(**options)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "message"),
    [
        ((3, 4), (3, 5), "same shape"),
        ((3, 1), (3, 1), "K >= 2"),
        ((0, 4), (0, 4), "B >= 1"),
        ((4,), (4,), "shape \\(B, K\\)"),
    ],
)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_shapes_are_validated(name: str, student_shape: tuple, teacher_shape: tuple, message: str) -> None:
    loss = build_loss(name)
    with pytest.raises(ValueError, match=message):
        loss(torch.zeros(student_shape), torch.zeros(teacher_shape))


def test_integer_logits_are_rejected() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        DynamicDistillationLoss()(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
