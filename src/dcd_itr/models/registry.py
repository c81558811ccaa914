"""Saving and loading trained models: ``model.yaml`` (kind + config) beside ``model.safetensors``. No pickles.

Kinds are an explicit name -> (config class, model class) dict; add a line here to make a new model loadable.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from torch import nn

from dcd_itr.config import config_from_dict, config_to_dict
from dcd_itr.errors import ConfigError, CorruptFileError, DcdError, short_repr, short_text
from dcd_itr.io_utils import file_sha256, load_checked, write_text_atomic
from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.models.fusion import FusionConfig, FusionCrossEncoder
from dcd_itr.models.grounded import GroundedConfig, GroundedCrossEncoder
from dcd_itr.models.zeroshot import ZeroShotBridge, ZeroShotConfig
from dcd_itr.yaml_io import load_yaml_file

MODEL_KINDS: dict[str, tuple[type, type[nn.Module]]] = {
    "dual": (DualConfig, DualEncoderModel),
    "fusion": (FusionConfig, FusionCrossEncoder),
    "grounded": (GroundedConfig, GroundedCrossEncoder),
    "zeroshot": (ZeroShotConfig, ZeroShotBridge),
}


def model_kind(model: nn.Module) -> str:
    for kind, (_, model_class) in MODEL_KINDS.items():
        if type(model) is model_class:
            return kind
    raise ConfigError(f"{type(model).__name__} is not a registered model kind ({sorted(MODEL_KINDS)})")


def save_model_description(model: nn.Module, folder: Path) -> Path:
    """Write ``folder/model.yaml``: the kind and config needed to rebuild ``model`` before loading weights."""
    description = {"kind": model_kind(model), "config": config_to_dict(model.config)}
    path = Path(folder) / "model.yaml"
    write_text_atomic(path, yaml.safe_dump(description, sort_keys=False))
    return path


def build_model_from_description(folder: Path) -> nn.Module:
    path = Path(folder) / "model.yaml"
    if not path.exists():
        raise CorruptFileError(path, "model description not found (is this a model folder?)")
    description = load_yaml_file(path, CorruptFileError)
    kind = description.get("kind") if isinstance(description, dict) else None
    if not isinstance(kind, str) or kind not in MODEL_KINDS:
        raise CorruptFileError(
            path, f"kind: unknown model kind {short_repr(kind)}; known: {sorted(MODEL_KINDS)}"
        )
    config_class, model_class = MODEL_KINDS[kind]
    config = config_from_dict(config_class, description.get("config") or {}, str(path))
    check_model_sizes(config, path)
    try:
        return model_class(config)
    except DcdError:
        raise
    except Exception as error:  # torch raises ValueError, AssertionError, RuntimeError... for bad sizes
        raise CorruptFileError(
            path, f"config: cannot build a {kind} model ({short_text(str(error))})"
        ) from None


MAX_MODEL_SIZE = 1 << 16  # widths, layers, tokens, classes: 4x the widest layer of any model we know
UNBOUNDED_SIZES = {"max_pairs_per_chunk"}  # a batching bound, not an architecture size


def check_model_sizes(config: object, path: Path, where: str = "config") -> None:
    """Every integer of a model config (nested configs included) is a size: 0 <= value <= MAX_MODEL_SIZE.
    A negative or huge one is a CorruptFileError naming the field, before any tensor is allocated."""
    for field in dataclasses.fields(config):  # type: ignore[arg-type]
        value, name = getattr(config, field.name), f"{where}.{field.name}"
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            label = f"{name}[{index}]" if isinstance(value, list) else name
            if dataclasses.is_dataclass(item):
                check_model_sizes(item, path, label)
            elif isinstance(item, int) and not isinstance(item, bool):
                limit = None if field.name in UNBOUNDED_SIZES else MAX_MODEL_SIZE
                if item < 0 or (limit is not None and item > limit):
                    raise CorruptFileError(
                        path, f"{label}: {short_repr(item)} is out of range (0 to {limit or 'any'})"
                    )


WEIGHTS_FILE = "model.safetensors"  # beside model.yaml in every saved model folder


def weights_fingerprint(model_dir: str | Path) -> str:
    """sha256 (hex) of ``model_dir/model.safetensors``: the one id of a saved model's exact weights (teacher-score
    caches, galleries, evaluation score checkpoints and the demo's stage ledger all key on it)."""
    path = Path(model_dir) / WEIGHTS_FILE
    try:
        return file_sha256(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: model weights not found (is {model_dir} a model folder?)") from None


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model``, naming the file when it is corrupt or does not fit."""
    try:
        state, _ = load_checked(path)
    except Exception as error:  # safetensors raises several types for truncated/corrupt files
        raise CorruptFileError(path, f"cannot read weights ({error})") from None
    expected = model.state_dict()
    for name, tensor in state.items():  # a wrong shape with a valid checksum: weights of another config
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            raise CorruptFileError(
                path,
                f"tensor {name!r} has shape {tuple(tensor.shape)} but the model description expects "
                f"{tuple(expected[name].shape)} (weights of another model config?)",
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CorruptFileError(
            path, f"weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def load_model(folder: Path, weights: str = "model.safetensors") -> nn.Module:
    """Rebuild a model from ``folder/model.yaml`` and load ``folder/<weights>`` (safetensors)."""
    model = build_model_from_description(folder)
    load_model_weights(model, Path(folder) / weights)
    return model.eval()
