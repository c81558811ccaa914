"""The DCD ablation on the emoji benchmark, each row changing one thing, seeds paired across rows.

    python benchmarks/ablation.py --teacher results/demo/teacher/best [--students dual cross] [--seeds 0 1 2 3 4]
        [--rows static-ce static-bce dcd-bce dcd-ce weighted-tempered ...] [--sweep] [--infonce-rows]

Settings come from configs/emoji_dcd_{dual,cross}.yaml with the main ablation's changes on top (MAIN_OVERRIDES):
no in-batch InfoNCE (the paper has none; beta = 0), fresh candidates every epoch (one mining round per epoch, as
the reference draws anew), text-identical captions excluded from the candidate lists. Each row then sets only
its loss (ROWS): `static` and `dcd` each with either label term (CE or BCE), so "dcd vs static" can be read with
the label loss held fixed, and the named weightings of `weighted` beyond the paper.

- Paired seeds: seed s gives every row the same initial weights and data order (train.seed) and the same
  candidate lists (mining_seed is fixed), so rows are compared by paired differences (benchmarks/stats.py).
- Settings chosen on val only (``--sweep``): for each row with a grid, seed 0 is trained at every grid point and
  the point with the best validation RSUM is used for all seeds; test is evaluated once per final run.
- ``--infonce-rows``: the same rows again with InfoNCE (beta = 0.5, the dual config's), as a separate, labelled
  comparison (dual student only).

Writes benchmarks/results/<name>.json and .md: per row mean ± sample std over seeds, the mean effective sample
sizes of the label and distillation weights (1/Σw², from the runs' logs; B = anchors per batch when uniform),
and for each key comparison the paired mean difference with its 95% CI and the verdict it supports.
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
from stats import mean_and_std, paired_difference, verdict_sentence

MAIN_OVERRIDES = ["infonce_weight=0.0", "fresh_candidates=true", "exclude_same_text=true"]
INFONCE_OVERRIDES = ["infonce_weight=0.5", "fresh_candidates=true", "exclude_same_text=true"]
ALPHAS = [0.2, 0.5, 0.8]  # the teacher's share: static's baseline gets the same tuning as the dynamic rows
# row name -> (its loss overrides, the val-sweep grid: a list of extra override lists)
ROWS: dict[str, tuple[list[str], list[list[str]]]] = {
    "none": (["loss.name=none"], []),
    "static-ce": (["loss.name=static", "loss.options={label: ce}"], [[f"loss.alpha={a}"] for a in ALPHAS]),
    "static-bce": (["loss.name=static", "loss.options={label: bce}"], [[f"loss.alpha={a}"] for a in ALPHAS]),
    "dcd-bce": (["loss.name=dcd", "loss.options={label: bce}"], [[f"loss.alpha={a}"] for a in ALPHAS]),
    "dcd-ce": (["loss.name=dcd", "loss.options={label: ce}"], [[f"loss.alpha={a}"] for a in ALPHAS]),
    "wsl": (["loss.name=wsl", "loss.distance=kl"], [[f"loss.alpha={a}"] for a in ALPHAS]),  # KL: WSL's own
    "weighted-tempered": (
        [
            "loss.name=weighted",
            "loss.options={label: ce, label_weighting: tempered, distill_weighting: uniform}",
        ],
        [[f"loss.options.gamma={g}"] for g in (0.25, 0.5)],
    ),
    "weighted-confidence": (
        [
            "loss.name=weighted",
            "loss.options={label: ce, label_weighting: uniform, distill_weighting: confidence}",
        ],
        [[f"loss.options.kappa={k}"] for k in (1.0, 4.0)],
    ),
    "weighted-both": (
        [
            "loss.name=weighted",
            "loss.options={label: ce, label_weighting: tempered, distill_weighting: confidence}",
        ],
        [],
    ),
    "weighted-margin": (
        [
            "loss.name=weighted",
            "loss.distance=margin_mse",
            "loss.options={label: ce, label_weighting: tempered}",
        ],
        [],
    ),
}
# (a, b): the comparisons the verdicts are about, when both rows ran
COMPARISONS = [
    ("dcd-bce", "static-ce"),  # the earlier ablation's comparison: weighting and label loss changed together
    ("dcd-bce", "static-bce"),  # weighting only, BCE labels
    ("dcd-ce", "static-ce"),  # weighting only, CE labels
    ("static-bce", "static-ce"),  # label loss only
    ("weighted-tempered", "static-ce"),
    ("weighted-confidence", "static-ce"),
    ("weighted-both", "static-ce"),
    ("weighted-margin", "static-ce"),
    ("wsl", "static-ce"),
    ("dcd-bce", "none"),
]
COLUMNS = list(METRIC_COLUMNS)


def logged_ess(run: Path) -> dict[str, float]:
    """Mean label / distillation effective sample size over the logged steps of a run (absent: uniform)."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out = {}
    for key in ("label_ess", "distill_ess"):
        values = [line[key] for line in lines if key in line]
        if values:
            out[key] = statistics.mean(values)
    return out


