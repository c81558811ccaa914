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

import torch

from dcd_itr.evaluate import evaluate_model
from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.metrics import METRIC_COLUMNS
from emoji_distill import distill_emoji

LOSSES = ["none", "static", "wsl", "dcd"]
COLUMNS = list(METRIC_COLUMNS)


def run_one(args, student: str, loss: str, seed: int) -> dict:
    """Train one student with one loss and seed, evaluate its best checkpoint on test; a finished run is reused."""
    out = args.runs / f"{student}_{loss}_seed{seed}"
    done = out / "test_metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    distill_emoji(
        student,
        args.data,
        args.features,
        args.teacher,
        args.teacher_cache,
        out,
        f"loss.name={loss}",
        f"train.seed={seed}",
    )
    metrics = evaluate_model(
        out / "best", args.data, args.features, "test", args.runs / "scores", progress=False
    )
    timing = json.loads((out / "timing.json").read_text())
    epochs = timing["seconds_per_epoch"]
    metrics["seconds_per_epoch"] = statistics.mean(epochs) if epochs else float("nan")
    metrics["teacher_cache_seconds"] = timing["teacher_cache_seconds"]
    metrics["training_seconds"] = timing["training_seconds"]
    write_json_atomic(done, metrics)
    return metrics


def cell(values: list[float]) -> str:
    return (
        f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}"
        if len(values) > 1
        else f"{values[0]:.1f}"
    )


def verdicts(results: dict[str, list[dict]]) -> list[str]:
    """Per student: is `dcd` above `static` and `none` by more than one seed standard deviation (the larger of
    the two rows'), and how a `dcd` epoch's time compares with a `none` epoch's."""
    lines = []
    for student in sorted({name.split(" / ")[0] for name in results}):
        runs = {
            name.split(" / ")[1]: rows for name, rows in results.items() if name.startswith(f"{student} / ")
        }
        if "dcd" not in runs:
            continue
        dcd = [r["rsum"] for r in runs["dcd"]]
        for other in ("static", "none", "wsl"):
            if other not in runs:
                continue
            values = [r["rsum"] for r in runs[other]]
            gap = statistics.mean(dcd) - statistics.mean(values)
            spread = max(statistics.pstdev(dcd), statistics.pstdev(values)) if len(dcd) > 1 else 0.0
            verdict = "yes" if gap > spread else "no"
            lines.append(
                f"- {student}: dcd - {other} = {gap:+.1f} RSUM (larger seed std {spread:.1f}): "
                f"beyond one std: **{verdict}**"
            )
        if "none" in runs:
            ratio = statistics.mean(r["seconds_per_epoch"] for r in runs["dcd"]) / statistics.mean(
                r["seconds_per_epoch"] for r in runs["none"]
            )
            lines.append(
                f"- {student}: in these runs a dcd epoch took {ratio:.2f}x a none epoch (runs at different times on "
                "a machine whose load changed; benchmarks/epoch_cost.py times them alternately; target <= 1.3x)"
            )
    return lines


def markdown(reference: dict[str, dict], results: dict[str, list[dict]]) -> str:
    header = "| row | " + " | ".join(METRIC_COLUMNS.values()) + " | s/epoch |"
    lines = [header, "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for name, metrics in reference.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[c]:.1f}" for c in COLUMNS) + " | |")
    for name, runs in results.items():
        cells = [cell([r[c] for r in runs]) for c in COLUMNS]
        seconds = statistics.mean(r["seconds_per_epoch"] for r in runs)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds:.1f} |")
    return "\n".join(lines + [""] + verdicts(results)) + "\n"


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
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice, all cores)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
    table = markdown(reference, results)
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
