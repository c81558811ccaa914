"""Full-ranking metrics of saved models, plug-in cross-encoders and dual -> cross cascades.

The functions here load a model, encode a split's cached features (or raw images and captions for a plug-in),
rank every caption against every image and return Recall@K, RSUM and median ranks. ``dcd eval``, the demo's
benchmarks and ``benchmarks/`` call them; the scoring itself lives in :mod:`dcd_itr.evaluate.scoring`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from dcd_itr.distill.frozen_teacher import load_frozen_teacher
from dcd_itr.errors import ConfigError
from dcd_itr.evaluate.scoring import (
    PairScores,
    encode_all,
    rank_cascade,
    score_all_pairs,
    scoring_model,
)
from dcd_itr.evaluate.twins import cascade_score_matrices, dataset_twin_scores, has_twins
from dcd_itr.features import POOLED_ONLY, TOWER_BATCH_SIZE, SplitFeatures, load_split_features
from dcd_itr.interfaces import FeatureBatch, is_cross_encoder, slice_features
from dcd_itr.metrics import rank_dual, recall_at_k_from_scores
from dcd_itr.models.registry import load_model, weights_fingerprint

# Batch sizes of every full-ranking evaluation (`dcd eval`, the training validators, `dcd bench`, the demo), so
# the same model gets the same numbers everywhere.
DUAL_ENCODE_BATCH = 1024  # rows per dual-head call: small MLPs on pooled vectors, big batches are cheap
CROSS_ENCODE_BATCH = 256  # rows per cross-encoder unimodal call: token grids make each row ~100x bigger
CROSS_TEXT_BLOCK = 512  # captions per score_matrix call: one image x 512 captions bounds fusion activations


def encode_split(model: Any, images: Any, texts: Any) -> tuple[FeatureBatch, FeatureBatch]:
    """A model's unimodal features of a split's images and captions, in the evaluation batch for its kind."""
    batch_size = CROSS_ENCODE_BATCH if is_cross_encoder(model) else DUAL_ENCODE_BATCH
    return (
        encode_all(model.encode_images, images, batch_size=batch_size),
        encode_all(model.encode_texts, texts, batch_size=batch_size),
    )


@torch.inference_mode()
def dual_metrics(model: Any, features: SplitFeatures) -> dict[str, float]:
    """Full-ranking metrics of a dual encoder on a split's cached features (blockwise dot products)."""
    images, texts = encode_split(model, features.images, features.texts)
    split = features.split  # text-identical captions are one query (dcd_itr.metrics)
    return rank_dual(
        images["embedding"], texts["embedding"], split.caption_to_image, caption_texts=split.captions
    )


def cross_metrics(
    model: Any,
    features: SplitFeatures,
    text_block: int = CROSS_TEXT_BLOCK,
    checkpoint_dir: Path | None = None,
    fingerprint: str = "",
    progress: bool = False,
) -> tuple[dict[str, float], PairScores]:
    """Full-ranking metrics of a cross-encoder on a split's cached features: every pair scored (resumable in
    ``checkpoint_dir``), then ranked (through :func:`scoring_model`). Returns the metrics and the scores with
    their speed."""
    model = scoring_model(model)
    with torch.inference_mode():
        images, texts = encode_split(model, features.images, features.texts)
    result = score_all_pairs(
        model,
        images,
        texts,
        text_block=text_block,
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        progress=progress,
    )
    split = features.split  # text-identical captions are one query (dcd_itr.metrics)
    return recall_at_k_from_scores(
        result.scores, split.caption_to_image, caption_texts=split.captions
    ), result


def _features(model, data: Path, features: Path, split: str) -> SplitFeatures:
    # a position-aware dual also reads tokens + mask (its feature_names)
    names = tuple(getattr(model, "feature_names", POOLED_ONLY))
    # see load_split_features: token states (cross-encoders, position-aware duals) are read per batch
    subset = {"lazy": True} if is_cross_encoder(model) else {"names": names, "lazy": "tokens" in names}
    return load_split_features(data, features, split, model.image_views, model.text_views, **subset)


