"""`dcd demo`: the main job on the embedded default, the emoji benchmark, stage by stage.

Each stage prints a one-line status and its duration; a stage whose inputs have not changed since the last run
is reused (``--fresh`` redoes everything).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dcd_itr.commands.data import dataset_statistics
from dcd_itr.data.emoji import DATASET_FILENAME, DEFAULT_SEED, build_emoji_dataset
from dcd_itr.data.emoji_source import find_font
from dcd_itr.data.loading import load_dataset
from dcd_itr.data.preview import split_contact_sheet

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


def demo(data_dir: Path, results_dir: Path, seed: int = DEFAULT_SEED, fresh: bool = False) -> Path:
    """Run the pipeline on the emoji benchmark; return the results folder."""
    started = time.perf_counter()
    dataset_path = run_stage("data", lambda: build_or_reuse_emoji(data_dir, seed, fresh))
    splits, _ = load_dataset(dataset_path)
    print(dataset_statistics(splits))
    sheet = run_stage(
        "preview", lambda: split_contact_sheet(splits["test"], results_dir / "test_contact_sheet.png")
    )
    print(f"  contact sheet of test images: {sheet}")
    print(f"demo finished in {time.perf_counter() - started:.1f} s; results in {results_dir}")
    return results_dir


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
    parser.add_argument("--fresh", action="store_true", help="redo every stage instead of reusing")
    parser.set_defaults(handler=lambda a: demo(a.data_dir, a.results, a.seed, a.fresh))
