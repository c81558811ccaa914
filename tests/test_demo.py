"""`dcd demo`: the stage ledger (reuse keyed on inputs), the example-query contact sheet, and the whole demo end
to end on tiny random towers and a tiny dataset -- run, rerun (every stage reused), change one config (only what
depends on it recomputed), add an ablation summary (only the report recomputed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dcd_itr.commands.bench import parse_baselines
from dcd_itr.data.loading import load_split
from dcd_itr.demo import DemoPlan, demo
from dcd_itr.demo.examples import CELL, CORRECT, FRAME, GAP, GROUP_GAP, MARGIN, example_sheet, sheet_size
from dcd_itr.demo.ledger import LEDGER_FILE, StageLedger
from dcd_itr.errors import ConfigError
from dcd_itr.speed import projection
from helpers import tiny_fusion_settings, write_karpathy_fixture, write_shapes_fixture

# ----------------------------------------------------------------------------- the stage ledger


def _stage(ledger: StageLedger, inputs: dict, out: Path, calls: list, **kwargs):
    def action():
        calls.append(1)
        out.write_text(json.dumps(inputs))
        return {"written": str(out)}

    return ledger.run("stage", inputs, action, outputs=[out], clear=[out], **kwargs)


def test_a_stage_is_reused_only_while_its_inputs_and_outputs_are_unchanged(tmp_path):
    path, out, calls, lines = tmp_path / LEDGER_FILE, tmp_path / "out.json", [], []
    result = _stage(StageLedger(path, lines.append), {"weights": "a"}, out, calls)
    assert calls == [1] and result == {"written": str(out)}
    ledger = StageLedger(path, lines.append)  # a new process reads the records
    assert _stage(ledger, {"weights": "a"}, out, calls) == result and calls == [1]
    assert ledger.outcomes[0].reused and "reused" in lines[-1]
    _stage(StageLedger(path, lines.append), {"weights": "b"}, out, calls)  # an input changed
    assert calls == [1, 1] and any("inputs changed (weights)" in line for line in lines)
    out.write_text("edited by hand")  # an output changed: recomputed although the inputs are the same
    _stage(StageLedger(path, lines.append), {"weights": "b"}, out, calls)
    assert len(calls) == 3 and json.loads(out.read_text()) == {"weights": "b"}
    _stage(StageLedger(path, lines.append), {"weights": "b"}, out, calls, check=lambda result: False)
    assert len(calls) == 4  # the stage's own check failed


def test_an_interrupted_stage_leaves_no_record_and_a_changed_one_clears_its_old_outputs(tmp_path):
    path, stale = tmp_path / LEDGER_FILE, tmp_path / "run"
    ledger = StageLedger(path, lambda line: None)
    stale.mkdir()
    (stale / "model").write_text("old")
    ledger.run("train", {"config": 1}, lambda: "ok", outputs=[stale / "model"], clear=[stale])

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StageLedger(path, lambda line: None).run(
            "train", {"config": 2}, interrupted, outputs=[stale / "model"], clear=[stale]
        )
    assert not stale.exists()  # made from the old inputs: removed before recomputing
    assert "train" not in json.loads(path.read_text())["stages"]  # nothing vouches for a partial run
    calls = []
    StageLedger(path, lambda line: None).run("train", {"config": 2}, lambda: calls.append(1), clear=[stale])
    assert calls == [1]


def test_an_unreadable_ledger_reuses_nothing(tmp_path):
    path = tmp_path / LEDGER_FILE
    path.write_text("{not json")
    calls = []
    StageLedger(path, lambda line: None).run("stage", {}, lambda: calls.append(1))
    assert calls == [1] and json.loads(path.read_text())["stages"]["stage"]["result"] is None


# ----------------------------------------------------------------------------- the contact sheet


def test_example_sheet_has_its_computed_size_and_frames_the_correct_image(tmp_path):
    split = load_split(write_karpathy_fixture(tmp_path / "data"), "test")  # 2 images x 4 captions
    systems = {"teacher": [[0, 1]] * 4, "dual": [[1, 0]] * 4}
    path = example_sheet(split, [0, 3], systems, tmp_path / "sheet.png", k=5, title="tiny")
    image = Image.open(path)
    assert image.size == sheet_size(2, 2, 5)
    # caption 0 belongs to image 0: first tile of the teacher (green, thick frame), second of the dual
    y = MARGIN + 16 + 4 + 2 * 16  # title line, then the query's two text lines
    teacher_x = MARGIN + CELL + GROUP_GAP
    dual_x = teacher_x + 5 * CELL + 4 * GAP + GROUP_GAP
    assert image.getpixel((teacher_x + 1, y + FRAME + 10)) == CORRECT
    assert image.getpixel((dual_x + CELL + GAP + 1, y + FRAME + 10)) == CORRECT
    assert image.getpixel((dual_x + 1, y + FRAME + 10)) != CORRECT


# ----------------------------------------------------------------------------- the whole demo on tiny models


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory, tiny_vit_path, tiny_bert_path):
    """A shapes dataset, tiny configs under the emoji configs' names, and the plan that points at them."""
    root = tmp_path_factory.mktemp("demo")
    image_view, text_view = f"hf:{tiny_vit_path}@32", f"hf:{tiny_bert_path}@16"
    dual = {"image_view": image_view, "text_view": text_view, "image_dim": 32, "text_dim": 32}
    dual |= {"hidden_dim": 16, "embed_dim": 8}
    distill = {"pool_size": 6, "num_candidates": 3, "anchors_per_batch": 8}
    configs = {
        "baseline.yaml": {"batch_size": 8, "model": dual, "train": {"epochs": 2, "lr": 0.01}},
        "teacher.yaml": {
            "paths": [dual],
            "path_training": {"batch_size": 8, "train": {"epochs": 1, "lr": 0.01}},
            "fusion": tiny_fusion_settings(image_view, text_view),
            "negatives": 3,
            "anchors_per_batch": 4,
            "train": {"epochs": 1, "lr": 0.001},
        },
        "dual.yaml": {**distill, "student": "dual", "dual": dual, "train": {"epochs": 1, "lr": 0.01}},
        "cross.yaml": {**distill, "student": "cross", "train": {"epochs": 1, "lr": 0.001}},
    }
    for name, config in configs.items():
        (root / "configs").mkdir(exist_ok=True)
        (root / "configs" / name).write_text(yaml.safe_dump(config), encoding="utf-8")
    plan = DemoPlan(
        configs=root / "configs",
        baseline_config="baseline.yaml",
        teacher_config="teacher.yaml",
        dual_config="dual.yaml",
        cross_config="cross.yaml",
        image_views=[image_view],
        text_views=[text_view],
        storage_dtype="float32",
        dataset=write_shapes_fixture(root / "data"),
        cascade_ks=[2],
        latency=None,  # the latency part is tested with the bench
        ablation=root / "ablation.md",
        progress=False,
    )
    return root, plan


