"""`dcd demo`: the main job, stage by stage, on the emoji-scenes relation benchmark (the showcase,
:func:`~dcd_itr.demo.plan.scenes_plan`) or the single-emoji benchmark (``--benchmark emoji``).

    data -> preview -> features -> baseline dual -> teacher (trained, or the packaged one, checked)
         -> DCD dual and cross students
         -> evaluate + speed (every system ranks the test split once, from raw images) -> index
         -> example queries -> report

Each stage prints a one-line status and its duration. A stage is reused only when its inputs -- the resolved
config, the checkpoints it reads (sha256), the dataset's and the feature cache's fingerprints, the benchmark's
settings -- are the ones it last finished with and its outputs are intact (:mod:`dcd_itr.demo.ledger`);
otherwise it is recomputed, and a training stage whose inputs changed starts its run folder over. ``--fresh``
redoes everything. The ledger's fingerprints hold values (configs, hashes, settings), never module paths, so
moving code does not invalidate a finished run.

Every system ranks the test split exactly once: the speed stage runs the speed benchmark's full ranking
(:mod:`dcd_itr.speed.ranking`) from raw images and captions, towers included, for the teacher, both students,
the cascades and the no-teacher baseline, and the table takes both Recall@K and the time to rank from that run.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from dcd_itr.data.emoji import DEFAULT_SEED
from dcd_itr.demo.ledger import LEDGER_FILE, StageLedger
from dcd_itr.demo.outputs import (
    evaluate_and_speed_stage,
    examples_stage,
    index_stage,
    paths_only_metrics,
    report_stage,
    search_commands,
    search_query,
)
from dcd_itr.demo.plan import DemoPlan, DemoRun, TrainedModels
from dcd_itr.demo.prepare import data_stage, features_stage, preview_stage
from dcd_itr.demo.report import (
    summary_note,
    summary_table,
)
from dcd_itr.demo.training import training_stages


def demo(
    data_dir: Path,
    results_dir: Path,
    seed: int = DEFAULT_SEED,
    fresh: bool = False,
    cache_dir: Path = Path("cache/features"),
    plan: DemoPlan | None = None,
) -> Path:
    """Run the pipeline of ``plan`` (default: the emoji benchmark's :class:`DemoPlan`; ``plan.dataset`` when set);
    return the report's path."""
    started = time.perf_counter()
    if fresh:
        for folder in (results_dir, cache_dir):
            shutil.rmtree(folder, ignore_errors=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    ledger = StageLedger(results_dir / LEDGER_FILE)
    run = DemoRun(plan or DemoPlan(), ledger, data_dir, results_dir, cache_dir, seed, fresh)
    data_stage(run)
    preview_stage(run)
    upstream = features_stage(run)
    models = training_stages(run, upstream)
    measured = evaluate_and_speed_stage(run, models)
    index_stage(run, models.dual)
    examples = examples_stage(run)
    report_path = report_stage(run, models, measured, examples)
    print_summary(run, started, report_path, models, examples)
    return report_path


def print_summary(
    run: DemoRun, started: float, report_path: Path, models: TrainedModels, examples: dict
) -> None:
    speed = json.loads((run.results_dir / "speed.json").read_text(encoding="utf-8"))
    reused = sum(outcome.reused for outcome in run.ledger.outcomes)
    print()
    print(summary_note(speed))
    print()
    print(summary_table(speed, paths_only_metrics(run.results_dir)))
    print(
        f"demo finished in {time.perf_counter() - started:.1f} s ({reused} of {len(run.ledger.outcomes)} stages "
        f"reused); report: {report_path}"
    )
    print("search what it built:")
    for command in search_commands(run.results_dir, models.cross["best"], search_query(run, examples)):
        print(f"  {command}")
