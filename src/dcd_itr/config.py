"""Typed configs: one dataclass per concern, read from and written to YAML.

Every run saves its resolved config next to its results (:func:`save_config`), so a number can always be traced
to the settings that made it. Reading is strict: an unknown field, a wrong type or a malformed file is a
:class:`ConfigError` that names the file and the field (``configs/x.yaml: train.lr: expected float, got 'abc'``).
Command-line overrides use dotted paths: ``train.epochs=3``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dcd_itr.errors import ConfigError, short_repr, short_text
from dcd_itr.io_utils import write_text_atomic
from dcd_itr.yaml_io import load_yaml_file, load_yaml_text

T = TypeVar("T")


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a YAML value to the annotated type (dataclass, list, tuple, Optional, scalar)."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {short_repr(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        fixed = origin is tuple and Ellipsis not in typing.get_args(annotation)
        if fixed and len(value) != len(typing.get_args(annotation)):
            raise ConfigError(f"{where}: expected {len(typing.get_args(annotation))} items, got {len(value)}")
        items = [_convert(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if annotation is typing.Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is Path and isinstance(value, str):
        return Path(value)
    if isinstance(annotation, type) and not (
        isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {short_repr(value)}")
    return value


def _build(cls: type[T], data: dict, where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields, key=repr)  # YAML keys may be numbers or null: sort them as text
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {short_repr(unknown)}; valid fields: {sorted(fields)}")
    values = {
        name: _convert(value, hints[name], f"{where}.{name}" if where else name)
        for name, value in data.items()
    }
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where or cls.__name__}: {short_text(str(error))}") from None


def config_from_dict(cls: type[T], data: dict, source: str = "<config>") -> T:
    """Build ``cls`` from a plain dict; errors name ``source`` and the dotted field."""
    try:
        return _build(cls, data, "")
    except ConfigError as error:
        raise ConfigError(f"{source}: {str(error).lstrip(': ')}") from None


def load_config(path: str | Path, cls: type[T], overrides: list[str] | None = None) -> T:
    """Read YAML ``path`` into ``cls``, applying ``key.sub=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    data = load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for override in overrides or []:
        apply_override(data, override)
    return config_from_dict(cls, data, str(path))


def apply_override(data: dict, override: str, flag: str = "override") -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (so ``3``, ``0.1``, ``true`` work).

    The one KEY=VALUE rule of the command line: ``--set`` (config fields), ``--option`` (plug-in loader options)
    and ``--param`` (index backend parameters) all go through here; ``flag`` names the option in errors.
    """
    key, sep, raw = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"{flag} {short_repr(override)}: expected key.path=value (NAME=VALUE)")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{flag} {short_repr(override)}: {short_repr(part)} is not a section")
    node[parts[-1]] = load_yaml_text(raw, f"{flag} {short_repr(override)}")


def parse_key_values(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    """``["dtype=bfloat16", "pair_batch_size=64"]`` -> ``{"dtype": "bfloat16", "pair_batch_size": 64}``: each
    pair by :func:`apply_override`'s rule (dotted keys nest, values are YAML)."""
    values: dict[str, Any] = {}
    for pair in pairs or []:
        apply_override(values, pair, flag)
    return values


def config_to_dict(config: Any) -> dict:
    """A dataclass config as plain YAML-able data (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return str(value) if isinstance(value, Path) else value

    return plain(config)


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True))
    return Path(path)
