"""The teacher-score cache: pools and frozen-teacher scores are computed once per mining round, then reused.

Layout::

    DIRECTORY/manifest.json                              # what every round was built from (below)
    DIRECTORY/round-0000-image_to_text.safetensors       # anchor_rows (A,), candidates (A, P), pool_scores (A, P),
    DIRECTORY/round-0000-text_to_image.safetensors       #   student_candidates (A, K), teacher_logits (A, K)

The manifest records the format version, the teacher id (e.g. :func:`~dcd_itr.models.registry.weights_fingerprint` of its weights), the
dataset fingerprint, the seed, P, K, the directions and any ``extra`` settings the caller adds. Opening a folder
whose manifest differs raises :class:`CacheMismatchError` naming each difference. Round files are written
atomically, so a missing file means "not built yet" (an interrupted run resumes there) and a file that cannot be
read is a :class:`CorruptFileError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.distill.pools import (
    DIRECTIONS,
    Pools,
    build_pools,
    check_direction,
    round_generator,
    score_pools,
    select_hard_negatives,
)
from dcd_itr.errors import CacheMismatchError, CorruptFileError
from dcd_itr.interfaces import CrossEncoder, FeatureBatch
from dcd_itr.io_utils import atomic_path, load_checked, with_checksum, write_json_atomic

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RoundScores:
    """One mining round of one direction; A anchors, pool size P, student list length K."""

    anchor_rows: torch.Tensor  # (A,) int64: image rows (image_to_text) or caption rows (text_to_image)
    candidates: torch.Tensor  # (A, P) int64: column 0 the positive
    pool_scores: torch.Tensor  # (A, P) float32: teacher logits for every pool entry
    student_candidates: torch.Tensor  # (A, K) int64: [positive, hard_1, ..., hard_{K-1}]
    teacher_logits: torch.Tensor  # (A, K) float32: pool_scores gathered at student_candidates' columns

    def tensors(self) -> dict[str, torch.Tensor]:
        return {field.name: getattr(self, field.name).contiguous() for field in fields(self)}

    def check(self, pool_size: int, num_candidates: int) -> None:
        """Raise ``ValueError`` unless the shapes are (A,), (A, P), (A, P), (A, K), (A, K) with the given P, K."""
        anchors = self.anchor_rows.shape[0]
        wanted = {
            "anchor_rows": (anchors,),
            "candidates": (anchors, pool_size),
            "pool_scores": (anchors, pool_size),
            "student_candidates": (anchors, num_candidates),
            "teacher_logits": (anchors, num_candidates),
        }
        for name, shape in wanted.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")


def mine_round(
    teacher: CrossEncoder,
    split: RetrievalSplit,
    image_features: FeatureBatch | Sequence[Any],  # cached rows, or raw images for a raw-data scorer
    text_features: FeatureBatch | Sequence[str],
    direction: str,
    pool_size: int,
    num_candidates: int,
    seed: int,
    round_index: int,
    student_negatives: torch.Tensor | None = None,
    scorer: Callable[..., torch.Tensor] = score_pools,
    exclude_same_text: bool = True,  # see build_pools: text-identical captions are no negatives
    max_anchors: int | None = None,  # score only this many anchors, drawn at random (CPU budgets); None = all
    **score_options: Any,
) -> RoundScores:
    """Steps 1-2 for one round and direction: build pools, score them with the teacher, keep the hard ones.

    ``scorer(teacher, image_features, text_features, pools, **score_options)`` -> (A, P) logits: the default
    :func:`score_pools` takes cached feature rows; :func:`~dcd_itr.distill.pools.score_pools_by_image` takes
    raw images and caption strings.
    """
    pools = build_pools(split, direction, pool_size, seed, round_index, student_negatives, exclude_same_text)
    if max_anchors is not None and max_anchors < pools.num_anchors:
        pools = subsample_anchors(pools, max_anchors, seed, round_index)
    pool_scores = scorer(teacher, image_features, text_features, pools, **score_options)  # (A, P)
    student_candidates, teacher_logits = select_hard_negatives(pool_scores, pools.candidates, num_candidates)
    return RoundScores(pools.anchor_rows, pools.candidates, pool_scores, student_candidates, teacher_logits)


def subsample_anchors(pools: Pools, count: int, seed: int, round_index: int) -> Pools:
    """``count`` of the pools' anchors, drawn uniformly without replacement from (seed, round, direction) alone and
    kept in their original order: a capped mining round for a CPU budget."""
    if count < 1:
        raise ValueError(f"max_anchors must be at least 1, got {count}")
    generator = round_generator(seed, round_index, f"{pools.direction}/subsample")
    keep = torch.randperm(pools.num_anchors, generator=generator)[:count].sort().values  # (count,)
    return Pools(pools.direction, pools.anchor_rows[keep], pools.positive[keep], pools.candidates[keep])


def _differences(existing: dict, wanted: dict) -> list[str]:
    return [
        f"{key}: cached {existing.get(key)!r}, now {wanted.get(key)!r}"
        for key in sorted(set(existing) | set(wanted))
        if existing.get(key) != wanted.get(key)
    ]


class TeacherScoreCache:
    """Rounds of :class:`RoundScores` on disk, keyed by round index and direction (see the module docstring)."""

    def __init__(
        self,
        directory: str | Path,
        teacher_id: str,
        dataset_fingerprint: str,
        seed: int,
        pool_size: int,
        num_candidates: int,
        directions: tuple[
            str, ...
        ] = DIRECTIONS,  # both directions: the paper's code trains image_to_text only
        extra: dict[str, Any] | None = None,  # any further JSON settings the pools depend on
    ) -> None:
        for direction in directions:
            check_direction(direction)
        self.directory = Path(directory)
        self.pool_size, self.num_candidates, self.directions = pool_size, num_candidates, tuple(directions)
        self.manifest = {
            "format": FORMAT_VERSION,
            "teacher": teacher_id,
            "dataset_fingerprint": dataset_fingerprint,
            "seed": seed,
            "pool_size": pool_size,
            "num_candidates": num_candidates,
            "directions": list(directions),
            "extra": extra or {},
        }
        path = self.directory / "manifest.json"
        if not path.exists():
            write_json_atomic(path, self.manifest)
            return
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, beyond the parser's limits
            raise CorruptFileError(
                path, f"teacher-score cache manifest is not valid JSON ({error})"
            ) from None
        if not isinstance(existing, dict):
            raise CorruptFileError(path, "teacher-score cache manifest is not a JSON object")
        differences = _differences(existing, self.manifest)
        if differences:
            raise CacheMismatchError(
                f"{self.directory}: the teacher-score cache was built from different inputs; delete the folder "
                "or use another path to rebuild:\n  " + "\n  ".join(differences)
            )

    def round_path(self, round_index: int, direction: str) -> Path:
        return self.directory / f"round-{round_index:04d}-{direction}.safetensors"

    def has_round(self, round_index: int) -> bool:
        return all(self.round_path(round_index, d).exists() for d in self.directions)

    def load(self, round_index: int, direction: str) -> RoundScores:
        """A stored round; :class:`CorruptFileError` if its file is unreadable or has the wrong shapes."""
        path = self.round_path(round_index, direction)
        try:
            tensors, _ = load_checked(path)
            scores = RoundScores(**{field.name: tensors[field.name] for field in fields(RoundScores)})
            scores.check(self.pool_size, self.num_candidates)
        except (SafetensorError, OSError, KeyError, ValueError, TypeError) as error:
            raise CorruptFileError(
                path, f"cannot read teacher-score round ({error}); delete it and rerun"
            ) from None
        return scores

    def get_or_build(
        self, round_index: int, build_fn: Callable[[int, str], RoundScores]
    ) -> dict[str, RoundScores]:
        """Every direction's scores for ``round_index``: read from disk, or ``build_fn(round_index, direction)``
        for a direction with no file yet (then written atomically before it is returned)."""
        rounds = {}
        for direction in self.directions:
            path = self.round_path(round_index, direction)
            if path.exists():
                rounds[direction] = self.load(round_index, direction)
                continue
            scores = build_fn(round_index, direction)
            scores.check(self.pool_size, self.num_candidates)
            with atomic_path(path) as temp:
                tensors = scores.tensors()
                metadata = {"direction": direction, "round": str(round_index)}
                save_file(tensors, str(temp), metadata=with_checksum(tensors, metadata))
            rounds[direction] = scores
        return rounds
