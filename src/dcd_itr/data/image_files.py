"""A split's images as a lazy sequence: indexing loads the files (see :func:`~dcd_itr.data.images.load_rgb`).

Cross-encoders that work on raw images (the ViLT / BridgeTower / BLIP adapters, a user's own class) take lists of
PIL images. ``ImageFiles(split.image_paths)`` can be handed to anything that slices inputs in batches
(:func:`dcd_itr.evaluate.encode_all`) without holding the decoded images of a whole split in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import overload

from PIL import Image

from dcd_itr.data.images import load_rgb


class ImageFiles(Sequence):
    """``files[i]`` -> an 8-bit RGB PIL image read from ``paths[i]``; ``files[a:b]`` -> a list of them."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(path) for path in paths]

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...

    @overload
    def __getitem__(self, index: slice) -> list[Image.Image]: ...

    def __getitem__(self, index: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(index, slice):
            return [load_rgb(path) for path in self.paths[index]]
        return load_rgb(self.paths[index])
