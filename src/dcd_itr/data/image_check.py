"""Finding unreadable images before a long run does: every image of a split opened and decoded once.

:func:`load_rgb` (``data/images.py``) is the one decoder: header first, the decompression-bomb limit, then the
pixels; a missing, empty, truncated or non-image file, or a bomb, is an :class:`ImageLoadError`. Here each such
error is tied to its record (the split and the image id), so ``dcd data stats --check-images`` and
``dcd features --skip-bad-records`` can name it, count it and skip it.
"""

from __future__ import annotations

from collections.abc import Iterable

from PIL import Image
from tqdm import tqdm

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.data.images import load_rgb
from dcd_itr.errors import ImageLoadError, short_repr


def record_name(split: RetrievalSplit, row: int) -> str:
    """How a message names image ``row`` of ``split``: its id in the dataset file, and the split."""
    return f"image {short_repr(split.image_ids[row])} of the {split.name} split"


def load_record_image(split: RetrievalSplit, row: int) -> Image.Image:
    """Image ``row`` of ``split`` as RGB; an unreadable file is an ImageLoadError naming the file and the record."""
    try:
        return load_rgb(split.image_paths[row])
    except ImageLoadError as error:
        raise ImageLoadError(error.path, error.reason, record_name(split, row)) from None


def unreadable_images(
    split: RetrievalSplit, rows: Iterable[int] | None = None, progress: bool = False
) -> list[tuple[int, ImageLoadError]]:
    """``(row, error)`` for every image of ``split`` (or of ``rows``) that cannot be decoded, in row order."""
    rows = list(range(split.num_images)) if rows is None else list(rows)
    bad = []
    for row in tqdm(rows, desc=f"checking {split.name} images", unit="image", disable=not progress):
        try:
            load_record_image(split, row)
        except ImageLoadError as error:
            bad.append((row, error))
    return bad


def without_rows(split: RetrievalSplit, rows: Iterable[int]) -> RetrievalSplit:
    """``split`` minus the given image rows (and their captions), in the original order."""
    dropped = set(rows)
    return split.subset([row for row in range(split.num_images) if row not in dropped])


def drop_unreadable(
    splits: dict[str, RetrievalSplit], names: Iterable[str], skip: bool, progress: bool = False
) -> tuple[dict[str, RetrievalSplit], str]:
    """Decode every image of the named splits. Without ``skip`` the first unreadable one is raised (naming its
    record); with it, the splits come back without them, plus a summary that counts and lists each one."""
    kept, errors, total = dict(splits), [], 0
    for name in names:
        if name not in splits:
            continue
        bad = unreadable_images(splits[name], progress=progress)
        if bad and not skip:
            raise bad[0][1]
        total += splits[name].num_images
        errors += [str(error) for _, error in bad]
        kept[name] = without_rows(splits[name], [row for row, _ in bad]) if bad else splits[name]
    if not errors:
        return kept, f"checked {total} images: all readable"
    listed = "\n  ".join(errors[:20]) + (f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else "")
    return kept, f"checked {total} images: skipped {len(errors)} unreadable:\n  {listed}"
