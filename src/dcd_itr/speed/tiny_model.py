"""A tiny dual model with random weights, and a synthetic index for it: what the load test serves.

- :func:`build_tiny_dual_model`: a 2-layer BERT text tower and a 2-stage ResNet image tower with random weights
  (query latency depends on the architecture, not on the weights) under a dual encoder's heads.
- :func:`build_tiny_cross_model`: a tiny fusion cross-encoder on the same towers, for re-ranking under load.
- :func:`build_synthetic_index`: that model and an index of ``num_vectors`` random unit vectors of its dimension,
  with a gallery of fake captions. No dataset needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, BertTokenizer, ResNetConfig, ResNetModel

from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.models.fusion import FusionConfig, FusionCrossEncoder
from dcd_itr.models.registry import save_model_description, weights_fingerprint
from dcd_itr.search.gallery import Gallery
from dcd_itr.search.index import create_index

TEXT_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "the",
    "red",
    "green",
    "blue",
    "square",
    "dog",
]


def save_tiny_towers(folder: Path, vocab: list[str]) -> tuple[Path, Path]:
    """A random tiny ResNet (folder/resnet) and BERT with a word-level tokenizer over ``vocab`` (folder/bert),
    saved as Hugging Face folders; the caller seeds torch. Returns (image tower, text tower)."""
    image_tower, text_tower = folder / "resnet", folder / "bert"
    ResNetModel(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ).save_pretrained(image_tower)
    BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(text_tower)
    bert = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(bert).save_pretrained(text_tower)
    return image_tower, text_tower


def build_tiny_dual_model(folder: Path, embed_dim: int = 64, seed: int = 0) -> Path:
    """A dual model folder with random tiny towers (saved beside it); returns the model folder."""
    torch.manual_seed(seed)
    image_tower, text_tower = save_tiny_towers(folder, TEXT_VOCAB)
    model_dir = folder / "dual"
    config = DualConfig(
        image_view=f"hf:{image_tower}@32",
        text_view=f"hf:{text_tower}@16",
        image_dim=16,
        text_dim=32,
        embed_dim=embed_dim,
        hidden_dim=64,
        dropout=0.0,
    )
    model = DualEncoderModel(config).eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    save_model_description(model, model_dir)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(model_dir / "model.safetensors"))
    return model_dir


def build_tiny_cross_model(folder: Path, seed: int = 0) -> Path:
    """``folder/cross``: a 2-layer fusion cross-encoder (width 16) with random weights on the towers that
    :func:`build_tiny_dual_model` saved in ``folder`` (call that first); its fusion term is made non-zero so
    re-ranking reorders. What the load test re-ranks with: its cost is the architecture's, not the weights'."""
    torch.manual_seed(seed)
    image_view, text_view = f"hf:{folder / 'resnet'}@32", f"hf:{folder / 'bert'}@16"
    path = DualConfig(
        image_view, text_view, image_dim=16, text_dim=32, embed_dim=16, hidden_dim=16, dropout=0.0
    )
    fusion = FusionCrossEncoder(
        FusionConfig(
            similarity_paths=[path],
            fusion_image_view=image_view,
            fusion_text_view=text_view,
            image_token_dim=16,  # the tiny ResNet's last stage width
            text_token_dim=32,  # the tiny BERT's hidden size
            image_grid=2,
            max_text_tokens=16,
            width=16,
            num_layers=2,
            num_heads=2,
            ffn_multiplier=2,
            dropout=0.0,
        )
    )
    torch.nn.init.normal_(fusion.head[-1].weight, std=2.0)  # a fusion term that reorders candidates
    model_dir = Path(folder) / "cross"
    model_dir.mkdir(parents=True, exist_ok=True)
    save_model_description(fusion.eval(), model_dir)
    weights = {k: v.detach().contiguous() for k, v in fusion.state_dict().items()}
    save_file(weights, str(model_dir / "model.safetensors"))
    return model_dir


def _write_images(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` small random-colour PNGs in ``folder`` (the gallery's image files, read when re-ranking)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    colours = np.random.default_rng(seed).integers(0, 256, (count, 3))
    paths = [folder / f"{i}.png" for i in range(count)]
    for path, colour in zip(paths, colours, strict=True):
        Image.new("RGB", (32, 32), tuple(int(c) for c in colour)).save(path)
    return paths


def build_synthetic_index(
    folder: Path,
    num_vectors: int = 100_000,
    embed_dim: int = 64,
    seed: int = 0,
    image_files: int = 0,  # > 0: that many PNGs on disk, item i's image is file i % image_files (re-ranking reads them)
) -> Path:
    """``folder/index``: ``num_vectors`` random unit vectors in a faiss-flat index, searchable by the tiny model
    in ``folder/dual`` (same dimension); with ``image_files`` = 0 the gallery's image files do not exist (text
    search never reads them)."""
    folder = Path(folder)
    model_dir = build_tiny_dual_model(folder, embed_dim, seed)
    vectors = np.random.default_rng(seed).standard_normal((num_vectors, embed_dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, D) unit rows
    index = create_index("faiss-flat", embed_dim)
    index.add(np.arange(num_vectors, dtype=np.int64), vectors)
    out = folder / "index"
    index.save(out)
    if image_files:
        files = _write_images(out / "images", image_files, seed)
        image_paths = [str(files[i % image_files]) for i in range(num_vectors)]
    else:
        image_paths = [str(out / "images" / f"{i}.png") for i in range(num_vectors)]
    gallery = Gallery(
        side="images",
        image_ids=[str(i) for i in range(num_vectors)],
        image_paths=image_paths,
        image_captions=[[f"synthetic item {i}"] for i in range(num_vectors)],
        item_texts=[],
        item_images=[],
        model_dir=str(model_dir.resolve()),
        model_fingerprint=weights_fingerprint(model_dir),
        source={"data": "synthetic random unit vectors", "split": json.dumps({"seed": seed})},
    )
    gallery.save(out)
    return out
