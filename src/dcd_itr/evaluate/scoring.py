"""Full-ranking evaluation of dual encoders, cross-encoders and dual -> cross cascades.

- :func:`dcd_itr.metrics.rank_dual`: a dual encoder's metrics from its embeddings, blockwise.
- :func:`score_all_pairs`: a cross-encoder's full (N, M) score matrix, resumable from safetensors shards; feed it to
  :func:`dcd_itr.metrics.recall_at_k_from_scores` (or to ``cascade_recall_from_scores`` to sweep cascade k).
- :func:`rank_cascade`: a dual first stage keeps its top k per query, the cross-encoder re-scores only those.
- :func:`scoring_model`: which object encodes and scores a cross-encoder's pairs in all of the above -- a grounded
  cross-encoder's split pair scorer (the same scores within float rounding, faster), any other model itself.

Metric names, the Recall@K protocol, the tie rule (pessimistic: a positive after the wrong candidates it ties
with) and text-identical captions are documented in :mod:`dcd_itr.metrics` (:func:`rank_cascade` keeps every
caption its own query).
Checkpoint folder of :func:`score_all_pairs`: ``manifest.json`` (format, num_images, num_captions, image_block,
text_block, shard_rows, fingerprint) and one ``rows_{start:07d}_{stop:07d}.safetensors`` per completed shard of
``shard_rows`` image rows, holding ``scores`` (stop - start, M) float32. Both are written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from dcd_itr.errors import CacheMismatchError, CorruptFileError
from dcd_itr.feature_rows import is_lazy, spill_rows
from dcd_itr.interfaces import (
    CrossEncoder,
    FeatureBatch,
    concat_features,
    feature_batch_size,
    slice_features,
)
from dcd_itr.io_utils import atomic_path, write_json_atomic
from dcd_itr.metrics import (
    BLOCK_SIZE,
    DIRECTIONS,
    cascade_ranks,
    direction_labels,
    first_stage_candidates,
    metrics_from_ranks,
    similarity_blocks,
)
from dcd_itr.models.grounded_pairs import pair_scorer

MANIFEST_FORMAT = "dcd-itr/score-shards/v1"  # names the folder's layout, in case it ever changes


@dataclass
class PairScores:
    """What :func:`score_all_pairs` returns."""

    scores: torch.Tensor  # (N, M) float32; row i = image i, column j = caption j
    pairs_scored: int  # pairs the model scored in this call (pairs loaded from shards not counted)
    seconds: float  # wall time of this call
    shards_reused: int  # shards loaded from the checkpoint folder instead of scored

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_scored / self.seconds if self.seconds > 0 else 0.0


def scoring_model(model: Any) -> Any:
    """What evaluates ``model``'s pairs: the split :class:`~dcd_itr.models.grounded_pairs.GroundedPairScorer` of
    a grounded cross-encoder (same scores within ~1e-5, fusion's last layer at the CLS position only, no per-image
    loop), else ``model`` itself. Encode *and* score with the returned object: its encodings are its own."""
    scorer = pair_scorer(model)
    return model if scorer is None else scorer


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Put an ``nn.Module`` in eval mode (no dropout) and restore every submodule's own flag afterwards."""
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    flags = [module.training for module in modules]
    for module in modules:
        module.training = False
    try:
        yield
    finally:
        for module, flag in zip(modules, flags, strict=True):
            module.training = flag


def _to_device(features: FeatureBatch, device: torch.device | str | None) -> FeatureBatch:
    return features if device is None else {name: value.to(device) for name, value in features.items()}


def encode_all(
    encode_fn: Callable[[Any], FeatureBatch],
    inputs: Sequence[Any] | FeatureBatch,
    batch_size: int = 64,  # fits a ViT-B tower on a small GPU; the unimodal pass is minor next to pair scoring
    progress: bool = False,
) -> FeatureBatch:
    """Run ``encode_fn`` (e.g. ``model.encode_images``) over ``inputs`` in batches and concatenate the results.

    ``inputs`` is anything sliceable with ``len`` (a list of images or strings) or a FeatureBatch of cached rows.
    Runs under ``torch.no_grad()`` (not inference mode, so the features can feed a training step) and with the
    owning module in eval mode.
    Lazy features (:class:`~dcd_itr.feature_rows.ShardedRows`, token states on disk) give lazy encodings: spilled
    to temporary shards and read back per batch, so a split's encoded token states are never held in RAM.
    """
    is_features = isinstance(inputs, dict)
    total = feature_batch_size(inputs) if is_features else len(inputs)

    def batches() -> Iterator[FeatureBatch]:
        for start in tqdm(range(0, total, batch_size), desc="encoding", unit="batch", disable=not progress):
            rows = slice(start, min(start + batch_size, total))
            yield encode_fn(slice_features(inputs, rows) if is_features else inputs[rows])

    with _eval_mode(getattr(encode_fn, "__self__", None)), torch.no_grad():
        if is_features and is_lazy(inputs):
            return spill_rows(batches())
        return concat_features(list(batches()))


