"""Validation of a grounded cross student: Recall@K / RSUM and the twin scores on (a subset of) val twin pairs.

Scoring every val pair costs N x M fusion passes (300 x 600 on the scenes defaults: minutes on one CPU core), so a
student may validate, like the grounded teacher, on the first ``pairs`` twin pairs of val (both images, all their
captions). Datasets without twins validate on the whole split without twin scores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from dcd_itr.data.scenes import split_twin_index
from dcd_itr.features import SplitFeatures
from dcd_itr.tasks.common import validate_cross
from dcd_itr.tasks.grounded_teacher import validate_grounded, validation_subset


def grounded_validator(
    data: str | Path, val: SplitFeatures, pairs: int | None
) -> Callable[[nn.Module, SplitFeatures], dict[str, float]]:
    """``validate(model, features)`` for a grounded student; the val subset is taken once, here."""
    twin = split_twin_index(data, val.split.name)
    if twin is None:
        return lambda model, features: validate_cross(model, features)
    twin = np.asarray(twin)
    subset, subset_twin = validation_subset(val, twin, pairs if pairs is not None else len(twin))

    def validate(model: nn.Module, features: SplitFeatures) -> dict[str, float]:
        return validate_grounded(model, subset, subset_twin)

    return validate
