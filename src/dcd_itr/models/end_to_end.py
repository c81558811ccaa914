"""Raw images and strings in, scores out: frozen towers in front of a model that works on cached features.

The models in this package (dual heads, fusion cross-encoder) take ``"<view>.<name>"`` feature batches so that
training never re-runs a frozen tower. :class:`EndToEnd` builds the towers their views name and runs them first,
so the same model serves search, the benchmark and the Python API on PIL images and strings — with scores
identical to the cached path (the cache stores exactly what the towers output).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

from dcd_itr.data.images import load_rgb
from dcd_itr.encoders import build_image_tower, build_text_tower
from dcd_itr.encoders.base import ImageTower, TextTower
from dcd_itr.encoders.views import parse_view
from dcd_itr.interfaces import FeatureBatch
from dcd_itr.models.registry import load_model


class EndToEnd(nn.Module):
    """Wraps a feature-level model (dual or cross) with the towers of its views."""

    def __init__(self, model: nn.Module, device: str = "cpu") -> None:
        super().__init__()
        self.model = model.to(device).eval()
        self.image_towers: dict[str, ImageTower] = {}
        for view in model.image_views:
            name, size = parse_view(view)
            self.image_towers[view] = build_image_tower(name, image_size=size, device=device)
        self.text_towers: dict[str, TextTower] = {}
        for view in model.text_views:
            name, length = parse_view(view)
            self.text_towers[view] = build_text_tower(name, max_length=length, device=device)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> EndToEnd:
        """A saved model folder (``model.yaml`` + ``model.safetensors``) with its towers."""
        return cls(load_model(Path(folder)), device)

    @property
    def fusion_depth(self) -> int:
        return getattr(self.model, "fusion_depth", 0)

    @torch.inference_mode()
    def tower_image_features(self, images: list[Image.Image | str | Path]) -> FeatureBatch:
        """Tower outputs for PIL images or image paths, keyed ``"<view>.<name>"``."""
        pil = [
            load_rgb(image) if isinstance(image, (str, Path)) else image.convert("RGB") for image in images
        ]
        out: FeatureBatch = {}
        for view, tower in self.image_towers.items():
            out.update({f"{view}.{k}": v for k, v in tower.encode(pil).items()})
        return out

    @torch.inference_mode()
    def tower_text_features(self, texts: list[str]) -> FeatureBatch:
        out: FeatureBatch = {}
        for view, tower in self.text_towers.items():
            features = tower.encode(list(texts), pad_to_max_length=True)
            out.update({f"{view}.{k}": v for k, v in features.items()})
        return out

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image | str | Path]) -> FeatureBatch:
        return self.model.encode_images(self.tower_image_features(images))

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> FeatureBatch:
        return self.model.encode_texts(self.tower_text_features(texts))

    def score_pairs(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        return self.model.score_pairs(image_features, text_features)

    def score_matrix(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        if hasattr(self.model, "score_matrix"):
            return self.model.score_matrix(image_features, text_features)
        return self.model.similarity(image_features["embedding"], text_features["embedding"])
