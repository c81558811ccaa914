"""The dual encoders on the scenes relation benchmark (issue 13): the bag dual, the strongest (position-aware,
twin-negative) dual, and with a teacher, the DCD dual student against the same architecture without one.

    python benchmarks/scenes_duals.py --data data/scenes --features cache/features --seeds 0 \\
        [--systems bag pos] [--teacher results/scenes/teacher/best] [--set train.epochs=30]

Each system is a committed config (configs/scenes_dual_bag.yaml, scenes_dual_pos.yaml, scenes_dcd_dual.yaml; the
"none" row is scenes_dcd_dual.yaml with loss none) trained once per seed with one torch thread, its best val epoch
ranked on the test split by ``dcd eval``'s evaluate_model (Recall@K, RSUM, twin text / image / group). Training
time is the process CPU time of the training steps (validation excluded), logged with every validation, so curves
of val RSUM and val twin group against CPU-minutes come from the same runs. Writes RESULTS/scenes_duals.json,
scenes_duals.md and scenes_duals_curves.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

from dcd_itr.config import load_config
from dcd_itr.evaluate import evaluate_model
from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.tasks.distill import DistillConfig, distill
from dcd_itr.tasks.dual_contrastive import DualTrainingConfig, train_dual

SYSTEMS = {  # name -> (config, task, extra overrides)
    "bag": ("configs/scenes_dual_bag.yaml", "dual", []),
    "pos": ("configs/scenes_dual_pos.yaml", "dual", []),
    "dcd": ("configs/scenes_dcd_dual.yaml", "distill", []),
    "none": ("configs/scenes_dcd_dual.yaml", "distill", ["loss.name=none"]),
}
LABELS = {
    "bag": "bag dual (pooled, InfoNCE)",
    "pos": "position-aware dual + twin negatives (InfoNCE)",
    "dcd": "DCD dual student (position-aware, twin pools)",
    "none": "same student, loss none (no teacher logits)",
}
COLUMNS = [
    "train_cpu_minutes",
    "image_to_text_R@1",
    "text_to_image_R@1",
    "rsum",
    "twin_text",
    "twin_image",
    "twin_group",
]


def run_system(name: str, seed: int, args: argparse.Namespace) -> dict:
    config_path, task, extra = SYSTEMS[name]
    out = args.runs / f"{name}_seed{seed}"
    overrides = [f"data={args.data}", f"features={args.features}", f"out={out}", f"train.seed={seed}", *extra]
    overrides += [o for o in args.overrides if not o.startswith("teacher")]
    if task == "distill":
        overrides += [f"teacher={args.teacher}", f"teacher_cache={args.teacher_cache}"]
        distill(load_config(config_path, DistillConfig, overrides), progress=False)
    else:
        train_dual(load_config(config_path, DualTrainingConfig, overrides), progress=False)
    test = evaluate_model(out / "best", args.data, args.features, "test", progress=False)
    best = json.loads((out / "best" / "metrics.json").read_text())
    curve = [
        {k: r["validation"].get(k) for k in ("train_cpu_minutes", "rsum", "twin_group")}
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if "validation" in r
    ]
    total = curve[-1]["train_cpu_minutes"] if curve else None
    return {
        "seed": seed,
        "best_epoch": best.get("epoch"),
        "best_at_cpu_minutes": best.get("train_cpu_minutes"),
        "test": {**test, "train_cpu_minutes": total},
        "val_curve": curve,
    }


def summarise(runs: list[dict]) -> dict[str, tuple[float, float] | None]:
    summary = {}
    for column in COLUMNS:
        values = [r["test"].get(column) for r in runs if r["test"].get(column) is not None]
        summary[column] = (statistics.mean(values), statistics.pstdev(values)) if values else None
    return summary


def markdown(table: dict[str, dict], seeds: list[int]) -> str:
    lines = [
        "Command: `python benchmarks/scenes_duals.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Scenes test split; mean ± std over seeds {seeds}; each seed's epoch chosen on val RSUM; CPU-minutes = "
        "process CPU time of the training steps, 1 torch thread.",
        "",
        "| system | CPU-min | i2t R@1 | t2i R@1 | RSUM | twin text | twin image | twin group |",
        "|---|" + "---:|" * 7,
    ]
    for name, summary in table.items():
        cells = [
            "n/a"
            if value is None
            else (f"{value[0]:.1f} ± {value[1]:.1f}" if value[1] else f"{value[0]:.1f}")
            for value in (summary[c] for c in COLUMNS)
        ]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rsum_axis, twin_axis) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (name, runs) in zip(colours, results.items(), strict=False):
        for index, run in enumerate(runs):
            minutes = [p["train_cpu_minutes"] for p in run["val_curve"]]
            label = LABELS[name] if index == 0 else None
            rsum_axis.plot(minutes, [p["rsum"] for p in run["val_curve"]], color=colour, label=label)
            if all(p["twin_group"] is not None for p in run["val_curve"]):
                twin_axis.plot(
                    minutes, [p["twin_group"] for p in run["val_curve"]], color=colour, label=label
                )
    twin_axis.axhline(100 / 6, color="grey", linestyle=":", label="chance (16.7)")
    for axis, title in ((rsum_axis, "val RSUM"), (twin_axis, "val twin group score (%)")):
        axis.set_xlabel("training CPU-minutes (1 thread)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    twin_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/scenes"))
    parser.add_argument("--features", type=Path, default=Path("cache/features"))
    parser.add_argument("--runs", type=Path, default=Path("results/scenes_duals"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--systems", nargs="+", default=["bag", "pos"], choices=sorted(SYSTEMS))
    parser.add_argument("--teacher", default="results/scenes/teacher/best", help="for the dcd / none rows")
    parser.add_argument("--teacher-cache", default="cache/teacher_scores")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, all")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {name: [run_system(name, seed, args) for seed in args.seeds] for name in args.systems}
    table = {name: summarise(runs) for name, runs in results.items()}
    args.results.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": platform.platform(),
        "seeds": args.seeds,
        "overrides": args.overrides,
        "runs": results,
    }
    write_json_atomic(args.results / "scenes_duals.json", payload)
    write_text_atomic(args.results / "scenes_duals.md", markdown(table, args.seeds))
    plot(results, args.results / "scenes_duals_curves.png")
    print(markdown(table, args.seeds))


if __name__ == "__main__":
    main()
