"""Embedding a gallery into an index folder: resumable, shardable across processes, then merged.

Layout of an index folder while and after it is built::

    INDEX/embeddings/manifest.json              the gallery table + model and gallery fingerprints + shard size
    INDEX/embeddings/shard-00003.safetensors    embedding (n, D) float32 of items [3*S, 3*S + n)
    INDEX/vectors.safetensors                   after the merge: embedding (N, D) float32, ids (N,) int64
    INDEX/index.json, vectors.faiss | milvus.db the backend (see dcd_itr.search.index)
    INDEX/gallery.json                          written last: the folder is a complete index

Shard ``s`` belongs to rank ``s % world``; every shard is written atomically, so a killed run resumes from the
shards on disk and never reads a partial one. A run with ``world > 1`` (``--shard RANK/WORLD`` or torchrun's
``RANK``/``WORLD_SIZE``) embeds only its own shards; a plain run embeds whatever is missing and merges.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from dcd_itr.data.loading import load_split
from dcd_itr.distributed import parse_shard, resolve_device
from dcd_itr.errors import CacheMismatchError, ConfigError, CorruptFileError, short_repr
from dcd_itr.export.runtime import DEFAULT_RUNTIME, check_runtime, load_dual_encoder
from dcd_itr.io_utils import atomic_path, write_json_atomic
from dcd_itr.search.gallery import GALLERY_FILE, Gallery
from dcd_itr.search.index import DEFAULT_BACKEND, INDEX_BACKENDS, create_index

EMBEDDINGS_DIR = "embeddings"
MANIFEST_FILE = "manifest.json"
VECTORS_FILE = "vectors.safetensors"
DEFAULT_SHARD_SIZE = 512  # items per shard: a killed build loses at most ~1 min of Lite0 work on 2 cores
DEFAULT_BATCH_SIZE = 64  # images per tower call: fills a CPU's cores without a large memory peak


@dataclass
class BuildResult:
    folder: Path
    num_items: int
    embedded_items: int  # embedded by this run (0 when everything was on disk)
    seconds: float
    merged: bool  # False for a shard-only run (world > 1)


def shard_path(folder: Path, shard: int) -> Path:
    return folder / EMBEDDINGS_DIR / f"shard-{shard:05d}.safetensors"


def shard_ranges(num_items: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, num_items)) for start in range(0, num_items, shard_size)]


def _prepare_manifest(folder: Path, gallery: Gallery, shard_size: int) -> None:
    """Write the manifest, or check that the one on disk describes the same build (else say what differs)."""
    wanted = {
        "format": 1,
        "side": gallery.side,
        "num_items": len(gallery),
        "shard_size": shard_size,
        "model_fingerprint": gallery.model_fingerprint,
        "gallery_fingerprint": gallery.content_fingerprint(),
    }
    path = folder / EMBEDDINGS_DIR / MANIFEST_FILE
    if path.exists():
        existing = _read_manifest_json(path)
        differs = [key for key in wanted if existing.get(key) != wanted[key]]
        if differs:
            raise CacheMismatchError(
                f"{path}: partial embeddings of another build ({', '.join(differs)} differ); "
                f"delete {path.parent} to start over"
            )
        return
    write_json_atomic(path, {**wanted, "gallery": gallery.to_json()}, indent=None)


def _write_shard(path: Path, embedding: torch.Tensor, start: int, stop: int, fingerprint: str) -> None:
    metadata = {"start": str(start), "stop": str(stop), "model_fingerprint": fingerprint}
    with atomic_path(path) as temp:
        save_file({"embedding": embedding.contiguous()}, str(temp), metadata=metadata)


def embed_shards(
    gallery: Gallery,
    folder: Path,
    rank: int = 0,  # this process's shards are rank, rank + world, ...
    world: int = 1,  # 1 -> every missing shard
    batch_size: int = DEFAULT_BATCH_SIZE,  # see the constant's reason
    shard_size: int = DEFAULT_SHARD_SIZE,  # see the constant's reason
    device: str = "cpu",  # "cuda" / "cuda:N" where present
    progress: bool = True,  # tqdm bar over items
    runtime: str = DEFAULT_RUNTIME,  # "onnx": embed with onnxruntime from an export folder (dcd export --onnx)
) -> int:
    """Embed this rank's missing shards of ``gallery`` with its dual model; returns the items embedded."""
    _prepare_manifest(folder, gallery, shard_size)
    ranges = shard_ranges(len(gallery), shard_size)
    todo = [s for s in range(rank, len(ranges), world) if not shard_path(folder, s).exists()]
    if not todo:
        return 0
    encoder = load_dual_encoder(gallery.model_dir, runtime, device)  # torch model or ONNX export folder
    total = sum(ranges[s][1] - ranges[s][0] for s in todo)
    with tqdm(total=total, unit="item", desc=f"embedding {gallery.side}", disable=not progress) as bar:
        for shard in todo:
            start, stop = ranges[shard]
            parts = []
            for batch_start in range(start, stop, batch_size):
                rows = range(batch_start, min(batch_start + batch_size, stop))
                if gallery.side == "images":
                    batch = encoder.encode_images([gallery.image_paths[r] for r in rows])
                else:
                    batch = encoder.encode_texts([gallery.item_texts[r] for r in rows])
                parts.append(_finite(batch["embedding"].float().cpu(), gallery, batch_start))  # (b, D)
                bar.update(len(rows))
            _write_shard(shard_path(folder, shard), torch.cat(parts), start, stop, gallery.model_fingerprint)
    return total


