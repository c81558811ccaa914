"""The training commands end to end on a tiny dataset with tiny random towers: dual baseline, fusion teacher,
DCD into both students, evaluation and cascade — through the CLI, as a user runs them."""

from __future__ import annotations

import json

import pytest
import yaml

from dcd_itr.cli import main
from helpers import tiny_fusion_settings


@pytest.fixture(scope="module")
def workspace(feature_workspace) -> dict:
    shared = feature_workspace("shapes", num_images=24)
    root, data, image_view, text_view = (
        shared["root"],
        shared["data"],
        shared["image_view"],
        shared["text_view"],
    )
    dual = {
        "image_view": image_view,
        "text_view": text_view,
        "image_dim": 32,
        "text_dim": 32,
        "hidden_dim": 16,
        "embed_dim": 8,
    }
    common = {"data": str(data), "features": str(root / "cache")}
    configs = {
        "dual": {
            **common,
            "out": str(root / "dual"),
            "batch_size": 8,
            "model": dual,
            "train": {"epochs": 2, "lr": 0.01, "checkpoint_every": 2},
        },
        "teacher": {
            **common,
            "out": str(root / "teacher"),
            "paths": [dual],
            "path_training": {"batch_size": 8, "train": {"epochs": 2, "lr": 0.01}},
            "fusion": tiny_fusion_settings(image_view, text_view),
            "negatives": 3,
            "anchors_per_batch": 4,
            "train": {"epochs": 1, "lr": 0.001},
        },
    }
    distill = {
        **common,
        "teacher": str(root / "teacher" / "best"),
        "teacher_cache": str(root / "teacher_cache"),
        "pool_size": 6,
        "num_candidates": 3,
        "anchors_per_batch": 8,
    }
    configs["dcd_dual"] = {
        **distill,
        "out": str(root / "dcd_dual"),
        "student": "dual",
        "dual": dual,
        "train": {"epochs": 2, "lr": 0.01},
    }
    configs["dcd_cross"] = {
        **distill,
        "out": str(root / "dcd_cross"),
        "student": "cross",
        "train": {"epochs": 1, "lr": 0.001},
    }
    paths = {}
    for name, config in configs.items():
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(config), encoding="utf-8")
    return {"root": root, "data": data, "configs": paths}


def test_dual_baseline_trains_resumes_and_evaluates(workspace: dict, capsys) -> None:
    root, config = workspace["root"], workspace["configs"]["dual"]
    assert main(["train-dual", "--config", str(config), "--quiet"]) == 0
    assert (root / "dual" / "best" / "model.safetensors").is_file()
    lines = (root / "dual" / "metrics.jsonl").read_text().splitlines()
    assert sum('"validation"' in line for line in lines) == 2
    assert main(["train-dual", "--config", str(config), "--quiet"]) == 0  # finished run: nothing more to do
    assert (root / "dual" / "metrics.jsonl").read_text().splitlines() == lines
    code = main(["train-dual", "--config", str(config), "--set", "train.lr=0.5", "--quiet"])
    assert code == 2 and "different config" in capsys.readouterr().err
    out = root / "dual_eval.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(root / "dual" / "best"),
                "--data",
                str(workspace["data"]),
                "--features",
                str(root / "cache"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    metrics = json.loads(out.read_text())[str(root / "dual" / "best")]
    assert metrics["num_images"] == 4 and metrics["num_captions"] == 8 and 0 <= metrics["rsum"] <= 600


def test_teacher_then_dcd_students_then_cascade(workspace: dict) -> None:
    root, configs = workspace["root"], workspace["configs"]
    assert main(["train-teacher", "--config", str(configs["teacher"]), "--quiet"]) == 0
    ensemble = json.loads((root / "teacher" / "ensemble_val_metrics.json").read_text())
    best = json.loads((root / "teacher" / "best" / "metrics.json").read_text())
    assert best["rsum"] >= ensemble["rsum"]  # the kept teacher never loses to the ensemble it started as
    assert main(["distill", "--config", str(configs["dcd_dual"]), "--quiet"]) == 0
    cache_files = sorted((root / "teacher_cache").rglob("*.safetensors"))
    assert len(cache_files) == 2  # one round, two directions
    stamps = [f.stat().st_mtime_ns for f in cache_files]
    assert main(["distill", "--config", str(configs["dcd_cross"]), "--quiet"]) == 0
    assert [
        f.stat().st_mtime_ns for f in cache_files
    ] == stamps  # the cross student reused the teacher scores
    timing = json.loads((root / "dcd_cross" / "timing.json").read_text())
    assert timing["teacher_cache_seconds"] < timing["training_seconds"]
    student_yaml = yaml.safe_load((root / "dcd_cross" / "best" / "model.yaml").read_text())
    assert student_yaml["config"]["num_layers"] == 1  # half of the teacher's two fusion layers
    out = root / "cascade.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(root / "teacher" / "best"),
                "--data",
                str(workspace["data"]),
                "--features",
                str(root / "cache"),
                "--cascade",
                f"{root / 'dcd_dual' / 'best'}:{root / 'dcd_cross' / 'best'}",
                "--k",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert rows["cascade k=2"]["pairs_scored"] == 4 * 2 + 8 * 2
    assert rows[str(root / "teacher" / "best")]["kind"] == "cross"


def test_dcd_with_fresh_candidates_and_a_named_weighting(workspace: dict) -> None:
    """One mining round per epoch, the weighted loss without InfoNCE: the cache holds a round per epoch and the
    log carries the effective sample sizes. Needs the teacher of the test above."""
    root, configs = workspace["root"], workspace["configs"]
    if not (root / "teacher" / "best").exists():
        assert main(["train-teacher", "--config", str(configs["teacher"]), "--quiet"]) == 0
    config = yaml.safe_load(configs["dcd_dual"].read_text())
    config.update(
        out=str(root / "dcd_fresh"),
        teacher_cache=str(root / "teacher_cache_fresh"),
        fresh_candidates=True,
        infonce_weight=0.0,
        loss={"name": "weighted", "options": {"label_weighting": "mixed", "distill_weighting": "confidence"}},
        train={"epochs": 2, "lr": 0.01, "log_every": 1},
    )
    path = root / "dcd_fresh.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["distill", "--config", str(path), "--quiet"]) == 0
    (folder,) = (root / "teacher_cache_fresh").iterdir()
    assert folder.name.endswith("-sametext")
    assert len(list(folder.glob("round-*.safetensors"))) == 4  # 2 epochs x 2 directions
    logged = [json.loads(line) for line in (root / "dcd_fresh" / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in logged if "label_ess" in line]
    assert steps and all(1.0 <= line["label_ess"] <= 8.0 for line in steps)  # 8 anchors per batch
    assert all("infonce" in line for line in steps)


def test_unset_loss_fields_keep_each_loss_own_defaults():
    from dcd_itr.distill.losses import build_loss
    from dcd_itr.tasks.distill import LossConfig, _loss_options

    assert _loss_options(LossConfig(name="wsl")) == {}
    assert build_loss("wsl", **_loss_options(LossConfig(name="wsl"))).distance == "kl"  # WSL's own default
    assert build_loss("dcd", **_loss_options(LossConfig())).distance == "mse"  # the reference code's
    shared = LossConfig(
        name="static", alpha=0.5, reduction="reference", distance="mse"
    )  # one config, all rows
    assert _loss_options(shared) == {"alpha": 0.5, "distance": "mse"}  # a reduction is dcd's only
    assert _loss_options(LossConfig(name="none", alpha=0.5)) == {}
