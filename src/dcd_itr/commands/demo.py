"""`dcd demo`: argument parsing for the demo pipeline (:mod:`dcd_itr.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcd_itr.data.emoji import DEFAULT_SEED
from dcd_itr.demo.pipeline import demo


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the main job on the emoji benchmark (data, features, teacher, DCD students, evaluation and "
        "speed, index, report)",
        description="Run the whole pipeline on the embedded emoji benchmark: build the data, cache tower "
        "features, train the no-teacher baseline and the fusion teacher, distil both students with DCD, rank the "
        "test split once per system from raw images (R@K and time from the same run), index the test images with "
        "the dual student, and write RESULTS/report.md. A stage whose inputs (configs, checkpoint hashes, data "
        "and feature fingerprints) are unchanged is reused; --fresh redoes everything.",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data/emoji"), help="where the benchmark is built"
    )
    parser.add_argument(
        "--results", type=Path, default=Path("results/demo"), help="where results are written"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="data split seed (default %(default)s)"
    )
    parser.add_argument("--cache", type=Path, default=Path("cache/features"), help="feature cache folder")
    parser.add_argument("--fresh", action="store_true", help="redo every stage instead of reusing")
    parser.set_defaults(handler=lambda a: demo(a.data_dir, a.results, a.seed, a.fresh, a.cache))
