"""The COCO / Flickr30K recipes (configs/recipes/) run end to end through the CLI, exactly as their header lists the
commands, on a tiny dataset in the same on-disk layout with tiny random models: only the hub ids are replaced
(by folders of tiny models of the same classes) and the config path is made absolute. Nothing downloads."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from dcd_itr.cli import main
from helpers import TINY_VOCAB, karpathy_record, write_karpathy_fixture
from test_hf_adapters import tiny_adapter

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))
CLIP = "openai/clip-vit-base-patch32"
TEACHER_KINDS = {"vilt": "vilt", "blip-itm": "blip-itm", "bridgetower": "bridgetower"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_clip(folder: Path) -> Path:
    """A CLIPModel with the real towers' widths (vision 768, text 512) but one layer and 32 px inputs."""
    from transformers import BertTokenizer, CLIPConfig, CLIPModel

    layer = {"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    config = CLIPConfig(
        text_config={**layer, "hidden_size": 512, "vocab_size": len(TINY_VOCAB), "eos_token_id": 3},
        vision_config={**layer, "hidden_size": 768, "image_size": 32, "patch_size": 16},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(folder)
    vocab = {token: index for index, token in enumerate(TINY_VOCAB)}
    BertTokenizer(vocab=vocab, model_input_names=["input_ids", "attention_mask"]).save_pretrained(folder)
    return folder


def write_dataset(folder: Path, image_folder: str) -> None:
    """66 train (some restval), 4 val and 4 test images with 2 distinct captions each: enough for Flickr30K's
    P = 64 (a caption text shared by two images would take both out of each other's pools)."""
    splits = ["train" if i % 5 else "restval" for i in range(66)] + ["val"] * 4 + ["test"] * 4
    words = ["red", "green", "blue", "yellow", "purple", "orange", "black", "cyan"]
    records = [
        karpathy_record(
            i,
            split,
            [f"a {words[i % 8]} square number {i}", f"the colour {words[i % 8]} of tile {i}"],
            image_folder,
        )
        for i, split in enumerate(splits)
    ]
    write_karpathy_fixture(folder, records)


@pytest.fixture(scope="module")
def recipe_workspace(tmp_path_factory) -> dict:
    """A working folder laid out like the README says (data/coco, data/flickr30k), and tiny stand-ins by hub id."""
    root = tmp_path_factory.mktemp("recipes")
    write_dataset(root / "data" / "coco", "val2014")  # COCO's JSON gives a filepath per image
    write_dataset(root / "data" / "flickr30k", "")  # Flickr30K's does not
    models = root / "models"
    stand_ins = {CLIP: tiny_clip(models / "clip")}
    for recipe in RECIPES:
        kind, hub_id = yaml.safe_load(recipe.read_text())["teacher"].split(":", 1)
        folder = models / hub_id.replace("/", "_")
        if not folder.exists():
            folder.mkdir(parents=True)
            tiny_adapter(TEACHER_KINDS[kind], folder).save_pretrained(folder)
        stand_ins[hub_id] = folder
    return {"root": root, "stand_ins": stand_ins}


def replace_ids(text: str, stand_ins: dict[str, Path]) -> str:
    for hub_id, folder in stand_ins.items():
        text = text.replace(hub_id, str(folder))
    return text


def id_overrides(config: dict, stand_ins: dict[str, Path], prefix: str = "") -> list[str]:
    """``--set key=value`` for every config string that names a hub id, with the id replaced."""
    overrides = []
    for key, value in config.items():
        if isinstance(value, dict):
            overrides += id_overrides(value, stand_ins, f"{prefix}{key}.")
        elif isinstance(value, str) and replace_ids(value, stand_ins) != value:
            overrides += ["--set", f"{prefix}{key}={replace_ids(value, stand_ins)}"]
    return overrides


def recipe_commands(recipe: Path) -> list[list[str]]:
    """The `dcd ...` command lines of the recipe's header comment, in order."""
    lines = re.findall(r"^#\s+(dcd .+)$", recipe.read_text(), flags=re.MULTILINE)
    return [shlex.split(line)[1:] for line in lines]


def test_every_recipe_names_a_published_teacher_and_its_commands() -> None:
    assert {recipe.stem for recipe in RECIPES} >= {"coco_vilt", "coco_blip", "flickr30k_vilt"}
    for recipe in RECIPES:
        commands = [command[0] for command in recipe_commands(recipe)]
        assert commands == ["features", "distill", "eval", "eval"], recipe.name
        assert yaml.safe_load(recipe.read_text())["data"] in ("data/coco", "data/flickr30k")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[recipe.stem for recipe in RECIPES])
def test_recipe_runs_end_to_end_on_a_tiny_fixture(recipe_workspace: dict, recipe: Path, monkeypatch) -> None:
    monkeypatch.chdir(recipe_workspace["root"])
    stand_ins = recipe_workspace["stand_ins"]
    config = yaml.safe_load(recipe.read_text())
    for command in recipe_commands(recipe):
        command = [replace_ids(part, stand_ins) for part in command]
        if command[0] == "distill":
            command = ["distill", "--config", str(recipe), *id_overrides(config, stand_ins)]
        assert main([*command, "--quiet"]) == 0, command
    out = Path(config["out"])
    assert (out / "best" / "model.safetensors").is_file()
    metrics = json.loads((out / "test_metrics.json").read_text())[str(out / "best")]
    assert (metrics["num_images"], metrics["num_captions"]) == (4, 8)
    rounds = list(Path(config["teacher_cache"]).rglob("round-*.safetensors"))
    assert len(rounds) == 2  # one mining round, both directions, from the plug-in teacher on raw images
