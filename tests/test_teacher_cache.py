"""The teacher-score cache: reuse without rebuilding, mismatch and corruption errors, resuming a partial build."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch

from dcd_itr.distill.teacher_cache import RoundScores, TeacherScoreCache, mine_round
from dcd_itr.errors import CacheMismatchError, CorruptFileError
from dcd_itr.models.registry import weights_fingerprint
from test_pools import SPLIT, DistanceCrossEncoder

SETTINGS = {
    "teacher_id": "teacher-sha",
    "dataset_fingerprint": "data-sha",
    "seed": 0,
    "pool_size": 5,
    "num_candidates": 3,
}


class CountingBuilder:
    """A build function whose output is known from (round, direction); it records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def __call__(self, round_index: int, direction: str) -> RoundScores:
        self.calls.append((round_index, direction))
        offset = 100 * round_index + (0 if direction == "image_to_text" else 50)
        candidates = torch.arange(4 * 5).reshape(4, 5) + offset  # (A=4, P=5)
        pool_scores = torch.linspace(0, 1, 20).reshape(4, 5) + offset  # (A, P)
        return RoundScores(
            torch.arange(4), candidates, pool_scores, candidates[:, :3].clone(), pool_scores[:, :3].clone()
        )


def assert_same(left: RoundScores, right: RoundScores) -> None:
    for name, value in left.tensors().items():
        assert torch.equal(value, right.tensors()[name]), name


def test_rounds_are_built_once_and_then_reused(tmp_path: Path) -> None:
    build = CountingBuilder()
    cache = TeacherScoreCache(tmp_path / "scores", **SETTINGS)
    first = cache.get_or_build(0, build)
    assert build.calls == [(0, "image_to_text"), (0, "text_to_image")]
    again = cache.get_or_build(0, build)
    reopened = TeacherScoreCache(tmp_path / "scores", **SETTINGS).get_or_build(0, build)
    assert len(build.calls) == 2  # neither the second call nor a new cache object rebuilt anything
    for direction in ("image_to_text", "text_to_image"):
        assert_same(first[direction], again[direction])
        assert_same(first[direction], reopened[direction])
    assert torch.equal(first["text_to_image"].candidates, build(0, "text_to_image").candidates)
    cache.get_or_build(1, build)
    assert build.calls[-2:] == [(1, "image_to_text"), (1, "text_to_image")]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("teacher_id", "other-teacher"),
        ("dataset_fingerprint", "other-data"),
        ("seed", 1),
        ("pool_size", 6),
        ("num_candidates", 4),
    ],
)
def test_changed_inputs_are_a_mismatch_that_names_the_difference(
    tmp_path: Path, field: str, value: object
) -> None:
    TeacherScoreCache(tmp_path, **SETTINGS).get_or_build(0, CountingBuilder())
    manifest_key = {"teacher_id": "teacher"}.get(field, field)
    with pytest.raises(
        CacheMismatchError, match=rf"delete the folder or use another path(.|\n)*{manifest_key}: cached"
    ):
        TeacherScoreCache(tmp_path, **{**SETTINGS, field: value})
    with pytest.raises(CacheMismatchError, match="directions"):
        TeacherScoreCache(tmp_path, **SETTINGS, directions=("image_to_text",))


def test_a_truncated_round_file_is_named_in_the_error(tmp_path: Path) -> None:
    cache = TeacherScoreCache(tmp_path, **SETTINGS)
    cache.get_or_build(0, CountingBuilder())
    path = cache.round_path(0, "text_to_image")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=re.escape(str(path))):
        cache.get_or_build(0, CountingBuilder())


def test_an_interrupted_build_resumes_with_the_missing_round(tmp_path: Path) -> None:
    cache = TeacherScoreCache(tmp_path, **SETTINGS)
    cache.get_or_build(0, CountingBuilder())
    cache.round_path(0, "text_to_image").unlink()  # as if the run died before writing this file
    (tmp_path / ".round-0000-text_to_image.safetensors.abc.tmp").write_bytes(b"half a file")  # leftover temp
    build = CountingBuilder()
    rounds = TeacherScoreCache(tmp_path, **SETTINGS).get_or_build(0, build)
    assert build.calls == [(0, "text_to_image")]
    assert_same(rounds["text_to_image"], CountingBuilder()(0, "text_to_image"))
    assert cache.has_round(0)


def test_a_build_with_the_wrong_shapes_is_rejected_before_writing(tmp_path: Path) -> None:
    cache = TeacherScoreCache(tmp_path, **{**SETTINGS, "pool_size": 6})
    with pytest.raises(ValueError, match="candidates has shape"):
        cache.get_or_build(0, CountingBuilder())
    assert not cache.round_path(0, "image_to_text").exists()


def test_weights_fingerprint_is_the_sha256_of_the_weights(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights" * 1000)
    assert weights_fingerprint(tmp_path) == hashlib.sha256(b"weights" * 1000).hexdigest()
    weights.write_bytes(b"weights" * 1001)
    assert weights_fingerprint(tmp_path) == hashlib.sha256(b"weights" * 1001).hexdigest()


def test_mine_round_through_the_cache(tmp_path: Path) -> None:
    teacher = DistanceCrossEncoder()
    image_features = {"id": torch.arange(SPLIT.num_images, dtype=torch.float32)}
    text_features = {"id": torch.arange(SPLIT.num_captions)}
    cache = TeacherScoreCache(tmp_path, **SETTINGS)

    def build(round_index: int, direction: str) -> RoundScores:
        return mine_round(
            teacher, SPLIT, image_features, text_features, direction, 5, 3, 0, round_index, progress=False
        )

    rounds = cache.get_or_build(0, build)
    scores = rounds["image_to_text"]
    assert scores.student_candidates[:, 0].tolist() == list(range(SPLIT.num_captions))  # the positives
    expected = (
        -(10 * scores.anchor_rows[:, None] - scores.student_candidates).abs().float()
    )  # score by construction
    assert torch.equal(scores.teacher_logits, expected)
    assert torch.equal(cache.load(0, "image_to_text").teacher_logits, expected)