def evaluate_model(
    folder: Path,
    data: Path,
    features: Path,
    split: str,
    scores_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of one saved model; a cross-encoder's pair scores are checkpointed in ``scores_dir``."""
    model = load_model(folder)
    cached = _features(model, data, features, split)
    if not is_cross_encoder(model):
        metrics = dual_metrics(model, cached)
        if has_twins(data, split):  # the scenes benchmark: its (N, M) similarity matrix is small
            with torch.inference_mode():
                images, texts = encode_split(model, cached.images, cached.texts)
            metrics |= dataset_twin_scores(data, cached.split, images["embedding"] @ texts["embedding"].T)
        return {"kind": "dual", **metrics}
    checkpoint = scores_dir / f"{folder.parent.name}_{folder.name}_{split}" if scores_dir else None
    fingerprint = f"{weights_fingerprint(folder)[:16]}:{split}"
    metrics, result = cross_metrics(model, cached, CROSS_TEXT_BLOCK, checkpoint, fingerprint, progress)
    metrics |= dataset_twin_scores(data, cached.split, result.scores)
    return {"kind": "cross", "pairs_per_second": result.pairs_per_second, **metrics}


def evaluate_cross_encoder(
    spec: str,
    data: Path,
    features: Path | None,
    split: str,
    scores_dir: Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Full-ranking metrics of a cross-encoder given by spec (a plug-in on raw images and captions, or a saved
    folder on cached features), frozen like a teacher; its pair scores are checkpointed in ``scores_dir``."""
    teacher = load_frozen_teacher(spec, device, options)
    if not teacher.raw_inputs and features is None:
        raise ConfigError(
            f"--cross-encoder {spec}: a saved model folder reads the feature cache; give --features"
        )
    split_data, image_inputs, text_inputs = teacher.inputs(data, features, split)
    batch_size = TOWER_BATCH_SIZE if teacher.raw_inputs else CROSS_ENCODE_BATCH  # raw: a tower per batch
    model = scoring_model(teacher.model)
    with torch.inference_mode():
        images = encode_all(model.encode_images, image_inputs, batch_size, progress=progress)
        texts = encode_all(model.encode_texts, text_inputs, batch_size, progress=progress)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_")[-80:]
    result = score_all_pairs(
        model,
        images,
        texts,
        checkpoint_dir=scores_dir / f"{slug}_{split}" if scores_dir else None,
        fingerprint=f"{teacher.fingerprint[:16]}:{split}",
        progress=progress,
    )
    metrics = recall_at_k_from_scores(
        result.scores, split_data.caption_to_image, caption_texts=split_data.captions
    )
    metrics |= dataset_twin_scores(data, split_data, result.scores)
    return {"kind": "cross", "pairs_per_second": result.pairs_per_second, **metrics}


def evaluate_cascade(
    dual_folder: Path,
    cross_folder: Path,
    data: Path,
    features: Path,
    split: str,
    k: int,
    progress: bool = True,
) -> dict[str, Any]:
    dual, cross = load_model(dual_folder), load_model(cross_folder)
    if is_cross_encoder(dual) or not is_cross_encoder(cross):
        raise ConfigError(
            f"a cascade needs a dual first stage and a cross-encoder second ({dual_folder}, {cross_folder})"
        )
    cross = scoring_model(cross)
    dual_features, cross_features = (
        _features(dual, data, features, split),
        _features(cross, data, features, split),
    )
    with torch.inference_mode():
        images, texts = encode_split(dual, dual_features.images, dual_features.texts)
        cross_images, cross_texts = encode_split(cross, cross_features.images, cross_features.texts)
    metrics = rank_cascade(
        images["embedding"],
        texts["embedding"],
        cross,
        cross_images,
        cross_texts,
        dual_features.split.caption_to_image,
        k,
        progress=progress,
    )
    if has_twins(data, split):  # twin scores from the cascade's final order (re-ranked k above the rest)
        with torch.inference_mode():
            by_image, by_caption = cascade_score_matrices(
                images["embedding"] @ texts["embedding"].T,
                lambda i, t: cross.score_pairs(
                    slice_features(cross_images, i), slice_features(cross_texts, t)
                ),
                k,
            )
        metrics |= dataset_twin_scores(data, dual_features.split, by_image, by_caption)
    return {"kind": "cascade", **metrics}
