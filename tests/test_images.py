"""Image loading: every mode becomes 8-bit RGB on white; every broken file is an ImageLoadError naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcd_itr.data.images import load_rgb
from dcd_itr.errors import ImageLoadError


def test_transparent_pixels_are_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.putpixel((1, 0), (0, 0, 255, 128))
    image.save(tmp_path / "a.png")
    pixels = np.asarray(load_rgb(tmp_path / "a.png"))
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 4, 3)
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[3, 3].tolist() == [255, 255, 255]  # fully transparent -> white
    assert pixels[0, 1].tolist() == [127, 127, 255]  # half blue over white


@pytest.mark.parametrize("mode", ["P", "L", "LA", "CMYK", "1"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    Image.new("RGB", (5, 3), (0, 0, 0)).convert(mode).save(path)
    loaded = load_rgb(path)
    assert loaded.mode == "RGB" and loaded.size == (5, 3)
    assert np.asarray(loaded).max() < 10  # black stays black


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    pixels = np.asarray(load_rgb(tmp_path / "deep.png"))[..., 0]
    assert pixels[0, 0] == 0 and pixels[1, 1] == 255 and 110 < pixels[1, 0] < 125


def test_animated_image_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (6, 6), colour) for colour in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(load_rgb(tmp_path / "anim.gif"))[0, 0].tolist()[0] > 200  # red first frame


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (8, 4), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg").size == (4, 8)


def test_broken_files_are_named(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), "red").save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    cases = {"truncated.png": "cannot read image", "empty.png": "empty", "text.png": "not an image file"}
    cases["missing.png"] = "not found"
    for name, reason in cases.items():
        with pytest.raises(ImageLoadError, match=reason) as error:
            load_rgb(tmp_path / name)
        assert str(tmp_path / name) in str(error.value)


def test_decompression_bomb_limit_is_enforced(tmp_path: Path) -> None:
    Image.new("L", (200, 200)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="40000 pixels, over the limit of 10000"):
        load_rgb(tmp_path / "big.png", max_pixels=10_000)
    assert load_rgb(tmp_path / "big.png").size == (200, 200)
