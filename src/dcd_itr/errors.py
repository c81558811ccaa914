"""Errors that name what is wrong and where, so a user can fix their input without reading a traceback."""

from __future__ import annotations

import reprlib
from pathlib import Path

MAX_REPR_CHARS = 120  # a value shown in an error message: enough to recognise it, never a flood

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 2, 4, 4, 4, 4
_repr.maxstring, _repr.maxother, _repr.maxlong = 60, 60, 40


def short_repr(value: object, limit: int = MAX_REPR_CHARS) -> str:
    """``repr(value)`` cut to at most ``limit`` characters without building the full repr of a huge value."""
    try:
        text = _repr.repr(value)
    except Exception:  # a value whose repr fails (should not happen for YAML/JSON data)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_text(text: str, limit: int = 300) -> str:
    """``text`` cut to at most ``limit`` characters (for messages that embed another error's text)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
