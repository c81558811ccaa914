"""Part 2: measured per-item and per-pair costs, projected to the time to rank COCO-5K and Flickr30K-1K.

A system's cost model (seconds per unit of work, each measured in this run)::

    time(N images, M captions) = N * image_s + M * text_s           # unimodal encoding, once per item
                               + N * M * pair_s                     # cross-encoder on every pair
                               + first_stage_s(N, M)                # dual: similarities + ranks of the grid
                               + (N * min(k, M) + M * min(k, N)) * rerank_s   # cascade: k re-scores per query

A cross-encoder pays encoding + every pair; the dual encoding + its grid; a cascade encoding (both models'
encoders, or only the dual's when the cross features are cached) + the dual's grid + k re-scores per query.
``first_stage_s`` is not extrapolated: :func:`dual_ranking_seconds` times ``rank_dual`` on random unit
embeddings of exactly N x M. The existing ITR models (full-size ViLT-B/32, BLIP-ITM base) are built with
random weights -- timing does not depend on the weights, but their scores mean nothing (``timing_only``).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PretrainedConfig

from dcd_itr.metrics import rank_dual
from dcd_itr.models.hf.adapters import HF_CROSS_ENCODERS, full_size_config
from dcd_itr.speed.common import TIMING_ONLY_LABEL, timed
from dcd_itr.speed.ranking import SystemRun

RANKING_BENCHMARKS = {  # Karpathy test splits: images, captions (COCO has a few images with 6 captions)
    "COCO-5K": (5_000, 25_010),
    "Flickr30K-1K": (1_000, 5_000),
}
EXISTING_ITR = {"vilt": "ViLT-B/32", "blip-itm": "BLIP-ITM base"}  # kind -> the published model's name
TIMING_IMAGE_SIZE = (640, 480)  # COCO's typical photo: ViLT resizes it to 384 x 512 (192 patches)
TIMING_WORDS = [  # a small caption vocabulary; the timing tokenizer maps each word to one token anyway
    *("a", "man", "woman", "dog", "cat", "riding", "sitting", "on", "next", "to"),
    *("the", "red", "blue", "old", "small", "street", "table", "field"),
]


@dataclass
class CostModel:
    """Seconds per unit of work of one system (see the module docstring for how they add up)."""

    name: str
    image_s: float  # per image: decode + towers + unimodal heads
    text_s: float  # per caption: tokenise + tower + heads
    pair_s: float = 0.0  # per pair when every pair of the grid is cross-encoded
    first_stage: bool = False  # a dual ranking of the whole grid (timed by dual_ranking_seconds)
    rerank_k: int = 0  # cascade: re-scored candidates per query
    rerank_s: float = 0.0  # per re-scored pair
    timing_only: bool = False  # random weights: the speed is real, the scores are not

    def seconds(self, num_images: int, num_captions: int, first_stage_s: float = 0.0) -> float:
        """Projected wall time to rank ``num_images`` x ``num_captions`` (``first_stage_s``: the dual's grid)."""
        k = self.rerank_k
        rerank_pairs = num_images * min(k, num_captions) + num_captions * min(k, num_images)
        return (
            num_images * self.image_s
            + num_captions * self.text_s
            + num_images * num_captions * self.pair_s
            + (first_stage_s if self.first_stage else 0.0)
            + rerank_pairs * self.rerank_s
        )


def cost_from_run(run: SystemRun) -> CostModel:
    """The cost model of a system measured on the split: per-item encoding, per-pair scoring."""
    image_s, text_s = run.image_encoding_s / run.num_images, run.text_encoding_s / run.num_captions
    pair_s = run.scoring_s / run.pairs_scored if run.pairs_scored else 0.0
    if run.kind == "dual":
        return CostModel(run.name, image_s, text_s, first_stage=True)
    if run.kind == "cascade":  # the measured re-scoring time also holds the (small) first stage: conservative
        return CostModel(run.name, image_s, text_s, first_stage=True, rerank_k=run.cascade_k, rerank_s=pair_s)
    return CostModel(run.name, image_s, text_s, pair_s=pair_s)


def with_cross_features_cached(cascade: CostModel, dual: CostModel) -> CostModel:
    """The cascade charged only the dual's encoding: the issue's ``dual + k * (N + M) cross pairs``, i.e. the
    cross-encoder's unimodal features of every item already computed (as a served gallery holds them)."""
    return replace(
        cascade, name=f"{cascade.name}, cross features cached", image_s=dual.image_s, text_s=dual.text_s
    )


def dual_ranking_seconds(num_images: int, num_captions: int, dim: int, seed: int = 0) -> float:
    """Wall time of ``rank_dual`` (similarities + Recall@K ranks, both directions) on random unit embeddings."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(num_images, dim, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(num_captions, dim, generator=generator), dim=-1)
    caption_to_image = np.arange(num_captions) * num_images // num_captions  # (M,) ~M/N captions per image
    _, seconds = timed(lambda: rank_dual(images, texts, caption_to_image))
    return seconds


def timing_inputs(num_captions: int, seed: int = 0) -> tuple[Image.Image, list[str]]:
    """A COCO-sized noise image and ``num_captions`` COCO-length captions (10-12 words), reproducibly."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (TIMING_IMAGE_SIZE[1], TIMING_IMAGE_SIZE[0], 3), dtype=np.uint8)
    captions = [
        " ".join(rng.choice(TIMING_WORDS, size=int(rng.integers(10, 13)))) for _ in range(num_captions)
    ]
    return Image.fromarray(pixels), captions


def measure_hf_cost(
    kind: str,
    config: PretrainedConfig | None = None,  # None -> the published full-size architecture
    num_captions: int = 16,  # one image x 16 captions: the score_matrix shape, seconds per repeat at full size
    repeats: int = 2,  # after one untimed warm-up; the median damps a noisy neighbour
) -> tuple[CostModel, dict[str, Any]]:
    """Per-image, per-caption and per-pair seconds of a random-weight ``kind`` model (timing only)."""
    adapter = HF_CROSS_ENCODERS[kind].from_config(
        config or full_size_config(kind), pair_batch_size=num_captions
    )
    image, captions = timing_inputs(num_captions)
    image_features = adapter.encode_images([image])  # warm-up of every path, untimed
    text_features = adapter.encode_texts(captions)
    adapter.score_matrix(image_features, adapter.encode_texts(captions[:2]))
    image_s, text_s, pair_s = [], [], []
    for _ in range(repeats):
        image_features, seconds = timed(lambda: adapter.encode_images([image]))
        image_s.append(seconds)
        text_features, seconds = timed(lambda: adapter.encode_texts(captions))
        text_s.append(seconds / num_captions)
        _, seconds = timed(lambda i=image_features, t=text_features: adapter.score_matrix(i, t))
        pair_s.append(seconds / num_captions)
    name = f"{EXISTING_ITR.get(kind, kind)} ({TIMING_ONLY_LABEL})"
    cost = CostModel(
        name,
        statistics.median(image_s),
        statistics.median(text_s),
        pair_s=statistics.median(pair_s),
        timing_only=True,
    )
    details = {
        "kind": kind,
        "timing_only": True,
        "pairs_timed": num_captions * repeats,
        "repeats": repeats,
        "fusion_depth": adapter.fusion_depth,
        "parameters": sum(p.numel() for p in adapter.model.parameters()),
        "image_size": list(TIMING_IMAGE_SIZE),
        "pair_s_samples": pair_s,
    }
    return cost, details


def project(costs: list[CostModel], dual_ranking: dict[str, float]) -> list[dict[str, Any]]:
    """Each system's projected time per benchmark, and its speed-up over the teacher and over ViLT there."""
    rows = []
    for cost in costs:
        times = {
            bench: cost.seconds(n, m, dual_ranking.get(bench, 0.0))
            for bench, (n, m) in RANKING_BENCHMARKS.items()
        }
        rows.append(
            {**asdict(cost), "pairs_per_s": 1 / cost.pair_s if cost.pair_s else None, "seconds": times}
        )
    for reference, key in (("teacher", "speedup_over_teacher"), ("vilt", "speedup_over_vilt")):
        base = next((row for row in rows if _matches(row["name"], reference)), None)
        for row in rows:
            row[key] = (
                {bench: base["seconds"][bench] / row["seconds"][bench] for bench in RANKING_BENCHMARKS}
                if base
                else None
            )
    return rows


def _matches(name: str, reference: str) -> bool:
    return name == "teacher" if reference == "teacher" else name.startswith(EXISTING_ITR["vilt"])
