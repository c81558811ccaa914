"""`dcd demo`: the main job on the embedded default, the emoji benchmark, stage by stage.

    data -> preview -> features -> baseline dual -> teacher -> DCD dual and cross students
         -> evaluate + speed (every system ranks the test split once, from raw images) -> index
         -> example queries -> report

Each stage prints a one-line status and its duration. A stage is reused only when its inputs -- the resolved
config, the checkpoints it reads (sha256), the dataset's and the feature cache's fingerprints, the benchmark's
settings -- are the ones it last finished with and its outputs are intact (:mod:`dcd_itr.report.stages`);
otherwise it is recomputed, and a training stage whose inputs changed starts its run folder over. ``--fresh``
redoes everything.

Every system ranks the test split exactly once: the speed stage runs the speed benchmark's full ranking
(:mod:`dcd_itr.bench.ranking`) from raw images and captions, towers included, for the teacher, both students,
the cascades and the no-teacher baseline, and the table takes both Recall@K and the time to rank from that run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcd_itr import __version__
from dcd_itr.bench.latency import LatencyConfig
from dcd_itr.bench.runner import BenchConfig, run_benchmark
from dcd_itr.commands.data import dataset_statistics
from dcd_itr.commands.features import cache_features
from dcd_itr.commands.index import index_build
from dcd_itr.config import config_to_dict, load_config
from dcd_itr.data.emoji import DATASET_FILENAME, DEFAULT_SEED, build_emoji_dataset
from dcd_itr.data.emoji_source import find_font
from dcd_itr.data.loading import load_dataset, resolve_dataset_file
from dcd_itr.data.preview import split_contact_sheet
from dcd_itr.errors import CorruptFileError
from dcd_itr.io_utils import file_sha256, write_json_atomic, write_text_atomic
from dcd_itr.report.demo_report import (
    BASELINE_NAME,
    SYSTEM_LABELS,
    ReportInputs,
    metrics_by_system,
    summary_note,
    summary_table,
    write_report,
)
from dcd_itr.report.environment import describe_machine, package_versions
from dcd_itr.report.examples import correct_positions, example_sheet, pick_queries
from dcd_itr.report.stages import LEDGER_FILE, StageLedger, digest, file_digest
from dcd_itr.tasks.common import changed_fields
from dcd_itr.tasks.distill import DistillConfig, distill
from dcd_itr.tasks.dual_contrastive import DualTrainingConfig, train_dual
from dcd_itr.tasks.teacher import TeacherTrainingConfig, train_teacher
from dcd_itr.yaml_io import load_yaml_file


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


def demo_latency() -> LatencyConfig:
    """The speed stage's query-latency part: one 10,000-vector synthetic gallery (the bench's 100K and 1M
    galleries take minutes to build and are `dcd bench`'s job, not the demo's)."""
    return LatencyConfig(sizes=[10_000])


@dataclass
class DemoPlan:
    """What the demo runs. The defaults are the emoji benchmark's; tests swap in tiny configs, towers and data."""

    configs: Path = Path("configs")  # folder of the four training configs below
    baseline_config: str = "emoji_dual_lite0_128.yaml"
    teacher_config: str = "emoji_teacher.yaml"
    dual_config: str = "emoji_dcd_dual.yaml"
    cross_config: str = "emoji_dcd_cross.yaml"
    image_views: list[str] = field(default_factory=lambda: STUDENT_VIEWS + TEACHER_VIEWS)
    text_views: list[str] = field(default_factory=lambda: list(TEXT_VIEWS))
    storage_dtype: str = DEMO_STORAGE_DTYPE
    # an existing dataset (file or folder) instead of building the emoji benchmark into --data-dir
    dataset: Path | None = None
    cascade_ks: list[int] = field(default_factory=lambda: [8, 16, 32])  # the cascade sizes
    latency: LatencyConfig | None = field(default_factory=demo_latency)  # None: no latency part
    threads: int | None = None  # None: torch's default, all cores
    example_queries: int = 5  # text queries on the contact sheet
    example_k: int = 5  # images shown per system and query
    index_backend: str = "faiss-flat"  # exact search: the test split is small
    ablation: Path = Path("benchmarks/results/ablation.md")  # included in the report when it exists
    search_query: str = "a red heart"  # the example printed at the end
    progress: bool = True  # progress bars


