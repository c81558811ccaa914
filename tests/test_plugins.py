"""Plug-in cross-encoders (``vilt:``, ``python:`` specs) through ``dcd eval`` and as ``dcd distill`` teachers, on the
tiny Karpathy fixture with tiny random models (nothing downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from dcd_itr.cli import main
from dcd_itr.data.image_files import ImageFiles
from dcd_itr.data.loading import load_split
from dcd_itr.distill.frozen_teacher import load_frozen_teacher
from dcd_itr.distill.pools import build_pools, score_pools_by_image
from dcd_itr.models.plugins import ScoreFunctionCrossEncoder, load_plugin, parse_spec
from test_hf_adapters import tiny_adapter

PLUGINS = Path(__file__).with_name("plugin_teachers.py")
NAME_TEACHER = f"python:{PLUGINS}:ColourNameTeacher"
PROTOCOL_TEACHER = f"python:{PLUGINS}:ColourCrossEncoder"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workspace(feature_workspace) -> dict:
    """The fixture dataset, a tiny random ViLT saved like a downloaded checkpoint, and the student's features."""
    shared = feature_workspace("karpathy")
    root, data = shared["root"], shared["data"]
    vilt = root / "vilt"
    vilt.mkdir()
    tiny_adapter("vilt", vilt).save_pretrained(vilt)
    views = {"image_view": shared["image_view"], "text_view": shared["text_view"]}
    return {"root": root, "data": data, "vilt": vilt, "views": views}


def run_eval(workspace: dict, *arguments: str, split: str = "train") -> dict:
    out = workspace["root"] / "eval.json"
    command = ["eval", "--data", str(workspace["data"]), "--split", split, "--out", str(out), "--quiet"]
    assert main([*command, *arguments]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("spec", [NAME_TEACHER, PROTOCOL_TEACHER])
def test_python_teacher_known_by_construction_ranks_perfectly(workspace: dict, spec: str) -> None:
    metrics = run_eval(workspace, "--cross-encoder", spec)[spec]  # train: 4 images, 8 captions
    assert (metrics["kind"], metrics["num_images"], metrics["num_captions"]) == ("cross", 4, 8)
    assert metrics["image_to_text_R@1"] == metrics["text_to_image_R@1"] == 100.0
    assert metrics["rsum"] == 600.0


def test_vilt_spec_is_evaluated_by_full_ranking(workspace: dict) -> None:
    spec = f"vilt:{workspace['vilt']}"
    scores = workspace["root"] / "scores"
    rows = run_eval(
        workspace, "--cross-encoder", spec, "--cross-encoder", NAME_TEACHER, "--scores-dir", str(scores)
    )
    assert set(rows) == {spec, NAME_TEACHER}
    assert rows[spec]["kind"] == "cross" and 0 <= rows[spec]["rsum"] <= 600
    assert len(list(scores.rglob("rows_*.safetensors"))) == 2  # one shard per cross-encoder, resumable
    again = run_eval(workspace, "--cross-encoder", spec, "--scores-dir", str(scores))[spec]
    assert again.pop("pairs_per_second") == 0.0  # every shard reused, nothing scored
    assert again == {k: v for k, v in rows[spec].items() if k != "pairs_per_second"}


def test_score_function_wrapper_round_trips_images_and_captions() -> None:
    from PIL import Image

    wrapper = ScoreFunctionCrossEncoder(object())
    images = [Image.new("RGB", (500, 250), "red"), Image.new("RGB", (20, 30), "blue")]
    features = wrapper.encode_images(images)
    assert features["pixels"].shape == (2, 384, 384, 3)  # longer side shrunk to 384, aspect kept
    assert [image.size for image in wrapper.images_of(features)] == [(384, 192), (20, 30)]
    captions = ["a café ☕", ""]
    assert wrapper.texts_of(wrapper.encode_texts(captions)) == captions


def test_pools_scored_by_image_match_the_teacher_pair_by_pair(workspace: dict) -> None:
    """Known answer: every (anchor, candidate) entry equals the teacher's own score of that one pair."""
    split = load_split(workspace["data"], "train")
    teacher = load_frozen_teacher(NAME_TEACHER).model
    images, texts = ImageFiles(split.image_paths), split.captions
    for direction in ("image_to_text", "text_to_image"):
        pools = build_pools(split, direction, 4, seed=0, round_index=0)
        got = score_pools_by_image(teacher, images, texts, pools, images_per_block=3, pair_batch_size=5)
        for anchor, row in enumerate(pools.candidates.tolist()):
            for column, candidate in enumerate(row):
                pair = (int(pools.anchor_rows[anchor]), candidate)
                image, text = pair if direction == "image_to_text" else pair[::-1]
                expected = teacher.scorer.score([images[image]], [texts[text]])[0]
                assert got[anchor, column].item() == pytest.approx(expected)
        assert (got[:, 0:1] >= got).all()  # the positive scores best, by construction


def test_fingerprint_follows_weights_and_declared_ids(workspace: dict, tmp_path: Path) -> None:
    spec = f"vilt:{workspace['vilt']}"
    first = load_plugin(spec)
    assert load_plugin(spec).fingerprint == first.fingerprint
    assert load_plugin(spec, options={"pair_batch_size": 7}).fingerprint == first.fingerprint  # batching only
    assert load_plugin(spec, options={"max_text_length": 8}).fingerprint != first.fingerprint
    changed = first.model
    with torch.no_grad():
        next(changed.model.parameters()).add_(1.0)
    changed.save_pretrained(tmp_path)
    assert load_plugin(f"vilt:{tmp_path}").fingerprint != first.fingerprint
    assert load_plugin(NAME_TEACHER).fingerprint == load_plugin(NAME_TEACHER).fingerprint


def test_teachers_are_frozen(workspace: dict) -> None:
    teacher = load_frozen_teacher(f"vilt:{workspace['vilt']}")
    assert teacher.raw_inputs and not teacher.model.model.training
    assert not any(parameter.requires_grad for parameter in teacher.model.model.parameters())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope:x", "unknown kind 'nope'"),
        ("vilt:", "nothing after 'vilt:'"),
        ("python:justamodule", "expected python:MODULE:NAME"),
        ("python:no_such_module_anywhere:Teacher", "cannot import 'no_such_module_anywhere'"),
        (f"python:{PLUGINS}:Missing", "has no class or function 'Missing'"),
        (f"python:{PLUGINS}:NoScore", "neither score(images, captions)"),
        ("python:missing_file.py:Teacher", "file 'missing_file.py' not found"),
        ("blip-itm:/no/such/checkpoint", "cannot load it"),
    ],
)
def test_bad_specs_are_clear_errors(workspace: dict, capsys, spec: str, message: str) -> None:
    command = ["eval", "--cross-encoder", spec, "--data", str(workspace["data"]), "--quiet"]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert spec in error and message in error


