"""Errors that name what is wrong and where, so a user can fix their input without reading a traceback."""

from __future__ import annotations

from pathlib import Path


class DcdError(Exception):
    """Base class of every error this package raises on purpose (the CLI prints these without a traceback)."""


class DataError(DcdError, ValueError):
    """Bad input data: names the file, the record (line number, index or id) and what is wrong with it."""

    def __init__(self, path: str | Path, message: str, record: str | None = None) -> None:
        self.path = str(path)
        self.record = record
        self.reason = message
        where = f"{self.path}: {record}" if record else self.path
        super().__init__(f"{where}: {message}")


class ImageLoadError(DataError):
    """An image that cannot be used: missing, unreadable, truncated, too large."""


class CacheMismatchError(DcdError):
    """A cache on disk was built from different inputs than the ones asked for; the message says what differs."""


class CorruptFileError(DcdError):
    """A file we wrote earlier (checkpoint, cache shard, index, manifest) is truncated or corrupt."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class OutputError(DcdError, OSError):
    """A result that cannot be written (disk full, read-only or missing folder); what was there is untouched."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class ConfigError(DcdError, ValueError):
    """A config file or option with a bad field: names the file and the field."""
