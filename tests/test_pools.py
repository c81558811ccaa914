"""Candidate pools, hard-negative selection and pool scoring, against answers known by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.distill.pools import DIRECTIONS, build_pools, score_pools, select_hard_negatives
from dcd_itr.models.dual import DualConfig
from dcd_itr.models.fusion import FusionConfig, FusionCrossEncoder


def make_split(captions_per_image: list[int], name: str = "train") -> RetrievalSplit:
    rows = [
        (f"img{i}", Path(f"/data/img{i}.png"), [f"caption {i}.{k}" for k in range(count)])
        for i, count in enumerate(captions_per_image)
    ]
    return RetrievalSplit.from_rows(name, rows)


SPLIT = make_split([1, 2, 3, 1, 3, 2, 2, 1, 3, 1, 2, 3, 1, 1, 2, 3, 2, 1, 3, 2])  # 20 images, 39 captions
SMALL_SPLIT = make_split([1, 3, 2, 1, 2, 1])  # 6 images, 10 captions


def positives_of(split: RetrievalSplit, direction: str, anchor: int) -> set[int]:
    """The positives of anchor ``anchor`` (one per caption), by the dataset's definition."""
    image = int(split.caption_to_image[anchor])
    return set(split.image_to_captions[image]) if direction == "image_to_text" else {image}


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("pool_size", [4, 17])  # 4: the redraw path; 17: most of the split, the exact path
def test_pools_hold_the_positive_first_and_distinct_negatives(direction: str, pool_size: int) -> None:
    pools = build_pools(SPLIT, direction, pool_size, seed=0, round_index=0)
    assert pools.candidates.shape == (SPLIT.num_captions, pool_size)
    assert pools.candidates.dtype == torch.int64
    other_side = SPLIT.num_captions if direction == "image_to_text" else SPLIT.num_images
    for anchor in range(SPLIT.num_captions):
        row = pools.candidates[anchor].tolist()
        image = int(SPLIT.caption_to_image[anchor])
        expected_anchor_row, expected_positive = (
            (image, anchor) if direction == "image_to_text" else (anchor, image)
        )
        assert int(pools.anchor_rows[anchor]) == expected_anchor_row
        assert row[0] == int(pools.positive[anchor]) == expected_positive
        assert len(set(row)) == pool_size
        assert not set(row[1:]) & positives_of(SPLIT, direction, anchor)
        assert all(0 <= value < other_side for value in row)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_pools_are_deterministic_per_seed_round_and_direction(direction: str) -> None:
    first = build_pools(SPLIT, direction, 5, seed=3, round_index=1).candidates
    assert torch.equal(first, build_pools(SPLIT, direction, 5, seed=3, round_index=1).candidates)
    assert not torch.equal(first, build_pools(SPLIT, direction, 5, seed=3, round_index=2).candidates)
    assert not torch.equal(first, build_pools(SPLIT, direction, 5, seed=4, round_index=1).candidates)


def test_pool_size_beyond_the_available_negatives_is_an_error() -> None:
    assert (SPLIT.num_captions, SPLIT.num_images) == (39, 20)
    # image_to_text: 39 captions, an image with 3 of them -> 36 negatives at most -> P <= 37
    build_pools(SPLIT, "image_to_text", 37, seed=0, round_index=0)
    with pytest.raises(ValueError, match=r"pool_size 38 needs 37 negatives.*use pool_size <= 37"):
        build_pools(SPLIT, "image_to_text", 38, seed=0, round_index=0)
    # text_to_image: 20 images, one positive -> 19 negatives -> P <= 20
    build_pools(SPLIT, "text_to_image", 20, seed=0, round_index=0)
    with pytest.raises(ValueError, match=r"use pool_size <= 20"):
        build_pools(SPLIT, "text_to_image", 21, seed=0, round_index=0)
    with pytest.raises(ValueError, match="at least 2"):
        build_pools(SPLIT, "text_to_image", 1, seed=0, round_index=0)


