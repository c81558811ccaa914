"""Hostile images: bomb headers, corrupted bytes, odd modes and orientations, devices — from disk and uploaded.

``tests/test_images.py`` covers the basic modes and broken files; this adds files crafted to attack the loader: a
PNG / GIF / BMP / WebP header that claims billions of pixels (Pillow must refuse it before it allocates), random
truncation and byte flips of every accepted format, paths that are not regular files, and the same files sent
to the service's upload route, which must answer 4xx — never 500 — and accept the odd but valid ones.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dcd_itr.data.images import load_rgb
from dcd_itr.errors import ImageLoadError
from search_fixtures import upload

RED, BLUE = (255, 0, 0), (0, 0, 255)


# ----------------------------------------------------------------------------- crafted headers


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for a ``width`` x ``height`` RGB image followed by a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame claim ``width`` x ``height`` (at most 65535 each)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b"\x3b"


def bmp_claiming(width: int, height: int) -> bytes:
    """A 24-bit BMP header for ``width`` x ``height`` with almost no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info)) + info + b"\x00" * 16


def webp_claiming(width: int, height: int) -> bytes:
    """An extended (VP8X) WebP header whose canvas is ``width`` x ``height`` (at most 16384 each)."""
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + canvas
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


BOMBS = {
    # name: (bytes, content type, pixels claimed)
    "png-400Mpx": (png_claiming(20_000, 20_000), "image/png"),
    "png-100Mpx": (png_claiming(10_000, 10_000), "image/png"),  # between Pillow's warning and error limits
    "gif-4Gpx": (gif_claiming(65_535, 65_535), "image/gif"),
    "bmp-10Gpx": (bmp_claiming(100_000, 100_000), "image/bmp"),
    "webp-268Mpx": (webp_claiming(16_384, 16_384), "image/webp"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_headers_are_refused_before_decoding(tmp_path: Path, name: str) -> None:
    data, _ = BOMBS[name]
    path = tmp_path / f"bomb.{name.split('-')[0]}"
    path.write_bytes(data)
    started = time.perf_counter()
    with pytest.raises(ImageLoadError) as error:
        load_rgb(path)
    assert time.perf_counter() - started < 2  # refused from the header, nothing decoded
    assert str(path) in str(error.value)
    assert "decompression bomb" in str(error.value) or "over the limit" in str(error.value)


def test_a_header_just_over_a_lower_limit_is_refused_with_the_numbers(tmp_path: Path) -> None:
    (tmp_path / "wide.png").write_bytes(png_claiming(7_000, 7_000))
    with pytest.raises(ImageLoadError, match="7000x7000 = 49000000 pixels, over the limit of 40000000"):
        load_rgb(tmp_path / "wide.png", max_pixels=40_000_000)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "folder"])
def test_paths_that_are_not_regular_files_are_refused_without_reading(tmp_path: Path, target: str) -> None:
    """/dev/zero or a FIFO would never end (or block forever) if opened; they are refused up front."""
    if target == "fifo":
        path = tmp_path / "pipe.png"
        os.mkfifo(path)
    elif target == "folder":
        path = tmp_path / "folder.png"
        path.mkdir()
    else:
        path = Path(target)
        if not path.exists():
            pytest.skip("no /dev/zero here")
    with pytest.raises(ImageLoadError, match="not found"):
        load_rgb(path)


