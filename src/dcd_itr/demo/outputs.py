"""The demo's measuring and writing stages: evaluate + speed, the index, example queries, the report."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

from dcd_itr.data.emoji import DEFAULT_SEED
from dcd_itr.data.scene_annotations import split_twin_index
from dcd_itr.demo.environment import describe_machine, package_versions
from dcd_itr.demo.examples import correct_positions, example_sheet, pick_queries
from dcd_itr.demo.ledger import LEDGER_FILE, file_digest
from dcd_itr.demo.plan import DemoRun, TrainedModels
from dcd_itr.demo.report import (
    BASELINE_NAME,
    SYSTEM_LABELS,
    ReportInputs,
    metrics_by_system,
    summary_note,
    summary_table,
    system_label,
    write_report,
)
from dcd_itr.errors import CorruptFileError
from dcd_itr.evaluate.models import evaluate_model
from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.search.build import index_build
from dcd_itr.search.gallery import Gallery
from dcd_itr.speed.runner import BenchConfig, bench_command_line, run_benchmark

PATHS_ONLY_FILE = "paths_only.json"  # test metrics of the teacher with its fusion term removed
# `dcd demo` folders per benchmark: the emoji ones are those of earlier releases, so a finished emoji run is reused;
# the scenes run gets its own (a feature cache is laid out by view and split, so two datasets cannot share one)
DEFAULT_RESULTS = {"scenes": "results/demo_scenes", "emoji": "results/demo"}
DEFAULT_CACHE = {"scenes": "cache/features_scenes", "emoji": "cache/features"}
SPEED_FILES = ["speed.json", "speed.md", "speed_plot.png", "top_images.json", "test_metrics.json"]


def evaluate_and_speed_stage(run: DemoRun, models: TrainedModels) -> dict[str, Any]:
    """Every system ranks the test split once, from raw images and captions; returns the machine it ran on."""
    plan, results = run.plan, run.results_dir
    bench = BenchConfig(
        data=run.data_arg,
        split="test",
        teacher=Path(models.teacher["best"]),
        cross=Path(models.cross["best"]),
        dual=Path(models.dual["best"]),
        cascade_ks=list(plan.cascade_ks),
        out=results,
        skip_existing_itr=True,  # full-size ViLT / BLIP timing references: `dcd bench`'s job
        latency=plan.latency,
        threads=plan.threads,
        baselines={BASELINE_NAME: Path(models.baseline["best"])},
        top_images=plan.example_k,
        progress=plan.progress,
        print_report=False,
    )
    bench.command = bench_command_line(bench)

    paths_only = models.teacher.get("paths_only")

    def speed_action() -> dict[str, Any]:
        environment, packages = describe_machine(), package_versions()  # before: the load average at start
        payload = run_benchmark(bench)
        if paths_only:  # the interaction gain's reference: the teacher with its fusion term removed
            reference = evaluate_model(Path(paths_only), run.data_arg, run.cache_dir, "test", progress=False)
            write_json_atomic(results / PATHS_ONLY_FILE, reference)
        write_json_atomic(
            results / "test_metrics.json", metrics_by_system(payload, paths_only_metrics(results))
        )
        write_text_atomic(results / "summary.md", summary_note(payload) + "\n\n" + summary_table(payload))
        return {"environment": environment, "packages": packages}

    students = {"dual": models.dual, "cross": models.cross, "teacher": models.teacher}
    # scenes-only inputs are added only there, so a finished emoji run keeps the fingerprints it was recorded with
    scenes_inputs = {"paths_only": file_digest(Path(paths_only) / "model.yaml")} if paths_only else {}
    return run.ledger.run(
        "evaluate + speed (test split, from raw images)",
        {
            "data": run.data_fingerprint,
            "models": {role: stage["weights"] for role, stage in students.items()},
            "baseline": models.baseline["weights"],
            **scenes_inputs,
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
        outputs=[results / name for name in [*SPEED_FILES, "summary.md"]]
        + ([results / PATHS_ONLY_FILE] if paths_only else []),
    )


def _index_is_current(index_dir: Path, weights: str) -> bool:
    """The index folder is complete and was embedded by the model with these weights."""
    try:
        return Gallery.load(index_dir).model_fingerprint == weights
    except (CorruptFileError, OSError, ValueError):
        return False


def index_stage(run: DemoRun, dual: dict[str, str]) -> None:
    """Index the test images with the dual student (text queries -> images)."""
    index_dir, plan = run.results_dir / "index", run.plan
    run.ledger.run(
        "index (test images, dual student)",
        {
            "data": run.data_fingerprint,
            "dual": dual["weights"],
            "backend": plan.index_backend,
            "side": "images",
        },
        lambda: {
            "items": index_build(
                Path(dual["best"]),
                run.data_arg,
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


def examples_stage(run: DemoRun) -> dict[str, Any]:
    """A contact sheet of example text queries with each system's top images."""
    top_path, sheet = run.results_dir / "top_images.json", run.results_dir / "examples.png"

    def examples_action() -> dict[str, Any]:
        top, test = json.loads(top_path.read_text(encoding="utf-8")), run.splits["test"]
        names = [*SYSTEM_LABELS, BASELINE_NAME] if run.plan.has_twins else list(SYSTEM_LABELS)
        systems = {
            system_label(name): top["text_to_image"][name] for name in names if name in top["text_to_image"]
        }
        queries = pick_queries(test, run.plan.example_queries)
        twins = split_twin_index(run.data_arg, "test") if run.plan.has_twins else None
        title = (
            f"Text queries from the test split ({test.num_images} images): each system's top {top['k']} images, "
            "best first; green frame = the correct image"
            + (
                "; orange = its swapped twin (same objects, the related two exchanged)"
                if twins is not None
                else ""
            )
        )
        example_sheet(test, queries, systems, sheet, top["k"], title, twins)
        rows = correct_positions(test, queries, systems, top["k"], twins)
        return {"k": top["k"], "rows": rows}

    return run.ledger.run(
        "example queries",
        {
            "data": run.data_fingerprint,
            "rankings": file_digest(top_path),
            "queries": run.plan.example_queries,
            **({"twins": True} if run.plan.has_twins else {}),  # emoji: the fingerprint it was recorded with
        },
        examples_action,
        outputs=[sheet],
    )


