"""Swapped twins as negatives in every training batch, and the training clock in CPU time.

On the scenes benchmark every scene has a *swapped twin* (same objects, two of them exchanged) in its split, and
caption k of an image and caption k of its twin use the same template with the two objects swapped
(docs: the scenes data contract). A bag-of-words dual ties on every twin; the only training signal that tells
"a cat left of a pizza" from "a pizza left of a cat" is a list that holds both. :func:`twin_pair_batches` puts
each image and its twin in the same batch with their aligned captions, so under in-batch InfoNCE the twin's
caption is a negative of every image and the twin image a negative of every caption.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.data.loading import resolve_dataset_file
from dcd_itr.data.scenes import split_twin_index
from dcd_itr.errors import DataError
from dcd_itr.evaluate.models import encode_split
from dcd_itr.features import SplitFeatures
from dcd_itr.metrics import rank_dual
from dcd_itr.tasks.common import epoch_generator
from dcd_itr.twins import dataset_twin_scores


def split_twin_rows(data: str | Path, split: RetrievalSplit) -> list[int | None]:
    """For each image row of ``split``, the row of its swapped twin in the same split, or None (from the scenes
    annotations, :func:`~dcd_itr.data.scenes.split_twin_index`; all None for a dataset without twins)."""
    index = split_twin_index(data, split.name)
    if index is None:
        return [None] * split.num_images
    if len(index) != split.num_images:
        raise DataError(
            resolve_dataset_file(data),
            f"{len(index)} twin entries for {split.num_images} {split.name} images",
        )
    return [None if row < 0 else row for row in index.tolist()]


def twin_pair_batches(
    split: RetrievalSplit, twins: list[int | None], batch_size: int, seed: int, epoch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (image rows (B,), caption rows (B,)) batches: each image once, next to its twin, each with
    its caption of the same index k (drawn per pair), so the swapped caption and the twin image are in-batch
    negatives. Images without a twin fill batches alone. Deterministic in (seed, epoch)."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 to hold a twin pair, got {batch_size}")
    units: list[tuple[int, ...]] = [
        (row,) if twin is None else (row, twin)
        for row, twin in enumerate(twins)
        if twin is None or row < twin
    ]
    generator = epoch_generator(seed, epoch)
    order = torch.randperm(len(units), generator=generator).tolist()
    draws = torch.rand(len(units), generator=generator).tolist()
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    images: list[int] = []
    captions: list[int] = []

    def flush() -> None:
        if len(images) >= 2:
            batches.append((torch.tensor(images), torch.tensor(captions)))
        images.clear()
        captions.clear()

    for index in order:
        unit = units[index]
        choices = min(len(split.image_to_captions[row]) for row in unit)
        k = min(int(draws[index] * choices), choices - 1)
        if len(images) + len(unit) > batch_size:
            flush()
        images.extend(unit)
        captions.extend(split.image_to_captions[row][k] for row in unit)
    flush()
    return batches


class CpuClock:
    """Process CPU seconds spent training: ``pause()`` / ``resume()`` around validation, ``minutes`` to read.

    CPU time (all threads of this process) rather than wall time, so a budget means the same on a loaded
    machine; with one torch thread it is the single core's busy time.
    """

    def __init__(self) -> None:
        self.spent, self.started = 0.0, time.process_time()

    def pause(self) -> None:
        if self.started is not None:
            self.spent += time.process_time() - self.started
            self.started = None

    def resume(self) -> None:
        if self.started is None:
            self.started = time.process_time()

    @property
    def minutes(self) -> float:
        running = time.process_time() - self.started if self.started is not None else 0.0
        return (self.spent + running) / 60.0


def twin_pool_negatives(split: RetrievalSplit, twins: list[int | None], direction: str) -> torch.Tensor:
    """(A, 1) rows for DCD's candidate pools (one anchor per caption, see distill/pools.py): the anchor's swapped
    twin on the candidate side, -1 where it has none. ``image_to_text``: the twin's caption with the anchor
    caption's index k (the same template, objects swapped); ``text_to_image``: the twin image."""
    rows = []
    for caption, image in enumerate(split.caption_to_image.tolist()):
        twin = twins[image]
        if direction == "text_to_image":
            rows.append(-1 if twin is None else twin)
            continue
        k = split.image_to_captions[image].index(caption)
        twin_captions = split.image_to_captions[twin] if twin is not None else []
        rows.append(twin_captions[k] if k < len(twin_captions) else -1)
    return torch.tensor(rows, dtype=torch.int64)[:, None]


@torch.inference_mode()
def validate_dual_with_twins(model: nn.Module, features: SplitFeatures, data: str | Path) -> dict[str, float]:
    """Recall@K / RSUM of a dual on a cached split, plus twin text / image / group when the dataset has twins."""
    images, texts = encode_split(model, features.images, features.texts)
    metrics = rank_dual(images["embedding"], texts["embedding"], features.split.caption_to_image)
    return {
        **metrics,
        **dataset_twin_scores(data, features.split, images["embedding"] @ texts["embedding"].T),
    }


def twin_partners(image_rows: torch.Tensor, twins: list[int | None]) -> torch.Tensor:
    """(B,) the batch position of each row's twin image, -1 where the twin is not in the batch (or none)."""
    position = {row: index for index, row in enumerate(image_rows.tolist())}
    return torch.tensor(
        [-1 if twins[row] is None else position.get(twins[row], -1) for row in image_rows.tolist()],
        dtype=torch.int64,
    )


class TwinPairLoss(nn.Module):
    """A 2-way softmax between each pair and its swapped twin, in both directions.

    With in-batch logits S (B, B) (S_ij = scale * <image_i, caption_j>, caption i belongs to image i) and t(i) the
    batch position of image i's twin, over the rows R that have one::

        L = 1/2 * mean_{i in R} [ CE([S_ii, S_i,t(i)], 0) + CE([S_ii, S_t(i),i], 0) ]

    the first term asks image i to prefer its own caption to the swapped one, the second asks caption i to prefer
    its own image to the twin image. Zero when no row has its twin in the batch.
    """

    def forward(self, logits: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
        rows = (partners >= 0).nonzero().flatten()  # (R,)
        if len(rows) == 0:
            return logits.new_zeros(())
        twins = partners[rows]  # (R,)
        own = logits[rows, rows]  # (R,)
        by_caption = torch.stack([own, logits[rows, twins]], dim=1)  # (R, 2): own vs swapped caption
        by_image = torch.stack([own, logits[twins, rows]], dim=1)  # (R, 2): own vs twin image
        targets = torch.zeros(len(rows), dtype=torch.int64, device=logits.device)
        return 0.5 * (F.cross_entropy(by_caption, targets) + F.cross_entropy(by_image, targets))