def _training_stage(
    ledger: StageLedger,
    name: str,
    config_path: Path,
    config_class,
    runner,
    overrides: list[str],
    upstream: dict[str, Any],
    progress: bool,
) -> dict[str, str]:
    """A training command as a stage: reused when its resolved config and upstream fingerprints are unchanged;
    an unfinished run (no record) is resumed from its ``last/`` checkpoint by the command itself."""
    config = load_config(config_path, config_class, overrides)
    out = Path(config.out)
    resolved = config_to_dict(config)

    def action() -> dict[str, str]:
        saved = out / "config.yaml"
        started = (out / "last" / "state.json").exists() and saved.exists()
        if started and changed_fields(load_yaml_file(saved), config):  # another config's run
            print(f"  {out} holds a run of another config: starting it over")
            shutil.rmtree(out)
        runner(config, progress=progress)
        best = out / "best"
        return {"best": str(best), "weights": file_sha256(best / "model.safetensors"), "config": str(saved)}

    return ledger.run(
        name,
        {"config": resolved, **upstream},
        action,
        outputs=[out / "best" / "model.safetensors", out / "best" / "model.yaml"],
        clear=[out],
    )


def _index_is_current(index_dir: Path, weights: str) -> bool:
    """The index folder is complete and was embedded by the model with these weights."""
    from dcd_itr.search.gallery import Gallery

    try:
        return Gallery.load(index_dir).model_fingerprint == weights
    except (CorruptFileError, OSError, ValueError):
        return False


def _bench_command(config: BenchConfig) -> str:
    """The `dcd bench` command line that reruns the speed stage's benchmark."""
    parts = ["dcd bench"]
    for flag in ("teacher", "cross", "dual"):
        parts += [f"--{flag}", shlex.quote(str(getattr(config, flag)))]
    for name, folder in config.baselines.items():
        parts += ["--baseline", shlex.quote(f"{name}={folder}")]
    parts += [
        "--data",
        shlex.quote(str(config.data)),
        "--split",
        config.split,
        "--out",
        shlex.quote(str(config.out)),
    ]
    parts += ["--cascade-k", *map(str, config.cascade_ks)]
    parts += ["--latency-sizes", *map(str, config.latency.sizes if config.latency else [])]
    parts += ["--skip-existing-itr"] if config.skip_existing_itr else []
    parts += ["--threads", str(config.threads)] if config.threads else []
    parts += ["--top-images", str(config.top_images)] if config.top_images else []
    return " ".join(parts)


def search_commands(results_dir: Path, cross: str, query: str) -> list[str]:
    index, cross = shlex.quote(str(results_dir / "index")), shlex.quote(cross)
    return [
        f"dcd search --index {index} {shlex.quote(query)}",
        f"dcd search --index {index} {shlex.quote(query)} --rerank 16 --cross {cross}",
        f"dcd serve --index {index} --cross {cross}    # then open http://127.0.0.1:8000/",
    ]


