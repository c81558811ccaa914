"""Text-identical captions: the relation, and candidate pools that never use such a caption as a negative."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.data.same_text import TextGroups, normalise_text
from dcd_itr.distill.pools import DIRECTIONS, build_pools

# image 0..2 are "flags" (caption "flag" each, plus a unique one); images 3..7 are unique
ROWS = [
    ("f0", Path("/d/f0.png"), ["Flag", "flag: France"]),
    ("f1", Path("/d/f1.png"), ["flag.", "flag: Chad"]),
    ("f2", Path("/d/f2.png"), ["  FLAG ", "flag: Peru"]),
    *[(f"u{i}", Path(f"/d/u{i}.png"), [f"unique {i}"]) for i in range(3, 8)],
]
SPLIT = RetrievalSplit.from_rows("train", ROWS)  # 8 images, 11 captions; captions 0, 2, 4 are "flag"


def test_normalise_text_folds_case_space_and_final_punctuation() -> None:
    assert normalise_text("  A  Dog. ") == normalise_text("a dog") == "a dog"
    assert normalise_text("a dog") != normalise_text("a cat")


def test_text_groups_relate_every_image_with_the_text() -> None:
    groups = TextGroups.from_captions(SPLIT.captions, SPLIT.caption_to_image)
    assert groups.num_groups == 9 and groups.has_duplicates
    assert groups.caption_group[[0, 2, 4]].tolist() == [0, 0, 0]
    images = torch.arange(8)[:, None]  # (8, 1)
    related = groups.related(images, torch.arange(11)[None, :])  # (8, 11)
    expected = torch.zeros(8, 11, dtype=torch.bool)
    for image in range(3):  # each flag image: the three "flag" captions and its own unique one
        expected[image, [0, 2, 4, 2 * image + 1]] = True
    for image in range(3, 8):
        expected[image, image + 3] = True
    assert torch.equal(related, expected)
    assert groups.max_related_captions() == 4
    assert groups.max_related_images() == 3


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("pool_size", [3, 5])  # 3: redraw path; 5: most of what is allowed, the exact path
def test_pools_exclude_text_identical_captions_and_their_images(direction: str, pool_size: int) -> None:
    flags, flag_captions = {0, 1, 2}, {0, 2, 4}
    for round_index in range(20):
        pools = build_pools(SPLIT, direction, pool_size, seed=0, round_index=round_index)
        for anchor in range(SPLIT.num_captions):
            image = int(SPLIT.caption_to_image[anchor])
            negatives = set(pools.candidates[anchor, 1:].tolist())
            if direction == "image_to_text":
                banned = set(SPLIT.image_to_captions[image]) | (flag_captions if image in flags else set())
            else:
                banned = {image} | (flags if anchor in flag_captions else set())
            assert not negatives & banned, (anchor, negatives, banned)


def test_pools_without_the_exclusion_keep_text_identical_negatives() -> None:
    seen = set()
    for round_index in range(30):
        pools = build_pools(SPLIT, "text_to_image", 3, 0, round_index, exclude_same_text=False)
        seen |= set(pools.candidates[0, 1:].tolist())  # anchor "Flag" of image 0
    assert seen & {1, 2}  # the other flag images do appear as negatives in the old behaviour


def test_pool_size_check_counts_text_identical_candidates() -> None:
    build_pools(SPLIT, "text_to_image", 6, seed=0, round_index=0)  # "flag" anchors: 8 - 3 = 5 negatives left
    with pytest.raises(ValueError, match="text-identical"):
        build_pools(SPLIT, "text_to_image", 7, seed=0, round_index=0)
