"""Hostile model folders and tower names are one-line errors naming the file and the field, exit code 2
(issue 16, item 4): a weights file of the wrong shape with a valid checksum, negative or huge sizes in
``model.yaml``, a list as ``kind``, ``hf:/etc`` as a tower, and NaN weights during ``dcd index build``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from dcd_itr.cli import main
from dcd_itr.encoders import build_image_tower, build_text_tower
from dcd_itr.errors import ConfigError, CorruptFileError
from dcd_itr.io_utils import with_checksum
from dcd_itr.models.registry import load_model
from search_fixtures import tiny_setup

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def dual(tmp_path_factory, tmp_path) -> Path:
    """A copy of the session's tiny dual model folder, free to damage."""
    return Path(shutil.copytree(tiny_setup(tmp_path_factory).dual, tmp_path / "dual"))


def index_build(model: Path, tmp_path: Path, tmp_path_factory, capsys) -> tuple[int, str]:
    data = tiny_setup(tmp_path_factory).data
    args = ["index", "build", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "index")]
    rc = main([*args, "--quiet"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("dcd index")]  # beside transformers' bars
    assert "Traceback" not in err and len(errors) == 1, err
    return rc, err


def edit_description(folder: Path, **config) -> Path:
    path = folder / "model.yaml"
    description = yaml.safe_load(path.read_text())
    description["config"].update(config)
    path.write_text(yaml.safe_dump(description))
    return path


def test_wrong_tensor_shape_with_a_valid_checksum(dual, tmp_path, tmp_path_factory, capsys):
    weights = dual / "model.safetensors"
    state = load_file(str(weights))
    name = next(n for n, t in state.items() if t.ndim == 2)
    state[name] = torch.zeros(state[name].shape[0] + 3, state[name].shape[1])
    save_file(state, str(weights), metadata=with_checksum(state))  # the checksum matches the wrong tensors
    with pytest.raises(CorruptFileError, match=rf"model\.safetensors: tensor '{name}' has shape"):
        load_model(dual)
    rc, err = index_build(dual, tmp_path, tmp_path_factory, capsys)
    assert rc == 2 and str(weights) in err and name in err


@pytest.mark.parametrize(
    ("field", "value"),
    [("embed_dim", -5), ("hidden_dim", 10**12), ("image_dim", 2**70), ("embed_dim", -(2**64))],
)
def test_negative_or_huge_sizes_name_the_field(dual, tmp_path, tmp_path_factory, capsys, field, value):
    path = edit_description(dual, **{field: value})
    with pytest.raises(CorruptFileError, match=rf"model\.yaml: config\.{field}: .* is out of range"):
        load_model(dual)
    rc, err = index_build(dual, tmp_path, tmp_path_factory, capsys)
    assert rc == 2 and f"{path}: config.{field}" in err


def test_nested_sizes_and_unbuildable_values_name_the_file(tmp_path_factory, tmp_path):
    cross = Path(shutil.copytree(tiny_setup(tmp_path_factory).cross, tmp_path / "cross"))
    path = cross / "model.yaml"
    description = yaml.safe_load(path.read_text())
    description["config"]["similarity_paths"][0]["embed_dim"] = -1
    path.write_text(yaml.safe_dump(description))
    with pytest.raises(
        CorruptFileError, match=r"config\.similarity_paths\[0\]\.embed_dim: -1 is out of range"
    ):
        load_model(cross)
    description["config"]["similarity_paths"][0]["embed_dim"] = 8
    description["config"]["width"], description["config"]["num_heads"] = 16, 3  # 16 not divisible by 3
    path.write_text(yaml.safe_dump(description))
    with pytest.raises(CorruptFileError, match=r"model\.yaml: config: cannot build a fusion model"):
        load_model(cross)


def test_a_list_as_kind_through_the_cli(dual, tmp_path, tmp_path_factory, capsys):
    path = dual / "model.yaml"
    description = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**description, "kind": ["dual"]}))
    rc, err = index_build(dual, tmp_path, tmp_path_factory, capsys)
    assert rc == 2 and f"{path}: kind: unknown model kind ['dual']" in err


@pytest.mark.parametrize("name", ["hf:/etc", "hf:/nonexistent/folder", "hf:/dev/null"])
def test_hf_tower_that_is_no_model(name):
    with pytest.raises(ConfigError, match=rf"tower '{name}': not a Hugging Face model"):
        build_image_tower(name, image_size=32)
    with pytest.raises(ConfigError, match=rf"tower '{name}': not a Hugging Face model"):
        build_text_tower(name)


def test_hf_etc_through_the_cli(tmp_path_factory, tmp_path, capsys):
    data = tiny_setup(tmp_path_factory).data
    rc = main(["features", "--data", str(data), "--out", str(tmp_path / "f"), "--image-encoder", "hf:/etc"])
    err = capsys.readouterr().err
    assert rc == 2 and "tower 'hf:/etc'" in err and "Traceback" not in err


def test_nan_weights_refused_during_index_build_naming_the_item(dual, tmp_path, tmp_path_factory, capsys):
    weights = dual / "model.safetensors"
    state = load_file(str(weights))
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.ndim == 2:
            state[name] = torch.full_like(tensor, float("nan"))
    save_file(state, str(weights), metadata=with_checksum(state))
    rc, err = index_build(dual, tmp_path, tmp_path_factory, capsys)
    assert rc == 2 and str(weights) in err
    assert "item 0, image '0' (" in err and "is embedded as NaN or inf" in err
    assert not (tmp_path / "index" / "gallery.json").exists()
