"""The teacher-vs-student pair-scoring benchmark on tiny models: every mode timed for every model on the same
pairs, and the split path agreeing with the model's own scores."""

from __future__ import annotations

from dcd_itr.models.grounded import cut_grounded_student
from dcd_itr.speed.pair_split import MODES, agreement, pair_split_speed, stage_seconds
from test_grounded import random_features
from test_grounded_pairs import perturbed


def test_every_model_and_mode_is_timed_on_the_same_pairs():
    teacher = perturbed(2)
    models = {"teacher": teacher, "student": cut_grounded_student(teacher).eval()}
    images, texts = random_features(3, 5)
    speed = pair_split_speed(models, images, texts, repeats=2)
    assert set(speed) == {"teacher", "student"}
    for row in speed.values():
        assert row["pairs"] == 15
        for mode in MODES:
            assert row[f"{mode}_seconds"] > 0
            assert row[f"{mode}_pairs_per_s"] == 15 / row[f"{mode}_seconds"]


def test_agreement_with_the_models_own_scores():
    model = perturbed(2)
    images, texts = random_features(4, 6, seed=5)
    found = agreement(model, images, texts)
    assert found["max_abs_difference"] < 1e-4 < found["logit_range"]
    assert found["images_same_top10_captions"] == 1.0 and found["captions_same_top1_image"] == 1.0


def test_stage_seconds_cover_each_stage():
    teacher = perturbed(2)
    images, texts = random_features(3, 5)
    stages = stage_seconds(teacher, images, texts)
    assert len(stages) == 3 and all(value > 0 for value in stages.values())
    student = stage_seconds(cut_grounded_student(teacher).eval(), images, texts)
    assert student["CLS-only last layer + head"] > 0
