"""The unimodal feature cache: frozen towers run once per dataset, their outputs live on disk.

Layout (one folder per *view* — a tower at one resolution — and split)::

    CACHE/image-efficientnet-lite2@260/test/manifest.json
    CACHE/image-efficientnet-lite2@260/test/shard-00000.safetensors   # tokens (n, N, C), mask (n, N), pooled (n, D)
    CACHE/text-minilm-l6@40/test/...

The manifest records the tower's fingerprint (name, resolution, package versions, dtype), the dataset
fingerprint (ids, paths, file sizes / caption texts of the split), the shard size and the storage dtype. A later
run with the same manifest reuses the cache; a different one is a :class:`CacheMismatchError` that says what
differs; a reused shard is checked against its checksum first, and a damaged one is encoded again. Shards are
written atomically, so an interrupted run resumes from the last complete shard and no partial
file is ever read as complete. ``complete: true`` is set once the last shard is written.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from tqdm import tqdm

from dcd_itr.data.dataset import SPLITS, RetrievalSplit
from dcd_itr.data.image_check import drop_unreadable, load_record_image
from dcd_itr.data.loading import load_dataset, load_split
from dcd_itr.encoders import build_image_tower, build_text_tower
from dcd_itr.encoders.base import ImageTower, TextTower
from dcd_itr.encoders.views import DEFAULT_TEXT_LENGTH, parse_view, view_key
from dcd_itr.errors import CacheMismatchError, CorruptFileError
from dcd_itr.interfaces import FeatureBatch, concat_features
from dcd_itr.io_utils import atomic_path, load_checked, with_checksum, write_json_atomic

FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 256  # items per shard: a lost shard costs at most ~30 s of Lite2 encoding on 2 cores
TOWER_BATCH_SIZE = (
    32  # images or captions per tower call: Lite2 at 260 px stays well under 1 GB of activations
)


def split_fingerprint(split: RetrievalSplit, kind: str) -> str:
    """What the cached features of ``split`` depend on: image ids, paths and sizes, or caption texts."""
    digest = hashlib.sha256(f"{split.name}\n".encode())
    if kind == "image":
        for image_id, path in zip(split.image_ids, split.image_paths, strict=True):
            size = path.stat().st_size if path.exists() else -1
            digest.update(f"{image_id}\t{path.name}\t{size}\n".encode())
    else:
        for caption in split.captions:
            digest.update(caption.encode() + b"\n")
    return digest.hexdigest()


@dataclass
class CacheResult:
    directory: Path
    num_items: int
    encoded_items: int  # items encoded in this run (0 when fully reused)
    seconds: float

    @property
    def items_per_second(self) -> float:
        return self.encoded_items / self.seconds if self.seconds > 0 and self.encoded_items else 0.0


def _manifest(
    tower: ImageTower | TextTower, kind: str, split: RetrievalSplit, shard_size: int, dtype: str
) -> dict:
    return {
        "format": FORMAT_VERSION,
        "kind": kind,
        "split": split.name,
        "num_items": split.num_images if kind == "image" else split.num_captions,
        "shard_size": shard_size,
        "storage_dtype": dtype,
        "dataset_fingerprint": split_fingerprint(split, kind),
        "tower": tower.fingerprint(),
    }


def _describe_difference(existing: dict, wanted: dict, prefix: str = "") -> list[str]:
    differences = []
    for key in sorted(set(existing) | set(wanted)):
        if key == "complete":
            continue
        old, new = existing.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += _describe_difference(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key}: cached {old!r}, now {new!r}")
    return differences


_MANIFEST_TYPES = {"num_items": int, "shard_size": int, "dataset_fingerprint": str, "complete": bool}


def read_manifest(directory: Path) -> dict:
    """``directory/manifest.json``, checked for the fields a reader relies on (else CorruptFileError)."""
    path = directory / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptFileError(path, "feature cache manifest not found (was the cache built?)") from None
    except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, beyond the parser's limits
        raise CorruptFileError(path, f"manifest is not valid JSON ({error})") from None
    wrong = [
        key
        for key, kind in _MANIFEST_TYPES.items()
        if not isinstance(manifest, dict) or type(manifest.get(key)) is not kind
    ]
    if wrong or manifest["num_items"] < 0 or manifest["shard_size"] < 1:
        raise CorruptFileError(path, f"not a feature cache manifest (bad or missing {wrong or 'sizes'})")
    return manifest


def _shard_path(directory: Path, index: int) -> Path:
    return directory / f"shard-{index:05d}.safetensors"


def _shard_reusable(directory: Path, index: int, shard_size: int, num_items: int) -> bool:
    """Shard ``index`` is on disk, matches its checksum and has its rows; a damaged one is reported and redone
    (a shard is a deterministic function of the manifest's inputs, so encoding it again is safe)."""
    path = _shard_path(directory, index)
    if not path.exists():
        return False
    expected = min(shard_size, num_items - index * shard_size)
    try:
        shard, _ = load_checked(path)
        if not shard or any(value.shape[0] != expected for value in shard.values()):
            raise ValueError(f"wrong number of rows (expected {expected})")
    except (SafetensorError, OSError, ValueError) as error:
        print(f"{path}: damaged ({error}); encoding it again", file=sys.stderr)
        return False
    return True


def build_feature_cache(
    split: RetrievalSplit,
    tower: ImageTower | TextTower,
    cache_root: Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    storage_dtype: str = "float32",
    batch_size: int = TOWER_BATCH_SIZE,
    progress: bool = True,
) -> CacheResult:
    """Encode ``split`` with ``tower`` into the cache (resuming or reusing what is there); see the module doc."""
    kind = "image" if isinstance(tower, ImageTower) else "text"
    size = tower.image_size if kind == "image" else tower.max_length
    directory = Path(cache_root) / view_key(kind, tower.name, size) / split.name
    wanted = _manifest(tower, kind, split, shard_size, storage_dtype)
    if (directory / "manifest.json").exists():
        existing = read_manifest(directory)
        differences = _describe_difference(existing, wanted)
        if differences:
            raise CacheMismatchError(
                f"{directory}: the cache was built from different inputs; delete the folder or use another "
                "--out to rebuild:\n  " + "\n  ".join(differences)
            )
    else:
        write_json_atomic(directory / "manifest.json", {**wanted, "complete": False})
    dtype = getattr(torch, storage_dtype)
    items = split.image_paths if kind == "image" else split.captions
    num_shards = -(-len(items) // shard_size)
    todo = [i for i in range(num_shards) if not _shard_reusable(directory, i, shard_size, len(items))]
    start, encoded = time.perf_counter(), 0
    bar = tqdm(
        total=len(items), desc=f"{directory.parent.name}/{split.name}", unit=kind, disable=not progress
    )
    bar.update(len(items) - sum(min(shard_size, len(items) - i * shard_size) for i in todo))
    for index in todo:
        chunk = items[index * shard_size : (index + 1) * shard_size]
        if kind == "image":
            rows = range(index * shard_size, index * shard_size + len(chunk))
            features = tower.encode([load_record_image(split, row) for row in rows], batch_size=batch_size)
        else:
            features = tower.encode(list(chunk), batch_size=batch_size, pad_to_max_length=True)
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in features.items()}
        with atomic_path(_shard_path(directory, index)) as temp:
            save_file(tensors, str(temp), metadata=with_checksum(tensors))
        encoded += len(chunk)
        bar.update(len(chunk))
    bar.close()
    write_json_atomic(directory / "manifest.json", {**wanted, "complete": True})
    return CacheResult(directory, len(items), encoded, time.perf_counter() - start)


def load_feature_cache(directory: Path, dtype: torch.dtype = torch.float32) -> FeatureBatch:
    """All rows of a complete cache folder as one FeatureBatch (floats cast to ``dtype``)."""
    manifest = read_manifest(directory)
    if not manifest.get("complete"):
        raise CorruptFileError(
            directory / "manifest.json", "cache is incomplete; rerun `dcd features` to finish"
        )
    num_shards = -(-manifest["num_items"] // manifest["shard_size"])
    batches = []
    for index in range(num_shards):
        path = _shard_path(directory, index)
        try:
            shard, _ = load_checked(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise CorruptFileError(
                path, f"cannot read feature shard ({error}); delete it and rerun"
            ) from None
        expected = min(manifest["shard_size"], manifest["num_items"] - index * manifest["shard_size"])
        if any(value.shape[0] != expected for value in shard.values()):
            raise CorruptFileError(path, f"shard has the wrong number of rows (expected {expected})")
        batches.append({k: (v.to(dtype) if v.is_floating_point() else v) for k, v in shard.items()})
    return concat_features(batches)


class FeatureStore:
    """Cached features of one split, by view name, with keys namespaced as ``"<view>.<name>"``.

    ``store.image_features(["efficientnet-lite2@260"])`` -> ``{"efficientnet-lite2@260.tokens": (N, 81, 352),
    "efficientnet-lite2@260.mask": (N, 81), "efficientnet-lite2@260.pooled": (N, 1280)}``. The dataset
    fingerprint in each manifest must match the split, so features can never be paired with the wrong rows.
    """

    def __init__(self, cache_root: Path, split: RetrievalSplit, dtype: torch.dtype = torch.float32) -> None:
        self.cache_root, self.split, self.dtype = Path(cache_root), split, dtype
        self._loaded: dict[str, FeatureBatch] = {}

    def _load(self, kind: str, view: str) -> FeatureBatch:
        name, size = parse_view(view)
        if size is None:
            raise CacheMismatchError(f"view {view!r} needs its input size, e.g. {name}@224")
        key = view_key(kind, name, size)
        if key not in self._loaded:
            directory = self.cache_root / key / self.split.name
            if not (directory / "manifest.json").exists():
                raise CacheMismatchError(
                    f"{directory}: no cached {kind} features for view {view!r}; run `dcd features` for it"
                )
            manifest = read_manifest(directory)
            if manifest.get("dataset_fingerprint") != split_fingerprint(self.split, kind):
                raise CacheMismatchError(
                    f"{directory}: cached for a different version of the {self.split.name} split"
                )
            features = load_feature_cache(directory, self.dtype)
            self._loaded[key] = {f"{view}.{name}": value for name, value in features.items()}
        return self._loaded[key]

    def image_features(self, views: list[str]) -> FeatureBatch:
        return {k: v for view in views for k, v in self._load("image", view).items()}

    def text_features(self, views: list[str]) -> FeatureBatch:
        return {k: v for view in views for k, v in self._load("text", view).items()}


def cache_features(
    data: Path,
    out: Path,
    image_encoders: list[str],
    text_encoders: list[str],
    splits: tuple[str, ...] = SPLITS,
    storage_dtype: str = "float32",
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = TOWER_BATCH_SIZE,
    device: str = "cpu",
    progress: bool = True,
    skip_bad_records: bool = False,  # True: skip (count, list) bad records and unreadable images
) -> list[CacheResult]:
    """Encode every requested split with every requested tower; reuse or resume what is cached."""
    dataset, report = load_dataset(data, skip_bad_records=skip_bad_records)
    if skip_bad_records:  # the cache then holds the readable images only: fix the listed ones before training
        print(report.summary())
        dataset, summary = drop_unreadable(dataset, splits, skip=True, progress=progress)
        print(summary)
    results: list[CacheResult] = []
    towers = [build_image_tower(*parse_view(spec), device=device) for spec in image_encoders]
    for spec in text_encoders:
        name, length = parse_view(spec, DEFAULT_TEXT_LENGTH)
        towers.append(build_text_tower(name, max_length=length, device=device))
    for tower in towers:
        for split_name in splits:
            if split_name not in dataset:
                continue
            result = build_feature_cache(
                dataset[split_name], tower, out, shard_size, storage_dtype, batch_size, progress
            )
            rate = f"{result.items_per_second:.1f} items/s" if result.encoded_items else "reused"
            print(f"{result.directory}: {result.num_items} items, {rate}")
            results.append(result)
    return results


@dataclass
class SplitFeatures:
    """A split and the cached features a model needs, keyed ``"<view>.<name>"``."""

    split: RetrievalSplit
    images: FeatureBatch  # (N, ...) per key
    texts: FeatureBatch  # (M, ...) per key


def load_split_features(
    data: Path, features: Path, split_name: str, image_views: list[str], text_views: list[str]
) -> SplitFeatures:
    """Split ``split_name`` of the dataset at ``data`` with the cached features of the given views."""
    split = load_split(data, split_name)
    store = FeatureStore(features, split)
    return SplitFeatures(split, store.image_features(image_views), store.text_features(text_views))
