"""`dcd eval`: full-ranking Recall@K of trained models (dual, cross-encoder) and dual -> cross cascades."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import torch

from dcd_itr.errors import ConfigError
from dcd_itr.evaluate import encode_all, rank_cascade, score_all_pairs
from dcd_itr.io_utils import write_json_atomic
from dcd_itr.metrics import format_metrics_table, rank_dual, recall_at_k_from_scores
from dcd_itr.models.interfaces import is_cross_encoder
from dcd_itr.models.registry import load_model
from dcd_itr.tasks.common import SplitFeatures, load_split_features


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


def run_eval(
    models: list[Path],
    data: Path,
    features: Path,
    split: str = "test",
    cascade: str | None = None,
    cascade_k: list[int] | None = None,
    out: Path | None = None,
    scores_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for folder in models:
        rows[str(folder)] = evaluate_model(folder, data, features, split, scores_dir, progress)
    if cascade:
        if ":" not in cascade:
            raise ConfigError(f"--cascade {cascade!r}: expected DUAL_DIR:CROSS_DIR")
        dual_dir, cross_dir = (Path(p) for p in cascade.split(":", 1))
        for k in cascade_k or [16]:
            rows[f"cascade k={k}"] = evaluate_cascade(dual_dir, cross_dir, data, features, split, k, progress)
    print(format_metrics_table(rows))
    if out:
        write_json_atomic(out, rows)
        print(f"metrics written to {out}")
    return rows


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="Recall@1/5/10 both directions, RSUM and median rank of trained models and cascades",
        description="Full ranking of a split: image->text (a hit if any of the image's captions is in the top K) "
        "and text->image. Dual encoders rank blockwise in bounded memory; cross-encoders score every pair (resumable "
        "with --scores-dir); a cascade re-scores the dual's top k with the cross-encoder. Ties: lower index first.",
    )
    parser.add_argument("--model", type=Path, action="append", default=[], help="model folder, repeatable")
    parser.add_argument("--data", type=Path, required=True, help="dataset file or folder")
    parser.add_argument("--features", type=Path, required=True, help="feature cache folder (dcd features)")
    parser.add_argument("--split", default="test", help="split to rank (default %(default)s)")
    parser.add_argument("--cascade", help="DUAL_DIR:CROSS_DIR: also evaluate the dual -> cross cascade")
    parser.add_argument("--k", type=int, action="append", help="cascade k, repeatable (default 16)")
    parser.add_argument("--out", type=Path, help="write all metrics as JSON here")
    parser.add_argument("--scores-dir", type=Path, help="checkpoint cross-encoder scores here (resumable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(
        handler=lambda a: run_eval(
            a.model, a.data, a.features, a.split, a.cascade, a.k, a.out, a.scores_dir, not a.quiet
        )
    )
