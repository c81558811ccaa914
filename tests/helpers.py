"""Shared test helpers: small datasets in the real on-disk formats, tiny model settings, multi-process runs.

Test modules import these (``from helpers import ...``); the fixtures built from them live in ``conftest.py``.
Nothing downloads."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "puppy", "the", "red", "ball", "##s"]
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


def write_shapes_fixture(root: Path, num_images: int = 24) -> Path:
    """A Karpathy-format dataset of coloured shapes: 2 captions per image, 2/3 train, 1/6 val, 1/6 test."""
    from PIL import ImageDraw

    generator = torch.Generator().manual_seed(0)
    records = []
    for index in range(num_images):
        red, green, blue = (int(v) for v in torch.randint(0, 256, (3,), generator=generator))
        shape = ["circle", "square", "bar"][index % 3]
        image = Image.new("RGB", (40, 40), "white")
        draw = ImageDraw.Draw(image)
        box = (8, 8, 32, 32) if shape != "bar" else (4, 16, 36, 24)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=(red, green, blue))
        path = root / "imgs" / f"img{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        split = "train" if index % 6 < 4 else ("val" if index % 6 == 4 else "test")
        captions = [f"a {shape} of colour {red} {green} {blue}", f"the {shape} number {index}"]
        records.append(karpathy_record(index, split, captions))
    path = root / "dataset_shapes.json"
    path.write_text(json.dumps({"dataset": "shapes", "images": records}), encoding="utf-8")
    return path


def tiny_fusion_settings(image_view: str, text_view: str) -> dict:
    """The fusion block of a tiny teacher config on 32-wide tiny random towers (tests only)."""
    return {
        "fusion_image_view": image_view,
        "fusion_text_view": text_view,
        "image_token_dim": 32,
        "text_token_dim": 32,
        "image_grid": 2,
        "max_text_tokens": 16,
        "width": 16,
        "num_layers": 2,
        "num_heads": 2,
    }


def spawn_ranks(rank_main, args: tuple, world_size: int, timeout_s: float) -> None:
    """Run ``rank_main(rank, free_port, *args)`` in ``world_size`` processes; a rank that fails raises, and ranks
    still running after ``timeout_s`` are terminated and fail the test instead of hanging it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.spawn(rank_main, args=(port, *args), nprocs=world_size, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):  # raises if a rank failed
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
                    process.join(5)
            pytest.fail(f"the {world_size} ranks did not finish within {timeout_s} s")
