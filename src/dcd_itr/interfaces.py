"""The two interfaces that carry the plug-in promise.

Anything that implements :class:`DualEncoder` or :class:`CrossEncoder` can be a teacher, a student, a baseline or a
stage of the cascade, and goes through the same evaluation, distillation and search code.

Both interfaces separate the *unimodal* work (done once per image and once per caption) from the *pair* work:

- ``encode_images(images)`` / ``encode_texts(texts)`` take a batch of the model's inputs and return a
  :data:`FeatureBatch`: a ``dict[str, Tensor]`` whose tensors all share the leading batch dimension. For a dual
  encoder this is ``{"embedding": (B, D)}`` with L2-normalised rows; for a cross-encoder it is whatever the fusion
  layers need (for example ``{"tokens": (B, N, C), "mask": (B, N), "pooled": (B, C)}``). Because every value has a
  leading batch dimension, a feature batch can be sliced, concatenated and cached on disk as safetensors.
- a dual encoder's pair score is the dot product of the two embeddings;
- a cross-encoder's pair score comes from ``score_pairs`` (aligned batches, one logit per row) or ``score_matrix``
  (every image of a small batch against every caption of a small batch). Implementations broadcast the cached
  side rather than re-running a tower per pair.

What an "input" is depends on the model: a list of PIL images / strings for an end-to-end model, or rows of a
feature cache for a model that works on cached tower outputs. The evaluation code only moves inputs around in
batches, so it does not care.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

FeatureBatch = dict[str, torch.Tensor]


def slice_features(features: FeatureBatch, index: slice | torch.Tensor) -> FeatureBatch:
    """Rows ``index`` of every tensor in ``features`` (a slice or a 1-D index tensor)."""
    return {name: value[index] for name, value in features.items()}


def concat_features(batches: list[FeatureBatch]) -> FeatureBatch:
    """Concatenate feature batches along the batch dimension; all must have the same keys."""
    if not batches:
        raise ValueError("concat_features needs at least one batch")
    keys = batches[0].keys()
    for batch in batches[1:]:
        if batch.keys() != keys:
            raise ValueError(f"feature batches disagree on keys: {sorted(keys)} vs {sorted(batch.keys())}")
    return {name: torch.cat([batch[name] for batch in batches], dim=0) for name in keys}


def feature_batch_size(features: FeatureBatch) -> int:
    """The shared leading dimension of a feature batch."""
    sizes = {value.shape[0] for value in features.values()}
    if len(sizes) != 1:
        raise ValueError(f"feature batch has inconsistent leading dimensions: {sorted(sizes)}")
    return sizes.pop()


@runtime_checkable
class DualEncoder(Protocol):
    """Encodes images and captions independently into L2-normalised vectors scored by a dot product."""

    def encode_images(self, images: Any) -> FeatureBatch:
        """A batch of image inputs -> ``{"embedding": (B, D)}``, rows of unit norm."""
        ...

    def encode_texts(self, texts: Any) -> FeatureBatch:
        """A batch of caption inputs -> ``{"embedding": (B, D)}``, rows of unit norm."""
        ...


@runtime_checkable
class CrossEncoder(Protocol):
    """Scores (image, caption) pairs jointly; higher is a better match."""

    #: Number of fusion (cross-modal) layers; a compressed student is cut from these.
    fusion_depth: int

    def encode_images(self, images: Any) -> FeatureBatch:
        """Unimodal image features, computed once per image."""
        ...

    def encode_texts(self, texts: Any) -> FeatureBatch:
        """Unimodal caption features, computed once per caption."""
        ...

    def score_pairs(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        """Aligned batches of B images and B captions -> logits (B,)."""
        ...

    def score_matrix(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        """Every one of Ni images against every one of Mt captions -> logits (Ni, Mt)."""
        ...


def is_cross_encoder(model: object) -> bool:
    """True for a cross-encoder (pair scores from fusion), False for a dual (dot products of embeddings)."""
    return hasattr(model, "score_pairs") and hasattr(model, "fusion_depth")


def expand_score_matrix(
    model: CrossEncoder, image_features: FeatureBatch, text_features: FeatureBatch
) -> torch.Tensor:
    """Default ``score_matrix`` for cross-encoders that only implement ``score_pairs``.

    Repeats each image's features once per caption (no tower is re-run) and calls ``score_pairs`` on the
    ``Ni * Mt`` aligned rows. Returns logits (Ni, Mt).
    """
    num_images = feature_batch_size(image_features)
    num_texts = feature_batch_size(text_features)
    image_rows = torch.arange(num_images).repeat_interleave(num_texts)  # (Ni*Mt,)
    text_rows = torch.arange(num_texts).repeat(num_images)  # (Ni*Mt,)
    logits = model.score_pairs(
        slice_features(image_features, image_rows), slice_features(text_features, text_rows)
    )
    return logits.reshape(num_images, num_texts)
