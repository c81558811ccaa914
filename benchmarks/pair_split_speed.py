"""Teacher vs compressed cross student pair scoring, current path vs the split scorer (issue 13's >= 2x target).

From cached tower features of the scenes test split: the first ``--images`` images x all captions, timed per
model in alternating rounds on one torch thread (dcd_itr.speed.pair_split), plus the split path's agreement with
each model's own scores on ``--agreement-images`` x all captions. Writes benchmarks/results/pair_split_speed.{md,json}.

    python benchmarks/pair_split_speed.py --data /work/data/scenes --features /work/scratch/teacher/cache_pre \
        --teacher teachers/scenes_grounded --student cut=/work/demo_run/results/demo_scenes/dcd_cross/best
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from dcd_itr.features import load_split_features
from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.models.registry import load_model
from dcd_itr.speed.pair_split import MODES, agreement, pair_split_speed, subset


def markdown(report: dict) -> str:
    lines = [
        "# Pair scoring: teacher vs compressed cross student, current path vs split scorer",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Split {report['split']}: {report['images']} images x {report['captions']} captions = "
        f"{report['pairs']:,} pairs per round, best of {report['repeats']} alternating rounds; "
        f"{report['threads']} torch thread; load average {report['load_start']:.1f} at the start, "
        f"{report['load_end']:.1f} at the end (shared 2-core machine).",
        "",
        "| model | fusion layers | "
        + " | ".join(f"{m} pairs/s" for m in MODES)
        + " | "
        + " | ".join(f"{m} vs teacher" for m in MODES)
        + " |",
        "|---|---|" + "---|" * (2 * len(MODES)),
    ]
    teacher = report["speed"]["teacher"]
    for name, row in report["speed"].items():
        rates = [row[f"{m}_pairs_per_s"] for m in MODES]
        ratios = [row[f"{m}_pairs_per_s"] / teacher[f"{m}_pairs_per_s"] for m in MODES]
        lines.append(
            f"| {name} | {report['layers'][name]} | "
            + " | ".join(f"{r:,.0f}" for r in rates)
            + " | "
            + " | ".join(f"{r:.2f}x" for r in ratios)
            + " |"
        )
    lines += [
        "",
        "current = `model.score_matrix` on its encodings (one image at a time); per-pair = the split scorer's "
        "vectorised per-pair part with both sides encoded beforehand (what re-ranking pays with the gallery side "
        "stored); end-to-end = the split scorer's image + text encodings of these items + its per-pair part.",
        "",
        "Agreement of the split scorer with each model's own scores "
        f"({report['agreement_images']} images x all captions):",
        "",
        "| model | max abs logit difference | logit range | images with identical caption ranking | "
        "images with identical top-10 captions | captions with the same top-1 image |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["agreement"].items():
        lines.append(
            f"| {name} | {row['max_abs_difference']:.2e} | {row['logit_range']:.1f} | "
            f"{100 * row['images_same_caption_ranking']:.1f}% | {100 * row['images_same_top10_captions']:.1f}% | "
            f"{100 * row['captions_same_top1_image']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", action="append", default=[], help="NAME=FOLDER (repeatable)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=40)  # 40 x 600 captions = 24K pairs a round
    parser.add_argument("--agreement-images", type=int, default=100)  # 60K real pairs compared
    parser.add_argument(
        "--repeats", type=int, default=3
    )  # best of 3: a loaded neighbour hits every model alike
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    models = {"teacher": load_model(args.teacher).eval()}
    models |= {
        name: load_model(Path(folder)).eval() for name, folder in (s.split("=", 1) for s in args.student)
    }
    teacher = models["teacher"]
    features = load_split_features(
        args.data, args.features, args.split, teacher.image_views, teacher.text_views
    )
    texts = features.texts
    check = {
        name: agreement(m, subset(features.images, args.agreement_images), texts)
        for name, m in models.items()
    }
    print("agreement", check, flush=True)
    speed = pair_split_speed(models, subset(features.images, args.images), texts, args.repeats)
    for name, row in speed.items():
        print(name, {k: round(v) for k, v in row.items() if k.endswith("pairs_per_s")}, flush=True)
    report = {
        "command": "python " + shlex.join(sys.argv),
        "split": args.split,
        "images": args.images,
        "captions": features.split.num_captions,
        "pairs": next(iter(speed.values()))["pairs"],
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "machine": platform.platform(),
        "layers": {name: m.fusion_depth for name, m in models.items()},
        "agreement_images": args.agreement_images,
        "agreement": check,
        "speed": speed,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "pair_split_speed.json", report)
    write_text_atomic(args.results / "pair_split_speed.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
