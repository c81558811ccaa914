"""The twin metric (Winoground-style) of the scenes benchmark, for any system's image x caption scores.

Every scene has a swapped twin in the same split, and caption ``k`` of a scene and caption ``k`` of its twin use
the same template with the two related objects exchanged. For a twin pair (a, b) and an aligned caption index k
(captions ``ca = captions(a)[k]``, ``cb = captions(b)[k]``), with scores ``s`` (higher is better):

- text score: each image scores its own caption above its twin's, ``s(a, ca) > s(a, cb)`` and ``s(b, cb) > s(b, ca)``;
- image score: each caption scores its own image above the twin image, ``s(a, ca) > s(b, ca)`` and
  ``s(b, cb) > s(a, cb)``;
- group score: both.

Ties count as failures (strict ``>``), so a system that cannot tell the twins apart scores 0. Each unordered pair
counts once, its result averaged over the aligned caption indices; percentages over pairs. Chance (random
scores) is 25 / 25 / 16.7.

A cascade ranks differently in the two directions (the image query re-ranks its top-k captions, the caption
query its top-k images): :func:`cascade_score_matrices` gives its two final score matrices, and
:func:`twin_scores` takes the second as ``caption_query_scores``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.data.scene_annotations import split_twin_index
from dcd_itr.metrics import top_k_candidates

TWIN_KEYS = ("twin_text", "twin_image", "twin_group")


def twin_pairs(twin_index: np.ndarray | list[int]) -> list[tuple[int, int]]:
    """Unordered twin pairs (a, b), a < b, from each row's twin row (-1: no twin); the mapping must be mutual."""
    twins = np.asarray(twin_index, dtype=np.int64)
    pairs = []
    for row, twin in enumerate(twins.tolist()):
        if twin < 0:
            continue
        if twin == row or twin >= len(twins) or twins[twin] != row:
            raise ValueError(
                f"twin_index[{row}] = {twin}: twins must be two different rows naming each other"
            )
        if row < twin:
            pairs.append((row, twin))
    return pairs


