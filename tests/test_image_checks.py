"""Unreadable images found early and named by record; damaged feature shards never reused (issue 16, items 5, 7).

``dcd data stats --check-images`` decodes every image through ``data/images.py`` (its bomb guard included):
truncated, empty, non-image and bomb files are an error naming the record, or skipped, counted and listed with
``--skip-bad-records``. ``dcd features`` names the record of an unreadable image and, with
``--skip-bad-records``, skips, counts and lists them. A ``dcd features`` rerun re-checks each shard's checksum.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_karpathy_fixture
from dcd_itr.cli import main
from search_fixtures import tiny_setup
from test_images_hostile import png_claiming

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BAD_IMAGES = {  # image index in the fixture -> bytes that no decoder should accept
    1: b"",  # empty
    3: b"not an image at all",
    5: png_claiming(100_000, 100_000),  # a decompression bomb's header
}


def damaged_dataset(root: Path) -> Path:
    """The tiny Karpathy fixture with images 1, 3, 5 made unreadable and image 7 truncated."""
    data = write_karpathy_fixture(root)
    for index, payload in BAD_IMAGES.items():
        (root / "imgs" / f"img{index}.png").write_bytes(payload)
    good = (root / "imgs" / "img7.png").read_bytes()
    (root / "imgs" / "img7.png").write_bytes(good[: len(good) // 2])  # truncated
    return data


def test_data_stats_does_not_open_images_unless_asked(tmp_path, capsys):
    data = damaged_dataset(tmp_path)
    assert main(["data", "stats", "--data", str(data)]) == 0  # header-free pass: files exist
    assert main(["data", "stats", "--data", str(data), "--check-images"]) == 2
    err = capsys.readouterr().err
    assert "img1.png: image '1' of the train split: image file is empty" in err and "Traceback" not in err


def test_check_images_skips_counts_and_lists_each_bad_image(tmp_path, capsys):
    data = damaged_dataset(tmp_path)
    assert main(["data", "stats", "--data", str(data), "--check-images", "--skip-bad-records"]) == 0
    out = capsys.readouterr().out
    assert "checked 8 images: skipped 4 unreadable:" in out
    for index, reason in [(1, "empty"), (3, "not an image"), (5, "decompression bomb"), (7, "cannot read")]:
        line = next(line for line in out.splitlines() if f"img{index}.png" in line)
        assert f"image '{index}' of the" in line and reason in line
    assert "total        4" in out  # the statistics count the readable images only


def test_features_names_the_record_of_an_unreadable_image(tmp_path_factory, tmp_path, capsys):
    setup = tiny_setup(tmp_path_factory)
    data = damaged_dataset(tmp_path / "data")
    args = ["features", "--data", str(data), "--out", str(tmp_path / "f"), "--quiet"]
    args += ["--image-encoder", f"hf:{setup.image_tower}@32"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "img1.png: image '1' of the train split: image file is empty" in err


def test_features_skip_bad_records_caches_the_readable_images(tmp_path_factory, tmp_path, capsys):
    setup = tiny_setup(tmp_path_factory)
    data = damaged_dataset(tmp_path / "data")
    args = ["features", "--data", str(data), "--out", str(tmp_path / "f"), "--quiet", "--skip-bad-records"]
    assert main([*args, "--image-encoder", f"hf:{setup.image_tower}@32"]) == 0
    out = capsys.readouterr().out
    assert "checked 8 images: skipped 4 unreadable:" in out
    assert sum(f"image '{index}' of the" in out for index in (1, 3, 5, 7)) == 4
    counts = {
        split.name: json.loads((split / "manifest.json").read_text())["num_items"]
        for split in (tmp_path / "f").glob("image-*/*")
    }
    assert counts == {"train": 2, "val": 1, "test": 1}  # train 0,1,2,3 -> 0,2; val 4,5 -> 4; test 6,7 -> 6


def test_features_rerun_rechecks_shard_checksums(tmp_path_factory, tmp_path, capsys):
    setup = tiny_setup(tmp_path_factory)
    out = tmp_path / "f"
    args = ["features", "--data", str(setup.data), "--out", str(out), "--quiet", "--splits", "test"]
    args += ["--image-encoder", f"hf:{setup.image_tower}@32", "--shard-size", "4"]
    assert main(args) == 0
    shard = next(out.glob("image-*/test/shard-00001.safetensors"))
    original = shard.read_bytes()
    damaged = bytearray(original)
    damaged[-5] ^= (
        0xFF  # a flipped bit in the tensor bytes: the file still parses, the checksum does not match
    )
    shard.write_bytes(bytes(damaged))
    capsys.readouterr()
    assert main(args) == 0
    assert f"{shard}: damaged" in capsys.readouterr().err
    assert shard.read_bytes() == original  # encoded again, identical to the first run
