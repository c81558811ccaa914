"""What distillation costs per epoch: one epoch of a student with the `dcd` loss against one with `none`, same
student, same candidate lists, the teacher-score cache already built, alternating (none, dcd, none, dcd, ...) so
that a machine's changing load hits both alike. Also times building the teacher-score cache once, from scratch.

    python benchmarks/epoch_cost.py --teacher results/demo/teacher/best [--student dual] [--repeats 3]

Writes benchmarks/results/epoch_cost_<student>.json and .md. Target (DCD issue): a dcd epoch <= 1.3x a none epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from emoji_distill import distill_emoji

TARGET_RATIO = 1.3


def one_epoch(args: argparse.Namespace, loss: str, cache: Path, work: Path, tag: str) -> dict:
    """Train one epoch into a fresh folder; return the run's timing.json."""
    out = work / f"{loss}_{tag}"
    distill_emoji(
        args.student,
        args.data,
        args.features,
        args.teacher,
        cache,
        out,
        f"loss.name={loss}",
        "train.epochs=1",
    )
    timing = json.loads((out / "timing.json").read_text(encoding="utf-8"))
    shutil.rmtree(out)
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("results/demo/teacher/best"))
    parser.add_argument("--data", type=Path, default=Path("data/emoji"))
    parser.add_argument("--features", type=Path, default=Path("cache/features"))
    parser.add_argument("--student", choices=["dual", "cross"], default="dual")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--teacher-cache",
        type=Path,
        default=None,
        help="reuse this teacher-score cache (e.g. results/demo/teacher_scores) instead of building and timing one",
    )
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dcd-epoch-cost-") as folder:
        work = Path(folder)
        cache = args.teacher_cache or work / "teacher_cache"
        first = one_epoch(args, "dcd", cache, work, "first")  # builds the cache unless --teacher-cache has it
        epochs: dict[str, list[float]] = {"none": [], "dcd": []}
        for repeat in range(args.repeats):
            for loss in ("none", "dcd"):
                timing = one_epoch(args, loss, cache, work, str(repeat))
                epochs[loss].append(timing["seconds_per_epoch"][0])
    none, dcd = statistics.median(epochs["none"]), statistics.median(epochs["dcd"])
    ratio = dcd / none
    cache_seconds = first["teacher_cache_seconds"]
    lines = [
        f"| {args.student} student, one epoch | median s | runs (s) |",
        "|---|---:|---|",
        f"| none | {none:.1f} | {', '.join(f'{s:.1f}' for s in epochs['none'])} |",
        f"| dcd (teacher-score cache reused) | {dcd:.1f} | {', '.join(f'{s:.1f}' for s in epochs['dcd'])} |",
        "",
        f"A dcd epoch takes {ratio:.2f}x a none epoch (target <= {TARGET_RATIO}x: "
        f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}).",
    ]
    if args.teacher_cache is None:
        lines[-1] += (
            f" Building the teacher-score cache once (the teacher scores every pool of the train split, both "
            f"directions) took {cache_seconds:.1f} s = {cache_seconds / none:.1f} none-epochs; every later epoch, "
            "loss and seed reuses it."
        )
    else:
        lines[-1] += f" The teacher-score cache was reused from {args.teacher_cache}."
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"epoch_cost_{args.student}"
    write_json_atomic(
        args.results / f"{stem}.json",
        {
            "machine": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "seconds_per_epoch": epochs,
            "ratio_median": ratio,
            "teacher_cache_seconds": cache_seconds,
        },
    )
    write_text_atomic(args.results / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
