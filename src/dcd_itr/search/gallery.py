"""The gallery table of an index folder: what each id is, and which model embedded it (``gallery.json``).

An index holds one *side* of a split:

- ``images``: item ``i`` is image row ``i`` (text -> image search);
- ``captions``: item ``j`` is caption ``j``, and ``item_images[j]`` is the image row it describes
  (image -> text search).

Either way the table keeps every image's id, absolute path and captions, so results can be displayed, and the
model's folder and fingerprint (sha256 of ``model.safetensors``), so a query is never embedded by a different
model than the gallery. ``gallery.json`` is written last by ``dcd index build``: its presence marks a complete
index folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.errors import ConfigError, CorruptFileError
from dcd_itr.io_utils import write_json_atomic
from dcd_itr.models.registry import weights_fingerprint

GALLERY_FILE = "gallery.json"
SIDES = ("images", "captions")
FORMAT_VERSION = 1


def is_dual_encoder(model: object) -> bool:
    """Embeddings compared by a dot product (DualEncoderModel, the zero-shot bridge), not pair scores."""
    return hasattr(model, "similarity") and not hasattr(model, "score_pairs")


@dataclass
class Gallery:
    """One side of a split, with the model that embedded it (see the module docstring)."""

    side: str
    image_ids: list[str]  # N dataset ids of the images
    image_paths: list[str]  # N absolute paths
    image_captions: list[list[str]]  # N caption lists, for display
    item_texts: list[str]  # M captions when side == "captions", else empty
    item_images: list[int]  # M image rows when side == "captions", else empty
    model_dir: str = ""
    model_fingerprint: str = ""
    source: dict[str, str] | None = None  # {"data", "split", "image_root"}: where the gallery came from

    @classmethod
    def from_split(cls, split: RetrievalSplit, side: str, model_dir: Path, data: Path) -> Gallery:
        if side not in SIDES:
            raise ConfigError(f"--side must be one of {SIDES}, got {side!r}")
        captions = [[split.captions[j] for j in rows] for rows in split.image_to_captions]
        return cls(
            side=side,
            image_ids=[str(i) for i in split.image_ids],
            image_paths=[os.path.abspath(p) for p in split.image_paths],  # unresolved: see image_root
            image_captions=captions,
            item_texts=list(split.captions) if side == "captions" else [],
            item_images=split.caption_to_image.tolist() if side == "captions" else [],
            model_dir=str(Path(model_dir).resolve()),
            model_fingerprint=weights_fingerprint(model_dir),
            source={
                "data": str(Path(data).resolve()),
                "split": split.name,
                **({"image_root": str(split.image_root)} if split.image_root is not None else {}),
            },
        )

    def __len__(self) -> int:
        return len(self.image_ids) if self.side == "images" else len(self.item_texts)

    def image_row(self, item_id: int) -> int:
        """The image row an item shows: itself for an image index, its image for a caption index."""
        return item_id if self.side == "images" else self.item_images[item_id]

    @property
    def image_root(self) -> str:
        """The folder ``/images/{id}`` serves from, and nothing outside it: the dataset's image root recorded at
        build time (``source["image_root"]``). A gallery built before it was recorded falls back to the dataset
        file's folder (the readers' default root), and one without a source to the deepest folder holding every
        gallery image. The service resolves the root and each file at request time and compares.
        """
        source = self.source if isinstance(self.source, dict) else {}
        if isinstance(source.get("image_root"), str):
            return source["image_root"]
        if isinstance(source.get("data"), str):
            data = Path(source["data"])
            return str(data if data.is_dir() else data.parent)
        return os.path.commonpath([str(Path(p).parent) for p in self.image_paths]) if self.image_paths else ""

    def content_fingerprint(self) -> str:
        """sha256 of the table's content (not the model): a resumed build must embed the same items."""
        table = {k: v for k, v in asdict(self).items() if k not in ("model_dir", "source")}
        return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **asdict(self)}

    def save(self, folder: str | Path) -> None:
        write_json_atomic(Path(folder) / GALLERY_FILE, self.to_json(), indent=None)

    @classmethod
    def from_json(cls, payload: Any, path: Path) -> Gallery:
        if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
            raise CorruptFileError(path, f"not a gallery table of format {FORMAT_VERSION}")
        fields = {k: v for k, v in payload.items() if k != "format"}
        try:
            gallery = cls(**fields)
        except TypeError as error:
            raise CorruptFileError(path, f"gallery table has wrong fields ({error})") from None
        lists = ("image_ids", "image_paths", "image_captions", "item_texts", "item_images")
        if not all(isinstance(getattr(gallery, name), list) for name in lists):
            raise CorruptFileError(path, f"gallery table fields {list(lists)} must be lists")
        sizes = {len(gallery.image_ids), len(gallery.image_paths), len(gallery.image_captions)}
        if (
            gallery.side not in SIDES
            or len(sizes) != 1
            or len(gallery.item_texts) != len(gallery.item_images)
        ):
            raise CorruptFileError(path, "gallery table is inconsistent (side or list lengths)")
        if any(type(row) is not int or not 0 <= row < len(gallery.image_ids) for row in gallery.item_images):
            raise CorruptFileError(path, "gallery table has a caption pointing at no image")
        return gallery

    @classmethod
    def load(cls, folder: str | Path) -> Gallery:
        path = Path(folder) / GALLERY_FILE
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CorruptFileError(
                path, "gallery table not found: the index is incomplete (rerun dcd index build)"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CorruptFileError(path, f"gallery table is not valid JSON ({error})") from None
        return cls.from_json(payload, path)
