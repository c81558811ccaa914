"""Part 1: full ranking of a split from raw images and captions, timed stage by stage, RSUM from the same scores.

Every tower view (``efficientnet-lite2@260``, ``minilm-l6@40``, ...) runs once per item in this run and each
system is charged for every view it uses, plus the image decoding and its own unimodal heads; features are
computed once per item (never per pair). A system's time is::

    image encoding  = decode every image + each image view it uses + its image heads
    text encoding   = each text view it uses + its text heads
    scoring         = unimodal features -> ranks of every query (pair scoring and the Recall@K ranks)

Scoring calls exactly what ``dcd eval`` calls, with the same block sizes and the same scorer
(``evaluate.scoring.scoring_model``): ``score_all_pairs`` then
``recall_at_k_from_scores`` for a cross-encoder, ``rank_dual`` for the dual, ``rank_cascade`` for a cascade, so
the RSUM printed beside a time is the RSUM of the scores that time produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.data.images import load_rgb
from dcd_itr.encoders import build_image_tower, build_text_tower
from dcd_itr.encoders.views import DEFAULT_TEXT_LENGTH, parse_view
from dcd_itr.evaluate import encode_all, rank_cascade, score_all_pairs
from dcd_itr.evaluate.models import CROSS_ENCODE_BATCH, CROSS_TEXT_BLOCK, DUAL_ENCODE_BATCH
from dcd_itr.evaluate.scoring import scoring_model
from dcd_itr.evaluate.twins import cascade_score_matrices, twin_scores
from dcd_itr.features import TOWER_BATCH_SIZE
from dcd_itr.interfaces import FeatureBatch, slice_features
from dcd_itr.metrics import rank_dual, recall_at_k_from_scores, top_k_candidates
from dcd_itr.speed.common import ratio, timed

TOP_IMAGES = 10  # each caption's best images kept per system (outside the timed part), for example queries


@dataclass
class SystemRun:
    """One system's full ranking of the split: where the time went and what it kept."""

    name: str  # "teacher", "cross student", "dual student", "cascade k=16"
    kind: str  # "teacher" | "cross" | "dual" | "cascade"
    num_images: int
    num_captions: int
    image_encoding_s: float
    text_encoding_s: float
    scoring_s: float
    pairs_scored: int  # cross-encoder pairs; for the dual, the N*M image-caption similarities
    metrics: dict[str, Any] = field(default_factory=dict)
    cascade_k: int | None = None
    # (M, TOP_IMAGES) image rows of each caption's best images, best first, ties to the lower index; computed
    # after the timed part from the same scores (None for a cascade); not part of ``as_dict``
    top_images: torch.Tensor | None = field(default=None, repr=False)

    @property
    def encoding_s(self) -> float:
        return self.image_encoding_s + self.text_encoding_s

    @property
    def total_s(self) -> float:
        return self.encoding_s + self.scoring_s

    @property
    def rsum(self) -> float:
        return float(self.metrics["rsum"])

    def as_dict(self, teacher: SystemRun | None = None) -> dict[str, Any]:
        """The row written to speed.json: measured times, derived rates, and ratios to ``teacher``."""
        return {
            "name": self.name,
            "kind": self.kind,
            "cascade_k": self.cascade_k,
            "num_images": self.num_images,
            "num_captions": self.num_captions,
            "image_encoding_s": self.image_encoding_s,
            "text_encoding_s": self.text_encoding_s,
            "scoring_s": self.scoring_s,
            "total_s": self.total_s,
            "pairs_scored": self.pairs_scored,
            "pairs_per_s": ratio(self.pairs_scored, self.scoring_s),
            "items_per_s_encoding": ratio(self.num_images + self.num_captions, self.encoding_s),
            "speedup_over_teacher": ratio(teacher.total_s, self.total_s) if teacher else None,
            "rsum": self.rsum,
            "rsum_pct_of_teacher": 100.0 * self.rsum / teacher.rsum if teacher and teacher.rsum else None,
            "metrics": self.metrics,
        }


