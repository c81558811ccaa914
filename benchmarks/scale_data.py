"""A synthetic dataset with COCO's shape, its features written straight into the feature-cache format.

Used by ``benchmarks/scale.py`` (and ``tests/test_scale_memory.py`` at a small size). No towers run: each image
has a latent vector z (LATENT dims); its captions' latents are z plus noise; every cached tensor is a fixed random
projection of the latent plus noise, so a student can learn something, and the cache holds exactly what a cache
built by ``dcd features`` holds (pooled vectors, token states, masks; checksummed shards; complete manifests).
Images are hard links to one 1x1 PNG, so the dataset reader's file checks pass at no disk cost.

Views: ``image-synth-grid@7`` (tokens (n, 49, TOKEN_DIM) = a 7x7 grid, pooled (n, 1280) like Lite's head) and
``text-synth-text@16`` (tokens (m, 16, TOKEN_DIM), mask (m, 16), pooled (m, 384) like MiniLM), stored as float16.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from dcd_itr.data.loading import load_dataset
from dcd_itr.encoders.views import view_key
from dcd_itr.features import FORMAT_VERSION, split_fingerprint
from dcd_itr.io_utils import with_checksum, write_json_atomic

IMAGE_VIEW, TEXT_VIEW = "synth-grid@7", "synth-text@16"
LATENT = 32  # latent dims: enough structure for a student to learn, cheap to project
TOKEN_DIM = 96  # token width: keeps COCO's 566K captions x 16 tokens at 1.7 GB in float16
IMAGE_POOLED, TEXT_POOLED = 1280, 384  # EfficientNet-Lite's and MiniLM's pooled widths
GRID, TEXT_TOKENS = 7, 16
LINKS_PER_FILE = 60_000  # hard links per placeholder PNG, under ext4's limit of 65,000
SHARD_SIZE = 1024  # rows per shard: 553 shards for COCO's train captions
# a valid 1x1 grey PNG: the dataset reader checks that image files exist; no tower ever opens them
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c636000000002000154a24f5d0000000049454e44ae426082"
)


@dataclass(frozen=True)
class Shape:
    train_images: int = 113_287  # Karpathy COCO train + restval
    val_images: int = 100  # small: the students validate on every pair of it each epoch
    test_images: int = 5_000  # COCO 5K test
    captions_per_image: int = 5


def _projections(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sizes = {
        "image.pooled": IMAGE_POOLED,
        "image.tokens": GRID * GRID * TOKEN_DIM,
        "text.pooled": TEXT_POOLED,
        "text.tokens": TEXT_TOKENS * TOKEN_DIM,
    }
    return {k: torch.randn(LATENT, n, generator=generator) / LATENT**0.5 for k, n in sizes.items()}


def _latents(split: str, first_image: int, count: int) -> torch.Tensor:
    """Image latents (count, LATENT) of images [first_image, first_image + count), independent of shard size."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{split}/{first_image}".encode()))
    return torch.randn(count, LATENT, generator=generator)


def write_dataset(root: Path, shape: Shape) -> Path:
    """``root/dataset_synthcoco.json`` and ``root/images/`` (hard links to one PNG); returns the dataset file."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    records, sentence = [], 0
    for split, count in (
        ("train", shape.train_images),
        ("val", shape.val_images),
        ("test", shape.test_images),
    ):
        for i in range(count):
            name = f"{split}_{i:06d}.png"
            source = images_dir / f"blank-{len(records) // LINKS_PER_FILE}.png"  # ext4 allows 65,000 links
            if not source.exists():
                source.write_bytes(PNG)
            if not (images_dir / name).exists():
                os.link(source, images_dir / name)
            captions = [
                {"raw": f"{split} image {i} caption {c}", "sentid": sentence + c}
                for c in range(shape.captions_per_image)
            ]
            sentence += shape.captions_per_image
            records.append(
                {
                    "filepath": "images",
                    "filename": name,
                    "split": split,
                    "imgid": len(records),
                    "sentences": captions,
                }
            )
    path = root / "dataset_synthcoco.json"
    path.write_text(json.dumps({"dataset": "synthcoco", "images": records}), encoding="utf-8")
    return path


def _write_view(cache: Path, kind: str, split, projections: dict, captions_per_image: int) -> None:
    name, size = (IMAGE_VIEW if kind == "image" else TEXT_VIEW).split("@")
    directory = cache / view_key(kind, name, int(size)) / split.name
    directory.mkdir(parents=True, exist_ok=True)
    per_image = 1 if kind == "image" else captions_per_image
    total = split.num_images * per_image
    for shard, start in enumerate(range(0, total, SHARD_SIZE)):
        stop = min(start + SHARD_SIZE, total)
        first, last = start // per_image, (stop - 1) // per_image + 1
        latent = _latents(split.name, first, last - first)  # (images, LATENT)
        rows = torch.arange(start, stop) // per_image - first  # (n,) image of each row
        generator = torch.Generator().manual_seed(zlib.crc32(f"{kind}/{split.name}/{shard}".encode()))
        noise = 0.5 if kind == "text" else 0.0  # a caption is its image's latent plus noise
        z = latent[rows] + noise * torch.randn(len(rows), LATENT, generator=generator)  # (n, LATENT)
        pooled = z @ projections[f"{kind}.pooled"]
        tokens = (z @ projections[f"{kind}.tokens"]).view(len(rows), -1, TOKEN_DIM)
        tokens = tokens + 0.1 * torch.randn(tokens.shape, generator=generator)
        tensors = {"pooled": pooled.half(), "tokens": tokens.half()}
        if kind == "text":
            lengths = torch.randint(8, TEXT_TOKENS + 1, (len(rows),), generator=generator)
            tensors["mask"] = (
                torch.arange(TEXT_TOKENS)[None, :] < lengths[:, None]
            )  # (n, L) True at real tokens
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        save_file(tensors, str(directory / f"shard-{shard:05d}.safetensors"), metadata=with_checksum(tensors))
    manifest = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "split": split.name,
        "num_items": total,
        "shard_size": SHARD_SIZE,
        "storage_dtype": "float16",
        "dataset_fingerprint": split_fingerprint(split, kind),
        "tower": {
            "name": f"synthetic-{name}",
            "note": "benchmarks/scale_data.py: no tower, projected latents",
        },
        "complete": True,
    }
    write_json_atomic(directory / "manifest.json", manifest)


def write_features(data: Path, cache: Path, shape: Shape, seed: int = 0) -> None:
    """The feature cache of every split of the dataset at ``data`` (both views, float16)."""
    splits, _ = load_dataset(data)
    projections = _projections(seed)
    for split in splits.values():
        for kind in ("image", "text"):
            _write_view(cache, kind, split, projections, shape.captions_per_image)