def _finite(embedding: torch.Tensor, gallery: Gallery, first: int) -> torch.Tensor:
    """``embedding`` (b, D) unless a row holds NaN or inf (NaN weights, say): an index of those would rank at
    random, so the build stops naming the first such item and the model's weights."""
    bad = (~torch.isfinite(embedding).all(dim=1)).nonzero().flatten()
    if len(bad):
        item = first + int(bad[0])
        what = (
            f"image {short_repr(gallery.image_ids[item])} ({gallery.image_paths[item]})"
            if gallery.side == "images"
            else f"caption {item} ({short_repr(gallery.item_texts[item])})"
        )
        raise CorruptFileError(
            Path(gallery.model_dir) / "model.safetensors",
            f"item {item}, {what}, is embedded as NaN or inf ({len(bad)} of this batch); the model's weights "
            "hold NaN or overflow: retrain or restore them",
        )
    return embedding


def _read_shard(path: Path, start: int, stop: int, fingerprint: str) -> np.ndarray:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata, embedding = handle.metadata() or {}, handle.get_tensor("embedding")
    except Exception as error:  # safetensors raises several types for truncated or corrupt files
        raise CorruptFileError(path, f"cannot read embedding shard ({error})") from None
    expected = {"start": str(start), "stop": str(stop), "model_fingerprint": fingerprint}
    if metadata != expected or embedding.ndim != 2 or embedding.shape[0] != stop - start:
        raise CorruptFileError(path, f"shard does not hold items [{start}, {stop}) of this build")
    return embedding.numpy()