# ----------------------------------------------------------------------------- valid but unusual images


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    """``image`` saved in ``fmt`` to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def halves(size: tuple[int, int] = (8, 4)) -> Image.Image:
    """Left half red, right half blue: where the halves end up shows how the image was turned."""
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return image


def with_orientation(orientation: int) -> bytes:
    """The halves image as PNG bytes with an EXIF orientation tag."""
    image = halves()
    exif = image.getexif()
    exif[0x0112] = orientation
    return encoded(image, "PNG", exif=exif)


# orientation -> (size shown, the colour at the first and at the last pixel in reading order)
ORIENTATIONS = {
    1: ((8, 4), RED, BLUE),
    2: ((8, 4), BLUE, RED),  # mirrored left-right
    3: ((8, 4), BLUE, RED),  # turned 180 degrees
    4: ((8, 4), RED, BLUE),  # mirrored top-bottom
    5: ((4, 8), RED, BLUE),  # transposed
    6: ((4, 8), RED, BLUE),  # turned 90 degrees clockwise: the left half goes to the top
    7: ((4, 8), BLUE, RED),  # transversed
    8: ((4, 8), BLUE, RED),  # turned 90 degrees anticlockwise: the left half goes to the bottom
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_every_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    (tmp_path / "o.png").write_bytes(with_orientation(orientation))
    size, first, last = ORIENTATIONS[orientation]
    pixels = np.asarray(load_rgb(tmp_path / "o.png"))
    assert (pixels.shape[1], pixels.shape[0]) == size
    assert tuple(pixels[0, 0]) == first and tuple(pixels[-1, -1]) == last


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_an_invalid_exif_orientation_is_ignored(tmp_path: Path, orientation: int) -> None:
    (tmp_path / "o.png").write_bytes(with_orientation(orientation))
    assert load_rgb(tmp_path / "o.png").size == (8, 4)


def palette_with_transparency() -> bytes:
    """A palette PNG whose index 0 (red) is transparent and one pixel is blue."""
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 1)
    return encoded(image, "PNG", transparency=0)  # index 0 (red) transparent


def sixteen_bit_rgb() -> bytes:
    """A 48-bit RGB PNG (16 bits per channel), hand-written: Pillow cannot save one."""
    rows = b"".join(b"\x00" + struct.pack(">HHH", 65535, 0, 32768) * 3 for _ in range(2))
    header = struct.pack(">IIBBBBB", 3, 2, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def animated_png() -> bytes:
    """A two-frame APNG, red then blue."""
    frames = [Image.new("RGB", (6, 6), colour) for colour in (RED, BLUE)]
    return encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])


def animated_gif() -> bytes:
    """A two-frame GIF, red then blue."""
    frames = [Image.new("RGB", (6, 6), colour) for colour in (RED, BLUE)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def cmyk_jpeg() -> bytes:
    """An 8x8 CMYK JPEG of pure red."""
    return encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95)  # red in CMYK


def grey_sixteen() -> bytes:
    """A 16-bit grey PNG holding 0 and 65535."""
    return encoded(Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)), "PNG")


def constant_sixteen() -> bytes:
    """A 16-bit grey PNG of one constant value (no range to scale)."""
    return encoded(Image.fromarray(np.full((2, 2), 700, dtype=np.uint16)), "PNG")


# name -> (bytes, content type, size, colour of pixel (0, 0))
ODD_BUT_VALID = {
    "palette-transparency": (palette_with_transparency(), "image/png", (4, 4), BLUE),
    "rgb-16bit": (sixteen_bit_rgb(), "image/png", (3, 2), (255, 0, 128)),
    "grey-16bit": (grey_sixteen(), "image/png", (2, 1), (0, 0, 0)),
    "constant-16bit": (constant_sixteen(), "image/png", (2, 2), (0, 0, 0)),
    "animated-png": (animated_png(), "image/png", (6, 6), RED),
    "animated-gif": (animated_gif(), "image/gif", (6, 6), RED),
    "cmyk-jpeg": (cmyk_jpeg(), "image/jpeg", (8, 8), RED),
    "exif-rotated": (with_orientation(6), "image/png", (4, 8), RED),
    "one-pixel": (encoded(Image.new("RGB", (1, 1), BLUE), "BMP"), "image/bmp", (1, 1), BLUE),
    "webp-alpha": (encoded(Image.new("RGBA", (5, 5), (0, 0, 255, 0)), "WEBP", lossless=True), "image/webp",
                   (5, 5), (255, 255, 255)),
}  # fmt: skip


def close(actual, expected, tolerance: int = 12) -> bool:
    """Every channel within ``tolerance`` of the expected colour (JPEG is lossy)."""
    return all(abs(int(a) - int(e)) <= tolerance for a, e in zip(actual, expected, strict=True))


@pytest.mark.parametrize("name", sorted(ODD_BUT_VALID))
def test_odd_but_valid_images_become_eight_bit_rgb(tmp_path: Path, name: str) -> None:
    data, _, size, colour = ODD_BUT_VALID[name]
    (tmp_path / name).write_bytes(data)
    image = load_rgb(tmp_path / name)
    assert image.mode == "RGB" and image.size == size
    assert close(np.asarray(image)[0, 0], colour), np.asarray(image)[0, 0]


# ----------------------------------------------------------------------------- corrupted bytes (property-based)

SAMPLES = {
    "PNG": encoded(halves((16, 16)), "PNG"),
    "JPEG": encoded(halves((16, 16)), "JPEG"),
    "GIF": animated_gif(),
    "BMP": encoded(halves((16, 16)), "BMP"),
    "WEBP": encoded(halves((16, 16)), "WEBP"),
    "TIFF": encoded(halves((16, 16)).convert("CMYK"), "TIFF"),
    "APNG": animated_png(),
}


@st.composite
def corrupted(draw) -> bytes:
    """A sample image of any format with a few bytes overwritten, then maybe truncated."""
    data = bytearray(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    for _ in range(draw(st.integers(0, 4))):  # overwrite a few bytes anywhere, the header included
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])  # then maybe truncate


@pytest.mark.filterwarnings("ignore")  # Pillow warns about the damage it survives
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=corrupted())
def test_corrupted_images_load_or_raise_image_load_error(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("corrupt") / "image.bin"
    path.write_bytes(data)
    try:
        image = load_rgb(path)
    except ImageLoadError as error:
        assert str(path) in str(error)
        return
    assert image.mode == "RGB" and min(image.size) >= 1


# ----------------------------------------------------------------------------- the service's upload route


@pytest.fixture(scope="module")
def upload_client():
    """The real app over a stub retriever of captions: it records the image each accepted upload became."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from dcd_itr.search.gallery import Gallery
    from dcd_itr.search.retriever import SearchResult
    from dcd_itr.search.service import create_app

    received = []

    def search_image(image, k, rerank):
        received.append(image)
        return SearchResult([], {"total": 0.0})

    gallery = Gallery("captions", [], [], [], [], [], model_fingerprint="stub")
    retriever = SimpleNamespace(gallery=gallery, index=[], cross=None, search_image=search_image)
    return TestClient(create_app(retriever)), received


