"""`dcd eval`: full-ranking Recall@K of trained models (dual, cross-encoder), plug-in cross-encoders (``vilt:ID``,
``bridgetower:ID``, ``blip-itm:ID``, ``python:MODULE:NAME``; see :mod:`dcd_itr.models.plugins`) and dual -> cross
cascades."""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path
from typing import Any

import torch

from dcd_itr.config import apply_override
from dcd_itr.distill.teacher import load_frozen_teacher
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
            return {
                "kind": "dual",
                **rank_dual(
                    images, texts, cached.split.caption_to_image, caption_texts=cached.split.captions
                ),
            }
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
    metrics = recall_at_k_from_scores(
        result.scores, cached.split.caption_to_image, caption_texts=cached.split.captions
    )
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
    metrics = recall_at_k_from_scores(
        result.scores, split_data.caption_to_image, caption_texts=split_data.captions
    )
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


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["dtype=bfloat16", "pair_batch_size=64"]`` -> a dict, each value parsed as YAML."""
    options: dict[str, Any] = {}
    for pair in pairs:
        apply_override(options, pair)
    return options


def run_eval(
    models: list[Path],
    data: Path,
    features: Path | None,
    split: str = "test",
    cascade: str | None = None,
    cascade_k: list[int] | None = None,
    out: Path | None = None,
    scores_dir: Path | None = None,
    progress: bool = True,
    cross_encoders: list[str] | None = None,
    device: str = "cpu",
    options: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    if (models or cascade) and features is None:
        raise ConfigError("--model and --cascade read the feature cache: give --features")
    if not (models or cascade or cross_encoders):
        raise ConfigError("nothing to evaluate: give --model, --cross-encoder or --cascade")
    rows: dict[str, dict[str, Any]] = {}
    for folder in models:
        rows[str(folder)] = evaluate_model(folder, data, features, split, scores_dir, progress)
    for spec in cross_encoders or []:
        rows[spec] = evaluate_cross_encoder(
            spec, data, features, split, scores_dir, progress, device, options
        )
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
        "and text->image. Dual encoders rank blockwise in bounded memory; cross-encoders (saved folders on cached "
        "features, or --cross-encoder plug-ins on raw images and captions) score every pair (resumable with "
        "--scores-dir); a cascade re-scores the dual's top k with the cross-encoder. Ties: lower index first.",
    )
    parser.add_argument("--model", type=Path, action="append", default=[], help="model folder, repeatable")
    parser.add_argument(
        "--cross-encoder",
        action="append",
        default=[],
        metavar="SPEC",
        help="a cross-encoder ranked on raw images and captions, repeatable: vilt:PATH_OR_HUB_ID, "
        "bridgetower:PATH_OR_HUB_ID, blip-itm:PATH_OR_HUB_ID, python:MODULE:NAME or python:FILE.py:NAME",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="loader option for every --cross-encoder plug-in, repeatable (e.g. dtype=bfloat16, pair_batch_size=64)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where --cross-encoder plug-ins run: cpu, cuda or auto (default %(default)s)",
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset file or folder")
    parser.add_argument(
        "--features", type=Path, help="feature cache folder (dcd features); needed by --model and --cascade"
    )
    parser.add_argument("--split", default="test", help="split to rank (default %(default)s)")
    parser.add_argument("--cascade", help="DUAL_DIR:CROSS_DIR: also evaluate the dual -> cross cascade")
    parser.add_argument("--k", type=int, action="append", help="cascade k, repeatable (default 16)")
    parser.add_argument("--out", type=Path, help="write all metrics as JSON here")
    parser.add_argument("--scores-dir", type=Path, help="checkpoint cross-encoder scores here (resumable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(
        handler=lambda a: run_eval(
            a.model,
            a.data,
            a.features,
            a.split,
            a.cascade,
            a.k,
            a.out,
            a.scores_dir,
            not a.quiet,
            a.cross_encoder,
            a.device,
            parse_options(a.option),
        )
    )
