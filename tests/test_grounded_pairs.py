"""The split pair scorer of the grounded cross-encoder equals the model's own scoring (teacher, cut student,
paths-only), for a full matrix, arbitrary pairs and the cascade's one-caption-many-images shape."""

from __future__ import annotations

import pytest
import torch

from dcd_itr.models.grounded import GroundedCrossEncoder, cut_grounded_student, paths_only
from dcd_itr.models.grounded_pairs import GroundedPairScorer, pair_scorer
from test_grounded import random_features, tiny_config


def perturbed(num_layers: int) -> GroundedCrossEncoder:
    """A tiny model with every weight moved off its init (LayerNorm gains, biases, positions all non-trivial)."""
    torch.manual_seed(0)
    model = GroundedCrossEncoder(tiny_config(num_layers=num_layers))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model.eval()


TEACHER = perturbed(2)
MODELS = {
    "teacher": TEACHER,
    "cut student": cut_grounded_student(TEACHER).eval(),
    "three layers": perturbed(3),
    "paths-only": paths_only(TEACHER).eval(),
}


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_score_matrix_equals_the_model(name):
    model = MODELS[name]
    images, texts = random_features(5, 9, seed=1)
    expected = model.score_matrix(model.encode_images(images), model.encode_texts(texts))  # (5, 9)
    scorer = GroundedPairScorer(model, pair_chunk=7)  # chunks that cut across image rows
    found = scorer.score_matrix(scorer.encode_images(images), scorer.encode_texts(texts))
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)
    assert expected.std() > 0.1  # the fusion term moves the scores


@torch.no_grad()
def test_arbitrary_pairs_equal_score_pairs():
    model = MODELS["teacher"]
    images, texts = random_features(4, 6, seed=2)
    image_rows = torch.tensor([3, 0, 0, 2, 1, 3, 2])
    text_rows = torch.tensor([5, 5, 0, 1, 4, 2, 2])
    image_features, text_features = model.encode_images(images), model.encode_texts(texts)
    expected = model.score_pairs(
        {k: v[image_rows] for k, v in image_features.items()},
        {k: v[text_rows] for k, v in text_features.items()},
    )
    scorer = pair_scorer(model)
    found = scorer.score(scorer.encode_images(images), scorer.encode_texts(texts), image_rows, text_rows)
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_one_query_against_stored_gallery_rows():
    """The cascade's shape: one caption encoded alone, K gallery images encoded earlier in another batch."""
    model = MODELS["cut student"]
    images, texts = random_features(6, 3, seed=3)
    scorer = GroundedPairScorer(model)
    gallery = scorer.encode_images(images)
    query = scorer.encode_texts({k: v[1:2] for k, v in texts.items()})  # trimmed to its own length
    rows = torch.tensor([4, 1, 5])
    found = scorer.score(gallery, query, rows, torch.zeros(3, dtype=torch.long))
    expected = model.score_matrix(model.encode_images(images), model.encode_texts(texts))[rows, 1]
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)


def test_only_grounded_models_have_a_scorer():
    assert pair_scorer(torch.nn.Linear(2, 2)) is None
    with pytest.raises(TypeError, match="GroundedCrossEncoder"):
        GroundedPairScorer(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="differ"):
        scorer = GroundedPairScorer(TEACHER)
        images, texts = random_features(2, 2)
        scorer.score(scorer.encode_images(images), scorer.encode_texts(texts), torch.zeros(2), torch.zeros(3))
