"""Per-sample weights that actually vary, the label term's two forms, and pairwise distillation distances.

DCD's own weights (DCD_SPEC.md step 3) are nearly uniform where it matters: w sums to 1 over the batch, so
r = softmax_over_batch((1 − w)²) stays within a factor e of uniform (issue 14 measured r·B ∈ [0.58, 1.03] at
B = 64), and
only the label weights w are dynamic in practice. The schemes here make each weight a named choice, with its
formula below; every weight vector sums to 1 over the batch (B anchors) and is computed from the detached teacher.

Label weights ``w`` (``label_weighting=``), from the teacher entropy H_i at the *weight temperature* T_w::

    "uniform":   w_i = 1 / B
    "entropy":   w_i = H_i / Σ_b H_b                          # the paper's
    "tempered":  w_i = H_i^γ / Σ_b H_b^γ                       # γ < 1 flattens, γ = 1 is "entropy", γ = 0 uniform
    "mixed":     w_i = (1 − λ) · H_i / Σ_b H_b + λ / B         # λ in [0, 1] mixes the paper's with uniform

Distillation weights ``r`` (``distill_weighting=``)::

    "uniform":    r_i = 1 / B
    "paper":      r_i = softmax_over_batch((1 − w_i)²)          # the paper's, from the label weights above
    "confidence": r_i = exp(−κ · H_i) / Σ_b exp(−κ · H_b)       # learn most from the samples the teacher is sure of

A weight vector's effective sample size is ESS = 1 / Σ_i w_i² (B when uniform, 1 when one sample holds all);
losses report it so a run shows how far from uniform its weights really were.

Label term per sample (``label=``), target y = (1, 0, ..., 0)::

    "ce":  l_i = −log softmax(s_i)_0                           # softmax cross-entropy over the list
    "bce": l_i = mean_j BCEWithLogits(s_ij, y_j)               # the reference code's

Pairwise distances (the teacher's order over the K list, not its scale; a cross-encoder's logits and a dual's
scaled cosines live on different scales, which logit MSE compares directly), per sample i, times T²:

    "margin_mse": d_i = T² · mean_{j>=1} ((t_i0 − t_ij)/T − (s_i0 − s_ij)/T)²   # Hofstätter et al.'s margin-MSE
    "ranknet":    d_i = T² · mean_{j != k} BCE(σ((s_ij − s_ik)/T), σ((t_ij − t_ik)/T))
                        − the same with the student replaced by the teacher      # so d_i = 0 when they agree

The listwise ListNet distance (KL between the teacher's and the student's softmax over the K list) is
``distance="kl"`` of :mod:`dcd_itr.distill.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LABEL_WEIGHTINGS = ("uniform", "entropy", "tempered", "mixed")
DISTILL_WEIGHTINGS = ("uniform", "paper", "confidence")
LABEL_TERMS = ("ce", "bce")
PAIRWISE_DISTANCES = ("margin_mse", "ranknet")


def effective_sample_size(weights: Tensor) -> Tensor:
    """1 / Σ_i w_i² of weights (B,) that sum to 1: B for uniform weights, 1 when one sample holds all."""
    return 1.0 / weights.pow(2).sum()


def _normalised(values: Tensor) -> Tensor:
    """values / Σ values, or uniform 1/B when the sum is zero (e.g. every entropy is 0)."""
    total = values.sum()
    tiny = torch.finfo(values.dtype).tiny
    uniform = torch.full_like(values, 1.0 / values.numel())
    return torch.where(total > tiny, values / total.clamp_min(tiny), uniform)


@torch.no_grad()
def label_weights(entropy: Tensor, scheme: str, gamma: float = 0.5, mix: float = 0.5) -> Tensor:
    """Label weights w (B,) from teacher entropies H (B,) under ``scheme`` (see the module docstring)."""
    if scheme == "uniform":
        return torch.full_like(entropy, 1.0 / entropy.numel())
    if scheme == "entropy":
        return _normalised(entropy)
    if scheme == "tempered":
        return _normalised(entropy.clamp_min(0.0).pow(gamma))
    if scheme == "mixed":
        return (1.0 - mix) * _normalised(entropy) + mix / entropy.numel()
    raise ValueError(f"label_weighting must be one of {LABEL_WEIGHTINGS}, got {scheme!r}")


@torch.no_grad()
def distill_weights(entropy: Tensor, label_weight: Tensor, scheme: str, kappa: float = 1.0) -> Tensor:
    """Distillation weights r (B,) from entropies H (B,) and label weights w (B,) under ``scheme``."""
    if scheme == "uniform":
        return torch.full_like(entropy, 1.0 / entropy.numel())
    if scheme == "paper":
        return torch.softmax((1.0 - label_weight).pow(2), dim=0)
    if scheme == "confidence":
        return torch.softmax(-kappa * entropy, dim=0)
    raise ValueError(f"distill_weighting must be one of {DISTILL_WEIGHTINGS}, got {scheme!r}")


def label_term(student_logits: Tensor, kind: str) -> Tensor:
    """Per-sample label loss l_i (B,) of logits (B, K) with the positive at column 0 (see the module docstring)."""
    if kind == "ce":
        return -F.log_softmax(student_logits, dim=-1)[:, 0]
    if kind == "bce":
        targets = torch.zeros_like(student_logits)  # (B, K)
        targets[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(student_logits, targets, reduction="none").mean(dim=-1)
    raise ValueError(f"label must be one of {LABEL_TERMS}, got {kind!r}")


def pairwise_distance(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, kind: str
) -> Tensor:
    """Per-sample pairwise distance d_i (B,), including T², for logits (B, K) (see the module docstring)."""
    student, teacher = student_logits / temperature, teacher_logits / temperature  # (B, K)
    if kind == "margin_mse":
        student_margins = student[:, :1] - student[:, 1:]  # (B, K-1)
        teacher_margins = teacher[:, :1] - teacher[:, 1:]  # (B, K-1)
        per_sample = (teacher_margins - student_margins).pow(2).mean(dim=-1)
    elif kind == "ranknet":
        num_candidates = student.shape[1]
        off_diagonal = ~torch.eye(num_candidates, dtype=torch.bool, device=student.device)  # (K, K)
        student_diff = (student[:, :, None] - student[:, None, :])[:, off_diagonal]  # (B, K(K-1))
        teacher_diff = (teacher[:, :, None] - teacher[:, None, :])[:, off_diagonal]  # (B, K(K-1))
        teacher_prob = torch.sigmoid(teacher_diff)  # (B, K(K-1)) P(j above k) by the teacher
        cross = F.binary_cross_entropy_with_logits(student_diff, teacher_prob, reduction="none")
        floor = F.binary_cross_entropy_with_logits(teacher_diff, teacher_prob, reduction="none")
        per_sample = (cross - floor).mean(dim=-1)  # the teacher's own entropy removed: 0 when they agree
    else:
        raise ValueError(f"pairwise distance must be one of {PAIRWISE_DISTANCES}, got {kind!r}")
    return temperature**2 * per_sample  # (B,)
