"""The demo's training stages: the no-teacher baseline, the teacher, the two DCD students."""

from __future__ import annotations

import dataclasses
import shutil
import typing
from pathlib import Path
from typing import Any

import yaml

from dcd_itr.config import config_to_dict, load_config
from dcd_itr.data.loading import resolve_dataset_file
from dcd_itr.demo.ledger import file_digest
from dcd_itr.demo.packaged import MANIFEST, PACKAGED_FILES, install_packaged_teacher, records_fingerprint
from dcd_itr.demo.plan import DemoPlan, DemoRun, TrainedModels
from dcd_itr.demo.workers import Stage, run_stages
from dcd_itr.errors import DcdError
from dcd_itr.io_utils import write_text_atomic
from dcd_itr.models.registry import weights_fingerprint
from dcd_itr.tasks.common import changed_fields
from dcd_itr.tasks.distill import DistillConfig, distill
from dcd_itr.tasks.dual_contrastive import DualTrainingConfig, train_dual
from dcd_itr.tasks.grounded_teacher import GroundedTeacherConfig, is_grounded_config, train_grounded_teacher
from dcd_itr.tasks.teacher_training import TeacherTrainingConfig, train_teacher
from dcd_itr.yaml_io import load_yaml_file


def training_stages(run: DemoRun, upstream: dict[str, str]) -> TrainedModels:
    """The no-teacher baseline, the teacher, then both DCD students distilled from it. Stages that do not depend
    on each other train side by side in worker processes (:mod:`dcd_itr.demo.workers`): with the packaged
    teacher, the DCD dual student (which first writes the teacher-score cache both students read) beside the
    baseline, then the cross student on the first free worker; a teacher that must be trained trains beside the
    baseline, then the students."""
    plan, results = run.plan, run.results_dir
    common = [f"data={run.data_arg}", f"features={run.cache_dir}"]

    def train(name: str, config: str, config_class, runner, out: str, extra=(), inputs=upstream) -> Stage:
        overrides = [*common, f"out={results / out}", *extra]
        return _training_stage(run, name, plan.configs / config, config_class, runner, overrides, inputs)

    baseline = train(
        "baseline dual (InfoNCE, no teacher)",
        plan.baseline_config,
        DualTrainingConfig,
        train_dual,
        "baseline_dual",
    )
    if use_packaged_teacher(plan):
        teacher, first = packaged_teacher_stage(run, Path(plan.packaged_teacher)), [baseline]
    else:
        teacher_stage = trained_teacher_stage(run, train)
        run_stages(run.ledger, [baseline, teacher_stage], run.workers)
        teacher, first = dict(teacher_stage.result), []
        if is_grounded_config(plan.configs / plan.teacher_config):
            teacher |= {"paths_only": str(Path(teacher["best"]).parent / "paths_only")}
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
    # longest first: the dual (cache ~4 CPU-min + training) on one worker, the baseline on the other, the cross
    # student once the baseline is done -- by then the dual has written the cache (if not, the cross student
    # scores the pools it does not find itself: the same deterministic scores, written atomically, only slower)
    order = [students["dual"], *first, students["cross"]]
    run_stages(run.ledger, order, run.workers)
    return TrainedModels(baseline.result, teacher, students["dual"].result, students["cross"].result)


def use_packaged_teacher(plan: DemoPlan) -> bool:
    """The packaged teacher is used when the plan names one, it is there, and --retrain-teacher is off."""
    folder = plan.packaged_teacher
    if folder is None or plan.retrain_teacher:
        return False
    if not (Path(folder) / MANIFEST).is_file():
        print(f"  no packaged teacher in {folder}: training one with {plan.configs / plan.teacher_config}")
        return False
    return True


def trained_teacher_stage(run: DemoRun, train) -> Stage:
    """The teacher trained by its config (fusion or grounded), as a stage."""
    plan = run.plan
    if is_grounded_config(plan.configs / plan.teacher_config):
        return train("teacher", plan.teacher_config, GroundedTeacherConfig, train_grounded_teacher, "teacher")
    return train("teacher", plan.teacher_config, TeacherTrainingConfig, train_teacher, "teacher")


