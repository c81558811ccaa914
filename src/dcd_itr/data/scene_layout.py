"""One relation scene: emoji in the cells of a 2x2 grid, jittered in size and position, and its two captions.

A :class:`SceneSpec` says which emoji sits in which cell, how each cell's emoji is jittered, and which two
adjacent cells hold the designated relation. Its swapped twin (:meth:`SceneSpec.swapped`) exchanges the two
related emoji and keeps everything else, jitter included, so the twins differ only in who is where.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

GRID = 2  # a 2x2 grid: 4 cells, numbered row-major (0 1 / 2 3)
ADJACENT_CELLS = (
    (0, 1, "left of"),
    (2, 3, "left of"),
    (0, 2, "above"),
    (1, 3, "above"),
)  # (first, second, how)
SIZE_RANGE = (0.55, 0.85)  # emoji's longest side as a share of the cell: jitter visible, objects stay apart
MARGIN = (
    0.06  # share of the cell kept empty on each side: objects in neighbouring cells are >= 12 px apart at 224
)
PREDICATES = ("left of", "above")  # the canonical forms stored in the JSON (subject is the left / upper one)


@dataclass(frozen=True)
class CellJitter:
    size: float  # in [0, 1): where the emoji's size falls in SIZE_RANGE
    x: float  # in [0, 1): where it sits horizontally in the room its cell leaves
    y: float  # in [0, 1): same, vertically


@dataclass(frozen=True)
class SceneSpec:
    cells: tuple[int, ...]  # occupied cells, ascending
    emoji: tuple[int, ...]  # vocabulary index of the emoji in each occupied cell
    jitter: tuple[CellJitter, ...]  # per occupied cell
    subject: int  # position (in cells / emoji) of the left or upper emoji of the relation
    object: int  # position of the other one
    predicate: str  # "left of" or "above"

    def swapped(self) -> SceneSpec:
        """The twin: the two related emoji exchanged, cells and jitter unchanged."""
        emoji = list(self.emoji)
        emoji[self.subject], emoji[self.object] = emoji[self.object], emoji[self.subject]
        return replace(self, emoji=tuple(emoji))

    def pairs(self) -> list[tuple[int, int]]:
        """Every unordered pair of emoji in the scene, as (smaller index, larger index)."""
        ids = sorted(self.emoji)
        return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]


def sample_spec(rng: np.random.Generator, vocabulary_size: int, objects: int) -> SceneSpec:
    """A random scene of ``objects`` distinct emoji: a relation between two adjacent cells, the rest filled."""
    first, second, predicate = ADJACENT_CELLS[int(rng.integers(len(ADJACENT_CELLS)))]
    others = [cell for cell in range(GRID * GRID) if cell not in (first, second)]
    extra = rng.permutation(len(others))[: objects - 2]
    cells = tuple(sorted([first, second, *(others[i] for i in extra)]))
    emoji = tuple(int(i) for i in rng.choice(vocabulary_size, size=objects, replace=False))
    jitter = tuple(CellJitter(*(float(v) for v in rng.random(3))) for _ in cells)
    return SceneSpec(cells, emoji, jitter, cells.index(first), cells.index(second), predicate)


def place(tile_size: tuple[int, int], cell: int, jitter: CellJitter, canvas: int) -> tuple[int, int]:
    """Top-left pixel of a tile of ``tile_size`` (w, h) in ``cell`` of a ``canvas`` px square, per the jitter."""
    cell_size = canvas // GRID
    margin = round(MARGIN * cell_size)
    row, column = divmod(cell, GRID)
    room_x = max(0, cell_size - 2 * margin - tile_size[0])
    room_y = max(0, cell_size - 2 * margin - tile_size[1])
    return (
        column * cell_size + margin + int(jitter.x * (room_x + 1)),
        row * cell_size + margin + int(jitter.y * (room_y + 1)),
    )


def scaled_tile(crop: Image.Image, jitter: CellJitter, canvas: int) -> Image.Image:
    """The emoji crop resized so its longest side is the jittered share of the cell."""
    low, high = SIZE_RANGE
    longest = round((low + jitter.size * (high - low)) * (canvas // GRID))
    scale = longest / max(crop.size)
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    return crop.resize(size, Image.Resampling.LANCZOS)


def compose(
    spec: SceneSpec, crops: list[Image.Image], canvas: int
) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """The scene's RGB image on white and each object's pixel box (x0, y0, x1, y1), in ``spec.cells`` order.

    A box is the extent of the object's non-white pixels in the image (exclusive ends).
    """
    image = Image.new("RGB", (canvas, canvas), "white")
    boxes = []
    for cell, emoji, jitter in zip(spec.cells, spec.emoji, spec.jitter, strict=True):
        tile = scaled_tile(crops[emoji], jitter, canvas)
        x, y = place(tile.size, cell, jitter, canvas)
        image.paste(tile, (x, y))
        rows, cols = np.nonzero((np.asarray(tile) < 255).any(axis=2))
        boxes.append(
            (x + int(cols.min()), y + int(rows.min()), x + int(cols.max()) + 1, y + int(rows.max()) + 1)
        )
    return image, boxes


def with_article(name: str) -> str:
    """ "a cat face", "an apple"; by spelling ("an umbrella", "a unicorn" both right; rare misses accepted)."""
    vowel_sound = name[0] in "aeio" or (name[0] == "u" and not name.startswith(("uni", "use", "usu")))
    return ("an " if vowel_sound else "a ") + name


def captions(subject: str, object_: str, predicate: str) -> list[str]:
    """Both converse forms, in a fixed template order (so caption k of twins use the same template)."""
    first, second = with_article(subject), with_article(object_)
    if predicate == "left of":
        return [f"{first} to the left of {second}", f"{second} to the right of {first}"]
    if predicate == "above":
        return [f"{first} above {second}", f"{second} below {first}"]
    raise ValueError(f"unknown predicate {predicate!r}; expected one of {PREDICATES}")
