"""Image paths stay inside the dataset's image root: ``../``, absolute paths and symlinks that leave it are refused.

A dataset file names its images by relative paths (Karpathy ``filepath/filename``, a pairs file's ``image``).
Every reader resolves them here, against the image root -- by default the dataset file's folder, or the folder
given with ``--image-root``, which stays the way to read images kept elsewhere. The check uses real paths
(symlinks resolved, ``..`` collapsed), so a link inside the folder that points outside it is refused too. The
returned path is that real path: the file that will be read is the file that was checked.
"""

from __future__ import annotations

import os
from pathlib import Path

from dcd_itr.errors import DataError, short_repr


def real_root(image_root: str | Path) -> Path:
    """The image root with symlinks resolved: the folder every image must be inside."""
    return Path(os.path.realpath(image_root))


def contained_image_path(source: Path, root: Path, relative: str, where: str) -> Path:
    """The real path of ``root / relative``, or a :class:`DataError` naming ``source`` and the record ``where``
    when it resolves outside ``root`` (``root`` must already be a real path, see :func:`real_root`)."""
    try:
        real = Path(os.path.realpath(root / relative))
    except (OSError, ValueError) as error:  # a name too long for the file system; a symlink loop on some OSes
        raise DataError(
            source, f"image path {short_repr(relative)} cannot be resolved ({error})", where
        ) from None
    if not real.is_relative_to(root):
        raise DataError(
            source,
            f"image path {short_repr(relative)} leaves the dataset folder {root} (it resolves to "
            f"{short_repr(str(real))[1:-1]}); pass --image-root to read images kept elsewhere",
            where,
        )
    return real


def check_image_file(source: Path, image_path: Path, where: str) -> None:
    """A DataError naming the record unless ``image_path`` is a regular file (a name too long, a loop: refused)."""
    try:
        found = image_path.is_file()
    except OSError as error:  # ENAMETOOLONG, ELOOP: is_file() raises these instead of answering False
        raise DataError(source, f"image file cannot be checked ({error.strerror or error})", where) from None
    if not found:
        raise DataError(source, f"image file not found: {image_path}", where)