@pytest.mark.parametrize(("images", "pool_size"), [(4, 3), (8, 3)])  # exact path, redraw path
def test_negatives_are_uniform(images: int, pool_size: int) -> None:
    """text_to_image with one caption per image: each anchor's negatives are uniform over the other images."""
    split = make_split([1] * images)
    repeats = 300
    counts = torch.zeros(images, images)  # counts[anchor, negative]
    for round_index in range(repeats):
        pools = build_pools(split, "text_to_image", pool_size, seed=0, round_index=round_index)
        for column in range(1, pool_size):
            counts[torch.arange(images), pools.candidates[:, column]] += 1
    assert counts.diagonal().sum() == 0
    chance = (pool_size - 1) / (
        images - 1
    )  # per round, each other image is in the pool with this probability
    off_diagonal = counts[~torch.eye(images, dtype=torch.bool)]  # (images * (images-1),)
    expected, variance = repeats * chance, repeats * chance * (1 - chance)
    statistic = float(((off_diagonal - expected) ** 2 / variance).sum())  # ~ chi-square, <= #cells dof
    cells = off_diagonal.numel()
    assert statistic < cells + 5 * (2 * cells) ** 0.5  # mean + 5 standard deviations


def test_student_negatives_are_kept_when_valid_and_replaced_when_not() -> None:
    direction, pool_size = "image_to_text", 6
    num_anchors = SPLIT.num_captions
    given = torch.full((num_anchors, 3), -1, dtype=torch.int64)
    anchor = 1  # caption 1 belongs to image 1, whose captions are 1 and 2
    assert positives_of(SPLIT, direction, anchor) == {1, 2}
    given[anchor] = torch.tensor([7, 2, 7])  # a good negative, a positive, a repeat
    given[0] = torch.tensor([5, 6, 8])  # three good negatives for caption 0 (image 0 owns caption 0 only)
    pools = build_pools(SPLIT, direction, pool_size, seed=0, round_index=0, student_negatives=given)
    assert pools.candidates[0, 1:4].tolist() == [5, 6, 8]
    assert pools.candidates[anchor, 1] == 7
    for row in range(num_anchors):
        values = pools.candidates[row].tolist()
        assert len(set(values)) == pool_size
        assert not set(values[1:]) & positives_of(SPLIT, direction, row)
    with pytest.raises(ValueError, match="student_negatives must have shape"):
        build_pools(SPLIT, direction, 3, seed=0, round_index=0, student_negatives=given)


def naive_top_k_scores(pool_teacher_scores: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """The reference code's bug: the teacher's sorted top-K scores, not gathered at the student's list."""
    return pool_teacher_scores.topk(num_candidates, dim=1).values


def test_select_hard_negatives_gathers_the_teacher_at_the_students_entries() -> None:
    candidates = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]])
    scores = torch.tensor(
        [
            [5.0, 1.0, 4.0, 2.0, 3.0],  # the teacher ranks the positive first
            [2.0, 6.0, 1.0, 7.0, 0.5],  # two negatives outscore the positive (the reference bug case)
        ]
    )
    student_candidates, teacher_logits = select_hard_negatives(scores, candidates, 3)
    assert student_candidates.tolist() == [[10, 12, 14], [20, 23, 21]]
    assert teacher_logits.tolist() == [[5.0, 4.0, 3.0], [2.0, 7.0, 6.0]]
    buggy = naive_top_k_scores(scores, 3)
    assert torch.equal(buggy[0], teacher_logits[0])  # they agree only where the positive ranks first
    assert not torch.equal(buggy[1], teacher_logits[1])
    with pytest.raises(ValueError, match="between 1 and the pool size"):
        select_hard_negatives(scores, candidates, 6)


