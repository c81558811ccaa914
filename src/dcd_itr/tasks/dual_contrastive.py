"""Train a dual encoder directly with symmetric InfoNCE on cached features (no teacher).

This is the trained-dual baseline of the evaluation issue, and how the teacher's pooled-similarity paths are
pre-trained before the fusion teacher is assembled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from dcd_itr.data.same_text import TextGroups
from dcd_itr.distill.contrastive import SymmetricInfoNCELoss
from dcd_itr.errors import ConfigError
from dcd_itr.features import load_split_features
from dcd_itr.interfaces import slice_features
from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.models.registry import save_model_description
from dcd_itr.tasks.common import (
    image_caption_batches,
    prepare_run_dir,
    seed_initial_weights,
)
from dcd_itr.tasks.twin_negatives import (
    CpuClock,
    TwinPairLoss,
    split_twin_rows,
    twin_pair_batches,
    twin_partners,
    validate_dual_with_twins,
)
from dcd_itr.train import TrainConfig, Trainer, TrainResult


@dataclass
class DualTrainingConfig:
    data: str = "data/emoji"  # dataset file or folder
    features: str = "cache/features"  # feature cache folder (dcd features)
    out: str = "results/dual"  # run folder: checkpoints, metrics, best model
    batch_size: int = 128  # in-batch negatives: 127 per pair; ~10 steps per epoch on 1.3K images
    # scenes datasets: each batch holds every image's swapped twin with the aligned caption (tasks/twin_negatives)
    twin_negatives: bool = False
    # with twin_negatives: weight of TwinPairLoss (own vs swapped caption, own vs twin image) beside InfoNCE
    twin_loss_weight: float = 0.0
    model: DualConfig = field(default_factory=DualConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=20, lr=2e-3, weight_decay=0.05, checkpoint_every=1000)
    )


def train_dual(config: DualTrainingConfig, progress: bool = True) -> TrainResult:
    """Train, keep the best epoch by validation RSUM; the best model is ``out/best`` (model.yaml + weights)."""
    if config.twin_loss_weight and not config.twin_negatives:
        raise ConfigError("twin_loss_weight needs twin_negatives: true (twins must share a batch)")
    out = prepare_run_dir(config)
    seed_initial_weights(config.train.seed)
    model = DualEncoderModel(config.model)
    views = (model.image_views, model.text_views)
    lazy = "tokens" in model.feature_names  # a position-aware dual reads token states per batch
    train = load_split_features(
        Path(config.data), Path(config.features), "train", *views, model.feature_names, lazy
    )
    val = load_split_features(
        Path(config.data), Path(config.features), "val", *views, model.feature_names, lazy
    )
    save_model_description(model, out / "best")
    loss = SymmetricInfoNCELoss()
    same_text = TextGroups.from_captions(train.split.captions, train.split.caption_to_image)

    def step(wrapped, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        image_rows, caption_rows = batch
        images, texts = wrapped(
            slice_features(train.images, image_rows), slice_features(train.texts, caption_rows)
        )
        logits = model.similarity(images, texts)  # (B, B)
        excluded = same_text.related(
            image_rows[:, None], caption_rows[None, :]
        )  # (B, B) text-identical pairs
        terms = loss(logits, excluded.to(logits.device))
        if not config.twin_loss_weight:
            return terms
        pairs = twin_loss(logits, twin_partners(image_rows, twins))
        return {
            **terms,
            "loss": terms["loss"] + config.twin_loss_weight * pairs,
            "twin_pairs": pairs.detach(),
        }

    twins = split_twin_rows(config.data, train.split) if config.twin_negatives else []
    twin_loss = TwinPairLoss()
    if config.twin_negatives:

        def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            return twin_pair_batches(train.split, twins, config.batch_size, config.train.seed, epoch)
    else:

        def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            return image_caption_batches(train.split, config.batch_size, config.train.seed, epoch)

    clock = CpuClock()

    def validate() -> dict[str, float]:
        clock.pause()  # the training budget counts training steps only
        metrics = {**validate_dual_with_twins(model, val, config.data), "train_cpu_minutes": clock.minutes}
        clock.resume()
        return metrics

    trainer = Trainer(model, [{"params": list(model.parameters())}], config.train, out, progress)
    return trainer.fit(batches, step, validate)
