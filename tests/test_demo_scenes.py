"""`dcd demo --benchmark scenes` end to end on a tiny scenes build (the real builder, small sizes) with tiny random
towers: every stage runs (grounded teacher, DCD dual, compressed cross cut from the teacher, cascade, twin scores,
interaction gain, example sheet with twins); a rerun reuses every stage; the packaged teacher is checked by sha256
(a corrupted file is an error naming it) and, installed, leaves every downstream stage reused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dcd_itr.cli import build_parser
from dcd_itr.demo import demo
from dcd_itr.demo.examples import sheet_size
from dcd_itr.demo.outputs import DEFAULT_CACHE, DEFAULT_RESULTS
from dcd_itr.demo.packaged import (
    MANIFEST,
    install_packaged_teacher,
    package_teacher,
    records_fingerprint,
    verify_packaged_teacher,
)
from dcd_itr.demo.plan import PACKAGED_TEACHER, plan_for, scenes_plan
from dcd_itr.demo.prepare import scenes_dataset_is_current
from dcd_itr.errors import ConfigError, CorruptFileError
from dcd_itr.io_utils import file_sha256
from dcd_itr.speed import projection
from test_scenes import PLAIN, cldr_xml

SIZES = {"vocab": 12, "train_scenes": 4, "val_pairs": 2, "test_pairs": 2, "objects": 2, "canvas": 128}


def _configs(root: Path, student_view: str, region_view: str, text_view: str) -> Path:
    dual = {"image_view": student_view, "text_view": text_view, "image_dim": 32, "text_dim": 32}
    dual |= {"hidden_dim": 16, "embed_dim": 8}
    distill = {"pool_size": 6, "num_candidates": 3, "anchors_per_batch": 8, "twin_negatives": True}
    cross = {"cross_frozen": True, "cross_init": "cut"}  # as configs/scenes_dcd_cross.yaml
    teacher_model = {"image_view": region_view, "text_view": text_view, "region_dim": 32, "text_dim": 32}
    teacher_model |= {"ground_dim": 8, "width": 16, "num_layers": 2, "num_heads": 2, "max_text_tokens": 16}
    configs = {
        "baseline.yaml": {"batch_size": 8, "model": dual, "train": {"epochs": 2, "lr": 0.01}},
        "teacher.yaml": {
            "kind": "grounded",
            "model": teacher_model,
            "align_batch_size": 4,
            "steps_per_epoch": 3,
            "negatives": 3,
            "hard_negatives": 1,
            "anchors_per_batch": 4,
            "val_twin_pairs": 2,
            "train": {"epochs": 2, "lr": 0.003, "seed": 0, "checkpoint_every": 2},
        },
        "dual.yaml": {**distill, "student": "dual", "dual": dual, "train": {"epochs": 1, "lr": 0.01}},
        "cross.yaml": {**distill, **cross, "student": "cross", "train": {"epochs": 1, "lr": 0.001}},
    }
    folder = root / "configs"
    folder.mkdir()
    for name, config in configs.items():
        (folder / name).write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny_scenes_demo(tmp_path_factory, tiny_vit_path, tiny_bert_path):
    root = tmp_path_factory.mktemp("scenes_demo")
    cldr = root / "cldr"
    for folder, names in (("annotations", PLAIN), ("annotationsDerived", {})):
        (cldr / folder).mkdir(parents=True)
        (cldr / folder / "en.xml").write_text(cldr_xml(names), encoding="utf-8")
    student_view, text_view = f"hf:{tiny_vit_path}@32", f"hf:{tiny_bert_path}@16"
    region_view = f"regions-hf:{tiny_vit_path}@32"
    plan = scenes_plan(
        configs=_configs(root, student_view, region_view, text_view),
        baseline_config="baseline.yaml",
        teacher_config="teacher.yaml",
        dual_config="dual.yaml",
        cross_config="cross.yaml",
        image_views=[student_view, region_view],
        text_views=[text_view],
        scenes_options={**SIZES, "cldr_dir": cldr},
        cascade_ks=[2],
        latency=None,
        ablation=root / "ablation.md",
        packaged_teacher=root / "no_teacher_packaged_yet",
        progress=False,
    )
    return root, plan


def _run(root: Path, plan, capsys) -> str:
    with pytest.MonkeyPatch.context() as patch:  # the COCO-size grid of the projection takes seconds
        patch.setattr(projection, "dual_ranking_seconds", lambda n, m, dim: 0.5)
        report = demo(root / "data", root / "results", cache_dir=root / "cache", plan=plan)
    assert report == root / "results" / "report.md"
    return capsys.readouterr().out


def _stages(printed: str, status: str) -> set[str]:
    return set(re.findall(rf"^\[(.+?)\] {status}", printed, flags=re.MULTILINE))


STAGES = {
    "data",
    "preview",
    "features",
    "baseline dual (InfoNCE, no teacher)",
    "teacher",
    "DCD dual student",
    "DCD cross student",
    "evaluate + speed (test split, from raw images)",
    "index (test images, dual student)",
    "example queries",
    "report",
}


@pytest.mark.slow
def test_scenes_demo_runs_every_stage_then_reuses_them_then_takes_the_packaged_teacher(
    tiny_scenes_demo, capsys
):
    root, plan = tiny_scenes_demo
    results = root / "results"
    printed = _run(root, plan, capsys)
    assert _stages(printed, "done in") == STAGES and not _stages(printed, "reused")
    assert "no packaged teacher in" in printed  # the placeholder folder is empty: the teacher is trained
    assert (root / "data" / "dataset_scenes.json").is_file()  # built by the scenes builder
    # a build with this seed and these sizes is recognised (reused by the data stage); others are not
    options = plan.scenes_options
    assert scenes_dataset_is_current(root / "data", 0, options)
    assert not scenes_dataset_is_current(root / "data", 1, options)
    assert not scenes_dataset_is_current(root / "data", 0, options | {"test_pairs": 3})
    assert not scenes_dataset_is_current(root / "data", 0, {})  # the full-size defaults

    speed = json.loads((results / "speed.json").read_text())
    names = [row["name"] for row in speed["ranking"]]
    assert names == ["teacher", "cross student", "dual student", "cascade k=2", "dual baseline (no teacher)"]
    for row in speed["ranking"]:  # twin scores from the timed run of every system, cascades included
        assert {"twin_text", "twin_image", "twin_group"} <= set(row["metrics"]), row["name"]
        assert row["metrics"]["twin_pairs"] == SIZES["test_pairs"]
    paths_only = json.loads((results / "paths_only.json").read_text())
    assert "twin_group" in paths_only and "rsum" in paths_only

    report = (results / "report.md").read_text()
    assert "| twin text | twin image | twin group |" in report
    assert "teacher, fusion removed (paths only; not timed)" in report
    assert "## Interaction gain" in report and "| DCD compressed cross-encoder |" in report
    metrics = json.loads((results / "test_metrics.json").read_text())
    cross = metrics["DCD compressed cross-encoder"]
    teacher, reference = speed["ranking"][0]["metrics"], paths_only
    if abs(teacher["rsum"] - reference["rsum"]) > 1e-9:  # retention = (student - paths) / (teacher - paths)
        expected = 100 * (cross["rsum"] - reference["rsum"]) / (teacher["rsum"] - reference["rsum"])
        assert cross["interaction_gain_kept_rsum_pct"] == pytest.approx(expected)
    # the example sheet: 4 systems, the twin beside the correct scene; the table names the twin's place
    assert Image.open(results / "examples.png").size == sheet_size(5, 4, 5, True)
    assert re.search(r"^\| a .+ \| .+ / twin .+ \|$", report, re.M)
    assert "dcd search --index" in printed and "--rerank 16 --cross" in printed

    # a second run reuses every stage and rewrites nothing
    stamps = {path: path.stat().st_mtime_ns for path in results.rglob("*") if path.is_file()}
    printed = _run(root, plan, capsys)
    assert _stages(printed, "reused") == STAGES and not _stages(printed, r"\.\.\.")
    assert [
        p for p, t in stamps.items() if p.exists() and p.stat().st_mtime_ns != t and p.name != "stages.json"
    ] == []

    # package the trained teacher; the demo then installs it (checked) and reuses everything downstream
    packaged = root / "teachers" / "scenes_grounded"
    data_fingerprint = records_fingerprint(root / "data" / "dataset_scenes.json")
    package_teacher(
        results / "teacher", packaged, "dcd train-teacher --config teacher.yaml", 0, data_fingerprint
    )
    plan.packaged_teacher = packaged
    printed = _run(root, plan, capsys)
    assert "teacher (packaged)" in _stages(printed, "done in") - _stages(printed, "reused")
    assert STAGES - {"teacher", "report"} <= _stages(printed, "reused")
    assert "packaged teacher from" in (results / "report.md").read_text()

    # a corrupted packaged file is an error naming it
    weights = packaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(CorruptFileError, match=re.escape(str(weights))):
        _run(root, plan, capsys)


def test_packaged_teacher_checksums_and_data_fingerprint(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "model.safetensors").write_bytes(b"weights")
    (run / "best" / "model.yaml").write_text("kind: grounded\n")
    folder = tmp_path / "packaged"
    package_teacher(run, folder, "dcd train-teacher --config configs/scenes_teacher.yaml", 0, "f" * 64)
    manifest = verify_packaged_teacher(folder)
    assert manifest["files"]["model.safetensors"] == file_sha256(run / "best" / "model.safetensors")
    assert manifest["command"].startswith("dcd train-teacher") and manifest["seed"] == 0
    with pytest.raises(ConfigError, match="trained on another dataset"):
        install_packaged_teacher(folder, tmp_path / "out", "0" * 64)
    (folder / "model.yaml").write_text("kind: fusion\n")
    with pytest.raises(CorruptFileError, match=re.escape(str(folder / "model.yaml"))):
        verify_packaged_teacher(folder)
    (folder / "model.yaml").unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        verify_packaged_teacher(folder)
    with pytest.raises(ConfigError, match="no packaged teacher"):
        verify_packaged_teacher(tmp_path / "nowhere")
    (folder / MANIFEST).write_text("{}")
    with pytest.raises(CorruptFileError, match=re.escape(str(folder / MANIFEST))):
        verify_packaged_teacher(folder)
    big = tmp_path / "big"
    shutil.copytree(run, big)
    (big / "best" / "model.safetensors").write_bytes(b"\0" * (5 * 2**20 + 1))
    with pytest.raises(ConfigError, match="5 MB"):
        package_teacher(big, tmp_path / "p2", "x", 0, "f" * 64)


def test_demo_command_picks_the_benchmark_and_its_folders():
    args = build_parser().parse_args(["demo"])
    assert args.benchmark == "scenes" and args.data_dir is None and not args.retrain_teacher
    assert args.workers is None and build_parser().parse_args(["demo", "--workers", "1"]).workers == 1
    assert plan_for("scenes", workers=1).workers == 1 and plan_for("scenes").workers is None
    assert DEFAULT_RESULTS == {"scenes": "results/demo_scenes", "emoji": "results/demo"}
    assert DEFAULT_CACHE["emoji"] == "cache/features"  # a finished emoji run is found where it always was
    scenes = plan_for("scenes", retrain_teacher=True)
    assert scenes.packaged_teacher == PACKAGED_TEACHER and scenes.retrain_teacher and scenes.has_twins
    assert scenes.teacher_config == "scenes_teacher.yaml" and scenes.cross_config == "scenes_dcd_cross.yaml"
    emoji = plan_for("emoji")
    assert (
        emoji.teacher_config == "emoji_teacher.yaml"
        and emoji.packaged_teacher is None
        and not emoji.has_twins
    )
    with pytest.raises(ConfigError, match="--benchmark"):
        plan_for("coco")
    for name in (scenes.baseline_config, scenes.teacher_config, scenes.dual_config, scenes.cross_config):
        assert (Path(__file__).parents[1] / "configs" / name).is_file(), name


def test_dcd_demo_package_teacher_reads_seed_and_data_from_the_run(tmp_path, monkeypatch):
    from dcd_itr.cli import main

    data = tmp_path / "data" / "dataset_scenes.json"
    data.parent.mkdir()
    data.write_text('{"images": []}')
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "model.safetensors").write_bytes(b"weights")
    (run / "best" / "model.yaml").write_text("kind: grounded\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": str(data), "train": {"seed": 3}}))
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--package-teacher", str(run)]) == 0
    manifest = verify_packaged_teacher(tmp_path / PACKAGED_TEACHER)
    assert manifest["seed"] == 3 and manifest["data_fingerprint"] == records_fingerprint(data)
    assert manifest["command"] == "dcd train-teacher --config configs/scenes_teacher.yaml"
    assert manifest["config"]["train"]["seed"] == 3
    assert "data" not in manifest["config"]  # the run's path on the machine that trained it is not recorded


def test_packaged_config_takes_its_paths_from_the_command_not_the_training_machine():
    from dcd_itr.demo.packaged import portable_config

    config = {"data": "/work/data/scenes", "features": "/tmp/f", "out": "/tmp/run", "train": {"seed": 0}}
    command = "dcd train-teacher --config c.yaml --set data=data/scenes --set 'out=results/my teacher'"
    assert portable_config(config, command) == {
        "train": {"seed": 0},
        "data": "data/scenes",
        "out": "results/my teacher",
    }
    assert portable_config(None, command) is None
    shipped = json.loads((Path(__file__).parents[1] / "teachers/scenes_grounded/manifest.json").read_text())
    assert not any(str(value).startswith("/") for value in shipped["config"].values())


def test_a_finished_run_is_not_retrained_for_fields_added_since_at_their_defaults(tmp_path):
    from dcd_itr.demo.training import default_tree, only_new_defaults, recorded_config
    from dcd_itr.tasks.teacher_training import TeacherTrainingConfig

    defaults = {"lr": 0.1, "twin": False, "model": {"width": 8, "attention": None}}
    old = {"lr": 0.2, "model": {"width": 16}}
    assert only_new_defaults(
        old, {"lr": 0.2, "twin": False, "model": {"width": 16, "attention": None}}, defaults
    )
    assert not only_new_defaults(
        old, {"lr": 0.2, "twin": True, "model": {"width": 16}}, defaults
    )  # not default
    assert not only_new_defaults(old, {"lr": 0.3, "twin": False, "model": {"width": 16}}, defaults)  # changed
    assert not only_new_defaults(old, {"twin": False, "model": {"width": 16}}, defaults)  # a field removed
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(old))
    new = {"lr": 0.2, "twin": False, "model": {"width": 16}}
    assert recorded_config(new, saved, defaults) == old  # fingerprinted as the finished run recorded it
    assert recorded_config({"lr": 0.5}, saved, defaults) == {"lr": 0.5}
    assert recorded_config(new, tmp_path / "none.yaml", defaults) == new
    # a list of sub-configs (the fusion teacher's similarity paths) gets the defaults of one entry
    assert isinstance(default_tree(TeacherTrainingConfig)["paths"][0], dict)


def test_records_fingerprint_ignores_the_info_block(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    records = [{"filename": "x.png", "split": "test", "sentences": [{"raw": "a cat face above a pizza"}]}]
    first.write_text(json.dumps({"info": {"debian_packages": {"fonts": "1"}}, "images": records}))
    second.write_text(json.dumps({"images": records, "info": {"debian_packages": {"fonts": "2"}}}, indent=2))
    assert records_fingerprint(first) == records_fingerprint(second)
    records[0]["sentences"][0]["raw"] = "a pizza above a cat face"
    second.write_text(json.dumps({"images": records}))
    assert records_fingerprint(first) != records_fingerprint(second)
    second.write_text("not json")
    with pytest.raises(CorruptFileError, match=re.escape(str(second))):
        records_fingerprint(second)


def test_interaction_gain_retention_by_hand():
    from dcd_itr.demo.interaction import interaction_gain

    rows = [
        {"name": "teacher", "kind": "teacher", "metrics": {"rsum": 500.0, "twin_group": 100.0}},
        {"name": "cross student", "kind": "cross", "metrics": {"rsum": 470.0, "twin_group": 95.0}},
        {"name": "dual student", "kind": "dual", "metrics": {"rsum": 300.0, "twin_group": 2.0}},
        {"name": "cascade k=16", "kind": "cascade", "metrics": {"rsum": 200.0}},
    ]
    gains = interaction_gain(rows, {"rsum": 200.0, "twin_group": 0.0}, str.upper)
    assert gains == [  # (470 - 200) / (500 - 200) = 90%; (95 - 0) / (100 - 0) = 95%; no twin key -> None
        {"name": "CROSS STUDENT", "rsum": pytest.approx(90.0), "twin_group": pytest.approx(95.0)},
        {"name": "CASCADE K=16", "rsum": pytest.approx(0.0), "twin_group": None},
    ]
    assert interaction_gain(rows, {"rsum": 500.0, "twin_group": 0.0})[0]["rsum"] is None  # no gain to keep
