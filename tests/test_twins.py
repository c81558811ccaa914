"""The twin metric on hand-made score matrices with known answers, a bag-of-words dual, and the cascade's scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.data.scene_layout import captions
from dcd_itr.metrics import cascade_recall_from_scores, recall_at_k_from_scores
from dcd_itr.twins import cascade_score_matrices, twin_pairs, twin_scores


def split_of(caption_lists: list[list[str]]) -> RetrievalSplit:
    rows = [(str(i), f"/x/{i}.png", caps) for i, caps in enumerate(caption_lists)]
    return RetrievalSplit.from_rows("test", rows)


FOUR = split_of([[f"c{2 * i}", f"c{2 * i + 1}"] for i in range(4)])  # image i owns captions 2i, 2i + 1
TWINS = [1, 0, 3, 2]  # pairs (0, 1) and (2, 3)


def test_known_answer_with_ties_as_failures() -> None:
    s = np.zeros((4, 8))
    s[0, 0] = s[1, 2] = 1  # pair (0, 1), k = 0: text and image right
    s[0, 1], s[1, 3], s[1, 1] = 1, 3, 2  # k = 1: text right (1 > 0, 3 > 2), image wrong (s[0, 1] < s[1, 1])
    s[2, 4] = s[2, 6] = 1  # pair (2, 3), k = 0: text tied (a failure) ...
    s[3, 6] = 2  # ... image right (1 > 0, 2 > 1); k = 1 all zeros: everything tied, all fail
    result = twin_scores(s, FOUR, TWINS)
    assert result == {"twin_text": 50.0, "twin_image": 50.0, "twin_group": 25.0, "twin_pairs": 2}
    assert twin_scores(torch.tensor(s, dtype=torch.float32), FOUR, np.asarray(TWINS)) == result


def test_constant_and_perfect_matrices() -> None:
    assert twin_scores(np.full((4, 8), 0.3), FOUR, TWINS) == {
        "twin_text": 0.0,
        "twin_image": 0.0,
        "twin_group": 0.0,
        "twin_pairs": 2,
    }
    own = np.repeat(np.eye(4), 2, axis=1)  # (4, 8): 1 where the caption is the image's own
    assert twin_scores(own, FOUR, TWINS)["twin_group"] == 100.0
    flipped = own[[1, 0, 3, 2]]  # every image prefers its twin's captions
    assert twin_scores(flipped, FOUR, TWINS) == {
        "twin_text": 0.0,
        "twin_image": 0.0,
        "twin_group": 0.0,
        "twin_pairs": 2,
    }
    # Caption-query scores used for the image score only.
    mixed = twin_scores(own, FOUR, TWINS, caption_query_scores=flipped)
    assert (mixed["twin_text"], mixed["twin_image"]) == (100.0, 0.0)


def test_images_without_twins_are_skipped_and_bad_twins_refused() -> None:
    assert twin_pairs([1, 0, -1, -1]) == [(0, 1)]
    own = np.repeat(np.eye(4), 2, axis=1)
    assert twin_scores(own, FOUR, [1, 0, -1, -1])["twin_pairs"] == 1
    with pytest.raises(ValueError, match="naming each other"):
        twin_pairs([1, 2, 0, -1])
    with pytest.raises(ValueError, match="naming each other"):
        twin_pairs([0, -1])
    with pytest.raises(ValueError, match="no twin pairs"):
        twin_scores(own, FOUR, [-1, -1, -1, -1])
    with pytest.raises(ValueError, match="shape"):
        twin_scores(own[:3], FOUR, TWINS)
    with pytest.raises(ValueError, match="NaN"):
        twin_scores(np.full((4, 8), np.nan), FOUR, TWINS)


def test_a_bag_of_words_dual_scores_zero_group() -> None:
    """Scenes of named objects; the dual averages word vectors and object vectors, so order is lost."""
    rng = np.random.default_rng(0)
    names = ["cat face", "pizza", "rocket", "top hat", "banana", "key", "turtle", "guitar"]
    words = sorted(
        {w for n in names for w in n.split()} | {"a", "to", "the", "left", "right", "of", "above", "below"}
    )
    word_vectors = {w: rng.normal(size=16) for w in words}
    object_vectors = {n: rng.normal(size=16) for n in names}
    scenes, twin_index = [], []
    for pair, (subject, object_, other) in enumerate([(0, 1, 2), (3, 4, 5), (6, 7, 0), (2, 5, 7)]):
        predicate = "left of" if pair % 2 else "above"
        for first, second in ((subject, object_), (object_, subject)):
            scenes.append(
                (
                    [names[first], names[second], names[other]],
                    captions(names[first], names[second], predicate),
                )
            )
        twin_index += [2 * pair + 1, 2 * pair]
    split = split_of([caps for _, caps in scenes])
    images = np.stack([np.mean([object_vectors[n] for n in objects], axis=0) for objects, _ in scenes])
    texts = np.stack([np.mean([word_vectors[w] for w in c.split()], axis=0) for c in split.captions])
    result = twin_scores(images @ texts.T, split, twin_index)
    assert result["twin_group"] == 0.0 and result["twin_text"] == 0.0 and result["twin_image"] == 0.0
    assert recall_at_k_from_scores(images @ texts.T, split.caption_to_image)["rsum"] > 0  # it does recognise


def test_cascade_matrices_rank_like_the_cascade() -> None:
    rng = np.random.default_rng(1)
    split = split_of([[f"c{2 * i}", f"c{2 * i + 1}"] for i in range(12)])
    first, second = rng.normal(size=(12, 24)), rng.normal(size=(12, 24))
    calls = []

    def score_pairs(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        return torch.as_tensor(second[images.numpy(), texts.numpy()])

    for k in (1, 3, 8, 30):
        by_image, by_caption = cascade_score_matrices(first, score_pairs, k, pair_batch=7)
        reference = cascade_recall_from_scores(first, second, split.caption_to_image, k)
        i2t = recall_at_k_from_scores(by_image, split.caption_to_image)
        t2i = recall_at_k_from_scores(by_caption, split.caption_to_image)
        for key, value in reference.items():
            if key.startswith("image_to_text"):
                assert i2t[key] == pytest.approx(value), (k, key)
            elif key.startswith("text_to_image"):
                assert t2i[key] == pytest.approx(value), (k, key)
    assert max(calls) <= 7
    by_image, by_caption = cascade_score_matrices(first, score_pairs, 30)
    assert torch.allclose(by_image - by_image.min(), torch.as_tensor(second) - second.min())  # all re-ranked
    twins = [i + 1 if i % 2 == 0 else i - 1 for i in range(12)]
    assert twin_scores(by_image, split, twins, by_caption) == twin_scores(second, split, twins)


def test_random_scores_sit_at_chance() -> None:
    """Chance is 25 / 25 / 16.7: each score is two independent coin flips; group = the own pair are the top 2 of 4."""
    pairs = 1000  # a (2000, 2000) matrix; binomial spread ~1.4 points
    split = split_of([[f"c{i}"] for i in range(2 * pairs)])
    twins = [i + 1 if i % 2 == 0 else i - 1 for i in range(2 * pairs)]
    result = twin_scores(np.random.default_rng(2).normal(size=(2 * pairs, 2 * pairs)), split, twins)
    assert result["twin_text"] == pytest.approx(25, abs=4.5) and result["twin_image"] == pytest.approx(
        25, abs=4.5
    )
    assert result["twin_group"] == pytest.approx(100 / 6, abs=4.0)
