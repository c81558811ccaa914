"""A generic object detector for images of things on a plain background: connected non-background components.

``detect_regions(image)`` finds every pixel that differs visibly from the background, groups pixels that lie
within ``merge_gap`` pixels of each other (so that the separate strokes of one emoji, such as the three stars of
"sparkles", are one object), drops specks, and returns one box per group. It reads only the pixels: the scenes
benchmark's teacher uses it to find its region tokens, never the generator's boxes.

Steps, all in numpy: foreground mask -> dilation by ``merge_gap // 2`` (a square window, so fragments up to
``merge_gap`` apart touch) -> connected components of the dilated mask (8-connected row runs joined by a
union-find) -> box of the *original* foreground pixels of each component -> drop components with fewer than
``min_pixels`` foreground pixels -> sort by (y0, x0, y1, x1) (reading order, deterministic).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1): pixel box, x1 / y1 exclusive like PIL's getbbox

BACKGROUND = (255, 255, 255)  # the scenes (and emoji) benchmark's canvas colour
TOLERANCE = 8  # a pixel is foreground when a channel differs from the background by more: ignores faint halos
MERGE_GAP = 6  # fragments at most this far apart are one object; scenes keep objects >= 12 px apart
MIN_PIXELS = 12  # components with fewer foreground pixels are specks (resampling dust), not objects


def foreground_mask(
    image: Image.Image, background: tuple[int, int, int] = BACKGROUND, tolerance: int = TOLERANCE
) -> np.ndarray:
    """(H, W) bool: pixels whose colour differs from ``background`` by more than ``tolerance`` in a channel."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)  # (H, W, 3)
    difference = np.abs(pixels - np.asarray(background, dtype=np.int16)).max(axis=2)  # (H, W)
    return difference > tolerance


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of an (H, W) mask by a (2 radius + 1) square window (separable max filter)."""
    if radius <= 0:
        return mask.copy()
    grown = mask.copy()
    for axis in (0, 1):
        source = grown.copy()
        for shift in range(1, radius + 1):
            lead = [slice(None)] * 2
            trail = [slice(None)] * 2
            lead[axis], trail[axis] = slice(shift, None), slice(None, -shift)
            grown[tuple(trail)] |= source[tuple(lead)]
            grown[tuple(lead)] |= source[tuple(trail)]
    return grown


def _find(parent: list[int], node: int) -> int:
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of an (H, W) bool mask -> (labels (H, W) int32 with 0 = background, count).

    Runs of foreground in each row are the nodes; a run joins every run of the previous row that overlaps it
    or touches it diagonally. Labels are numbered in order of each component's first run (row-major).
    """
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)  # (H, W + 1): +1 where a run starts, -1 one past where it ends
    rows_start, cols_start = (a.tolist() for a in np.nonzero(edges == 1))
    cols_stop = np.nonzero(edges == -1)[1].tolist()  # same row-major order as the starts
    parent = list(range(len(rows_start)))
    previous: list[int] = []  # run ids of the row above the current one
    current: list[int] = []  # run ids of the current row so far
    current_row = -2
    for run, (row, start, stop) in enumerate(zip(rows_start, cols_start, cols_stop, strict=True)):
        if row != current_row:
            previous = current if current_row == row - 1 else []
            current, current_row = [], row
        for other in previous:
            if cols_start[other] <= stop and start <= cols_stop[other]:  # overlap, or diagonal touch
                root_a, root_b = _find(parent, run), _find(parent, other)
                if root_a != root_b:
                    parent[max(root_a, root_b)] = min(root_a, root_b)
        current.append(run)
    labels = np.zeros((height, width), dtype=np.int32)
    numbering: dict[int, int] = {}
    for run, (row, start, stop) in enumerate(zip(rows_start, cols_start, cols_stop, strict=True)):
        root = _find(parent, run)
        labels[row, start:stop] = numbering.setdefault(root, len(numbering) + 1)
    return labels, len(numbering)


def detect_regions(
    image: Image.Image,
    background: tuple[int, int, int] = BACKGROUND,
    tolerance: int = TOLERANCE,
    merge_gap: int = MERGE_GAP,
    min_pixels: int = MIN_PIXELS,
) -> list[Box]:
    """Boxes (x0, y0, x1, y1) of the objects in ``image``, sorted by (y0, x0, y1, x1); see the module docstring."""
    mask = foreground_mask(image, background, tolerance)  # (H, W)
    labels, count = label_components(dilate(mask, (merge_gap + 1) // 2))
    if count == 0:
        return []
    rows, cols = np.nonzero(mask)
    owner = labels[rows, cols]  # (P,) component of each foreground pixel, >= 1 (dilation covers the mask)
    pixels = np.bincount(owner, minlength=count + 1)
    big = np.iinfo(np.int64).max
    x0 = np.full(count + 1, big, dtype=np.int64)
    y0 = np.full(count + 1, big, dtype=np.int64)
    x1 = np.full(count + 1, -1, dtype=np.int64)
    y1 = np.full(count + 1, -1, dtype=np.int64)
    np.minimum.at(x0, owner, cols)
    np.minimum.at(y0, owner, rows)
    np.maximum.at(x1, owner, cols + 1)
    np.maximum.at(y1, owner, rows + 1)
    boxes = [
        (int(x0[c]), int(y0[c]), int(x1[c]), int(y1[c]))
        for c in range(1, count + 1)
        if pixels[c] >= min_pixels
    ]
    return sorted(boxes, key=lambda box: (box[1], box[0], box[3], box[2]))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (exclusive ends)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0, width) * max(0, height)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
