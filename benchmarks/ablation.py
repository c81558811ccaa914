"""The DCD ablation on the emoji benchmark: each student trained with the `none`, `static`, `wsl` and `dcd` losses,
several seeds each, same budget, test R@K mean ± std, beside the teacher's and the no-teacher baseline's rows.

    python benchmarks/ablation.py --teacher results/demo/teacher/best [--students dual cross] [--seeds 0 1 2]

Needs the emoji benchmark, its feature cache and a trained teacher (`make demo` makes all three). Settings come
from configs/emoji_dcd_{dual,cross}.yaml; only the loss and the seed change between rows. All runs share one
teacher-score cache, so it is built once; each run's time per epoch and the cache's share are reported.
Writes benchmarks/results/ablation.json and ablation.md (the README's table).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

from dcd_itr.commands.eval import evaluate_model
from dcd_itr.config import load_config
from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.tasks.distill import DistillConfig, distill

LOSSES = ["none", "static", "wsl", "dcd"]
COLUMNS = [
    "image_to_text_R@1",
    "image_to_text_R@5",
    "image_to_text_R@10",
    "text_to_image_R@1",
    "text_to_image_R@5",
    "text_to_image_R@10",
    "rsum",
]


def run_one(args, student: str, loss: str, seed: int) -> dict:
    out = args.runs / f"{student}_{loss}_seed{seed}"
    config = load_config(
        Path("configs") / f"emoji_dcd_{student}.yaml",
        DistillConfig,
        [
            f"data={args.data}",
            f"features={args.features}",
            f"teacher={args.teacher}",
            f"teacher_cache={args.teacher_cache}",
            f"out={out}",
            f"loss.name={loss}",
            f"train.seed={seed}",
        ],
    )
    distill(config, progress=False)
    metrics = evaluate_model(
        out / "best", args.data, args.features, "test", args.runs / "scores", progress=False
    )
    timing = json.loads((out / "timing.json").read_text())
    epochs = timing["seconds_per_epoch"]
    metrics["seconds_per_epoch"] = statistics.mean(epochs) if epochs else float("nan")
    metrics["teacher_cache_seconds"] = timing["teacher_cache_seconds"]
    return metrics


def cell(values: list[float]) -> str:
    return (
        f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}"
        if len(values) > 1
        else f"{values[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("results/demo/teacher/best"))
    parser.add_argument("--baseline", type=Path, default=Path("results/demo/baseline_dual/best"))
    parser.add_argument("--data", type=Path, default=Path("data/emoji"))
    parser.add_argument("--features", type=Path, default=Path("cache/features"))
    parser.add_argument("--teacher-cache", type=Path, default=Path("results/demo/teacher_scores"))
    parser.add_argument("--runs", type=Path, default=Path("results/ablation"))
    parser.add_argument("--students", nargs="+", default=["dual", "cross"], choices=["dual", "cross"])
    parser.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    scores = args.runs / "scores"
    reference = {
        "teacher": evaluate_model(args.teacher, args.data, args.features, "test", scores, progress=False),
        "dual baseline (no teacher)": evaluate_model(
            args.baseline, args.data, args.features, "test", progress=False
        ),
    }
    results: dict[str, list[dict]] = {}
    for student in args.students:
        for loss in args.losses:
            results[f"{student} / {loss}"] = [run_one(args, student, loss, seed) for seed in args.seeds]
            print(student, loss, cell([r["rsum"] for r in results[f"{student} / {loss}"]]), flush=True)
    header = "| row | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | RSUM | s/epoch |"
    lines = [header, "|---|" + "---:|" * 8]
    for name, metrics in reference.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[c]:.1f}" for c in COLUMNS) + " | |")
    for name, runs in results.items():
        cells = [cell([r[c] for r in runs]) for c in COLUMNS]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {statistics.mean(r['seconds_per_epoch'] for r in runs):.1f} |"
        )
    table = "\n".join(lines) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        args.results / "ablation.json",
        {
            "machine": platform.platform(),
            "seeds": args.seeds,
            "reference": reference,
            "runs": results,
        },
    )
    write_text_atomic(args.results / "ablation.md", table)
    print(table)


if __name__ == "__main__":
    main()
