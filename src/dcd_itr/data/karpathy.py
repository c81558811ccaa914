"""Reader for the Karpathy-split JSON in which COCO and Flickr30K retrieval splits are distributed.

Format (``dataset_coco.json``, ``dataset_flickr30k.json``, and our ``dataset_emoji.json``)::

    {"images": [{"filename": "x.jpg", "filepath": "val2014",            # filepath optional
                 "split": "train" | "val" | "test" | "restval",
                 "imgid": 0, "sentids": [0, 1],
                 "sentences": [{"raw": "A dog.", "imgid": 0, "sentid": 0, "tokens": [...]}, ...]},
                ...],
     "dataset": "coco"}

``restval`` counts as train. Image paths are ``image_root / filepath / filename`` and must stay inside
``image_root`` (see :mod:`dcd_itr.data.paths`).
"""

from __future__ import annotations

import json
from pathlib import Path

from dcd_itr.data.dataset import SPLITS, RetrievalSplit
from dcd_itr.data.paths import check_image_file, contained_image_path, real_root
from dcd_itr.data.report import ReadReport
from dcd_itr.errors import DataError, short_repr

SPLIT_ALIASES = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def check_text(path: Path, value: str, field: str, where: str) -> str:
    """``value`` unless it holds a lone surrogate (from a ``\\ud800`` JSON escape) or a NUL, which no file name,
    fingerprint or UTF-8 output can carry: then a DataError naming the field."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(path, f"{field} is not valid Unicode (a lone surrogate)", where) from None
    if "\x00" in value:
        raise DataError(path, f"{field} contains a NUL character", where)
    return value


def _image_record_name(index: int, record: object) -> str:
    filename = record.get("filename") if isinstance(record, dict) else None
    return f"images[{index}]" + (f" ({short_repr(filename)})" if isinstance(filename, str) else "")


def _parse_image(
    path: Path, index: int, record: object, image_root: Path, check_files: bool
) -> tuple[str, str, Path, list[str]]:
    """Validate one ``images[]`` entry -> (split, image id, image path, captions)."""
    where = _image_record_name(index, record)
    if not isinstance(record, dict):
        raise DataError(path, f"expected an object, got {type(record).__name__}", where)
    filename = record.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise DataError(path, "missing or empty 'filename'", where)
    filepath = record.get("filepath", "")
    if not isinstance(filepath, str):
        raise DataError(path, "'filepath' must be a string", where)
    check_text(path, filename, "'filename'", where)
    check_text(path, filepath, "'filepath'", where)
    split = record.get("split")
    if split not in SPLIT_ALIASES:
        raise DataError(
            path, f"unknown split {short_repr(split)}; expected one of {sorted(SPLIT_ALIASES)}", where
        )
    sentences = record.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise DataError(path, "'sentences' must be a non-empty list", where)
    captions: list[str] = []
    for sentence_index, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str):
            raise DataError(path, f"sentences[{sentence_index}].raw must be a string", where)
        if not raw.strip():
            raise DataError(path, f"sentences[{sentence_index}].raw is empty", where)
        check_text(path, raw, f"sentences[{sentence_index}].raw", where)
        captions.append(raw.strip())
    image_path = contained_image_path(path, image_root, str(Path(filepath) / filename), where)
    if check_files:
        check_image_file(path, image_path, where)
    imgid = record.get("imgid")  # absent or null: the path names the image
    if imgid is None:
        imgid = f"{filepath}/{filename}" if filepath else filename
    if isinstance(imgid, bool) or not isinstance(imgid, (str, int)):  # an object's str() is no stable id
        raise DataError(path, f"'imgid' must be a string or an integer, got {type(imgid).__name__}", where)
    image_id = check_text(path, str(imgid), "'imgid'", where)
    return SPLIT_ALIASES[split], image_id, image_path, captions


def read_karpathy_json(
    path: str | Path,
    image_root: str | Path | None = None,
    check_files: bool = True,
    skip_bad_records: bool = False,
) -> tuple[dict[str, RetrievalSplit], ReadReport]:
    """Read a Karpathy-split JSON file into train/val/test splits.

    ``image_root`` defaults to the JSON file's folder. With ``skip_bad_records`` a bad image record is skipped,
    counted and listed in the returned report instead of raising.
    """
    path = Path(path)
    image_root = real_root(image_root if image_root is not None else path.parent)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "dataset file not found") from None
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise DataError(
            path, f"malformed JSON: {error.msg}", f"line {error.lineno} column {error.colno}"
        ) from None
    except (ValueError, RecursionError) as error:  # an integer over Python's 4300 digits; nesting too deep
        raise DataError(path, f"JSON beyond the parser's limits ({error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise DataError(path, "expected a JSON object with an 'images' list (Karpathy split format)")

    report = ReadReport(source=str(path))
    rows: dict[str, list[tuple[str, Path, list[str]]]] = {split: [] for split in SPLITS}
    seen_ids: dict[str, int] = {}
    seen_paths: dict[Path, int] = {}
    for index, record in enumerate(payload["images"]):
        try:
            split, image_id, image_path, captions = _parse_image(path, index, record, image_root, check_files)
            where = _image_record_name(index, record)
            if image_id in seen_ids:
                raise DataError(
                    path, f"duplicate imgid {short_repr(image_id)} (also images[{seen_ids[image_id]}])", where
                )
            if image_path in seen_paths:
                raise DataError(path, f"duplicate image path (also images[{seen_paths[image_path]}])", where)
        except DataError as error:
            if not skip_bad_records:
                raise
            report.skip(str(error))
            continue
        seen_ids[image_id] = index
        seen_paths[image_path] = index
        rows[split].append((image_id, image_path, captions))
        report.records_read += 1
    splits = {
        name: RetrievalSplit.from_rows(name, split_rows, image_root)
        for name, split_rows in rows.items()
        if split_rows
    }
    if not splits:
        raise DataError(path, "no usable images in the file")
    return splits, report
