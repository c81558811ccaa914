"""One entry point for every dataset format: ``load_dataset(path)`` -> train/val/test splits.

``path`` may be a Karpathy JSON file (``.json``), a pairs file (``.jsonl`` / ``.csv``), or a folder that holds
exactly one ``dataset_*.json`` (what ``dcd data emoji --out DIR`` writes).
"""

from __future__ import annotations

from pathlib import Path

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.data.karpathy import read_karpathy_json
from dcd_itr.data.pairs import read_pairs
from dcd_itr.data.read_report import ReadReport
from dcd_itr.errors import DataError


def resolve_dataset_file(path: str | Path) -> Path:
    """The dataset file that ``path`` names: the file itself, or the one ``dataset_*.json`` in a folder."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("dataset_*.json"))
        if len(candidates) != 1:
            found = ", ".join(c.name for c in candidates) or "none"
            raise DataError(path, f"expected exactly one dataset_*.json in this folder, found {found}")
        return candidates[0]
    if not path.exists():
        raise DataError(
            path, "dataset not found (give a Karpathy .json, a .jsonl/.csv pairs file, or a folder)"
        )
    return path


def load_dataset(
    path: str | Path,
    image_root: str | Path | None = None,
    check_files: bool = True,
    skip_bad_records: bool = False,
) -> tuple[dict[str, RetrievalSplit], ReadReport]:
    """Read any supported dataset into its splits, with a report of what was read and skipped."""
    dataset_file = resolve_dataset_file(path)
    suffix = dataset_file.suffix.lower()
    if suffix == ".json":
        return read_karpathy_json(dataset_file, image_root, check_files, skip_bad_records)
    if suffix in (".jsonl", ".csv"):
        return read_pairs(dataset_file, image_root, check_files, skip_bad_records)
    raise DataError(dataset_file, f"unknown dataset format {suffix!r}; expected .json, .jsonl or .csv")


def load_split(path: str | Path, split: str, **kwargs) -> RetrievalSplit:
    """One split of a dataset, with a clear error when the dataset has no such split."""
    splits, _ = load_dataset(path, **kwargs)
    if split not in splits:
        raise DataError(resolve_dataset_file(path), f"no {split!r} split (has: {', '.join(sorted(splits))})")
    return splits[split]
