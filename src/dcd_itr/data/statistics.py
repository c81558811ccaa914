"""A dataset at a glance: images, captions and captions per image for each split."""

from __future__ import annotations

import numpy as np

from dcd_itr.data.dataset import SPLITS, RetrievalSplit


def dataset_statistics(splits: dict[str, RetrievalSplit]) -> str:
    """A small table: images, captions and captions per image for each split."""
    lines = [f"{'split':<6} {'images':>7} {'captions':>9} {'captions/image (min/mean/max)':>30}"]
    for name in SPLITS:
        if name not in splits:
            continue
        split = splits[name]
        per_image = np.asarray([len(c) for c in split.image_to_captions])
        spread = f"{per_image.min()} / {per_image.mean():.2f} / {per_image.max()}"
        lines.append(f"{name:<6} {split.num_images:>7} {split.num_captions:>9} {spread:>30}")
    total_images = sum(s.num_images for s in splits.values())
    total_captions = sum(s.num_captions for s in splits.values())
    lines.append(f"{'total':<6} {total_images:>7} {total_captions:>9}")
    return "\n".join(lines)
