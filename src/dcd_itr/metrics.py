"""Retrieval metrics: ranks, Recall@K, RSUM and median rank, for full score matrices and blockwise dual encoders.

Protocol (Karpathy-split image-text retrieval):

- **image -> text** (text retrieval): for each image, the rank of the best-ranked of its captions among all M
  captions;
- **text -> image** (image retrieval): for each caption, the rank of its image among all N images;
- a query is a hit at K when its 0-based rank is ``< K``; Recall@K is reported as a percentage; RSUM is the sum of
  the six recalls; the median rank is 1-based, ``floor(median(0-based ranks)) + 1`` (the VSE++/SCAN convention).

**Tie rule** (pessimistic): a correct candidate ranks after every wrong candidate with an equal score, i.e. the
0-based rank of a query's best positive, with score b, is ``#(score > b) + #(wrong candidates with score == b)``.
A model that scores everything alike gets the recall of the worst order, not 100%. (Which candidates a cascade's
first stage keeps is a separate choice: :func:`top_k_candidates` breaks ties to the lower index.)

**Text-identical captions** (``caption_texts=``, optional): captions whose normalised text is equal
(:mod:`dcd_itr.data.same_text`) are one query and one candidate — the first of them stands for all — correct for
every image that has that text. Then ``num_captions`` counts distinct texts. Without ``caption_texts`` every
caption is its own query and candidate, correct only for its own image.

Scores are "higher is better" and may be any real dtype; NaN scores are rejected.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from dcd_itr.data.same_text import TextGroups
from dcd_itr.io_utils import write_json_atomic

RECALL_KS = (1, 5, 10)  # the cutoffs every published image-text retrieval table reports
DIRECTIONS = ("image_to_text", "text_to_image")
BLOCK_SIZE = 1024  # query rows per block: 1024 x 25K float32 = 100 MB, bounded yet big enough to be fast
# A query block: (query rows, their scores (B, C) against all candidates).
Blocks = Iterator[tuple[slice, torch.Tensor]]
# rows of a block of queries -> (B, C) bool: which candidates are correct for each query
PositiveFn = Callable[[slice], torch.Tensor]


def best_target_ranks(scores: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's best-ranked positive candidate, under the (pessimistic) tie rule.

    ``scores`` (B, C) are higher-is-better and free of NaN; ``positive_mask`` (B, C) marks the correct candidates
    of each row. Returns int64 (B,): the candidates scored above the best positive plus the wrong ones tied with
    it; a row without any positive gets C.
    """
    if not scores.is_floating_point():
        scores = scores.double()  # integer scores: exact in float64, and -inf needs a float dtype
    num_rows, num_columns = scores.shape
    row, column = positive_mask.nonzero(as_tuple=True)  # (P,), (P,)
    best_score = scores.new_full((num_rows,), -math.inf)  # (B,)
    best_score = best_score.scatter_reduce(0, row, scores[row, column], "amax")[:, None]  # (B, 1)
    ahead = (scores > best_score) | ((scores == best_score) & ~positive_mask)  # (B, C)
    ranks = ahead.sum(dim=1)
    has_positive = torch.zeros(num_rows, dtype=torch.bool, device=scores.device)
    has_positive[row] = True
    return torch.where(has_positive, ranks, torch.full_like(ranks, num_columns))


