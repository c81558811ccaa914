"""Loading a teacher by spec, and the one place where a teacher is frozen.

A teacher is either a saved model folder (our fusion cross-encoder: it reads the feature cache) or a plug-in
spec (``vilt:…``, ``bridgetower:…``, ``blip-itm:…``, ``python:…``; see :mod:`dcd_itr.models.plugins`: it reads
raw images and caption strings). :class:`Teacher` carries which, so callers hand it the right inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.data.image_files import ImageFiles
from dcd_itr.data.loading import load_split
from dcd_itr.distributed import resolve_device
from dcd_itr.errors import ConfigError
from dcd_itr.features import load_split_features
from dcd_itr.interfaces import FeatureBatch
from dcd_itr.models.plugins import load_plugin, owned_modules, parse_spec
from dcd_itr.models.registry import load_model, weights_fingerprint


def freeze_teacher(teacher: Any) -> Any:
    """Eval mode (no dropout) and no gradients, for good: the teacher only scores, never learns.

    ``teacher`` is an ``nn.Module`` or any object holding modules (an HF adapter's ``.model``, a user's class).
    """
    for module in owned_modules(teacher):
        module.eval()
        module.requires_grad_(False)
    return teacher


@dataclass
class Teacher:
    """A frozen cross-encoder, what it reads, and the fingerprint of its scores (the teacher-score cache key)."""

    model: Any  # a CrossEncoder
    spec: str  # the folder or plug-in spec it was loaded from
    fingerprint: str  # sha256 hex: the weights file of a folder, or what a plug-in's scores depend on
    raw_inputs: bool  # True: PIL images + caption strings (plug-ins); False: cached tower features (folders)

    def inputs(
        self, data: Path, features: Path, split_name: str
    ) -> tuple[RetrievalSplit, FeatureBatch | Sequence, FeatureBatch | Sequence]:
        """(split, image inputs, caption inputs) of one split, in the form this teacher reads."""
        if self.raw_inputs:
            split = load_split(data, split_name)
            return split, ImageFiles(split.image_paths), list(split.captions)
        cached = load_split_features(  # lazy: pools read token states per encode batch
            data, features, split_name, self.model.image_views, self.model.text_views, lazy=True
        )
        return cached.split, cached.images, cached.texts


def load_frozen_teacher(
    spec: str | Path, device: str = "cpu", options: dict[str, Any] | None = None
) -> Teacher:
    """A saved cross-encoder folder or a plug-in spec as a frozen :class:`Teacher` on ``device`` (or ``auto``).

    ``options`` go to a plug-in's loader (e.g. ``dtype``, ``pair_batch_size``; a ``python:`` factory's keyword
    arguments); a saved folder takes none.
    """
    spec, device = str(spec), resolve_device(device)
    if parse_spec(spec) is not None:
        plugin = load_plugin(spec, device, options)
        return Teacher(freeze_teacher(plugin.model), spec, plugin.fingerprint, raw_inputs=True)
    if options:
        raise ConfigError(
            f"teacher options {sorted(options)} apply to plug-in specs, not the folder {spec!r}"
        )
    model = load_model(Path(spec)).to(device)
    weights = weights_fingerprint(spec)
    return Teacher(freeze_teacher(model), spec, weights, raw_inputs=False)
