"""`dcd features`: run frozen towers once over a dataset and cache their outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcd_itr.data.dataset import SPLITS
from dcd_itr.data.image_check import drop_unreadable
from dcd_itr.data.loading import load_dataset
from dcd_itr.encoders import build_image_tower, build_text_tower
from dcd_itr.features import DEFAULT_SHARD_SIZE, CacheResult, build_feature_cache, parse_view

DEFAULT_TEXT_LENGTH = 40  # the DCD reference truncates captions at 40 tokens


def cache_features(
    data: Path,
    out: Path,
    image_encoders: list[str],
    text_encoders: list[str],
    splits: tuple[str, ...] = SPLITS,
    storage_dtype: str = "float32",
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 32,
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
    parser.add_argument("--batch-size", type=int, default=32, help="tower batch size")
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