def _as_array(scores: torch.Tensor | np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    array = (
        scores.detach().cpu().double().numpy() if torch.is_tensor(scores) else np.asarray(scores, np.float64)
    )
    if array.shape != shape:
        raise ValueError(f"{what} has shape {array.shape}, expected (images, captions) = {shape}")
    if np.isnan(array).any():
        raise ValueError(f"{what} contain NaN")
    return array


def twin_scores(
    score_matrix: torch.Tensor | np.ndarray,
    split: RetrievalSplit,
    twin_index: np.ndarray | list[int],
    caption_query_scores: torch.Tensor | np.ndarray | None = None,
) -> dict[str, float]:
    """``{"twin_text", "twin_image", "twin_group"}`` in percent, plus ``twin_pairs`` (how many were scored).

    ``score_matrix`` (N images, M captions) gives the text score (images as queries); ``caption_query_scores``
    (same shape, default ``score_matrix``) gives the image score (captions as queries).
    """
    shape = (split.num_images, split.num_captions)
    by_image = _as_array(score_matrix, shape, "score_matrix")
    by_caption = (
        by_image if caption_query_scores is None else _as_array(caption_query_scores, shape, "scores")
    )
    pairs = twin_pairs(twin_index)
    if len(np.asarray(twin_index)) != split.num_images:
        raise ValueError(f"twin_index has {len(np.asarray(twin_index))} rows for {split.num_images} images")
    if not pairs:
        raise ValueError("no twin pairs in this split: the twin metric needs the scenes benchmark")
    a, b, ca, cb, weight = [], [], [], [], []
    for first, second in pairs:
        captions_a, captions_b = split.image_to_captions[first], split.image_to_captions[second]
        aligned = min(len(captions_a), len(captions_b))
        for k in range(aligned):
            a.append(first), b.append(second), ca.append(captions_a[k]), cb.append(captions_b[k])
            weight.append(1.0 / aligned)
    a, b, ca, cb = (np.asarray(v, dtype=np.int64) for v in (a, b, ca, cb))  # (P * K,) each
    text = (by_image[a, ca] > by_image[a, cb]) & (by_image[b, cb] > by_image[b, ca])
    image = (by_caption[a, ca] > by_caption[b, ca]) & (by_caption[b, cb] > by_caption[a, cb])
    weights = np.asarray(weight) / len(pairs)  # each pair weighs 1 / P in total
    return {
        "twin_text": 100.0 * float(weights @ text),
        "twin_image": 100.0 * float(weights @ image),
        "twin_group": 100.0 * float(weights @ (text & image)),
        "twin_pairs": len(pairs),
    }


def cascade_score_matrices(
    first_stage_scores: torch.Tensor | np.ndarray,
    score_pairs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    k: int,
    pair_batch: int = 256,  # pairs per second-stage call, like evaluate.rank_cascade
) -> tuple[torch.Tensor, torch.Tensor]:
    """A dual -> cross cascade's final scores as two (N, M) float64 matrices: image queries, caption queries.

    In each direction every query's top ``k`` candidates by ``first_stage_scores`` (N, M) (ties to the lower
    index, as :func:`dcd_itr.evaluate.rank_cascade`) get their second-stage score ``score_pairs(image_rows,
    caption_rows)`` shifted above every first-stage score; all other candidates keep their first-stage score.
    So each query's order is the cascade's: the re-ranked k in second-stage order, then the rest below them.
    """
    first = torch.as_tensor(first_stage_scores).double().cpu()  # (N, M)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    finals = []
    for by_image in (True, False):
        queries = first if by_image else first.T  # (Q, C)
        candidates = top_k_candidates(queries, k)  # (Q, k')
        query_rows = torch.arange(len(queries)).repeat_interleave(candidates.shape[1])  # (Q * k',)
        candidate_rows = candidates.reshape(-1)  # (Q * k',)
        images, captions = (query_rows, candidate_rows) if by_image else (candidate_rows, query_rows)
        second = torch.cat(
            [
                torch.as_tensor(score_pairs(images[i : i + pair_batch], captions[i : i + pair_batch]))
                .detach()
                .double()
                .cpu()
                .reshape(-1)
                for i in range(0, len(images), pair_batch)
            ]
        )  # (Q * k',)
        shift = first.max() - second.min() + 1.0  # every re-ranked score lands above every first-stage one
        final = first.clone()
        final[images, captions] = second + shift
        finals.append(final)
    return finals[0], finals[1]


def has_twins(data: str | Path, split: str) -> bool:
    """Does ``split`` of the dataset at ``data`` have swapped twins (the scenes benchmark)?"""
    return split_twin_index(data, split) is not None


def dataset_twin_scores(
    data: str | Path,
    split: RetrievalSplit,
    score_matrix: torch.Tensor | np.ndarray,
    caption_query_scores: torch.Tensor | np.ndarray | None = None,
) -> dict[str, float]:
    """:func:`twin_scores` of ``split`` of the dataset at ``data`` when it has twins (the scenes benchmark);
    ``{}`` for any other dataset, so callers can merge the result into their metrics unconditionally."""
    twin_index = split_twin_index(data, split.name)
    if twin_index is None:
        return {}
    return twin_scores(score_matrix, split, twin_index, caption_query_scores)


def format_twin_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Twin text / image / group scores of the rows that have them, one line each ('' when none has)."""
    named = {name: metrics for name, metrics in rows.items() if "twin_group" in metrics}
    if not named:
        return ""
    width = max(len("model"), *(len(name) for name in named))
    lines = [
        f"{'model':<{width}}  {'twin text':>9}  {'twin image':>10}  {'twin group':>10}  (chance 25 / 25 / 16.7)"
    ]
    for name, m in named.items():
        lines.append(
            f"{name:<{width}}  {m['twin_text']:>9.1f}  {m['twin_image']:>10.1f}  {m['twin_group']:>10.1f}"
        )
    return "\n".join(lines)
