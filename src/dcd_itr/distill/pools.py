"""DCD steps 1 and 2: anchors, candidate pools, teacher scores over the pools, hard-negative selection.

There is one anchor per positive pair, i.e. per caption, in each direction:

- ``image_to_text``: anchor = (image, one of its captions); ``anchor_rows`` are image rows, candidates are captions.
- ``text_to_image``: anchor = (caption, its image); ``anchor_rows`` are caption rows, candidates are images.

A pool is ``candidates[a] = [positive, n_1, ..., n_{P-1}]``: the negatives are drawn uniformly without replacement
from the other side's rows and exclude every positive of the anchor (all captions of the anchor's image for
image_to_text; the caption's one image for text_to_image). With ``exclude_same_text`` (the default) they also
exclude every text-identical caption (image_to_text: every caption whose normalised text equals one of the anchor
image's captions) and every image that has the anchor caption's text (text_to_image), the relation of
:mod:`dcd_itr.data.same_text`: a caption string on several images is not a negative of any of them.

Sampling method (vectorised, no Python loop per anchor): draw every free slot with replacement, mark the slots
that hold a positive or repeat a value already kept in the row, redraw only those, and repeat until no row has a
marked slot. Rows still unfinished after ``MAX_REJECTION_ROUNDS`` (and every row, when positives plus negatives
take up more than half of the other side, where redrawing converges slowly) are filled exactly instead: random keys
over all candidates, excluded ones set to +inf, the smallest keys win. Each step treats all allowed candidates
alike, so every (P-1)-subset of the allowed ones is equally likely. The random stream depends only on
(seed, round_index, direction).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.data.same_text import TextGroups
from dcd_itr.feature_rows import is_lazy, spill_rows
from dcd_itr.interfaces import (
    CrossEncoder,
    FeatureBatch,
    concat_features,
    feature_batch_size,
    slice_features,
)

DIRECTIONS = ("image_to_text", "text_to_image")
MAX_REJECTION_ROUNDS = 16  # each round leaves ~(P+positives)/C of the slots marked; 16 rounds leave ~none
EXACT_FILL_ELEMENTS = 1 << 24  # random keys per exact-fill chunk: 64 MiB of float32
# excluded(anchor_keys (a,), values (a, n)) -> (a, n) bool: True where a value may not be a negative of its anchor
Exclusion = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Pools:
    """Candidate pools of one direction for all A anchors (see the module docstring)."""

    direction: str
    anchor_rows: Tensor  # (A,) int64: image row (image_to_text) or caption row (text_to_image)
    positive: Tensor  # (A,) int64: the positive candidate's row on the other side
    candidates: Tensor  # (A, P) int64: column 0 is the positive, columns 1.. distinct negatives

    @property
    def num_anchors(self) -> int:
        return self.candidates.shape[0]

    @property
    def pool_size(self) -> int:
        return self.candidates.shape[1]


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")


def round_generator(seed: int, round_index: int, direction: str) -> torch.Generator:
    """A CPU generator seeded from (seed, round_index, direction) alone."""
    digest = hashlib.sha256(f"dcd-pools/{seed}/{round_index}/{direction}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _invalid_slots(values: Tensor, kept: Tensor, excluded: Exclusion, anchor_keys: Tensor) -> Tensor:
    """True where ``values`` (a, n) holds an excluded candidate of its anchor or repeats a value earlier in the row.

    Among equal values a ``kept`` slot (a, n) counts as the first, so a fresh draw never evicts a kept one.
    """
    is_positive = excluded(anchor_keys, values)  # (a, n)
    sort_key, order = (values * 2 + (~kept).long()).sort(dim=1, stable=True)  # equal values: kept first
    sorted_values = sort_key // 2  # (a, n)
    repeat_sorted = torch.zeros_like(is_positive)
    repeat_sorted[:, 1:] = sorted_values[:, 1:] == sorted_values[:, :-1]
    return is_positive | torch.zeros_like(is_positive).scatter_(1, order, repeat_sorted)


def _fill_exactly(
    values: Tensor,
    free: Tensor,
    num_candidates: int,
    excluded: Exclusion,
    anchor_keys: Tensor,
    generator: torch.Generator,
) -> None:
    """Fill the ``free`` slots (a, n) of ``values`` in place with distinct allowed candidates, exactly uniformly."""
    rows_per_chunk = max(1, EXACT_FILL_ELEMENTS // num_candidates)
    for start in range(0, values.shape[0], rows_per_chunk):
        chunk = slice(start, start + rows_per_chunk)
        keys = torch.rand(values[chunk].shape[0], num_candidates, generator=generator)  # (c, C)
        used = torch.zeros_like(keys).scatter_add_(1, values[chunk], (~free[chunk]).float())  # (c, C)
        everyone = torch.arange(num_candidates).expand(keys.shape[0], num_candidates)  # (c, C)
        keys[excluded(anchor_keys[chunk], everyone) | (used > 0)] = float("inf")
        best = keys.topk(values.shape[1], dim=1, largest=False).indices  # (c, n), random order of allowed
        rank = (free[chunk].long().cumsum(dim=1) - 1).clamp(min=0)  # (c, n): k-th free slot takes k-th best
        values[chunk] = torch.where(free[chunk], best.gather(1, rank), values[chunk])


def _sample_negatives(
    num_candidates: int,
    max_excluded: int,
    excluded: Exclusion,
    anchor_keys: Tensor,
    preset: Tensor,
    free: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """Fill the ``free`` slots of ``preset`` (A, n); the kept slots must already be valid and distinct."""
    values, free = preset.clone(), free.clone()
    num_slots, max_positives = preset.shape[1], max_excluded
    rounds = MAX_REJECTION_ROUNDS if 2 * (num_slots + max_positives) <= num_candidates else 0
    for _ in range(rounds):
        rows = free.any(dim=1).nonzero().squeeze(1)  # (r,)
        if rows.numel() == 0:
            break
        draws = torch.randint(0, num_candidates, (rows.numel(), num_slots), generator=generator)  # (r, n)
        row_values = torch.where(free[rows], draws, values[rows])
        free[rows] = _invalid_slots(row_values, ~free[rows], excluded, anchor_keys[rows])
        values[rows] = row_values
    rows = free.any(dim=1).nonzero().squeeze(1)
    if rows.numel():
        row_values = values[rows]
        _fill_exactly(row_values, free[rows], num_candidates, excluded, anchor_keys[rows], generator)
        values[rows] = row_values
    return values


def build_pools(
    split: RetrievalSplit,
    direction: str,
    pool_size: int,
    seed: int,
    round_index: int,
    student_negatives: Tensor | None = None,
    exclude_same_text: bool = True,  # a text-identical caption is no negative (see the module docstring)
) -> Pools:
    """Candidate pools (A = split.num_captions anchors, P = pool_size) for one direction and mining round.

    ``student_negatives`` (A, S) with S <= P-1, optional: rows (on the candidate side) of the student's own
    top-ranked wrong answers, placed in columns 1..S. Entries that are excluded, repeats or negative (padding,
    e.g. -1) are replaced by uniform draws, like every remaining slot.
    """
    check_direction(direction)
    caption_to_image = torch.tensor(split.caption_to_image, dtype=torch.int64)  # (A,) a copy, not the split's
    captions = torch.arange(split.num_captions)  # (A,)
    image_to_text = direction == "image_to_text"
    anchor_rows, positive = (caption_to_image, captions) if image_to_text else (captions, caption_to_image)
    num_candidates = split.num_captions if image_to_text else split.num_images
    excluded, anchor_keys, max_excluded = pool_exclusion(split, direction, exclude_same_text)
    num_negatives = pool_size - 1
    if num_negatives < 1:
        raise ValueError(f"pool_size must be at least 2 (the positive and one negative), got {pool_size}")
    available = num_candidates - max_excluded
    if num_negatives > available:
        side = "captions" if image_to_text else "images"
        raise ValueError(
            f"pool_size {pool_size} needs {num_negatives} negatives per {direction} anchor, but the "
            f"{split.name!r} split has {num_candidates} {side} and some anchor has only {available} that are "
            f"not its positives (or text-identical to one); use pool_size <= {available + 1}"
        )
    preset = torch.zeros(len(anchor_rows), num_negatives, dtype=torch.int64)  # (A, P-1)
    free = torch.ones_like(preset, dtype=torch.bool)  # (A, P-1) slots still to draw
    if student_negatives is not None:
        given = _check_student_negatives(student_negatives, len(anchor_rows), num_negatives, num_candidates)
        width = given.shape[1]
        preset[:, :width] = given.clamp(min=0)
        free[:, :width] = (given < 0) | _invalid_slots(preset[:, :width], given >= 0, excluded, anchor_keys)
    negatives = _sample_negatives(
        num_candidates,
        max_excluded,
        excluded,
        anchor_keys,
        preset,
        free,
        round_generator(seed, round_index, direction),
    )
    return Pools(direction, anchor_rows, positive, torch.cat([positive[:, None], negatives], dim=1))


def pool_exclusion(split: RetrievalSplit, direction: str, same_text: bool) -> tuple[Exclusion, Tensor, int]:
    """``(excluded, anchor_keys (A,), max_excluded)`` for the anchors of ``direction`` (one per caption).

    ``excluded(anchor_keys[rows], values)`` is True where a candidate row may not be a negative of the anchor: a
    positive, and with ``same_text`` every text-identical caption / every image that has the anchor's text.
    ``max_excluded`` is the most candidates any anchor excludes.
    """
    caption_to_image = torch.tensor(split.caption_to_image, dtype=torch.int64)  # (M,)
    image_to_text = direction == "image_to_text"
    if same_text:
        groups = TextGroups.from_captions(split.captions, caption_to_image)
        if image_to_text:  # key: the anchor's image; candidates: captions
            return (
                lambda keys, values: groups.related(keys[:, None], values),
                caption_to_image,
                groups.max_related_captions(),
            )
        return (  # key: the anchor caption; candidates: images
            lambda keys, values: groups.related(values, keys[:, None]),
            torch.arange(split.num_captions),
            groups.max_related_images(),
        )
    if image_to_text:
        return (
            lambda keys, values: caption_to_image[values] == keys[:, None],
            caption_to_image,
            int(torch.bincount(caption_to_image).max()),
        )
    return lambda keys, values: values == keys[:, None], caption_to_image, 1


def _check_student_negatives(
    given: Tensor, num_anchors: int, num_negatives: int, num_candidates: int
) -> Tensor:
    if given.dim() != 2 or given.shape[0] != num_anchors or given.shape[1] > num_negatives:
        raise ValueError(
            f"student_negatives must have shape (A={num_anchors}, S<={num_negatives}), got {tuple(given.shape)}"
        )
    if given.is_floating_point() or (given.numel() and int(given.max()) >= num_candidates):
        raise ValueError(
            f"student_negatives must be integer rows below {num_candidates} (negative = padding)"
        )
    return given.to(torch.int64)


def select_hard_negatives(
    pool_teacher_scores: Tensor, candidates: Tensor, num_candidates: int
) -> tuple[Tensor, Tensor]:
    """The student's list ``[positive, hard_1, ..., hard_{K-1}]`` and the teacher's logits at exactly those entries.

    pool_teacher_scores (A, P) and candidates (A, P), column 0 the positive; K = ``num_candidates``. The hard
    negatives are the K-1 negatives (columns 1..P-1) the teacher scores highest, best first (ties: lower column).
    Returns ``(student_candidates (A, K) int64, teacher_logits (A, K))``, both gathered at the same columns, so
    the teacher's logit for the positive stays in column 0 even where the teacher ranks a negative above it.
    """
    if pool_teacher_scores.shape != candidates.shape or candidates.dim() != 2:
        raise ValueError(
            f"scores {tuple(pool_teacher_scores.shape)} and candidates {tuple(candidates.shape)} must both be (A, P)"
        )
    if not 1 <= num_candidates <= candidates.shape[1]:
        raise ValueError(
            f"num_candidates K={num_candidates} must be between 1 and the pool size {candidates.shape[1]}"
        )
    negative_order = pool_teacher_scores[:, 1:].sort(dim=1, descending=True, stable=True).indices  # (A, P-1)
    hard_columns = negative_order[:, : num_candidates - 1] + 1  # (A, K-1) columns into the pool
    columns = torch.cat([torch.zeros_like(hard_columns[:, :1]), hard_columns], dim=1)  # (A, K)
    return candidates.gather(1, columns), pool_teacher_scores.gather(1, columns)


def _model_device(model: Any) -> torch.device:
    parameter = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    return parameter.device if parameter is not None else torch.device("cpu")


def _encode_all(encode: Any, features: FeatureBatch, batch_size: int, device: torch.device) -> FeatureBatch:
    """Run ``encode`` once on every row of ``features``, ``batch_size`` rows at a time. Lazy features (rows on disk,
    :class:`~dcd_itr.feature_rows.ShardedRows`) give lazy encodings: spilled to temporary shards, read per batch."""
    total = feature_batch_size(features)

    def batches():
        for start in range(0, total, batch_size):
            rows = slice_features(features, slice(start, start + batch_size))
            yield encode({name: value.to(device) for name, value in rows.items()})

    return spill_rows(batches()) if is_lazy(features) else concat_features(list(batches()))


def score_pools(
    teacher: CrossEncoder,
    image_features: FeatureBatch,
    text_features: FeatureBatch,
    pools: Pools,
    batch_anchors: int = 256,  # 256 anchors x P=16 = 4096 pairs per score_pairs call: fills a GPU, fits a CPU
    encode_batch_size: int = 256,  # rows per encode call; lazy features: the encodings are spilled to disk
    progress: bool = True,  # a COCO round is ~9.4M pairs: worth a progress bar
) -> Tensor:
    """Teacher logits for every (anchor, candidate) pair of ``pools`` -> (A, P) float32 on the CPU.

    ``image_features`` (N rows) and ``text_features`` (M rows) are the whole split's model inputs; each side is
    encoded once per item (kept in memory, or for lazy inputs spilled to temporary shards, so memory stays bounded
    by a batch at COCO scale), then pairs are scored with ``teacher.score_pairs`` in batches, under inference mode.
    The teacher must be in eval mode (dropout would make the cached scores noisy).
    """
    if isinstance(teacher, torch.nn.Module) and teacher.training:
        raise ValueError("the teacher is in training mode; freeze it (teacher.eval()) before scoring pools")
    image_is_anchor = pools.direction == "image_to_text"
    num_images, num_texts = feature_batch_size(image_features), feature_batch_size(text_features)
    image_rows_used = pools.anchor_rows if image_is_anchor else pools.candidates
    text_rows_used = pools.candidates if image_is_anchor else pools.anchor_rows
    if int(image_rows_used.max()) >= num_images or int(text_rows_used.max()) >= num_texts:
        raise ValueError(
            f"pools refer to rows beyond the features given ({num_images} images, {num_texts} texts)"
        )
    device, pool_size = _model_device(teacher), pools.pool_size
    scores = torch.empty(pools.num_anchors, pool_size, dtype=torch.float32)  # (A, P)
    with torch.inference_mode():
        images = _encode_all(teacher.encode_images, image_features, encode_batch_size, device)
        texts = _encode_all(teacher.encode_texts, text_features, encode_batch_size, device)
        starts = range(0, pools.num_anchors, batch_anchors)
        for start in tqdm(starts, desc=f"teacher {pools.direction}", unit="batch", disable=not progress):
            block = slice(start, start + batch_anchors)
            anchor_pairs = pools.anchor_rows[block].repeat_interleave(pool_size).to(device)  # (b*P,)
            candidate_pairs = pools.candidates[block].reshape(-1).to(device)  # (b*P,)
            image_rows, text_rows = (
                (anchor_pairs, candidate_pairs) if image_is_anchor else (candidate_pairs, anchor_pairs)
            )
            image_batch, text_batch = slice_features(images, image_rows), slice_features(texts, text_rows)
            logits = teacher.score_pairs(
                {name: value.to(device) for name, value in image_batch.items()},  # spilled rows: read on CPU
                {name: value.to(device) for name, value in text_batch.items()},
            )
            scores[block] = logits.float().reshape(-1, pool_size).cpu()
    return scores


def score_pools_by_image(
    teacher: CrossEncoder,
    images: Sequence[Any],
    texts: Sequence[str],
    pools: Pools,
    images_per_block: int = 64,  # at COCO's ~5 captions and P=16: ~5K pairs and 64 decoded images per block
    pair_batch_size: int = 256,  # pairs per score_pairs call, as in score_pools
    progress: bool = True,
) -> Tensor:
    """Teacher logits (A, P) for a teacher that reads raw data: ``images[i]`` a PIL image, ``texts[j]`` a string.

    :func:`score_pools` encodes the whole split first; for a raw-data teacher that would hold, e.g., ViLT's patch
    embeddings of every training image at once. Here the A*P pairs are grouped by image and scored in blocks of
    ``images_per_block`` distinct images: each image is loaded and encoded once per call, each caption once per
    block, and memory stays bounded by the block. The teacher must be frozen (eval mode).
    """
    num_anchors, pool_size = pools.candidates.shape
    anchors = pools.anchor_rows[:, None].expand(num_anchors, pool_size)  # (A, P)
    image_is_anchor = pools.direction == "image_to_text"
    image_rows, text_rows = (anchors, pools.candidates) if image_is_anchor else (pools.candidates, anchors)
    image_rows, text_rows = image_rows.reshape(-1), text_rows.reshape(-1)  # (A*P,) each
    order = image_rows.argsort(stable=True)  # (A*P,) pair indices grouped by image
    unique_images, counts = image_rows[order].unique_consecutive(return_counts=True)  # (U,), (U,)
    ends = counts.cumsum(0)  # (U,) end of each image's run in `order`
    scores = torch.empty(num_anchors * pool_size, dtype=torch.float32)  # (A*P,)
    starts = range(0, len(unique_images), images_per_block)
    with torch.inference_mode():
        for first in tqdm(starts, desc=f"teacher {pools.direction}", unit="block", disable=not progress):
            block = unique_images[first : first + images_per_block]  # (b,) sorted image rows
            pairs = order[(int(ends[first - 1]) if first else 0) : int(ends[first + len(block) - 1])]
            image_local = torch.searchsorted(block, image_rows[pairs])  # (n,) rows into the block
            block_texts, text_local = text_rows[pairs].unique(return_inverse=True)  # (t,), (n,)
            image_features = teacher.encode_images([images[i] for i in block.tolist()])
            text_features = teacher.encode_texts([texts[j] for j in block_texts.tolist()])
            for start in range(0, len(pairs), pair_batch_size):
                chunk = slice(start, start + pair_batch_size)
                logits = teacher.score_pairs(
                    slice_features(image_features, image_local[chunk]),
                    slice_features(text_features, text_local[chunk]),
                )
                scores[pairs[chunk]] = logits.float().reshape(-1).cpu()
    return scores.reshape(num_anchors, pool_size)