class _ShardStore:
    """The checkpoint folder of one :func:`score_all_pairs` run (layout in the module docstring)."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.num_captions = manifest["num_captions"]
        folder.mkdir(parents=True, exist_ok=True)
        manifest_path = folder / "manifest.json"
        if not manifest_path.exists():
            write_json_atomic(manifest_path, manifest)
            return
        try:
            found = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CorruptFileError(manifest_path, f"unreadable score manifest ({error})") from error
        differences = [
            f"{key}: checkpoint has {found.get(key)!r}, this run has {value!r}"
            for key, value in manifest.items()
            if found.get(key) != value
        ]
        if differences:
            raise CacheMismatchError(
                f"score manifest {manifest_path} belongs to a different run ({'; '.join(differences)}); "
                "use another checkpoint_dir or delete this one"
            )

    def path(self, start: int, stop: int) -> Path:
        return self.folder / f"rows_{start:07d}_{stop:07d}.safetensors"

    def load(self, start: int, stop: int) -> torch.Tensor | None:
        """The shard's scores (stop - start, M), or None if it was never completed."""
        path = self.path(start, stop)
        if not path.exists():
            return None
        try:
            scores = load_file(path)["scores"]
        except Exception as error:  # safetensors raises its own error types for truncated or garbled files
            raise CorruptFileError(path, f"corrupt score shard ({error}); delete it to rescore") from error
        got, want = (scores.dtype, tuple(scores.shape)), (torch.float32, (stop - start, self.num_captions))
        if got != want:
            raise CorruptFileError(path, f"score shard holds {got}, expected {want}; delete it to rescore")
        return scores

    def save(self, start: int, stop: int, scores: torch.Tensor) -> None:
        """Write the shard atomically: a crash leaves either no shard or a complete one."""
        with atomic_path(self.path(start, stop)) as temp_path:
            save_file({"scores": scores.contiguous()}, temp_path)


def _score_rows(
    model: CrossEncoder,
    features: tuple[FeatureBatch, FeatureBatch],
    rows: range,
    image_block: int,
    text_block: int,
    device: torch.device | str | None,
    bar: tqdm,
) -> torch.Tensor:
    """Scores (len(rows), M) of image ``rows`` against every caption, one ``score_matrix`` call per block."""
    image_features, text_features = features
    num_captions = feature_batch_size(text_features)
    scores = torch.empty(len(rows), num_captions, dtype=torch.float32)  # (R, M)
    for i in range(rows.start, rows.stop, image_block):
        i_stop = min(i + image_block, rows.stop)
        images = _to_device(slice_features(image_features, slice(i, i_stop)), device)
        for j in range(0, num_captions, text_block):
            j_stop = min(j + text_block, num_captions)
            texts = _to_device(slice_features(text_features, slice(j, j_stop)), device)
            block = model.score_matrix(images, texts)  # (i_stop - i, j_stop - j)
            scores[i - rows.start : i_stop - rows.start, j:j_stop] = block.float().cpu()
        bar.update((i_stop - i) * num_captions)
    return scores


def score_all_pairs(
    model: CrossEncoder,
    image_features: FeatureBatch,
    text_features: FeatureBatch,
    image_block: int = 1,  # one image x many captions: the shape CrossEncoder.score_matrix is built for
    text_block: int = 256,  # 256 pairs per forward keeps a GPU busy while fusion activations stay small
    shard_rows: int = 64,  # COCO 5K test -> 79 shards: little work lost on interruption, few files
    checkpoint_dir: str | os.PathLike[str] | None = None,
    fingerprint: str = "",
    device: torch.device | str | None = None,
    progress: bool = True,
) -> PairScores:
    """Score every image against every caption with ``model.score_matrix``; returns the (N, M) matrix and speed.

    ``image_features`` / ``text_features`` are the unimodal features, computed once per item (see
    :func:`encode_all`); they stay where they are and each sliced block is moved to ``device`` if one is given.
    With ``checkpoint_dir``, every ``shard_rows`` image rows are saved as a shard and a rerun reuses completed
    shards. The manifest records N, M, the block sizes and ``fingerprint`` (the caller's id of model + data, e.g.
    a hash of checkpoint and split); any difference raises :class:`~dcd_itr.errors.CacheMismatchError`, and an
    unreadable shard :class:`~dcd_itr.errors.CorruptFileError` (both name the file).
    """
    num_images, num_captions = feature_batch_size(image_features), feature_batch_size(text_features)
    if min(image_block, text_block, shard_rows) < 1:
        raise ValueError(f"block sizes must be >= 1, got {image_block=}, {text_block=}, {shard_rows=}")
    store = None
    if checkpoint_dir is not None:
        manifest = {"format": MANIFEST_FORMAT, "num_images": num_images, "num_captions": num_captions}
        manifest |= {"image_block": image_block, "text_block": text_block, "shard_rows": shard_rows}
        store = _ShardStore(Path(checkpoint_dir), manifest | {"fingerprint": fingerprint})
    features = (image_features, text_features)
    scores = torch.empty(num_images, num_captions, dtype=torch.float32)  # (N, M)
    pairs_scored = shards_reused = 0
    started = time.perf_counter()
    bar = tqdm(total=scores.numel(), desc="scoring pairs", unit="pair", unit_scale=True, disable=not progress)
    with bar, _eval_mode(model), torch.inference_mode():
        for start in range(0, num_images, shard_rows):
            stop = min(start + shard_rows, num_images)
            shard = store.load(start, stop) if store is not None else None  # (stop - start, M)
            if shard is None:
                shard = _score_rows(model, features, range(start, stop), image_block, text_block, device, bar)
                pairs_scored += shard.numel()
                if store is not None:
                    store.save(start, stop, shard)
            else:
                shards_reused += 1
                bar.update(shard.numel())
            scores[start:stop] = shard
    return PairScores(scores, pairs_scored, time.perf_counter() - started, shards_reused)


