"""Tiny offline models, a tiny dataset and built indexes shared by the search, service and browser tests.

Towers are random ``transformers`` models saved to a temporary folder (a 2-stage ResNet whose feature map is a
square token grid, so the fusion cross-encoder can pool it, and a 2-layer BERT with its own vocabulary); nothing
downloads. Each builder caches its result for the session, so the models are made once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import karpathy_record, make_image
from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.models.fusion import FusionConfig, FusionCrossEncoder
from dcd_itr.models.registry import save_model_description

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
_CACHE: dict[str, object] = {}


@dataclass
class TinySetup:
    data: Path  # folder with dataset_tiny.json: 11 test images, 2 captions each
    dual: Path  # dual model folder
    cross: Path  # fusion cross-encoder folder (fusion term made non-zero)
    image_tower: Path
    text_tower: Path


def _save(model: torch.nn.Module, folder: Path) -> Path:
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


def tiny_setup(tmp_path_factory) -> TinySetup:
    """Towers, a dual model, a cross-encoder and the dataset, made once per test session."""
    if "setup" in _CACHE:
        return _CACHE["setup"]
    from transformers import BertConfig, BertModel, BertTokenizer, ResNetConfig, ResNetModel

    root = tmp_path_factory.mktemp("tiny_search")
    torch.manual_seed(0)
    image_tower, text_tower = root / "resnet", root / "bert"
    ResNetModel(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ).save_pretrained(image_tower)
    BertTokenizer(vocab={token: index for index, token in enumerate(VOCAB)}).save_pretrained(text_tower)
    bert = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(bert).save_pretrained(text_tower)
    dual_config = tiny_dual_config(image_tower, text_tower)
    dual = _save(DualEncoderModel(dual_config).eval(), root / "dual")
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
    cross = _save(fusion.eval(), root / "cross")
    setup = TinySetup(write_dataset(root / "data"), dual, cross, image_tower, text_tower)
    _CACHE["setup"] = setup
    return setup


def built_index(tmp_path_factory, side: str = "images", backend: str = "faiss-flat") -> Path:
    """An index folder of the tiny test split (cached per side and backend)."""
    key = f"index-{side}-{backend}"
    if key not in _CACHE:
        from dcd_itr.search.build import index_build

        setup = tiny_setup(tmp_path_factory)
        out = tmp_path_factory.mktemp(key)
        index_build(setup.dual, setup.data, out, "test", side, backend, shard_size=4, progress=False)
        _CACHE[key] = out
    return _CACHE[key]


def cached_retriever(tmp_path_factory, side: str):
    """A Retriever (with the cross-encoder) over the tiny index of ``side``, made once per session."""
    key = f"retriever-{side}"
    if key not in _CACHE:
        from dcd_itr.search.retriever import Retriever

        index = built_index(tmp_path_factory, side)
        _CACHE[key] = Retriever(index, cross_dir=tiny_setup(tmp_path_factory).cross)
    return _CACHE[key]


def png_bytes(colour=(30, 40, 220), size=(24, 24), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def upload(client, data: bytes, content_type: str = "image/png", **form):
    """POST /search/image with ``data`` as the file part and ``form`` as the other fields."""
    return client.post("/search/image", files={"file": ("q.png", data, content_type)}, data=form)
