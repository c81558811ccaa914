"""Tiny offline models, a tiny dataset and built indexes shared by the search, service and browser tests.

Towers are random ``transformers`` models saved to a temporary folder (a 2-stage ResNet whose feature map is a
square token grid, so the fusion cross-encoder can pool it, and a 2-layer BERT with its own vocabulary); nothing
downloads. The session fixtures of ``conftest.py`` (``tiny_search``, ``tiny_index``, ``tiny_retriever``) build them
once per test session.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.models.fusion import FusionConfig, FusionCrossEncoder
from dcd_itr.models.registry import save_model_description
from dcd_itr.search.build import index_build
from dcd_itr.speed.tiny_model import save_tiny_towers
from helpers import karpathy_record, make_image

COLOUR_NAMES = [
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "black",
    "cyan",
    "white",
    "grey",
    "pink",
]
COLOUR_VALUES = [
    (220, 20, 20),
    (20, 160, 40),
    (30, 40, 220),
    (240, 220, 30),
    (130, 30, 160),
    (250, 140, 0),
    (10, 10, 10),
    (0, 220, 220),
    (250, 250, 250),
    (128, 128, 128),
    (250, 150, 200),
]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "square", "colour", *COLOUR_NAMES]


@dataclass
class TinySetup:
    data: Path  # folder with dataset_tiny.json: 11 test images, 2 captions each
    dual: Path  # dual model folder
    cross: Path  # fusion cross-encoder folder (fusion term made non-zero)
    image_tower: Path
    text_tower: Path


def save_model(model: torch.nn.Module, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_model_description(model, folder)
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors")
    )
    return folder


def write_dataset(root: Path) -> Path:
    import json

    records = []
    for index, (name, value) in enumerate(zip(COLOUR_NAMES, COLOUR_VALUES, strict=True)):
        record = karpathy_record(index, "test", [f"a {name} square", f"the colour {name}"])
        make_image(root / record["filepath"] / record["filename"], value, size=(40, 40))
        records.append(record)
    records.append(karpathy_record(99, "train", ["a red square"]))
    make_image(root / "imgs" / "img99.png", (200, 0, 0))
    (root / "dataset_tiny.json").write_text(json.dumps({"dataset": "tiny", "images": records}))
    return root


def tiny_dual_config(image_tower: Path, text_tower: Path, embed_dim: int = 8) -> DualConfig:
    return DualConfig(
        image_view=f"hf:{image_tower}@32",
        text_view=f"hf:{text_tower}@12",
        image_dim=16,
        text_dim=32,
        embed_dim=embed_dim,
        hidden_dim=16,
        dropout=0.0,
    )


def build_tiny_setup(root: Path) -> TinySetup:
    """Towers, a dual model, a cross-encoder and the dataset under ``root`` (the ``tiny_search`` fixture makes
    them once per test session)."""
    torch.manual_seed(0)
    image_tower, text_tower = save_tiny_towers(root, VOCAB)
    dual_config = tiny_dual_config(image_tower, text_tower)
    dual = save_model(DualEncoderModel(dual_config).eval(), root / "dual")
    fusion = FusionCrossEncoder(
        FusionConfig(
            similarity_paths=[tiny_dual_config(image_tower, text_tower)],
            fusion_image_view=f"hf:{image_tower}@32",
            fusion_text_view=f"hf:{text_tower}@12",
            image_token_dim=16,
            text_token_dim=32,
            image_grid=2,
            max_text_tokens=12,
            width=16,
            num_layers=2,
            num_heads=2,
            ffn_multiplier=2,
            dropout=0.0,
        )
    )
    torch.nn.init.normal_(fusion.head[-1].weight, std=2.0)  # a fusion term that reorders candidates
    cross = save_model(fusion.eval(), root / "cross")
    return TinySetup(write_dataset(root / "data"), dual, cross, image_tower, text_tower)


def build_tiny_index(setup: TinySetup, out: Path, side: str = "images", backend: str = "faiss-flat") -> Path:
    """An index folder of the tiny test split at ``out``."""
    index_build(setup.dual, setup.data, out, "test", side, backend, shard_size=4, progress=False)
    return out


def png_bytes(colour=(30, 40, 220), size=(24, 24), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def upload(client, data: bytes, content_type: str = "image/png", **form):
    """POST /search/image with ``data`` as the file part and ``form`` as the other fields."""
    return client.post("/search/image", files={"file": ("q.png", data, content_type)}, data=form)
