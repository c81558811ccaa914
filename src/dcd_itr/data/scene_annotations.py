"""Reading the scenes benchmark's extra annotations (objects, boxes, relation, twin) back, in a split's order.

The generic loader (:func:`dcd_itr.data.loading.load_dataset`) ignores these fields; this module reads the same
JSON and returns them in the same image order as the loader's split, so row ``i`` here is row ``i`` there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcd_itr.data.karpathy import SPLIT_ALIASES
from dcd_itr.data.loading import resolve_dataset_file
from dcd_itr.errors import DataError


@dataclass(frozen=True)
class SceneObject:
    name: str  # the emoji's lower-case CLDR name, as in the captions
    codepoints: str  # "U+1F431"
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) pixel box in the PNG, exclusive ends


@dataclass(frozen=True)
class SceneAnnotation:
    image_id: str  # the record's imgid, as the loader's split.image_ids holds it
    filename: str
    captions: list[str]
    objects: list[SceneObject]  # in grid-cell order (row-major)
    subject: int  # index into objects of the relation's left / upper emoji
    object: int  # index into objects of the other related emoji
    predicate: str  # "left of" or "above"
    twin_index: int  # row of the swapped twin within the same split; -1 when it has none


def _read_records(path: Path) -> list:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise DataError(path, f"cannot read the dataset ({error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise DataError(path, "expected a JSON object with an 'images' list (Karpathy split format)")
    return payload["images"]


def _split_records(path: Path, split: str) -> list[dict]:
    """The split's image records in file order (the loader's order), ``restval`` counting as train."""
    records = [
        r for r in _read_records(path) if isinstance(r, dict) and SPLIT_ALIASES.get(r.get("split")) == split
    ]
    if not records:
        raise DataError(path, f"no images in split {split!r}")
    return records


def _twin_rows(path: Path, records: list[dict]) -> list[int]:
    row_of = {str(r.get("imgid")): row for row, r in enumerate(records)}
    rows = []
    for row, record in enumerate(records):
        twin = record.get("twin")
        twin_row = row_of.get(str(twin), -1) if twin is not None else -1
        if twin is not None and (twin_row < 0 or twin_row == row):
            raise DataError(
                path,
                f"twin {twin!r} is not another image of the same split",
                f"images imgid {record.get('imgid')}",
            )
        rows.append(twin_row)
    for row, twin_row in enumerate(rows):
        if twin_row >= 0 and rows[twin_row] != row:
            raise DataError(path, "twins must name each other", f"images imgid {records[row].get('imgid')}")
    return rows


def load_scene_annotations(dataset_json_path: str | Path, split: str) -> list[SceneAnnotation]:
    """Objects, boxes, relation and twin row of every image of ``split`` (a dataset file or its folder)."""
    path = resolve_dataset_file(dataset_json_path)
    records = _split_records(path, split)
    twins = _twin_rows(path, records)
    annotations = []
    for record, twin_row in zip(records, twins, strict=True):
        where = f"images imgid {record.get('imgid')}"
        try:
            objects = [
                SceneObject(str(o["name"]), str(o["codepoints"]), tuple(int(v) for v in o["box"]))
                for o in record["objects"]
            ]
            relation = record["relation"]
            subject, object_, predicate = (
                int(relation["subject"]),
                int(relation["object"]),
                relation["predicate"],
            )
            captions = [str(s["raw"]).strip() for s in record["sentences"]]
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(path, f"not a scenes record ({type(error).__name__}: {error})", where) from None
        if not (0 <= subject < len(objects) and 0 <= object_ < len(objects)) or subject == object_:
            raise DataError(path, "relation indices must name two different objects", where)
        if any(len(o.box) != 4 for o in objects):
            raise DataError(path, "every object box must be [x0, y0, x1, y1]", where)
        annotations.append(
            SceneAnnotation(
                str(record.get("imgid")),
                str(record.get("filename")),
                captions,
                objects,
                subject,
                object_,
                str(predicate),
                twin_row,
            )
        )
    return annotations


def split_twin_index(dataset_path: str | Path, split: str) -> np.ndarray | None:
    """(N,) int64 row of each image's twin in ``split`` (-1 for none), or None when the split has no twins
    (any dataset other than the scenes benchmark: pairs files, emoji, COCO)."""
    path = resolve_dataset_file(dataset_path)
    if path.suffix.lower() != ".json":
        return None
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, split)
    if key not in _TWIN_INDEX_MEMO:  # validation asks every epoch: read the (multi-MB) JSON once per version
        records = _split_records(path, split)
        has_twins = any(isinstance(r, dict) and r.get("twin") is not None for r in records)
        if len(_TWIN_INDEX_MEMO) >= 8:  # a few (file, split) versions at a time: the memo never grows
            _TWIN_INDEX_MEMO.clear()
        _TWIN_INDEX_MEMO[key] = np.asarray(_twin_rows(path, records), dtype=np.int64) if has_twins else None
    index = _TWIN_INDEX_MEMO[key]
    return None if index is None else index.copy()


_TWIN_INDEX_MEMO: dict[tuple, np.ndarray | None] = {}  # split_twin_index by (file, mtime, size, split)
