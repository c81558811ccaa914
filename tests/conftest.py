"""Shared fixtures: small datasets in the real on-disk formats, created by the tests (nothing downloads)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "cyan"]


def make_image(path: Path, colour: str = "red", size: tuple[int, int] = (24, 24), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)
    return path


def karpathy_record(index: int, split: str, captions: list[str], filepath: str = "imgs") -> dict:
    return {
        "filepath": filepath,
        "filename": f"img{index}.png",
        "imgid": index,
        "split": split,
        "sentids": list(range(10 * index, 10 * index + len(captions))),
        "sentences": [{"raw": c, "imgid": index, "sentid": 10 * index + k} for k, c in enumerate(captions)],
    }


def write_karpathy_fixture(root: Path, records: list[dict] | None = None) -> Path:
    """A tiny Karpathy-format dataset: 8 single-colour images, 2 captions each, train/restval/val/test."""
    if records is None:
        splits = ["train", "train", "restval", "train", "val", "val", "test", "test"]
        records = [
            karpathy_record(i, split, [f"a {COLOURS[i]} square", f"the colour {COLOURS[i]}"])
            for i, split in enumerate(splits)
        ]
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("filename"), str):
            make_image(root / record.get("filepath", "") / record["filename"], COLOURS[record["imgid"] % 8])
    path = root / "dataset_tiny.json"
    path.write_text(json.dumps({"dataset": "tiny", "images": records}), encoding="utf-8")
    return path


@pytest.fixture
def karpathy_dataset(tmp_path: Path) -> Path:
    return write_karpathy_fixture(tmp_path)
