"""Shared machinery for the Hugging Face cross-encoder adapters (ViLT, BridgeTower, BLIP-ITM).

Each adapter wraps a real ``transformers`` retrieval model and its processor behind the
:class:`~dcd_itr.interfaces.CrossEncoder` protocol. This module holds what they share: loading
(``from_pretrained`` for real checkpoints, ``from_config`` for random-weight timing runs), saving, caption
tokenisation to a fixed length, and pair scoring in bounded chunks. A subclass supplies the unimodal image
features (:meth:`HFCrossEncoder.encode_images`), optional extra text work (:meth:`HFCrossEncoder._text_features`)
and the fused scoring of one aligned chunk (:meth:`HFCrossEncoder._score_chunk`).

Conventions: feature tensors live on the adapter's device (feed them straight back); scores come back as
float32 on the CPU (they are small and end up in rankings).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin

from dcd_itr.interfaces import FeatureBatch, feature_batch_size, slice_features

DEFAULT_PAIR_BATCH_SIZE = 32  # bounds activation memory: 32 full-size ViLT pairs need well under 1 GiB


def check_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    """``images`` as a non-empty list, with a clear error for a bare image or an empty batch."""
    if isinstance(images, Image.Image):
        raise TypeError("encode_images takes a list of images, not a single image")
    if len(images) == 0:
        raise ValueError("encode_images needs at least one image")
    return list(images)


def trim_to_longest(mask: torch.Tensor) -> int:
    """Length of the longest row of a right-padded 0/1 ``mask`` (B, L): columns past it are padding only."""
    return max(int(mask.sum(dim=1).max().item()), 1)


class HFCrossEncoder:
    """Base class: a ``transformers`` cross-encoder and its processor as a DCD :class:`CrossEncoder`.

    Args:
        model: the retrieval model (a subclass's ``model_class``); it is moved to ``device`` and put in eval mode.
        processor: the matching processor (image processor + tokenizer).
        device: where the model runs.
        pair_batch_size: pairs fused per forward pass in ``score_pairs`` / ``score_matrix`` (bounds memory).
        max_text_length: captions are padded/truncated to this many tokens so feature batches concatenate;
            ``None`` takes the subclass default, capped by what the model's position table allows.
        timing_only: True when the weights are random (``from_config``): the scores mean nothing, only the
            speed does. Reports should show this flag beside any figure from such an adapter.
    """

    kind: ClassVar[str]
    model_class: ClassVar[type[PreTrainedModel]]
    processor_class: ClassVar[type[ProcessorMixin]]
    default_max_text_length: ClassVar[int]

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        *,
        device: str | torch.device = "cpu",
        pair_batch_size: int = DEFAULT_PAIR_BATCH_SIZE,
        max_text_length: int | None = None,
        timing_only: bool = False,
    ) -> None:
        if pair_batch_size < 1:
            raise ValueError(f"pair_batch_size must be >= 1, got {pair_batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()  # eval: no dropout, so scores are deterministic
        self.processor = processor
        self.pair_batch_size = pair_batch_size
        self.timing_only = timing_only
        limit = self._max_text_positions()
        requested = max_text_length if max_text_length is not None else self.default_max_text_length
        self.max_text_length = min(requested, limit)

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        local_files_only: bool = False,
        dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> HFCrossEncoder:
        """Load a published checkpoint (hub id, or a folder written by ``save_pretrained``) and its processor.

        ``local_files_only=True`` never touches the network. ``dtype`` defaults to float32 so scores match the
        published evaluations; bfloat16 halves memory on a GPU. Extra keyword arguments go to the adapter
        (``pair_batch_size``, ``max_text_length``, and any subclass option).
        """
        model = cls.model_class.from_pretrained(
            str(name_or_path), local_files_only=local_files_only, dtype=dtype
        )
        processor = cls.processor_class.from_pretrained(str(name_or_path), local_files_only=local_files_only)
        return cls(model, processor, device=device, **kwargs)

    @classmethod
    def from_config(
        cls,
        config: PretrainedConfig,
        processor: ProcessorMixin | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        **kwargs: Any,
    ) -> HFCrossEncoder:
        """The architecture of ``config`` with random weights, for timing runs only (``timing_only=True``).

        Without a ``processor`` a stand-in is built offline from the config (image size from the config; a
        tokenizer of special tokens only, so every word becomes one unknown token: realistic lengths,
        meaningless ids).
        """
        torch.manual_seed(seed)  # the same random weights every time, so timing runs are comparable
        model = cls.model_class(config).to(dtype)
        processor = processor if processor is not None else cls.timing_processor(config)
        return cls(model, processor, device=device, timing_only=True, **kwargs)

    @classmethod
    def timing_processor(cls, config: PretrainedConfig) -> ProcessorMixin:
        """A processor built offline to match ``config``'s image size (subclasses implement)."""
        raise NotImplementedError

    def save_pretrained(self, path: str | Path) -> None:
        """Write model weights (safetensors), config and processor so ``from_pretrained(path)`` restores them."""
        self.model.save_pretrained(str(path))
        self.processor.save_pretrained(str(path))

    # ------------------------------------------------------------------------------------------- encoding
    @property
    def fusion_depth(self) -> int:
        """Number of cross-modal layers (subclasses implement)."""
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating-point type; pixel values are cast to it."""
        return next(self.model.parameters()).dtype

    def encode_images(self, images: Sequence[Image.Image]) -> FeatureBatch:
        """Unimodal image features, computed once per image (subclasses implement)."""
        raise NotImplementedError

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> FeatureBatch:
        """Tokenise captions padded to ``max_text_length`` (so batches concatenate), plus any per-caption tower."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of captions, not a single string")
        tokens = self.processor.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        features = {name: tokens[name].to(self.device) for name in self._token_keys()}  # each (B, T)
        return self._text_features(features)

    def _token_keys(self) -> tuple[str, ...]:
        """Which tokenizer outputs the model consumes."""
        return ("input_ids", "attention_mask")

    def _text_features(self, tokens: FeatureBatch) -> FeatureBatch:
        """Per-caption work beyond tokenisation (default: none)."""
        return tokens

    def _max_text_positions(self) -> int:
        """The longest caption the model's text position table accepts (subclasses implement)."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------- scoring
    def _score_chunk(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        """Fused logits (b,) for one aligned chunk already on the device (subclasses implement)."""
        raise NotImplementedError

    def _to_device(self, features: FeatureBatch) -> FeatureBatch:
        return {name: value.to(self.device, non_blocking=True) for name, value in features.items()}

    @torch.inference_mode()
    def score_pairs(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        """Aligned batches of B images and B captions -> logits (B,), ``pair_batch_size`` pairs at a time."""
        num_pairs = feature_batch_size(image_features)
        if feature_batch_size(text_features) != num_pairs:
            raise ValueError(
                f"score_pairs needs aligned batches: {num_pairs} images vs "
                f"{feature_batch_size(text_features)} captions"
            )
        scores = []
        for start in range(0, num_pairs, self.pair_batch_size):
            rows = slice(start, start + self.pair_batch_size)
            chunk_images = self._to_device(slice_features(image_features, rows))
            chunk_texts = self._to_device(slice_features(text_features, rows))
            scores.append(self._score_chunk(chunk_images, chunk_texts).float().cpu())  # (b,)
        return torch.cat(scores) if scores else torch.zeros(0)

    @torch.inference_mode()
    def score_matrix(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        """Every one of Ni images against every one of Mt captions -> logits (Ni, Mt).

        Walks the Ni*Mt grid in row-major chunks of ``pair_batch_size`` and gathers only that chunk's rows, so
        memory stays bounded however large the grid (``expand_score_matrix`` would copy all Ni*Mt rows).
        """
        num_images = feature_batch_size(image_features)
        num_texts = feature_batch_size(text_features)
        scores = []
        for image_rows, text_rows in self._grid_chunks(num_images, num_texts):
            chunk_images = self._to_device(slice_features(image_features, image_rows))
            chunk_texts = self._to_device(slice_features(text_features, text_rows))
            scores.append(self._score_chunk(chunk_images, chunk_texts).float().cpu())  # (b,)
        flat = torch.cat(scores) if scores else torch.zeros(0)
        return flat.reshape(num_images, num_texts)

    def _grid_chunks(self, num_images: int, num_texts: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Row indices (image, text) of consecutive ``pair_batch_size`` cells of the row-major grid."""
        total = num_images * num_texts
        for start in range(0, total, self.pair_batch_size):
            cells = torch.arange(start, min(start + self.pair_batch_size, total))  # (b,)
            yield cells // num_texts, cells % num_texts

    @torch.inference_mode()
    def reference_scores(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        """The model's own end-to-end forward on B aligned (image, caption) pairs -> scores (B,).

        Slow (no caching); it is the ground truth the cached ``score_pairs`` path is checked against.
        """
        inputs = self.processor(
            images=list(images),
            text=list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        inputs = {name: value.to(self.device) for name, value in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return self._reference_logits(inputs).float().cpu()

    def _reference_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores (B,) from the model's forward on processor outputs (subclasses implement)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        flag = ", timing_only=True" if self.timing_only else ""
        return (
            f"{type(self).__name__}(fusion_depth={self.fusion_depth}, max_text_length={self.max_text_length}, "
            f"pair_batch_size={self.pair_batch_size}, device={self.device}{flag})"
        )
