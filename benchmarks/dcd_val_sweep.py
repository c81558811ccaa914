"""Choosing DCD's distillation settings on the VALIDATION split (never on test): a small grid over the
distance (MSE on logits vs KL on softened distributions), the temperature T, the teacher share alpha, the pool
size P and the kept list K, for one student, one seed, everything else as in configs/emoji_dcd_<student>.yaml.
A (P, K) other than the config's gets its own teacher-score cache (the teacher scores the new pools once).

    python benchmarks/dcd_val_sweep.py --teacher results/demo/teacher/best [--student dual]

Each row is the best validation RSUM over the run's epochs (the checkpoint a run keeps). Finished runs are reused.
Writes benchmarks/results/dcd_val_sweep_<student>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from emoji_distill import distill_emoji

CONFIG_POOLS = (16, 8)  # (P, K) of configs/emoji_dcd_*.yaml
# (distance, temperature, alpha, P, K); the first row is the reference code's setting.
GRID = [
    ("mse", 1.0, 0.2, 16, 8),
    ("mse", 1.0, 0.5, 16, 8),
    ("mse", 4.0, 0.2, 16, 8),  # with MSE, T changes only DCD's per-sample weights (softer teacher entropies)
    ("mse", 4.0, 0.5, 16, 8),
    ("kl", 1.0, 0.5, 16, 8),
    ("kl", 4.0, 0.5, 16, 8),
    ("kl", 4.0, 0.8, 16, 8),
    ("kl", 8.0, 0.5, 16, 8),
    ("mse", 1.0, 0.2, 16, 4),  # a shorter list: the teacher's hardest 3 negatives only
    ("mse", 1.0, 0.2, 32, 8),  # a larger pool: harder negatives, less confident teacher lists
]


def run(
    args: argparse.Namespace, distance: str, temperature: float, alpha: float, pool: int, keep: int
) -> dict:
    name = f"{args.student}_{distance}_T{temperature:g}_a{alpha:g}"
    cache = args.teacher_cache
    if (pool, keep) != CONFIG_POOLS:
        name += f"_P{pool}_K{keep}"
        cache = args.teacher_cache.with_name(f"{args.teacher_cache.name}_P{pool}_K{keep}")
    out = args.runs / name
    best = out / "best" / "metrics.json"
    if not best.is_file():
        distill_emoji(
            args.student,
            args.data,
            args.features,
            args.teacher,
            cache,
            out,
            f"loss.distance={distance}",
            f"loss.temperature={temperature}",
            f"loss.alpha={alpha}",
            f"pool_size={pool}",
            f"num_candidates={keep}",
            f"train.seed={args.seed}",
        )
    metrics = json.loads(best.read_text(encoding="utf-8"))
    return {"distance": distance, "temperature": temperature, "alpha": alpha, "P": pool, "K": keep, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("results/demo/teacher/best"))
    parser.add_argument("--data", type=Path, default=Path("data/emoji"))
    parser.add_argument("--features", type=Path, default=Path("cache/features"))
    parser.add_argument("--teacher-cache", type=Path, default=Path("results/demo/teacher_scores"))
    parser.add_argument("--runs", type=Path, default=Path("results/dcd_val_sweep"))
    parser.add_argument("--student", choices=["dual", "cross"], default="dual")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for setting in GRID:
        rows.append(run(args, *setting))
        print(setting, f"val RSUM {rows[-1]['rsum']:.1f} (epoch {rows[-1]['epoch']})", flush=True)
    lines = [
        f"| distance | T | alpha | P | K | best val RSUM ({args.student} student, seed {args.seed}) | epoch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['distance']} | {r['temperature']:g} | {r['alpha']:g} | {r['P']} | {r['K']} | {r['rsum']:.1f} | {r['epoch']} |"
        for r in rows
    ]
    best = max(rows, key=lambda r: r["rsum"])
    lines.append(
        f"\nBest on val: distance={best['distance']}, T={best['temperature']:g}, alpha={best['alpha']:g}, "
        f"P={best['P']}, K={best['K']} "
        f"(RSUM {best['rsum']:.1f})."
    )
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"dcd_val_sweep_{args.student}"
    write_json_atomic(args.results / f"{stem}.json", {"machine": platform.platform(), "rows": rows})
    write_text_atomic(args.results / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
