"""`dcd demo`: the main job on the embedded default, the emoji benchmark, stage by stage.

Each stage prints a one-line status and its duration; a stage whose inputs have not changed since the last run
is reused (``--fresh`` redoes everything).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dcd_itr.commands.data import dataset_statistics
from dcd_itr.commands.eval import run_eval
from dcd_itr.commands.features import cache_features
from dcd_itr.config import load_config
from dcd_itr.data.emoji import DATASET_FILENAME, DEFAULT_SEED, build_emoji_dataset
from dcd_itr.data.emoji_source import find_font
from dcd_itr.data.loading import load_dataset
from dcd_itr.data.preview import split_contact_sheet
from dcd_itr.io_utils import write_text_atomic
from dcd_itr.tasks.distill import DistillConfig, distill
from dcd_itr.tasks.dual_contrastive import DualTrainingConfig, train_dual
from dcd_itr.tasks.teacher import TeacherTrainingConfig, train_teacher

T = TypeVar("T")


def run_stage(name: str, action: Callable[[], T]) -> T:
    print(f"[{name}] ...", flush=True)
    start = time.perf_counter()
    result = action()
    print(f"[{name}] done in {time.perf_counter() - start:.1f} s", flush=True)
    return result


def emoji_dataset_is_current(data_dir: Path, seed: int) -> bool:
    """True when ``data_dir`` holds a complete emoji build from the installed font with this seed."""
    dataset_path = data_dir / DATASET_FILENAME
    try:
        payload = json.loads(dataset_path.read_text(encoding="utf-8"))
        info = payload["info"]
        font_hash = hashlib.sha256(find_font().read_bytes()).hexdigest()
        images_present = all((data_dir / i["filepath"] / i["filename"]).is_file() for i in payload["images"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return info.get("seed") == seed and info.get("font_sha256") == font_hash and images_present


def build_or_reuse_emoji(data_dir: Path, seed: int, fresh: bool) -> Path:
    if not fresh and emoji_dataset_is_current(data_dir, seed):
        print(f"  reusing {data_dir / DATASET_FILENAME} (same font and seed)")
        return data_dir / DATASET_FILENAME
    return build_emoji_dataset(data_dir, seed=seed)


TEACHER_VIEWS = ["efficientnet-lite0@224", "efficientnet-lite1@240", "efficientnet-lite2@260"]
STUDENT_VIEWS = ["efficientnet-lite0@128"]
TEXT_VIEWS = ["minilm-l6@40"]
DEMO_STORAGE_DTYPE = "float16"  # halves the cache (Lite2 grid tokens dominate); towers still run in float32


def _run_config(config_name: str, config_class, runner, overrides: list[str]):
    config = load_config(Path("configs") / config_name, config_class, overrides)
    runner(config, progress=True)
    return Path(config.out) / "best"


def demo(
    data_dir: Path,
    results_dir: Path,
    seed: int = DEFAULT_SEED,
    fresh: bool = False,
    cache_dir: Path = Path("cache/features"),
) -> Path:
    """Run the pipeline on the emoji benchmark; return the results folder."""
    started = time.perf_counter()
    if fresh:
        for folder in (results_dir, cache_dir):
            shutil.rmtree(folder, ignore_errors=True)
    dataset_path = run_stage("data", lambda: build_or_reuse_emoji(data_dir, seed, fresh))
    splits, _ = load_dataset(dataset_path)
    print(dataset_statistics(splits))
    run_stage("preview", lambda: split_contact_sheet(splits["test"], results_dir / "test_contact_sheet.png"))
    run_stage(
        "features",
        lambda: cache_features(
            dataset_path.parent,
            cache_dir,
            STUDENT_VIEWS + TEACHER_VIEWS,
            TEXT_VIEWS,
            storage_dtype=DEMO_STORAGE_DTYPE,
            progress=True,
        ),
    )
    common = [f"data={data_dir}", f"features={cache_dir}"]
    baseline = run_stage(
        "baseline dual (InfoNCE, no teacher)",
        lambda: _run_config(
            "emoji_dual_lite0_128.yaml",
            DualTrainingConfig,
            train_dual,
            [*common, f"out={results_dir / 'baseline_dual'}"],
        ),
    )
    teacher = run_stage(
        "teacher",
        lambda: _run_config(
            "emoji_teacher.yaml",
            TeacherTrainingConfig,
            train_teacher,
            [*common, f"out={results_dir / 'teacher'}"],
        ),
    )
    distilled = {}
    for student in ("dual", "cross"):
        distilled[student] = run_stage(
            f"DCD {student} student",
            lambda student=student: _run_config(
                f"emoji_dcd_{student}.yaml",
                DistillConfig,
                distill,
                [
                    *common,
                    f"out={results_dir / f'dcd_{student}'}",
                    f"teacher={teacher}",
                    f"teacher_cache={results_dir / 'teacher_scores'}",
                ],
            ),
        )
    rows = run_stage(
        "evaluate (test split)",
        lambda: run_eval(
            [teacher, distilled["cross"], distilled["dual"], baseline],
            data_dir,
            cache_dir,
            "test",
            f"{distilled['dual']}:{distilled['cross']}",
            [8, 16, 32],
            results_dir / "test_metrics.json",
            results_dir / "scores",
            progress=True,
        ),
    )
    summary = demo_summary(rows, teacher, distilled, baseline)
    write_text_atomic(results_dir / "summary.md", summary)
    print(summary)
    print(f"demo finished in {time.perf_counter() - started:.1f} s; results in {results_dir}")
    print(
        f"search what it built:  dcd index build --model {distilled['dual']} --data {data_dir} --split test "
        f"--side images --out {results_dir / 'index'}"
    )
    print(f'                       dcd search --index {results_dir / "index"} "a red heart"')
    return results_dir


def demo_summary(rows: dict, teacher: Path, distilled: dict, baseline: Path) -> str:
    """The headline table: each system's test R@K, RSUM and RSUM as a share of the teacher's."""
    names = {
        str(teacher): "fusion teacher",
        str(distilled["cross"]): "DCD compressed cross-encoder",
        str(distilled["dual"]): "DCD dual encoder",
        str(baseline): "dual baseline (no teacher)",
    }
    teacher_rsum = rows[str(teacher)]["rsum"]
    lines = [
        "| system | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | RSUM | % of teacher |",
        "|---|" + "---:|" * 8,
    ]
    for key, metrics in rows.items():
        cells = [metrics[f"{d}_R@{k}"] for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)]
        label = names.get(key, key.replace("cascade", "cascade dual -> cross,"))
        lines.append(
            f"| {label} | "
            + " | ".join(f"{c:.1f}" for c in cells)
            + f" | {metrics['rsum']:.1f} | {100 * metrics['rsum'] / teacher_rsum:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the main job on the emoji benchmark (data, features, teacher, DCD students, evaluation)",
        description="Run the whole pipeline on the embedded emoji benchmark. Stages whose inputs have not "
        "changed are reused; --fresh redoes everything.",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data/emoji"), help="where the benchmark is built"
    )
    parser.add_argument(
        "--results", type=Path, default=Path("results/demo"), help="where results are written"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="data split seed (default %(default)s)"
    )
    parser.add_argument("--cache", type=Path, default=Path("cache/features"), help="feature cache folder")
    parser.add_argument("--fresh", action="store_true", help="redo every stage instead of reusing")
    parser.set_defaults(handler=lambda a: demo(a.data_dir, a.results, a.seed, a.fresh, a.cache))
