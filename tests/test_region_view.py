"""The region view: detected objects cropped and encoded by a frozen tower, cached like any view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dcd_itr.data.loading import load_split
from dcd_itr.encoders.base import ImageTower
from dcd_itr.encoders.efficientnet import TF_LITE_MEAN, TF_LITE_STD
from dcd_itr.encoders.regions import RegionTower, crop_square, keep_largest
from dcd_itr.features import FeatureStore, build_feature_cache

RED, BLUE = (255, 0, 0), (0, 0, 255)


class MeanColourTower(ImageTower):
    """A tower with no network: the pooled feature of an image is its mean normalised colour (C = 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.name, self.image_size, self.mean, self.std = "mean-colour", 16, TF_LITE_MEAN, TF_LITE_STD
        self.token_dim = self.pooled_dim = 3
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.freeze()

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = pixels.mean(dim=(2, 3))  # (B, 3)
        return {
            "tokens": pooled[:, None],
            "mask": torch.ones(len(pixels), 1, dtype=torch.bool),
            "pooled": pooled,
        }


def colour_boxes(image: Image.Image) -> list[tuple[int, int, int, int]]:
    """A test detector: the bounding box of each non-white colour, left to right."""
    pixels = np.asarray(image.convert("RGB"))
    colours = {tuple(c) for c in pixels.reshape(-1, 3)} - {(255, 255, 255)}
    boxes = []
    for colour in colours:
        ys, xs = np.nonzero((pixels == colour).all(-1))
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return sorted(boxes)


def scene(path: Path, squares: list[tuple[tuple[int, int, int], tuple[int, int, int, int]]]) -> Path:
    image = Image.new("RGB", (64, 48), (255, 255, 255))
    for colour, box in squares:
        image.paste(colour, box)
    image.save(path)
    return path


def test_crop_square_and_keep_largest():
    image = Image.new("RGB", (40, 40), (255, 255, 255))
    image.paste(RED, (10, 10, 30, 20))
    crop = crop_square(image, (10, 10, 30, 20), margin=0.1)  # 20 x 10 box, 2 px margin -> 24 x 14 -> 24 x 24
    assert crop.size == (24, 24)
    assert crop.getpixel((12, 12)) == RED and crop.getpixel((12, 1)) == (255, 255, 255)
    boxes = [(0, 0, 2, 2), (0, 0, 10, 10), (5, 5, 6, 6), (0, 0, 5, 5)]
    assert keep_largest(boxes, 2) == [(0, 0, 10, 10), (0, 0, 5, 5)]  # largest two, original order
    assert keep_largest(boxes, 9) == boxes


def test_region_tower_encodes_each_object_with_its_box():
    tower = RegionTower(MeanColourTower(), detector=colour_boxes, max_regions=3, margin=0.0)
    image = Image.new("RGB", (64, 48), (255, 255, 255))
    image.paste(RED, (4, 8, 20, 24))
    image.paste(BLUE, (40, 8, 56, 24))
    blank = Image.new("RGB", (64, 48), (255, 255, 255))
    features = tower.encode([image, blank])
    assert features["tokens"].shape == (2, 3, 3) and features["boxes"].shape == (2, 3, 4)
    assert features["mask"].tolist() == [[True, True, False], [True, False, False]]  # blank: whole image
    red = (torch.tensor(RED) / 255 - 127 / 255) / (128 / 255)
    torch.testing.assert_close(features["tokens"][0, 0], red)  # the red crop alone
    torch.testing.assert_close(features["boxes"][0, 0], torch.tensor([4 / 64, 8 / 48, 20 / 64, 24 / 48]))
    torch.testing.assert_close(features["boxes"][1, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(features["pooled"][0], features["tokens"][0, :2].mean(0))
    assert tower.fingerprint()["detector"].endswith("colour_boxes")


def test_region_view_cache_round_trip(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    layouts = [
        [(RED, (4, 8, 20, 24)), (BLUE, (40, 8, 56, 24))],
        [(BLUE, (4, 8, 20, 24)), (RED, (40, 8, 56, 24))],
        [(RED, (30, 2, 40, 12))],
    ]
    records = []
    for index, layout in enumerate(layouts):
        scene(images / f"s{index}.png", layout)
        records.append(
            {
                "filepath": "imgs",
                "filename": f"s{index}.png",
                "imgid": index,
                "split": "test",
                "sentences": [{"raw": f"scene {index}"}],
            }
        )
    dataset = tmp_path / "dataset_tiny.json"
    dataset.write_text(json.dumps({"images": records}), encoding="utf-8")
    split = load_split(dataset, "test")
    tower = RegionTower(MeanColourTower(), detector=colour_boxes, max_regions=2, margin=0.0)
    first = build_feature_cache(split, tower, tmp_path / "cache", shard_size=2, progress=False)
    assert first.directory.parent.name == "image-regions-mean-colour@16" and first.encoded_items == 3
    again = build_feature_cache(split, tower, tmp_path / "cache", shard_size=2, progress=False)
    assert again.encoded_items == 0  # reused
    cached = FeatureStore(tmp_path / "cache", split).image_features(["regions-mean-colour@16"])
    direct = tower.encode([Image.open(p) for p in split.image_paths])
    assert set(cached) == {f"regions-mean-colour@16.{k}" for k in ("tokens", "mask", "boxes", "pooled")}
    for key, value in direct.items():
        torch.testing.assert_close(cached[f"regions-mean-colour@16.{key}"], value)
    assert cached["regions-mean-colour@16.mask"].sum(1).tolist() == [2, 2, 1]
    # the twins hold the same colours in swapped places: same regions in the same slots, boxes exchanged
    torch.testing.assert_close(direct["tokens"][0], direct["tokens"][1].flip(0))


def test_identical_crops_are_encoded_once():
    inner = MeanColourTower()
    seen = []
    original = inner.encode
    inner.encode = lambda crops, batch_size=64: seen.append(len(crops)) or original(crops, batch_size)
    tower = RegionTower(inner, detector=colour_boxes, max_regions=2, margin=0.0)
    image = Image.new("RGB", (64, 48), (255, 255, 255))
    image.paste(RED, (4, 8, 20, 24))
    image.paste(BLUE, (40, 8, 56, 24))
    twin = Image.new("RGB", (64, 48), (255, 255, 255))
    twin.paste(BLUE, (4, 8, 20, 24))
    twin.paste(RED, (40, 8, 56, 24))
    features = tower.encode([image, twin])
    assert seen == [2]  # four crops, two distinct
    torch.testing.assert_close(features["tokens"][0], features["tokens"][1].flip(0))