def report_stage(
    run: DemoRun, models: TrainedModels, measured: dict[str, Any], examples: dict[str, Any]
) -> Path:
    """``RESULTS/report.md``: the table, the plot, the examples, the configs, the machine and the stages."""
    results, ledger = run.results_dir, run.ledger
    teacher_note = (
        f"packaged teacher from `{models.teacher['packaged']}`, made by `{models.teacher['command']}`"
        if models.teacher.get("packaged")
        else None
    )
    commands = search_commands(results, models.cross["best"], search_query(run, examples))
    configs = {
        "baseline dual (InfoNCE, no teacher)": Path(models.baseline["config"]),
        "teacher": Path(models.teacher["config"]),
        "DCD dual student": Path(models.dual["config"]),
        "DCD cross student": Path(models.cross["config"]),
    }
    ablation = run.plan.ablation if run.plan.ablation.is_file() else None
    stages = [
        {"name": outcome.name, "seconds": outcome.computed_seconds, "finished": outcome.finished}
        for outcome in ledger.outcomes
    ]
    report_path = results / "report.md"

    def report_action() -> str:
        inputs = ReportInputs(
            speed=json.loads((results / "speed.json").read_text(encoding="utf-8")),
            plot=results / "speed_plot.png",
            speed_markdown=results / "speed.md",
            examples_sheet=results / "examples.png",
            examples=examples["rows"],
            example_k=examples["k"],
            configs=configs,
            environment=measured["environment"],
            packages=measured["packages"],
            stages=stages,
            search_commands=commands,
            command=demo_command(run),
            paths_only=paths_only_metrics(results),
            teacher_note=teacher_note,
            test_sheet=results / "test_contact_sheet.png",
            ablation=ablation,
            extra_files={
                "metrics of every system (JSON)": results / "test_metrics.json",
                "speed benchmark (JSON)": results / "speed.json",
                "stage records": results / LEDGER_FILE,
            },
        )
        return str(write_report(inputs, report_path))

    ledger.run(
        "report",
        {
            "files": {
                name: file_digest(results / name)
                for name in [*SPEED_FILES, "examples.png", "test_contact_sheet.png"]
            },
            "index": file_digest(results / "index" / "gallery.json"),
            "configs": {label: file_digest(path) for label, path in configs.items()},
            "ablation": file_digest(ablation) if ablation else None,
            "stages": stages,
            "measured": measured,
            "examples": examples,
            "commands": commands,
            # scenes only: a finished emoji run keeps the fingerprint it was recorded with
            **(
                {"paths_only": file_digest(results / PATHS_ONLY_FILE), "teacher_note": teacher_note}
                if run.plan.has_twins
                else {}
            ),
        },
        report_action,
        outputs=[report_path],
    )
    return report_path


def search_commands(results_dir: Path, cross: str, query: str) -> list[str]:
    index, cross = shlex.quote(str(results_dir / "index")), shlex.quote(cross)
    return [
        f"dcd search --index {index} {shlex.quote(query)}",
        f"dcd search --index {index} {shlex.quote(query)} --rerank 16 --cross {cross}",
        f"dcd serve --index {index} --cross {cross}    # then open http://127.0.0.1:8000/",
    ]


def search_query(run: DemoRun, examples: dict[str, Any]) -> str:
    """The plan's example search, else the first example query (a caption of a scene in the index)."""
    if run.plan.search_query:
        return run.plan.search_query
    return examples["rows"][0]["caption"] if examples["rows"] else "a cat face to the left of a pizza"


def paths_only_metrics(results: Path) -> dict[str, Any] | None:
    """The teacher-without-fusion metrics the speed stage wrote, or None (emoji benchmark)."""
    path = results / PATHS_ONLY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def demo_command(run: DemoRun) -> str:
    """``dcd demo`` with the options that differ from the defaults."""
    plan = run.plan
    parts = ["dcd demo"] + (["--benchmark", plan.benchmark] if plan.benchmark != "scenes" else [])
    for flag, value, default in (
        ("--data-dir", run.data_dir, Path(f"data/{plan.benchmark}")),
        ("--results", run.results_dir, Path(DEFAULT_RESULTS[plan.benchmark])),
        ("--seed", run.seed, DEFAULT_SEED),
        ("--cache", run.cache_dir, Path(DEFAULT_CACHE[plan.benchmark])),
    ):
        if value != default:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts + (["--retrain-teacher"] if plan.retrain_teacher else []))