@pytest.mark.filterwarnings("ignore")  # Pillow warns about the damage it survives
@pytest.mark.parametrize("name", sorted(BOMBS))
def test_uploaded_bombs_are_refused_with_400(upload_client, name: str) -> None:
    client, received = upload_client
    data, content_type = BOMBS[name]
    received.clear()
    response = upload(client, data, content_type)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "decompression bomb" in detail or "over the limit" in detail
    assert received == []


@pytest.mark.parametrize("name", sorted(ODD_BUT_VALID))
def test_odd_but_valid_uploads_are_searched_as_rgb(upload_client, name: str) -> None:
    client, received = upload_client
    data, content_type, size, colour = ODD_BUT_VALID[name]
    received.clear()
    response = upload(client, data, content_type)
    assert response.status_code == 200, response.text
    (image,) = received
    assert image.mode == "RGB" and image.size == size and close(np.asarray(image)[0, 0], colour)


@pytest.mark.filterwarnings("ignore")  # Pillow warns about the damage it survives
@settings(max_examples=60, deadline=None)
@given(data=corrupted())
def test_corrupted_uploads_are_4xx(upload_client, data: bytes) -> None:
    client, _ = upload_client
    fmt = Image.open(io.BytesIO(data)).format if _identifiable(data) else "PNG"
    content_type = {"MPO": "image/jpeg"}.get(fmt, f"image/{(fmt or 'png').lower()}")
    response = upload(client, data, content_type)
    assert response.status_code in (200, 400, 415), response.text
    assert response.status_code == 200 or response.json()["detail"]


def _identifiable(data: bytes) -> bool:
    """Whether Pillow recognises the bytes at all (to label the upload with a matching type)."""
    try:
        with Image.open(io.BytesIO(data)):
            return True
    except Exception:
        return False
