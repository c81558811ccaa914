"""The cascade timed end to end on an index (query text -> dual top-k -> re-rank by the cross student from the
index's stored gallery-side encodings), the teacher's rate on the same kind of pairs, and a COCO-5K projection.

Measured here, in one process on the same threads:

- ``cascade``: :meth:`Retriever.search_text` per query (text towers of the dual and of the cross student's text
  side, the index search, the per-pair part on the top ``rerank``), over every query; queries/s and ms parts;
- ``old path``: the same retriever re-ranking without the store (cross towers run on the gallery images at query
  time, as before), on a few queries, with a check that both give the same hits and cross scores;
- ``teacher``: its text side per query and its per-pair part on ``sample_images`` gallery images x
  ``sample_queries`` queries (its image side computed beforehand, which favours the teacher); its full ranking of the
  gallery is *projected* as text + N x pair time per query;
- per-image costs of the dual's and the cross encoders' image sides on the sample (for the projection).

COCO-5K projection (N = 5,000 images, M = 25,010 captions, both directions, as in dcd_itr.speed.projection)::

    cascade = N (dual image + cross image side) + M (dual text + cross text side) + dual grid (timed at full size)
    (encodings in batches, as an offline ranking runs them; the online per-query encoding is reported beside)
            + (N + M) k x rerank seconds per re-scored pair (measured in the cascade)
    teacher = N x image side + M x text side (batched) + N M x pair seconds (measured on the sample)
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dcd_itr.export.runtime import load_dual_encoder
from dcd_itr.interfaces import FeatureBatch, feature_batch_size
from dcd_itr.models.end_to_end import EndToEnd
from dcd_itr.models.grounded_pairs import GroundedPairScorer
from dcd_itr.search.retriever import Retriever
from dcd_itr.speed.projection import RANKING_BENCHMARKS, dual_ranking_seconds


@dataclass
class CascadeRun:
    settings: dict[str, Any]
    cascade: dict[str, Any] = field(default_factory=dict)
    old_path: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    student_sample: dict[str, Any] = field(default_factory=dict)
    per_image: dict[str, float] = field(default_factory=dict)
    projection: dict[str, Any] = field(default_factory=dict)


def gallery_queries(retriever: Retriever, count: int, seed: int = 0) -> list[tuple[str, int]]:
    """``count`` (caption, its image row) pairs drawn from the gallery's own captions, reproducibly."""
    pairs = [(c, row) for row, captions in enumerate(retriever.gallery.image_captions) for c in captions]
    return random.Random(seed).sample(pairs, min(count, len(pairs)))


def _recall(hits, row: int, key: str, k: int) -> float:
    ordered = sorted(hits, key=lambda hit: -getattr(hit, key)) if key == "score" else hits
    return float(row in [hit.image for hit in ordered[:k]])


def time_cascade(retriever: Retriever, queries: list[tuple[str, int]], k: int, rerank: int) -> dict[str, Any]:
    """Every query through search_text; queries/s, mean ms per part, recall of dual order and re-ranked order."""
    parts: dict[str, list[float]] = {}
    recall = {"dual_R@1": [], "dual_R@10": [], "cascade_R@1": [], "cascade_R@10": []}
    started = time.perf_counter()
    for text, row in queries:
        result = retriever.search_text(text, k=max(k, rerank), rerank=rerank)
        for name, value in result.milliseconds.items():
            parts.setdefault(name, []).append(value)
        for at in (1, 10):
            recall[f"dual_R@{at}"].append(_recall(result.hits, row, "score", at))
            recall[f"cascade_R@{at}"].append(_recall(result.hits, row, "rank", at))
    seconds = time.perf_counter() - started
    return {
        "queries": len(queries),
        "seconds": seconds,
        "queries_per_s": len(queries) / seconds,
        "ms_mean": {name: statistics.fmean(values) for name, values in parts.items()},
        "ms_p50_total": statistics.median(parts["total"]),
        "rerank_pair_s": statistics.fmean(parts["rerank"]) / 1000 / rerank,
        **{name: 100 * statistics.fmean(values) for name, values in recall.items()},
    }


