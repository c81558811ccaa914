"""Swapped twins in every training batch (tasks/twin_negatives.py) and the position-aware dual through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dcd_itr.cli import main
from dcd_itr.data.loading import load_split
from dcd_itr.errors import DataError
from dcd_itr.tasks.twin_negatives import (
    CpuClock,
    TwinPairLoss,
    split_twin_rows,
    twin_pair_batches,
    twin_partners,
    twin_pool_negatives,
)
from helpers import karpathy_record, make_image, tiny_fusion_settings, write_shapes_fixture

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
    with pytest.raises(DataError, match="twins must name each other"):
        split_twin_rows(data, split)
    payload["images"][6]["twin"] = 99
    data.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="not another image of the same split"):
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


def test_twin_pool_negatives_are_the_swapped_caption_and_the_twin_image(tmp_path: Path) -> None:
    data = scenes_like(tmp_path)
    split = load_split(data, "train")
    twins = split_twin_rows(data, split)
    # captions: 0-1 (image 0), 2-3 (1), 4-6 (2), 7-9 (3), 10-11 (4), 12-13 (5), 14-15 (6)
    i2t = twin_pool_negatives(split, twins, "image_to_text")[:, 0].tolist()
    assert i2t == [2, 3, 0, 1, 7, 8, 9, 4, 5, 6, 12, 13, 10, 11, -1, -1]
    t2i = twin_pool_negatives(split, twins, "text_to_image")[:, 0].tolist()
    assert t2i == [1, 1, 0, 0, 3, 3, 3, 2, 2, 2, 5, 5, 4, 4, -1, -1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_vit_path, tiny_bert_path) -> dict:
    """The shapes fixture with twins, its tiny-tower features, and a position-aware dual config."""
    root = tmp_path_factory.mktemp("twins")
    data = add_twins(write_shapes_fixture(root))
    image_view, text_view = f"hf:{tiny_vit_path}@32", f"hf:{tiny_bert_path}@16"
    args = ["features", "--data", str(data), "--out", str(root / "cache")]
    assert main([*args, "--image-encoder", image_view, "--text-encoder", text_view, "--quiet"]) == 0
    model = {
        "image_view": image_view,
        "text_view": text_view,
        "text_dim": 32,
        "embed_dim": 8,
        "attention": {"image_token_dim": 32, "width": 16, "heads": 2, "queries": 2},
    }
    return {"root": root, "data": data, "cache": root / "cache", "model": model}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_position_aware_dual_with_twin_negatives_trains_and_reloads(workspace: dict) -> None:
    root, data = workspace["root"], workspace["data"]
    config = {
        "data": str(data),
        "features": str(workspace["cache"]),
        "out": str(root / "pos"),
        "batch_size": 6,
        "twin_negatives": True,
        "twin_loss_weight": 1.0,
        "model": workspace["model"],
        "train": {"epochs": 2, "lr": 0.01},
    }
    assert main(["train-dual", "--config", str(write_config(root / "pos.yaml", config)), "--quiet"]) == 0
    records = [json.loads(line) for line in (root / "pos" / "metrics.jsonl").read_text().splitlines()]
    minutes = [r["validation"]["train_cpu_minutes"] for r in records if "validation" in r]
    assert len(minutes) == 2 and 0 < minutes[0] < minutes[1]
    validation = [r["validation"] for r in records if "validation" in r]
    assert all(v["twin_pairs"] == 2 and 0 <= v["twin_group"] <= 100 for v in validation)  # 4 val images
    out = root / "eval.json"
    common = ["--data", str(data), "--features", str(workspace["cache"]), "--quiet"]
    assert main(["eval", "--model", str(root / "pos" / "best"), *common, "--out", str(out)]) == 0
    assert 0 <= json.loads(out.read_text())[str(root / "pos" / "best")]["rsum"] <= 600


def test_dcd_into_the_position_aware_dual_with_twins_in_every_pool(workspace: dict) -> None:
    root, data, cache = workspace["root"], workspace["data"], workspace["cache"]
    common = {"data": str(data), "features": str(cache)}
    image_view, text_view = workspace["model"]["image_view"], workspace["model"]["text_view"]
    bag = {"image_view": image_view, "text_view": text_view, "image_dim": 32, "text_dim": 32, "embed_dim": 8}
    teacher = {
        **common,
        "out": str(root / "teacher"),
        "paths": [bag],
        "path_training": {"batch_size": 8, "train": {"epochs": 1, "lr": 0.01}},
        "fusion": tiny_fusion_settings(image_view, text_view),
        "negatives": 3,
        "anchors_per_batch": 4,
        "train": {"epochs": 1, "lr": 0.001},
    }
    assert main(["train-teacher", "--config", str(write_config(root / "t.yaml", teacher)), "--quiet"]) == 0
    student = {
        **common,
        "out": str(root / "dcd_pos"),
        "teacher": str(root / "teacher" / "best"),
        "teacher_cache": str(root / "teacher_cache"),
        "student": "dual",
        "dual": workspace["model"],
        "twin_negatives": True,
        "pool_size": 6,
        "num_candidates": 3,
        "anchors_per_batch": 8,
        "train": {"epochs": 1, "lr": 0.01},
    }
    assert main(["distill", "--config", str(write_config(root / "s.yaml", student)), "--quiet"]) == 0
    split = load_split(data, "train")
    twins = split_twin_rows(data, split)
    (folder,) = [p for p in (root / "teacher_cache").iterdir() if p.is_dir()]
    extra = json.loads((folder / "manifest.json").read_text())["extra"]
    assert extra == {"exclude_same_text": True, "twin_negatives": True}
    for direction in ("image_to_text", "text_to_image"):
        pools = load_file(str(folder / f"round-0000-{direction}.safetensors"))["candidates"]  # (A, P)
        expected = twin_pool_negatives(split, twins, direction)[:, 0]
        assert torch.equal(pools[:, 1], expected)  # every anchor's twin is in its pool
    validation = json.loads((root / "dcd_pos" / "best" / "metrics.json").read_text())
    assert validation["train_cpu_minutes"] > 0 and "twin_group" in validation
    assert yaml.safe_load((root / "dcd_pos" / "best" / "model.yaml").read_text())["config"]["attention"]


def test_twin_partners_and_the_pair_loss_by_hand() -> None:
    twins = [1, 0, 3, 2, None]
    partners = twin_partners(torch.tensor([2, 0, 4, 3, 1]), twins)
    assert partners.tolist() == [3, 4, -1, 0, 1]
    # two rows, image 0 and its twin 1: own 2, swapped caption 0, twin image 1 (row 0); row 1: own 3, others 3
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    loss = TwinPairLoss()(logits, torch.tensor([1, 0]))
    row0 = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)))
    row1 = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-3.0)))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    tied = TwinPairLoss()(torch.ones(2, 2), torch.tensor([1, 0]))
    assert tied.item() == pytest.approx(math.log(2.0))  # a bag of words ties every twin: ln 2
    assert TwinPairLoss()(logits, torch.tensor([-1, -1])).item() == 0.0
