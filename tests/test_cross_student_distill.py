"""`dcd distill` into the compressed cross student of a grounded teacher, end to end on a tiny scenes dataset:
teacher-score pools holding the swapped twin, frozen non-fusion parts, the random-init control, twin validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from dcd_itr.cli import main
from dcd_itr.config import load_config
from dcd_itr.data.loading import load_split
from dcd_itr.encoders.regions import RegionTower
from dcd_itr.features import build_feature_cache
from dcd_itr.io_utils import with_checksum
from dcd_itr.models.grounded import GroundedConfig, GroundedCrossEncoder
from dcd_itr.models.registry import load_model, save_model_description
from dcd_itr.tasks.distill import DistillConfig
from test_grounded_teacher_task import WordTower, write_tiny_scenes
from test_region_view import MeanColourTower, colour_boxes

ROOT = Path(__file__).resolve().parents[1]
TRAINABLE = ("layers.", "final_norm.", "head.")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cross_distill")
    data = write_tiny_scenes(root / "scenes")
    cache = root / "cache"
    region_tower = RegionTower(MeanColourTower(), detector=colour_boxes, max_regions=3, margin=0.0)
    for split in ("train", "val"):
        rows = load_split(data, split)
        build_feature_cache(rows, region_tower, cache, progress=False)
        build_feature_cache(rows, WordTower(), cache, progress=False)
    torch.manual_seed(0)
    config = GroundedConfig(
        image_view="regions-mean-colour@16",
        text_view="words@8",
        region_dim=3,
        text_dim=8,
        ground_dim=8,
        width=16,
        num_layers=4,
        num_heads=2,
        max_text_tokens=8,
    )
    teacher = GroundedCrossEncoder(config)
    folder = root / "teacher"
    save_model_description(teacher, folder)
    weights = {k: v.contiguous() for k, v in teacher.state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"), metadata=with_checksum(weights))
    return {"root": root, "data": data, "cache": cache, "teacher": folder, "weights": weights}


def distill_config(workspace: dict, name: str, **overrides) -> Path:
    config = {
        "data": str(workspace["data"]),
        "features": str(workspace["cache"]),
        "out": str(workspace["root"] / name),
        "teacher": str(workspace["teacher"]),
        "teacher_cache": str(workspace["root"] / "teacher_scores"),
        "student": "cross",
        "cross_frozen": True,
        "twin_negatives": True,
        "pool_size": 5,
        "num_candidates": 3,
        "anchors_per_batch": 6,
        "val_twin_pairs": 3,
        "train": {"epochs": 2, "lr": 0.01, "seed": 0, "checkpoint_every": 50},
        **overrides,
    }
    path = workspace["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_cut_and_random_students_distil_with_frozen_non_fusion_parts(workspace):
    teacher_weights = workspace["weights"]
    states = {}
    for init in ("cut", "random"):
        path = distill_config(workspace, f"student_{init}", cross_init=init)
        assert main(["distill", "--config", str(path), "--quiet"]) == 0
        run = workspace["root"] / f"student_{init}"
        student = load_model(run / "best")
        assert isinstance(student, GroundedCrossEncoder) and student.fusion_depth == 2
        states[init] = load_file(str(run / "best" / "model.safetensors"))
        for name, value in states[init].items():
            if not name.startswith(TRAINABLE):  # frozen: exactly the teacher's after training
                assert torch.equal(value, teacher_weights[name]), (init, name)
        validations = [
            json.loads(line)["validation"]
            for line in (run / "metrics.jsonl").read_text().splitlines()
            if "validation" in json.loads(line)
        ]
        assert validations and all("twin_group" in v and "rsum" in v for v in validations)
    # the cut's fusion layers start from teacher layers 0 and 3; the control's do not, so they end apart
    assert not torch.equal(
        states["cut"]["layers.0.linear1.weight"], states["random"]["layers.0.linear1.weight"]
    )
    # every image_to_text pool holds the anchor's swapped caption (column 1, from the twin rows)
    cache = next((workspace["root"] / "teacher_scores").glob("*/manifest.json")).parent
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["extra"] == {"exclude_same_text": True, "twin_negatives": True}
    pools = load_file(str(cache / "round-0000-image_to_text.safetensors"))
    train = load_split(workspace["data"], "train")
    captions = train.captions
    for anchor_caption, row in enumerate(pools["candidates"].tolist()):
        left, _, right = captions[anchor_caption].partition(" left of ")
        if right:  # "<a> left of <b>": the twin's caption 0 is "<b> left of <a>"
            assert captions[row[1]] == f"{right} left of {left}"


def test_scenes_cross_configs_load():
    cut = load_config(ROOT / "configs" / "scenes_dcd_cross.yaml", DistillConfig, [])
    control = load_config(ROOT / "configs" / "scenes_cross_random.yaml", DistillConfig, [])
    assert cut.student == control.student == "cross" and cut.cross_frozen and control.cross_frozen
    assert (cut.cross_init, control.cross_init) == ("cut", "random") and cut.twin_negatives
    differing = {k for k, v in vars(cut).items() if getattr(control, k) != v}
    assert differing == {"cross_init", "out"}
