"""Pair-scoring throughput of grounded cross-encoders, teacher and students side by side (issue 13's speed target).

For each model, from the same cached tower features of ``num_images`` images x all captions, one round times:

- ``current``: ``model.score_matrix`` on the model's encodings (one image at a time; the evaluation path until
  ``evaluate.scoring.scoring_model`` switched evaluation to the split scorer);
- ``per-pair``: :meth:`GroundedPairScorer.score_matrix` on encodings computed beforehand (the re-ranking path:
  gallery side stored, query side encoded once);
- ``end-to-end``: the scorer's image and text encodings of those items + its per-pair part.

Rounds alternate models (teacher, student, teacher, ...) in one process on the same threads, so a neighbour's
load hits every model alike; the best round of each is kept. :func:`agreement` checks on the same real pairs that
the split path gives the model's own scores and rankings.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from dcd_itr.interfaces import FeatureBatch, slice_features
from dcd_itr.models.grounded_pairs import GroundedPairScorer

MODES = ("current", "per-pair", "end-to-end")


def _best(times: dict[str, dict[str, float]], name: str, mode: str, seconds: float) -> None:
    times.setdefault(name, {})
    times[name][mode] = min(times[name].get(mode, float("inf")), seconds)


@torch.inference_mode()
def pair_split_speed(
    models: dict[str, torch.nn.Module],  # name -> GroundedCrossEncoder (eval mode)
    images: FeatureBatch,  # cached tower features of the timed images
    texts: FeatureBatch,  # cached tower features of the captions
    repeats: int = 3,  # rounds; the best of each is kept (see the module docstring)
) -> dict[str, dict[str, Any]]:
    """Per model: seconds and pairs/s of each mode (best round), for len(images) x len(texts) pairs."""
    scorers = {name: GroundedPairScorer(model) for name, model in models.items()}
    encoded = {
        name: (model.encode_images(images), model.encode_texts(texts)) for name, model in models.items()
    }
    split = {name: (s.encode_images(images), s.encode_texts(texts)) for name, s in scorers.items()}
    times: dict[str, dict[str, float]] = {}
    pairs = 0
    for _ in range(repeats):
        for name, model in models.items():
            started = time.perf_counter()
            pairs = model.score_matrix(*encoded[name]).numel()
            _best(times, name, "current", time.perf_counter() - started)
            scorer = scorers[name]
            started = time.perf_counter()
            scorer.score_matrix(*split[name])
            _best(times, name, "per-pair", time.perf_counter() - started)
            started = time.perf_counter()
            scorer.score_matrix(scorer.encode_images(images), scorer.encode_texts(texts))
            _best(times, name, "end-to-end", time.perf_counter() - started)
    return {
        name: {"pairs": pairs, **{f"{m}_seconds": s for m, s in t.items()}}
        | {f"{m}_pairs_per_s": pairs / s for m, s in t.items()}
        for name, t in times.items()
    }


@torch.inference_mode()
def agreement(model: torch.nn.Module, images: FeatureBatch, texts: FeatureBatch) -> dict[str, float]:
    """The split path against ``model.score_matrix`` on the same real pairs: max |difference| of the logits, the
    share of images whose whole caption ranking / top 10 is identical, and of captions whose top-1 image is the
    same."""
    expected = model.score_matrix(model.encode_images(images), model.encode_texts(texts))  # (N, M)
    scorer = GroundedPairScorer(model)
    found = scorer.score_matrix(scorer.encode_images(images), scorer.encode_texts(texts))
    same_order = (expected.argsort(dim=1, stable=True) == found.argsort(dim=1, stable=True)).all(dim=1)
    top = min(10, expected.shape[1])
    same_top = (expected.topk(top, dim=1).indices == found.topk(top, dim=1).indices).all(dim=1)
    return {
        "max_abs_difference": float((expected - found).abs().max()),
        "logit_range": float(expected.max() - expected.min()),
        "images_same_caption_ranking": float(same_order.float().mean()),  # ties within ~1e-5 may swap
        "images_same_top10_captions": float(same_top.float().mean()),
        "captions_same_top1_image": float((expected.argmax(0) == found.argmax(0)).float().mean()),
    }


def subset(features: FeatureBatch, count: int) -> FeatureBatch:
    return slice_features(features, slice(0, count))


@torch.inference_mode()
def stage_seconds(model: torch.nn.Module, images: FeatureBatch, texts: FeatureBatch) -> dict[str, float]:
    """Seconds of each stage of the split scorer's per-pair part over len(images) x len(texts) pairs, chunk by
    chunk as :meth:`GroundedPairScorer.score` runs them: grounding + geometry MLP (with the gathers), the full
    fusion layers, the CLS-only last layer + head."""
    from dcd_itr.models.grounded_pairs import _last_layer_cls  # the stage functions themselves

    scorer = GroundedPairScorer(model)
    image_side, text_side = scorer.encode_images(images), scorer.encode_texts(texts)
    num_images, num_texts = image_side["pairs.keys"].shape[0], text_side["pairs.queries"].shape[0]
    image_rows = torch.arange(num_images).repeat_interleave(num_texts)
    text_rows = torch.arange(num_texts).repeat(num_images)
    seconds = {"grounding + geometry MLP": 0.0, "full fusion layers": 0.0, "CLS-only last layer + head": 0.0}
    for start in range(0, len(image_rows), scorer.pair_chunk):
        rows_i, rows_t = (
            image_rows[start : start + scorer.pair_chunk],
            text_rows[start : start + scorer.pair_chunk],
        )
        started = time.perf_counter()
        mask = text_side["pairs.text_mask"][rows_t]
        length = max(1, int(mask.sum(dim=1).max()))  # the chunk's all-padding columns dropped, as score does
        mask = mask[:, :length]
        tokens = scorer._grounded_tokens(image_side, text_side, rows_i, rows_t, length)
        pairs, width = tokens.shape[0], tokens.shape[-1]
        cls = (model.cls_token + model.positions[:, :1]).expand(pairs, 1, width)
        stream = torch.cat([cls, tokens], dim=1)
        padding = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], dim=1)
        middle = time.perf_counter()
        for layer in model.layers[:-1]:
            stream = layer(stream, src_key_padding_mask=padding)
        last = time.perf_counter()
        model.head(model.final_norm(_last_layer_cls(model.layers[-1], stream, padding)))
        done = time.perf_counter()
        seconds["grounding + geometry MLP"] += middle - started
        seconds["full fusion layers"] += last - middle
        seconds["CLS-only last layer + head"] += done - last
    return seconds
