"""The one place where a teacher is frozen."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from dcd_itr.models.registry import load_model


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Eval mode (no dropout) and no gradients, for good: the teacher only scores, never learns."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def load_frozen_teacher(folder: Path) -> nn.Module:
    """A saved cross-encoder folder as a frozen teacher."""
    return freeze_teacher(load_model(Path(folder)))