def check_no_nan(values: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` if ``values`` contain NaN (ranks would be undefined)."""
    if values.is_floating_point() and torch.isnan(values).any():
        raise ValueError(f"{what} contain NaN; ranks would be undefined")


def direction_labels(
    caption_to_image: np.ndarray | torch.Tensor,
    num_images: int,
    direction: str,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(query_labels, candidate_labels)`` on ``device``: a candidate is correct when the labels are equal.

    Labels are image rows: image -> text has queries ``0..N-1`` and candidates ``caption_to_image``; text -> image
    the other way round. Checks that every image has a caption and every caption a valid image.
    """
    owners = torch.as_tensor(caption_to_image).cpu().numpy()  # (M,), numpy or a tensor on any device
    counts = np.bincount(owners, minlength=num_images) if owners.size and owners.min() >= 0 else np.zeros(0)
    if num_images < 1 or len(counts) != num_images or counts.min() < 1:
        raise ValueError(f"caption_to_image must give each of the {num_images} images a caption")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    captions = torch.as_tensor(owners, dtype=torch.int64, device=device)  # (M,)
    images = torch.arange(num_images, device=device)  # (N,)
    return (images, captions) if direction == "image_to_text" else (captions, images)


def direction_positives(
    caption_to_image: np.ndarray | torch.Tensor,
    num_images: int,
    direction: str,
    device: torch.device | None = None,
    groups: TextGroups | None = None,
) -> PositiveFn:
    """Which candidates are correct for a block of queries (see :data:`PositiveFn`).

    Without ``groups``: label equality (:func:`direction_labels`). With ``groups``: queries and candidates on the
    caption side are the text groups (distinct normalised texts), and image i / group g match when image i has
    text g.
    """
    query_labels, candidate_labels = direction_labels(caption_to_image, num_images, direction, device)
    if groups is None:
        return lambda rows: candidate_labels[None, :] == query_labels[rows, None]
    images = torch.arange(num_images, device=device)  # (N,)
    all_groups = torch.arange(groups.num_groups, device=device)  # (G,)
    if direction == "image_to_text":
        return lambda rows: groups.related_groups(images[rows, None], all_groups[None, :])  # (B, G)
    return lambda rows: groups.related_groups(images[None, :], all_groups[rows, None])  # (B, N)


def _text_groups(caption_texts: Sequence[str] | None, caption_to_image) -> TextGroups | None:
    """The text groups when ``caption_texts`` are given and some text repeats; None otherwise."""
    if caption_texts is None:
        return None
    groups = TextGroups.from_captions(caption_texts, caption_to_image)
    return groups if groups.has_duplicates else None


def metrics_from_ranks(
    image_to_text_ranks: torch.Tensor, text_to_image_ranks: torch.Tensor
) -> dict[str, Any]:
    """The flat metric dict from 0-based ranks: image->text (N,) and text->image (M,)."""
    both = [torch.as_tensor(ranks).cpu() for ranks in (image_to_text_ranks, text_to_image_ranks)]
    metrics: dict[str, Any] = {}
    for direction, ranks in zip(DIRECTIONS, both, strict=True):
        for k in RECALL_KS:
            metrics[f"{direction}_R@{k}"] = 100.0 * (ranks < k).double().mean().item()
    metrics["rsum"] = sum(metrics[f"{d}_R@{k}"] for d in DIRECTIONS for k in RECALL_KS)
    for direction, ranks in zip(DIRECTIONS, both, strict=True):
        metrics[f"{direction}_median_rank"] = float(math.floor(np.median(ranks.numpy())) + 1)
    metrics["num_images"], metrics["num_captions"] = len(both[0]), len(both[1])
    return metrics


def _query_slices(num_queries: int, block_size: int) -> Iterator[slice]:
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    for start in range(0, num_queries, block_size):
        yield slice(start, min(start + block_size, num_queries))


def matrix_blocks(scores: torch.Tensor, direction: str, block_size: int = BLOCK_SIZE) -> Blocks:
    """Blocks of a full image x caption matrix (N, M): rows (B, M) for image->text, columns as (B, N) for
    text->image (copied contiguous, so each block is a small dense array)."""
    check_no_nan(scores, "scores")
    image_to_text = direction == "image_to_text"
    for rows in _query_slices(scores.shape[0 if image_to_text else 1], block_size):
        yield rows, scores[rows] if image_to_text else scores[:, rows].T.contiguous()


def similarity_blocks(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    direction: str,
    block_size: int = BLOCK_SIZE,
) -> Blocks:
    """Blocks of dual-encoder similarities: images x all captions (B, M), or captions x all images (B, N).

    Both directions compute ``images @ captions.T`` (then take the transpose), like the full matrix would.
    """
    check_no_nan(image_embeddings, "image embeddings")
    check_no_nan(text_embeddings, "text embeddings")
    if direction == "image_to_text":
        for rows in _query_slices(len(image_embeddings), block_size):
            yield rows, image_embeddings[rows] @ text_embeddings.T  # (B, M)
    else:
        for rows in _query_slices(len(text_embeddings), block_size):
            yield rows, (image_embeddings @ text_embeddings[rows].T).T.contiguous()  # (B, N)


def ranks_from_blocks(
    blocks: Blocks, query_labels: torch.Tensor, candidate_labels: torch.Tensor
) -> torch.Tensor:
    """0-based ranks (Q,) of each query's best positive, one block of queries at a time."""
    return ranks_from_positive_blocks(
        blocks, lambda rows: candidate_labels[None, :] == query_labels[rows, None]
    )


def ranks_from_positive_blocks(blocks: Blocks, positives: PositiveFn) -> torch.Tensor:
    """0-based ranks (Q,) of each query's best positive, ``positives(rows)`` (B, C) marking the correct ones."""
    return torch.cat([best_target_ranks(block, positives(rows)).cpu() for rows, block in blocks])


@torch.inference_mode()
def recall_at_k_from_scores(
    scores: torch.Tensor | np.ndarray,
    caption_to_image: np.ndarray | torch.Tensor,
    block_size: int = BLOCK_SIZE,
    caption_texts: Sequence[str] | None = None,  # given: text-identical captions are one query (module doc)
) -> dict[str, Any]:
    """Recall@1/5/10 both directions, RSUM and median ranks from a full image x caption score matrix (N, M).

    The reference every other path agrees with; temporaries are bounded by ``block_size`` query rows.
    """
    scores = torch.as_tensor(scores)
    if scores.ndim != 2 or scores.shape[1] != len(caption_to_image):
        raise ValueError(f"scores {tuple(scores.shape)} must be (N, {len(caption_to_image)} captions)")
    groups = _text_groups(caption_texts, caption_to_image)
    if groups is not None:
        scores = scores[:, groups.representatives.to(scores.device)]  # (N, G)
    ranks = []
    for direction in DIRECTIONS:
        positives = direction_positives(caption_to_image, scores.shape[0], direction, scores.device, groups)
        ranks.append(ranks_from_positive_blocks(matrix_blocks(scores, direction, block_size), positives))
    return metrics_from_ranks(*ranks)


@torch.inference_mode()
def rank_dual(
    image_embeddings: torch.Tensor | np.ndarray,
    text_embeddings: torch.Tensor | np.ndarray,
    caption_to_image: np.ndarray | torch.Tensor,
    block_size: int = BLOCK_SIZE,
    caption_texts: Sequence[str] | None = None,  # given: text-identical captions are one query (module doc)
) -> dict[str, Any]:
    """Recall@K, RSUM and median ranks of a dual encoder from its embeddings (N, D) and (M, D).

    Equal to ``recall_at_k_from_scores(image_embeddings @ text_embeddings.T, caption_to_image)`` but never holds
    more than ``block_size`` rows of the similarity matrix, in either direction.
    """
    images = torch.as_tensor(image_embeddings)
    texts = torch.as_tensor(text_embeddings).to(images.device)
    if len(caption_to_image) != len(texts):
        raise ValueError(f"{len(texts)} text embeddings but caption_to_image has {len(caption_to_image)}")
    groups = _text_groups(caption_texts, caption_to_image)
    if groups is not None:
        texts = texts[groups.representatives.to(texts.device)]  # (G, D)
    ranks = []
    for direction in DIRECTIONS:
        positives = direction_positives(caption_to_image, len(images), direction, images.device, groups)
        ranks.append(
            ranks_from_positive_blocks(similarity_blocks(images, texts, direction, block_size), positives)
        )
    return metrics_from_ranks(*ranks)


def top_k_candidates(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices (B, min(k, C)) of each row's k best candidates, best first, ties to the lower index.

    Equal to the first k columns of a stable descending sort, without sorting whole rows: ``topk`` finds the k-th
    best score, everything better is in, and the lowest-index columns equal to it fill the remaining places.
    """
    k = min(k, scores.shape[1])
    kth_best = scores.topk(k, dim=1).values[:, -1:]  # (B, 1)
    chosen = scores >= kth_best  # (B, C), more than k per row where the k-th best score is tied
    crowded = (chosen.sum(dim=1) > k).nonzero()[:, 0]  # rows whose ties straddle place k
    if len(crowded):
        block, kth = scores[crowded], kth_best[crowded]  # (R, C), (R, 1)
        better, tied = block > kth, block == kth  # (R, C)
        places_left = k - better.sum(dim=1, keepdim=True)  # (R, 1), >= 1
        chosen[crowded] = better | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= places_left))
    columns = chosen.nonzero()[:, 1].view(-1, k)  # (B, k) in increasing column order
    order = torch.sort(scores.gather(1, columns), dim=1, descending=True, stable=True).indices  # (B, k)
    return columns.gather(1, order)


def cascade_ranks(
    first_stage_ranks: torch.Tensor,
    candidate_positive: torch.Tensor,
    rerank_scores: torch.Tensor,
) -> torch.Tensor:
    """0-based ranks after re-ranking each query's first-stage top k.

    The final list is the k candidates in second-stage order (a positive after the wrong candidates it ties
    with), then every other candidate in first-stage order. So a query with a positive among its k candidates gets
    that positive's rank within the re-ranked k, and any other query keeps its first-stage rank (all k candidates
    were ahead of it before and still are). Shapes: ``first_stage_ranks`` (B,); ``candidate_positive``,
    ``rerank_scores`` (B, k).
    """
    check_no_nan(rerank_scores, "second-stage scores")
    reranked = best_target_ranks(rerank_scores, candidate_positive)  # (B,)
    return torch.where(candidate_positive.any(dim=1), reranked, first_stage_ranks)


def first_stage_candidates(
    blocks: Blocks, query_labels: torch.Tensor, candidate_labels: torch.Tensor, k: int
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A first stage, block by block: yield ``(query_rows, first_stage_ranks (B,), candidates (B, k),
    candidate_positive (B, k))`` on the CPU; ``candidates`` are column indices, best first."""
    for rows, block in blocks:
        positive = candidate_labels[None, :] == query_labels[rows, None]  # (B, C)
        candidates = top_k_candidates(block, k)  # (B, k)
        first_stage = best_target_ranks(block, positive).cpu()  # (B,)
        yield rows, first_stage, candidates.cpu(), positive.gather(1, candidates).cpu()


@torch.inference_mode()
def cascade_recall_from_scores(
    first_stage_scores: torch.Tensor | np.ndarray,
    second_stage_scores: torch.Tensor | np.ndarray,
    caption_to_image: np.ndarray | torch.Tensor,
    k: int,
    block_size: int = BLOCK_SIZE,
) -> dict[str, Any]:
    """Cascade metrics from two full (N, M) score matrices: in each direction the first stage keeps its top ``k``
    per query and the second re-ranks them (see :func:`cascade_ranks`).

    The reference for :func:`dcd_itr.evaluate.rank_cascade`, and the cheap way to sweep ``k`` once
    :func:`dcd_itr.evaluate.score_all_pairs` has produced the full cross-encoder matrix. Adds ``cascade_k`` and
    ``pairs_scored`` (the pairs a cascade scores with the second stage: ``(N + M) * k``, k capped by the candidates).
    """
    first, second = torch.as_tensor(first_stage_scores), torch.as_tensor(second_stage_scores)
    if k < 1 or first.shape != second.shape or first.shape[1] != len(caption_to_image):
        raise ValueError(
            f"need k >= 1 (got {k}) and two (N, M) matrices, got {first.shape} and {second.shape}"
        )
    ranks, pairs_scored = [], 0
    for direction in DIRECTIONS:
        labels = direction_labels(caption_to_image, first.shape[0], direction, first.device)
        stages = zip(
            first_stage_candidates(matrix_blocks(first, direction, block_size), *labels, k),
            matrix_blocks(second, direction, block_size),
            strict=True,
        )
        direction_ranks = []
        for (_, first_ranks, candidates, positive), (_, second_block) in stages:
            rerank = second_block.cpu().gather(1, candidates)  # (B, k)
            direction_ranks.append(cascade_ranks(first_ranks, positive, rerank))
            pairs_scored += candidates.numel()
        ranks.append(torch.cat(direction_ranks))
    return {**metrics_from_ranks(*ranks), "cascade_k": k, "pairs_scored": pairs_scored}


# Flat metric name -> short column header, in the order every results table shows them.
METRIC_COLUMNS = {
    **{
        f"{d}_R@{k}": f"{short} R@{k}"
        for d, short in zip(DIRECTIONS, ("i2t", "t2i"), strict=True)
        for k in RECALL_KS
    },
    "rsum": "RSUM",
}


def format_metrics_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A plain-text table of R@1/5/10 both directions and RSUM, one line per named metrics dict."""
    headers, keys = list(METRIC_COLUMNS.values()), list(METRIC_COLUMNS)
    name_width = max([len("model"), *(len(name) for name in rows)])
    lines = ["  ".join([f"{'model':<{name_width}}", *(f"{h:>8}" for h in headers)])]
    lines.append("-" * len(lines[0]))
    for name, metrics in rows.items():
        lines.append("  ".join([f"{name:<{name_width}}", *(f"{metrics[key]:>8.1f}" for key in keys)]))
    return "\n".join(lines)


def write_metrics_json(path: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
    """Write a metrics dict (or a dict of named metrics dicts) to ``path`` as JSON, atomically."""
    write_json_atomic(path, dict(metrics))
