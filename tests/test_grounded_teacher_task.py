"""`dcd train-teacher` with `kind: grounded`, end to end on a tiny scenes dataset with towers that need no weights."""

from __future__ import annotations

import json
from itertools import permutations
from pathlib import Path

import torch
import yaml
from PIL import Image

from dcd_itr.cli import main
from dcd_itr.data.loading import load_split
from dcd_itr.encoders.base import TextTower
from dcd_itr.encoders.regions import RegionTower
from dcd_itr.features import build_feature_cache
from dcd_itr.models.grounded import GroundedCrossEncoder
from dcd_itr.models.registry import load_model
from test_region_view import MeanColourTower, colour_boxes

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 160, 0), "orange": (255, 140, 0)}


class WordTower(TextTower):
    """A text tower with no network: each word is a fixed pseudo-random vector (C = 8), padded to 8 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.name, self.max_length, self.token_dim, self.pooled_dim = "words", 8, 8, 8
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.freeze()

    def encode(self, texts, batch_size=256, pad_to_max_length=False):
        tokens = torch.zeros(len(texts), self.max_length, 8)
        mask = torch.zeros(len(texts), self.max_length, dtype=torch.bool)
        for row, text in enumerate(texts):
            for position, word in enumerate(text.split()[: self.max_length]):
                seed = sum(ord(c) * 31**i for i, c in enumerate(word)) % (2**31)
                tokens[row, position] = torch.randn(8, generator=torch.Generator().manual_seed(seed))
                mask[row, position] = True
        return {"tokens": tokens, "mask": mask, "pooled": tokens.sum(1) / mask.sum(1, keepdim=True)}


def scene_record(index: int, split: str, left: str, right: str, twin: int) -> dict:
    return {
        "filepath": "images",
        "filename": f"{split}_{index}.png",
        "imgid": index,
        "split": split,
        "sentences": [{"raw": f"{left} left of {right}"}, {"raw": f"{right} right of {left}"}],
        "objects": [
            {"name": left, "codepoints": left, "box": [4, 8, 20, 24]},
            {"name": right, "codepoints": right, "box": [40, 8, 56, 24]},
        ],
        "relation": {"subject": 0, "object": 1, "predicate": "left of"},
        "twin": twin,
    }


def write_tiny_scenes(root: Path) -> Path:
    """Every ordered pair of 4 colours (12 scenes, 6 twin pairs) in train, and again in val."""
    (root / "images").mkdir(parents=True)
    pairs = list(permutations(COLOURS, 2))
    records = []
    for split, offset in (("train", 0), ("val", 100)):
        ids = {pair: offset + i for i, pair in enumerate(pairs)}
        for (left, right), index in ids.items():
            records.append(scene_record(index, split, left, right, ids[(right, left)]))
            image = Image.new("RGB", (64, 48), (255, 255, 255))
            image.paste(COLOURS[left], (4, 8, 20, 24))
            image.paste(COLOURS[right], (40, 8, 56, 24))
            image.save(root / "images" / f"{split}_{index}.png")
    path = root / "dataset_scenes.json"
    path.write_text(json.dumps({"images": records}), encoding="utf-8")
    return path


def test_train_teacher_grounded_end_to_end(tmp_path):
    data = write_tiny_scenes(tmp_path / "scenes")
    cache = tmp_path / "cache"
    region_tower = RegionTower(MeanColourTower(), detector=colour_boxes, max_regions=3, margin=0.0)
    for split in ("train", "val"):
        rows = load_split(data, split)
        build_feature_cache(rows, region_tower, cache, progress=False)
        build_feature_cache(rows, WordTower(), cache, progress=False)
    config = {
        "kind": "grounded",
        "data": str(data),
        "features": str(cache),
        "out": str(tmp_path / "run"),
        "model": {
            "image_view": "regions-mean-colour@16",
            "text_view": "words@8",
            "region_dim": 3,
            "text_dim": 8,
            "ground_dim": 8,
            "width": 16,
            "num_heads": 2,
            "max_text_tokens": 8,
        },
        "align_batch_size": 6,
        "steps_per_epoch": 4,
        "negatives": 3,
        "hard_negatives": 1,
        "anchors_per_batch": 4,
        "val_twin_pairs": 3,
        "train": {"epochs": 2, "lr": 0.003, "seed": 0, "checkpoint_every": 2, "log_every": 1},
    }
    config_path = tmp_path / "teacher.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train-teacher", "--config", str(config_path), "--quiet"]) == 0
    run = tmp_path / "run"
    teacher, stripped = load_model(run / "best"), load_model(run / "paths_only")
    assert isinstance(teacher, GroundedCrossEncoder) and teacher.config.fusion and not stripped.config.fusion
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"align", "path"} <= set(lines[0]) and any("twin_top1" in line for line in lines)
    validations = [line["validation"] for line in lines if "validation" in line]
    assert len(validations) == 2 and all("rsum" in v and "twin_group" in v for v in validations)
    # a rerun of the finished run resumes at its end: nothing retrained, the same best weights
    before = (run / "best" / "model.safetensors").read_bytes()
    assert main(["train-teacher", "--config", str(config_path), "--quiet"]) == 0
    assert (run / "best" / "model.safetensors").read_bytes() == before
    assert len(json.loads((run / "training_time.json").read_text())["invocations"]) == 2
