"""Rows of one cached feature tensor, read from its shard files on demand: token states fetched per batch.

A split's token states do not fit in RAM at COCO scale (566K captions x 40 tokens x 384 floats = 35 GB).
:class:`ShardedRows` stands in for the concatenated ``(N, ...)`` tensor of one name (``tokens``, ``mask``, ...)
across the shards of a feature cache folder: ``rows[index]`` (a slice or a 1-D index tensor, what
:func:`~dcd_itr.interfaces.slice_features` passes) reads just those rows with ``os.pread`` — no mmap, so
nothing read lingers in the process's resident memory — and returns an ordinary tensor. ``.to("cpu")`` is itself,
so training code that moves features to their device once keeps working; another device materialises the rows.

Shard files are safetensors: an 8-byte little-endian header length, a JSON header (per tensor: dtype, shape,
data offsets relative to the end of the header), then the raw bytes, rows contiguous (C order).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from dcd_itr.errors import CorruptFileError
from dcd_itr.io_utils import CHECKSUM_KEY

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header


def read_safetensors_header(path: Path) -> tuple[int, dict]:
    """(byte offset where tensor data starts, the JSON header) of a safetensors file."""
    try:
        with open(path, "rb") as stream:
            (length,) = struct.unpack("<Q", stream.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(stream.read(length))
    except (OSError, ValueError, struct.error) as error:
        raise CorruptFileError(
            path, f"cannot read the safetensors header ({error}); delete it and rerun"
        ) from None
    if not isinstance(header, dict):
        raise CorruptFileError(path, "safetensors header is not a JSON object")
    return 8 + length, header


class ShardedRows:
    """The ``(N, ...)`` tensor ``name`` spread over ``paths`` (``shard_rows[i]`` rows each), read on demand."""

    def __init__(self, paths: list[Path], name: str, shard_rows: list[int], dtype: torch.dtype | None = None):
        self.paths, self.name = [Path(p) for p in paths], name
        self._offsets: list[int] = []  # byte offset of row 0 of ``name`` in each shard
        tails = set()
        for path, rows in zip(self.paths, shard_rows, strict=True):
            data_start, header = read_safetensors_header(path)
            entry = header.get(name)
            if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_DTYPES:
                raise CorruptFileError(path, f"shard has no readable tensor {name!r}")
            shape = entry.get("shape") or [0]
            if shape[0] != rows:
                raise CorruptFileError(path, f"shard has the wrong number of rows (expected {rows})")
            if path.stat().st_size < data_start + entry["data_offsets"][1]:
                raise CorruptFileError(path, f"shard is truncated (reading {name!r}); delete it and rerun")
            tails.add((entry["dtype"], tuple(shape[1:])))
            self._offsets.append(data_start + entry["data_offsets"][0])
        if len(tails) != 1:
            raise CorruptFileError(self.paths[0].parent, f"shards disagree on the dtype or shape of {name!r}")
        stored, tail = tails.pop()
        self.stored_dtype = SAFETENSORS_DTYPES[stored]
        self.dtype = dtype if dtype is not None and self.stored_dtype.is_floating_point else self.stored_dtype
        self._tail = tail
        self._row_bytes = int(np.prod(tail, dtype=np.int64)) * self.stored_dtype.itemsize
        self._starts = np.concatenate([[0], np.cumsum(shard_rows)]).astype(np.int64)  # (S + 1,)
        self.shape = torch.Size([int(self._starts[-1]), *tail])

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: str | torch.device | None = None, *args, **kwargs):
        """CPU: itself (rows stay on disk until indexed); any other device: every row, moved there."""
        if device is None or torch.device(device).type == "cpu":
            return self
        return self[:].to(device, *args, **kwargs)

    def __getitem__(self, index: slice | int | tuple | torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
        if isinstance(index, tuple):  # rows first, then the rest on the rows read
            rows = self[index[0]]
            return rows[index[1:]] if isinstance(index[0], int) else rows[(slice(None), *index[1:])]
        if isinstance(index, int):
            return self[[index]][0]
        if isinstance(index, slice):
            rows = np.arange(*index.indices(len(self)), dtype=np.int64)
        else:
            rows = np.asarray(torch.as_tensor(index).cpu(), dtype=np.int64).reshape(-1)
            rows = np.where(rows < 0, rows + len(self), rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows of {self.name!r}")
        return self._read(rows)

    def _read(self, rows: np.ndarray) -> torch.Tensor:
        unique, inverse = np.unique(rows, return_inverse=True)  # sorted: consecutive rows become one read
        shards = np.searchsorted(self._starts, unique, side="right") - 1  # (U,)
        breaks = np.flatnonzero((np.diff(unique) != 1) | (np.diff(shards) != 0)) + 1
        pieces, opened = [], {}  # each shard opened once per read, however many runs it holds
        try:
            for run in np.split(np.arange(len(unique)), breaks):
                if not run.size:
                    continue
                shard = int(shards[run[0]])
                local = int(unique[run[0]] - self._starts[shard])
                size = len(run) * self._row_bytes
                if shard not in opened:
                    opened[shard] = os.open(self.paths[shard], os.O_RDONLY)
                data = os.pread(opened[shard], size, self._offsets[shard] + local * self._row_bytes)
                if len(data) != size:
                    raise CorruptFileError(self.paths[shard], f"shard is truncated (reading {self.name!r})")
                pieces.append(
                    torch.frombuffer(bytearray(data), dtype=self.stored_dtype).view(len(run), *self._tail)
                )
        finally:
            for descriptor in opened.values():
                os.close(descriptor)
        if not pieces:
            return torch.empty((0, *self._tail), dtype=self.dtype)
        gathered = torch.cat(pieces) if len(pieces) > 1 else pieces[0]  # (U, ...)
        if len(unique) != len(rows) or not np.array_equal(unique, rows):
            gathered = gathered[torch.from_numpy(inverse.reshape(-1))]  # (len(rows), ...) in the asked order
        return gathered.to(self.dtype)


def read_tensors_checked(path: Path, names: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Tensors ``names`` of a safetensors file, with the file's ``sha256`` metadata checked over all its tensors.

    The checksum (:func:`~dcd_itr.io_utils.tensors_sha256`: name, dtype, shape and bytes of each tensor in name
    order) covers every tensor, so the others are hashed too — streamed from the file 1 MiB at a time with
    ``os.pread``, never held and never mapped: memory holds the tensors asked for and one block. (A checksum per
    tensor would spare those reads, but safetensors writes metadata keys in a random order, and shards must stay
    byte-identical across runs.) ``ValueError`` for a missing tensor or a mismatch.
    """
    import hashlib

    data_start, header = read_safetensors_header(Path(path))
    metadata = header.pop("__metadata__", None) or {}
    missing = sorted(set(names) - set(header))
    if missing:
        raise ValueError(f"no tensors {missing}")
    digest, kept = hashlib.sha256(), {}
    with open(path, "rb") as stream:
        for name in sorted(header):
            entry = header[name]
            dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))
            if dtype is None:
                raise ValueError(f"tensor {name!r} has an unknown dtype {entry.get('dtype')!r}")
            begin, end = entry["data_offsets"]
            digest.update(f"{name}\t{dtype}\t{tuple(entry['shape'])}\n".encode())
            if name in names:
                data = os.pread(stream.fileno(), end - begin, data_start + begin)
                if len(data) != end - begin:
                    raise ValueError(f"file is truncated (tensor {name!r})")
                digest.update(data)
                kept[name] = torch.frombuffer(bytearray(data), dtype=dtype).view(entry["shape"])
                continue
            for offset in range(begin, end, 1 << 20):
                block = os.pread(stream.fileno(), min(1 << 20, end - offset), data_start + offset)
                if not block:
                    raise ValueError(f"file is truncated (tensor {name!r})")
                digest.update(block)
    if CHECKSUM_KEY in metadata and digest.hexdigest() != metadata[CHECKSUM_KEY]:
        raise ValueError("its tensors do not match the checksum stored with them (corrupted)")
    return kept


