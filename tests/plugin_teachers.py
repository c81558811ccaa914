"""User-style teachers for the plug-in tests, whose correct ranking is known by construction.

The tiny Karpathy fixture's images are squares of one named colour and each caption names that colour, so a
teacher that compares an image's colour with the colour its caption names ranks every positive first.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageColor


def caption_rgb(caption: str) -> tuple[int, int, int] | None:
    """The RGB of the first colour name in ``caption`` (Pillow's CSS colour names), or None."""
    for word in caption.lower().replace(",", " ").split():
        if word in ImageColor.colormap:
            return ImageColor.getrgb(word)[:3]
    return None


def image_rgb(image: Image.Image) -> tuple[int, int, int]:
    return image.convert("RGB").getpixel((image.width // 2, image.height // 2))


class ColourNameTeacher:
    """The simple plug-in form: ``score(images, captions)`` on aligned lists. Higher = closer colours."""

    teacher_id = "colour-names-v1"  # declared: scores depend on nothing else

    def score(self, images: list[Image.Image], captions: list[str]) -> list[float]:
        scores = []
        for image, caption in zip(images, captions, strict=True):
            named, pixel = caption_rgb(caption), image_rgb(image)
            distance = 1000.0 if named is None else sum(abs(a - b) for a, b in zip(pixel, named, strict=True))
            scores.append(-float(distance))
        return scores


class ColourCrossEncoder:
    """The full CrossEncoder form on raw data: colours are encoded once per image and per caption."""

    fusion_depth = 0

    def __init__(self, device: str = "cpu", scale: float = 1.0) -> None:
        self.device, self.scale = device, scale

    def encode_images(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        return {"rgb": torch.tensor([image_rgb(image) for image in images], dtype=torch.float32)}  # (B, 3)

    def encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        colours = [caption_rgb(text) or (-1000, -1000, -1000) for text in texts]
        return {"rgb": torch.tensor(colours, dtype=torch.float32)}  # (B, 3)

    def score_pairs(self, image_features, text_features) -> torch.Tensor:
        return -self.scale * (image_features["rgb"] - text_features["rgb"]).abs().sum(dim=1)  # (B,)

    def score_matrix(self, image_features, text_features) -> torch.Tensor:
        return -self.scale * torch.cdist(image_features["rgb"], text_features["rgb"], p=1)  # (Ni, Mt)


class NoScore:
    """Neither form: loading it must fail with a clear error."""