def old_path(retriever: Retriever, queries: list[tuple[str, int]], rerank: int) -> dict[str, Any]:
    """The same queries re-ranked with the cross towers run on the gallery at query time (no store, no cache
    carried between queries), and whether its hits and cross scores equal the stored path's."""
    stored, scorer = retriever.cross_store, retriever.cross_scorer
    new = [retriever.search_text(text, k=rerank, rerank=rerank) for text, _ in queries]
    retriever.cross_store, retriever.cross_scorer = None, None
    try:
        seconds, old = 0.0, []
        for text, _ in queries:
            retriever._image_cache.clear()  # the old path's LRU would hide its cost on repeated images
            retriever.image_cache_bytes = 0
            started = time.perf_counter()
            old.append(retriever.search_text(text, k=rerank, rerank=rerank))
            seconds += time.perf_counter() - started
    finally:
        retriever.cross_store, retriever.cross_scorer = stored, scorer
    same_ids = all([h.id for h in a.hits] == [h.id for h in b.hits] for a, b in zip(old, new, strict=True))
    difference = max(
        abs(a.cross_score - b.cross_score)
        for x, y in zip(old, new, strict=True)
        for a, b in zip(x.hits, y.hits, strict=True)
    )
    return {
        "queries": len(queries),
        "seconds": seconds,
        "queries_per_s": len(queries) / seconds,
        "same_hits": same_ids,
        "max_abs_cross_score_difference": difference,
    }


@torch.inference_mode()
def sample_tower_features(cross_dir: Path, image_paths: list[str]) -> tuple[FeatureBatch, float]:
    """The region towers' features of the sampled gallery images (teacher and student read the same view) and
    the seconds per image they took."""
    cross = EndToEnd.load(cross_dir)
    started = time.perf_counter()
    features = cross.tower_image_features(image_paths)
    return features, (time.perf_counter() - started) / len(image_paths)


@torch.inference_mode()
def sample_rates(
    cross_dir: Path, tower_features: FeatureBatch, texts: list[str], label: str
) -> tuple[dict[str, Any], float]:
    """A grounded cross-encoder's image side from tower features (seconds per image, towers excluded), text side
    per query (towers included) and per-pair seconds, each query against every sampled image."""
    cross = EndToEnd.load(cross_dir)
    scorer = GroundedPairScorer(cross.model)
    count = feature_batch_size(tower_features)
    started = time.perf_counter()
    images = scorer.encode_images(tower_features)
    image_s = (time.perf_counter() - started) / count
    text_s = pair_s = 0.0
    rows = torch.arange(count)
    for text in texts:
        started = time.perf_counter()
        query = scorer.encode_texts(cross.tower_text_features([text]))
        text_s += time.perf_counter() - started
        started = time.perf_counter()
        scorer.score(images, query, rows, torch.zeros_like(rows))
        pair_s += time.perf_counter() - started
    started = time.perf_counter()
    scorer.encode_texts(cross.tower_text_features(texts))  # offline ranking encodes captions in batches
    text_batch_s = (time.perf_counter() - started) / len(texts)
    pairs = len(texts) * count
    return {
        "model": label,
        "pairs": pairs,
        "text_s": text_s / len(texts),
        "text_batched_s": text_batch_s,
        "pair_s": pair_s / pairs,
        "pairs_per_s": pairs / pair_s,
        "fusion_layers": cross.fusion_depth,
    }, image_s


@torch.inference_mode()
def dual_seconds(
    model_dir: Path, image_paths: list[str], texts: list[str], runtime: str = "torch"
) -> tuple[float, float]:
    """The dual's seconds per image and per caption, each encoded in one batch."""
    encoder = load_dual_encoder(model_dir, runtime, "cpu")
    started = time.perf_counter()
    encoder.encode_images(image_paths)
    image_s = (time.perf_counter() - started) / len(image_paths)
    started = time.perf_counter()
    encoder.encode_texts(texts)
    return image_s, (time.perf_counter() - started) / len(texts)


def project_coco(run: CascadeRun, rerank: int, dim: int) -> dict[str, Any]:
    """The module docstring's cost model on COCO-5K from this run's measured rates."""
    images, captions = RANKING_BENCHMARKS["COCO-5K"]
    per_image, cascade, teacher = run.per_image, run.cascade, run.teacher
    caption_s = per_image["dual_text"] + run.student_sample["text_batched_s"]  # both text sides, batched
    grid_s = dual_ranking_seconds(images, captions, dim)
    cascade_s = (
        images * (per_image["dual"] + per_image["cross"])
        + captions * caption_s
        + grid_s
        + (images + captions) * rerank * cascade["rerank_pair_s"]
    )
    teacher_s = (
        images * per_image["teacher"]
        + captions * teacher["text_batched_s"]
        + images * captions * teacher["pair_s"]
    )
    return {
        "images": images,
        "captions": captions,
        "dual_grid_s": grid_s,
        "cascade_s": cascade_s,
        "teacher_s": teacher_s,
        "speedup": teacher_s / cascade_s,
    }
