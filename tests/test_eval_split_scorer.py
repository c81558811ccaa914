"""Evaluation scores grounded cross-encoders through their split pair scorer (``scoring_model``) and gets what the
model's own ``score_matrix`` / ``score_pairs`` give: the same scores (1e-4), the same rankings and metrics, for a
fused model, a paths-only model and a cascade; any other cross-encoder is still scored by its own methods."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.evaluate import models as evaluate_models
from dcd_itr.evaluate.models import cross_metrics, evaluate_cascade, evaluate_model
from dcd_itr.evaluate.scoring import encode_all, rank_cascade, score_all_pairs, scoring_model
from dcd_itr.evaluate.twins import cascade_score_matrices
from dcd_itr.features import SplitFeatures
from dcd_itr.interfaces import CrossEncoder, is_cross_encoder, slice_features
from dcd_itr.metrics import recall_at_k_from_scores
from dcd_itr.models.grounded import GroundedCrossEncoder, paths_only
from dcd_itr.models.grounded_pairs import GroundedPairScorer
from test_evaluate import IdCrossEncoder
from test_grounded import random_features
from test_grounded_pairs import perturbed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_IMAGES, CAPTIONS_PER_IMAGE = 6, 2
TEACHER = perturbed(2)
MODELS = {"fused": TEACHER, "paths-only": paths_only(TEACHER).eval()}


def split_features(seed: int = 4) -> SplitFeatures:
    """6 images with 2 captions each (captions of one image contiguous), random grounded-view features."""
    images, texts = random_features(NUM_IMAGES, NUM_IMAGES * CAPTIONS_PER_IMAGE, seed=seed)
    owner = np.repeat(np.arange(NUM_IMAGES), CAPTIONS_PER_IMAGE)
    split = RetrievalSplit(
        "test",
        [f"image{i}" for i in range(NUM_IMAGES)],
        [Path(f"/nowhere/image{i}.png") for i in range(NUM_IMAGES)],
        [f"caption {j}" for j in range(len(owner))],  # all distinct: every caption its own query
        owner,
    )
    return SplitFeatures(split, images, texts)


def old_path_scores(model, features: SplitFeatures) -> torch.Tensor:
    """The evaluation path before the split scorer: the model's own encodings and ``score_matrix``."""
    with torch.inference_mode():
        images = encode_all(model.encode_images, features.images, batch_size=4)
        texts = encode_all(model.encode_texts, features.texts, batch_size=4)
    return score_all_pairs(model, images, texts, text_block=5, progress=False).scores  # (N, M)


def forbid_model_scoring(monkeypatch) -> None:
    """From here on, the grounded model's own pair scoring raises: only the split scorer may score."""

    def refuse(*_):
        raise AssertionError("evaluation called GroundedCrossEncoder's own pair scoring")

    for method in ("score_matrix", "score_pairs", "fusion_logits"):
        monkeypatch.setattr(GroundedCrossEncoder, method, refuse)


def assert_same_ranking(found: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-4)
    for dim in (0, 1):  # captions per image and images per caption in the same order
        assert torch.equal(found.argsort(dim=dim, stable=True), expected.argsort(dim=dim, stable=True))


def test_scoring_model_picks_the_split_scorer_only_for_grounded_models():
    scorer = scoring_model(TEACHER)
    assert isinstance(scorer, GroundedPairScorer) and scorer.model is TEACHER
    assert scoring_model(scorer) is scorer  # applying it twice changes nothing
    assert isinstance(scorer, CrossEncoder) and is_cross_encoder(scorer)
    assert scorer.fusion_depth == 2 and scorer.image_views == TEACHER.image_views
    other = IdCrossEncoder()
    assert scoring_model(other) is other


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_score_pairs_equals_the_model_on_aligned_batches(name):
    model = MODELS[name]
    images, texts = random_features(7, 7, seed=5)
    expected = model.score_pairs(model.encode_images(images), model.encode_texts(texts))  # (7,)
    scorer = GroundedPairScorer(model, pair_chunk=3)  # chunks of unequal caption lengths
    found = scorer.score_pairs(scorer.encode_images(images), scorer.encode_texts(texts))
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="aligned"):
        scorer.score_pairs(
            scorer.encode_images(images), scorer.encode_texts(slice_features(texts, slice(0, 3)))
        )


