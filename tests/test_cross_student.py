"""Compressed cross students of the grounded teacher: the cut, the frozen parts, the random-init control, the
interaction-gain retention formula, and a cascade over all candidates equal to the student's own ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.errors import ConfigError
from dcd_itr.evaluate import encode_all, rank_cascade
from dcd_itr.evaluate.retention import interaction_gain_retention, retention_table
from dcd_itr.metrics import recall_at_k_from_scores
from dcd_itr.models.cross_student import (
    build_cross_student,
    default_layer_indices,
    student_parameter_groups,
)
from dcd_itr.models.grounded import GroundedCrossEncoder, paths_only
from dcd_itr.twins import cascade_score_matrices, twin_scores
from test_grounded import random_features, tiny_config

TRAINABLE = ("layers.", "final_norm.", "head.")


@pytest.fixture
def teacher() -> GroundedCrossEncoder:
    torch.manual_seed(0)
    return GroundedCrossEncoder(tiny_config(num_layers=4)).eval()


def test_cut_keeps_first_and_last_layers_with_exact_weights(teacher):
    assert default_layer_indices(teacher) == [0, 3]
    student = build_cross_student(teacher)
    assert student.fusion_depth == 2 and teacher.fusion_depth == 4
    for new, old in enumerate([0, 3]):
        for name, value in student.layers[new].state_dict().items():
            assert torch.equal(value, teacher.layers[old].state_dict()[name]), (new, name)
    teacher_state = teacher.state_dict()
    for name, value in student.state_dict().items():
        if not name.startswith("layers."):
            assert torch.equal(value, teacher_state[name]), name  # everything else copied exactly
    # a 2-layer teacher keeps one layer (half), the first
    two = GroundedCrossEncoder(tiny_config(num_layers=2))
    assert default_layer_indices(two) == [0] and build_cross_student(two).fusion_depth == 1


def test_non_fusion_parts_are_frozen_and_unchanged_by_a_training_step(teacher):
    student = build_cross_student(teacher)
    for name, parameter in student.named_parameters():
        assert parameter.requires_grad == name.startswith(TRAINABLE), name
    before = {name: value.clone() for name, value in student.state_dict().items()}
    groups = student_parameter_groups(student, lr=0.01, fusion_lr_multiplier=5.0)
    fusion_ids = {id(p) for p in student.layers.parameters()}
    assert {id(p) for p in groups[1]["params"]} == fusion_ids and groups[1]["lr"] == pytest.approx(0.05)
    assert all(p.requires_grad for group in groups for p in group["params"])
    optimizer = torch.optim.AdamW(groups, lr=0.01, weight_decay=0.05)  # weight decay must not touch frozen
    images, texts = random_features(4, 4, seed=1)
    loss = -student(images, texts).log_softmax(0)[0]
    loss.backward()
    optimizer.step()
    after = student.state_dict()
    for name, value in before.items():
        if name.startswith(TRAINABLE):
            continue
        assert torch.equal(after[name], value), name
    assert not torch.equal(after["layers.0.linear1.weight"], before["layers.0.linear1.weight"])
    assert not torch.equal(after["head.weight"], before["head.weight"])
    # so the student's paths-only score is the teacher's, exactly
    with torch.no_grad():
        a = paths_only(student)(images, texts)
        b = paths_only(teacher)(images, texts)
    assert torch.equal(a, b)


def test_random_control_differs_from_the_cut_only_in_the_trained_parts(teacher):
    cut = build_cross_student(teacher)
    control = build_cross_student(teacher, init="random", seed=3)
    assert control.fusion_depth == cut.fusion_depth
    cut_state, control_state = cut.state_dict(), control.state_dict()
    for name, value in control_state.items():
        if name.startswith(TRAINABLE):
            assert not torch.equal(value, cut_state[name]) or value.unique().numel() == 1, name
        else:
            assert torch.equal(value, cut_state[name]), name
    for name, parameter in control.named_parameters():
        assert parameter.requires_grad == name.startswith(TRAINABLE)
    again = build_cross_student(teacher, init="random", seed=3).state_dict()
    assert all(torch.equal(again[k], v) for k, v in control_state.items())  # deterministic in the seed
    with pytest.raises(ConfigError, match="cross_init"):
        build_cross_student(teacher, init="zeros")
    with pytest.raises(ConfigError, match="cross_layers"):
        build_cross_student(teacher, [0, 4])


def test_retention_on_hand_computed_numbers():
    # teacher 500, paths-only 460, student 498: (498 - 460) / (500 - 460) = 38 / 40 = 95%
    assert interaction_gain_retention(498.0, 500.0, 460.0) == pytest.approx(95.0)
    assert interaction_gain_retention(460.0, 500.0, 460.0) == pytest.approx(0.0)
    assert interaction_gain_retention(450.0, 500.0, 460.0) == pytest.approx(-25.0)
    assert interaction_gain_retention(1.0, 5.0, 5.0) is None  # the teacher gains nothing
    table = retention_table(
        {"rsum": 498.0, "twin_group": 72.0},
        {"rsum": 500.0, "twin_group": 80.0},
        {"rsum": 460.0, "twin_group": 16.0},
    )
    assert table["twin_group_gain_retention"] == pytest.approx(100 * 56 / 64)  # 87.5
    assert table["rsum_gain_retention"] == pytest.approx(95.0)
    assert table["rsum_retention"] == pytest.approx(99.6)


def test_cascade_over_all_candidates_is_the_students_ranking(teacher):
    student = build_cross_student(teacher).eval()
    num_images, captions_per_image = 6, 2
    images, texts = random_features(num_images, num_images * captions_per_image, seed=2)
    owner = np.repeat(np.arange(num_images), captions_per_image)
    with torch.no_grad():
        image_features = encode_all(student.encode_images, images, batch_size=4)
        text_features = encode_all(student.encode_texts, texts, batch_size=4)
        scores = student.score_matrix(image_features, text_features)  # (N, M)
    generator = torch.Generator().manual_seed(5)
    dual_images = torch.randn(num_images, 8, generator=generator)  # an unrelated first stage
    dual_texts = torch.randn(len(owner), 8, generator=generator)
    everything = len(owner)  # k = all candidates: the first stage only sets the order of nothing
    cascade = rank_cascade(
        dual_images, dual_texts, student, image_features, text_features, owner, everything, progress=False
    )
    expected = recall_at_k_from_scores(scores, owner)
    for key in ("image_to_text_R@1", "text_to_image_R@1", "rsum"):
        assert cascade[key] == pytest.approx(expected[key]), key

    def score_pairs(image_rows, caption_rows):
        return student.score_pairs(
            {k: v[image_rows] for k, v in image_features.items()},
            {k: v[caption_rows] for k, v in text_features.items()},
        )

    with torch.no_grad():
        by_image, by_caption = cascade_score_matrices(dual_images @ dual_texts.T, score_pairs, everything)
    # each image and its twin (rows 2i, 2i+1), captions aligned by index within the image
    split = RetrievalSplit.from_rows(
        "test",
        [
            (str(i), Path(f"{i}.png"), [f"c{i}{j}" for j in range(captions_per_image)])
            for i in range(num_images)
        ],
    )
    twin = np.array([i ^ 1 for i in range(num_images)])
    direct = twin_scores(scores.double(), split, twin)
    assert twin_scores(by_image, split, twin, by_caption) == direct
