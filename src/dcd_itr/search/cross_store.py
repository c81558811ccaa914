"""The cross-encoder's gallery-side encodings stored beside an index's vectors (``INDEX/cross_images.safetensors``).

A grounded cross-encoder's image side (grounding keys, projected region geometry, region mask, similarity path;
see :class:`~dcd_itr.models.grounded_pairs.GroundedPairScorer`) does not depend on the query. ``dcd index build
--cross MODEL`` computes it once per gallery image, so re-ranking at query time runs only the text side of the
query and the per-pair part. The file records the cross model's fingerprint (sha256 of its weights) and the
gallery's content fingerprint; a retriever started with another ``--cross``, or an index rebuilt on another
gallery, is refused naming both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from dcd_itr.errors import CacheMismatchError, ConfigError, CorruptFileError
from dcd_itr.interfaces import FeatureBatch, concat_features
from dcd_itr.io_utils import atomic_path
from dcd_itr.models.end_to_end import EndToEnd
from dcd_itr.models.grounded_pairs import IMAGE_KEYS, GroundedPairScorer, pair_scorer
from dcd_itr.models.registry import weights_fingerprint
from dcd_itr.search.gallery import Gallery

CROSS_FILE = "cross_images.safetensors"
DEFAULT_CROSS_BATCH = 32  # images per region-tower call: the detector and crops run per image anyway


@dataclass
class CrossStore:
    """Stored gallery-side encodings of one cross model (``features`` keyed as :data:`IMAGE_KEYS`)."""

    features: FeatureBatch  # (N, ...) per gallery image row
    cross_fingerprint: str
    cross_dir: str
    gallery_fingerprint: str

    def check(self, cross_dir: str | Path, fingerprint: str, gallery: Gallery, path: Path) -> None:
        """Refuse a different cross model or a gallery other than the one encoded, naming both."""
        if fingerprint != self.cross_fingerprint:
            raise CacheMismatchError(
                f"{path} holds gallery encodings of the cross-encoder {self.cross_dir} (fingerprint "
                f"{self.cross_fingerprint[:16]}), but --cross {cross_dir} has fingerprint {fingerprint[:16]}: "
                f"re-rank with --cross {self.cross_dir}, or rebuild them (dcd index build ... --cross {cross_dir})"
            )
        if gallery.content_fingerprint() != self.gallery_fingerprint:
            raise CacheMismatchError(
                f"{path} was encoded for another gallery than {path.parent / 'gallery.json'}: "
                f"rebuild it (dcd index build ... --cross {cross_dir})"
            )


def grounded_scorer(cross: EndToEnd, cross_dir: str | Path) -> GroundedPairScorer:
    scorer = pair_scorer(cross.model)
    if scorer is None:
        raise ConfigError(
            f"{cross_dir} is a {type(cross.model).__name__}: only grounded cross-encoders (kind grounded) have "
            "query-independent gallery encodings to store"
        )
    return scorer


@torch.inference_mode()
def build_cross_store(
    folder: Path,
    gallery: Gallery,
    cross_dir: Path,
    device: str = "cpu",  # "cuda" where present
    batch_size: int = DEFAULT_CROSS_BATCH,  # see the constant's reason
    progress: bool = True,  # tqdm bar over images
) -> Path:
    """Encode every gallery image's cross-encoder image side and write ``folder/cross_images.safetensors``."""
    if gallery.side != "images":
        raise ConfigError("--cross stores image-side encodings: build the index with --side images")
    cross = EndToEnd.load(cross_dir, device)
    scorer = grounded_scorer(cross, cross_dir)
    parts = []
    paths = gallery.image_paths
    with tqdm(total=len(paths), unit="image", desc="cross encodings", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            encoded = scorer.encode_images(cross.tower_image_features(batch))
            parts.append({name: encoded[name].cpu() for name in IMAGE_KEYS})
            bar.update(len(batch))
    features = concat_features(parts)
    metadata = {
        "cross_fingerprint": weights_fingerprint(cross_dir),
        "cross_dir": str(Path(cross_dir).resolve()),
        "gallery_fingerprint": gallery.content_fingerprint(),
    }
    path = folder / CROSS_FILE
    with atomic_path(path) as temp:
        save_file({k: v.contiguous() for k, v in features.items()}, str(temp), metadata=metadata)
    return path


def load_cross_store(folder: Path) -> CrossStore | None:
    """The stored encodings of an index folder, or None when it has none."""
    path = Path(folder) / CROSS_FILE
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            features = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises several types for truncated or corrupt files
        raise CorruptFileError(path, f"cannot read the stored cross encodings ({error})") from None
    if set(features) != set(IMAGE_KEYS) or not {"cross_fingerprint", "gallery_fingerprint"} <= set(metadata):
        raise CorruptFileError(path, f"not a cross-encoding store (tensors {sorted(features)})")
    return CrossStore(
        features,
        metadata["cross_fingerprint"],
        metadata.get("cross_dir", "?"),
        metadata["gallery_fingerprint"],
    )