def _rerank(
    model: CrossEncoder,
    features: tuple[FeatureBatch, FeatureBatch],
    direction: str,
    rows: slice,
    candidates: torch.Tensor,
    pair_batch: int,
    device: torch.device | str | None,
) -> torch.Tensor:
    """Cross-encoder scores (B, k) of queries ``rows`` (B of them) against their own k candidates (B, k)."""
    image_features, text_features = features
    num_queries, k = candidates.shape
    queries_per_call = max(1, pair_batch // k)
    scores = torch.empty(num_queries, k, dtype=torch.float32)  # (B, k)
    for start in range(0, num_queries, queries_per_call):
        stop = min(start + queries_per_call, num_queries)
        query_index = torch.arange(rows.start + start, rows.start + stop).repeat_interleave(k)  # (b * k,)
        candidate_index = candidates[start:stop].reshape(-1)  # (b * k,)
        pair = (query_index, candidate_index)
        image_index, text_index = pair if direction == "image_to_text" else pair[::-1]
        images = _to_device(slice_features(image_features, image_index), device)
        texts = _to_device(slice_features(text_features, text_index), device)
        scores[start:stop] = model.score_pairs(images, texts).float().cpu().reshape(stop - start, k)
    return scores


def rank_cascade(
    image_embeddings: torch.Tensor | np.ndarray,
    text_embeddings: torch.Tensor | np.ndarray,
    cross_encoder: CrossEncoder,
    image_features: FeatureBatch,
    text_features: FeatureBatch,
    caption_to_image: np.ndarray | torch.Tensor,
    k: int,
    block_size: int = BLOCK_SIZE,  # first-stage similarity rows held at once, as in rank_dual
    pair_batch: int = 256,  # pairs per cross-encoder forward, like score_all_pairs' text_block
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of a dual -> cross cascade, scoring only k pairs per query with the cross-encoder.

    In each direction the dual encoder (embeddings (N, D) and (M, D)) ranks all candidates blockwise, keeps each
    query's top ``k`` (ties to the lower index) and the cross-encoder re-scores those k with ``score_pairs``; the
    final list is the k in cross-encoder order, then the rest in dual order (see
    :func:`dcd_itr.metrics.cascade_ranks`). Returns the usual metrics plus ``cascade_k`` and ``pairs_scored``
    (cross-encoder pairs actually scored, ``(N + M) * k`` with k capped by the candidate count). Agrees with
    :func:`dcd_itr.metrics.cascade_recall_from_scores` on the full matrices.
    """
    images = torch.as_tensor(image_embeddings)
    texts = torch.as_tensor(text_embeddings).to(images.device)
    sizes = (len(images), feature_batch_size(image_features), len(texts), feature_batch_size(text_features))
    if k < 1 or sizes[0] != sizes[1] or sizes[2] != sizes[3] or sizes[2] != len(caption_to_image):
        raise ValueError(f"need k >= 1 (got {k}) and matching image / caption counts, got {sizes=}")
    features = (image_features, text_features)
    ranks: list[list[torch.Tensor]] = [[], []]  # per direction, the (B,) ranks of each query block
    pairs_scored = 0
    with _eval_mode(cross_encoder), torch.inference_mode():
        for direction, direction_ranks in zip(DIRECTIONS, ranks, strict=True):
            labels = direction_labels(caption_to_image, len(images), direction, images.device)
            blocks = first_stage_candidates(
                similarity_blocks(images, texts, direction, block_size), *labels, k
            )
            total = -(-(sizes[0] if direction == "image_to_text" else sizes[2]) // block_size)  # ceil
            for rows, first, candidates, positive in tqdm(blocks, direction, total, disable=not progress):
                rerank = _rerank(cross_encoder, features, direction, rows, candidates, pair_batch, device)
                direction_ranks.append(cascade_ranks(first, positive, rerank))  # (B,)
                pairs_scored += candidates.numel()
    metrics = metrics_from_ranks(*(torch.cat(r) for r in ranks))
    return {**metrics, "cascade_k": k, "pairs_scored": pairs_scored}
