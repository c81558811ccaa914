"""`dcd demo`: argument parsing for the demo pipeline (:mod:`dcd_itr.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcd_itr.data.emoji import DEFAULT_SEED
from dcd_itr.demo.outputs import DEFAULT_CACHE, DEFAULT_RESULTS
from dcd_itr.demo.packaged import package_from_run
from dcd_itr.demo.pipeline import demo
from dcd_itr.demo.plan import BENCHMARKS, plan_for
from dcd_itr.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the main job on the emoji-scenes relation benchmark (data, features, teacher, DCD students, "
        "cascade, evaluation with twin scores and speed, index, report); --benchmark emoji for single emoji",
        description="Run the whole pipeline. --benchmark scenes (default): build the emoji-scenes relation "
        "benchmark, cache the students' cheap view (Lite0 @ 128 px), the teacher's region view and the text "
        "tokens, train the position-aware dual without a teacher, take the packaged grounded region teacher "
        "(checked against its manifest's sha256; --retrain-teacher trains it with configs/scenes_teacher.yaml "
        "instead), distil the DCD dual student and the compressed cross student, rank the test split once per "
        "system from raw images (R@K, twin scores and time from the same run; cascades k = 8/16/32), index the "
        "test images with the dual student and write RESULTS/report.md. --benchmark emoji runs the same stages on "
        "the single-emoji benchmark with the fusion teacher. A stage whose inputs (configs, checkpoint hashes, "
        "data and feature fingerprints) are unchanged is reused; --fresh redoes everything.",
    )
    parser.add_argument(
        "--benchmark", choices=BENCHMARKS, default="scenes", help="which benchmark (default %(default)s)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where the benchmark is built (default data/BENCHMARK)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"where results are written (default {DEFAULT_RESULTS['scenes']}; emoji: {DEFAULT_RESULTS['emoji']})",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="data split seed (default %(default)s)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"feature cache folder (default {DEFAULT_CACHE['scenes']}; emoji: {DEFAULT_CACHE['emoji']})",
    )
    parser.add_argument("--fresh", action="store_true", help="redo every stage instead of reusing")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (one torch thread each) for the feature views and the training stages that do "
        "not depend on each other (default: one per core, at most 2; 1: everything in this process)",
    )
    parser.add_argument(
        "--retrain-teacher",
        action="store_true",
        help="train the teacher with its committed config instead of using the packaged one (scenes)",
    )
    parser.add_argument(
        "--package-teacher",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="instead of running: package a finished `dcd train-teacher` run (its best/ and config.yaml) as the "
        "demo's shipped teacher (teachers/scenes_grounded: weights, model.yaml, manifest.json with sha256)",
    )
    parser.add_argument(
        "--teacher-command",
        default="dcd train-teacher --config configs/scenes_teacher.yaml",
        help="with --package-teacher: the command that trained it, recorded in the manifest",
    )
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> Path:
    benchmark = args.benchmark
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    plan = plan_for(benchmark, retrain_teacher=args.retrain_teacher, workers=args.workers)
    if args.package_teacher is not None:
        if plan.packaged_teacher is None:
            raise ConfigError(f"--benchmark {benchmark} has no packaged teacher")
        manifest = package_from_run(args.package_teacher, plan.packaged_teacher, args.teacher_command)
        print(f"packaged teacher written: {manifest}")
        return manifest
    return demo(
        args.data_dir or Path(f"data/{benchmark}"),
        args.results or Path(DEFAULT_RESULTS[benchmark]),
        args.seed,
        args.fresh,
        args.cache or Path(DEFAULT_CACHE[benchmark]),
        plan=plan,
    )