def demo(
    data_dir: Path,
    results_dir: Path,
    seed: int = DEFAULT_SEED,
    fresh: bool = False,
    cache_dir: Path = Path("cache/features"),
    plan: DemoPlan | None = None,
) -> Path:
    """Run the pipeline on the emoji benchmark (or ``plan.dataset``); return the report's path."""
    plan = plan or DemoPlan()
    started = time.perf_counter()
    if fresh:
        for folder in (results_dir, cache_dir):
            shutil.rmtree(folder, ignore_errors=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    ledger = StageLedger(results_dir / LEDGER_FILE)

    # ---- data, preview, features
    if plan.dataset is None:
        data_arg: Path = data_dir
        dataset_path = Path(
            ledger.run(
                "data",
                {"font": file_sha256(find_font()), "seed": seed, "builder": __version__},
                lambda: build_or_reuse_emoji(data_dir, seed, fresh),
                outputs=[data_dir / DATASET_FILENAME],
                check=lambda _: emoji_dataset_is_current(data_dir, seed),
            )
        )
    else:
        data_arg, dataset_path = plan.dataset, resolve_dataset_file(plan.dataset)
    data_fingerprint = file_sha256(dataset_path)
    splits, _ = load_dataset(dataset_path)
    print(dataset_statistics(splits))
    test_sheet = results_dir / "test_contact_sheet.png"
    ledger.run(
        "preview",
        {"data": data_fingerprint},
        lambda: str(split_contact_sheet(splits["test"], test_sheet)),
        outputs=[test_sheet],
    )
    manifests = ledger.run(
        "features",
        {
            "data": data_fingerprint,
            "image_views": plan.image_views,
            "text_views": plan.text_views,
            "dtype": plan.storage_dtype,
        },
        lambda: [
            str(result.directory / "manifest.json")
            for result in cache_features(
                data_arg,
                cache_dir,
                plan.image_views,
                plan.text_views,
                storage_dtype=plan.storage_dtype,
                progress=plan.progress,
            )
        ],
        outputs=lambda result: [Path(path) for path in result],
    )
    upstream = {"data": data_fingerprint, "features": digest({path: file_digest(path) for path in manifests})}

    # ---- training
    common = [f"data={data_arg}", f"features={cache_dir}"]
    baseline = _training_stage(
        ledger,
        "baseline dual (InfoNCE, no teacher)",
        plan.configs / plan.baseline_config,
        DualTrainingConfig,
        train_dual,
        [*common, f"out={results_dir / 'baseline_dual'}"],
        upstream,
        plan.progress,
    )
    teacher = _training_stage(
        ledger,
        "teacher",
        plan.configs / plan.teacher_config,
        TeacherTrainingConfig,
        train_teacher,
        [*common, f"out={results_dir / 'teacher'}"],
        upstream,
        plan.progress,
    )
    students = {}
    for student, config_name in (("dual", plan.dual_config), ("cross", plan.cross_config)):
        students[student] = _training_stage(
            ledger,
            f"DCD {student} student",
            plan.configs / config_name,
            DistillConfig,
            distill,
            [
                *common,
                f"out={results_dir / f'dcd_{student}'}",
                f"teacher={teacher['best']}",
                f"teacher_cache={results_dir / 'teacher_scores'}",
            ],
            upstream | {"teacher": teacher["weights"]},
            plan.progress,
        )
    dual, cross = students["dual"], students["cross"]

    # ---- evaluation and speed: every system ranks the test split once, from raw images and captions
    bench = BenchConfig(
        data=data_arg,
        split="test",
        teacher=Path(teacher["best"]),
        cross=Path(cross["best"]),
        dual=Path(dual["best"]),
        cascade_ks=list(plan.cascade_ks),
        out=results_dir,
        skip_existing_itr=True,  # full-size ViLT / BLIP timing references: `dcd bench`'s job
        latency=plan.latency,
        threads=plan.threads,
        baselines={BASELINE_NAME: Path(baseline["best"])},
        top_images=plan.example_k,
        progress=plan.progress,
        print_report=False,
    )
    bench.command = _bench_command(bench)
    speed_files = ["speed.json", "speed.md", "speed_plot.png", "top_images.json", "test_metrics.json"]

    def speed_action() -> dict[str, Any]:
        environment, packages = describe_machine(), package_versions()  # before: the load average at start
        payload = run_benchmark(bench)
        write_json_atomic(results_dir / "test_metrics.json", metrics_by_system(payload))
        write_text_atomic(results_dir / "summary.md", summary_note(payload) + "\n\n" + summary_table(payload))
        return {"environment": environment, "packages": packages}

    measured = ledger.run(
        "evaluate + speed (test split, from raw images)",
        {
            "data": data_fingerprint,
            "models": {role: stage["weights"] for role, stage in {**students, "teacher": teacher}.items()},
            "baseline": baseline["weights"],
            "settings": {
                "split": bench.split,
                "cascade_ks": bench.cascade_ks,
                "latency": dataclasses.asdict(bench.latency) if bench.latency else None,
                "skip_existing_itr": bench.skip_existing_itr,
                "threads": bench.threads,
                "device": bench.device,
                "top_images": bench.top_images,
            },
        },
        speed_action,
        outputs=[results_dir / name for name in [*speed_files, "summary.md"]],
    )

    # ---- index of the test images with the dual student
    index_dir = results_dir / "index"
    ledger.run(
        "index (test images, dual student)",
        {"data": data_fingerprint, "dual": dual["weights"], "backend": plan.index_backend, "side": "images"},
        lambda: {
            "items": index_build(
                Path(dual["best"]),
                data_arg,
                index_dir,
                "test",
                "images",
                plan.index_backend,
                progress=plan.progress,
            ).num_items
        },
        outputs=[index_dir / "gallery.json", index_dir / "vectors.safetensors"],
        clear=[index_dir],
        check=lambda _: _index_is_current(index_dir, dual["weights"]),
    )

    # ---- example queries and the report
    top_path, sheet = results_dir / "top_images.json", results_dir / "examples.png"

    def examples_action() -> dict[str, Any]:
        top, test = json.loads(top_path.read_text(encoding="utf-8")), splits["test"]
        systems = {
            SYSTEM_LABELS[name]: top["text_to_image"][name]
            for name in SYSTEM_LABELS
            if name in top["text_to_image"]
        }
        queries = pick_queries(test, plan.example_queries)
        title = (
            f"Text queries from the test split ({test.num_images} images): each system's top {top['k']} images, "
            "best first; green frame = the correct image"
        )
        example_sheet(test, queries, systems, sheet, top["k"], title)
        return {"k": top["k"], "rows": correct_positions(test, queries, systems, top["k"])}

    examples = ledger.run(
        "example queries",
        {"data": data_fingerprint, "rankings": file_digest(top_path), "queries": plan.example_queries},
        examples_action,
        outputs=[sheet],
    )
    commands = search_commands(results_dir, cross["best"], plan.search_query)
    configs = {
        "baseline dual (InfoNCE, no teacher)": Path(baseline["config"]),
        "teacher": Path(teacher["config"]),
        "DCD dual student": Path(dual["config"]),
        "DCD cross student": Path(cross["config"]),
    }
    ablation = plan.ablation if plan.ablation.is_file() else None
    stages = [
        {"name": outcome.name, "seconds": outcome.computed_seconds, "finished": outcome.finished}
        for outcome in ledger.outcomes
    ]
    report_path = results_dir / "report.md"

    def report_action() -> str:
        inputs = ReportInputs(
            speed=json.loads((results_dir / "speed.json").read_text(encoding="utf-8")),
            plot=results_dir / "speed_plot.png",
            speed_markdown=results_dir / "speed.md",
            examples_sheet=sheet,
            examples=examples["rows"],
            example_k=examples["k"],
            configs=configs,
            environment=measured["environment"],
            packages=measured["packages"],
            stages=stages,
            search_commands=commands,
            command=_demo_command(data_dir, results_dir, seed, cache_dir),
            test_sheet=test_sheet,
            ablation=ablation,
            extra_files={
                "metrics of every system (JSON)": results_dir / "test_metrics.json",
                "speed benchmark (JSON)": results_dir / "speed.json",
                "stage records": results_dir / LEDGER_FILE,
            },
        )
        return str(write_report(inputs, report_path))

    ledger.run(
        "report",
        {
            "files": {
                name: file_digest(results_dir / name)
                for name in [*speed_files, "examples.png", "test_contact_sheet.png"]
            },
            "index": file_digest(index_dir / "gallery.json"),
            "configs": {label: file_digest(path) for label, path in configs.items()},
            "ablation": file_digest(ablation) if ablation else None,
            "stages": stages,
            "measured": measured,
            "examples": examples,
            "commands": commands,
        },
        report_action,
        outputs=[report_path],
    )

    speed = json.loads((results_dir / "speed.json").read_text(encoding="utf-8"))
    reused = sum(outcome.reused for outcome in ledger.outcomes)
    print()
    print(summary_note(speed))
    print()
    print(summary_table(speed))
    print(
        f"demo finished in {time.perf_counter() - started:.1f} s ({reused} of {len(ledger.outcomes)} stages "
        f"reused); report: {report_path}"
    )
    print("search what it built:")
    for command in commands:
        print(f"  {command}")
    return report_path


def _demo_command(data_dir: Path, results_dir: Path, seed: int, cache_dir: Path) -> str:
    """``dcd demo`` with the options that differ from the defaults."""
    parts = ["dcd demo"]
    for flag, value, default in (
        ("--data-dir", data_dir, Path("data/emoji")),
        ("--results", results_dir, Path("results/demo")),
        ("--seed", seed, DEFAULT_SEED),
        ("--cache", cache_dir, Path("cache/features")),
    ):
        if value != default:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the main job on the emoji benchmark (data, features, teacher, DCD students, evaluation and "
        "speed, index, report)",
        description="Run the whole pipeline on the embedded emoji benchmark: build the data, cache tower "
        "features, train the no-teacher baseline and the fusion teacher, distil both students with DCD, rank the "
        "test split once per system from raw images (R@K and time from the same run), index the test images with "
        "the dual student, and write RESULTS/report.md. A stage whose inputs (configs, checkpoint hashes, data "
        "and feature fingerprints) are unchanged is reused; --fresh redoes everything.",
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