def _read_manifest_json(path: Path) -> dict[str, Any]:
    """The embedding manifest as a JSON object with a positive integer shard size, else CorruptFileError."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, beyond the parser's limits
        raise CorruptFileError(path, f"embedding manifest is not valid JSON ({error})") from None
    shard_size = manifest.get("shard_size") if isinstance(manifest, dict) else None
    if type(shard_size) is not int or shard_size < 1:
        raise CorruptFileError(path, "not an embedding manifest (no positive integer shard_size)")
    return manifest


def load_manifest(folder: Path) -> tuple[dict[str, Any], Gallery]:
    path = folder / EMBEDDINGS_DIR / MANIFEST_FILE
    if not path.is_file():
        raise CorruptFileError(path, "no embeddings to merge (run dcd index build first)")
    manifest = _read_manifest_json(path)
    return manifest, Gallery.from_json(manifest.get("gallery"), path)


def _write_index(
    folder: Path, gallery: Gallery, embedding: np.ndarray, backend: str, params: dict[str, Any] | None
) -> None:
    """``vectors.safetensors``, then the backend, then ``gallery.json`` (the completion mark) last."""
    ids = np.arange(len(gallery), dtype=np.int64)
    (folder / GALLERY_FILE).unlink(missing_ok=True)  # incomplete until the backend and table are written
    with atomic_path(folder / VECTORS_FILE) as temp:
        save_file(
            {"embedding": torch.from_numpy(embedding), "ids": torch.from_numpy(ids)},
            str(temp),
            metadata={"model_fingerprint": gallery.model_fingerprint},
        )
    index = create_index(backend, embedding.shape[1], params, folder=folder)
    index.add(ids, embedding)
    index.save(folder)
    if hasattr(index, "close"):
        index.close()
    gallery.save(folder)


def saved_vectors(folder: Path, gallery: Gallery | None = None) -> tuple[np.ndarray, Gallery] | None:
    """The vectors and table of a complete index folder (of the same gallery and model, if one is given)."""
    if not (folder / GALLERY_FILE).exists() or not (folder / VECTORS_FILE).exists():
        return None
    saved = Gallery.load(folder)
    if gallery is not None and (
        saved.content_fingerprint() != gallery.content_fingerprint()
        or saved.model_fingerprint != gallery.model_fingerprint
    ):
        return None
    path = folder / VECTORS_FILE
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata, embedding = handle.metadata() or {}, handle.get_tensor("embedding")
    except Exception as error:
        raise CorruptFileError(path, f"cannot read the index vectors ({error})") from None
    if metadata.get("model_fingerprint") != saved.model_fingerprint or embedding.shape[0] != len(saved):
        raise CorruptFileError(path, f"vectors do not match {GALLERY_FILE} (model or item count)")
    return embedding.numpy(), saved


def merge_shards(
    folder: Path,
    backend: str = "faiss-flat",  # exact search; see dcd_itr.search.index.DEFAULT_BACKEND
    params: dict[str, Any] | None = None,  # backend parameters (HNSW m, IVF-PQ nlist, Milvus uri, ...)
) -> Gallery:
    """Concatenate every shard and write the index; with no shards, rebuild the backend from saved vectors."""
    if not (folder / EMBEDDINGS_DIR / MANIFEST_FILE).exists() and (reused := saved_vectors(folder)):
        _write_index(folder, reused[1], reused[0], backend, params)
        return reused[1]
    manifest, gallery = load_manifest(folder)
    ranges = shard_ranges(len(gallery), manifest["shard_size"])
    missing = [s for s in range(len(ranges)) if not shard_path(folder, s).exists()]
    if missing:
        raise ConfigError(
            f"{folder}: shards {missing[:10]} of {len(ranges)} are not embedded yet; "
            "run the remaining ranks or a plain `dcd index build`"
        )
    embedding = np.concatenate(
        [
            _read_shard(shard_path(folder, s), *ranges[s], gallery.model_fingerprint)
            for s in range(len(ranges))
        ]
    )  # (N, D)
    _write_index(folder, gallery, embedding, backend, params)
    shutil.rmtree(folder / EMBEDDINGS_DIR)
    return gallery


def build_index(
    gallery: Gallery,
    folder: Path,
    backend: str = "faiss-flat",  # exact search: the reference, fast up to ~1M vectors
    params: dict[str, Any] | None = None,  # None -> the backend's own defaults
    rank: int = 0,  # this process's shards are rank, rank + world, ...
    world: int = 1,  # 1 -> embed everything missing, then merge
    batch_size: int = DEFAULT_BATCH_SIZE,  # see the constant's reason
    shard_size: int = DEFAULT_SHARD_SIZE,  # see the constant's reason
    device: str = "cpu",  # "cuda" / "cuda:N" where present
    progress: bool = True,  # tqdm bar over items
    runtime: str = DEFAULT_RUNTIME,  # "onnx": embed with onnxruntime from an export folder (dcd export --onnx)
) -> BuildResult:
    """Embed (resuming) and, for a single-process run, merge into a searchable index folder."""
    started = time.perf_counter()
    if len(gallery) == 0:
        raise ConfigError(f"the gallery is empty: no {gallery.side} to index")
    folder.mkdir(parents=True, exist_ok=True)
    reused = saved_vectors(folder, gallery) if world == 1 else None
    if reused is not None:  # same gallery, same model: only the backend is rebuilt
        _write_index(folder, gallery, reused[0], backend, params)
        return BuildResult(folder, len(gallery), 0, time.perf_counter() - started, True)
    embedded = embed_shards(gallery, folder, rank, world, batch_size, shard_size, device, progress, runtime)
    merged = world == 1
    if merged:
        merge_shards(folder, backend, params)
    return BuildResult(folder, len(gallery), embedded, time.perf_counter() - started, merged)


def index_build(
    model: Path,
    data: Path,
    out: Path,
    split: str = "test",  # the benchmark's gallery
    side: str = "images",  # images -> text queries; captions -> image queries
    backend: str = DEFAULT_BACKEND,  # exact inner product
    params: dict[str, Any] | None = None,  # None -> the backend's defaults
    batch_size: int = DEFAULT_BATCH_SIZE,  # see the constant's reason
    shard_size: int = DEFAULT_SHARD_SIZE,  # see the constant's reason
    device: str = "cpu",  # "cuda" under torchrun means this rank's GPU
    shard: str | None = None,  # None -> torchrun's RANK/WORLD_SIZE, else one process
    progress: bool = True,  # tqdm bar
    runtime: str = DEFAULT_RUNTIME,  # "onnx": ``model`` is an export folder (dcd export --onnx)
    cross: Path
    | None = None,  # a grounded cross-encoder: also store its gallery-side encodings (cross_store)
) -> BuildResult:
    """Embed (resuming from shards on disk) and, for a single-process run, merge into ``out``; with ``cross``,
    also write the cross-encoder's gallery-side encodings beside the vectors (re-ranking then pays only the
    query's text side and the per-pair part)."""
    if backend not in INDEX_BACKENDS:
        raise ConfigError(f"unknown --backend {backend!r}; valid: {', '.join(INDEX_BACKENDS)}")
    check_runtime(runtime)
    if cross is not None and side != "images":
        raise ConfigError("--cross stores image-side encodings: build the index with --side images")
    rank, world = parse_shard(shard)
    gallery = Gallery.from_split(load_split(data, split), side, model, data)
    result = build_index(
        gallery,
        out,
        backend,
        params,
        rank,
        world,
        batch_size,
        shard_size,
        resolve_device(device),
        progress,
        runtime,
    )
    if result.merged:
        print(
            f"{out}: {result.num_items} {side} indexed with {backend} ({result.embedded_items} embedded now)"
        )
        if cross is not None:
            from dcd_itr.search.cross_store import build_cross_store  # imports the cross model's towers

            print(
                f"{build_cross_store(out, gallery, cross, resolve_device(device), progress=progress)}: written"
            )
    else:
        print(
            f"{out}: shard {rank}/{world} done; when every rank has finished run `dcd index merge --out {out}`"
        )
    return result


def index_merge(out: Path, backend: str = DEFAULT_BACKEND, params: dict[str, Any] | None = None) -> Gallery:
    gallery = merge_shards(out, backend, params)
    print(f"{out}: {len(gallery)} {gallery.side} merged into a {backend} index")
    return gallery
