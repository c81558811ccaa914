"""`dcd index build | merge | info`: embed a gallery with a dual encoder into a searchable index folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dcd_itr.export.runtime import DEFAULT_RUNTIME, RUNTIMES
from dcd_itr.search.base import read_metadata
from dcd_itr.search.build import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, index_build, index_merge
from dcd_itr.search.gallery import SIDES, Gallery
from dcd_itr.search.index import DEFAULT_BACKEND, INDEX_BACKENDS, parse_params


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    """``--runtime {torch,onnx}`` (the library checks it again and names the valid values)."""
    parser.add_argument(
        "--runtime",
        default=DEFAULT_RUNTIME,
        choices=list(RUNTIMES),
        help="torch (--model is a model folder) or onnx (--model is a `dcd export --onnx` folder); "
        "default %(default)s",
    )


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
    build.add_argument(
        "--cross",
        type=Path,
        help="grounded cross-encoder folder: also store its gallery-side encodings, so that "
        "`dcd search/serve --cross` (the same model) re-ranks paying only the query side and the pairs",
    )
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
            a.cross,
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
