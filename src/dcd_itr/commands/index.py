"""`dcd index build | merge | info`: embed a gallery with a dual encoder into a searchable index folder."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from dcd_itr.data.loading import load_split
from dcd_itr.errors import ConfigError
from dcd_itr.export.runtime import DEFAULT_RUNTIME, RUNTIMES, check_runtime
from dcd_itr.search.base import read_metadata
from dcd_itr.search.build import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SHARD_SIZE,
    BuildResult,
    build_index,
    merge_shards,
)
from dcd_itr.search.gallery import SIDES, Gallery
from dcd_itr.search.index import DEFAULT_BACKEND, INDEX_BACKENDS, parse_params


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4); None -> torchrun's ``RANK``/``WORLD_SIZE`` when set, else (0, 1)."""
    if text is None:
        text = f"{os.environ['RANK']}/{os.environ['WORLD_SIZE']}" if "WORLD_SIZE" in os.environ else "0/1"
    rank, sep, world = text.partition("/")
    if not sep or not rank.isdigit() or not world.isdigit() or not 0 <= int(rank) < int(world):
        raise ConfigError(f"--shard {text!r}: expected RANK/WORLD with 0 <= RANK < WORLD, e.g. 0/4")
    return int(rank), int(world)


def _device_for_rank(device: str) -> str:
    """Under torchrun, plain "cuda" means this rank's GPU (``LOCAL_RANK``)."""
    return f"cuda:{os.environ['LOCAL_RANK']}" if device == "cuda" and "LOCAL_RANK" in os.environ else device


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
    runtime: str = DEFAULT_RUNTIME,  # "onnx": --model is an export folder (dcd export --onnx)
) -> BuildResult:
    """Embed (resuming from shards on disk) and, for a single-process run, merge into ``out``."""
    if backend not in INDEX_BACKENDS:
        raise ConfigError(f"unknown --backend {backend!r}; valid: {', '.join(INDEX_BACKENDS)}")
    check_runtime(runtime)
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
        _device_for_rank(device),
        progress,
        runtime,
    )
    if result.merged:
        print(
            f"{out}: {result.num_items} {side} indexed with {backend} ({result.embedded_items} embedded now)"
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


def index_info(index: Path) -> dict[str, Any]:
    """The backend metadata and gallery summary of an index folder."""
    metadata, gallery = read_metadata(index), Gallery.load(index)
    info = {
        "backend": metadata["backend"],
        "params": metadata["params"],
        "dim": metadata["dim"],
        "count": metadata["count"],
        "side": gallery.side,
        "items": len(gallery),
        "images": len(gallery.image_ids),
        "model_dir": gallery.model_dir,
        "model_fingerprint": gallery.model_fingerprint,
        "source": gallery.source,
    }
    print(json.dumps(info, indent=2))
    return info


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    """``--runtime {torch,onnx}`` (validated again by the library, which names the valid values)."""
    parser.add_argument(
        "--runtime",
        default=DEFAULT_RUNTIME,
        choices=list(RUNTIMES),
        help="torch (--model is a model folder) or onnx (--model is a `dcd export --onnx` folder); "
        "default %(default)s",
    )


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", default=DEFAULT_BACKEND, choices=list(INDEX_BACKENDS), help="default %(default)s"
    )
    parser.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="backend parameter, repeatable: faiss-hnsw m, ef_search; faiss-ivfflat nlist, nprobe; "
        "faiss-ivfpq nlist, m, nbits, nprobe; "
        "milvus uri (default: INDEX/milvus.db), collection, index_type",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("index", help="build a search index of a gallery with a dual encoder")
    commands = parser.add_subparsers(dest="index_command", required=True, metavar="<build|merge|info>")
    build = commands.add_parser(
        "build",
        help="embed a split's images or captions and index them",
        description="Embeds the gallery in batches (resumable: shards are written atomically and a rerun "
        "continues), then writes the index, the gallery table and the model fingerprint. With --shard RANK/WORLD "
        "(or under torchrun) each process embeds its shards; a plain build or `dcd index merge` merges them.",
    )
    build.add_argument("--model", type=Path, required=True, help="dual-encoder model folder")
    build.add_argument("--data", type=Path, required=True, help="dataset file or folder")
    build.add_argument("--split", default="test", help="split to index (default %(default)s)")
    build.add_argument("--side", default="images", choices=SIDES, help="what to index (default %(default)s)")
    build.add_argument("--out", type=Path, required=True, help="index folder")
    _add_backend_options(build)
    build.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="default %(default)s")
    build.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="items per resumable shard")
    build.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default %(default)s)")
    build.add_argument("--shard", help="RANK/WORLD: embed only this process's shards (default: torchrun env)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runtime_option(build)
    build.set_defaults(
        handler=lambda a: index_build(
            a.model,
            a.data,
            a.out,
            a.split,
            a.side,
            a.backend,
            parse_params(a.param),
            a.batch_size,
            a.shard_size,
            a.device,
            a.shard,
            not a.quiet,
            a.runtime,
        )
    )
    merge = commands.add_parser(
        "merge", help="merge embedded shards (or re-index saved vectors with another backend)"
    )
    merge.add_argument("--out", type=Path, required=True, help="index folder")
    _add_backend_options(merge)
    merge.set_defaults(handler=lambda a: index_merge(a.out, a.backend, parse_params(a.param)))
    info = commands.add_parser("info", help="print an index folder's metadata")
    info.add_argument("--index", type=Path, required=True, help="index folder")
    info.set_defaults(handler=lambda a: index_info(a.index))
