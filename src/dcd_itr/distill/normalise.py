"""Per-list normalisation of the teacher's logits before the distillation temperature.

A cross-encoder's logits and a dual's scaled cosines live on different scales: the scenes grounded teacher puts
its positive ~19 logits above the best negative of a K = 8 list (row std ~8), so softmax(t / T) at T = 1 is a
one-hot that carries no ranking of the negatives, and logit MSE asks a student bounded by its logit scale to
reproduce numbers it cannot reach. Standardising each list first keeps the teacher's order and relative gaps but
puts every list on one scale, so the temperature T then sets how soft the targets are, list by list.

``teacher_norm=``, per anchor i over its K candidates j (population statistics over the list)::

    "none":   t'_ij = t_ij
    "zscore": t'_ij = (t_ij − μ_i) / (σ_i + ε),  μ_i = mean_j t_ij,  σ_i = sqrt(mean_j (t_ij − μ_i)²),  ε = 1e-6

A constant list (σ_i = 0) becomes all zeros (uniform targets) instead of a division by zero.
"""

from __future__ import annotations

from torch import Tensor

TEACHER_NORMS = ("none", "zscore")
EPSILON = 1e-6  # keeps a constant list finite (all zeros); far below any real list's spread


def standardise_logits(logits: Tensor, epsilon: float = EPSILON) -> Tensor:
    """Each row's z-score: (t − mean) / (population std + ε). (B, K) -> (B, K)."""
    centred = logits - logits.mean(dim=-1, keepdim=True)  # (B, K)
    spread = centred.pow(2).mean(dim=-1, keepdim=True).sqrt()  # (B, 1)
    return centred / (spread + epsilon)


def normalise_teacher(logits: Tensor, kind: str) -> Tensor:
    """The teacher's logits (B, K) under ``kind`` (see the module docstring); the input is not modified."""
    if kind == "none":
        return logits
    if kind == "zscore":
        return standardise_logits(logits)
    raise ValueError(f"teacher_norm must be one of {TEACHER_NORMS}, got {kind!r}")
