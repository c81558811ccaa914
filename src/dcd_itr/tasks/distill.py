"""Dynamic Contrastive Distillation of a frozen cross-encoder teacher into a student (DCD_SPEC.md, Steps 1-3).

Per mining round: candidate pools of P per anchor (both directions), teacher scores for every pool entry, the
top K-1 negatives by teacher score, teacher logits gathered at the student's list — all from the teacher-score
cache, so a DCD epoch costs about a plain student epoch. The student scores the same K candidates and the loss
(``dcd`` / ``static`` / ``wsl`` / ``none``) compares the two. Students:

- ``dual``: a :class:`DualEncoderModel` on its own (cheap) views; logits are its scaled cosines; plus in-batch
  symmetric InfoNCE over the anchors' positive pairs with weight ``infonce_weight``;
- ``cross``: a compressed cross-encoder cut from the teacher (half the fusion layers, first and last included),
  the fusion layers at ``fusion_lr_multiplier`` times the base learning rate; with ``cross_frozen`` only fusion
  layers, poolers and head train, and ``cross_init: random`` is the control of the same shape
  (:mod:`dcd_itr.models.cross_student`). A grounded teacher's student validates on ``val_twin_pairs`` twin pairs
  with the twin scores.

The teacher is a saved fusion cross-encoder folder (it reads the feature cache) or a plug-in spec (``vilt:ID``,
``bridgetower:ID``, ``blip-itm:ID``, ``python:MODULE:NAME``): a plug-in scores the pools on raw images and
caption strings, while the student still trains on cached features. Teacher and student run on
``train.device`` (``auto``: CUDA when present). Under ``torchrun`` (the command joins the process group, see
:mod:`dcd_itr.distributed`) each rank scores its share of every pool, the shares are summed across ranks, and
training is data-parallel.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dcd_itr.data.same_text import TextGroups
from dcd_itr.distill.contrastive import SymmetricInfoNCELoss
from dcd_itr.distill.frozen_teacher import Teacher, load_frozen_teacher
from dcd_itr.distill.losses import build_loss
from dcd_itr.distill.pools import DIRECTIONS, Pools, score_pools, score_pools_by_image
from dcd_itr.distill.teacher_cache import RoundScores, TeacherScoreCache, mine_round
from dcd_itr.distributed import distributed_context, resolve_device
from dcd_itr.errors import ConfigError
from dcd_itr.features import SplitFeatures, load_split_features, split_fingerprint
from dcd_itr.interfaces import slice_features
from dcd_itr.io_utils import write_json_atomic
from dcd_itr.models.cross_student import build_cross_student, student_parameter_groups
from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.models.fusion import cut_student
from dcd_itr.models.grounded import GroundedCrossEncoder
from dcd_itr.models.plugins import parse_spec
from dcd_itr.models.registry import save_model_description
from dcd_itr.tasks.common import (
    epoch_generator,
    prepare_run_dir,
    seed_initial_weights,
    validate_cross,
)
from dcd_itr.tasks.cross_validation import grounded_validator
from dcd_itr.tasks.twin_negatives import (
    CpuClock,
    split_twin_rows,
    twin_pool_negatives,
    validate_dual_with_twins,
)
from dcd_itr.train import TrainConfig, Trainer, TrainResult


@dataclass
class LossConfig:
    """Which distillation loss, and the settings to change. A field left unset (None) keeps the loss's own default
    (:mod:`dcd_itr.distill.losses` is the one place they are written: alpha 0.2 and T = 1 for every loss, the
    per-sample reduction for dcd, the MSE distance for dcd and static, KL for wsl)."""

    name: str = "dcd"  # dcd | static | wsl | weighted | none
    alpha: float | None = None  # None: the loss's default
    temperature: float | None = None  # None: the loss's default
    reduction: str | None = (
        None  # dcd only; None: the loss's default ("reference" reproduces the reference bug)
    )
    distance: str | None = None  # "mse" | "kl"; None: the loss's default
    options: dict[str, Any] = field(default_factory=dict)  # further constructor options (label, weightings)


@dataclass
class DistillConfig:
    data: str = "data/emoji"
    features: str = "cache/features"
    out: str = "results/dcd_dual"
    teacher: str = "results/teacher/best"  # a model folder, or a plug-in spec: vilt:ID, python:FILE:NAME, ...
    teacher_options: dict[str, Any] = field(default_factory=dict)  # a plug-in's loader options (dtype, ...)
    teacher_cache: str = (
        "cache/teacher_scores"  # shared by every student/loss/seed distilled from one teacher
    )
    student: str = "dual"  # dual | cross
    dual: DualConfig = field(default_factory=DualConfig)  # the dual student's architecture
    cross_layers: list[int] | None = None  # teacher fusion layers kept; None = half, spread, first and last
    fusion_lr_multiplier: float = 5.0  # reference recipe: fusion layers learn 5x faster
    cross_frozen: bool = False  # True: only fusion, poolers, head train (DCD_SPEC); False: emoji recipe
    cross_init: str = "cut"  # cut | random: the control of the same shape (needs cross_frozen)
    val_twin_pairs: int | None = None  # grounded cross student: val twin pairs scored; None: all
    pool_size: int = 16  # P, the reference COCO setting
    num_candidates: int = 8  # K, the reference setting
    directions: list[str] = field(
        default_factory=lambda: list(DIRECTIONS)
    )  # both; the reference trains i2t only
    mining_seed: int = 0  # pools depend on it (not on the training seed), so seeds share the teacher cache
    rounds: int = 1  # mining rounds; epoch e uses round e % rounds
    fresh_candidates: bool = (
        False  # True: one mining round per epoch (rounds = epochs), as the reference draws anew
    )
    exclude_same_text: bool = True  # text-identical captions are no negatives (pools and in-batch InfoNCE)
    # teacher-scored anchors per round and direction, drawn at random (CPU budgets, benchmarks/scale.py); None =
    # every caption, the method as specified
    max_anchors_per_round: int | None = None
    anchors_per_batch: int = 64
    infonce_weight: float = 0.5  # beta: in-batch InfoNCE beside the candidate-list loss (dual only)
    # scenes datasets: every pool holds the anchor's swapped twin (the teacher still picks the K-1 it keeps)
    twin_negatives: bool = False
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, lr=1e-3, weight_decay=0.05))


def _shared_across_ranks(scorer: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``scorer`` such that under torchrun each rank scores a contiguous share of the anchors and the (A, P) score
    matrices (zero outside each share) are summed across ranks: every rank gets the whole matrix."""

    def score(teacher, images, texts, pools: Pools, **options) -> torch.Tensor:
        rank, world_size = distributed_context()
        if world_size == 1:
            return scorer(teacher, images, texts, pools, **options)
        share = -(-pools.num_anchors // world_size)
        rows = slice(min(rank * share, pools.num_anchors), min((rank + 1) * share, pools.num_anchors))
        scores = torch.zeros(pools.num_anchors, pools.pool_size)  # (A, P)
        if rows.stop > rows.start:
            mine = Pools(
                pools.direction, pools.anchor_rows[rows], pools.positive[rows], pools.candidates[rows]
            )
            scores[rows] = scorer(teacher, images, texts, mine, **options)
        on_gpu = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
        summed = scores.to(f"cuda:{torch.cuda.current_device()}") if on_gpu else scores
        dist.all_reduce(summed)
        return summed.cpu()

    return score


def teacher_cache_folder(config: DistillConfig, teacher: Teacher) -> Path:
    """``teacher_cache/<fingerprint[:16]>`` for a saved folder, ``teacher_cache/<kind>-<fingerprint[:16]>`` for a
    plug-in: a changed teacher gets a new folder, and the old scores are never mixed in."""
    parsed = parse_spec(teacher.spec)
    prefix = f"{parsed[0]}-" if parsed else ""
    suffix = "-sametext" if config.exclude_same_text else ""  # other pools: never mixed with the old ones
    return Path(config.teacher_cache) / f"{prefix}{teacher.fingerprint[:16]}{suffix}"


def mining_rounds(config: DistillConfig) -> int:
    """How many mining rounds the run uses: one per epoch with ``fresh_candidates``, else ``rounds``."""
    return config.train.epochs if config.fresh_candidates else config.rounds


def _announce_cache(folder: Path, teacher: Teacher) -> None:
    """Say whether the cache is reused, and when the same spec was cached with other weights, that it changed."""
    if folder.exists():
        print(f"teacher-score cache: {folder} (teacher {teacher.spec})")
        return
    for label in sorted(folder.parent.glob("*/teacher.json")):
        try:
            previous = json.loads(label.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(previous, dict) and previous.get("spec") == teacher.spec:
            print(
                f"teacher-score cache: teacher {teacher.spec} changed since {label.parent} was built (fingerprint "
                f"{previous.get('fingerprint', '?')[:16]}, now {teacher.fingerprint[:16]}); its scores are not "
                f"reused, building {folder}"
            )
            return
    print(f"teacher-score cache: building {folder} (teacher {teacher.spec})")


def _teacher_rounds(config: DistillConfig, teacher: Teacher, train, progress: bool, announce: bool):
    """Every mining round from the teacher-score cache (built on first use); returns rounds and build seconds."""
    split, images, texts = train
    folder = teacher_cache_folder(config, teacher)
    if announce:
        _announce_cache(folder, teacher)
    cache = TeacherScoreCache(
        folder,
        teacher_id=teacher.fingerprint,
        dataset_fingerprint=split_fingerprint(split, "image") + split_fingerprint(split, "text"),
        seed=config.mining_seed,
        pool_size=config.pool_size,
        num_candidates=config.num_candidates,
        directions=tuple(config.directions),
        extra={
            **({"exclude_same_text": True} if config.exclude_same_text else {}),
            **({"twin_negatives": True} if config.twin_negatives else {}),
            **({"max_anchors": config.max_anchors_per_round} if config.max_anchors_per_round else {}),
        }
        or None,
    )
    write_json_atomic(folder / "teacher.json", {"spec": teacher.spec, "fingerprint": teacher.fingerprint})
    scorer = _shared_across_ranks(score_pools_by_image if teacher.raw_inputs else score_pools)
    twins = split_twin_rows(config.data, split) if config.twin_negatives else None
    started = time.perf_counter()
    rounds = [
        cache.get_or_build(
            index,
            lambda r, direction: mine_round(
                teacher.model,
                split,
                images,
                texts,
                direction,
                config.pool_size,
                config.num_candidates,
                config.mining_seed,
                r,
                student_negatives=twin_pool_negatives(split, twins, direction) if twins else None,
                scorer=scorer,
                progress=progress,
                exclude_same_text=config.exclude_same_text,
                max_anchors=config.max_anchors_per_round,
            ),
        )
        for index in range(mining_rounds(config))
    ]
    return rounds, time.perf_counter() - started


def build_teacher_cache(config: DistillConfig, progress: bool = True) -> float:
    """Build (or reuse) every mining round of ``config``'s teacher-score cache without training; returns seconds.
    What :func:`distill` does first, on its own: the scale benchmark measures it as a stage."""
    device = resolve_device(config.train.device)
    teacher = load_frozen_teacher(config.teacher, device, config.teacher_options)
    inputs = teacher.inputs(Path(config.data), Path(config.features), "train")
    return _teacher_rounds(config, teacher, inputs, progress, announce=True)[1]


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


def _encode_distinct(wrapped, features: SplitFeatures, image_rows: torch.Tensor, caption_rows: torch.Tensor):
    """Embeddings (R, D) of image rows and caption rows (R,) each, every distinct row encoded once."""
    distinct_images, image_index = torch.unique(image_rows, return_inverse=True)
    distinct_captions, caption_index = torch.unique(caption_rows, return_inverse=True)
    images, texts = wrapped(
        slice_features(features.images, distinct_images), slice_features(features.texts, distinct_captions)
    )
    return images[image_index], texts[caption_index]


def _on_device(features: SplitFeatures, device: str, keep: Callable[[str], bool]) -> SplitFeatures:
    """The feature keys the student reads, moved to ``device`` once (batches index them there)."""

    def moved(batch):
        return {k: v.to(device) for k, v in batch.items() if keep(k)}

    return SplitFeatures(features.split, moved(features.images), moved(features.texts))


def distill(config: DistillConfig, progress: bool = True) -> TrainResult:
    if config.student not in ("dual", "cross"):
        raise ConfigError(f"student must be 'dual' or 'cross', got {config.student!r}")
    out = prepare_run_dir(config)
    rank, _ = distributed_context()
    device = resolve_device(config.train.device)
    teacher = load_frozen_teacher(config.teacher, device, config.teacher_options)
    if config.student == "cross" and teacher.raw_inputs:
        raise ConfigError(
            f"teacher {config.teacher!r}: a compressed cross student is cut from a fusion teacher folder; "
            "distil a plug-in teacher into student: dual"
        )
    train_inputs = teacher.inputs(Path(config.data), Path(config.features), "train")
    rounds, cache_seconds = _teacher_rounds(config, teacher, train_inputs, progress and rank == 0, rank == 0)
    del train_inputs
    loss = build_loss(config.loss.name, **_loss_options(config.loss))
    seed_initial_weights(config.train.seed)
    if config.student == "dual":
        student = DualEncoderModel(config.dual)
        groups = [{"params": list(student.parameters())}]
    else:
        if config.cross_frozen:
            student = build_cross_student(
                teacher.model, config.cross_layers, config.cross_init, config.train.seed
            )
            groups = student_parameter_groups(student, config.train.lr, config.fusion_lr_multiplier)
        elif config.cross_init != "cut":
            raise ConfigError("cross_init: random is the frozen-parts control; set cross_frozen: true")
        else:
            student = cut_student(teacher.model, config.cross_layers)
            student.requires_grad_(True)
            fusion = list(student.layers.parameters())
            fusion_ids = {id(p) for p in fusion}
            groups = [
                {"params": [p for p in student.parameters() if id(p) not in fusion_ids]},
                {"params": fusion, "lr": config.train.lr * config.fusion_lr_multiplier},
            ]
    del teacher  # the student never calls the teacher: its scores come from the cache
    student.to(device)
    views = (student.image_views, student.text_views)
    # a dual student reads only what its heads use (pooled vectors, or tokens + mask); a cross student reads every
    # tensor, its token states per batch (lazy)
    names = tuple(student.feature_names) if config.student == "dual" else None
    reads = lambda key: names is None or key.rsplit(".", 1)[-1] in names  # noqa: E731
    subset = {"names": names, "lazy": "tokens" in names} if config.student == "dual" else {"lazy": True}
    train = _on_device(
        load_split_features(Path(config.data), Path(config.features), "train", *views, **subset),
        device,
        reads,
    )
    val = _on_device(
        load_split_features(Path(config.data), Path(config.features), "val", *views, **subset), device, reads
    )
    save_model_description(student, out / "best")
    infonce = SymmetricInfoNCELoss()
    same_text = TextGroups.from_captions(train.split.captions, train.split.caption_to_image)

    def step(wrapped, batch):
        direction, anchors, candidates, teacher_logits = batch
        teacher_logits = teacher_logits.to(device)  # (B, K)
        image_rows, caption_rows = _pair_rows(direction, anchors, candidates)  # (B, K) each
        if config.student == "dual" and config.dual.attention is not None:
            # attention poolers are not cheap to repeat: encode each distinct row once, (B*K, D) each
            images, texts = _encode_distinct(wrapped, train, image_rows.flatten(), caption_rows.flatten())
        else:
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
        excluded = None
        if (
            config.exclude_same_text
        ):  # (B, B): a caption of the same image or with the same text is no negative
            excluded = same_text.related(image_rows[:, :1], caption_rows[:, 0][None, :]).to(device)
        contrastive = infonce(
            student.similarity(images[:, 0], texts[:, 0]), excluded
        )  # the anchors' positive pairs
        total = terms["loss"] + config.infonce_weight * contrastive["loss"]
        return {**terms, "loss": total, "infonce": contrastive["loss"].detach()}

    if config.student == "dual":

        def validate(model, features):
            return validate_dual_with_twins(model, features, config.data)
    else:
        validate = validate_cross
    if isinstance(student, GroundedCrossEncoder):
        validate = grounded_validator(config.data, val, config.val_twin_pairs)
    clock = CpuClock()

    def validate_timed() -> dict[str, float]:
        clock.pause()  # the training budget counts training steps only
        metrics = {**validate(student, val), "train_cpu_minutes": clock.minutes}
        clock.resume()
        return metrics

    trainer = Trainer(student, groups, replace(config.train, device=device), out, progress)  # auto resolved
    started = time.perf_counter()
    result = trainer.fit(
        lambda epoch: candidate_batches(
            rounds[epoch % len(rounds)], config.anchors_per_batch, config.train.seed, epoch
        ),
        step,
        validate_timed,
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
    """The set fields of ``loss`` that its loss takes (``none`` takes none, only ``dcd`` takes a reduction), so a
    config shared by the ablation's rows works for all four; unset fields are left to the loss's defaults."""
    if loss.name == "none":
        return {}
    options = {"alpha": loss.alpha, "temperature": loss.temperature, "distance": loss.distance}
    if loss.name == "dcd":
        options["reduction"] = loss.reduction
    return {**{name: value for name, value in options.items() if value is not None}, **loss.options}