class SplitEncoder:
    """Decodes a split's images once and runs each tower view once over all images or captions, timing each."""

    def __init__(self, split: RetrievalSplit, device: str = "cpu", twin_index=None) -> None:
        self.split, self.device = split, device
        self.twin_index = twin_index  # (N,) twin row per image on the scenes benchmark, else None
        self.images, self.decode_s = timed(lambda: [load_rgb(path) for path in split.image_paths])
        self._features: dict[str, FeatureBatch] = {}
        self.view_seconds: dict[str, float] = {}

    def image_view(self, view: str) -> FeatureBatch:
        """``"<view>.<name>"`` tower outputs of every image; loading the tower and one warm-up call are not timed."""
        if view not in self._features:
            name, size = parse_view(view)
            tower = build_image_tower(name, image_size=size, device=self.device)
            tower.encode(self.images[:1])  # warm-up (lazy initialisation), not timed
            features, seconds = timed(lambda: tower.encode(self.images, batch_size=TOWER_BATCH_SIZE))
            self._store(view, features, seconds)
        return self._features[view]

    def text_view(self, view: str) -> FeatureBatch:
        if view not in self._features:
            name, length = parse_view(view, DEFAULT_TEXT_LENGTH)
            tower = build_text_tower(name, max_length=length, device=self.device)
            captions = list(self.split.captions)
            tower.encode(captions[:1], pad_to_max_length=True)  # warm-up, not timed
            features, seconds = timed(
                lambda: tower.encode(captions, batch_size=TOWER_BATCH_SIZE, pad_to_max_length=True)
            )
            self._store(view, features, seconds)
        return self._features[view]

    def _store(self, view: str, features: FeatureBatch, seconds: float) -> None:
        self._features[view] = {f"{view}.{key}": value for key, value in features.items()}
        self.view_seconds[view] = seconds

    def twins(
        self, scores: torch.Tensor, caption_query_scores: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Twin text / image / group scores of (N, M) scores on the scenes benchmark; ``{}`` elsewhere."""
        if self.twin_index is None:
            return {}
        return twin_scores(scores, self.split, self.twin_index, caption_query_scores)

    def image_seconds(self, views: set[str]) -> float:
        return self.decode_s + sum(self.view_seconds[view] for view in views)

    def text_seconds(self, views: set[str]) -> float:
        return sum(self.view_seconds[view] for view in views)


@dataclass
class EncodedModel:
    """A model's unimodal features of the whole split and what its own heads cost (towers excluded)."""

    model: nn.Module
    images: FeatureBatch
    texts: FeatureBatch
    image_head_s: float
    text_head_s: float

    @property
    def image_views(self) -> set[str]:
        return set(self.model.image_views)

    @property
    def text_views(self) -> set[str]:
        return set(self.model.text_views)


def encode_model(model: nn.Module, encoder: SplitEncoder, dual: bool) -> EncodedModel:
    """Tower outputs of the model's views (shared with other models) through its unimodal heads, timed; a
    grounded cross-encoder encodes and scores through its split pair scorer, as `dcd eval` does."""
    model = scoring_model(model)
    tower_images: FeatureBatch = {}
    for view in model.image_views:
        tower_images.update(encoder.image_view(view))
    tower_texts: FeatureBatch = {}
    for view in model.text_views:
        tower_texts.update(encoder.text_view(view))
    batch = DUAL_ENCODE_BATCH if dual else CROSS_ENCODE_BATCH  # what `dcd eval` uses
    images, image_s = timed(lambda: encode_all(model.encode_images, tower_images, batch_size=batch))
    texts, text_s = timed(lambda: encode_all(model.encode_texts, tower_texts, batch_size=batch))
    return EncodedModel(model, images, texts, image_s, text_s)


def rank_cross(
    name: str, kind: str, encoded: EncodedModel, encoder: SplitEncoder, progress: bool = False
) -> SystemRun:
    """Every pair scored by a cross-encoder (teacher or student), then ranked."""
    split = encoder.split

    def score() -> tuple[dict[str, Any], torch.Tensor, int]:
        result = score_all_pairs(
            encoded.model, encoded.images, encoded.texts, text_block=CROSS_TEXT_BLOCK, progress=progress
        )
        metrics = recall_at_k_from_scores(result.scores, split.caption_to_image, caption_texts=split.captions)
        return metrics, result.scores, result.pairs_scored

    (metrics, scores, pairs), seconds = timed(score)
    metrics |= encoder.twins(scores)  # from the timed run's scores, outside the timing
    return SystemRun(
        name,
        kind,
        split.num_images,
        split.num_captions,
        encoder.image_seconds(encoded.image_views) + encoded.image_head_s,
        encoder.text_seconds(encoded.text_views) + encoded.text_head_s,
        seconds,
        pairs,
        metrics,
        top_images=top_k_candidates(scores.T, TOP_IMAGES),  # (M, k) from the (N, M) scores, not timed
    )


def rank_dual_system(name: str, encoded: EncodedModel, encoder: SplitEncoder) -> SystemRun:
    """Dot products of the dual's embeddings, ranked blockwise."""
    split = encoder.split
    metrics, seconds = timed(
        lambda: rank_dual(
            encoded.images["embedding"],
            encoded.texts["embedding"],
            split.caption_to_image,
            caption_texts=split.captions,
        )
    )
    metrics |= encoder.twins(encoded.images["embedding"] @ encoded.texts["embedding"].T)
    return SystemRun(
        name,
        "dual",
        split.num_images,
        split.num_captions,
        encoder.image_seconds(encoded.image_views) + encoded.image_head_s,
        encoder.text_seconds(encoded.text_views) + encoded.text_head_s,
        seconds,
        split.num_images * split.num_captions,
        metrics,
        top_images=top_k_candidates(  # (M, k) from the similarities the timed ranking used, computed again
            (encoded.images["embedding"] @ encoded.texts["embedding"].T).T, TOP_IMAGES
        ),
    )


def rank_cascade_system(
    dual: EncodedModel, cross: EncodedModel, encoder: SplitEncoder, k: int, progress: bool = False
) -> SystemRun:
    """The dual ranks everything, the cross-encoder re-scores each query's top k; both models' encoders run
    over every item (every item is some query's candidate), a tower view shared by the two runs once."""
    split = encoder.split
    metrics, seconds = timed(
        lambda: rank_cascade(
            dual.images["embedding"],
            dual.texts["embedding"],
            cross.model,
            cross.images,
            cross.texts,
            split.caption_to_image,
            k,
            progress=progress,
        )
    )
    if encoder.twin_index is not None:  # the cascade's final order (re-ranked k above the rest), not timed
        by_image, by_caption = cascade_score_matrices(
            dual.images["embedding"] @ dual.texts["embedding"].T,
            lambda i, t: cross.model.score_pairs(
                slice_features(cross.images, i), slice_features(cross.texts, t)
            ),
            k,
        )
        metrics |= encoder.twins(by_image, by_caption)
    return SystemRun(
        f"cascade k={k}",
        "cascade",
        split.num_images,
        split.num_captions,
        encoder.image_seconds(dual.image_views | cross.image_views) + dual.image_head_s + cross.image_head_s,
        encoder.text_seconds(dual.text_views | cross.text_views) + dual.text_head_s + cross.text_head_s,
        seconds,
        int(metrics["pairs_scored"]),
        metrics,
        cascade_k=k,
    )
