"""Train a dual encoder directly with symmetric InfoNCE on cached features (no teacher).

This is the trained-dual baseline of the evaluation issue, and how the teacher's pooled-similarity paths are
pre-trained before the fusion teacher is assembled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from dcd_itr.distill.contrastive import SymmetricInfoNCELoss
from dcd_itr.features import POOLED_ONLY, load_split_features
from dcd_itr.interfaces import slice_features
from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.models.registry import save_model_description
from dcd_itr.tasks.common import (
    image_caption_batches,
    prepare_run_dir,
    seed_initial_weights,
    validate_dual,
)
from dcd_itr.train import TrainConfig, Trainer, TrainResult


@dataclass
class DualTrainingConfig:
    data: str = "data/emoji"  # dataset file or folder
    features: str = "cache/features"  # feature cache folder (dcd features)
    out: str = "results/dual"  # run folder: checkpoints, metrics, best model
    batch_size: int = 128  # in-batch negatives: 127 per pair; ~10 steps per epoch on 1.3K images
    model: DualConfig = field(default_factory=DualConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=20, lr=2e-3, weight_decay=0.05, checkpoint_every=1000)
    )


def train_dual(config: DualTrainingConfig, progress: bool = True) -> TrainResult:
    """Train, keep the best epoch by validation RSUM; the best model is ``out/best`` (model.yaml + weights)."""
    out = prepare_run_dir(config)
    seed_initial_weights(config.train.seed)
    model = DualEncoderModel(config.model)
    views = (model.image_views, model.text_views)
    train = load_split_features(Path(config.data), Path(config.features), "train", *views, POOLED_ONLY)
    val = load_split_features(Path(config.data), Path(config.features), "val", *views, POOLED_ONLY)
    save_model_description(model, out / "best")
    loss = SymmetricInfoNCELoss()

    def step(wrapped, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        image_rows, caption_rows = batch
        images, texts = wrapped(
            slice_features(train.images, image_rows), slice_features(train.texts, caption_rows)
        )
        return loss(model.similarity(images, texts))  # (B, B) logits

    trainer = Trainer(model, [{"params": list(model.parameters())}], config.train, out, progress)
    return trainer.fit(
        lambda epoch: image_caption_batches(train.split, config.batch_size, config.train.seed, epoch),
        step,
        lambda: validate_dual(model, val),
    )