def train(args, student: str, name: str, overrides: list[str]) -> Path:
    out = args.runs / name
    if not (out / "timing.json").is_file():
        distill_emoji(student, args.data, args.features, args.teacher, args.teacher_cache, out, *overrides)
    return out


def val_rsum(run: Path) -> float:
    return json.loads((run / "best" / "metrics.json").read_text())["rsum"]


def choose_on_val(args, student: str, row: str, base: list[str]) -> list[str]:
    """The grid point of ``row`` with the best validation RSUM at seed 0 (its loss overrides), or no change."""
    grid = ROWS[row][1]
    if not args.sweep or not grid:
        return []
    scored = []
    for point in grid:
        tag = "_".join(o.split(".")[-1].replace("=", "") for o in point)
        run = train(
            args, student, f"sweep_{student}_{row}{args.suffix}_{tag}", [*base, *point, "train.seed=0"]
        )
        scored.append((val_rsum(run), point))
        print(f"val sweep {student} {row} {point}: {scored[-1][0]:.1f}", flush=True)
    return max(scored, key=lambda item: item[0])[1]


def run_row(args, student: str, row: str, common: list[str]) -> dict:
    base = [*common, *ROWS[row][0]]
    chosen = choose_on_val(args, student, row, base)
    results = []
    for seed in args.seeds:
        run = train(
            args, student, f"{student}_{row}{args.suffix}_seed{seed}", [*base, *chosen, f"train.seed={seed}"]
        )
        done = run / "test_metrics.json"
        if not done.is_file():
            metrics = evaluate_model(run / "best", args.data, args.features, "test", progress=False)
            metrics.update(logged_ess(run), seed=seed, val_rsum=val_rsum(run))
            write_json_atomic(done, metrics)
        results.append(json.loads(done.read_text()))
    print(student, row, args.suffix, mean_and_std([r["rsum"] for r in results]), flush=True)
    return {"chosen": chosen, "runs": results}


def ess_cell(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs if key in r]
    return f"{statistics.mean(values):.1f}" if values else "uniform"


def markdown(results: dict[str, dict], seeds: list[int]) -> str:
    header = "| row | " + " | ".join(METRIC_COLUMNS.values()) + " | label ESS | distill ESS | val-chosen |"
    lines = [header, "|---|" + "---:|" * (len(COLUMNS) + 2) + "---|"]
    for name, row in results.items():
        runs = row["runs"]
        cells = [mean_and_std([r[c] for r in runs]) for c in COLUMNS]
        chosen = ", ".join(row["chosen"]) or "config"
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {ess_cell(runs, 'label_ess')} | {ess_cell(runs, 'distill_ess')} | {chosen} |"
        )
    lines += [
        "",
        f"Paired over seeds {seeds} (same initial weights, data order and candidate lists per seed):",
        "",
    ]
    for name_a, name_b in COMPARISONS:
        for prefix in sorted({n.split(" / ")[0] for n in results}):
            a, b = results.get(f"{prefix} / {name_a}"), results.get(f"{prefix} / {name_b}")
            if a and b and len(a["runs"]) == len(b["runs"]) >= 2:  # a paired interval needs 2+ seeds
                difference = paired_difference([r["rsum"] for r in a["runs"]], [r["rsum"] for r in b["runs"]])
                lines.append(f"- {prefix}: " + verdict_sentence(name_a, name_b, difference))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("results/demo/teacher/best"))
    parser.add_argument("--data", type=Path, default=Path("data/emoji"))
    parser.add_argument("--features", type=Path, default=Path("cache/features"))
    parser.add_argument("--teacher-cache", type=Path, default=Path("results/demo/teacher_scores"))
    parser.add_argument("--runs", type=Path, default=Path("results/ablation"))
    parser.add_argument("--students", nargs="+", default=["dual", "cross"], choices=["dual", "cross"])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--sweep", action="store_true", help="choose each row's grid point on val (seed 0)")
    parser.add_argument("--infonce-rows", action="store_true", help="also the rows with InfoNCE (dual only)")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every run, e.g. train.epochs=3")
    parser.add_argument("--name", default="ablation", help="results file name (benchmarks/results/NAME.md)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, dict] = {}
    settings = [("", MAIN_OVERRIDES)] + ([("_infonce", INFONCE_OVERRIDES)] if args.infonce_rows else [])
    for suffix, common in settings:
        args.suffix = suffix
        for student in args.students if not suffix else ["dual"]:
            label = student if not suffix else f"{student} + InfoNCE 0.5"
            for row in args.rows:
                results[f"{label} / {row}"] = run_row(args, student, row, [*common, *args.extra])
    args.results.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "seeds": args.seeds, "main": MAIN_OVERRIDES, "extra": args.extra}
    write_json_atomic(args.results / f"{args.name}.json", {**meta, "rows": results})
    table = markdown(results, args.seeds)
    write_text_atomic(args.results / f"{args.name}.md", table)
    print(table)


if __name__ == "__main__":
    main()
