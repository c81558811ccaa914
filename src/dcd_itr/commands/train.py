"""`dcd train-dual`, `dcd train-teacher` and `dcd distill`: training runs driven by a YAML config plus `--set`
overrides.

Under ``torchrun --nproc_per_node N``, ``dcd distill`` and ``dcd train-dual`` join the process group that torchrun
describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) and the training loop runs data-parallel; only rank 0
writes. ``dcd distill`` with ``train.device: cuda`` uses NCCL and one GPU per rank (``LOCAL_RANK``) and shares
the teacher's pool scoring across the ranks; ``train-dual`` trains CPU processes over gloo. ``train-teacher``
runs in one process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dcd_itr.config import load_config
from dcd_itr.distributed import resolve_device, torchrun_process_group
from dcd_itr.tasks.distill import DistillConfig, distill
from dcd_itr.tasks.dual_contrastive import DualTrainingConfig, train_dual
from dcd_itr.tasks.grounded_teacher import GroundedTeacherConfig, is_grounded_config, train_grounded_teacher
from dcd_itr.tasks.teacher import TeacherTrainingConfig, train_teacher


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="YAML run config (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field by dotted path, repeatable (e.g. --set train.epochs=3 --set out=runs/x)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_train_dual(config_path: Path, overrides: list[str], progress: bool = True):
    config = load_config(config_path, DualTrainingConfig, overrides)
    with torchrun_process_group() as rank:
        result = train_dual(config, progress)
    if rank == 0:
        print(
            f"best epoch {result.best_epoch + 1}: val rsum {result.best_metrics.get('rsum', float('nan')):.1f}; "
            f"model in {Path(config.out) / 'best'}"
        )
    return result


def run_train_teacher(config_path: Path, overrides: list[str], progress: bool = True):
    if is_grounded_config(config_path):  # `kind: grounded`: the region cross-encoder of the scenes benchmark
        grounded = load_config(config_path, GroundedTeacherConfig, overrides)
        result = train_grounded_teacher(grounded, progress)
        print(
            f"grounded teacher: best epoch {result.best_epoch + 1}, val rsum "
            f"{result.best_metrics.get('rsum', float('nan')):.1f}; model in {Path(grounded.out) / 'best'}, "
            f"paths-only in {Path(grounded.out) / 'paths_only'}"
        )
        return result
    config = load_config(config_path, TeacherTrainingConfig, overrides)
    result = train_teacher(config, progress)
    print(
        f"teacher: best epoch {result.best_epoch + 1} (0 = the untrained ensemble), "
        f"val rsum {result.best_metrics.get('rsum', float('nan')):.1f}; model in {Path(config.out) / 'best'}"
    )
    return result


def run_distill(config_path: Path, overrides: list[str], progress: bool = True):
    config = load_config(config_path, DistillConfig, overrides)
    on_gpu = resolve_device(config.train.device).startswith("cuda")
    with torchrun_process_group("nccl" if on_gpu else "gloo") as rank:
        result = distill(config, progress)
    if rank == 0:
        print(
            f"{config.student} student ({config.loss.name} loss): best epoch {result.best_epoch + 1}, "
            f"val rsum {result.best_metrics.get('rsum', float('nan')):.1f}; model in {Path(config.out) / 'best'}"
        )
    return result


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    dual = subparsers.add_parser(
        "train-dual",
        help="train a dual encoder with symmetric InfoNCE on cached features (the no-teacher baseline)",
        description="Train projection heads over frozen, cached tower features with in-batch symmetric InfoNCE; "
        "validate each epoch and keep the best model by RSUM in OUT/best. Resumes from OUT/last if present.",
    )
    add_config_arguments(dual)
    dual.set_defaults(handler=lambda a: run_train_dual(a.config, a.overrides, not a.quiet))

    teacher = subparsers.add_parser(
        "train-teacher",
        help="train a cross-encoder teacher: the fusion teacher, or the grounded region teacher (`kind: grounded`)",
        description="Stage 1 trains each pooled-similarity path as an InfoNCE dual (reused when finished); stage 2 "
        "assembles the fusion cross-encoder (fusion term starting at zero) and trains it with a softmax ranking loss "
        "over sampled negatives in both directions. A config with `kind: grounded` trains the grounded region "
        "cross-encoder of the scenes benchmark instead (alignment, then listwise lists holding the swapped twins). "
        "Best model by val RSUM in OUT/best; resumable.",
    )
    add_config_arguments(teacher)
    teacher.set_defaults(handler=lambda a: run_train_teacher(a.config, a.overrides, not a.quiet))

    distill_parser = subparsers.add_parser(
        "distill",
        help="distil a frozen cross-encoder teacher into a dual or compressed cross-encoder student with DCD",
        description="Dynamic Contrastive Distillation: candidate pools, teacher-chosen hard negatives and teacher "
        "logits from the teacher-score cache (built once per mining round), the dcd/static/wsl/none loss, "
        "validation each epoch, best model by val RSUM in OUT/best. Resumable.",
    )
    add_config_arguments(distill_parser)
    distill_parser.set_defaults(handler=lambda a: run_distill(a.config, a.overrides, not a.quiet))