@torch.no_grad()
def test_text_encodings_of_blocks_concatenate_and_slice():
    """Blocks whose longest captions differ encode to the view's width, so encode_all can concatenate them and a
    sliced row scores as it does in the whole matrix."""
    scorer = scoring_model(TEACHER)
    images, texts = random_features(3, 9, seed=6)
    lengths = texts["text-test@6.mask"].sum(1)
    blocks = [lengths[s : s + 2].max() for s in range(0, 9, 2)]
    assert len(set(blocks)) > 1  # the blocks really differ in their longest caption
    encoded = encode_all(scorer.encode_texts, texts, batch_size=2)
    assert encoded["pairs.inputs"].shape[1] == texts["text-test@6.tokens"].shape[1]
    whole = scorer.score_matrix(scorer.encode_images(images), encoded)  # (3, 9)
    rows = torch.tensor([8, 1, 4])
    one = scorer.score_pairs(
        slice_features(scorer.encode_images(images), torch.tensor([2, 0, 1])), slice_features(encoded, rows)
    )
    torch.testing.assert_close(one, whole[torch.tensor([2, 0, 1]), rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_cross_metrics_equal_the_model_score_matrix_path(name, monkeypatch):
    monkeypatch.setattr(evaluate_models, "CROSS_ENCODE_BATCH", 5)  # several encoded blocks, concatenated
    model, features = MODELS[name], split_features()
    expected = old_path_scores(model, features)
    forbid_model_scoring(monkeypatch)
    metrics, result = cross_metrics(model, features, text_block=5)
    assert_same_ranking(result.scores, expected)
    split = features.split
    assert metrics == recall_at_k_from_scores(expected, split.caption_to_image, caption_texts=split.captions)
    assert result.pairs_scored == expected.numel() and result.pairs_per_second > 0
    assert not model.training  # eval mode restored as it was


def test_cross_metrics_of_another_cross_encoder_use_its_own_score_matrix():
    model = IdCrossEncoder()
    features = split_features()
    ids = {"images": torch.arange(NUM_IMAGES).float(), "texts": torch.arange(12).float() / 2}
    features = SplitFeatures(features.split, ids["images"].tolist(), ids["texts"].tolist())
    _, result = cross_metrics(model, features)
    assert model.pairs_scored == NUM_IMAGES * 12  # every pair went through IdCrossEncoder.score_matrix
    torch.testing.assert_close(result.scores, -(ids["images"][:, None] - ids["texts"][None]).abs())


class PooledDual(torch.nn.Module):
    """A fixed dual first stage: the l2-normed mean of the region tokens and of the caption tokens."""

    image_views, text_views = ["regions-test@8"], ["text-test@6"]

    def __init__(self) -> None:
        super().__init__()
        self.text_map = torch.nn.Linear(12, 16, bias=False)
        torch.nn.init.normal_(self.text_map.weight, generator=torch.Generator().manual_seed(7))

    def encode_images(self, images):
        pooled = images["regions-test@8.tokens"].mean(1)  # (N, 16)
        return {"embedding": torch.nn.functional.normalize(pooled, dim=-1)}

    def encode_texts(self, texts):
        pooled = self.text_map(texts["text-test@6.tokens"].mean(1))  # (M, 16)
        return {"embedding": torch.nn.functional.normalize(pooled, dim=-1)}


def patch_loading(monkeypatch, models: dict[str, torch.nn.Module], features: SplitFeatures, twins: list):
    """evaluate_model / evaluate_cascade read these folders' models and the in-memory features; twin matrices are
    recorded instead of read from a dataset."""
    dual_features = SplitFeatures(features.split, features.images, features.texts)
    monkeypatch.setattr(evaluate_models, "load_model", lambda folder: models[str(folder)])
    monkeypatch.setattr(evaluate_models, "weights_fingerprint", lambda folder: "0" * 64)
    monkeypatch.setattr(
        evaluate_models, "_features", lambda model, *_: features if is_cross_encoder(model) else dual_features
    )
    monkeypatch.setattr(evaluate_models, "has_twins", lambda data, split: True)
    monkeypatch.setattr(
        evaluate_models, "dataset_twin_scores", lambda data, split, *matrices: twins.append(matrices) or {}
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_evaluate_model_equals_the_old_path(name, monkeypatch):
    model, features, twins = MODELS[name], split_features(), []
    patch_loading(monkeypatch, {f"/models/{name}": model}, features, twins)
    expected = old_path_scores(model, features)
    forbid_model_scoring(monkeypatch)
    row = evaluate_model(Path(f"/models/{name}"), Path("data"), Path("cache"), "test", progress=False)
    split = features.split
    assert row == {
        "kind": "cross",
        "pairs_per_second": row["pairs_per_second"],
        **recall_at_k_from_scores(expected, split.caption_to_image, caption_texts=split.captions),
    }
    assert_same_ranking(twins[0][0], expected)  # the twin scores read the same matrix


def test_old_score_shards_stay_valid(tmp_path, monkeypatch):
    """Shards written by the model's own score_matrix are reused by the split path (same scores up to rounding):
    the manifest records model + split + block sizes, not which exact scorer wrote them."""
    monkeypatch.setattr(evaluate_models, "CROSS_ENCODE_BATCH", 5)
    features = split_features()
    with torch.inference_mode():
        images = encode_all(TEACHER.encode_images, features.images, batch_size=4)
        texts = encode_all(TEACHER.encode_texts, features.texts, batch_size=4)
    old = score_all_pairs(
        TEACHER, images, texts, text_block=5, checkpoint_dir=tmp_path, fingerprint="t:test", progress=False
    )
    _, result = cross_metrics(TEACHER, features, 5, tmp_path, "t:test")
    assert result.shards_reused == 1 and result.pairs_scored == 0
    assert torch.equal(result.scores, old.scores)


@pytest.mark.parametrize("k", [2, 5])
def test_cascade_equals_the_old_path(k, monkeypatch):
    features, dual, twins = split_features(seed=8), PooledDual(), []
    patch_loading(monkeypatch, {"/dual": dual, "/cross": TEACHER}, features, twins)
    # the old path: rank_cascade and the cascade's twin matrices with the model's own encodings and score_pairs
    with torch.inference_mode():
        first_images = dual.encode_images(features.images)["embedding"]
        first_texts = dual.encode_texts(features.texts)["embedding"]
        images, texts = TEACHER.encode_images(features.images), TEACHER.encode_texts(features.texts)
        expected = rank_cascade(
            first_images,
            first_texts,
            TEACHER,
            images,
            texts,
            features.split.caption_to_image,
            k,
            progress=False,
        )
        matrices = cascade_score_matrices(
            first_images @ first_texts.T,
            lambda i, t: TEACHER.score_pairs(slice_features(images, i), slice_features(texts, t)),
            k,
        )
    forbid_model_scoring(monkeypatch)
    row = evaluate_cascade(
        Path("/dual"), Path("/cross"), Path("data"), Path("cache"), "test", k, progress=False
    )
    assert row == {"kind": "cascade", **expected}
    for found, reference in zip(twins[0], matrices, strict=True):
        assert_same_ranking(torch.as_tensor(found), torch.as_tensor(reference))
