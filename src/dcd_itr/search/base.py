"""The vector-index interface every backend implements, and the on-disk metadata they share.

An index maps int64 ids to L2-normalised float32 vectors and answers inner-product top-k queries::

    index.add(ids, vectors)            # ids (N,) int64, vectors (N, D) float32
    scores, ids = index.search(q, k)   # q (Q, D) -> scores (Q, k) float32, ids (Q, k) int64; -1 pads short rows
    index.delete(ids)                  # -> how many were removed
    index.save(folder); load_index(folder); len(index)

``save`` writes the backend's data file(s) first and ``index.json`` last, atomically: the metadata records the
backend, its parameters, the dimension, the count and the sha256 of every data file, so a truncated or corrupted
file is refused with :class:`~dcd_itr.errors.CorruptFileError` naming it, never loaded as garbage.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dcd_itr.errors import CorruptFileError
from dcd_itr.io_utils import file_sha256, write_json_atomic

METADATA_FILE = "index.json"
FORMAT_VERSION = 1
MISSING_ID = -1  # what search returns in place of an id when fewer than k items can be found


class VectorIndex(ABC):
    """Inner-product search over int64 ids; see the module docstring for the contract."""

    backend: ClassVar[str]  # the name in INDEX_BACKENDS and in index.json

    def __init__(self, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"index dimension must be positive, got {dim}")
        self.dim = dim

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def delete(self, ids: np.ndarray) -> int: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Everything needed to rebuild an equivalent empty index (stored in index.json)."""

    @abstractmethod
    def save(self, folder: str | Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, metadata: dict[str, Any]) -> VectorIndex: ...

    # ------------------------------------------------------------------ shared input checks

    def check_vectors(self, vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
        """(N, D) C-contiguous float32, finite, or a ValueError that says what is wrong."""
        array = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape (N, {self.dim}), got {tuple(np.shape(vectors))}")
        if not np.isfinite(array).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return array

    @staticmethod
    def check_ids(ids: np.ndarray, count: int | None = None) -> np.ndarray:
        """(N,) int64 non-negative and unique; ``count`` is the number of vectors they must match."""
        array = np.ascontiguousarray(np.asarray(ids).reshape(-1))
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"ids must be integers, got dtype {array.dtype}")
        array = array.astype(np.int64)
        if count is not None and len(array) != count:
            raise ValueError(f"got {len(array)} ids for {count} vectors")
        if (array < 0).any():
            raise ValueError("ids must be non-negative (-1 marks a missing result)")
        if len(np.unique(array)) != len(array):
            raise ValueError("ids must be unique")
        return array

    @staticmethod
    def check_k(k: int) -> int:
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return int(k)

    def metadata(self, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "backend": self.backend,
            "dim": self.dim,
            "count": len(self),
            "params": self.params(),
            "files": files,
        }


def file_digest(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex}`` of a file, read in 1 MiB blocks."""
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def verify_file(folder: Path, name: str, expected: dict[str, Any]) -> Path:
    """The path of a data file whose size and checksum match its metadata entry, else CorruptFileError."""
    path = folder / name
    if not path.is_file():
        raise CorruptFileError(path, f"index data file is missing (listed in {METADATA_FILE})")
    actual = file_digest(path)
    if actual["bytes"] != expected.get("bytes"):
        raise CorruptFileError(
            path, f"index data file is {actual['bytes']} bytes, expected {expected.get('bytes')} (truncated?)"
        )
    if actual["sha256"] != expected.get("sha256"):
        raise CorruptFileError(path, "index data file does not match its checksum (corrupted)")
    return path


def write_metadata(folder: Path, metadata: dict[str, Any]) -> None:
    write_json_atomic(Path(folder) / METADATA_FILE, metadata)


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """``folder/index.json``, checked for the fields every backend needs."""
    path = Path(folder) / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptFileError(path, "index metadata not found (is this an index folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(path, f"index metadata is not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise CorruptFileError(path, "index metadata must be a JSON object")
    for field, kind in (("backend", str), ("dim", int), ("params", dict), ("files", dict)):
        if not isinstance(metadata.get(field), kind):
            raise CorruptFileError(
                path, f"index metadata field {field!r} is missing or not a {kind.__name__}"
            )
    if metadata.get("format") != FORMAT_VERSION:
        raise CorruptFileError(path, f"unsupported index format {metadata.get('format')!r}")
    return metadata


def empty_results(num_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (Q, k) of -inf and ids (Q, k) of MISSING_ID: the answer of an empty index."""
    return (
        np.full((num_queries, k), -np.inf, dtype=np.float32),
        np.full((num_queries, k), MISSING_ID, dtype=np.int64),
    )
