"""The pixel region detector's parts against brute force: connected components, dilation."""

from __future__ import annotations

from collections import deque

import numpy as np

from dcd_itr.data.regions import box_iou, dilate, label_components


def flood_fill_components(mask: np.ndarray) -> list[frozenset]:
    """8-connected components by breadth-first search: the obvious, slow reference."""
    seen, components = np.zeros_like(mask), []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        queue, members = deque([start]), set()
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            members.add((int(y), int(x)))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if (
                        0 <= ny < mask.shape[0]
                        and 0 <= nx < mask.shape[1]
                        and mask[ny, nx]
                        and not seen[ny, nx]
                    ):
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        components.append(frozenset(members))
    return components


def test_components_match_flood_fill_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for density in (0.2, 0.4, 0.6):
        for _ in range(20):
            mask = rng.random((17, 23)) < density
            labels, count = label_components(mask)
            found = {
                frozenset((int(y), int(x)) for y, x in zip(*np.nonzero(labels == c), strict=True))
                for c in range(1, count + 1)
            }
            assert found == set(flood_fill_components(mask))
            assert ((labels > 0) == mask).all()
    assert label_components(np.zeros((4, 4), dtype=bool))[1] == 0


def test_diagonal_touch_joins_and_first_component_is_label_one() -> None:
    mask = np.zeros((4, 6), dtype=bool)
    mask[0, 4] = mask[1, 3] = True  # diagonal neighbours: one component
    mask[3, 0] = True
    labels, count = label_components(mask)
    assert count == 2 and labels[0, 4] == labels[1, 3] == 1 and labels[3, 0] == 2


def test_dilation_is_a_square_window() -> None:
    mask = np.zeros((9, 9), dtype=bool)
    mask[4, 4] = True
    assert dilate(mask, 2).sum() == 25 and dilate(mask, 2)[2:7, 2:7].all()
    assert (dilate(mask, 0) == mask).all()


def test_box_iou() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == 50 / 150
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
