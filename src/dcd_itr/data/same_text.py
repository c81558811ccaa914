"""Captions whose text is the same: the relation that candidate lists, in-batch negatives and evaluation respect.

A split may hold one caption string on several images (the emoji benchmark: all 261 flags carry "flag", 13
keycaps "keycap"; COCO has a few repeated captions too). Such a caption is not a negative of the other images: no
model can tell which of them it was written for. So this package uses one relation everywhere::

    related(i, j)  <=>  image i has a caption whose normalised text equals caption j's normalised text

(every caption is related to its own image). Candidate pools and in-batch InfoNCE never use a related pair as a
negative, and evaluation treats text-identical captions as *one query* (see :mod:`dcd_itr.metrics`): each distinct
normalised text is one caption query and one caption candidate, correct for every image that has it.

Normalisation (:func:`normalise_text`): Unicode NFKC, case-folded, whitespace runs collapsed, ends stripped,
trailing sentence punctuation (``.``, ``!``, ``?``) removed: "A dog." and "a  dog" are the same text.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def normalise_text(text: str) -> str:
    """The comparison form of a caption (see the module docstring)."""
    folded = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return folded.rstrip(".!?").rstrip()


@dataclass(frozen=True)
class TextGroups:
    """Captions grouped by normalised text, and which images have which text.

    ``caption_group[j]`` is the group (distinct normalised text) of caption j, numbered in order of first
    appearance; ``representatives[g]`` is the first caption of group g; ``pair_keys`` holds ``image * G + group``
    for every (image, group) that occurs, sorted and unique — the relation of the module docstring.
    """

    caption_group: Tensor  # (M,) int64
    representatives: Tensor  # (G,) int64 caption rows
    pair_keys: Tensor  # (S,) int64 sorted unique image * G + group
    num_images: int

    @classmethod
    def from_captions(cls, captions: Sequence[str], caption_to_image: np.ndarray | Tensor) -> TextGroups:
        owners = torch.as_tensor(np.asarray(caption_to_image), dtype=torch.int64).cpu()  # (M,)
        if len(captions) != len(owners):
            raise ValueError(f"{len(captions)} captions but caption_to_image has {len(owners)} entries")
        group_of: dict[str, int] = {}
        groups, representatives = [], []
        for row, text in enumerate(captions):
            key = normalise_text(text)
            if key not in group_of:
                group_of[key] = len(representatives)
                representatives.append(row)
            groups.append(group_of[key])
        caption_group = torch.tensor(groups, dtype=torch.int64)  # (M,)
        num_images = int(owners.max()) + 1 if len(owners) else 0
        keys = torch.unique(owners * len(representatives) + caption_group)  # sorted
        return cls(caption_group, torch.tensor(representatives, dtype=torch.int64), keys, num_images)

    @property
    def num_groups(self) -> int:
        return len(self.representatives)

    @property
    def has_duplicates(self) -> bool:
        """True when some normalised text occurs on more than one caption."""
        return self.num_groups < len(self.caption_group)

    def related_groups(self, images: Tensor, groups: Tensor) -> Tensor:
        """Bool tensor (broadcast shape of the inputs): does image ``images[...]`` have text ``groups[...]``?"""
        keys = images.long() * self.num_groups + groups.long()
        pair_keys = self.pair_keys.to(keys.device)
        found = torch.searchsorted(pair_keys, keys).clamp(max=len(pair_keys) - 1)
        return pair_keys[found] == keys

    def related(self, images: Tensor, captions: Tensor) -> Tensor:
        """Bool tensor (broadcast shape): is caption ``captions[...]`` a positive of image ``images[...]``?"""
        return self.related_groups(images, self.caption_group.to(captions.device)[captions])

    def max_related_captions(self) -> int:
        """The most captions any one image is related to (its own and every text-identical one)."""
        captions_per_group = torch.bincount(self.caption_group, minlength=self.num_groups)  # (G,)
        images = self.pair_keys // self.num_groups
        per_image = torch.zeros(self.num_images, dtype=torch.int64)
        per_image.scatter_add_(0, images, captions_per_group[self.pair_keys % self.num_groups])
        return int(per_image.max()) if len(per_image) else 0

    def max_related_images(self) -> int:
        """The most images any one caption is related to (the images that have its text)."""
        images_per_group = torch.bincount(self.pair_keys % self.num_groups, minlength=self.num_groups)
        return int(images_per_group.max()) if self.num_groups else 0
