"""Compressed cross-encoder students cut from a frozen teacher, and their random-init control (DCD_SPEC "Students").

Two ways to build a student of the same shape (``L/2`` fusion layers when the teacher has ``L``):

- ``init="cut"``: the teacher's fusion layers at ``layer_indices`` (default: half, spread over the depth, first and
  last included; for L = 2 that is layer 0 alone), everything else copied;
- ``init="random"``: the control. The fusion layers, poolers and head are freshly initialised (the module's own
  init, under the run's seed); every other part is copied from the teacher exactly as for the cut. So the control
  differs from the cut *only* in what the cut inherits from the teacher's fusion stack, and both read the same
  frozen grounding and similarity path: the difference between them is the value of cutting.

Trainable parts (:func:`trainable_prefixes`): the fusion layers, the pooler(s) and the ranking head. Everything
else — projections, the grounding, the similarity path(s), token inputs and position embeddings — is frozen with
:func:`freeze_non_fusion` (``requires_grad=False``), so a student's paths-only term is the teacher's, and the
interaction gain it keeps is what its fusion stack adds. :func:`student_parameter_groups` gives the optimizer the
fusion layers at ``fusion_lr_multiplier`` x the base rate (the reference recipe's 5x) and poolers + head at the
base rate.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from dcd_itr.errors import ConfigError
from dcd_itr.models.fusion import FusionCrossEncoder, cut_student, spread_layer_indices
from dcd_itr.models.grounded import GroundedCrossEncoder, cut_grounded_student

STUDENT_INITS = ("cut", "random")

# parameter-name prefixes that train in a compressed student; the first is the fusion stack (lr x multiplier)
_TRAINABLE = {
    GroundedCrossEncoder: ("layers.", "final_norm.", "head."),  # fusion, CLS pooler norm, ranking head
    FusionCrossEncoder: ("layers.", "poolers.", "head."),  # fusion, METER's two poolers, ranking head
}


def trainable_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Name prefixes of the parameters a compressed student trains: (fusion layers, pooler(s), head)."""
    for kind, prefixes in _TRAINABLE.items():
        if isinstance(model, kind):
            return prefixes
    raise ConfigError(
        f"a compressed cross student is cut from a fusion or grounded cross-encoder, not {type(model).__name__}"
    )


def default_layer_indices(teacher: nn.Module) -> list[int]:
    """Half the teacher's fusion layers (at least one), spread over the depth, first and last included."""
    depth = teacher.fusion_depth
    return spread_layer_indices(depth, max(1, depth // 2))


def build_cross_student(
    teacher: nn.Module,
    layer_indices: list[int] | None = None,  # None -> default_layer_indices(teacher)
    init: str = "cut",  # cut | random (the control; see the module docstring)
    seed: int = 0,  # the random control's init of fusion layers, poolers and head
) -> nn.Module:
    """A student of ``len(layer_indices)`` fusion layers, non-fusion parts copied from ``teacher`` and frozen.
    The teacher is left untouched; the student is in training mode."""
    if init not in STUDENT_INITS:
        raise ConfigError(f"cross_init must be one of {STUDENT_INITS}, got {init!r}")
    prefixes = trainable_prefixes(teacher)
    indices = list(layer_indices) if layer_indices else default_layer_indices(teacher)
    if any(not 0 <= i < teacher.fusion_depth for i in indices):
        raise ConfigError(
            f"cross_layers {indices}: the teacher has fusion layers 0..{teacher.fusion_depth - 1}"
        )
    cut = (
        cut_grounded_student(teacher, indices)
        if isinstance(teacher, GroundedCrossEncoder)
        else cut_student(teacher, indices)
    )
    if init == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = type(teacher)(copy.deepcopy(cut.config))
        state = cut.state_dict()
        state.update({k: v for k, v in fresh.state_dict().items() if k.startswith(prefixes)})
        cut.load_state_dict(state)
    freeze_non_fusion(cut)
    return cut.train()


def freeze_non_fusion(student: nn.Module) -> nn.Module:
    """``requires_grad`` True on the fusion layers, poolers and head, False on everything else."""
    prefixes = trainable_prefixes(student)
    for name, parameter in student.named_parameters():
        parameter.requires_grad_(name.startswith(prefixes))
    return student


def student_parameter_groups(
    student: nn.Module, lr: float, fusion_lr_multiplier: float
) -> list[dict[str, Any]]:
    """Optimizer groups: poolers + head at ``lr``, fusion layers at ``lr * fusion_lr_multiplier``; frozen parts
    are left out."""
    fusion_prefix = trainable_prefixes(student)[0]
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not n.startswith(fusion_prefix)]},
        {"params": [p for n, p in named if n.startswith(fusion_prefix)], "lr": lr * fusion_lr_multiplier},
    ]
