"""The dual encoders on the scenes relation benchmark (issue 13): the bag dual, the strongest (position-aware,
twin-negative) dual, and with a teacher, the DCD dual student against the same architecture without one.

    python benchmarks/scenes_duals.py --data data/scenes --features cache/features --seeds 0 \\
        [--systems bag pos] [--teacher results/scenes/teacher/best] [--set train.epochs=30] \\
        [--split val] [--name scenes_duals_dcd] [--compare dcd pos]

Each system is a committed config (configs/scenes_dual_bag.yaml, scenes_dual_pos.yaml, scenes_dcd_dual.yaml; the
"none" row is scenes_dcd_dual.yaml with loss none) trained once per seed with one torch thread, its best val epoch
ranked on the test split by ``dcd eval``'s evaluate_model (Recall@K, RSUM, twin text / image / group). Training
time is the process CPU time of the training steps (validation excluded), logged with every validation, so curves
of val RSUM and val twin group against CPU-minutes come from the same runs. Writes RESULTS/NAME.json, NAME.md and
NAME_curves.png (NAME: --name, default scenes_duals).

A run folder that finished with the same overrides (its benchmark_run.json) is reused, not retrained, so systems
and seeds can be run one command at a time and a final command assembles the table. ``--split val`` ranks the
best checkpoints on val instead (for choosing settings; test untouched). ``--compare A B`` adds, per metric, the
paired difference A − B over the seeds with its 95% t interval and the verdict it supports (benchmarks/stats.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from dcd_itr.config import load_config
from dcd_itr.evaluate import evaluate_model
from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.tasks.distill import DistillConfig, distill
from dcd_itr.tasks.dual_contrastive import DualTrainingConfig, train_dual
from stats import mean_and_std, paired_difference, verdict_sentence

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
    marker = out / "benchmark_run.json"
    if marker.exists() and json.loads(marker.read_text()).get("overrides") == overrides:
        print(f"{out}: finished with the same overrides, reused")
    elif task == "distill":
        distill(load_config(config_path, DistillConfig, overrides), progress=False)
    else:
        train_dual(load_config(config_path, DualTrainingConfig, overrides), progress=False)
    write_json_atomic(marker, {"config": config_path, "overrides": overrides})
    test = evaluate_model(out / "best", args.data, args.features, args.split, progress=False)
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


def summarise(runs: list[dict]) -> dict[str, list[float]]:
    """Each column's values over the seeds (a column no run reports is left out)."""
    summary = {}
    for column in COLUMNS:
        values = [r["test"].get(column) for r in runs if r["test"].get(column) is not None]
        if values:
            summary[column] = values
    return summary


def comparisons(table: dict[str, dict], pairs: list[list[str]]) -> list[str]:
    """Paired verdict sentences (RSUM and twin group) for each (a, b) of ``pairs`` present in ``table``."""
    sentences = []
    for name_a, name_b in pairs:
        for column, unit in (("rsum", "RSUM"), ("twin_group", "twin group points")):
            a, b = table[name_a].get(column), table[name_b].get(column)
            if a and b and len(a) == len(b) >= 2:
                difference = paired_difference(a, b)
                sentences.append("- " + verdict_sentence(name_a, name_b, difference, unit))
    return sentences


def markdown(table: dict[str, dict], seeds: list[int], split: str, pairs: list[list[str]]) -> str:
    lines = [
        "Command: `python benchmarks/scenes_duals.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Scenes {split} split; mean ± sample std over seeds {seeds}; each seed's epoch chosen on val RSUM; "
        "CPU-minutes = process CPU time of the training steps, 1 torch thread.",
        "",
        "| system | CPU-min | i2t R@1 | t2i R@1 | RSUM | twin text | twin image | twin group |",
        "|---|" + "---:|" * 7,
    ]
    for name, summary in table.items():
        cells = [mean_and_std(summary[c]) if c in summary else "n/a" for c in COLUMNS]
        lines.append(f"| {LABELS[name]} ({name}) | " + " | ".join(cells) + " |")
    sentences = comparisons(table, pairs)
    if sentences:
        lines += [
            "",
            f"Paired differences over seeds {seeds} (95% t interval; verdict from the interval):",
            "",
        ]
        lines += sentences
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
    parser.add_argument("--data", type=Path, default=Path("data/scenes"), help="the scenes dataset folder")
    parser.add_argument(
        "--features",
        type=Path,
        default=Path("cache/features"),
        help="feature cache with every system's views",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=Path("results/scenes_duals"),
        help="one folder per run; finished runs are reused",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="training seeds (paired across systems)"
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        default=["bag", "pos"],
        choices=sorted(SYSTEMS),
        help="which duals to train (SYSTEMS)",
    )
    parser.add_argument("--teacher", default="results/scenes/teacher/best", help="for the dcd / none rows")
    parser.add_argument(
        "--teacher-cache", default="cache/teacher_scores", help="teacher-score cache for the dcd / none rows"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, all")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="scenes_duals", help="output file stem under --results")
    parser.add_argument(
        "--notes", type=Path, help="a markdown file appended to NAME.md (e.g. what was tried)"
    )
    parser.add_argument("--split", default="test", choices=["val", "test"], help="val: for choosing settings")
    parser.add_argument(
        "--compare", nargs=2, action="append", default=[], metavar=("A", "B"), help="paired A - B verdicts"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {name: [run_system(name, seed, args) for seed in args.seeds] for name in args.systems}
    table = {name: summarise(runs) for name, runs in results.items()}
    args.results.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": platform.platform(),
        "seeds": args.seeds,
        "overrides": args.overrides,
        "split": args.split,
        "runs": results,
        "comparisons": comparisons(table, args.compare),
    }
    text = markdown(table, args.seeds, args.split, args.compare)
    if args.notes:
        text += "\n" + args.notes.read_text(encoding="utf-8")
    write_json_atomic(args.results / f"{args.name}.json", payload)
    write_text_atomic(args.results / f"{args.name}.md", text)
    plot(results, args.results / f"{args.name}_curves.png")
    print(text)


if __name__ == "__main__":
    main()
