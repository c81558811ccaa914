"""Writing a scenes build: rendered PNGs, the Karpathy JSON with the scene fields, and the atomic folder swap."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dcd_itr.data.scene_layout import SceneSpec, captions, compose
from dcd_itr.data.scene_vocab import VocabularyEmoji, codepoints
from dcd_itr.errors import DcdError, OutputError

DATASET_FILENAME = "dataset_scenes.json"


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # no timestamp or text chunks: same pixels, same bytes
    return buffer.getvalue()


def scene_record(spec: SceneSpec, vocabulary: list[VocabularyEmoji], boxes: list, filename: str) -> dict:
    names = [vocabulary[i].name for i in spec.emoji]
    return {
        "filepath": "images",
        "filename": filename,
        "captions": captions(names[spec.subject], names[spec.object], spec.predicate),
        "objects": [
            {"name": vocabulary[i].name, "codepoints": codepoints(vocabulary[i].sequence), "box": list(box)}
            for i, box in zip(spec.emoji, boxes, strict=True)
        ],
        "relation": {"subject": spec.subject, "object": spec.object, "predicate": spec.predicate},
    }


def write_split(
    folder: Path,
    split: str,
    specs: list[SceneSpec],
    vocabulary: list[VocabularyEmoji],
    canvas: int,
    order_seed: list[int],
    bar: tqdm,
    prefix: str | None = None,
) -> list[dict]:
    """Render a split's scenes and twins into ``folder/images``; their records in the split's order, shuffled by
    ``order_seed`` (so twins are not neighbours). Files are ``images/{prefix or split}_{row:05d}.png``."""
    members = [(pair, twin) for pair in range(len(specs)) for twin in (0, 1)]
    order = np.random.default_rng(order_seed).permutation(len(members))
    position = {members[m]: p for p, m in enumerate(order.tolist())}
    crops = [emoji.image for emoji in vocabulary]
    records: list[dict] = [{} for _ in members]
    for pair, spec in enumerate(specs):
        for twin, scene in enumerate((spec, spec.swapped())):
            row = position[(pair, twin)]
            image, boxes = compose(scene, crops, canvas)
            filename = f"{prefix or split}_{row:05d}.png"
            (folder / "images" / filename).write_bytes(png_bytes(image))
            records[row] = scene_record(scene, vocabulary, boxes, filename) | {
                "split": split,
                "twin_row": position[(pair, 1 - twin)],
            }
            bar.update(1)
    return records


def karpathy_payload(split_records: dict[str, list[dict]], info: dict, dataset: str = "scenes") -> dict:
    """Number images train, val, test (the splits present); add sentences and the twin's imgid."""
    images, sentence_id, first_id = [], 0, 0
    for split in [name for name in ("train", "val", "test") if name in split_records]:
        records = split_records[split]
        for row, record in enumerate(records):
            image_id = first_id + row
            sentences = []
            for caption in record["captions"]:
                sentences.append(
                    {"raw": caption, "tokens": caption.split(), "imgid": image_id, "sentid": sentence_id}
                )
                sentence_id += 1
            images.append(
                {
                    "filepath": record["filepath"],
                    "filename": record["filename"],
                    "imgid": image_id,
                    "split": split,
                    "sentids": [s["sentid"] for s in sentences],
                    "sentences": sentences,
                    "objects": record["objects"],
                    "relation": record["relation"],
                    "twin": first_id + record["twin_row"],
                }
            )
        first_id += len(records)
    return {"dataset": dataset, "info": info, "images": images}


def check_captions_unique(payload: dict) -> None:
    seen: dict[tuple[str, str], int] = {}
    for image in payload["images"]:
        for sentence in image["sentences"]:
            key = (image["split"], sentence["raw"])
            if seen.setdefault(key, image["imgid"]) != image["imgid"]:
                raise DcdError(
                    f"internal error: caption {sentence['raw']!r} names two images of {image['split']}"
                )


def write_payload(path: Path, payload: dict) -> None:
    """The dataset JSON (its folder is a temporary build folder, renamed into place by :func:`install`)."""
    check_captions_unique(payload)
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", "utf-8")


def install(temp: Path, out: Path) -> None:
    """Move the finished build in place of ``out`` (an earlier scenes build there is replaced, nothing else)."""
    if out.exists():
        entries = {p.name for p in out.iterdir()} if out.is_dir() else {"?"}
        if entries and DATASET_FILENAME not in entries:
            raise OutputError(out, "exists and is not a scenes benchmark folder; refusing to replace it")
        old = out.with_name(f".{out.name}.old-{temp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
        temp.rename(out)
        shutil.rmtree(old)
    else:
        temp.rename(out)
