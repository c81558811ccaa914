"""Train the fusion teacher: pre-train its pooled-similarity paths as duals, then the whole cross-encoder.

Stage 1 trains one dual encoder per similarity path with symmetric InfoNCE (each is reused if its run folder
already holds a finished model). Stage 2 assembles the :class:`FusionCrossEncoder` from those heads — the
fusion head starts at zero, so the assembled model *is* the ensemble of the paths — and trains it with a softmax
ranking loss over the positive and uniformly sampled negatives in both directions (negatives exclude every
positive of the anchor). Validation R@K on the val split each epoch, best checkpoint by RSUM; epoch 0 of stage 2
is validated before any fusion step, so the kept teacher is never worse on val than the ensemble it started as.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dcd_itr.distill.contrastive import ListwiseRankingLoss
from dcd_itr.distill.pools import DIRECTIONS, build_pools
from dcd_itr.features import load_split_features
from dcd_itr.interfaces import slice_features
from dcd_itr.io_utils import write_json_atomic
from dcd_itr.models.dual import DualConfig
from dcd_itr.models.fusion import FusionConfig, FusionCrossEncoder
from dcd_itr.models.registry import load_model, save_model_description
from dcd_itr.tasks.common import (
    epoch_generator,
    prepare_run_dir,
    seed_initial_weights,
    validate_cross,
)
from dcd_itr.tasks.dual_contrastive import DualTrainingConfig, train_dual
from dcd_itr.train import TrainConfig, Trainer, TrainResult


@dataclass
class TeacherTrainingConfig:
    data: str = "data/emoji"
    features: str = "cache/features"
    out: str = "results/teacher"
    paths: list[DualConfig] = field(default_factory=list)  # the pooled-similarity paths, pre-trained as duals
    path_training: DualTrainingConfig = field(default_factory=DualTrainingConfig)  # settings for stage 1
    fusion: FusionConfig = field(default_factory=FusionConfig)  # its similarity_paths are filled from `paths`
    negatives: int = 7  # sampled negatives per anchor: 8 pairs per anchor fits the CPU budget
    anchors_per_batch: int = 16  # 16 x (1 + 15) = 256 pairs per step
    path_lr_multiplier: float = 0.1  # the pre-trained heads move slowly; fusion layers learn at the full rate
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=3e-4, checkpoint_every=50))


def pretrain_paths(config: TeacherTrainingConfig, progress: bool) -> list[Path]:
    """Stage 1: one InfoNCE dual per path; returns the folders of their best models."""
    folders = []
    for path_config in config.paths:
        run = copy.deepcopy(config.path_training)
        run.data, run.features, run.model = config.data, config.features, path_config
        run.out = str(Path(config.out) / "paths" / path_config.image_view.replace("/", "_"))
        train_dual(run, progress)  # a finished run returns at once; an interrupted one resumes
        folders.append(Path(run.out) / "best")
    return folders


def assemble_teacher(config: TeacherTrainingConfig, path_folders: list[Path]) -> FusionCrossEncoder:
    """The fusion model whose paths carry the pre-trained dual heads, scaled by their learned logit scales."""
    fusion_config = copy.deepcopy(config.fusion)
    fusion_config.similarity_paths = list(config.paths)
    teacher = FusionCrossEncoder(fusion_config)
    with torch.no_grad():
        for index, folder in enumerate(path_folders):
            dual = load_model(folder)
            teacher.paths[index].load_state_dict(dual.state_dict())
            teacher.path_scales[index] = dual.logit_scale / len(path_folders)  # the paths' average to start
    return teacher


def ranking_batches(split, negatives: int, anchors_per_batch: int, seed: int, epoch: int):
    """An epoch of (image rows (B, 1+n), caption rows (B, 1+n)) with the positive pair in column 0."""
    anchors = []
    for direction in DIRECTIONS:
        pools = build_pools(split, direction, negatives + 1, seed, epoch)
        if direction == "image_to_text":
            images = pools.anchor_rows[:, None].expand_as(pools.candidates)  # (A, P)
            anchors.append((images, pools.candidates))
        else:
            captions = pools.anchor_rows[:, None].expand_as(pools.candidates)  # (A, P)
            anchors.append((pools.candidates, captions))
    image_rows = torch.cat([a[0] for a in anchors])  # (A_total, P)
    caption_rows = torch.cat([a[1] for a in anchors])  # (A_total, P)
    order = torch.randperm(len(image_rows), generator=epoch_generator(seed, epoch, salt=1))
    return [
        (image_rows[order[s : s + anchors_per_batch]], caption_rows[order[s : s + anchors_per_batch]])
        for s in range(0, len(order), anchors_per_batch)
    ]


def train_teacher(config: TeacherTrainingConfig, progress: bool = True) -> TrainResult:
    out = prepare_run_dir(config)
    paths = pretrain_paths(config, progress)
    seed_initial_weights(config.train.seed)
    teacher = assemble_teacher(config, paths)
    views = (teacher.image_views, teacher.text_views)
    # token states read per batch (lazy): a COCO-sized split's do not fit in RAM
    train = load_split_features(Path(config.data), Path(config.features), "train", *views, lazy=True)
    val = load_split_features(Path(config.data), Path(config.features), "val", *views, lazy=True)
    save_model_description(teacher, out / "best")
    ensemble_path = out / "ensemble_val_metrics.json"  # same config (prepare_run_dir checked): same ensemble
    if ensemble_path.exists():
        ensemble_metrics = json.loads(ensemble_path.read_text(encoding="utf-8"))
    else:
        ensemble_metrics = validate_cross(teacher, val, progress)
        write_json_atomic(ensemble_path, ensemble_metrics)
    loss = ListwiseRankingLoss()

    def step(wrapped, batch):
        image_rows, caption_rows = batch  # (B, P) each
        logits = wrapped(
            slice_features(train.images, image_rows.flatten()),
            slice_features(train.texts, caption_rows.flatten()),
        )
        return loss(logits.reshape(image_rows.shape))  # (B, P)

    path_parameters = list(teacher.paths.parameters()) + [teacher.path_scales]
    path_ids = {id(p) for p in path_parameters}
    groups = [
        {"params": [p for p in teacher.parameters() if id(p) not in path_ids]},
        {"params": path_parameters, "lr": config.train.lr * config.path_lr_multiplier},
    ]
    trainer = Trainer(teacher, groups, config.train, out, progress)
    trainer.seed_best(ensemble_metrics)
    return trainer.fit(
        lambda epoch: ranking_batches(
            train.split, config.negatives, config.anchors_per_batch, config.train.seed, epoch
        ),
        step,
        lambda: validate_cross(teacher, val, progress),
    )
