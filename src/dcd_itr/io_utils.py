"""Atomic writes: a reader never sees a half-written file, and a failed write leaves the old file untouched."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from dcd_itr.errors import DcdError, OutputError

CHECKSUM_KEY = "sha256"  # safetensors metadata key of the tensors' digest (the format itself has no checksum)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is renamed onto ``path``, on error removed.

    The temporary file lives in the same folder so that ``os.replace`` is an atomic rename on POSIX. A write
    that fails (disk full, read-only folder: an ``OSError``, or the ``SafetensorError`` / ``RuntimeError`` that
    safetensors and ``torch.save`` turn it into) is an :class:`OutputError` naming ``path``.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise OutputError(target, f"cannot write here ({error.strerror or error})") from error
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        yield temp_path
        os.replace(temp_path, target)
    except DcdError:
        temp_path.unlink(missing_ok=True)
        raise
    except Exception as error:  # the writers wrap ENOSPC / EFBIG / EROFS in their own error types
        temp_path.unlink(missing_ok=True)
        raise OutputError(target, f"cannot write ({error}); the file there before is untouched") from error
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync before the rename)."""
    with atomic_path(path) as temp, open(temp, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload: Any, indent: int | None = 2) -> None:
    """Write ``payload`` as UTF-8 JSON atomically; key order is kept, so equal input gives identical bytes."""
    write_text_atomic(path, json.dumps(payload, indent=indent, ensure_ascii=False) + "\n")


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) of named tensors: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\t{tensor.dtype}\t{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def with_checksum(
    tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> dict[str, str]:
    """``metadata`` plus the tensors' sha256, to pass as ``save_file(..., metadata=...)``."""
    return {**(metadata or {}), CHECKSUM_KEY: tensors_sha256(tensors)}


def load_checked(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and metadata. ``ValueError`` when the tensors do not match the sha256 stored
    in the metadata by :func:`with_checksum` (a flipped bit, a bad sector); files without one are read as they are.
    """
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    if CHECKSUM_KEY in metadata and tensors_sha256(tensors) != metadata[CHECKSUM_KEY]:
        raise ValueError("its tensors do not match the checksum stored with them (corrupted)")
    return tensors, metadata
