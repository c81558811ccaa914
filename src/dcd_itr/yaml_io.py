"""The one way this package reads YAML: safe tags only, no aliases, bounded size, errors that name the file.

Every YAML the project reads -- run configs and recipes, ``--set key=value`` overrides, a model folder's
``model.yaml``, a run folder's saved ``config.yaml`` -- goes through :func:`load_yaml_file` or
:func:`load_yaml_text`. Two things the plain ``yaml.safe_load`` allows are refused:

- **aliases** (``*name``, including ``<<: *name`` merge keys). A few hundred bytes of nested anchors expand to
  billions of items as soon as anything walks or prints it (the "billion laughs" attack); no config needs them.
- **files over** :data:`MAX_YAML_BYTES`: configs are a few kilobytes.

Error messages show values through :func:`dcd_itr.errors.short_repr`: bounded whatever the value is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dcd_itr.errors import ConfigError, CorruptFileError, DataError, DcdError, short_text

MAX_YAML_BYTES = 1 << 20  # 1 MiB: our configs and model descriptions are under 4 KiB


class _AliasRefused(yaml.YAMLError):
    def __init__(self, mark: yaml.Mark | None) -> None:
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        super().__init__(f"YAML aliases (*name) are not allowed{where}; write the value out in full")


class NoAliasSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses alias events while composing, before anything is expanded."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused(self.peek_event().start_mark)
        return super().compose_node(parent, index)


def load_yaml_text(text: str, source: str, error_class: type[DcdError] = ConfigError) -> Any:
    """Parse YAML ``text``; a malformed document or an alias is ``error_class`` naming ``source``."""
    try:
        return yaml.load(text, Loader=NoAliasSafeLoader)  # noqa: S506 (a SafeLoader subclass)
    except _AliasRefused as error:
        raise _error(error_class, source, str(error)) from None
    except (yaml.YAMLError, RecursionError) as error:
        raise _error(error_class, source, f"malformed YAML ({short_text(str(error))})") from None


def load_yaml_file(path: str | Path, error_class: type[DcdError] = ConfigError) -> Any:
    """Read and parse the YAML file ``path`` (see the module docstring); errors are ``error_class`` naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise _error(
                error_class, path, f"{size} bytes, over the limit of {MAX_YAML_BYTES} for a YAML file"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _error(error_class, path, "file not found") from None
    except IsADirectoryError:
        raise _error(error_class, path, "is a folder, not a YAML file") from None
    except UnicodeDecodeError as error:
        raise _error(error_class, path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    return load_yaml_text(text, str(path), error_class)


def _error(error_class: type[DcdError], source: str | Path, message: str) -> DcdError:
    """``error_class`` for ``source``: path-taking classes (CorruptFileError, DataError) get it as an argument."""
    if issubclass(error_class, (CorruptFileError, DataError)):
        return error_class(source, message)
    return error_class(f"{source}: {message}")
