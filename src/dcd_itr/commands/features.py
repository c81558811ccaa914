"""`dcd features`: run frozen towers once over a dataset and cache their outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcd_itr.data.dataset import SPLITS
from dcd_itr.features import DEFAULT_SHARD_SIZE, TOWER_BATCH_SIZE, cache_features


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features",
        help="cache frozen tower outputs (grid/token features and pooled vectors) for a dataset",
        description="Run frozen towers once per dataset and store token-level and pooled features as "
        "safetensors shards with a manifest. A rerun reuses the cache, resumes an interrupted one from its last "
        "complete shard, and refuses (saying what differs) a cache built from other inputs.",
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset file or folder")
    parser.add_argument(
        "--out", type=Path, required=True, help="cache folder (one subfolder per view and split)"
    )
    parser.add_argument(
        "--image-encoder",
        action="append",
        default=[],
        help="image tower as NAME or NAME@SIZE, repeatable (e.g. efficientnet-lite2@260, hf:path/to/vit)",
    )
    parser.add_argument(
        "--text-encoder",
        action="append",
        default=[],
        help="text tower as NAME or NAME@MAX_TOKENS, repeatable (default length 40; e.g. minilm-l6)",
    )
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits (default: all)")
    parser.add_argument("--fp16", action="store_true", help="store floats as float16 (half the disk)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="items per shard")
    parser.add_argument("--batch-size", type=int, default=TOWER_BATCH_SIZE, help="tower batch size")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto (CUDA when present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--skip-bad-records",
        action="store_true",
        help="skip, count and list bad records and unreadable images instead of stopping at the first",
    )
    parser.set_defaults(
        handler=lambda a: cache_features(
            a.data,
            a.out,
            a.image_encoder,
            a.text_encoder,
            [s.strip() for s in a.splits.split(",") if s.strip()],
            "float16" if a.fp16 else "float32",
            a.shard_size,
            a.batch_size,
            a.device,
            not a.quiet,
            a.skip_bad_records,
        )
    )
