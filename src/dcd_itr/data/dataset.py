"""The in-memory description of a retrieval split: images, captions and the mapping between them.

Images are referenced by path and loaded lazily (see :mod:`dcd_itr.data.images`), so a split of 100K images costs
only its file names in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RetrievalSplit:
    """One split of an image-caption dataset.

    ``caption_to_image[j]`` is the row of ``image_ids`` that caption ``j`` describes; every image has at least one
    caption. Captions of one image are stored contiguously in the order the source lists them.
    """

    name: str
    image_ids: list[str]  # N stable ids (e.g. the source's filename or imgid)
    image_paths: list[Path]  # N absolute paths
    captions: list[str]  # M caption strings
    caption_to_image: np.ndarray  # (M,) int64 row into image_ids
    image_to_captions: list[list[int]] = field(init=False, repr=False)
    image_root: Path | None = None  # the folder every image path is inside (None: not recorded)

    def __post_init__(self) -> None:
        if len(self.image_ids) != len(self.image_paths):
            raise ValueError("image_ids and image_paths differ in length")
        if self.caption_to_image.shape != (len(self.captions),):
            raise ValueError("caption_to_image must have one entry per caption")
        owners: list[list[int]] = [[] for _ in self.image_ids]
        for caption_index, image_index in enumerate(self.caption_to_image.tolist()):
            owners[image_index].append(caption_index)
        object.__setattr__(self, "image_to_captions", owners)

    @classmethod
    def from_rows(
        cls, name: str, rows: list[tuple[str, Path, list[str]]], image_root: Path | None = None
    ) -> RetrievalSplit:
        """Build a split from ``(image_id, image_path, captions)`` rows, captions kept in the given order."""
        captions: list[str] = []
        owners: list[int] = []
        for row, (_, _, image_captions) in enumerate(rows):
            captions.extend(image_captions)
            owners.extend([row] * len(image_captions))
        return cls(
            name=name,
            image_ids=[image_id for image_id, _, _ in rows],
            image_paths=[image_path for _, image_path, _ in rows],
            captions=captions,
            caption_to_image=np.asarray(owners, dtype=np.int64),
            image_root=image_root,
        )

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def subset(self, image_rows: list[int], name: str | None = None) -> RetrievalSplit:
        """The split restricted to the given image rows (in that order) and all of their captions."""
        captions: list[str] = []
        owners: list[int] = []
        for new_row, old_row in enumerate(image_rows):
            for caption_index in self.image_to_captions[old_row]:
                captions.append(self.captions[caption_index])
                owners.append(new_row)
        return RetrievalSplit(
            name=name or self.name,
            image_ids=[self.image_ids[r] for r in image_rows],
            image_paths=[self.image_paths[r] for r in image_rows],
            captions=captions,
            caption_to_image=np.asarray(owners, dtype=np.int64),
            image_root=self.image_root,
        )
