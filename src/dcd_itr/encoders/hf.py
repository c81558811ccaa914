"""Towers wrapping any ``transformers.AutoModel`` checkpoint, from a local folder or a hub id.

Vision: ViT / CLIP-vision-like models give ``last_hidden_state`` (B, N, C) as tokens (a CNN's (B, C, h, w) map is
flattened to (B, h*w, C)); ``pooled`` is ``pooler_output`` when the model has one, else the token mean. Text:
``last_hidden_state`` (B, L, C) with the tokenizer's attention mask; ``pooled`` is the masked mean
(sentence-transformers style). A dual checkpoint such as ``CLIPModel`` contributes only its ``vision_model`` /
``text_model``. ``transformers`` is imported lazily so that importing the registry stays cheap.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcd_itr.encoders.base import ImageTower, TextTower, masked_mean, package_versions
from dcd_itr.errors import ConfigError
from dcd_itr.interfaces import FeatureBatch

POOLINGS = ("pooler", "mean", "cls")
# ViTImageProcessor's default, used when a checkpoint has no preprocessor file
DEFAULT_MEAN_STD = (0.5, 0.5, 0.5)


def load_auto_model(name_or_path: str | Path, local_files_only: bool, dtype: torch.dtype) -> nn.Module:
    """``AutoModel.from_pretrained`` with an explicit dtype (transformers 5 defaults to the checkpoint's)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(name_or_path), local_files_only=local_files_only, dtype=dtype)


def submodel(model: nn.Module, modality: str) -> tuple[nn.Module, Any]:
    """The ``vision``/``text`` half of a dual checkpoint (e.g. CLIPModel), else the model itself, with its config."""
    config = getattr(model.config, f"{modality}_config", None)
    half = getattr(model, f"{modality}_model", None)
    if config is not None and half is not None:
        return half, config
    return model, model.config


def pool(
    tokens: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None, pooling: str
) -> torch.Tensor:
    """Reduce tokens (B, L, C) to (B, C) by the model's pooler, the masked mean, or the first token."""
    if pooling == "pooler" and pooler_output is not None:
        return pooler_output.flatten(1)  # a CNN pooler is (B, C, 1, 1)
    if pooling == "cls":
        return tokens[:, 0]
    return masked_mean(tokens, mask)


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}")


class HFImageTower(ImageTower):
    """Any vision ``AutoModel`` as an image tower."""

    def __init__(
        self,
        name_or_path: str | Path,
        image_size: int | None = None,  # None -> the checkpoint's config.image_size
        pooling: str = "pooler",  # the model's own summary vector (CLIP: post-LN CLS); "mean" if it has none
        local_files_only: bool = True,  # nothing downloads unless the caller asks for it
        device: str | torch.device = "cpu",  # "cuda" or "auto" where present
        frozen: bool = True,  # towers are feature extractors; unfreeze only to fine-tune
        dtype: torch.dtype = torch.float32,  # CPU kernels and the feature cache work in float32
    ) -> None:
        super().__init__()
        _check_pooling(pooling)
        from transformers.image_processing_base import ImageProcessingMixin

        self.name_or_path, self.pooling = str(name_or_path), pooling
        self.name = f"hf:{self.name_or_path}"
        self.backbone, config = submodel(load_auto_model(name_or_path, local_files_only, dtype), "vision")
        self.model_type = config.model_type
        self.native_size = getattr(config, "image_size", None) or 224  # 224: the common ImageNet resolution
        self.image_size = image_size or self.native_size
        # ViT/CLIP need their position embeddings interpolated at other sizes; CNNs take any size as is.
        accepts = inspect.signature(self.backbone.forward).parameters
        resized = self.image_size != self.native_size and "interpolate_pos_encoding" in accepts
        self._forward_options = {"interpolate_pos_encoding": True} if resized else {}
        try:
            settings, _ = ImageProcessingMixin.get_image_processor_dict(
                self.name_or_path, local_files_only=local_files_only
            )
        except OSError:
            settings = {}
        self.mean = tuple(settings.get("image_mean", DEFAULT_MEAN_STD))
        self.std = tuple(settings.get("image_std", DEFAULT_MEAN_STD))
        self._finish(frozen, device)
        with torch.inference_mode():  # one probe forward: robust to models without a hidden_size
            probe = self(torch.zeros(1, 3, self.image_size, self.image_size, device=self.device, dtype=dtype))
        self.token_dim, self.pooled_dim = probe["tokens"].shape[-1], probe["pooled"].shape[-1]

    def forward(self, pixels: torch.Tensor) -> FeatureBatch:
        """Normalised pixels (B, 3, S, S) -> tokens (B, N, C), all-True mask (B, N), pooled (B, C_pool)."""
        output = self.backbone(pixel_values=pixels, **self._forward_options)
        tokens = output.last_hidden_state
        if tokens.dim() == 4:  # a CNN feature map (B, C, h, w)
            tokens = tokens.flatten(2).transpose(1, 2)  # (B, h*w, C)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # (B, N)
        pooled = pool(tokens, mask, getattr(output, "pooler_output", None), self.pooling)
        return {"tokens": tokens, "mask": mask, "pooled": pooled}

    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "name_or_path": self.name_or_path,
            "model_type": self.model_type,
            "pooling": self.pooling,
            "versions": package_versions("transformers"),
        }


class HFTextTower(TextTower):
    """Any text ``AutoModel`` + ``AutoTokenizer`` as a text tower."""

    def __init__(
        self,
        name_or_path: str | Path,
        max_length: int = 40,  # the DCD reference truncates captions at 40 tokens
        pooling: str = "mean",  # sentence-transformers style; "cls"/"pooler" for models trained that way
        local_files_only: bool = True,  # nothing downloads unless the caller asks for it
        device: str | torch.device = "cpu",  # "cuda" or "auto" where present
        frozen: bool = True,  # towers are feature extractors; unfreeze only to fine-tune
        dtype: torch.dtype = torch.float32,  # CPU kernels and the feature cache work in float32
    ) -> None:
        super().__init__()
        _check_pooling(pooling)
        from transformers import AutoTokenizer

        self.name_or_path, self.pooling, self.max_length = str(name_or_path), pooling, max_length
        self.name = f"hf:{self.name_or_path}"
        self.tokenizer = AutoTokenizer.from_pretrained(self.name_or_path, local_files_only=local_files_only)
        self.backbone, config = submodel(load_auto_model(name_or_path, local_files_only, dtype), "text")
        self.model_type = config.model_type
        self.token_dim = self.pooled_dim = config.hidden_size
        self._finish(frozen, device)

    def tokenize(self, texts: list[str], pad_to_max_length: bool = False) -> dict[str, torch.Tensor]:
        """Strings -> ``input_ids``/``attention_mask`` (B, L) (+ ``token_type_ids`` for BERT), L <= max_length."""
        batch = self.tokenizer(
            list(texts),
            padding="max_length" if pad_to_max_length else True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return dict(batch)

    def forward(self, **tokenized: torch.Tensor) -> FeatureBatch:
        """Tokenizer output -> tokens (B, L, C), mask (B, L) True at real tokens, pooled (B, C)."""
        mask = tokenized["attention_mask"].bool()  # (B, L)
        output = self.backbone(**tokenized)
        tokens = output.last_hidden_state  # (B, L, C)
        pooled = pool(tokens, mask, getattr(output, "pooler_output", None), self.pooling)
        return {"tokens": tokens, "mask": mask, "pooled": pooled}

    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "name_or_path": self.name_or_path,
            "model_type": self.model_type,
            "pooling": self.pooling,
            "versions": package_versions("transformers", "tokenizers"),
        }
