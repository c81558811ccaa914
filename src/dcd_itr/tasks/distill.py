"""Dynamic Contrastive Distillation of a frozen cross-encoder teacher into a student (DCD_SPEC.md, Steps 1-3).

Per mining round: candidate pools of P per anchor (both directions), teacher scores for every pool entry, the
top K-1 negatives by teacher score, teacher logits gathered at the student's list — all from the teacher-score
cache, so a DCD epoch costs about a plain student epoch. The student scores the same K candidates and the loss
(``dcd`` / ``static`` / ``wsl`` / ``none``) compares the two. Students:

- ``dual``: a :class:`DualEncoderModel` on its own (cheap) views; logits are its scaled cosines; plus in-batch
  symmetric InfoNCE over the anchors' positive pairs with weight ``infonce_weight``;
- ``cross``: a compressed cross-encoder cut from the teacher (half the fusion layers, first and last included),
  the fusion layers at ``fusion_lr_multiplier`` times the base learning rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dcd_itr.distill.contrastive import SymmetricInfoNCELoss
from dcd_itr.distill.losses import build_loss
from dcd_itr.distill.pools import DIRECTIONS
from dcd_itr.distill.teacher import load_frozen_teacher
from dcd_itr.distill.teacher_cache import RoundScores, TeacherScoreCache, mine_round, teacher_fingerprint
from dcd_itr.features import split_fingerprint
from dcd_itr.io_utils import write_json_atomic
from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.models.fusion import cut_student
from dcd_itr.models.interfaces import slice_features
from dcd_itr.models.registry import save_model_description
from dcd_itr.tasks.common import (
    epoch_generator,
    load_split_features,
    prepare_run_dir,
    seed_initial_weights,
    validate_cross,
    validate_dual,
)
from dcd_itr.train import TrainConfig, Trainer, TrainResult


@dataclass
class LossConfig:
    name: str = "dcd"  # dcd | static | wsl | none (the ablation's four rows)
    alpha: float = 0.2  # reference code: 20% teacher, 80% label
    temperature: float = 1.0  # reference code
    reduction: str = "per_sample"  # the fixed DCD form; "reference" reproduces the reference code's reduction
    distance: str = "mse"  # reference code distils logits with MSE; "kl" is the alternative


@dataclass
class DistillConfig:
    data: str = "data/emoji"
    features: str = "cache/features"
    out: str = "results/dcd_dual"
    teacher: str = "results/teacher/best"  # a saved cross-encoder folder (model.yaml + model.safetensors)
    teacher_cache: str = (
        "cache/teacher_scores"  # shared by every student/loss/seed distilled from one teacher
    )
    student: str = "dual"  # dual | cross
    dual: DualConfig = field(default_factory=DualConfig)  # the dual student's architecture
    cross_layers: list[int] | None = None  # teacher fusion layers kept; None = half, spread, first and last
    fusion_lr_multiplier: float = 5.0  # reference recipe: fusion layers learn 5x faster
    pool_size: int = 16  # P, the reference COCO setting
    num_candidates: int = 8  # K, the reference setting
    directions: list[str] = field(
        default_factory=lambda: list(DIRECTIONS)
    )  # both; the reference trains i2t only
    mining_seed: int = 0  # pools depend on it (not on the training seed), so seeds share the teacher cache
    rounds: int = 1  # mining rounds; epoch e uses round e % rounds
    anchors_per_batch: int = 64
    infonce_weight: float = 0.5  # beta: in-batch InfoNCE beside the candidate-list loss (dual only)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, lr=1e-3, weight_decay=0.05))


def _teacher_rounds(config: DistillConfig, teacher, teacher_folder: Path, train, progress: bool):
    """Every mining round from the teacher-score cache (built on first use); returns rounds and build seconds."""
    cache = TeacherScoreCache(
        Path(config.teacher_cache) / f"{teacher_fingerprint(teacher_folder / 'model.safetensors')[:16]}",
        teacher_id=teacher_fingerprint(teacher_folder / "model.safetensors"),
        dataset_fingerprint=split_fingerprint(train.split, "image") + split_fingerprint(train.split, "text"),
        seed=config.mining_seed,
        pool_size=config.pool_size,
        num_candidates=config.num_candidates,
        directions=tuple(config.directions),
    )
    started = time.perf_counter()
    rounds = [
        cache.get_or_build(
            index,
            lambda r, direction: mine_round(
                teacher,
                train.split,
                train.images,
                train.texts,
                direction,
                config.pool_size,
                config.num_candidates,
                config.mining_seed,
                r,
                progress=progress,
            ),
        )
        for index in range(config.rounds)
    ]
    return rounds, time.perf_counter() - started


def candidate_batches(round_scores: dict[str, RoundScores], anchors_per_batch: int, seed: int, epoch: int):
    """One epoch of single-direction batches: (direction, anchor rows (B,), candidates (B, K), teacher (B, K))."""
    batches = []
    for salt, (direction, scores) in enumerate(sorted(round_scores.items())):
        order = torch.randperm(len(scores.anchor_rows), generator=epoch_generator(seed, epoch, salt))
        for start in range(0, len(order), anchors_per_batch):
            rows = order[start : start + anchors_per_batch]
            if len(rows) >= 2:
                batches.append(
                    (
                        direction,
                        scores.anchor_rows[rows],
                        scores.student_candidates[rows],
                        scores.teacher_logits[rows],
                    )
                )
    shuffle = torch.randperm(len(batches), generator=epoch_generator(seed, epoch, salt=99))
    return [batches[i] for i in shuffle]


def _pair_rows(direction: str, anchors: torch.Tensor, candidates: torch.Tensor):
    """(image rows, caption rows), each (B, K), of the anchor x candidate pairs."""
    expanded = anchors[:, None].expand_as(candidates)
    return (expanded, candidates) if direction == "image_to_text" else (candidates, expanded)


def distill(config: DistillConfig, progress: bool = True) -> TrainResult:
    out = prepare_run_dir(config)
    teacher_folder = Path(config.teacher)
    teacher = load_frozen_teacher(teacher_folder)
    teacher_train = load_split_features(
        Path(config.data), Path(config.features), "train", teacher.image_views, teacher.text_views
    )
    rounds, cache_seconds = _teacher_rounds(config, teacher, teacher_folder, teacher_train, progress)
    loss = build_loss(config.loss.name, **_loss_options(config.loss))
    seed_initial_weights(config.train.seed)
    if config.student == "dual":
        student = DualEncoderModel(config.dual)
        groups = [{"params": list(student.parameters())}]
    elif config.student == "cross":
        student = cut_student(teacher, config.cross_layers)
        student.requires_grad_(True)
        fusion = list(student.layers.parameters())
        fusion_ids = {id(p) for p in fusion}
        groups = [
            {"params": [p for p in student.parameters() if id(p) not in fusion_ids]},
            {"params": fusion, "lr": config.train.lr * config.fusion_lr_multiplier},
        ]
    else:
        raise ValueError(f"student must be 'dual' or 'cross', got {config.student!r}")
    del teacher  # the student never calls the teacher: its scores come from the cache
    views = (student.image_views, student.text_views)
    train = load_split_features(Path(config.data), Path(config.features), "train", *views)
    val = load_split_features(Path(config.data), Path(config.features), "val", *views)
    save_model_description(student, out / "best")
    infonce = SymmetricInfoNCELoss()

    def step(wrapped, batch):
        direction, anchors, candidates, teacher_logits = batch
        image_rows, caption_rows = _pair_rows(direction, anchors, candidates)  # (B, K) each
        image_features = slice_features(train.images, image_rows.flatten())  # B*K rows
        text_features = slice_features(train.texts, caption_rows.flatten())  # B*K rows
        if config.student == "cross":
            return loss(wrapped(image_features, text_features).reshape(candidates.shape), teacher_logits)
        images, texts = wrapped(image_features, text_features)  # (B*K, D) each; heads are cheap to repeat
        images, texts = (
            images.reshape(*candidates.shape, -1),
            texts.reshape(*candidates.shape, -1),
        )  # (B, K, D)
        logits = student.logit_scale * (images * texts).sum(dim=-1)  # (B, K)
        terms = loss(logits, teacher_logits)
        contrastive = infonce(student.similarity(images[:, 0], texts[:, 0]))  # the anchors' positive pairs
        total = terms["loss"] + config.infonce_weight * contrastive["loss"]
        return {**terms, "loss": total, "infonce": contrastive["loss"].detach()}

    validate = validate_dual if config.student == "dual" else validate_cross
    trainer = Trainer(student, groups, config.train, out, progress)
    started = time.perf_counter()
    result = trainer.fit(
        lambda epoch: candidate_batches(
            rounds[epoch % len(rounds)], config.anchors_per_batch, config.train.seed, epoch
        ),
        step,
        lambda: validate(student, val),
    )
    write_json_atomic(
        out / "timing.json",
        {
            "teacher_cache_seconds": cache_seconds,
            "training_seconds": time.perf_counter() - started,
            "seconds_per_epoch": result.seconds_per_epoch,
        },
    )
    return result


def _loss_options(loss: LossConfig) -> dict:
    if loss.name == "none":
        return {}
    options = {"alpha": loss.alpha, "temperature": loss.temperature, "distance": loss.distance}
    if loss.name == "dcd":
        options["reduction"] = loss.reduction
    return options