def test_a_model_folder_is_not_a_plugin(tmp_path: Path) -> None:
    assert parse_spec(str(tmp_path)) is None
    assert parse_spec("results/teacher/best") is None
    assert parse_spec("vilt:dandelin/vilt-b32-finetuned-coco") == ("vilt", "dandelin/vilt-b32-finetuned-coco")


def distill_config(workspace: dict, name: str, teacher: str, **fields) -> Path:
    root = workspace["root"]
    config = {
        "data": str(workspace["data"]),
        "features": str(root / "cache"),
        "out": str(root / name),
        "teacher": teacher,
        "teacher_cache": str(root / "teacher_scores"),
        "student": "dual",
        "dual": {**workspace["views"], "image_dim": 32, "text_dim": 32, "hidden_dim": 16, "embed_dim": 8},
        "pool_size": 4,  # train: 4 images, so a text -> image anchor has 3 negatives
        "num_candidates": 3,
        "anchors_per_batch": 4,
        "train": {"epochs": 2, "lr": 0.01},
        **fields,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_distill_a_vilt_teacher_into_a_dual_student(workspace: dict, capsys) -> None:
    root, spec = workspace["root"], f"vilt:{workspace['vilt']}"
    assert main(["distill", "--config", str(distill_config(workspace, "from_vilt", spec)), "--quiet"]) == 0
    assert (root / "from_vilt" / "best" / "model.safetensors").is_file()
    assert "building" in capsys.readouterr().out
    (folder,) = [path for path in (root / "teacher_scores").iterdir() if path.name.startswith("vilt-")]
    assert json.loads((folder / "teacher.json").read_text())["spec"] == spec
    rounds = sorted(folder.glob("round-*.safetensors"))
    assert len(rounds) == 2  # one round, both directions
    stamps = [path.stat().st_mtime_ns for path in rounds]
    config = distill_config(workspace, "from_vilt_again", spec)
    assert main(["distill", "--config", str(config), "--set", "train.epochs=1", "--quiet"]) == 0
    assert [path.stat().st_mtime_ns for path in rounds] == stamps  # the teacher's scores were reused
    assert f"teacher-score cache: {folder}" in capsys.readouterr().out
    metrics = run_eval(
        workspace, "--model", str(root / "from_vilt" / "best"), "--features", str(root / "cache")
    )
    assert 0 <= metrics[str(root / "from_vilt" / "best")]["rsum"] <= 600


def test_a_changed_teacher_gets_a_new_cache_and_says_so(workspace: dict, tmp_path: Path, capsys) -> None:
    adapter = load_plugin(f"vilt:{workspace['vilt']}").model
    changed = tmp_path / "vilt"
    with torch.no_grad():
        next(adapter.model.parameters()).mul_(-1.0)
    adapter.save_pretrained(changed)
    spec = f"vilt:{changed}"
    config = distill_config(workspace, "changed_teacher", spec, teacher_cache=str(tmp_path / "scores"))
    assert main(["distill", "--config", str(config), "--set", "train.epochs=1", "--quiet"]) == 0
    with torch.no_grad():
        next(adapter.model.parameters()).add_(1.0)
    adapter.save_pretrained(changed)  # now other weights under the same spec
    capsys.readouterr()
    rerun = distill_config(workspace, "changed_teacher_2", spec, teacher_cache=str(tmp_path / "scores"))
    assert main(["distill", "--config", str(rerun), "--set", "train.epochs=1", "--quiet"]) == 0
    assert f"teacher {spec} changed since" in capsys.readouterr().out
    assert len(list((tmp_path / "scores").iterdir())) == 2


def test_distill_a_python_teacher_and_reject_a_cross_student(workspace: dict, capsys) -> None:
    config = distill_config(workspace, "from_python", NAME_TEACHER)
    assert main(["distill", "--config", str(config), "--set", "train.epochs=1", "--quiet"]) == 0
    cross = distill_config(workspace, "cross_from_python", NAME_TEACHER, student="cross")
    assert main(["distill", "--config", str(cross), "--quiet"]) == 2
    assert "distil a plug-in teacher into student: dual" in capsys.readouterr().err
    folder = distill_config(workspace, "options_for_folder", str(workspace["root"] / "from_python" / "best"))
    assert (
        main(["distill", "--config", str(folder), "--set", "teacher_options.dtype=bfloat16", "--quiet"]) == 2
    )
    assert "apply to plug-in specs" in capsys.readouterr().err
