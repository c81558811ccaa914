"""Reader for users' own image-caption pairs: JSONL (``{"image": path, "caption": text}`` per line) or CSV
(a header with ``image`` and ``caption`` columns).

Several lines may share an image; they become that image's captions. A ``split`` field/column (train, val, test,
or restval) assigns the image's split; without one, the split is derived deterministically from a hash of the
image path and a seed (about 70/10/20), so the same file always splits the same way. Relative image paths are
resolved against ``image_root`` (default: the pairs file's folder) and must stay inside it, symlinks resolved
(see :mod:`dcd_itr.data.paths`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from dcd_itr.data.dataset import SPLITS, RetrievalSplit
from dcd_itr.data.karpathy import SPLIT_ALIASES, check_text
from dcd_itr.data.paths import check_image_file, contained_image_path, real_root
from dcd_itr.data.report import ReadReport
from dcd_itr.errors import DataError, short_repr

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)  # train/val/test, the usual retrieval proportions


def hash_split(key: str, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    """A deterministic split for ``key`` (an image path): the same key and seed always give the same split."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if unit < fractions[0]:
        return "train"
    return "val" if unit < fractions[0] + fractions[1] else "test"


def _jsonl_records(path: Path) -> Iterator[tuple[str, object]]:
    with open(path, encoding="utf-8") as stream:
        for line_number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            where = f"line {line_number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                yield where, DataError(path, f"malformed JSON: {error.msg} at column {error.colno}", where)
            except (ValueError, RecursionError) as error:  # an integer over 4300 digits; nesting too deep
                yield where, DataError(path, f"JSON beyond the parser's limits ({error})", where)


def _csv_records(path: Path) -> Iterator[tuple[str, object]]:
    with open(path, encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        missing = {"image", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(path, f"CSV header lacks column(s) {sorted(missing)}", "line 1")
        try:
            first_line = reader.line_num + 1
            for record in reader:
                yield f"line {first_line}", _single_line(path, record, first_line, reader.line_num)
                first_line = reader.line_num + 1
        except csv.Error as error:
            # e.g. a field over csv's 128 KiB limit: the rows after it cannot be trusted, so the file stops here
            raise DataError(path, f"malformed CSV ({error})", f"line {reader.line_num}") from None


def _single_line(path: Path, record: dict, first_line: int, last_line: int) -> object:
    """``record``, or a DataError when a quoted field holds a line break: an unterminated quote swallows every
    later row into one caption, so a row spanning lines is refused (and counted, under skip_bad_records)."""
    values = [v for value in record.values() for v in (value if isinstance(value, list) else [value])]
    if any(isinstance(value, str) and ("\n" in value or "\r" in value) for value in values):
        return DataError(
            path,
            f"a quoted field spans lines {first_line}-{last_line} (an unterminated quote?); captions and paths "
            "cannot hold line breaks",
            f"line {first_line}",
        )
    return record


def _parse_pair(path: Path, where: str, record: object, image_root: Path, check_files: bool):
    if isinstance(record, DataError):
        raise record
    if not isinstance(record, dict):
        raise DataError(path, f"expected an object, got {type(record).__name__}", where)
    image, caption = record.get("image"), record.get("caption")
    if not isinstance(image, str) or not image.strip():
        raise DataError(path, "'image' must be a non-empty string path", where)
    if not isinstance(caption, str):
        raise DataError(path, f"'caption' must be a string, got {type(caption).__name__}", where)
    if not caption.strip():
        raise DataError(path, "'caption' is empty", where)
    check_text(path, image, "'image'", where)
    check_text(path, caption, "'caption'", where)
    split = record.get("split")
    if split not in (None, "") and split not in SPLIT_ALIASES:
        raise DataError(
            path, f"unknown split {short_repr(split)}; expected one of {sorted(SPLIT_ALIASES)}", where
        )
    image_path = contained_image_path(path, image_root, image, where)
    if check_files:
        check_image_file(path, image_path, where)
    return image.strip(), image_path, caption.strip(), SPLIT_ALIASES.get(split) if split else None


def read_pairs(
    path: str | Path,
    image_root: str | Path | None = None,
    check_files: bool = True,
    skip_bad_records: bool = False,
    split_seed: int = 0,
) -> tuple[dict[str, RetrievalSplit], ReadReport]:
    """Read a JSONL or CSV pairs file (by extension) into train/val/test splits."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "pairs file not found")
    image_root = real_root(image_root if image_root is not None else path.parent)
    records = _csv_records(path) if path.suffix.lower() == ".csv" else _jsonl_records(path)
    report = ReadReport(source=str(path))
    captions_by_image: dict[Path, list[str]] = {}
    name_by_image: dict[
        Path, str
    ] = {}  # the path as written in the file: the image id and the split-hash key
    split_by_image: dict[Path, tuple[str, str]] = {}  # image -> (split, where it was first given)
    try:
        for where, record in records:
            try:
                image_name, image_path, caption, split = _parse_pair(
                    path, where, record, image_root, check_files
                )
                if split is not None:
                    earlier = split_by_image.setdefault(image_path, (split, where))
                    if earlier[0] != split:
                        raise DataError(
                            path, f"split {split!r} conflicts with {earlier[0]!r} at {earlier[1]}", where
                        )
                if caption in captions_by_image.get(image_path, []):
                    raise DataError(
                        path, f"duplicate caption {short_repr(caption)} for image {image_path.name}", where
                    )
            except DataError as error:
                if not skip_bad_records:
                    raise
                report.skip(str(error))
                continue
            captions_by_image.setdefault(image_path, []).append(caption)
            name_by_image.setdefault(image_path, image_name)
            report.records_read += 1
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    rows: dict[str, list[tuple[str, Path, list[str]]]] = {split: [] for split in SPLITS}
    for image_path, captions in captions_by_image.items():
        image_name = name_by_image[image_path]
        split = split_by_image.get(image_path, (hash_split(image_name, split_seed), ""))[0]
        rows[split].append((image_name, image_path, captions))
    splits = {
        name: RetrievalSplit.from_rows(name, split_rows, image_root)
        for name, split_rows in rows.items()
        if split_rows
    }
    if not splits:
        raise DataError(path, "no usable image-caption pairs in the file")
    return splits, report
