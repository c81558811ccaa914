"""Metrics against an independent brute-force reference written with plain Python loops."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch

from dcd_itr.metrics import (
    cascade_recall_from_scores,
    format_metrics_table,
    rank_dual,
    recall_at_k_from_scores,
    similarity_blocks,
    top_k_candidates,
    write_metrics_json,
)


def reference_rank(row: list[float], target: int, positives: set[int]) -> int:
    """0-based rank of ``target``: strictly better scores, plus equal scores of wrong candidates (pessimistic)."""
    return sum(1 for g, s in enumerate(row) if s > row[target] or (s == row[target] and g not in positives))


def reference_metrics_from_ranks(i2t: list[int], t2i: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, ranks in (("image_to_text", i2t), ("text_to_image", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = 100.0 * sum(1 for r in ranks if r < k) / len(ranks)
        out[f"{name}_median_rank"] = math.floor(statistics.median(ranks)) + 1
    out["rsum"] = sum(v for key, v in out.items() if "_R@" in key)
    out["num_images"], out["num_captions"] = len(i2t), len(t2i)
    return out


def reference_metrics(scores: list[list[float]], owner: list[int]) -> dict[str, float]:
    """Protocol by loops: best caption rank per image, own-image rank per caption."""
    columns = [[scores[i][j] for i in range(len(scores))] for j in range(len(owner))]
    i2t = []
    for i, row in enumerate(scores):
        positives = {j for j in range(len(owner)) if owner[j] == i}
        i2t.append(min(reference_rank(row, j, positives) for j in positives))
    t2i = [reference_rank(columns[j], owner[j], {owner[j]}) for j in range(len(owner))]
    return reference_metrics_from_ranks(i2t, t2i)


def reference_cascade_rank(first: list[float], second: list[float], positives: set[int], k: int) -> int:
    kept = sorted(range(len(first)), key=lambda g: (-first[g], g))[:k]  # the first stage keeps lower index
    reranked = sorted(kept, key=lambda g: (-second[g], g in positives, g))  # positives after tied wrong ones
    rest = sorted(set(range(len(first))) - set(kept), key=lambda g: (-first[g], g in positives, g))
    final = reranked + rest
    return min(final.index(g) for g in positives)


def reference_cascade(first: list[list[float]], second: list[list[float]], owner: list[int], k: int):
    n, m = len(first), len(owner)
    i2t = [
        reference_cascade_rank(first[i], second[i], {j for j in range(m) if owner[j] == i}, k)
        for i in range(n)
    ]
    t2i = [
        reference_cascade_rank(
            [first[i][j] for i in range(n)], [second[i][j] for i in range(n)], {owner[j]}, k
        )
        for j in range(m)
    ]
    return reference_metrics_from_ranks(i2t, t2i)


def random_split(seed: int, num_images: int, integer: bool):
    generator = np.random.default_rng(seed)
    counts = generator.integers(1, 5, size=num_images)  # 1 to 4 captions per image, like COCO's ~5
    owner = np.repeat(np.arange(num_images), counts)
    generator.shuffle(owner)  # captions of one image need not be contiguous for the metric
    shape = (num_images, len(owner))
    scores = generator.integers(0, 4, size=shape) if integer else generator.normal(size=shape)
    return torch.tensor(scores, dtype=torch.float32), owner


def recalls(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if "_R@" in key or key == "rsum"}


def assert_metrics_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer-ties"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_matrix_metrics_match_brute_force(seed: int, integer: bool) -> None:
    scores, owner = random_split(seed, num_images=23, integer=integer)
    expected = reference_metrics(scores.tolist(), owner.tolist())
    assert_metrics_equal(recall_at_k_from_scores(scores, owner), expected)
    as_given = scores.numpy().astype(np.int64) if integer else scores.numpy()  # integer and numpy inputs too
    assert_metrics_equal(recall_at_k_from_scores(as_given, owner), expected)
    assert_metrics_equal(recall_at_k_from_scores(scores, owner, block_size=5), expected)  # 5 divides neither


def test_metric_names_are_flat_and_explicit() -> None:
    metrics = recall_at_k_from_scores(torch.eye(3), np.arange(3))
    directions = ("image_to_text", "text_to_image")
    names = {f"{d}_R@{k}" for d in directions for k in (1, 5, 10)} | {f"{d}_median_rank" for d in directions}
    assert set(metrics) == names | {"rsum", "num_images", "num_captions"}
    assert metrics["rsum"] == 600.0 and metrics["num_images"] == 3 and metrics["num_captions"] == 3


def test_hand_made_three_images() -> None:
    # captions 0,1 -> image 0; 2 -> image 1; 3,4 -> image 2
    owner = np.array([0, 0, 1, 1, 2])
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.0, 0.0],  # image 0: its caption 1 is best -> i2t hit
            [0.8, 0.0, 0.7, 0.6, 0.0],  # image 1: caption 0 beats its own 2 and 3 -> rank 1
            [0.9, 0.0, 0.0, 0.0, 0.3],  # image 2: caption 0 beats its own 4 -> rank 1
        ]
    )
    metrics = recall_at_k_from_scores(scores, owner)
    assert metrics["image_to_text_R@1"] == pytest.approx(100 / 3)
    assert metrics["image_to_text_R@5"] == 100.0
    # columns: c0 -> image 2 best (0.9 > 0.8, its own 0.1) rank 2; c1 hit; c2 hit; c3 hit; c4 hit
    assert metrics["text_to_image_R@1"] == pytest.approx(80.0)
    assert metrics["image_to_text_median_rank"] == 2.0
    assert metrics["text_to_image_median_rank"] == 1.0


def test_tie_rule_is_pessimistic_on_a_constant_score_matrix() -> None:
    owner = np.array([0, 0, 1, 1, 2, 2])
    metrics = recall_at_k_from_scores(torch.zeros(3, 6), owner)  # everything ties
    # i2t: every image's captions come after the 4 wrong captions -> rank 4; t2i: after 2 wrong images -> rank 2
    assert metrics["image_to_text_R@1"] == 0.0 and metrics["image_to_text_R@5"] == 100.0
    assert metrics["image_to_text_median_rank"] == 5.0
    assert metrics["text_to_image_R@1"] == 0.0 and metrics["text_to_image_R@5"] == 100.0
    assert metrics["text_to_image_median_rank"] == 3.0
    assert metrics["rsum"] == 400.0
    # 20 images, one caption each: a constant scorer ranks every positive last -> no recall at all, not 100%
    constant = recall_at_k_from_scores(torch.ones(20, 20), np.arange(20))
    assert constant["rsum"] == 0.0
    assert constant["image_to_text_median_rank"] == constant["text_to_image_median_rank"] == 20.0
    same = rank_dual(torch.ones(20, 4), torch.ones(20, 4), np.arange(20))  # a dual with one embedding
    assert same["rsum"] == 0.0


def test_text_identical_captions_are_one_query() -> None:
    # captions 0 and 2 read "flag" (images 0 and 1); caption 1 "flag: France" (image 0); caption 3 "cat" (image 2)
    owner = np.array([0, 0, 1, 2])
    texts = ["flag", "flag: France", "Flag.", "cat"]
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.9, 0.0],  # image 0: "flag" first -> hit
            [0.2, 0.8, 0.2, 0.0],  # image 1: "flag: France" (not its text) beats its "flag" -> rank 1
            [0.0, 0.0, 0.0, 0.5],  # image 2: "cat" first -> hit
        ]
    )
    plain = recall_at_k_from_scores(scores, owner)
    merged = recall_at_k_from_scores(scores, owner, caption_texts=texts)
    assert merged["num_captions"] == 3 and plain["num_captions"] == 4
    assert merged["image_to_text_R@1"] == pytest.approx(200 / 3)
    # text queries: "flag" is correct for images 0 and 1 (0.9 best) -> hit; "flag: France": image 1 (0.8) ranks
    # above its image 0 -> miss; "cat" -> hit. Per caption, caption 2 ("Flag.", image 1 only) would be a miss.
    assert merged["text_to_image_R@1"] == pytest.approx(200 / 3)
    assert plain["text_to_image_R@1"] == pytest.approx(50.0)
    images, captions = torch.randn(3, 5), torch.randn(4, 5)
    captions[2] = captions[0]  # a dual embeds identical texts identically
    assert_metrics_equal(
        rank_dual(images, captions, owner, caption_texts=texts),
        recall_at_k_from_scores(images @ captions.T, owner, caption_texts=texts),
    )


def test_bad_inputs_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k_from_scores(torch.tensor([[float("nan")]]), np.array([0]))
    with pytest.raises(ValueError, match="NaN"):
        rank_dual(torch.tensor([[float("nan")]]), torch.ones(1, 1), np.array([0]))
    with pytest.raises(ValueError, match="each of the 3 images a caption"):
        recall_at_k_from_scores(torch.zeros(3, 2), np.array([0, 2]))  # image 1 has no caption
    with pytest.raises(ValueError, match=r"must be \(N, 3 captions\)"):
        recall_at_k_from_scores(torch.zeros(3, 2), np.array([0, 1, 2]))


@pytest.mark.parametrize("block_size", [1, 4, 7, 1000])
def test_rank_dual_matches_full_matrix_with_ties(block_size: int) -> None:
    generator = torch.Generator().manual_seed(block_size)
    owner = np.repeat(np.arange(19), 3)[:56]  # 19 images, 56 captions, the last image has 2
    images = torch.randint(-1, 2, (19, 4), generator=generator).float()  # few distinct values: many ties
    texts = torch.randint(-1, 2, (56, 4), generator=generator).float()
    expected = recall_at_k_from_scores(images @ texts.T, owner)
    assert_metrics_equal(rank_dual(images, texts, owner, block_size=block_size), expected)
    assert_metrics_equal(rank_dual(images.numpy(), texts.numpy(), owner, block_size=block_size), expected)


def test_rank_dual_matches_full_matrix_float() -> None:
    generator = torch.Generator().manual_seed(0)
    owner = np.repeat(np.arange(30), 5)
    images = torch.nn.functional.normalize(torch.randn(30, 16, generator=generator), dim=1)
    texts = torch.nn.functional.normalize(
        images[owner] + 0.8 * torch.randn(150, 16, generator=generator), dim=1
    )
    expected = reference_metrics((images @ texts.T).tolist(), owner.tolist())
    assert_metrics_equal(rank_dual(images, texts, owner, block_size=8), expected)


def test_similarity_blocks_never_exceed_block_size() -> None:
    images, texts = torch.randn(10, 3), torch.randn(23, 3)
    for direction, queries, candidates in (("image_to_text", 10, 23), ("text_to_image", 23, 10)):
        blocks = list(similarity_blocks(images, texts, direction, block_size=4))
        assert all(block.shape[0] <= 4 and block.shape[1] == candidates for _, block in blocks)
        assert sum(block.shape[0] for _, block in blocks) == queries


def test_top_k_candidates_break_ties_to_lower_index() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert top_k_candidates(scores, 3).tolist() == [[1, 2, 4], [0, 1, 2]]
    assert top_k_candidates(scores, 9).shape == (2, 5)


@pytest.mark.parametrize("k", [1, 2, 5, 11, 12])
def test_top_k_candidates_match_sorted_reference(k: int) -> None:
    generator = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 3, (40, 12), generator=generator).float()  # heavy ties at every place
    scores[:5] = torch.randn(5, 12, generator=generator)  # and some rows without ties
    expected = [sorted(range(12), key=lambda g, row=row: (-row[g], g))[:k] for row in scores.tolist()]
    assert top_k_candidates(scores, k).tolist() == expected


def test_cascade_hand_made() -> None:
    owner = np.array([0, 1, 2])  # one caption per image, caption j belongs to image j
    first = torch.tensor([[0.8, 0.9, 0.1], [0.5, 0.6, 0.4], [0.9, 0.8, 0.1]])
    second = torch.tensor([[5.0, 1.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    # image 0: first stage ranks its caption 2nd within top 2, cross-encoder fixes it -> rank 0
    # image 1: already first -> stays rank 0
    # image 2: its caption is 3rd (outside top 2) -> stays at rank 2 although the cross-encoder would love it
    metrics = cascade_recall_from_scores(first, second, owner, k=2)
    assert metrics["image_to_text_R@1"] == pytest.approx(200 / 3)
    assert metrics["image_to_text_median_rank"] == 1.0
    assert metrics["cascade_k"] == 2 and metrics["pairs_scored"] == 12
    assert recall_at_k_from_scores(first, owner)["image_to_text_R@1"] == pytest.approx(100 / 3)
    # k = N: the cascade is the cross-encoder alone
    cascade_all = cascade_recall_from_scores(first, second, owner, k=3)
    assert_metrics_equal(recalls(cascade_all), recalls(recall_at_k_from_scores(second, owner)))


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer-ties"])
def test_cascade_matches_brute_force(k: int, integer: bool) -> None:
    first, owner = random_split(10 + k, num_images=13, integer=integer)
    generator = torch.Generator().manual_seed(k)
    second = (
        torch.randint(0, 3, first.shape, generator=generator)
        if integer
        else torch.randn(first.shape, generator=generator)
    )
    expected = reference_cascade(first.tolist(), second.tolist(), owner.tolist(), k)
    actual = cascade_recall_from_scores(first, second, owner, k, block_size=4)
    assert actual.pop("cascade_k") == k
    assert actual.pop("pairs_scored") == (13 + len(owner)) * k
    assert_metrics_equal(actual, expected)


def test_format_table_and_json(tmp_path) -> None:
    rows = {"dual": recall_at_k_from_scores(torch.eye(4), np.arange(4)), "cascade k=16": {}}
    rows["cascade k=16"] = {**rows["dual"], "image_to_text_R@1": 12.345}
    table = format_metrics_table(rows)
    lines = table.splitlines()
    assert "i2t R@1" in lines[0] and "RSUM" in lines[0]
    assert lines[2].startswith("dual ") and lines[2].rstrip().endswith("600.0")
    assert "12.3" in lines[3]
    path = tmp_path / "out" / "metrics.json"
    write_metrics_json(path, rows)
    assert json.loads(path.read_text()) == rows
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]
