"""Contact sheets: a grid of images with a caption under each, so a person can look at data and results."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.data.images import load_rgb
from dcd_itr.data.loading import load_split
from dcd_itr.data.scene_annotations import load_scene_annotations
from dcd_itr.io_utils import write_bytes_atomic

PREVIEW_PAIRS = 18  # twin pairs on a scenes contact sheet: 36 tiles, 6 rows of 3 pairs
TILE = 136  # the emoji benchmark's native image size: no resampling for it
LABEL_LINES = 3  # caption lines under each tile
LABEL_SIZE = 13  # caption font size in pixels: legible at 1:1 with a tile of 136 px


def contact_sheet(
    images: Sequence[Path],
    labels: Sequence[str],
    path: str | Path,
    columns: int = 6,
    title: str | None = None,
) -> Path:
    """Write a PNG grid of ``images`` with ``labels`` under them to ``path`` (atomically)."""
    if len(images) != len(labels):
        raise ValueError("contact_sheet needs one label per image")
    font = ImageFont.load_default(size=LABEL_SIZE)
    line_height = LABEL_SIZE + 3
    cell_width, cell_height = TILE + 12, TILE + 8 + LABEL_LINES * line_height
    header = line_height + 10 if title else 0
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * cell_width, header + rows * cell_height), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((6, 4), title, fill="black", font=font)
    for index, (image_path, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (index % columns) * cell_width + 6, header + (index // columns) * cell_height + 4
        tile = load_rgb(image_path)
        tile.thumbnail((TILE, TILE))
        sheet.paste(tile, (x + (TILE - tile.width) // 2, y + (TILE - tile.height) // 2))
        wrapped = textwrap.wrap(label, width=22)[:LABEL_LINES]
        for line_number, line in enumerate(wrapped):
            draw.text((x, y + TILE + 4 + line_number * line_height), line, fill="black", font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)


def split_contact_sheet(split: RetrievalSplit, path: str | Path, count: int = 36, columns: int = 6) -> Path:
    """The first ``count`` images of ``split`` (evenly spaced through it) with their first caption."""
    step = max(1, split.num_images // count)
    rows = list(range(0, split.num_images, step))[:count]
    labels = [split.captions[split.image_to_captions[row][0]] for row in rows]
    title = (
        f"{split.name} split: {split.num_images} images, {split.num_captions} captions (first caption shown)"
    )
    return contact_sheet([split.image_paths[row] for row in rows], labels, path, columns, title)


def twin_contact_sheet(
    dataset_path: Path, path: Path, split: str = "test", pairs: int = PREVIEW_PAIRS
) -> Path:
    """A contact sheet of the first ``pairs`` twin pairs of ``split``, each scene beside its twin, caption 0."""
    data = load_split(dataset_path, split)
    annotations = load_scene_annotations(dataset_path, split)
    rows: list[int] = []
    for row, annotation in enumerate(annotations):
        if len(rows) >= 2 * pairs:
            break
        if row not in rows and annotation.twin_index >= 0:
            rows += [row, annotation.twin_index]
    labels = [data.captions[data.image_to_captions[row][0]] for row in rows]
    title = f"{split}: {data.num_images} images; each scene beside its swapped twin (first caption shown)"
    return contact_sheet([data.image_paths[row] for row in rows], labels, path, columns=6, title=title)
