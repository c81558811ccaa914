"""Shared fixtures (nothing downloads): tiny towers, small datasets, and one feature-cache workspace per session,
handed out as a copy. Plain helpers live in ``helpers.py``."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from helpers import TINY, TINY_VOCAB, write_karpathy_fixture, write_shapes_fixture
from search_fixtures import TinySetup, build_tiny_index, build_tiny_setup

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def karpathy_dataset(tmp_path: Path) -> Path:
    return write_karpathy_fixture(tmp_path)


@pytest.fixture(scope="session")
def tiny_vit_path(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    path = tmp_path_factory.mktemp("tiny_vit")
    ViTModel(ViTConfig(image_size=32, patch_size=8, **TINY)).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 2, 3]})
    )
    return path


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny_bert")
    # transformers 5 takes the vocabulary as `vocab=`; the old `vocab_file=` is silently ignored (all [UNK]).
    BertTokenizer(vocab={token: index for index, token in enumerate(TINY_VOCAB)}).save_pretrained(path)
    BertModel(BertConfig(vocab_size=len(TINY_VOCAB), max_position_embeddings=64, **TINY)).save_pretrained(
        path
    )
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (no thread hand-offs, no fight for shared cores); restored after.

    Use it per module: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory) -> TinySetup:
    """Tiny ResNet/BERT towers, a dual model, a fusion cross-encoder and an 11-image test split (search tests)."""
    return build_tiny_setup(tmp_path_factory.mktemp("tiny_search"))


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory, tiny_search) -> Callable[..., Path]:
    """``tiny_index(side="images", backend="faiss-flat")`` -> an index folder of the tiny test split, built once
    per session per (side, backend). Shared: copy it before changing it."""
    built: dict[tuple[str, str], Path] = {}

    def index(side: str = "images", backend: str = "faiss-flat") -> Path:
        if (side, backend) not in built:
            out = tmp_path_factory.mktemp(f"index-{side}-{backend}")
            built[side, backend] = build_tiny_index(tiny_search, out, side, backend)
        return built[side, backend]

    return index


@pytest.fixture(scope="session")
def tiny_retriever(tiny_search, tiny_index) -> Callable[[str], object]:
    """``tiny_retriever(side)`` -> a Retriever (with the cross-encoder) over ``tiny_index(side)``, one per side."""
    from dcd_itr.search.retriever import Retriever

    built: dict[str, Retriever] = {}

    def retriever(side: str) -> Retriever:
        if side not in built:
            built[side] = Retriever(tiny_index(side), cross_dir=tiny_search.cross)
        return built[side]

    return retriever


@pytest.fixture(scope="session")
def feature_workspace(tmp_path_factory, tiny_vit_path, tiny_bert_path) -> Callable[..., dict]:
    """``feature_workspace(dataset="shapes", num_images=24, shard_size=None)`` -> a fresh copy of a workspace
    folder: the dataset (``shapes``: coloured shapes, ``karpathy``: the 8-image colour fixture) and its feature
    cache from the tiny towers, ``dcd features`` run once per session per (dataset, size, shard size).

    Returns ``{"root", "data", "cache", "image_view", "text_view", "feature_args"}``; the copy is the caller's to
    write run folders into, resume, kill or corrupt, without touching any other test's workspace."""
    from dcd_itr.cli import main

    image_view, text_view = f"hf:{tiny_vit_path}@32", f"hf:{tiny_bert_path}@16"
    feature_args = ["--image-encoder", image_view, "--text-encoder", text_view, "--quiet"]
    built: dict[tuple, Path] = {}

    def copy(dataset: str = "shapes", num_images: int = 24, shard_size: int | None = None) -> dict:
        key = (dataset, num_images, shard_size)
        if key not in built:
            master = tmp_path_factory.mktemp(f"workspace-{dataset}-{num_images}")
            if dataset == "shapes":
                data = write_shapes_fixture(master, num_images=num_images)
            else:
                data = write_karpathy_fixture(master)
            shards = ["--shard-size", str(shard_size)] if shard_size else []
            args = ["features", "--data", str(data), "--out", str(master / "cache"), *feature_args, *shards]
            assert main(args) == 0
            built[key] = master
        root = tmp_path_factory.mktemp(f"{dataset}-copy")
        shutil.copytree(built[key], root, dirs_exist_ok=True)
        data_name = "dataset_shapes.json" if dataset == "shapes" else "dataset_tiny.json"
        return {
            "root": root,
            "data": root / data_name,
            "cache": root / "cache",
            "image_view": image_view,
            "text_view": text_view,
            "feature_args": ["--data", str(root / data_name), *feature_args],
        }

    return copy
