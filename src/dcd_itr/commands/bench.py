"""`dcd bench`: the speed/quality benchmark -- full ranking by every system, projections to COCO / Flickr30K,
online query latency, and the plot (see :mod:`dcd_itr.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcd_itr.bench.latency import LatencyConfig
from dcd_itr.bench.runner import BenchConfig, bench_command_line, run_benchmark
from dcd_itr.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="speed benchmark: teacher vs students vs cascade, existing ITR models, query latency, plot",
        description="One run on one machine, every figure side by side: (1) full ranking of a split from raw "
        "images and captions by the fusion teacher, the cross-encoder student, the dual student and the cascade "
        "(time split into encoding and scoring, RSUM from the same scores); (2) pairs/s of full-size ViLT-B/32 "
        "and BLIP-ITM with random weights (timing only) and projected COCO-5K / Flickr30K-1K ranking times; "
        "(3) p50/p99 latency of one text query against synthetic galleries with FAISS exact, HNSW, IVF-Flat and "
        "IVF-PQ; (4) a plot of RSUM against time. Writes speed.json, speed.md and speed_plot.png under --out.",
    )
    parser.add_argument("--teacher", type=Path, help="fusion teacher model folder")
    parser.add_argument("--cross", type=Path, help="compressed cross-encoder student folder")
    parser.add_argument("--dual", type=Path, help="dual-encoder student folder")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another dual encoder (e.g. one trained without a teacher) ranked like the dual, under NAME; "
        "repeatable",
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset file or folder")
    parser.add_argument("--split", default="test", help="split to rank (default %(default)s)")
    parser.add_argument(
        "--cascade-k", type=int, nargs="+", default=[8, 16, 32], help="cascade sizes (default 8 16 32)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="output folder (default %(default)s)"
    )
    parser.add_argument(
        "--skip-existing-itr", action="store_true", help="do not time full-size ViLT / BLIP-ITM"
    )
    parser.add_argument(
        "--latency-sizes",
        type=int,
        nargs="*",
        default=[10_000, 100_000, 1_000_000],
        help="synthetic gallery sizes for the latency part; none to skip it (default 10000 100000 1000000)",
    )
    parser.add_argument(
        "--hnsw-max-size",
        type=int,
        help="build HNSW only up to this gallery size (its build is the slow one)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch and FAISS (default: all cores)")
    parser.add_argument(
        "--top-images",
        type=int,
        default=0,
        metavar="K",
        help="also write each caption's top K images per system to top_images.json (K <= 10; default off)",
    )
    parser.add_argument("--progress", action="store_true", help="progress bars while pairs are scored")
    parser.set_defaults(handler=_run)


def parse_baselines(specs: list[str]) -> dict[str, Path]:
    """``["name=dir", ...]`` -> ``{name: Path(dir)}``."""
    baselines = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder:
            raise ConfigError(f"--baseline {spec!r}: expected NAME=DIR")
        baselines[name.strip()] = Path(folder)
    return baselines


def _run(args: argparse.Namespace) -> None:
    latency = LatencyConfig(sizes=args.latency_sizes, hnsw_max_size=args.hnsw_max_size)
    config = BenchConfig(
        data=args.data,
        split=args.split,
        teacher=args.teacher,
        cross=args.cross,
        dual=args.dual,
        cascade_ks=args.cascade_k,
        out=args.out,
        skip_existing_itr=args.skip_existing_itr,
        latency=latency if args.latency_sizes else None,
        threads=args.threads,
        baselines=parse_baselines(args.baseline),
        top_images=args.top_images,
        progress=args.progress,
    )
    config.command = bench_command_line(config)
    run_benchmark(config)
