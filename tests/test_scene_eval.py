"""`dcd eval` on a tiny scenes benchmark reports the twin scores beside Recall@K for dual, cross and cascade."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file

from dcd_itr.cli import main
from dcd_itr.data.scenes import build_scenes_dataset, split_twin_index
from dcd_itr.evaluate.twins import TWIN_KEYS
from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.models.fusion import FusionConfig, FusionCrossEncoder
from dcd_itr.models.registry import save_model_description
from helpers import tiny_fusion_settings, write_karpathy_fixture
from test_scenes import PLAIN, cldr_xml

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_model(model, folder: Path) -> Path:
    folder.mkdir(parents=True)
    save_model_description(model, folder)
    save_file(
        {name: value.contiguous() for name, value in model.state_dict().items()}, folder / "model.safetensors"
    )
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_vit_path, tiny_bert_path) -> dict:
    root = tmp_path_factory.mktemp("scene_eval")
    cldr = root / "cldr"
    for folder, names in (("annotations", PLAIN), ("annotationsDerived", {})):
        (cldr / folder).mkdir(parents=True)
        (cldr / folder / "en.xml").write_text(cldr_xml(names), encoding="utf-8")
    data = root / "scenes"
    build_scenes_dataset(
        data,
        seed=1,
        vocab=14,
        train_scenes=3,
        val_pairs=2,
        test_pairs=3,
        objects=3,
        cldr_dir=cldr,
        progress=False,
    )
    image_view, text_view = f"hf:{tiny_vit_path}@32", f"hf:{tiny_bert_path}@16"
    features = ["features", "--data", str(data), "--out", str(root / "cache"), "--quiet"]
    assert main(features + ["--image-encoder", image_view, "--text-encoder", text_view]) == 0
    dual = DualConfig(image_view, text_view, image_dim=32, text_dim=32, embed_dim=8, hidden_dim=16)
    cross = FusionConfig(similarity_paths=[dual], **tiny_fusion_settings(image_view, text_view))
    return {
        "root": root,
        "data": data,
        "cache": root / "cache",
        "dual": save_model(DualEncoderModel(dual).eval(), root / "dual"),
        "cross": save_model(FusionCrossEncoder(cross).eval(), root / "cross"),
    }


def test_eval_json_has_twin_scores_for_every_system(
    workspace: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    out = workspace["root"] / "eval.json"
    dual, cross = workspace["dual"], workspace["cross"]
    command = ["eval", "--data", str(workspace["data"]), "--features", str(workspace["cache"]), "--quiet"]
    command += ["--model", str(dual), "--model", str(cross), "--cascade", f"{dual}:{cross}", "--k", "2"]
    assert main(command + ["--k", "100", "--out", str(out)]) == 0
    assert "twin group" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert set(rows) == {str(dual), str(cross), "cascade k=2", "cascade k=100"}
    for name, metrics in rows.items():
        assert metrics["twin_pairs"] == 3 and metrics["num_images"] == 6, name
        assert all(0.0 <= metrics[key] <= 100.0 for key in TWIN_KEYS), name
        assert metrics["twin_group"] <= min(metrics["twin_text"], metrics["twin_image"])
    # k beyond the candidate count re-ranks everything: the cascade ranks exactly like the cross-encoder.
    assert {key: rows["cascade k=100"][key] for key in TWIN_KEYS} == {
        key: rows[str(cross)][key] for key in TWIN_KEYS
    }


def test_datasets_without_twins_get_no_twin_keys(tmp_path: Path) -> None:
    assert split_twin_index(write_karpathy_fixture(tmp_path), "test") is None


def test_split_twin_index_reads_a_rewritten_dataset_again(tmp_path: Path) -> None:
    """The twin index is memoised per file version (validation asks every epoch); a changed file is read again."""
    path = tmp_path / "dataset_scenes.json"
    images = [
        {"imgid": i, "split": "val", "filename": f"{i}.png", "twin": twin, "sentences": [{"raw": f"c{i}"}]}
        for i, twin in ((0, 1), (1, 0), (2, 3), (3, 2))
    ]
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    first = split_twin_index(path, "val")
    assert first.tolist() == [1, 0, 3, 2]
    first[0] = 99  # the caller's copy: the memo is not changed through it
    assert split_twin_index(path, "val").tolist() == [1, 0, 3, 2]
    for image in images:
        image["twin"] = None
    path.write_text(json.dumps({"images": images, "info": {"version": 2}}), encoding="utf-8")
    assert split_twin_index(path, "val") is None
