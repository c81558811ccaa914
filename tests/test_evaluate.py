"""Cross-encoder full ranking (with resume) and cascades, using a toy cross-encoder whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dcd_itr.errors import CacheMismatchError, CorruptFileError
from dcd_itr.evaluate import encode_all, rank_cascade, score_all_pairs
from dcd_itr.interfaces import CrossEncoder, FeatureBatch
from dcd_itr.metrics import cascade_recall_from_scores, rank_dual, recall_at_k_from_scores


class IdCrossEncoder(torch.nn.Module):
    """Features are numbers; the pair score is ``-|image_id - text_id|``, so the right order is known."""

    fusion_depth = 1

    def __init__(self) -> None:
        super().__init__()
        self.dropout = torch.nn.Dropout(0.5)  # a submodule whose train/eval flag must be handled
        self.pairs_scored = 0
        self.encode_calls = 0
        self.saw_training = False

    def _encode(self, ids) -> FeatureBatch:
        self.encode_calls += 1
        return {"id": torch.as_tensor(ids, dtype=torch.float32)}

    def encode_images(self, images) -> FeatureBatch:
        return self._encode(images)

    def encode_texts(self, texts) -> FeatureBatch:
        return self._encode(texts)

    def _count(self, scores: torch.Tensor) -> torch.Tensor:
        self.pairs_scored += scores.numel()
        self.saw_training |= self.training or self.dropout.training
        return scores

    def score_pairs(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        return self._count(-(image_features["id"] - text_features["id"]).abs())  # (B,)

    def score_matrix(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        return self._count(-(image_features["id"][:, None] - text_features["id"][None, :]).abs())  # (Ni, Mt)


def toy_split(num_images: int = 10, captions_per_image: int = 3, seed: int = 0):
    """Caption ids sit near their image's id (offset < 0.5), so every caption is closest to its own image."""
    generator = np.random.default_rng(seed)
    owner = np.repeat(np.arange(num_images), captions_per_image)[: num_images * captions_per_image - 2]
    caption_ids = owner + generator.uniform(-0.4, 0.4, size=len(owner))
    model = IdCrossEncoder()
    image_features = encode_all(model.encode_images, list(range(num_images)), batch_size=4)
    text_features = encode_all(model.encode_texts, caption_ids.tolist(), batch_size=4)
    expected = -(image_features["id"][:, None] - text_features["id"][None, :]).abs()  # (N, M)
    return model, image_features, text_features, owner, expected


def test_toy_model_satisfies_protocol() -> None:
    assert isinstance(IdCrossEncoder(), CrossEncoder)


