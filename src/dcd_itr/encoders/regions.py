"""The region view: one feature per detected object, with its box, from a frozen image tower run on crops.

For every image a detector that works on the pixels (default: :func:`dcd_itr.data.regions.detect_regions`, the
connected non-background components) returns boxes; each box is cropped with a small margin, padded to a square on
white (so the tower sees the object undistorted) and encoded by the wrapped tower at its ``image_size``. The
result is a :data:`~dcd_itr.interfaces.FeatureBatch` with a fixed number ``R = max_regions`` of slots::

    tokens (B, R, C)   the wrapped tower's pooled feature of each crop (zeros in empty slots)
    mask   (B, R)      True at real regions
    boxes  (B, R, 4)   (x0, y0, x1, y1) of each region divided by the image's width / height (zeros when empty)
    pooled (B, C)      the mean of the real regions' features

so it caches with :func:`dcd_itr.features.build_feature_cache` like any tower (view ``regions-efficientnet-lite0@96``
-> folder ``image-regions-efficientnet-lite0@96``). An image where the detector finds nothing gets the whole
image as its one region. With more than ``R`` regions the ``R`` largest are kept, in the detector's order.
Identical crops within one ``encode`` call are encoded once (a scene and its twin share most of their pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from dcd_itr.encoders.base import ImageTower
from dcd_itr.interfaces import FeatureBatch

Box = tuple[int, int, int, int]
Detector = Callable[[Image.Image], Sequence[Sequence[int]]]
DETECTOR_VERSION = 1  # bump when the default detector's output changes, so cached region views are rebuilt


def default_detector(image: Image.Image) -> Sequence[Sequence[int]]:
    """The pixel detector of the scenes benchmark (imported lazily: the data package is optional here)."""
    from dcd_itr.data.regions import detect_regions

    return detect_regions(image)


def crop_square(image: Image.Image, box: Sequence[int], margin: float) -> Image.Image:
    """``box`` grown by ``margin`` x its larger side (rounded to whole pixels), clipped to the image, centred on a white
    square so the object keeps its aspect ratio when the tower resizes it."""
    x0, y0, x1, y1 = (int(v) for v in box)
    pad = round(margin * max(x1 - x0, y1 - y0))
    x0, y0 = max(0, x0 - pad), max(0, y0 - pad)
    x1, y1 = min(image.width, x1 + pad), min(image.height, y1 + pad)
    crop = image.crop((x0, y0, x1, y1))
    side = max(crop.width, crop.height, 1)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    return square


def keep_largest(boxes: Sequence[Sequence[int]], limit: int) -> list[Box]:
    """At most ``limit`` boxes: the largest by area (ties: earlier first), in their original order."""
    boxes = [tuple(int(v) for v in box) for box in boxes]
    if len(boxes) <= limit:
        return boxes
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    keep = sorted(sorted(range(len(boxes)), key=lambda i: (-areas[i], i))[:limit])
    return [boxes[i] for i in keep]


class RegionTower(ImageTower):
    """Detected regions of an image, each encoded by a frozen ``inner`` tower (see the module docstring)."""

    def __init__(
        self,
        inner: ImageTower,
        detector: Detector | None = None,  # None -> the scenes' connected-component detector
        max_regions: int = 6,  # scenes hold up to 4 objects; 2 slots spare for a fragmented one
        margin: float = 0.08,  # a few pixels of background around each object, as in the single-emoji renders
    ) -> None:
        super().__init__()
        if max_regions < 1:
            raise ValueError(f"max_regions must be >= 1, got {max_regions}")
        self.inner = inner
        self.detector = detector or default_detector
        self.max_regions, self.margin = max_regions, margin
        self.name = f"regions-{inner.name}"
        self.image_size, self.mean, self.std = inner.image_size, inner.mean, inner.std
        self.token_dim = self.pooled_dim = inner.pooled_dim
        self.freeze()

    def detect(self, image: Image.Image) -> list[Box]:
        boxes = keep_largest(self.detector(image), self.max_regions)
        return boxes or [(0, 0, image.width, image.height)]

    @torch.inference_mode()
    def encode(self, images: list[Image.Image], batch_size: int = 64) -> FeatureBatch:
        """PIL images -> tokens (B, R, C), mask (B, R), boxes (B, R, 4), pooled (B, C); CPU tensors."""
        if not images:
            raise ValueError("encode needs at least one image")
        images = [image.convert("RGB") for image in images]
        boxes = [self.detect(image) for image in images]
        crops = [
            crop_square(image, box, self.margin)
            for image, found in zip(images, boxes, strict=True)
            for box in found
        ]
        # identical crops (a scene and its swapped twin share their objects' pixels) are encoded once
        unique: dict[bytes, int] = {}
        slots = [
            unique.setdefault(crop.tobytes() + bytes(str(crop.size), "ascii"), len(unique)) for crop in crops
        ]
        first = {slot: crop for slot, crop in reversed(list(zip(slots, crops, strict=True)))}
        distinct = self.inner.encode([first[i] for i in range(len(unique))], batch_size=batch_size)
        crop_features = distinct["pooled"].float()[torch.tensor(slots)]  # (total, C)
        count, dim = len(images), crop_features.shape[1]
        tokens = torch.zeros(count, self.max_regions, dim)
        mask = torch.zeros(count, self.max_regions, dtype=torch.bool)
        normalised = torch.zeros(count, self.max_regions, 4)
        row = 0
        for index, (image, found) in enumerate(zip(images, boxes, strict=True)):
            tokens[index, : len(found)] = crop_features[row : row + len(found)]
            mask[index, : len(found)] = True
            scale = torch.tensor([image.width, image.height, image.width, image.height], dtype=torch.float32)
            normalised[index, : len(found)] = torch.tensor(found, dtype=torch.float32) / scale
            row += len(found)
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, C)
        return {"tokens": tokens, "mask": mask, "boxes": normalised, "pooled": pooled}

    def forward(self, pixels: torch.Tensor) -> FeatureBatch:
        raise NotImplementedError("RegionTower works on PIL images: call encode()")

    def fingerprint(self) -> dict[str, Any]:
        detector = self.detector
        return {
            **self.inner.fingerprint(),
            "tower": type(self).__name__,
            "name": self.name,
            "inner": self.inner.name,
            "detector": f"{detector.__module__}.{getattr(detector, '__qualname__', type(detector).__name__)}",
            "detector_version": DETECTOR_VERSION,
            "max_regions": self.max_regions,
            "margin": self.margin,
        }


def efficientnet_regions(variant: str, image_size: int | None = None, device="cpu", **options) -> RegionTower:
    """``regions-efficientnet-liteN@S``: EfficientNet-Lite pooled features of each region's crop at S px
    (default 96: objects are ~50-90 px in a 224 px scene, and one CPU core encodes ~2x more crops than at 128)."""
    from dcd_itr.encoders.efficientnet import EfficientNetLiteTower

    inner = EfficientNetLiteTower(variant, image_size=image_size or 96, device=device)
    return RegionTower(inner, **options)