def _run(root: Path, plan: DemoPlan, capsys) -> str:
    with pytest.MonkeyPatch.context() as patch:  # the COCO-size grid of the projection takes seconds
        patch.setattr(projection, "dual_ranking_seconds", lambda n, m, dim: 0.5)
        report = demo(root / "unused", root / "results", cache_dir=root / "cache", plan=plan)
    assert report == root / "results" / "report.md"
    return capsys.readouterr().out


def _stages(printed: str, status: str) -> set[str]:
    return set(re.findall(rf"^\[(.+?)\] {status}", printed, flags=re.MULTILINE))


ALL_STAGES = {
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
def test_demo_end_to_end_then_reuse_then_recompute_what_changed(tiny_demo, capsys):
    root, plan = tiny_demo
    results = root / "results"
    printed = _run(root, plan, capsys)
    assert _stages(printed, r"done in") == ALL_STAGES and not _stages(printed, "reused")
    for name in (
        "cross-encoder teacher",
        "DCD compressed cross-encoder",
        "DCD dual encoder",
        "dual baseline",
    ):
        assert f"| {name}" in printed  # the table is printed at the end
    assert f"report: {results / 'report.md'}" in printed
    assert f"dcd search --index {results / 'index'} 'a red heart'" in printed
    assert f"dcd serve --index {results / 'index'} --cross {results / 'dcd_cross' / 'best'}" in printed

    report = (results / "report.md").read_text()
    assert (
        "| system | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | RSUM | % of teacher |"
        in report
    )
    summary = report.split("## Summary")[1].split("\n## ")[0]
    rows = re.findall(
        r"^\| (cross-encoder teacher|DCD [^|]+|cascade [^|]+|dual baseline [^|]+) \|.*$", summary, re.M
    )
    assert rows == [
        "cross-encoder teacher",
        "DCD compressed cross-encoder",
        "DCD dual encoder",
        "cascade dual -> cross, k = 2",
        "dual baseline (no teacher)",
    ]
    teacher_row = re.search(r"^\| cross-encoder teacher \|.*$", summary, re.M).group(0)
    assert "| 100.0% |" in teacher_row and teacher_row.endswith("| 1x |")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(images) == {"speed_plot.png", "examples.png", "test_contact_sheet.png"}
    for image in images:
        assert (results / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert all((results / link).is_file() for link in links), links
    assert Image.open(results / "examples.png").size == sheet_size(5, 3, 5)
    assert "Not run." in report  # no ablation summary yet
    assert "```yaml" in report and "fusion_image_view" in report  # the teacher's resolved config
    for name in ("torch", "transformers", "faiss-cpu", "dcd-itr"):
        assert re.search(rf"^\| {name} \| \S+ \|$", report, re.M), name
    assert "| CPU |" in report and "| memory |" in report and "| OS |" in report
    speed = json.loads((results / "speed.json").read_text())
    assert speed["latency"] is None and speed["existing_itr"] == {}
    assert [row["name"] for row in speed["ranking"]] == [
        "teacher",
        "cross student",
        "dual student",
        "cascade k=2",
        "dual baseline (no teacher)",
    ]
    top = json.loads((results / "top_images.json").read_text())
    caption_to_image = load_split(plan.dataset, "test").caption_to_image
    for row in speed["ranking"]:  # the sheet's rankings are the table's: same R@1
        if row["kind"] != "cascade":
            first = [ranked[0] for ranked in top["text_to_image"][row["name"]]]
            hits = sum(int(f == t) for f, t in zip(first, caption_to_image, strict=True))
            assert 100 * hits / len(first) == pytest.approx(row["metrics"]["text_to_image_R@1"]), row["name"]
    metrics = json.loads((results / "test_metrics.json").read_text())
    assert metrics["cross-encoder teacher"]["rsum"] == speed["ranking"][0]["rsum"]
    assert (results / "index" / "gallery.json").is_file()

    # a second run reuses every stage
    stamps = {path: path.stat().st_mtime_ns for path in results.rglob("*") if path.is_file()}
    printed = _run(root, plan, capsys)
    assert _stages(printed, "reused") == ALL_STAGES and not _stages(printed, r"\.\.\.")
    changed = [
        p for p, t in stamps.items() if p.exists() and p.stat().st_mtime_ns != t and p.name != LEDGER_FILE
    ]
    assert changed == [] and "(10 of 10 stages reused)" in printed

    # a changed input: the dual student's config -> it, the speed stage, the index and the report recompute
    config = plan.configs / plan.dual_config
    changed_config = yaml.safe_load(config.read_text())
    changed_config["train"]["lr"] = 0.02
    config.write_text(yaml.safe_dump(changed_config))
    printed = _run(root, plan, capsys)
    recomputed = {
        "DCD dual student",
        "evaluate + speed (test split, from raw images)",
        "index (test images, dual student)",
        "report",
    }
    assert recomputed <= _stages(printed, "done in") - _stages(printed, "reused")
    assert {"preview", "features", "teacher", "DCD cross student"} <= _stages(printed, "reused")
    assert "baseline dual (InfoNCE, no teacher)" in _stages(printed, "reused")
    assert "[DCD dual student] inputs changed (config): recomputing" in printed
    saved = yaml.safe_load((results / "dcd_dual" / "config.yaml").read_text())
    assert saved["train"]["lr"] == 0.02  # a new run, not a resumed one of the old config

    # an ablation summary appears: only the report is rewritten, and it includes the summary
    plan.ablation.write_text("# DCD ablation\n\n| loss | RSUM |\n|---|---:|\n| dcd | 1.0 |\n")
    printed = _run(root, plan, capsys)
    assert _stages(printed, "reused") == ALL_STAGES - {"report"}
    report = (results / "report.md").read_text()
    assert "### DCD ablation" in report and "| dcd | 1.0 |" in report and "Not run." not in report


def test_bench_baselines_are_named_dirs():
    assert parse_baselines(["no teacher=runs/a", "b=c=d"]) == {"no teacher": Path("runs/a"), "b": Path("c=d")}
    with pytest.raises(ConfigError, match="NAME=DIR"):
        parse_baselines(["runs/a"])
