"""The fusion teacher over several seeds on the emoji benchmark (teacher issue's target: mean test RSUM at least
the Lite0-128 dual baseline's + 30, trained in at most 15 minutes on 2 CPU cores).

    python benchmarks/teacher_seeds.py [--data data/emoji] [--features cache/features] [--seeds 0 1 2]

Each seed changes both the fusion stage's seed and the similarity paths' pre-training seed
(configs/emoji_teacher.yaml, everything else as committed; those settings were chosen on val). Each run's
training wall time is measured around `train_teacher` (path pre-training included). The baseline row is read
from benchmarks/results/baselines.json (python benchmarks/baselines.py). Writes
benchmarks/results/teacher_seeds.json and teacher_seeds.md. Finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from dcd_itr.config import load_config
from dcd_itr.evaluate import evaluate_model
from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.metrics import METRIC_COLUMNS
from dcd_itr.tasks.teacher import TeacherTrainingConfig, train_teacher

BASELINE_ROW = "trained dual, InfoNCE (lite0 @ 128 px)"
TARGET_MARGIN = 30.0
TARGET_MINUTES = 15.0


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """Train the teacher with one seed (reused when finished) and evaluate it on the test split."""
    out = args.runs / f"teacher_seed{seed}"
    done = out / "test_metrics.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    config = load_config(
        Path("configs/emoji_teacher.yaml"),
        TeacherTrainingConfig,
        [
            f"data={args.data}",
            f"features={args.features}",
            f"out={out}",
            f"train.seed={seed}",
            f"path_training.train.seed={seed}",
        ],
    )
    start = time.perf_counter()
    train_teacher(config, progress=False)
    seconds = time.perf_counter() - start
    metrics = evaluate_model(
        out / "best", args.data, args.features, "test", args.runs / "scores", progress=False
    )
    metrics = {**metrics, "seed": seed, "training_seconds": seconds}
    write_json_atomic(done, metrics)
    return metrics


def markdown(runs: list[dict], baseline: dict | None) -> str:
    lines = [
        "| teacher seed | " + " | ".join(METRIC_COLUMNS.values()) + " | training time |",
        "|---|" + "---:|" * (len(METRIC_COLUMNS) + 1),
    ]
    for run in runs:
        cells = " | ".join(f"{run[c]:.1f}" for c in METRIC_COLUMNS)
        lines.append(f"| {run['seed']} | {cells} | {run['training_seconds'] / 60:.1f} min |")
    rsums = [run["rsum"] for run in runs]
    mean = statistics.mean(rsums)
    spread = statistics.pstdev(rsums)
    lines.append(f"\nTeacher test RSUM over {len(runs)} seeds: **{mean:.1f} ± {spread:.1f}**.")
    if baseline is not None:
        floor = baseline["rsum"][0]
        met = "met" if mean >= floor + TARGET_MARGIN else "NOT met"
        lines.append(
            f"Target mean >= Lite0-128 dual baseline ({floor:.1f}) + {TARGET_MARGIN:.0f} = "
            f"{floor + TARGET_MARGIN:.1f}: {met} (margin {mean - floor:+.1f})."
        )
    slowest = max(run["training_seconds"] for run in runs) / 60
    met = "met" if slowest <= TARGET_MINUTES else "NOT met"
    lines.append(
        f"Slowest training run {slowest:.1f} min; target <= {TARGET_MINUTES:.0f} min on 2 CPU cores: {met}."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/emoji"))
    parser.add_argument("--features", type=Path, default=Path("cache/features"))
    parser.add_argument("--runs", type=Path, default=Path("results/teacher_seeds"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(args, seed))
        print(
            f"seed {seed}: RSUM {runs[-1]['rsum']:.1f} in {runs[-1]['training_seconds'] / 60:.1f} min",
            flush=True,
        )
    baselines_path = args.results / "baselines.json"
    baseline = None
    if baselines_path.is_file():
        baseline = json.loads(baselines_path.read_text(encoding="utf-8"))["rows"].get(BASELINE_ROW)
    table = markdown(runs, baseline)
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        args.results / "teacher_seeds.json",
        {
            "machine": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "seeds": args.seeds,
            "runs": runs,
            "baseline": baseline,
        },
    )
    write_text_atomic(args.results / "teacher_seeds.md", table)
    print(table)


if __name__ == "__main__":
    main()
