"""Pieces every training task shares: loading cached features for a model, epoch sampling, validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcd_itr.config import config_to_dict, save_config
from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.errors import ConfigError, short_repr
from dcd_itr.evaluate.models import cross_metrics, dual_metrics
from dcd_itr.features import SplitFeatures
from dcd_itr.train import recover_checkpoint
from dcd_itr.yaml_io import load_yaml_file


def changed_fields(previous: Any, config: Any) -> list[str]:
    """Top-level fields in which a run's saved config (``previous``, as read from its ``config.yaml``) differs
    from ``config``. ``out`` is not compared: a run folder that was moved or copied resumes where it now is. A
    field added to the config class after the run started counts as unchanged while it holds its default."""
    if not isinstance(previous, dict):
        return ["<the whole file: not a mapping>"]
    current = {k: v for k, v in config_to_dict(config).items() if k != "out"}
    defaults = config_to_dict(type(config)())
    previous = {
        **{k: v for k, v in current.items() if k not in previous and v == defaults.get(k)},
        **{k: v for k, v in previous.items() if k != "out"},
    }
    return sorted((k for k in set(previous) | set(current) if previous.get(k) != current.get(k)), key=str)


def prepare_run_dir(config: Any) -> Path:
    """Create ``config.out`` and save the resolved config there. A folder that already holds a checkpoint of a
    run with a different config is refused (resuming it would mix two runs); a run whose folder was moved or
    copied resumes in its new place, with a message."""
    out = Path(config.out)
    saved = out / "config.yaml"
    recover_checkpoint(out / "last")  # a run killed while swapping in a checkpoint still counts as started
    if (out / "last" / "state.json").exists() and saved.exists():
        previous = load_yaml_file(saved)
        changed = changed_fields(previous, config)
        if changed:
            raise ConfigError(
                f"{out}: holds a run with a different config (fields {short_repr(changed)} differ); "
                "delete the folder or set another `out` to start a new run"
            )
        started_in = previous.get("out")
        if isinstance(started_in, str) and Path(started_in).resolve() != out.resolve():
            print(f"{out}: resuming the run started in {started_in} (its folder was moved or copied)")
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, saved)
    return out


def seed_initial_weights(seed: int) -> None:
    """Seed the global RNG just before a trainable model is built. A fresh process starts from a random seed, and
    earlier stages in the same process (mining, path pre-training, a resumed stage that was skipped) consume the
    RNG by different amounts; seeding here makes the initial weights a function of the run's seed alone."""
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """The data order of an epoch depends on (seed, epoch) only, so a resumed run sees the same batches."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + salt)


def image_caption_batches(
    split: RetrievalSplit, batch_size: int, seed: int, epoch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (image rows, caption rows) batches: each image once, with one of its captions drawn at
    random, so no batch holds two captions of one image (no false in-batch negatives)."""
    generator = epoch_generator(seed, epoch)
    order = torch.randperm(split.num_images, generator=generator)  # (N,)
    counts = torch.tensor([len(c) for c in split.image_to_captions])  # (N,)
    offsets = torch.tensor([c[0] for c in split.image_to_captions])  # captions of an image are contiguous
    choice = (torch.rand(split.num_images, generator=generator) * counts).long()  # (N,)
    captions = offsets + choice  # (N,)
    batches = []
    for start in range(0, split.num_images - 1, batch_size):
        rows = order[start : start + batch_size]
        if len(rows) >= 2:
            batches.append((rows, captions[rows]))
    return batches


@torch.inference_mode()
def validate_dual(model: nn.Module, features: SplitFeatures) -> dict[str, float]:
    """The validation split's full-ranking metrics, exactly as `dcd eval` computes them."""
    return dual_metrics(model, features)


@torch.inference_mode()
def validate_cross(model: nn.Module, features: SplitFeatures, progress: bool = False) -> dict[str, float]:
    """As `dcd eval` ranks a cross-encoder, with every caption of the (small) validation split in one block."""
    metrics, _ = cross_metrics(model, features, text_block=features.split.num_captions, progress=progress)
    return metrics
