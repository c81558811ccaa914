"""A run folder that was moved or copied resumes where it now is (issue 16, item 8).

The saved ``config.yaml`` records ``out``; resuming a copied folder used to be refused ("fields ['out'] differ")
until the file was edited by hand. A run interrupted after its first epoch, copied elsewhere and resumed there
with ``--set out=NEW`` must finish with the same weights as an uninterrupted run, and say where it started.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from dcd_itr.cli import main
from dcd_itr.tasks import dual_contrastive
from helpers import write_shapes_fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_config(tmp_path_factory, tiny_vit_path, tiny_bert_path) -> Path:
    root = tmp_path_factory.mktemp("moved")
    data = write_shapes_fixture(root)
    image_view, text_view = f"hf:{tiny_vit_path}@32", f"hf:{tiny_bert_path}@16"
    args = ["features", "--data", str(data), "--out", str(root / "cache"), "--quiet"]
    assert main([*args, "--image-encoder", image_view, "--text-encoder", text_view]) == 0
    model = {"image_view": image_view, "text_view": text_view, "image_dim": 32, "text_dim": 32}
    config = {
        "data": str(data),
        "features": str(root / "cache"),
        "out": str(root / "original"),
        "batch_size": 8,
        "model": {**model, "hidden_dim": 16, "embed_dim": 8},
        "train": {"epochs": 2, "lr": 0.01, "checkpoint_every": 1},
    }
    path = root / "dual.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, out: Path) -> int:
    return main(["train-dual", "--config", str(config), "--set", f"out={out}", "--quiet"])


def test_a_copied_run_folder_resumes_in_its_new_place(run_config, tmp_path, monkeypatch, capsys):
    assert train(run_config, tmp_path / "reference") == 0  # uninterrupted
    calls = []
    real_validate = dual_contrastive.validate_dual_with_twins

    def stop_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed during epoch 2's validation
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(dual_contrastive, "validate_dual_with_twins", stop_in_second_epoch)
    assert train(run_config, tmp_path / "started") == 130
    monkeypatch.setattr(dual_contrastive, "validate_dual_with_twins", real_validate)
    assert (tmp_path / "started" / "last" / "state.json").exists()
    assert len(calls) == 2  # stopped in the second epoch, after its checkpoint of epoch 1

    shutil.copytree(tmp_path / "started", tmp_path / "moved")
    shutil.rmtree(tmp_path / "started")  # the original place is gone
    capsys.readouterr()
    assert train(run_config, tmp_path / "moved") == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"resuming the run started in {tmp_path / 'started'}" in out
    assert yaml.safe_load((tmp_path / "moved" / "config.yaml").read_text())["out"] == str(tmp_path / "moved")
    resumed = load_file(str(tmp_path / "moved" / "best" / "model.safetensors"))
    reference = load_file(str(tmp_path / "reference" / "best" / "model.safetensors"))
    assert resumed.keys() == reference.keys()
    assert all(resumed[name].equal(reference[name]) for name in reference)


def test_another_config_is_still_refused_in_a_moved_folder(run_config, tmp_path, capsys):
    assert train(run_config, tmp_path / "a") == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    args = ["train-dual", "--config", str(run_config), "--set", f"out={tmp_path / 'b'}", "--quiet"]
    assert main([*args, "--set", "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "different config (fields ['train'] differ)" in err
