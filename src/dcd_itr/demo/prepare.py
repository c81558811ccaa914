"""The demo's first stages: the data (built or reused), its preview sheet, the feature cache."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from dcd_itr import __version__
from dcd_itr.data.emoji import DATASET_FILENAME, build_emoji_dataset, emoji_dataset_is_current
from dcd_itr.data.emoji_source import find_font
from dcd_itr.data.loading import load_dataset, resolve_dataset_file
from dcd_itr.data.preview import split_contact_sheet, twin_contact_sheet
from dcd_itr.data.scene_files import DATASET_FILENAME as SCENES_FILENAME
from dcd_itr.data.scenes import build_scenes_dataset
from dcd_itr.data.statistics import dataset_statistics
from dcd_itr.demo.ledger import digest, file_digest
from dcd_itr.demo.plan import DemoRun
from dcd_itr.demo.workers import map_jobs
from dcd_itr.features import cache_features
from dcd_itr.io_utils import file_sha256


def build_or_reuse_emoji(data_dir: Path, seed: int, fresh: bool) -> Path:
    if not fresh and emoji_dataset_is_current(data_dir, seed):
        print(f"  reusing {data_dir / DATASET_FILENAME} (same font and seed)")
        return data_dir / DATASET_FILENAME
    return build_emoji_dataset(data_dir, seed=seed)


SIZE_KEYS = {"vocab": "vocab", "train_scenes": "train", "val_pairs": "val", "test_pairs": "test"}
SIZE_KEYS |= {"objects": "objects", "canvas": "canvas"}  # builder option -> its key in info["sizes"]


def scenes_sizes(options: dict[str, Any]) -> dict[str, int]:
    """The ``info["sizes"]`` a build with these builder ``options`` records (the builder's defaults elsewhere)."""
    defaults = inspect.signature(build_scenes_dataset).parameters
    return {key: options.get(option, defaults[option].default) for option, key in SIZE_KEYS.items()}


def scenes_dataset_is_current(data_dir: Path, seed: int, options: dict[str, Any]) -> bool:
    """True when ``data_dir`` holds a complete scenes build with this seed and these sizes."""
    try:
        payload = json.loads((data_dir / SCENES_FILENAME).read_text(encoding="utf-8"))
        info, images = payload["info"], payload["images"]
        present = all((data_dir / i["filepath"] / i["filename"]).is_file() for i in images)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return info.get("seed") == seed and info.get("sizes") == scenes_sizes(options) and present


def build_or_reuse_scenes(run: DemoRun, options: dict[str, Any]) -> Path:
    """A complete build already in ``--data-dir`` (e.g. from `dcd data scenes`) with this seed and these sizes is
    reused; otherwise the benchmark is built there."""
    if not run.fresh and scenes_dataset_is_current(run.data_dir, run.seed, options):
        print(f"  reusing {run.data_dir / SCENES_FILENAME} (same seed and sizes)")
        return run.data_dir / SCENES_FILENAME
    return build_scenes_dataset(run.data_dir, seed=run.seed, progress=run.plan.progress, **options)


def scenes_data_stage(run: DemoRun) -> Path:
    """Build the emoji-scenes benchmark into ``--data-dir`` (reused while its seed, sizes and font are the same)."""
    options = dict(run.plan.scenes_options)
    sources = {key: str(value) for key, value in options.items() if key in ("cldr_dir", "emoji_data")}
    return Path(
        run.ledger.run(
            "data",
            {
                "font": file_sha256(find_font()),
                "seed": run.seed,
                "options": options | sources,
                "builder": __version__,
            },
            lambda: str(build_or_reuse_scenes(run, options)),
            outputs=[run.data_dir / SCENES_FILENAME],
            check=lambda _: scenes_dataset_is_current(run.data_dir, run.seed, options),
        )
    )


def data_stage(run: DemoRun) -> None:
    """Build (or reuse) the plan's benchmark, or take ``plan.dataset``; print its statistics."""
    if run.plan.dataset is None and run.plan.benchmark == "scenes":
        run.data_arg, dataset_path = run.data_dir, scenes_data_stage(run)
    elif run.plan.dataset is None:
        run.data_arg = run.data_dir
        dataset_path = Path(
            run.ledger.run(
                "data",
                {"font": file_sha256(find_font()), "seed": run.seed, "builder": __version__},
                lambda: build_or_reuse_emoji(run.data_dir, run.seed, run.fresh),
                outputs=[run.data_dir / DATASET_FILENAME],
                check=lambda _: emoji_dataset_is_current(run.data_dir, run.seed),
            )
        )
    else:
        run.data_arg, dataset_path = run.plan.dataset, resolve_dataset_file(run.plan.dataset)
    run.data_fingerprint = file_sha256(dataset_path)
    run.splits, _ = load_dataset(dataset_path)
    print(dataset_statistics(run.splits))


def preview_stage(run: DemoRun) -> None:
    test_sheet = run.results_dir / "test_contact_sheet.png"
    run.ledger.run(
        "preview",
        {"data": run.data_fingerprint},
        lambda: str(
            twin_contact_sheet(resolve_dataset_file(run.data_arg), test_sheet)
            if run.plan.has_twins
            else split_contact_sheet(run.splits["test"], test_sheet)
        ),
        outputs=[test_sheet],
    )


def cache_view(
    data: Path, cache: Path, view: str, kind: str, storage_dtype: str, progress: bool
) -> list[str]:
    """Cache one view (``kind`` "image" or "text") of every split; returns the manifests' paths."""
    images, texts = ([view], []) if kind == "image" else ([], [view])
    results = cache_features(data, cache, images, texts, storage_dtype=storage_dtype, progress=progress)
    return [str(result.directory / "manifest.json") for result in results]


def view_jobs(run: DemoRun) -> list[tuple[str, str]]:
    """(view, kind) of every cached view, costliest first: region views (detector + a tower call per object),
    whole-image views, then text (so that on two workers the region view runs beside the other two)."""
    views = [(view, "image") for view in run.plan.image_views] + [
        (view, "text") for view in run.plan.text_views
    ]
    return sorted(views, key=lambda job: (not job[0].startswith("regions-"), job[1] == "text"))


def cache_plan_views(run: DemoRun) -> list[str]:
    """Every view of the plan, one view per worker process (see :mod:`dcd_itr.demo.workers`); the manifests in
    the plan's order (image views, then text views; splits in order)."""
    plan, workers = run.plan, run.workers
    jobs = view_jobs(run)
    arguments = [
        (run.data_arg, run.cache_dir, view, kind, plan.storage_dtype, plan.progress and workers <= 1)
        for view, kind in jobs
    ]
    manifests = dict(zip(jobs, map_jobs(cache_view, arguments, workers), strict=True))
    ordered = [(view, "image") for view in plan.image_views] + [(view, "text") for view in plan.text_views]
    return [path for job in ordered for path in manifests[job]]


def features_stage(run: DemoRun) -> dict[str, str]:
    """Cache the plan's views; returns the upstream fingerprints every training stage depends on."""
    plan = run.plan
    manifests = run.ledger.run(
        "features",
        {
            "data": run.data_fingerprint,
            "image_views": plan.image_views,
            "text_views": plan.text_views,
            "dtype": plan.storage_dtype,
        },
        lambda: cache_plan_views(run),
        outputs=lambda result: [Path(path) for path in result],
    )
    return {"data": run.data_fingerprint, "features": digest({path: file_digest(path) for path in manifests})}
