"""Caption strings shared by several captions of one split (normalised as in dcd_itr.data.same_text).

    python benchmarks/duplicate_captions.py data/emoji

Prints, per split: images, captions, distinct normalised texts, the texts that occur more than once and how many
captions carry them, and the most images sharing one text (with that text).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from dcd_itr.data.loading import load_split
from dcd_itr.data.same_text import TextGroups, normalise_text


def main() -> None:
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "data/emoji")
    for name in ("train", "val", "test"):
        split = load_split(data, name)
        groups = TextGroups.from_captions(split.captions, split.caption_to_image)
        counts = torch.bincount(groups.caption_group)  # (G,) captions per distinct text
        repeated = counts > 1
        widest = int(torch.bincount(groups.pair_keys % groups.num_groups).argmax())
        print(
            f"{name}: {split.num_images} images, {split.num_captions} captions, {groups.num_groups} distinct texts; "
            f"{int(repeated.sum())} texts on more than one caption ({int(counts[repeated].sum())} captions); "
            f"most images with one text: {groups.max_related_images()} "
            f"({normalise_text(split.captions[int(groups.representatives[widest])])!r})"
        )


if __name__ == "__main__":
    main()
