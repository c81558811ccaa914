"""Frozen unimodal towers behind one small interface, and the name -> factory registry.

Names: ``efficientnet-lite0``, ``efficientnet-lite1``, ``efficientnet-lite2`` (image), ``minilm-l6`` (text), and
``hf:<path-or-hub-id>`` for any ``transformers.AutoModel`` checkpoint (either side). To add a tower, write a class
implementing :class:`ImageTower` or :class:`TextTower` and add a line to :data:`IMAGE_TOWERS` / :data:`TEXT_TOWERS`.

>>> tower = build_image_tower("efficientnet-lite0", image_size=128)  # doctest: +SKIP
>>> tower.encode(images)["tokens"].shape  # (B, 16, 320)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial

import torch

from dcd_itr.encoders.base import ImageTower, MissingTowerPackageError, TextTower
from dcd_itr.encoders.efficientnet import EfficientNetLiteTower
from dcd_itr.encoders.hf import HFImageTower, HFTextTower
from dcd_itr.encoders.minilm import MiniLMTextTower
from dcd_itr.encoders.regions import RegionTower, efficientnet_regions
from dcd_itr.encoders.views import DEFAULT_TEXT_LENGTH
from dcd_itr.errors import ConfigError, DcdError, short_repr, short_text

HF_PREFIX = "hf:"
REGIONS_PREFIX = "regions-"  # regions-<image tower>: that tower on each detected object's crop

#: name -> factory(image_size=..., device=..., **options)
IMAGE_TOWERS: dict[str, Callable[..., ImageTower]] = {
    "efficientnet-lite0": partial(EfficientNetLiteTower, "lite0"),
    "efficientnet-lite1": partial(EfficientNetLiteTower, "lite1"),
    "efficientnet-lite2": partial(EfficientNetLiteTower, "lite2"),
    # one pooled feature per detected object (crop at SIZE px, default 96) + its box: the grounded teacher's view
    "regions-efficientnet-lite0": partial(efficientnet_regions, "lite0"),
}

#: name -> factory(max_length=..., device=..., **options)
TEXT_TOWERS: dict[str, Callable[..., TextTower]] = {
    "minilm-l6": MiniLMTextTower,
}


def _unknown(kind: str, name: str, known: dict) -> ConfigError:
    valid = ", ".join([*sorted(known), f"{HF_PREFIX}<path-or-hub-id>"])
    return ConfigError(f"unknown {kind} tower {name!r}; valid names: {valid}")


@contextlib.contextmanager
def _hf_errors(name: str) -> Iterator[None]:
    """A folder or hub id that holds no usable model (``hf:/etc``) is a ConfigError naming the tower."""
    try:
        yield
    except DcdError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, ImportError) as error:
        raise ConfigError(
            f"tower {short_repr(name)}: not a Hugging Face model folder or hub id this machine can load "
            f"({type(error).__name__}: {short_text(str(error))})"
        ) from None


def build_image_tower(
    name: str,
    image_size: int | None = None,  # None -> the tower's native resolution
    device: str | torch.device = "cpu",  # "cuda" or "auto" where present
    **options,
) -> ImageTower:
    """Build a frozen image tower by registry name or ``hf:<path-or-hub-id>``; ``options`` go to its class."""
    if name.startswith(HF_PREFIX):
        with _hf_errors(name):
            return HFImageTower(name.removeprefix(HF_PREFIX), image_size=image_size, device=device, **options)
    if name not in IMAGE_TOWERS and name.startswith(REGIONS_PREFIX):  # any tower run on detected crops
        inner = build_image_tower(name.removeprefix(REGIONS_PREFIX), image_size=image_size, device=device)
        return RegionTower(inner, **options)
    if name not in IMAGE_TOWERS:
        raise _unknown("image", name, IMAGE_TOWERS)
    return IMAGE_TOWERS[name](image_size=image_size, device=device, **options)


def build_text_tower(
    name: str,
    max_length: int = DEFAULT_TEXT_LENGTH,
    device: str | torch.device = "cpu",  # "cuda" or "auto" where present
    **options,
) -> TextTower:
    """Build a frozen text tower by registry name or ``hf:<path-or-hub-id>``; ``options`` go to its class."""
    if name.startswith(HF_PREFIX):
        with _hf_errors(name):
            return HFTextTower(name.removeprefix(HF_PREFIX), max_length=max_length, device=device, **options)
    if name not in TEXT_TOWERS:
        raise _unknown("text", name, TEXT_TOWERS)
    return TEXT_TOWERS[name](max_length=max_length, device=device, **options)


__all__ = [
    "HF_PREFIX",
    "IMAGE_TOWERS",
    "TEXT_TOWERS",
    "EfficientNetLiteTower",
    "HFImageTower",
    "HFTextTower",
    "ImageTower",
    "MiniLMTextTower",
    "MissingTowerPackageError",
    "RegionTower",
    "TextTower",
    "build_image_tower",
    "build_text_tower",
]
