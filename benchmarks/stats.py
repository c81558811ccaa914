"""Paired comparisons across seeds: mean difference, its 95% confidence interval, and the verdict it supports.

Two rows of an ablation trained with the same seeds (same data order and initial weights per seed) are paired:
for seed s the difference is d_s = a_s − b_s, and with n seeds, mean d̄ and sample standard deviation
s_d = sqrt(Σ (d_s − d̄)² / (n − 1)), the two-sided interval is

    d̄ ± t_{0.975, n−1} · s_d / sqrt(n)

(Student's t; pairing removes the between-seed variance both rows share). The verdict follows from the interval
alone: above 0 -> "better", below 0 -> "worse", containing 0 -> "no difference detected" (not "equal": the
interval's width says how large a difference could still hide).

The t quantiles are a table for 1..30 degrees of freedom (scipy is not a dependency of the package), and the
Cornish-Fisher expansion beyond (error < 1e-4 at 31 degrees of freedom).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

Z_975 = 1.959963984540054  # the standard normal's 0.975 quantile
T_975 = (  # t_{0.975, df} for df = 1..30
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836,
    2.446911851, 2.364624252, 2.306004135, 2.262157163, 2.228138852,
    2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546,
    2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447,
    2.079613845, 2.073873068, 2.068657610, 2.063898562, 2.059538553,
    2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)  # fmt: skip


def t_quantile_975(degrees_of_freedom: int) -> float:
    """The 0.975 quantile of Student's t with ``degrees_of_freedom`` >= 1 (two-sided 95%)."""
    if degrees_of_freedom < 1:
        raise ValueError(f"need at least 1 degree of freedom (2 paired seeds), got {degrees_of_freedom}")
    if degrees_of_freedom <= len(T_975):
        return T_975[degrees_of_freedom - 1]
    z, df = Z_975, degrees_of_freedom
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class PairedDifference:
    """a − b over n paired seeds: mean, sample std of the differences, and the 95% interval of the mean."""

    mean: float
    std: float
    n: int
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no difference detected"


def paired_difference(a: list[float], b: list[float]) -> PairedDifference:
    """The paired mean difference a − b with its 95% t interval; ``a[s]`` and ``b[s]`` share seed s."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two equally long lists of >= 2 paired values, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    mean, std = statistics.mean(differences), statistics.stdev(differences)
    half_width = t_quantile_975(len(differences) - 1) * std / math.sqrt(len(differences))
    return PairedDifference(mean, std, len(differences), mean - half_width, mean + half_width)


def verdict_sentence(name_a: str, name_b: str, difference: PairedDifference, unit: str = "RSUM") -> str:
    """E.g. ``dcd − static = +1.2 RSUM (95% CI −3.4…5.8, 5 paired seeds): no difference detected``."""
    outcome = difference.verdict
    if outcome != "no difference detected":
        outcome = f"{name_a} {outcome}"
    return (
        f"{name_a} − {name_b} = {difference.mean:+.1f} {unit} (95% CI {difference.low:.1f}…{difference.high:.1f}, "
        f"{difference.n} paired seeds): {outcome}"
    )


def mean_and_std(values: list[float]) -> str:
    """``mean ± sample std`` (n − 1 in the denominator), or the single value."""
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
