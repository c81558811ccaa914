"""Where the split scorer's per-pair time goes, teacher vs student (dcd_itr.speed.pair_split.stage_seconds).

    python benchmarks/pair_stages.py --data /work/data/scenes --features /work/scratch/teacher/cache_pre \
        --teacher teachers/scenes_grounded --student cut=/work/demo_run/results/demo_scenes/dcd_cross/best

Best of ``--repeats`` alternating rounds on ``--images`` x all captions, one torch thread; writes
benchmarks/results/pair_stages.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

from dcd_itr.features import load_split_features
from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.models.registry import load_model
from dcd_itr.speed.pair_split import stage_seconds, subset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", action="append", default=[], help="NAME=FOLDER (repeatable)")
    parser.add_argument("--images", type=int, default=20)  # 20 x 600 captions = 12K pairs a round
    parser.add_argument("--repeats", type=int, default=3)  # best of 3 alternating rounds
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    models = {"teacher": load_model(args.teacher).eval()}
    models |= {
        name: load_model(Path(folder)).eval() for name, folder in (s.split("=", 1) for s in args.student)
    }
    teacher = models["teacher"]
    features = load_split_features(args.data, args.features, "test", teacher.image_views, teacher.text_views)
    images, texts = subset(features.images, args.images), features.texts
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for name, model in models.items():
            stages = stage_seconds(model, images, texts)
            if name not in best or sum(stages.values()) < sum(best[name].values()):
                best[name] = stages
    pairs = args.images * features.split.num_captions
    stage_names = list(next(iter(best.values())))
    lines = [
        "# Per-pair time by stage, split scorer (teacher vs student)",
        "",
        f"Command: `python {shlex.join(sys.argv)}`",
        "",
        f"{pairs:,} pairs (test split, {args.images} images x all captions), best of {args.repeats} alternating "
        f"rounds, {torch.get_num_threads()} torch thread, load average {load_start:.1f} at the start.",
        "",
        "| model | fusion layers | "
        + " | ".join(f"{s} (us/pair)" for s in stage_names)
        + " | total us/pair |",
        "|---|---|" + "---|" * (len(stage_names) + 1),
    ]
    for name, stages in best.items():
        lines.append(
            f"| {name} | {models[name].fusion_depth} | "
            + " | ".join(f"{1e6 * stages[s] / pairs:.0f}" for s in stage_names)
            + f" | {1e6 * sum(stages.values()) / pairs:.0f} |"
        )
    report = {
        "command": "python " + shlex.join(sys.argv),
        "pairs": pairs,
        "load_start": load_start,
        "stages": best,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "pair_stages.json", report)
    write_text_atomic(args.results / "pair_stages.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
