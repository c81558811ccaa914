"""The demo's training stages: the no-teacher baseline, the teacher, the two DCD students."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dcd_itr.config import config_to_dict, load_config
from dcd_itr.demo.plan import DemoRun, TrainedModels
from dcd_itr.models.registry import weights_fingerprint
from dcd_itr.tasks.common import changed_fields
from dcd_itr.tasks.distill import DistillConfig, distill
from dcd_itr.tasks.dual_contrastive import DualTrainingConfig, train_dual
from dcd_itr.tasks.teacher import TeacherTrainingConfig, train_teacher
from dcd_itr.yaml_io import load_yaml_file


def training_stages(run: DemoRun, upstream: dict[str, str]) -> TrainedModels:
    """The no-teacher baseline, the teacher, then both DCD students distilled from it."""
    plan, results = run.plan, run.results_dir
    common = [f"data={run.data_arg}", f"features={run.cache_dir}"]

    def train(name: str, config: str, config_class, runner, out: str, extra=(), inputs=upstream):
        overrides = [*common, f"out={results / out}", *extra]
        return _training_stage(run, name, plan.configs / config, config_class, runner, overrides, inputs)

    baseline = train(
        "baseline dual (InfoNCE, no teacher)",
        plan.baseline_config,
        DualTrainingConfig,
        train_dual,
        "baseline_dual",
    )
    teacher = train("teacher", plan.teacher_config, TeacherTrainingConfig, train_teacher, "teacher")
    students = {}
    for student, config_name in (("dual", plan.dual_config), ("cross", plan.cross_config)):
        students[student] = train(
            f"DCD {student} student",
            config_name,
            DistillConfig,
            distill,
            f"dcd_{student}",
            [f"teacher={teacher['best']}", f"teacher_cache={results / 'teacher_scores'}"],
            upstream | {"teacher": teacher["weights"]},
        )
    return TrainedModels(baseline, teacher, students["dual"], students["cross"])


def _training_stage(
    run: DemoRun,
    name: str,
    config_path: Path,
    config_class,
    runner,
    overrides: list[str],
    upstream: dict[str, Any],
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
        runner(config, progress=run.plan.progress)
        best = out / "best"
        return {"best": str(best), "weights": weights_fingerprint(best), "config": str(saved)}

    return run.ledger.run(
        name,
        {"config": resolved, **upstream},
        action,
        outputs=[out / "best" / "model.safetensors", out / "best" / "model.yaml"],
        clear=[out],
    )