def test_encode_all_batches_and_concatenates() -> None:
    model = IdCrossEncoder()
    features = encode_all(model.encode_texts, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], batch_size=3)
    assert features["id"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert model.encode_calls == 3
    doubled = encode_all(
        lambda rows: {"id": 2 * rows["id"]}, features, batch_size=5
    )  # cached FeatureBatch rows
    assert torch.equal(doubled["id"], 2 * features["id"])


def test_score_all_pairs_known_matrix_and_eval_mode() -> None:
    model, image_features, text_features, owner, expected = toy_split()
    model.train()
    result = score_all_pairs(model, image_features, text_features, text_block=7, shard_rows=4, progress=False)
    assert result.scores.dtype == torch.float32 and torch.equal(result.scores, expected)
    assert result.pairs_scored == model.pairs_scored == expected.numel()
    assert result.pairs_per_second > 0 and result.shards_reused == 0
    assert not model.saw_training and model.training and model.dropout.training  # eval inside, restored after
    metrics = recall_at_k_from_scores(result.scores, owner)
    assert metrics["image_to_text_R@1"] == 100.0 and metrics["text_to_image_R@1"] == 100.0
    blocked = score_all_pairs(
        model, image_features, text_features, image_block=3, text_block=100, progress=False
    )
    assert torch.equal(blocked.scores, expected)


def test_resume_scores_only_missing_shards(tmp_path) -> None:
    model, image_features, text_features, _, expected = toy_split()
    options = dict(text_block=5, shard_rows=4, checkpoint_dir=tmp_path, fingerprint="toy-v1", progress=False)
    first = score_all_pairs(model, image_features, text_features, **options)
    shards = sorted(tmp_path.glob("rows_*.safetensors"))
    assert [p.name for p in shards] == [
        f"rows_{a:07d}_{b:07d}.safetensors" for a, b in ((0, 4), (4, 8), (8, 10))
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["manifest.json", *(p.name for p in shards)])
    assert torch.equal(first.scores, expected)

    shards[1].unlink()  # simulate an interruption before rows 4..7 were saved
    rerun_model = IdCrossEncoder()
    second = score_all_pairs(rerun_model, image_features, text_features, **options)
    num_captions = expected.shape[1]
    assert rerun_model.pairs_scored == second.pairs_scored == 4 * num_captions
    assert second.shards_reused == 2
    assert torch.equal(second.scores, expected)

    third_model = IdCrossEncoder()
    third = score_all_pairs(third_model, image_features, text_features, **options)
    assert third_model.pairs_scored == third.pairs_scored == 0 and torch.equal(third.scores, expected)


def test_manifest_mismatch_names_file_and_field(tmp_path) -> None:
    model, image_features, text_features, _, _ = toy_split()
    score_all_pairs(
        model, image_features, text_features, checkpoint_dir=tmp_path, fingerprint="a", progress=False
    )
    with pytest.raises(CacheMismatchError, match=r"manifest\.json.*fingerprint: checkpoint has 'a'.*'b'"):
        score_all_pairs(
            model, image_features, text_features, checkpoint_dir=tmp_path, fingerprint="b", progress=False
        )
    with pytest.raises(CacheMismatchError, match="num_captions"):
        score_all_pairs(
            model, image_features, {"id": text_features["id"][:5]}, checkpoint_dir=tmp_path, fingerprint="a"
        )


def test_corrupt_shard_reported_by_name(tmp_path) -> None:
    model, image_features, text_features, _, _ = toy_split()
    options = dict(shard_rows=4, checkpoint_dir=tmp_path, progress=False)
    score_all_pairs(model, image_features, text_features, **options)
    (tmp_path / "rows_0000004_0000008.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CorruptFileError, match=r"rows_0000004_0000008\.safetensors.*corrupt"):
        score_all_pairs(model, image_features, text_features, **options)
    save_file({"scores": torch.zeros(4, 3)}, tmp_path / "rows_0000004_0000008.safetensors")  # wrong shape
    wrong_shape = r"rows_0000004_0000008\.safetensors.*expected \(torch.float32, \(4, 28\)\)"
    with pytest.raises(CorruptFileError, match=wrong_shape):
        score_all_pairs(model, image_features, text_features, **options)


def dual_embeddings(owner: np.ndarray, num_images: int, seed: int = 0):
    """A mediocre dual encoder: noisy copies of random image vectors, so the cascade has work to do."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(num_images, 8, generator=generator), dim=1)
    noise = torch.randn(len(owner), 8, generator=generator)
    return images, torch.nn.functional.normalize(images[owner] + 1.2 * noise, dim=1)


@pytest.mark.parametrize("k", [1, 4, 50])
def test_rank_cascade_matches_full_matrix_reference(k: int) -> None:
    model, image_features, text_features, owner, expected = toy_split(num_images=12)
    images, texts = dual_embeddings(owner, num_images=12)
    model.train()
    options = dict(block_size=5, pair_batch=7, progress=False)  # neither divides N = 12 or M = 34
    metrics = rank_cascade(images, texts, model, image_features, text_features, owner, k, **options)
    reference = cascade_recall_from_scores(images @ texts.T, expected, owner, k)
    assert metrics == pytest.approx(reference)
    num_images, num_captions = expected.shape
    expected_pairs = num_images * min(k, num_captions) + num_captions * min(k, num_images)
    assert metrics["pairs_scored"] == model.pairs_scored == expected_pairs
    assert not model.saw_training and model.training
    if k == 1:  # k = 1 re-ranks nothing: the first stage's metrics
        assert {key: metrics[key] for key in reference if "@" in key} == pytest.approx(
            {key: value for key, value in rank_dual(images, texts, owner).items() if "@" in key}
        )


def test_rank_cascade_hand_made() -> None:
    # first-stage scores = images @ texts.T with images = I, texts = first.T; caption j belongs to image j
    first = torch.tensor([[0.8, 0.9, 0.1], [0.5, 0.6, 0.4], [0.9, 0.8, 0.1]])
    owner = np.arange(3)
    model = IdCrossEncoder()
    features = {"id": torch.arange(3.0)}
    args = (torch.eye(3), first.T.contiguous(), model, features, features, owner)
    # image 0's caption is 2nd in its top 2 and the cross-encoder fixes it; image 2's caption is 3rd, outside
    metrics = rank_cascade(*args, k=2, progress=False)
    assert metrics["image_to_text_R@1"] == pytest.approx(200 / 3)
    assert metrics["image_to_text_R@5"] == 100.0
    # captions: 0's image is 2nd in its top 2 (fixed); 1's and 2's images are 3rd, outside the top 2 (stay 3rd)
    assert metrics["text_to_image_R@1"] == pytest.approx(100 / 3)
    assert metrics["text_to_image_median_rank"] == 3.0
    assert metrics["cascade_k"] == 2 and metrics["pairs_scored"] == model.pairs_scored == 12
    assert rank_cascade(*args, k=3, progress=False)["image_to_text_R@1"] == 100.0


def test_rank_cascade_rejects_mismatched_inputs() -> None:
    model, image_features, text_features, owner, _ = toy_split()
    images, texts = dual_embeddings(owner, num_images=10)
    with pytest.raises(ValueError, match="matching image / caption counts"):
        rank_cascade(images[:9], texts, model, image_features, text_features, owner, k=3, progress=False)


@pytest.mark.slow
def test_rank_dual_coco_size_is_bounded_and_sane() -> None:
    owner = np.repeat(np.arange(5000), 5)
    images, texts = dual_embeddings(owner, num_images=5000)
    metrics = rank_dual(images, texts, owner, block_size=768)  # at most 768 x 25,000 scores held at once
    assert metrics["num_images"] == 5000 and metrics["num_captions"] == 25000
    assert 0.0 < metrics["text_to_image_R@1"] < metrics["text_to_image_R@10"] <= 100.0
