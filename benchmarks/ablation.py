"""The DCD ablation (emoji by default; scenes with --config), each row changing one thing, seeds paired across rows.

    python benchmarks/ablation.py --teacher results/demo/teacher/best [--students dual cross] [--seeds 0 1 2 3 4]
        [--rows none static-ce static-bce dcd-ce dcd-bce wsl weighted-best ...] [--sweep] [--infonce-rows]

Settings come from configs/emoji_dcd_{dual,cross}.yaml with the main ablation's changes on top (MAIN_OVERRIDES):
no in-batch InfoNCE (the paper has none; beta = 0), fresh candidates every epoch (one mining round per epoch, as
the reference draws anew), text-identical captions excluded from the candidate lists. Each row then sets only
its loss (ROWS): `static` and `dcd` each with either label term (CE or BCE), so "dcd vs static" can be read with
the label loss held fixed, WSL (alpha·KD + CE, KL distance), and the named weightings of `weighted` beyond the
paper.

- Paired seeds: seed s gives every row the same initial weights and data order (train.seed) and the same
  candidate lists (mining_seed is fixed), so rows are compared by paired differences (benchmarks/stats.py).
- Settings chosen on val only (``--sweep``), at seed 0: the teacher share alpha of `static-ce` (the rows marked
  ``alpha_from`` reuse it, so static-bce, dcd-ce, dcd-bce and the weightings differ from static-ce in one thing),
  alpha of `wsl`, and for `weighted-best` first the weighting (tempered / mixed label weights, confidence
  distillation weights), then the distance (MSE, margin-MSE, RankNet) for the winner. The point with the best
  validation RSUM is used for every seed (its seed-0 run is the sweep's); test is evaluated once per final run.
- ``--infonce-rows``: the same rows again with InfoNCE (beta = 0.5, the dual config's), as a separate, labelled
  comparison (dual student only).

Writes benchmarks/results/<name>.json and .md (the command on top): the val sweep, per row mean ± sample std over
seeds, the mean effective sample sizes of the label and distillation weights (1/Σw², from the runs' logs; B =
anchors per batch when uniform), and for each key comparison the paired mean difference with its 95% CI and the
verdict it supports. Finished runs are reused, so a larger ``--seeds`` list extends an earlier table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dcd_itr.evaluate import evaluate_model
from dcd_itr.evaluate.twins import TWIN_KEYS
from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.metrics import METRIC_COLUMNS
from emoji_distill import distill_emoji
from stats import mean_and_std, paired_difference, verdict_sentence

MAIN_OVERRIDES = ["infonce_weight=0.0", "fresh_candidates=true", "exclude_same_text=true"]
INFONCE_OVERRIDES = ["infonce_weight=0.5", "fresh_candidates=true", "exclude_same_text=true"]
SWEEP_SEED = 0  # the seed the val sweep trains; its winning run is also that seed's run in the table


def _options(**options: object) -> str:
    return "loss.options={" + ", ".join(f"{k}: {v}" for k, v in options.items()) + "}"


def _alphas(*values: float) -> dict[str, list[str]]:
    return {f"a{a:g}": [f"loss.alpha={a}"] for a in values}


@dataclass(frozen=True)
class Row:
    """One ablation row: its loss overrides, its val sweep (stages of named points; each stage's points are tried
    on top of the previous stage's winner, which stays a candidate), and the row whose chosen alpha it reuses."""

    overrides: list[str]
    stages: list[dict[str, list[str]]] = field(default_factory=list)
    alpha_from: str | None = None


WEIGHTINGS = {  # beyond the paper, each with label CE; the DCD structure with tempered / mixed label weights
    "tempered-g0.5": [_options(label="ce", label_weighting="tempered", distill_weighting="paper", gamma=0.5)],
    "mixed-0.5": [_options(label="ce", label_weighting="mixed", distill_weighting="paper", mix=0.5)],
    # teacher entropies are ~0.03 nats on most lists, so κ = 1 would be ~uniform; κ = 4 mutes the unsure lists
    "confidence-k4": [
        _options(label="ce", label_weighting="uniform", distill_weighting="confidence", kappa=4.0)
    ],
}
# DCD's own weights (entropy label weights, the paper's distillation weights, CE labels) with a weight temperature
# T_w apart from the distillation temperature: on z-scored lists at T = 1 every list's entropy is ~1.12 nats and
# the weights are uniform (ESS 63.9 of 64 on the scenes train lists); a lower T_w sharpens the entropies so that
# the lists where the teacher's top scores are close weigh more (benchmarks/weight_ess.py measures the ESS)
WEIGHT_TEMPERATURES = {
    f"tw{t:g}": [
        _options(label="ce", label_weighting="entropy", distill_weighting="paper", weight_temperature=t)
    ]
    for t in (0.25, 0.5)
}
# vs MSE (the stage's incumbent); KL (ListNet) already lost to MSE on val (benchmarks/dcd_val_sweep.py)
DISTANCES = {"margin_mse": ["loss.distance=margin_mse"]}
ROWS: dict[str, Row] = {
    "none": Row(["loss.name=none"]),
    "static-ce": Row(["loss.name=static", _options(label="ce")], [_alphas(0.2, 0.5, 0.8)]),
    "static-bce": Row(["loss.name=static", _options(label="bce")], alpha_from="static-ce"),
    "dcd-ce": Row(["loss.name=dcd", _options(label="ce")], alpha_from="static-ce"),
    "dcd-bce": Row(["loss.name=dcd", _options(label="bce")], alpha_from="static-ce"),
    # WSL adds alpha·KD to a full CE, so alpha = 1 is its equal mix; KL is WSL's own distance
    "wsl": Row(["loss.name=wsl", "loss.distance=kl"], [_alphas(0.2, 1.0)]),
    "weighted-best": Row(["loss.name=weighted"], [WEIGHTINGS, DISTANCES], alpha_from="static-ce"),
    # exactly dcd-ce at T_w = T (tests/test_weighting.py), so dcd-tw - dcd-ce changes the weight temperature only
    "dcd-tw": Row(["loss.name=weighted"], [WEIGHT_TEMPERATURES], alpha_from="static-ce"),
    "weighted-both": Row(
        [
            "loss.name=weighted",
            _options(label="ce", label_weighting="tempered", distill_weighting="confidence"),
        ],
        alpha_from="static-ce",
    ),
}
DYNAMIC = [
    "dcd-ce",
    "dcd-bce",
    "dcd-tw",
    "wsl",
    "weighted-best",
    "weighted-both",
]  # per-sample weights from the teacher
STATIC = ["static-ce", "static-bce"]
# (a, b): the comparisons the verdicts are about, when both rows ran
COMPARISONS = [
    ("dcd-ce", "static-ce"),  # weighting only, CE labels
    ("dcd-bce", "static-bce"),  # weighting only, BCE labels
    ("dcd-bce", "static-ce"),  # the earlier ablation's comparison: weighting and label loss changed together
    ("static-bce", "static-ce"),  # label loss only
    ("dcd-tw", "dcd-ce"),  # weight temperature only
    ("dcd-tw", "static-ce"),
    ("wsl", "static-ce"),
    ("weighted-best", "static-ce"),
    ("weighted-both", "static-ce"),
    ("static-ce", "none"),
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


def train(args, student: str, name: str, overrides: list[str]) -> Path | None:
    """The finished run ``name`` (trained now if needed; None if unfinished under ``--report-only``)."""
    out = args.runs / name
    if not (out / "timing.json").is_file():
        if args.report_only:
            return None
        distill_emoji(
            student,
            args.data,
            args.features,
            args.teacher,
            args.teacher_cache,
            out,
            *overrides,
            *args.extra,  # last: an extra setting wins over the row's (e.g. loss.options.x after loss.options)
            config_path=args.config,
        )
    return out


def val_rsum(run: Path) -> float:
    return json.loads((run / "best" / "metrics.json").read_text())["rsum"]


def choose_on_val(args, student: str, row: str, common: list[str]) -> tuple[list[str] | None, Path | None]:
    """The overrides ``row`` adds to its own (alpha taken over, then its sweep's winner) and the winner's seed-0
    run; memoised per (student, setting, row). Without ``--sweep``: no change, the config's settings."""
    key = (student, args.suffix, row)
    if key in args.chosen:
        return args.chosen[key]
    spec, chosen, winner = ROWS[row], [], None
    if args.sweep and spec.alpha_from:
        taken = choose_on_val(args, student, spec.alpha_from, common)[0]
        if taken is None:
            return None, None
        chosen = [o for o in taken if o.startswith("loss.alpha=")]
    if args.sweep and spec.stages:
        base, tags = [*common, *spec.overrides], []
        best = None  # (val RSUM, tags, overrides beyond base, run)
        for stage in spec.stages:
            candidates = [best] if best else []
            for tag, point in stage.items():
                name = f"sweep_{student}_{row}{args.suffix}_" + "_".join([*tags, tag])
                run = train(args, student, name, [*base, *chosen, *point, f"train.seed={SWEEP_SEED}"])
                if run is None:
                    continue
                candidates.append((val_rsum(run), [*tags, tag], [*chosen, *point], run))
                args.sweep_log.append(
                    {
                        "student": student + args.suffix,
                        "row": row,
                        "point": " ".join(candidates[-1][1]),
                        "overrides": candidates[-1][2],
                        "val_rsum": candidates[-1][0],
                    }
                )
                print(f"val sweep {student}{args.suffix} {row} {candidates[-1][1]}: {candidates[-1][0]:.1f}")
            if not candidates:
                break
            best = max(candidates, key=lambda item: item[0])
            tags, chosen = best[1], best[2]  # the next stage builds on this stage's winner
        if best is None:  # --report-only before any point of the sweep finished: the row is left out
            args.chosen[key] = (None, None)
            return None, None
        chosen, winner = best[2], best[3]
    args.chosen[key] = (chosen, winner)
    return chosen, winner


def run_row(args, student: str, row: str, common: list[str]) -> dict:
    chosen, winner = choose_on_val(args, student, row, common)
    if chosen is None:
        return {"chosen": [], "runs": []}
    base = [*common, *ROWS[row].overrides, *chosen]
    results = []
    for seed in args.seeds:
        if seed == SWEEP_SEED and winner is not None:
            run = winner  # the same overrides: the sweep's run at this seed
        else:
            run = train(
                args, student, f"{student}_{row}{args.suffix}_seed{seed}", [*base, f"train.seed={seed}"]
            )
        if run is None:
            continue
        done = run / "test_metrics.json"
        if not done.is_file():
            metrics = evaluate_model(run / "best", args.data, args.features, "test", progress=False)
            metrics.update(logged_ess(run), seed=seed, val_rsum=val_rsum(run))
            write_json_atomic(done, metrics)
        timing = json.loads((run / "timing.json").read_text())
        results.append({**json.loads(done.read_text()), "train_seconds": timing["training_seconds"]})
    if not results:
        return {"chosen": chosen, "runs": []}
    print(student, row, args.suffix, mean_and_std([r["rsum"] for r in results]), flush=True)
    return {"chosen": chosen, "runs": results}


def ess_cell(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs if key in r]
    return f"{statistics.mean(values):.1f}" if values else "uniform"


def paired(a: dict, b: dict, key: str = "rsum") -> tuple[list[float], list[float]]:
    """``key`` of the seeds both rows ran (paired by seed; by position when runs carry no seed)."""
    by_a = {r.get("seed", i): r[key] for i, r in enumerate(a["runs"])}
    by_b = {r.get("seed", i): r[key] for i, r in enumerate(b["runs"])}
    common = sorted(set(by_a) & set(by_b))
    return [by_a[s] for s in common], [by_b[s] for s in common]


def mean_val(row: dict, seeds: set) -> float:
    """Mean validation RSUM over ``seeds`` (the seeds every compared row ran, so rows are ranked on equal terms)."""
    return statistics.mean(
        r.get("val_rsum", float("-inf")) for i, r in enumerate(row["runs"]) if r.get("seed", i) in seeds
    )


def verdicts(results: dict[str, dict]) -> list[str]:
    """Verdict sentences for COMPARISONS and for the best dynamic row vs the best static row (both by val)."""
    lines = []
    for prefix in dict.fromkeys(n.split(" / ")[0] for n in results):
        rows = {n.split(" / ")[1]: r for n, r in results.items() if n.split(" / ")[0] == prefix}
        pairs = [p for p in COMPARISONS if p[0] in rows and p[1] in rows]
        dynamic = [n for n in DYNAMIC if n in rows]
        static = [n for n in STATIC if n in rows]
        ranked = dynamic + static
        shared = set.intersection(
            *({r.get("seed", i) for i, r in enumerate(rows[n]["runs"])} for n in ranked or rows)
        )
        if dynamic and static and shared:
            best_dynamic, best_static = (
                max(dynamic, key=lambda n: mean_val(rows[n], shared)),
                max(static, key=lambda n: mean_val(rows[n], shared)),
            )
            pairs.append(
                (best_dynamic, best_static, "best dynamic − best static, both chosen by mean val RSUM")
            )
        runs = [r for row in rows.values() for r in row["runs"]]
        units = {"rsum": "RSUM"} | (
            {"twin_group": "twin group %"} if all("twin_group" in r for r in runs) else {}
        )
        for name_a, name_b, *note in pairs:
            for key, unit in units.items():
                a, b = paired(rows[name_a], rows[name_b], key)
                if len(a) >= 2:  # a paired interval needs 2+ seeds
                    sentence = verdict_sentence(name_a, name_b, paired_difference(a, b), unit)
                    lines.append(f"- {prefix}: {sentence}" + (f" ({note[0]})" if note else ""))
    return lines


def markdown(
    results: dict[str, dict], seeds: list[int], sweep: list[dict] | None = None, head: str = ""
) -> str:
    runs_all = [r for row in results.values() for r in row["runs"]]
    columns = COLUMNS + [
        k for k in TWIN_KEYS if runs_all and all(k in r for r in runs_all)
    ]  # scenes: twin rates
    lines = [head] if head else []
    if sweep:
        lines += [
            "Val sweep (seed 0, validation RSUM of the kept checkpoint; the best point per row is used):",
            "",
        ]
        lines += ["| student | row | point | val RSUM |", "|---|---|---|---:|"]
        lines += [f"| {s['student']} | {s['row']} | {s['point']} | {s['val_rsum']:.1f} |" for s in sweep]
        lines += [""]
    titles = [METRIC_COLUMNS.get(c, c.replace("_", " ")) for c in columns]
    header = "| row | " + " | ".join(titles) + " | label ESS | distill ESS | val-chosen |"
    lines += [header, "|---|" + "---:|" * (len(columns) + 2) + "---|"]
    for name, row in results.items():
        runs = row["runs"]
        cells = [mean_and_std([r[c] for r in runs]) for c in columns]
        chosen = ", ".join(row["chosen"]) or "config"
        count = f" (n={len(runs)})" if len(runs) != len(seeds) else ""
        lines.append(
            f"| {name}{count} | "
            + " | ".join(cells)
            + f" | {ess_cell(runs, 'label_ess')} | {ess_cell(runs, 'distill_ess')} | {chosen} |"
        )
    lines += [
        "",
        f"Paired over seeds {seeds} (same initial weights, data order and candidate lists per seed):",
        "",
    ]
    return "\n".join(lines + verdicts(results)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teacher",
        type=Path,
        default=Path("results/demo/teacher/best"),
        help="the frozen teacher (a model folder)",
    )
    parser.add_argument(
        "--data", type=Path, default=Path("data/emoji"), help="dataset folder (Karpathy JSON + images)"
    )
    parser.add_argument(
        "--features",
        type=Path,
        default=Path("cache/features"),
        help="feature cache with the student's and teacher's views",
    )
    parser.add_argument(
        "--teacher-cache",
        type=Path,
        default=Path("results/demo/teacher_scores"),
        help="teacher-score cache folder (shared by every run; created if missing)",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=Path("results/ablation"),
        help="one folder per run; finished runs are reused",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="base config (default configs/emoji_dcd_*.yaml)"
    )
    parser.add_argument(
        "--students",
        nargs="+",
        default=["dual", "cross"],
        choices=["dual", "cross"],
        help="which students to ablate",
    )
    parser.add_argument(
        "--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="the rows (losses) to run"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="paired seeds (same init, order, lists)"
    )
    parser.add_argument("--sweep", action="store_true", help="choose each row's settings on val (seed 0)")
    parser.add_argument("--infonce-rows", action="store_true", help="also the rows with InfoNCE (dual only)")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every run, applied last")
    parser.add_argument("--name", default="ablation", help="results file name (benchmarks/results/NAME.md)")
    parser.add_argument("--note", default="", help="a line for the table's header (e.g. the budget cuts)")
    parser.add_argument("--report-only", action="store_true", help="tabulate finished runs, train nothing")
    parser.add_argument(
        "--results", type=Path, default=Path("benchmarks/results"), help="folder for NAME.md and NAME.json"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument(
        "--label",
        default=None,
        help="the rows' label in the tables (default: the student), e.g. 'dual + InfoNCE 0.5' when --extra sets "
        "infonce_weight for every row",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.chosen, args.sweep_log = {}, []
    results: dict[str, dict] = {}
    settings = [("", MAIN_OVERRIDES)] + ([("_infonce", INFONCE_OVERRIDES)] if args.infonce_rows else [])
    for suffix, common in settings:
        args.suffix = suffix
        for student in args.students if not suffix else ["dual"]:
            label = (args.label or student) if not suffix else f"{student} + InfoNCE 0.5"
            for row in args.rows:
                result = run_row(args, student, row, common)
                if result["runs"]:
                    results[f"{label} / {row}"] = result
    args.results.mkdir(parents=True, exist_ok=True)
    shown, skip = [], False  # the command without --report-only and without the --note text (in the header)
    for a in sys.argv[1:]:
        if not skip and a not in ("--report-only", "--note"):
            shown.append(a)
        skip = a == "--note"
    command = "python benchmarks/ablation.py " + shlex.join(shown)
    meta = {"command": command, "note": args.note, "machine": platform.platform(), "seeds": args.seeds}
    meta |= {"main": MAIN_OVERRIDES, "extra": args.extra, "sweep": args.sweep_log}
    write_json_atomic(args.results / f"{args.name}.json", {**meta, "rows": results})
    head = f"# DCD ablation ({args.name})\n\n    {command}\n\n" + (f"{args.note}\n" if args.note else "")
    table = markdown(results, args.seeds, args.sweep_log, head)
    write_text_atomic(args.results / f"{args.name}.md", table)
    print(table)


if __name__ == "__main__":
    main()
