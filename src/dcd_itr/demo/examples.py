"""Example text queries with each system's top images side by side, as one PNG.

One block per query: the caption, its correct image, then for each system (teacher, cross student, dual
student) its top-k images, best first, the correct one framed in green. The rankings are the ones the speed
stage measured (``top_images.json``), so the sheet shows the same scores as the table. Queries are spread
evenly through the split by position, not chosen by any system's results.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.data.images import load_rgb
from dcd_itr.io_utils import write_bytes_atomic

TILE = 96  # image size in the sheet (the emoji are 136 px: legible at 96)
FRAME = 3  # frame around every tile: green for the correct image, light grey otherwise
GAP = 4  # between tiles of one system
GROUP_GAP = 18  # between systems
MARGIN = 10
LINE = 16  # one text line
FONT_SIZE = 12
BLOCK_GAP = 10  # between queries
CORRECT = (0, 150, 60)
TARGET = (40, 90, 200)
TWIN = (230, 120, 0)  # the swapped twin of the correct scene (scenes benchmark)
OTHER = (210, 210, 210)
CELL = TILE + 2 * FRAME


def pick_queries(split: RetrievalSplit, count: int) -> list[int]:
    """``count`` caption rows spread evenly through ``split`` (by position only)."""
    count = min(count, split.num_captions)
    return [int((index + 0.5) * split.num_captions / count) for index in range(count)]


def sheet_size(num_queries: int, num_systems: int, k: int, twins: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of ``num_queries`` blocks with ``num_systems`` top-``k`` rows (and
    the swapped twin beside the correct image when ``twins``)."""
    group = k * CELL + (k - 1) * GAP
    width = 2 * MARGIN + CELL + (CELL + GAP if twins else 0) + num_systems * (GROUP_GAP + group)
    block = 2 * LINE + CELL + LINE + BLOCK_GAP
    return width, 2 * MARGIN + LINE + 4 + num_queries * block


def correct_positions(
    split: RetrievalSplit,
    queries: Sequence[int],
    systems: Mapping[str, Sequence[Sequence[int]]],
    k: int,
    twins: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Per query: its caption, its image and, per system, the 1-based place of the correct image in the top
    ``k`` (None when it is not there); with ``twins`` (each image's twin row), also the twin's place."""
    rows = []
    for query in queries:
        target = int(split.caption_to_image[query])
        places, twin_places = {}, {}
        twin = int(twins[target]) if twins is not None else None
        for name, ranking in systems.items():
            top = [int(row) for row in ranking[query][:k]]
            places[name] = top.index(target) + 1 if target in top else None
            twin_places[name] = top.index(twin) + 1 if twin is not None and twin in top else None
        row = {"caption_row": query, "caption": split.captions[query], "image_row": target, "places": places}
        if twin is not None:
            row |= {"twin_row": twin, "twin_places": twin_places}
        rows.append(row)
    return rows


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` cut (with "...") to ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _tile(
    sheet: Image.Image, draw: ImageDraw.ImageDraw, path: Path, x: int, y: int, colour, width: int
) -> None:
    image = ImageOps.contain(load_rgb(path), (TILE, TILE))
    sheet.paste(image, (x + FRAME + (TILE - image.width) // 2, y + FRAME + (TILE - image.height) // 2))
    draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), outline=colour, width=width)


def example_sheet(
    split: RetrievalSplit,
    queries: Sequence[int],
    systems: Mapping[str, Sequence[Sequence[int]]],
    path: str | Path,
    k: int = 5,
    title: str | None = None,
    twins: Sequence[int] | None = None,
) -> Path:
    """Write the sheet (see the module docstring) to ``path`` atomically; ``systems``: display name -> each
    caption's ranked image rows (M lists, best first). ``twins`` (each image's swapped-twin row, scenes): the
    twin is shown beside the correct image and framed in orange wherever a system ranks it. Its size is
    :func:`sheet_size`."""
    width, height = sheet_size(len(queries), len(systems), k, twins is not None)
    left = CELL + (CELL + GAP if twins is not None else 0)  # the correct image (and its twin)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=FONT_SIZE)
    group = k * CELL + (k - 1) * GAP
    draw.text((MARGIN, MARGIN), _fit(draw, title or "", font, width - 2 * MARGIN), fill="black", font=font)
    top = MARGIN + LINE + 4
    for number, query in enumerate(queries):
        y = top + number * (2 * LINE + CELL + LINE + BLOCK_GAP)
        target = int(split.caption_to_image[query])
        text = f'{number + 1}. "{split.captions[query]}"'
        draw.text((MARGIN, y), _fit(draw, text, font, width - 2 * MARGIN), fill="black", font=font)
        draw.text((MARGIN, y + LINE), "correct", fill=TARGET, font=font)
        _tile(sheet, draw, split.image_paths[target], MARGIN, y + 2 * LINE, TARGET, FRAME)
        twin = int(twins[target]) if twins is not None else -1
        if twin >= 0:
            draw.text((MARGIN + CELL + GAP, y + LINE), "its twin", fill=TWIN, font=font)
            _tile(sheet, draw, split.image_paths[twin], MARGIN + CELL + GAP, y + 2 * LINE, TWIN, FRAME)
        for column, (name, ranking) in enumerate(systems.items()):
            x0 = MARGIN + left + GROUP_GAP + column * (group + GROUP_GAP)
            ranked = [int(row) for row in ranking[query][:k]]
            place = ranked.index(target) + 1 if target in ranked else None
            found = f"correct at {place}" if place else f"correct not in top {k}"
            header = _fit(draw, f"{name}: {found}", font, group)
            draw.text((x0, y + LINE), header, fill=CORRECT if place else "black", font=font)
            for rank, row in enumerate(ranked):
                x = x0 + rank * (CELL + GAP)
                hit = row == target
                colour, frame = (CORRECT, FRAME) if hit else (TWIN, FRAME) if row == twin else (OTHER, 1)
                _tile(sheet, draw, split.image_paths[row], x, y + 2 * LINE, colour, frame)
                label = split.captions[split.image_to_captions[row][0]]  # the image's first caption
                draw.text(
                    (x, y + 2 * LINE + CELL + 2),
                    _fit(draw, f"{rank + 1}. {label}", font, CELL),
                    fill=CORRECT if hit else "dimgray",
                    font=font,
                )
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)