class DistanceCrossEncoder:
    """A cross-encoder whose features are the item's id: score(image i, caption t) = -|10 i - t|."""

    fusion_depth = 0

    def __init__(self) -> None:
        self.encoded = {"image": 0, "text": 0}

    def encode_images(self, images: dict) -> dict:
        self.encoded["image"] += len(images["id"])
        return {"id": images["id"] * 10.0}

    def encode_texts(self, texts: dict) -> dict:
        self.encoded["text"] += len(texts["id"])
        return {"id": texts["id"].float()}

    def score_pairs(self, image: dict, text: dict) -> torch.Tensor:
        return -(image["id"] - text["id"]).abs()

    def score_matrix(self, image: dict, text: dict) -> torch.Tensor:
        return -(image["id"][:, None] - text["id"][None, :]).abs()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_score_pools_matches_a_score_known_by_construction(direction: str) -> None:
    teacher = DistanceCrossEncoder()
    pools = build_pools(SPLIT, direction, 6, seed=0, round_index=0)
    image_features = {"id": torch.arange(SPLIT.num_images, dtype=torch.float32)}
    text_features = {"id": torch.arange(SPLIT.num_captions)}
    scores = score_pools(
        teacher, image_features, text_features, pools, batch_anchors=7, encode_batch_size=8, progress=False
    )
    anchors = pools.anchor_rows[:, None].float()  # (A, 1)
    candidates = pools.candidates.float()  # (A, P)
    expected = (
        -(10 * anchors - candidates).abs()
        if direction == "image_to_text"
        else -(10 * candidates - anchors).abs()
    )
    assert scores.dtype == torch.float32
    assert torch.equal(scores, expected)
    assert teacher.encoded == {
        "image": SPLIT.num_images,
        "text": SPLIT.num_captions,
    }  # each item encoded once


def tiny_fusion_teacher() -> FusionCrossEncoder:
    path = DualConfig(
        image_view="img@4", text_view="txt@6", image_dim=5, text_dim=6, embed_dim=4, hidden_dim=8
    )
    config = FusionConfig(
        similarity_paths=[path],
        fusion_image_view="img@4",
        fusion_text_view="txt@6",
        image_token_dim=3,
        text_token_dim=6,
        image_grid=2,
        max_text_tokens=5,
        width=8,
        num_layers=2,
        num_heads=2,
    )
    torch.manual_seed(0)
    teacher = FusionCrossEncoder(config)
    torch.nn.init.normal_(teacher.head[-1].weight)  # a non-zero fusion term, so it is tested too
    return teacher.eval()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_score_pools_matches_the_teachers_score_matrix(direction: str) -> None:
    teacher = tiny_fusion_teacher()
    generator = torch.Generator().manual_seed(1)
    num_images, num_texts = SMALL_SPLIT.num_images, SMALL_SPLIT.num_captions
    lengths = torch.randint(1, 6, (num_texts,), generator=generator)
    image_features = {
        "img@4.tokens": torch.randn(num_images, 16, 3, generator=generator),  # a 4x4 grid of 3-dim tokens
        "img@4.pooled": torch.randn(num_images, 5, generator=generator),
    }
    text_features = {
        "txt@6.tokens": torch.randn(num_texts, 5, 6, generator=generator),
        "txt@6.mask": torch.arange(5)[None, :] < lengths[:, None],
        "txt@6.pooled": torch.randn(num_texts, 6, generator=generator),
    }
    pools = build_pools(SMALL_SPLIT, direction, 5, seed=0, round_index=0)
    scores = score_pools(teacher, image_features, text_features, pools, batch_anchors=9, progress=False)
    with torch.no_grad():
        matrix = teacher.score_matrix(
            teacher.encode_images(image_features), teacher.encode_texts(text_features)
        )
    if direction == "image_to_text":
        expected = matrix[pools.anchor_rows[:, None], pools.candidates]
    else:
        expected = matrix.T[pools.anchor_rows[:, None], pools.candidates]
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="training mode"):
        score_pools(teacher.train(), image_features, text_features, pools, progress=False)


def test_anchor_rows_follow_the_split_order() -> None:
    pools = build_pools(SMALL_SPLIT, "image_to_text", 3, seed=0, round_index=0)
    assert np.array_equal(pools.anchor_rows.numpy(), SMALL_SPLIT.caption_to_image)
