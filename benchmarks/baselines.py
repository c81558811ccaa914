"""Baseline floors on the emoji benchmark's test split (evaluation issue): a zero-shot dual with no training and
dual encoders trained directly with symmetric InfoNCE for each tower view later stages use.

    python benchmarks/baselines.py [--data data/emoji] [--features cache/features] [--seeds 0 1 2]

Needs the emoji benchmark (dcd data emoji) and the feature cache for every view below (dcd features, or make demo).
Writes benchmarks/results/baselines.json and baselines.md (the README's table). Each trained row is the mean and
standard deviation over the seeds, each seed's epoch chosen on val.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

from safetensors.torch import save_file

from dcd_itr.config import load_config
from dcd_itr.encoders import build_image_tower, build_text_tower
from dcd_itr.evaluate import evaluate_model
from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.metrics import METRIC_COLUMNS
from dcd_itr.models.registry import save_model_description
from dcd_itr.models.zeroshot import ZeroShotConfig, build_zero_shot
from dcd_itr.tasks.dual_contrastive import DualTrainingConfig, train_dual

VIEWS = ["lite0_128", "lite0_224", "lite1_240", "lite2_260"]
COLUMNS = list(METRIC_COLUMNS)


def zero_shot_row(data: Path, features: Path, out: Path, view: str) -> dict:
    name, size = view.split("@")
    config = ZeroShotConfig(image_view=view)
    model = build_zero_shot(config, build_image_tower(name, int(size)), build_text_tower("minilm-l6"))
    folder = out / f"zeroshot_{name}_{size}"
    save_model_description(model, folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return evaluate_model(folder, data, features, "test", progress=False)


def trained_rows(data: Path, features: Path, out: Path, view_name: str, seeds: list[int]) -> list[dict]:
    rows = []
    for seed in seeds:
        config = load_config(
            Path("configs") / f"emoji_dual_{view_name}.yaml",
            DualTrainingConfig,
            [
                f"data={data}",
                f"features={features}",
                f"out={out / f'dual_{view_name}_seed{seed}'}",
                f"train.seed={seed}",
            ],
        )
        train_dual(config, progress=False)
        rows.append(evaluate_model(Path(config.out) / "best", data, features, "test", progress=False))
    return rows


def summarise(rows: list[dict]) -> dict:
    return {c: (statistics.mean(r[c] for r in rows), statistics.pstdev(r[c] for r in rows)) for c in COLUMNS}


def markdown(table: dict[str, dict]) -> str:
    header = (
        "| model | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | RSUM |\n|---|" + "---:|" * 7
    )
    lines = [header]
    for name, summary in table.items():
        cells = [f"{m:.1f} ± {s:.1f}" if s else f"{m:.1f}" for m, s in (summary[c] for c in COLUMNS)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/emoji"))
    parser.add_argument("--features", type=Path, default=Path("cache/features"))
    parser.add_argument("--runs", type=Path, default=Path("results/baselines"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    table = {}
    for view in ["efficientnet-lite0@128", "efficientnet-lite2@260"]:
        table[f"zero-shot via ImageNet classes ({view})"] = summarise(
            [zero_shot_row(args.data, args.features, args.runs, view)]
        )
    for view_name in VIEWS:
        rows = trained_rows(args.data, args.features, args.runs, view_name, args.seeds)
        table[f"trained dual, InfoNCE ({view_name.replace('_', ' @ ')} px)"] = summarise(rows)
        print(view_name, summarise(rows)["rsum"], flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        args.results / "baselines.json", {"machine": platform.platform(), "seeds": args.seeds, "rows": table}
    )
    write_text_atomic(args.results / "baselines.md", markdown(table))
    print(markdown(table))


if __name__ == "__main__":
    main()