SPILL_SHARD_BYTES = 64 * 2**20  # rows per spill file: ~64 MiB keeps files few and a write's buffer small
# encodings held in RAM before spilling starts: COCO's 25K test captions at 40 tokens x width 96 (384 MB) fit (no
# disk reads while scoring), a 566K-caption train split's token states do not (they would need ~9 GB)
SPILL_BUDGET_BYTES = 512 * 2**20


def is_lazy(features: dict) -> bool:
    """True when some value of a FeatureBatch is :class:`ShardedRows` (rows that live on disk)."""
    return any(isinstance(value, ShardedRows) for value in features.values())


def _nbytes(batch: dict[str, torch.Tensor]) -> int:
    return sum(value.numel() * value.element_size() for value in batch.values())


def spill_rows(
    batches: Iterable[dict[str, torch.Tensor]],
    directory: str | os.PathLike[str] | None = None,  # None: the system's temporary folder ($TMPDIR)
    budget_bytes: int | None = None,  # None: SPILL_BUDGET_BYTES
    shard_bytes: int = SPILL_SHARD_BYTES,
) -> dict[str, torch.Tensor | ShardedRows]:
    """Consecutive FeatureBatches as one: concatenated in RAM while they total at most ``budget_bytes``, else
    written to temporary shard files and returned as one :class:`ShardedRows` per name, so memory holds at most
    ``budget_bytes`` of rows at any time.

    What a model encodes from a split that does not fit in RAM (a cross-encoder's projected token states of COCO's
    566K captions) is spilled here once and read back per batch. The folder is deleted when the last returned
    ShardedRows is garbage-collected (each holds a reference to it).
    """
    from safetensors.torch import save_file

    budget = SPILL_BUDGET_BYTES if budget_bytes is None else budget_bytes
    folder: tempfile.TemporaryDirectory | None = None
    paths: list[Path] = []
    rows: list[int] = []
    pending: list[dict[str, torch.Tensor]] = []

    def concatenated() -> dict[str, torch.Tensor]:  # on the batches' device
        return {name: torch.cat([batch[name] for batch in pending]).detach() for name in pending[0]}

    def flush() -> None:  # pending batches -> files of about shard_bytes each (a copy of one file at a time)
        while pending:
            count, size = 0, 0
            while count < len(pending) and (count == 0 or size + _nbytes(pending[count]) <= shard_bytes):
                size, count = size + _nbytes(pending[count]), count + 1
            group = pending[:count]
            tensors = {
                name: torch.cat([b[name] for b in group]).detach().cpu().contiguous() for name in group[0]
            }
            path = Path(folder.name) / f"spill-{len(paths):05d}.safetensors"
            save_file(tensors, str(path))
            paths.append(path)
            rows.append(next(iter(tensors.values())).shape[0])
            del pending[:count], group, tensors

    held = total = 0
    for batch in batches:
        pending.append(batch)
        held, total = held + _nbytes(batch), total + _nbytes(batch)
        if folder is None and total > budget:
            folder = tempfile.TemporaryDirectory(prefix="dcd-spill-", dir=directory)
        if folder is not None and held >= min(shard_bytes, budget):
            flush()
            held = 0
    if not pending and not paths:
        raise ValueError("nothing to encode: no batches")
    if folder is None:  # everything fitted the budget
        return concatenated()
    flush()
    names = [name for name in read_safetensors_header(paths[0])[1] if name != "__metadata__"]
    spilled = {name: ShardedRows(paths, name, rows) for name in names}
    for value in spilled.values():
        value.keep_alive = folder  # the folder lives as long as any of its readers
    return spilled
