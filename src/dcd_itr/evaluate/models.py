"""Full-ranking metrics of saved models, plug-in cross-encoders and dual -> cross cascades.

The functions here load a model, encode a split's cached features (or raw images and captions for a plug-in),
rank every caption against every image and return Recall@K, RSUM and median ranks. ``dcd eval``, the demo's
benchmarks and ``benchmarks/`` call them; the scoring itself lives in :mod:`dcd_itr.evaluate.scoring`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch

from dcd_itr.distill.teacher import load_frozen_teacher
from dcd_itr.errors import ConfigError
from dcd_itr.evaluate.scoring import encode_all, rank_cascade, score_all_pairs
from dcd_itr.features import SplitFeatures, load_split_features
from dcd_itr.interfaces import is_cross_encoder
from dcd_itr.metrics import rank_dual, recall_at_k_from_scores
from dcd_itr.models.registry import load_model


def _weights_hash(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:16]


def _features(model, data: Path, features: Path, split: str) -> SplitFeatures:
    return load_split_features(data, features, split, model.image_views, model.text_views)


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
    with torch.inference_mode():
        if not is_cross_encoder(model):
            images = encode_all(model.encode_images, cached.images, batch_size=1024)["embedding"]
            texts = encode_all(model.encode_texts, cached.texts, batch_size=1024)["embedding"]
            return {"kind": "dual", **rank_dual(images, texts, cached.split.caption_to_image)}
        images = encode_all(model.encode_images, cached.images, batch_size=256)
        texts = encode_all(model.encode_texts, cached.texts, batch_size=256)
    checkpoint = scores_dir / f"{folder.parent.name}_{folder.name}_{split}" if scores_dir else None
    result = score_all_pairs(
        model,
        images,
        texts,
        text_block=512,
        checkpoint_dir=checkpoint,
        fingerprint=f"{_weights_hash(folder)}:{split}",
        progress=progress,
    )
    metrics = recall_at_k_from_scores(result.scores, cached.split.caption_to_image)
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
    batch_size = 32 if teacher.raw_inputs else 256  # raw images are decoded and run through a tower per batch
    with torch.inference_mode():
        images = encode_all(teacher.model.encode_images, image_inputs, batch_size, progress=progress)
        texts = encode_all(teacher.model.encode_texts, text_inputs, batch_size, progress=progress)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_")[-80:]
    result = score_all_pairs(
        teacher.model,
        images,
        texts,
        checkpoint_dir=scores_dir / f"{slug}_{split}" if scores_dir else None,
        fingerprint=f"{teacher.fingerprint[:16]}:{split}",
        progress=progress,
    )
    metrics = recall_at_k_from_scores(result.scores, split_data.caption_to_image)
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
    dual_features, cross_features = (
        _features(dual, data, features, split),
        _features(cross, data, features, split),
    )
    with torch.inference_mode():
        images = encode_all(dual.encode_images, dual_features.images, batch_size=1024)["embedding"]
        texts = encode_all(dual.encode_texts, dual_features.texts, batch_size=1024)["embedding"]
        cross_images = encode_all(cross.encode_images, cross_features.images, batch_size=256)
        cross_texts = encode_all(cross.encode_texts, cross_features.texts, batch_size=256)
    metrics = rank_cascade(
        images,
        texts,
        cross,
        cross_images,
        cross_texts,
        dual_features.split.caption_to_image,
        k,
        progress=progress,
    )
    return {"kind": "cascade", **metrics}
