"""Plug-in cross-encoders named by a spec string, as ``dcd eval --cross-encoder SPEC`` and a distill config's
``teacher: SPEC`` take them.

SPEC is one of:

- ``vilt:PATH_OR_HUB_ID``, ``bridgetower:PATH_OR_HUB_ID``, ``blip-itm:PATH_OR_HUB_ID``: a published checkpoint
  through the adapters of :mod:`dcd_itr.models.hf_adapters`;
- ``python:MODULE:NAME`` or ``python:FILE.py:NAME``: a user's class or factory, called with the run's options
  (and ``device=`` if it takes one). What it returns is either a :class:`~dcd_itr.interfaces.CrossEncoder`
  on raw data (``encode_images(list of PIL images)``, ``encode_texts(list of str)``, ``score_pairs``,
  ``score_matrix``), or any object with ``score(images, captions)`` -- aligned lists of B PIL images and B
  strings -> B scores, higher = better match -- which :class:`ScoreFunctionCrossEncoder` wraps;
- anything else is a saved model folder (``model.yaml`` + ``model.safetensors``) and is not handled here.

Plug-ins read raw data (PIL images, caption strings), not the feature cache. Each gets a fingerprint: the sha256
of what its scores depend on -- the kind, the weights (every tensor of every ``nn.Module`` it holds), the
options except batching, and for ``python:`` plug-ins the source file -- or, when the object declares a
``teacher_id`` string, that id instead of the weights and source. The teacher-score cache is keyed by it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from dcd_itr.errors import ConfigError
from dcd_itr.interfaces import FeatureBatch
from dcd_itr.io_utils import file_sha256, tensors_sha256
from dcd_itr.models.hf_adapters import HF_CROSS_ENCODERS, load_hf_cross_encoder

PLUGIN_KINDS = (*HF_CROSS_ENCODERS, "python")
SPEC_FORMS = (
    "vilt:PATH_OR_HUB_ID, bridgetower:PATH_OR_HUB_ID, blip-itm:PATH_OR_HUB_ID, python:MODULE:NAME, "
    "python:FILE.py:NAME, or a saved model folder"
)
BATCHING_OPTIONS = (
    "pair_batch_size",
    "batch_size",
)  # change speed and memory, never scores: not fingerprinted
PROTOCOL_METHODS = ("encode_images", "encode_texts", "score_pairs", "score_matrix")
MAX_IMAGE_SIDE = 384  # ViLT's and BLIP's input size; a score() teacher sees images at most this large
MAX_CAPTION_BYTES = 1024  # ~15x the longest COCO caption; longer ones are cut at a character boundary
SCORE_BATCH_SIZE = 64  # pairs per score() call unless the object sets batch_size


@dataclass
class PluginCrossEncoder:
    """A loaded plug-in: the cross-encoder (on raw data), its spec and the fingerprint of its scores."""

    model: Any
    spec: str
    fingerprint: str


def parse_spec(spec: str) -> tuple[str, str] | None:
    """``(kind, target)`` of a plug-in spec; ``None`` for a saved model folder; ConfigError for a bad spec."""
    kind, sep, target = spec.partition(":")
    if sep and kind in PLUGIN_KINDS:
        if not target.strip():
            raise ConfigError(
                f"cross-encoder spec {spec!r}: nothing after {kind + ':'!r}; expected {SPEC_FORMS}"
            )
        return kind, target
    if sep and not Path(spec).exists():
        raise ConfigError(f"cross-encoder spec {spec!r}: unknown kind {kind!r}; expected {SPEC_FORMS}")
    return None


def owned_modules(obj: Any, depth: int = 2) -> list[nn.Module]:
    """The ``nn.Module`` objects that ``obj`` is or holds as attributes (``depth`` levels down), without repeats."""
    if isinstance(obj, nn.Module):
        return [obj]
    if depth == 0 or not hasattr(obj, "__dict__") or isinstance(obj, type):
        return []
    found: dict[int, nn.Module] = {}
    for value in vars(obj).values():
        for module in owned_modules(value, depth - 1):
            found.setdefault(id(module), module)
    return list(found.values())


def _fingerprint(parts: list[str], obj: Any, declared: str | None) -> str:
    digest = hashlib.sha256("\n".join(parts).encode())
    if declared is not None:
        digest.update(f"\nteacher_id={declared}".encode())
    else:
        for module in owned_modules(obj):
            digest.update(tensors_sha256(module.state_dict()).encode())
    return digest.hexdigest()


def _scored_options(options: dict[str, Any]) -> str:
    kept = {k: v for k, v in options.items() if k not in BATCHING_OPTIONS}
    return json.dumps(kept, sort_keys=True, default=str)


def load_plugin(spec: str, device: str = "cpu", options: dict[str, Any] | None = None) -> PluginCrossEncoder:
    """Load the plug-in ``spec`` names (see the module docstring); every failure is a ConfigError naming it."""
    parsed = parse_spec(spec)
    if parsed is None:
        raise ConfigError(f"cross-encoder spec {spec!r} is a model folder, not a plug-in ({SPEC_FORMS})")
    kind, target = parsed
    options = dict(options or {})
    if kind == "python":
        return _load_python(spec, target, device, options)
    kwargs = dict(options)
    if isinstance(kwargs.get("dtype"), str):
        dtype = getattr(torch, kwargs["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ConfigError(f"cross-encoder {spec!r}: unknown dtype {kwargs['dtype']!r} (e.g. bfloat16)")
        kwargs["dtype"] = dtype
    try:
        model = load_hf_cross_encoder(kind, target, device=device, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        raise ConfigError(f"cross-encoder {spec!r}: cannot load it: {error}") from None
    image_processor = model.processor.image_processor.to_json_string()
    parts = [kind, _scored_options(options), f"max_text_length={model.max_text_length}", image_processor]
    return PluginCrossEncoder(model, spec, _fingerprint(parts, model, None))


def _import(spec: str, location: str) -> Any:
    """The module at ``location``: a ``.py`` file, or a dotted module name on ``sys.path``."""
    if location.endswith(".py"):
        path = Path(location).resolve()
        if not path.is_file():
            raise ConfigError(f"cross-encoder {spec!r}: file {location!r} not found")
        name = f"dcd_plugin_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and typing look a class's module up here
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as error:
        if error.name and not (location + ".").startswith(error.name + "."):
            raise  # the module exists but imports something missing: the user's traceback says more
        raise ConfigError(
            f"cross-encoder {spec!r}: cannot import {location!r} ({error}); put its folder on PYTHONPATH "
            "or give the file: python:path/to/file.py:NAME"
        ) from None


def _load_python(spec: str, target: str, device: str, options: dict[str, Any]) -> PluginCrossEncoder:
    location, sep, name = target.rpartition(":")
    if not sep or not location or not name:
        raise ConfigError(f"cross-encoder spec {spec!r}: expected python:MODULE:NAME or python:FILE.py:NAME")
    module = _import(spec, location)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"cross-encoder {spec!r}: {location!r} has no class or function {name!r}")
    kwargs = dict(options)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    if "device" in parameters and "device" not in kwargs:
        kwargs["device"] = device
    try:
        obj = factory(**kwargs)
    except TypeError as error:
        raise ConfigError(f"cross-encoder {spec!r}: calling {name}(**{options}) failed: {error}") from None
    missing = [method for method in PROTOCOL_METHODS if not callable(getattr(obj, method, None))]
    if not missing:
        model = obj
    elif callable(getattr(obj, "score", None)):
        model = ScoreFunctionCrossEncoder(obj)
    else:
        raise ConfigError(
            f"cross-encoder {spec!r}: {type(obj).__name__} has neither score(images, captions) nor the "
            f"CrossEncoder methods (missing: {', '.join(missing)})"
        )
    source = getattr(module, "__file__", None)
    declared = getattr(obj, "teacher_id", None)
    parts = ["python", name, _scored_options(options)]
    if declared is None and source:
        parts.append(file_sha256(source))
    return PluginCrossEncoder(
        model, spec, _fingerprint(parts, obj, None if declared is None else str(declared))
    )


class ScoreFunctionCrossEncoder:
    """A user's ``score(images, captions) -> B scores`` as a :class:`CrossEncoder` on raw data.

    Features are plain tensors, so they slice, concatenate and move like any other: images become
    ``{"pixels": (B, S, S, 3) uint8, "size": (B, 2) int64 (width, height)}``, each image shrunk (aspect kept) to
    fit ``S = scorer.max_image_side`` (default :data:`MAX_IMAGE_SIDE`) and placed top-left; captions become
    ``{"utf8": (B, MAX_CAPTION_BYTES) uint8, "length": (B,) int64}``. ``score`` receives the PIL images and
    strings back, ``scorer.batch_size`` pairs at a time. ``fusion_depth`` is the scorer's, else 0.
    """

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.max_image_side = int(getattr(scorer, "max_image_side", MAX_IMAGE_SIDE))
        self.batch_size = int(getattr(scorer, "batch_size", SCORE_BATCH_SIZE))
        self.fusion_depth = int(getattr(scorer, "fusion_depth", 0))

    def encode_images(self, images: Sequence[Image.Image]) -> FeatureBatch:
        side = self.max_image_side
        pixels = torch.zeros(len(images), side, side, 3, dtype=torch.uint8)  # (B, S, S, 3)
        sizes = torch.zeros(len(images), 2, dtype=torch.int64)  # (B, 2)
        for row, image in enumerate(images):
            image = image.convert("RGB")
            if max(image.size) > side:
                image.thumbnail((side, side), Image.Resampling.BICUBIC)
            width, height = image.size
            pixels[row, :height, :width] = torch.from_numpy(np.asarray(image).copy())
            sizes[row] = torch.tensor([width, height])
        return {"pixels": pixels, "size": sizes}

    def encode_texts(self, texts: Sequence[str]) -> FeatureBatch:
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of captions, not a single string")
        data = torch.zeros(len(texts), MAX_CAPTION_BYTES, dtype=torch.uint8)  # (B, L)
        lengths = torch.zeros(len(texts), dtype=torch.int64)  # (B,)
        for row, text in enumerate(texts):
            raw = text.encode("utf-8")[:MAX_CAPTION_BYTES]
            if raw:
                data[row, : len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            lengths[row] = len(raw)
        return {"utf8": data, "length": lengths}

    @staticmethod
    def images_of(features: FeatureBatch) -> list[Image.Image]:
        pixels = features["pixels"].cpu()
        return [
            Image.fromarray(pixels[row, :height, :width].numpy())
            for row, (width, height) in enumerate(features["size"].tolist())
        ]

    @staticmethod
    def texts_of(features: FeatureBatch) -> list[str]:
        data = features["utf8"].cpu()
        return [
            data[row, :length].numpy().tobytes().decode("utf-8", errors="ignore")
            for row, length in enumerate(features["length"].tolist())
        ]

    def _score(self, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        scores = []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            wanted = len(images[chunk])
            got = self.scorer.score(images[chunk], texts[chunk])
            if isinstance(got, torch.Tensor):
                got = got.detach().float().cpu()
            else:
                got = torch.as_tensor(np.asarray(got, dtype=np.float32))
            if got.numel() != wanted:
                raise ValueError(
                    f"{type(self.scorer).__name__}.score returned {got.numel()} scores for {wanted} pairs"
                )
            scores.append(got.reshape(-1))
        return torch.cat(scores) if scores else torch.zeros(0)

    def score_pairs(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        """Aligned batches of B images and B captions -> scores (B,)."""
        return self._score(self.images_of(image_features), self.texts_of(text_features))

    def score_matrix(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        """Ni images x Mt captions -> scores (Ni, Mt); each image is decoded once and shared by its pairs."""
        images, texts = self.images_of(image_features), self.texts_of(text_features)
        flat = self._score([image for image in images for _ in texts], texts * len(images))  # (Ni*Mt,)
        return flat.reshape(len(images), len(texts))
