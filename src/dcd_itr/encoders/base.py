"""The small interface every frozen unimodal tower implements.

An :class:`ImageTower` turns PIL images into a :data:`~dcd_itr.interfaces.FeatureBatch`
``{"tokens": (B, N, C_tok), "mask": (B, N) bool, "pooled": (B, C_pool)}``; a :class:`TextTower` does the same for
strings with ``(B, L, C)`` tokens. Towers are frozen by default: no gradients, and ``train()`` keeps them in eval
mode so batch-norm statistics and dropout never change under a training loop that owns them.

``fingerprint()`` returns a JSON-able dict that the feature cache stores next to cached features; any change in
it (variant, resolution, package version, dtype) means the cache is stale.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from dcd_itr.distributed import resolve_device
from dcd_itr.errors import DcdError
from dcd_itr.interfaces import FeatureBatch, concat_features


class MissingTowerPackageError(DcdError, ModuleNotFoundError):
    """A tower's code or weight package is not installed; the message gives the pip line."""


def require_module(module: str, pip_name: str) -> Any:
    """Import ``module`` or fail with the pip line that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise MissingTowerPackageError(
            f"module {module!r} is missing; install it with `pip install {pip_name}` "
            "(or `pip install 'dcd-itr[towers]'` for all packaged towers)"
        ) from error


def package_versions(*distributions: str) -> dict[str, str]:
    """Installed version of each distribution (``"not installed"`` when absent), for fingerprints."""
    versions = {}
    for distribution in ("torch", *distributions):
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[distribution] = "not installed"
    return versions


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens`` (B, L, C) over positions where ``mask`` (B, L) is True -> (B, C)."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)  # (B, L, 1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def pad_token_features(batches: list[FeatureBatch], length: int | None = None) -> list[FeatureBatch]:
    """Right-pad ``tokens`` (zeros) and ``mask`` (False) of every batch to a common length.

    ``length`` defaults to the longest batch, so batches tokenized with dynamic padding can be concatenated.
    """
    target = length if length is not None else max(batch["tokens"].shape[1] for batch in batches)
    padded = []
    for batch in batches:
        missing = target - batch["tokens"].shape[1]
        if missing < 0:
            raise ValueError(f"a batch has {batch['tokens'].shape[1]} tokens, more than the target {target}")
        padded.append(
            {
                **batch,
                "tokens": nn.functional.pad(batch["tokens"], (0, 0, 0, missing)),  # (B, target, C)
                "mask": nn.functional.pad(batch["mask"], (0, missing), value=False),  # (B, target)
            }
        )
    return padded


def drop_padding_columns(tokenized: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the columns that are padding in every row of tokenizer output (B, L) -> (B, L'), by its
    ``attention_mask``: what tokenizing these rows alone with dynamic padding gives (either padding side)."""
    used = tokenized["attention_mask"].bool().any(dim=0)  # (L,)
    if used.all():
        return tokenized
    return {key: value[:, used] for key, value in tokenized.items()}


class FrozenTower(nn.Module):
    """Shared plumbing: freezing, device/dtype queries, the fingerprint."""

    name: str

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    def _finish(self, frozen: bool, device: str | torch.device) -> None:
        """Called at the end of a subclass ``__init__``: move to ``device`` and freeze unless asked not to."""
        self.to(torch.device(resolve_device(device)))
        if frozen:
            self.freeze()
        else:
            self.eval()  # inference is the common use; a trainer calls train() itself

    def freeze(self) -> None:
        """Stop gradients and switch to eval mode; ``train()`` is then a no-op."""
        self.frozen = True
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenTower:
        """Like :meth:`nn.Module.train`, except that a frozen tower always stays in eval mode."""
        return super().train(mode and not self.frozen)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def fingerprint(self) -> dict[str, Any]:
        """What the cached features depend on; subclasses add their own keys."""
        return {
            "tower": type(self).__name__,
            "name": self.name,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


class ImageTower(FrozenTower):
    """PIL images -> ``{"tokens": (B, N, C_tok), "mask": (B, N), "pooled": (B, C_pool)}``."""

    image_size: int
    token_dim: int
    pooled_dim: int
    mean: tuple[float, float, float]  # per-channel, on the [0, 1] scale
    std: tuple[float, float, float]
    # PIL's bicubic antialiases when shrinking, like TF's area-aware resize at training time
    resample = Image.Resampling.BICUBIC

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Resize to ``image_size`` x ``image_size`` and normalise -> float32 pixels (B, 3, H, W)."""
        size = (self.image_size, self.image_size)
        arrays = [np.asarray(image.convert("RGB").resize(size, self.resample)) for image in images]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def forward(self, pixels: torch.Tensor) -> FeatureBatch:
        raise NotImplementedError

    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) for towers that keep a classifier head."""
        raise NotImplementedError(f"{self.name} has no classification head")

    @torch.inference_mode()
    def encode(self, images: list[Image.Image], batch_size: int = 64) -> FeatureBatch:
        """Preprocess and run ``images`` in batches of ``batch_size``; returns CPU tensors."""
        if not images:
            raise ValueError("encode needs at least one image")
        batches = []
        for start in range(0, len(images), batch_size):
            pixels = self.preprocess(images[start : start + batch_size])
            features = self(pixels.to(self.device, self.dtype))
            batches.append({key: value.cpu() for key, value in features.items()})
        return concat_features(batches)

    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resample": self.resample.name.lower(),
        }


class TextTower(FrozenTower):
    """Strings -> ``{"tokens": (B, L, C), "mask": (B, L), "pooled": (B, C)}``."""

    max_length: int
    token_dim: int
    pooled_dim: int

    def tokenize(self, texts: list[str], pad_to_max_length: bool = False) -> dict[str, torch.Tensor]:
        """Strings -> tensors (B, L), ``attention_mask`` among them (1 at real tokens), padded to the longest text
        (to ``max_length`` when ``pad_to_max_length``); each row must not depend on the other texts."""
        raise NotImplementedError

    def forward(self, **tokenized: torch.Tensor) -> FeatureBatch:
        raise NotImplementedError

    @torch.inference_mode()
    def encode(
        self, texts: list[str], batch_size: int = 256, pad_to_max_length: bool = False
    ) -> FeatureBatch:
        """Tokenize ``texts`` once and run them in batches of similar length; returns CPU tensors in input order.

        Rows are sorted by token count (longest first, ties in input order) before batching, so a batch costs its
        own longest text rather than the longest of ``batch_size`` consecutive ones; the attention mask makes
        padding irrelevant, so each row equals the text encoded alone up to float rounding. Batches are then
        right-padded to the longest one (or to ``max_length`` when ``pad_to_max_length``), so every row shares
        one token length L.
        """
        if not texts:
            raise ValueError("encode needs at least one text")
        tokenized = self.tokenize(list(texts))  # (N, L_longest) each
        lengths = tokenized["attention_mask"].sum(dim=1)  # (N,)
        order = torch.argsort(lengths, descending=True, stable=True)  # (N,) longest first
        batches = []
        for start in range(0, len(texts), batch_size):
            batch = drop_padding_columns(
                {key: value[order[start : start + batch_size]] for key, value in tokenized.items()}
            )
            features = self(**{key: value.to(self.device) for key, value in batch.items()})
            batches.append({key: value.cpu() for key, value in features.items()})
        features = concat_features(
            pad_token_features(batches, self.max_length if pad_to_max_length else None)
        )
        input_order = torch.empty_like(order)
        input_order[order] = torch.arange(len(order))  # sorted position of each input row
        return {key: value[input_order] for key, value in features.items()}

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "max_length": self.max_length}