def packaged_teacher_stage(run: DemoRun, folder: Path) -> dict[str, str]:
    """Install the packaged teacher into RESULTS/teacher (best/, paths_only/, config.yaml from its manifest)."""
    out = run.results_dir / "teacher"

    def action() -> dict[str, str]:
        dataset = resolve_dataset_file(run.data_arg)
        manifest = install_packaged_teacher(folder, out, records_fingerprint(dataset))
        write_text_atomic(out / "config.yaml", yaml.safe_dump(manifest.get("config"), sort_keys=False))
        best = out / "best"
        return {
            "best": str(best),
            "weights": weights_fingerprint(best),
            "config": str(out / "config.yaml"),
            "paths_only": str(out / "paths_only"),
            "packaged": str(folder),
            "command": manifest["command"],
        }

    packaged = {name: file_digest(folder / name) for name in (MANIFEST, *PACKAGED_FILES)}
    return run.ledger.run(
        "teacher (packaged)",
        {"packaged": packaged, "data": run.data_fingerprint},
        action,
        outputs=[out / "best" / "model.safetensors", out / "paths_only" / "model.yaml", out / "config.yaml"],
        clear=[out],
    )


def only_new_defaults(old: Any, new: Any, defaults: Any) -> bool:
    """``new`` equals ``old`` except for fields ``old`` lacks that hold their default (fields a newer version
    added, e.g. an option that is off unless set): the same training run."""
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):  # e.g. a list of sub-configs
        items = defaults if isinstance(defaults, list) and defaults else [None]
        return all(
            only_new_defaults(a, b, items[min(i, len(items) - 1)])
            for i, (a, b) in enumerate(zip(old, new, strict=True))
        )
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old == new
    defaults = defaults if isinstance(defaults, dict) else {}
    if not old.keys() <= new.keys():
        return False
    for key, value in new.items():
        if key in old and not only_new_defaults(old[key], value, defaults.get(key)):
            return False
        if key not in old and (key not in defaults or value != defaults[key]):
            return False
    return True


def default_tree(config_class: type) -> dict[str, Any]:
    """The defaults of a dataclass config as plain data, a list of sub-configs given as ``[defaults of one]``."""
    values = config_to_dict(config_class())
    for name, hint in typing.get_type_hints(config_class).items():
        args = typing.get_args(hint)
        if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
            values[name] = [default_tree(args[0])]
        elif dataclasses.is_dataclass(hint) and name in values:
            values[name] = default_tree(hint)
    return values


def recorded_config(resolved: dict[str, Any], saved: Path, defaults: dict[str, Any]) -> dict[str, Any]:
    """The config a training stage is fingerprinted by: ``resolved``, or the one a finished run saved in
    ``saved`` when the two differ only by fields added since at their defaults, so that upgrading the package
    does not retrain a finished run whose behaviour the new fields leave unchanged."""
    if not saved.is_file():
        return resolved
    try:
        old = load_yaml_file(saved)
    except DcdError:  # unreadable: fingerprint the resolved config (the stage then recomputes)
        return resolved
    return old if old != resolved and only_new_defaults(old, resolved, defaults) else resolved


def train_job(runner, config, progress: bool) -> dict[str, str]:
    """Run a training command (resuming its ``last/`` checkpoint); a run folder of another config starts over."""
    out = Path(config.out)
    saved = out / "config.yaml"
    started = (out / "last" / "state.json").exists() and saved.exists()
    if started and changed_fields(load_yaml_file(saved), config):  # another config's run
        print(f"  {out} holds a run of another config: starting it over")
        shutil.rmtree(out)
    runner(config, progress=progress)
    best = out / "best"
    return {"best": str(best), "weights": weights_fingerprint(best), "config": str(saved)}


def _training_stage(
    run: DemoRun,
    name: str,
    config_path: Path,
    config_class,
    runner,
    overrides: list[str],
    upstream: dict[str, Any],
) -> Stage:
    """A training command as a stage: reused when its resolved config and upstream fingerprints are unchanged;
    an unfinished run (no record) is resumed from its ``last/`` checkpoint by the command itself."""
    config = load_config(config_path, config_class, overrides)
    out = Path(config.out)
    resolved = recorded_config(config_to_dict(config), out / "config.yaml", default_tree(config_class))
    return Stage(
        name,
        {"config": resolved, **upstream},
        train_job,
        (runner, config, run.plan.progress and run.workers <= 1),  # no interleaved bars from two workers
        outputs=[out / "best" / "model.safetensors", out / "best" / "model.yaml"],
        clear=[out],
    )
