"""Distillation losses: dynamic (DCD) and the baselines it is compared against.

Every loss is a plain ``nn.Module`` with one call signature::

    terms = loss(student_logits, teacher_logits)   # both (B, K), positive at column 0
    terms["loss"].backward()                        # "loss" is the total; the other keys are for logging

``student_logits`` and ``teacher_logits`` score the same candidate list for each of B anchors; column 0 is the
positive, so the target is the one-hot y = (1, 0, ..., 0). The teacher is never differentiated: its logits are
detached on entry, and every weight derived from them is computed under no gradient. ``"kd"`` and ``"gt"`` are
the two terms before mixing (``loss = alpha * kd + (1 - alpha) * gt``; ``wsl``: ``alpha * kd + gt``); every
other key is a detached diagnostic.

Distillation distances (``distance=``), per sample i, both times T² (Hinton's convention, keeps gradient sizes
comparable across T; for MSE it cancels the 1/T², so d_i does not depend on T — only DCD's weights do):

- ``"mse"``: d_i = T² · mean_j (t_ij/T − s_ij/T)²
- ``"kl"``:  d_i = T² · KL(softmax(t_i/T) ‖ softmax(s_i/T)) = T² · Σ_j p_ij (log p_ij − log q_ij)
  (ListNet's listwise top-one distance over the K list)
- ``"margin_mse"``, ``"ranknet"``: pairwise distances on the teacher's order, see :mod:`dcd_itr.distill.weighting`

With ``teacher_norm="zscore"`` (dcd, static, weighted) each teacher list is standardised first, t_ij ->
(t_ij − mean_j t_ij) / (std_j t_ij + ε) (:mod:`dcd_itr.distill.normalise`), so distances and dynamic weights see the
teacher's order and relative gaps on one scale, and T alone sets how soft its targets are.

The label term (``label=``) is ``"ce"`` (softmax cross-entropy over the list) or ``"bce"`` (mean BCE per entry,
the reference code's), so an ablation can change the weighting without changing the label loss.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcd_itr.distill.normalise import TEACHER_NORMS, normalise_teacher
from dcd_itr.distill.weighting import (
    DISTILL_WEIGHTINGS,
    LABEL_TERMS,
    LABEL_WEIGHTINGS,
    PAIRWISE_DISTANCES,
    distill_weights,
    effective_sample_size,
    label_term,
    label_weights,
    pairwise_distance,
)

DISTANCES = ("mse", "kl", *PAIRWISE_DISTANCES)
REDUCTIONS = ("per_sample", "reference")


def check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    """Raise ``ValueError`` unless both are floating tensors of the same shape (B, K) with B >= 1 and K >= 2."""
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {type(logits).__name__}")
        if logits.dim() != 2:
            raise ValueError(f"{name} must have shape (B, K), got {tuple(logits.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must have the same shape (B, K)"
        )
    batch_size, num_candidates = student_logits.shape
    if batch_size < 1:
        raise ValueError("logits need at least one anchor (B >= 1), got B = 0")
    if num_candidates < 2:
        raise ValueError(
            f"logits need a positive and at least one negative (K >= 2), got K = {num_candidates}"
        )


def _check_options(
    alpha: float, temperature: float, distance: str, label: str = "ce", teacher_norm: str = "none"
) -> None:
    if teacher_norm not in TEACHER_NORMS:
        raise ValueError(f"teacher_norm must be one of {TEACHER_NORMS}, got {teacher_norm!r}")
    if label not in LABEL_TERMS:
        raise ValueError(f"label must be one of {LABEL_TERMS}, got {label!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def positive_cross_entropy(logits: Tensor) -> Tensor:
    """Softmax cross-entropy of each row against target index 0: −log softmax(logits)_0. (B, K) -> (B,)."""
    return -F.log_softmax(logits, dim=-1)[:, 0]


def teacher_entropy(teacher_logits: Tensor, temperature: float) -> Tensor:
    """H_i = −Σ_j p_ij log p_ij with p_i = softmax(t_i / T). (B, K) -> (B,), in nats."""
    log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, K)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def distillation_distance(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, distance: str
) -> Tensor:
    """Per-sample distance d_i (see the module docstring), including the T² factor. (B, K), (B, K) -> (B,)."""
    student_scaled = student_logits / temperature  # (B, K)
    teacher_scaled = teacher_logits / temperature  # (B, K)
    if distance == "mse":
        per_sample = (teacher_scaled - student_scaled).pow(2).mean(dim=-1)
    elif distance == "kl":
        teacher_log_probs = F.log_softmax(teacher_scaled, dim=-1)  # (B, K)
        student_log_probs = F.log_softmax(student_scaled, dim=-1)  # (B, K)
        per_sample = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1)
    elif distance in PAIRWISE_DISTANCES:
        return pairwise_distance(student_logits, teacher_logits, temperature, distance)
    else:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    return temperature**2 * per_sample  # (B,)


@torch.no_grad()
def dynamic_sample_weights(teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """DCD's per-sample weights from the teacher alone: ``(label_weights w, distill_weights r)``, each (B,).

    w_i = H_i / Σ_b H_b (uniform 1/B when every entropy is zero) and r_i = softmax_over_batch((1 − w_i)²).
    Both sum to 1 over the batch. Computed without gradient.
    """
    entropy = teacher_entropy(teacher_logits, temperature)  # (B,)
    total = entropy.sum()
    tiny = torch.finfo(entropy.dtype).tiny
    uniform = torch.full_like(entropy, 1.0 / entropy.numel())
    label_weights = torch.where(total > tiny, entropy / total.clamp_min(tiny), uniform)  # (B,)
    distill_weights = torch.softmax((1.0 - label_weights).pow(2), dim=0)  # (B,)
    return label_weights, distill_weights


class DynamicDistillationLoss(nn.Module):
    """Dynamic Contrastive Distillation loss (``"dcd"``, DCD_SPEC.md step 3).

    Inputs ``student_logits`` s and ``teacher_logits`` t, both (B, K), positive at column 0, y = (1, 0, ..., 0)::

        p_i  = softmax(t_i / T)
        H_i  = −Σ_j p_ij log p_ij                       # teacher entropy, (B,)
        w_i  = H_i / Σ_b H_b                             # label weights, (B,); 1/B each if all H_i = 0
        r_i  = softmax_over_batch((1 − w_i)²)            # distillation weights, (B,)
        kd   = Σ_i r_i · d_i                             # reduction="per_sample" (default)
             = mean_i d_i · Σ_i r_i  (= mean_i d_i)      # reduction="reference": the reference code's bug
        gt   = Σ_i w_i · l_i                             # l_i = mean_j BCEWithLogits(s_ij, y_j) (label="bce")
        loss = α · kd + (1 − α) · gt                     #       or CE(s_i, 0) (label="ce")

    d_i is the per-sample distance of the module docstring (``"mse"``: T² · mean_j (t_ij/T − s_ij/T)², so
    ``reference`` with MSE is T² · mean_{i,j}(...)², exactly the reference code). w and r use the detached teacher.

    Returns scalars: ``loss``, ``kd``, ``gt`` and detached diagnostics ``teacher_entropy`` (mean H_i),
    ``label_weight_max`` (max w_i), ``distill_weight_max`` (max r_i) and the effective sample sizes
    ``label_ess`` = 1/Σ w_i² and ``distill_ess`` = 1/Σ r_i².
    """

    def __init__(
        self,
        alpha: float = 0.2,  # reference code (DCD_SPEC.md, reference hyper-parameters)
        temperature: float = 1.0,  # reference code (DCD_SPEC.md, reference hyper-parameters)
        reduction: str = "per_sample",  # the fixed form; "reference" only to measure the bug
        distance: str = "mse",  # reference code distils logits with MSE
        label: str = "bce",  # reference code; "ce" is the control that matches static's label term
        teacher_norm: str = "none",  # the reference's raw logits; "zscore" per list (distill/normalise.py)
    ) -> None:
        super().__init__()
        _check_options(alpha, temperature, distance, label, teacher_norm)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.alpha, self.temperature, self.reduction, self.distance = alpha, temperature, reduction, distance
        self.label, self.teacher_norm = label, teacher_norm

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, temperature={self.temperature}, reduction={self.reduction!r}, "
            f"distance={self.distance!r}, label={self.label!r}, teacher_norm={self.teacher_norm!r}"
        )

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> dict[str, Tensor]:
        check_logits(student_logits, teacher_logits)
        teacher_logits = normalise_teacher(teacher_logits.detach(), self.teacher_norm)  # (B, K)
        label_weights, distill_weights = dynamic_sample_weights(
            teacher_logits, self.temperature
        )  # (B,), (B,)
        distances = distillation_distance(
            student_logits, teacher_logits, self.temperature, self.distance
        )  # (B,)
        if self.reduction == "per_sample":
            kd = (distill_weights * distances).sum()
        else:
            kd = distances.mean() * distill_weights.sum()
        gt = (label_weights * label_term(student_logits, self.label)).sum()
        return {
            "loss": self.alpha * kd + (1.0 - self.alpha) * gt,
            "kd": kd,
            "gt": gt,
            "teacher_entropy": teacher_entropy(teacher_logits, self.temperature).mean(),
            "label_weight_max": label_weights.max(),
            "distill_weight_max": distill_weights.max(),
            "label_ess": effective_sample_size(label_weights),
            "distill_ess": effective_sample_size(distill_weights),
        }


class StaticDistillationLoss(nn.Module):
    """Static distillation baseline (``"static"``): uniform weights over the batch.

    Inputs s, t (B, K), positive at column 0::

        kd   = mean_i d_i          # "mse": T² · mean_{i,j} (t_ij/T − s_ij/T)²; "kl": T² · mean_i KL(p_i ‖ q_i)
        gt   = mean_i l_i          # l_i = CE(s_i, 0) over the list (label="ce"), or mean_j BCE (label="bce")
        loss = α · kd + (1 − α) · gt

    Returns scalars ``loss``, ``kd``, ``gt``.
    """

    def __init__(
        self,
        alpha: float = 0.2,  # same as dcd, so the ablation changes only the weighting
        temperature: float = 1.0,  # same as dcd, so the ablation changes only the weighting
        distance: str = "mse",  # same as dcd's default
        label: str = "ce",  # the usual listwise label loss; "bce" is the control that matches dcd's
        teacher_norm: str = "none",  # same as dcd's default
    ) -> None:
        super().__init__()
        _check_options(alpha, temperature, distance, label, teacher_norm)
        self.alpha, self.temperature, self.distance, self.label = alpha, temperature, distance, label
        self.teacher_norm = teacher_norm

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, temperature={self.temperature}, distance={self.distance!r}, "
            f"label={self.label!r}, teacher_norm={self.teacher_norm!r}"
        )

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> dict[str, Tensor]:
        check_logits(student_logits, teacher_logits)
        teacher_logits = normalise_teacher(teacher_logits.detach(), self.teacher_norm)  # (B, K)
        kd = distillation_distance(student_logits, teacher_logits, self.temperature, self.distance).mean()
        gt = label_term(student_logits, self.label).mean()
        return {"loss": self.alpha * kd + (1.0 - self.alpha) * gt, "kd": kd, "gt": gt}


class WeightedSoftLabelLoss(nn.Module):
    """Weighted soft labels baseline (``"wsl"``): per-sample weight on the distillation term.

    Inputs s, t (B, K), positive at column 0. Cross-entropies at temperature 1, weights without gradient::

        ce_s_i = CE(s_i, 0),  ce_t_i = CE(t_i, 0)                 # (B,) each
        v_i    = 1 − exp(−ce_s_i / (ce_t_i + ε))                 # ε = 1e-7; v_i in [0, 1)
        kd     = mean_i v_i · d_i                                # d_i: "kl" (default) T² · KL(p_i ‖ q_i)
        gt     = mean_i ce_s_i
        loss   = α · kd + gt                                     # CE at full weight, as the spec and reference

    v_i is large when the student is worse than the teacher on sample i (learn from the teacher), small when the
    student already beats it. If the teacher is certain and right (ce_t ≈ 0) the ε keeps v finite (≈ 1).

    Returns scalars ``loss``, ``kd``, ``gt`` and the detached diagnostic ``distill_weight_mean`` (mean v_i).
    """

    def __init__(
        self,
        alpha: float = 0.2,  # same as dcd, so the ablation changes only the weighting
        temperature: float = 1.0,  # same as dcd, so the ablation changes only the weighting
        distance: str = "kl",  # WSL is defined on the KL between softened distributions
        epsilon: float = 1e-7,  # guards ce_t = 0 (teacher certain and right); small enough not to bias v
    ) -> None:
        super().__init__()
        _check_options(alpha, temperature, distance)
        if not epsilon > 0.0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.alpha, self.temperature, self.distance, self.epsilon = alpha, temperature, distance, epsilon

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}, distance={self.distance!r}, epsilon={self.epsilon}"

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> dict[str, Tensor]:
        check_logits(student_logits, teacher_logits)
        teacher_logits = teacher_logits.detach()
        student_ce = positive_cross_entropy(student_logits)  # (B,)
        with torch.no_grad():
            teacher_ce = positive_cross_entropy(teacher_logits)  # (B,)
            distill_weights = 1.0 - torch.exp(-student_ce.detach() / (teacher_ce + self.epsilon))  # (B,)
        distances = distillation_distance(
            student_logits, teacher_logits, self.temperature, self.distance
        )  # (B,)
        kd = (distill_weights * distances).mean()
        gt = student_ce.mean()
        return {
            "loss": self.alpha * kd + gt,
            "kd": kd,
            "gt": gt,
            "distill_weight_mean": distill_weights.mean(),
        }


class WeightedDistillationLoss(nn.Module):
    """Distillation with named per-sample weightings (``"weighted"``): DCD's structure, each part a choice.

    Inputs s, t (B, K), positive at column 0. With H_i the teacher entropy at the weight temperature T_w
    (``weight_temperature``; None = the distillation temperature T) and the weight schemes, label terms l_i and
    distances d_i of :mod:`dcd_itr.distill.weighting` and of the module docstring::

        w    = label_weights(H; label_weighting, γ, λ)          # (B,), Σ w = 1
        r    = distill_weights(H, w; distill_weighting, κ)      # (B,), Σ r = 1
        kd   = Σ_i r_i · d_i                                    # d_i at the distillation temperature T
        gt   = Σ_i w_i · l_i
        loss = α · kd + (1 − α) · gt

    ("entropy", "paper", label="bce", T_w = T) is exactly ``dcd``; ("uniform", "uniform", label="ce") is exactly
    ``static``. Returns scalars ``loss``, ``kd``, ``gt`` and detached diagnostics ``teacher_entropy`` (mean H_i),
    ``label_ess`` = 1/Σ w_i² and ``distill_ess`` = 1/Σ r_i² (B when uniform).
    """

    def __init__(
        self,
        alpha: float = 0.2,  # as dcd, so a row changes only the weighting
        temperature: float = 1.0,  # as dcd
        distance: str = "mse",  # as dcd
        label: str = "bce",  # as dcd
        label_weighting: str = "tempered",  # the point of this loss: weights that vary, but not onto a few anchors
        distill_weighting: str = "confidence",  # weights the teacher's sure samples up, unlike the near-uniform paper's
        gamma: float = 0.5,  # "tempered": square root of the entropy, half-way between uniform and the paper's
        mix: float = 0.5,  # "mixed": half the paper's weights, half uniform
        kappa: float = 1.0,  # "confidence": a nat of entropy costs a factor e of weight
        weight_temperature: float | None = None,  # None: the distillation temperature, as in the paper
        teacher_norm: str = "none",  # as dcd
    ) -> None:
        super().__init__()
        _check_options(alpha, temperature, distance, label, teacher_norm)
        if label_weighting not in LABEL_WEIGHTINGS:
            raise ValueError(f"label_weighting must be one of {LABEL_WEIGHTINGS}, got {label_weighting!r}")
        if distill_weighting not in DISTILL_WEIGHTINGS:
            raise ValueError(
                f"distill_weighting must be one of {DISTILL_WEIGHTINGS}, got {distill_weighting!r}"
            )
        if not (gamma >= 0.0 and 0.0 <= mix <= 1.0 and kappa >= 0.0):
            raise ValueError(f"need gamma >= 0, 0 <= mix <= 1, kappa >= 0; got {gamma}, {mix}, {kappa}")
        if weight_temperature is not None and not weight_temperature > 0.0:
            raise ValueError(f"weight_temperature must be > 0 or None, got {weight_temperature}")
        self.alpha, self.temperature, self.distance, self.label = alpha, temperature, distance, label
        self.label_weighting, self.distill_weighting = label_weighting, distill_weighting
        self.gamma, self.mix, self.kappa = gamma, mix, kappa
        self.weight_temperature = temperature if weight_temperature is None else weight_temperature
        self.teacher_norm = teacher_norm

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, temperature={self.temperature}, distance={self.distance!r}, "
            f"label={self.label!r}, label_weighting={self.label_weighting!r}, "
            f"distill_weighting={self.distill_weighting!r}, gamma={self.gamma}, mix={self.mix}, "
            f"kappa={self.kappa}, weight_temperature={self.weight_temperature}, teacher_norm={self.teacher_norm!r}"
        )

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> dict[str, Tensor]:
        check_logits(student_logits, teacher_logits)
        teacher_logits = normalise_teacher(teacher_logits.detach(), self.teacher_norm)  # (B, K)
        with torch.no_grad():
            entropy = teacher_entropy(teacher_logits, self.weight_temperature)  # (B,)
            label_weight = label_weights(entropy, self.label_weighting, self.gamma, self.mix)  # (B,)
            distill_weight = distill_weights(
                entropy, label_weight, self.distill_weighting, self.kappa
            )  # (B,)
        distances = distillation_distance(student_logits, teacher_logits, self.temperature, self.distance)
        kd = (distill_weight * distances).sum()
        gt = (label_weight * label_term(student_logits, self.label)).sum()
        return {
            "loss": self.alpha * kd + (1.0 - self.alpha) * gt,
            "kd": kd,
            "gt": gt,
            "teacher_entropy": entropy.mean(),
            "label_ess": effective_sample_size(label_weight),
            "distill_ess": effective_sample_size(distill_weight),
        }


class LabelOnlyLoss(nn.Module):
    """No distillation (``"none"``): the student alone. ``teacher_logits`` is accepted and ignored.

    Inputs s (B, K), positive at column 0::

        loss = gt = mean_i CE(s_i, 0)   # softmax cross-entropy over the list

    Returns scalars ``loss`` and ``gt``.
    """

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> dict[str, Tensor]:
        check_logits(student_logits, teacher_logits)
        gt = positive_cross_entropy(student_logits).mean()
        return {"loss": gt, "gt": gt}


LOSSES: dict[str, type[nn.Module]] = {
    "dcd": DynamicDistillationLoss,
    "static": StaticDistillationLoss,
    "wsl": WeightedSoftLabelLoss,
    "weighted": WeightedDistillationLoss,
    "none": LabelOnlyLoss,
}


def build_loss(name: str, **kwargs: object) -> nn.Module:
    """Build the loss registered as ``name`` in :data:`LOSSES` with its constructor ``kwargs``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    loss_class = LOSSES[name]
    parameters = list(inspect.signature(loss_class.__init__).parameters.values())[1:]  # drop self
    accepted = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"loss {name!r} got unknown argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) if accepted else 'no arguments'}"
        )
    return loss_class(**kwargs)
