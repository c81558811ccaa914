"""A teacher shipped with the repo: the checkpoint its recorded command produced, checked before use.

The grounded teacher of the scenes benchmark trains for up to an hour on 2 CPU cores, longer than the demo's whole
budget, so the demo starts from a published teacher the way users do. The folder (default
``teachers/scenes_grounded``) holds ``model.safetensors`` (<= 5 MB), ``model.yaml`` and ``manifest.json``::

    {"format": 1, "command": "dcd train-teacher --config configs/scenes_teacher.yaml ...", "config": {...},
     "seed": 0, "data_fingerprint": "<records_fingerprint of the dataset it trained on>",
     "files": {"model.safetensors": "<sha256>", "model.yaml": "<sha256>"}, "created": "...", "notes": "..."}

:func:`install_packaged_teacher` verifies every listed file's sha256 (a mismatch or a missing file is a
:class:`~dcd_itr.errors.CorruptFileError` naming the file) and that the teacher was trained on the dataset the demo
built (else a :class:`~dcd_itr.errors.ConfigError` pointing at ``--retrain-teacher``), then copies it into the
demo's teacher folder with its paths-only twin. :func:`package_teacher` writes such a folder from a finished
``dcd train-teacher`` run.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from dcd_itr.errors import ConfigError, CorruptFileError
from dcd_itr.io_utils import file_sha256, write_json_atomic

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
PACKAGED_FILES = ("model.safetensors", "model.yaml")
MAX_WEIGHTS_BYTES = 5 * 2**20  # a checkpoint the repo can carry
RUN_PATHS = ("data", "features", "out")  # machine-specific paths of the run, replaced by the command's


def portable_config(config: dict[str, Any] | None, command: str) -> dict[str, Any] | None:
    """The run's saved config with its machine-specific paths (``data``, ``features``, ``out``) replaced by the
    values the recorded ``command`` sets (``--set data=data/scenes``), or dropped where the command sets none: a
    packaged manifest names no folder of the machine that trained it."""
    if config is None:
        return None
    given = {}
    tokens = shlex.split(command)
    for flag, value in zip(tokens[:-1], tokens[1:], strict=True):
        key, sep, setting = value.partition("=")
        if flag == "--set" and sep and key in RUN_PATHS:
            given[key] = setting
    portable = {key: value for key, value in config.items() if key not in RUN_PATHS}
    return portable | given


def records_fingerprint(dataset_path: Path) -> str:
    """sha256 of the dataset's image records (splits, files, captions, objects, boxes, relations, twins), not of
    its ``info`` block: the same benchmark built where another Debian package version is recorded matches."""
    try:
        payload = json.loads(Path(dataset_path).read_text(encoding="utf-8"))
        records = payload["images"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CorruptFileError(dataset_path, f"not a Karpathy dataset ({error})") from None
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a packaged teacher, with the fields the demo relies on checked."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no packaged teacher here (run with --retrain-teacher to train one)"
        ) from None
    except (OSError, ValueError) as error:
        raise CorruptFileError(path, f"unreadable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CorruptFileError(path, f"not a packaged-teacher manifest of format {MANIFEST_FORMAT}")
    for key in ("command", "seed", "data_fingerprint", "files"):
        if key not in manifest:
            raise CorruptFileError(path, f"missing field {key!r}")
    if not isinstance(manifest["files"], dict) or set(manifest["files"]) != set(PACKAGED_FILES):
        raise CorruptFileError(path, f"field 'files' must give the sha256 of {', '.join(PACKAGED_FILES)}")
    return manifest


def verify_packaged_teacher(folder: Path) -> dict[str, Any]:
    """Check every packaged file against the manifest's sha256; returns the manifest."""
    manifest = read_manifest(folder)
    for name, expected in manifest["files"].items():
        path = Path(folder) / name
        if not path.is_file():
            raise CorruptFileError(path, "missing from the packaged teacher")
        actual = file_sha256(path)
        if actual != expected:
            raise CorruptFileError(
                path,
                f"sha256 {actual[:16]}... does not match the manifest's {str(expected)[:16]}... (corrupted "
                "or replaced; restore it with git, or run with --retrain-teacher)",
            )
    return manifest


def install_packaged_teacher(folder: Path, run_dir: Path, data_fingerprint: str) -> dict[str, Any]:
    """Verify the packaged teacher in ``folder`` and copy it to ``run_dir/best`` (plus ``run_dir/paths_only``,
    the same weights with the fusion term removed); ``data_fingerprint``: :func:`records_fingerprint` of the
    dataset the demo built. Returns the manifest."""
    manifest = verify_packaged_teacher(folder)
    if manifest["data_fingerprint"] != data_fingerprint:
        raise ConfigError(
            f"{Path(folder) / MANIFEST}: the packaged teacher was trained on another dataset (fingerprint "
            f"{manifest['data_fingerprint'][:16]}..., this one {data_fingerprint[:16]}...): build the default "
            "scenes benchmark, or run with --retrain-teacher"
        )
    from dcd_itr.tasks.grounded_teacher import write_paths_only  # the training task's own paths-only writer

    best = Path(run_dir) / "best"
    shutil.rmtree(best, ignore_errors=True)
    best.mkdir(parents=True)
    for name in PACKAGED_FILES:
        shutil.copyfile(Path(folder) / name, best / name)
    write_paths_only(Path(run_dir))
    return manifest


def package_teacher(
    run_dir: Path, folder: Path, command: str, seed: int, data_fingerprint: str, notes: str = ""
) -> Path:
    """Write a packaged teacher into ``folder`` from a finished ``dcd train-teacher`` run in ``run_dir``
    (``best/`` and its saved ``config.yaml``); returns the manifest's path."""
    weights = Path(run_dir) / "best" / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{weights}: no trained teacher to package")
    if weights.stat().st_size > MAX_WEIGHTS_BYTES:
        raise ConfigError(
            f"{weights}: {weights.stat().st_size / 2**20:.1f} MB is over the 5 MB a repo may carry"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in PACKAGED_FILES:
        shutil.copyfile(Path(run_dir) / "best" / name, folder / name)
    saved = Path(run_dir) / "config.yaml"
    manifest = {
        "format": MANIFEST_FORMAT,
        "command": command,
        "config": portable_config(
            yaml.safe_load(saved.read_text(encoding="utf-8")) if saved.is_file() else None, command
        ),
        "seed": seed,
        "data_fingerprint": data_fingerprint,
        "files": {name: file_sha256(folder / name) for name in PACKAGED_FILES},
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "notes": notes,
    }
    write_json_atomic(folder / MANIFEST, manifest)
    return folder / MANIFEST


def package_from_run(run_dir: Path, folder: Path, command: str, notes: str = "") -> Path:
    """:func:`package_teacher` with the seed and the dataset read from the run's saved ``config.yaml``."""
    from dcd_itr.data.loading import resolve_dataset_file

    saved = Path(run_dir) / "config.yaml"
    try:
        config = yaml.safe_load(saved.read_text(encoding="utf-8"))
        seed, data = int(config["train"]["seed"]), config["data"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as error:
        raise ConfigError(f"{saved}: cannot read the run's seed and data ({error})") from None
    fingerprint = records_fingerprint(resolve_dataset_file(data))
    return package_teacher(run_dir, folder, command, seed, fingerprint, notes)
