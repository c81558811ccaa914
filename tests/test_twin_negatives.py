"""Swapped twins in every training batch (tasks/twin_negatives.py) and the position-aware dual through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import karpathy_record, make_image, write_shapes_fixture
from dcd_itr.cli import main
from dcd_itr.data.loading import load_split
from dcd_itr.errors import DataError
from dcd_itr.tasks.twin_negatives import CpuClock, split_twin_rows, twin_pair_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def add_twins(dataset: Path) -> Path:
    """Pair the images of each split in file order (0-1, 2-3, ...): the "twin" field of the scenes contract."""
    payload = json.loads(dataset.read_text())
    by_split: dict[str, list[dict]] = {}
    for record in payload["images"]:
        by_split.setdefault(record["split"], []).append(record)
    for records in by_split.values():
        for first, second in zip(records[0::2], records[1::2], strict=False):
            first["twin"], second["twin"] = second["imgid"], first["imgid"]
    dataset.write_text(json.dumps(payload))
    return dataset


def scenes_like(root: Path, num_images: int = 7) -> Path:
    """7 train images with 2 or 3 captions; 0-1, 2-3, 4-5 are twins, 6 has none."""
    records = []
    for index in range(num_images):
        captions = [f"scene {index} caption {k}" for k in range(3 if index in (2, 3) else 2)]
        make_image(root / "imgs" / f"img{index}.png")
        records.append(karpathy_record(index, "train", captions))
    for first, second in ((0, 1), (2, 3), (4, 5)):
        records[first]["twin"], records[second]["twin"] = second, first
    path = root / "dataset_scenes.json"
    path.write_text(json.dumps({"dataset": "scenes", "images": records}))
    return path


def test_split_twin_rows_reads_the_twin_fields(tmp_path: Path) -> None:
    data = scenes_like(tmp_path)
    split = load_split(data, "train")
    assert split_twin_rows(data, split) == [1, 0, 3, 2, 5, 4, None]
    payload = json.loads(data.read_text())
    payload["images"][6]["twin"] = 0  # 0's twin is 1: 6 -> 0 is not mutual
    data.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="does not name it back"):
        split_twin_rows(data, split)
    payload["images"][6]["twin"] = 99
    data.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="not in the train split"):
        split_twin_rows(data, split)


@pytest.mark.parametrize("batch_size", [2, 3, 4, 64])
def test_every_batch_holds_each_image_with_its_twin_and_the_aligned_caption(
    tmp_path: Path, batch_size: int
) -> None:
    data = scenes_like(tmp_path)
    split = load_split(data, "train")
    twins = split_twin_rows(data, split)
    seen_k = set()
    for epoch in range(6):
        batches = twin_pair_batches(split, twins, batch_size, seed=3, epoch=epoch)
        images = torch.cat([rows for rows, _ in batches]).tolist()
        # each image once (the lone image 6 may be dropped only when it would sit alone in a batch)
        assert sorted(images) in (list(range(7)), list(range(6)))
        for rows, captions in batches:
            assert len(rows) <= batch_size and len(rows) >= 2
            in_batch = set(rows.tolist())
            for row, caption in zip(rows.tolist(), captions.tolist(), strict=True):
                assert split.caption_to_image[caption] == row  # the image's own caption
                twin = twins[row]
                if twin is None:
                    continue
                assert twin in in_batch  # the twin image is a negative of this caption
                k = split.image_to_captions[row].index(caption)
                twin_caption = captions[rows.tolist().index(twin)].item()
                assert split.image_to_captions[twin].index(twin_caption) == k  # the swapped caption
                seen_k.add((row, k))
        again = twin_pair_batches(split, twins, batch_size, seed=3, epoch=epoch)
        assert len(again) == len(batches)
        assert all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True)
        )
    assert {k for _, k in seen_k} >= {0, 1}  # the caption index is drawn, not always the first


def test_cpu_clock_stops_while_paused() -> None:
    clock = CpuClock()
    sum(i * i for i in range(200_000))
    clock.pause()
    paused = clock.minutes
    sum(i * i for i in range(200_000))
    assert clock.minutes == paused > 0
    clock.resume()
    sum(i * i for i in range(200_000))
    assert clock.minutes > paused


def test_position_aware_dual_with_twin_negatives_trains_and_reloads(
    tmp_path: Path, tiny_vit_path, tiny_bert_path
) -> None:
    data = add_twins(write_shapes_fixture(tmp_path))
    image_view, text_view = f"hf:{tiny_vit_path}@32", f"hf:{tiny_bert_path}@16"
    args = ["features", "--data", str(data), "--out", str(tmp_path / "cache")]
    assert main([*args, "--image-encoder", image_view, "--text-encoder", text_view, "--quiet"]) == 0
    config = {
        "data": str(data),
        "features": str(tmp_path / "cache"),
        "out": str(tmp_path / "pos"),
        "batch_size": 6,
        "twin_negatives": True,
        "model": {
            "image_view": image_view,
            "text_view": text_view,
            "text_dim": 32,
            "embed_dim": 8,
            "attention": {"image_token_dim": 32, "width": 16, "heads": 2, "queries": 2},
        },
        "train": {"epochs": 2, "lr": 0.01},
    }
    path = tmp_path / "pos.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train-dual", "--config", str(path), "--quiet"]) == 0
    records = [json.loads(line) for line in (tmp_path / "pos" / "metrics.jsonl").read_text().splitlines()]
    minutes = [r["validation"]["train_cpu_minutes"] for r in records if "validation" in r]
    assert len(minutes) == 2 and 0 < minutes[0] < minutes[1]
    out = tmp_path / "eval.json"
    common = ["--data", str(data), "--features", str(tmp_path / "cache"), "--quiet"]
    assert main(["eval", "--model", str(tmp_path / "pos" / "best"), *common, "--out", str(out)]) == 0
    assert 0 <= json.loads(out.read_text())[str(tmp_path / "pos" / "best")]["rsum"] <= 600
