"""The emoji-scenes relation benchmark: several emoji on a 2x2 grid, captioned with one relation, with twins.

``build_scenes_dataset(out_dir)`` writes ``out_dir/images/*.png`` and ``out_dir/dataset_scenes.json`` (Karpathy
format plus per-image ``objects``, ``relation`` and ``twin``; the contract is docs in SCENES_CONTRACT / README).

- Vocabulary: see :mod:`dcd_itr.data.scene_vocab` (one code point, plain unique CLDR name, one detectable glyph);
  ``vocab`` of them drawn by the seed.
- Scenes: see :mod:`dcd_itr.data.scene_layout`; each drawn scene is stored with its swapped twin (the two
  related emoji exchanged, all else equal), both in the same split; captions are the two converse forms.
- Splits by composition: every unordered pair of emoji appears together in at most one twin pair of the whole
  dataset, so no val/test pair ever co-occurs in train, and no caption text is shared by two images.
- Deterministic from the seed: the test split is drawn first, then val, then train, each from its own random
  stream, so the test split does not change with ``train_scenes``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from math import comb
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dcd_itr.data.emoji_source import DEBIAN_PACKAGES, debian_package_version, find_font
from dcd_itr.data.scene_annotations import load_scene_annotations, split_twin_index
from dcd_itr.data.scene_layout import SIZE_RANGE, SceneSpec, captions, compose, sample_spec
from dcd_itr.data.scene_vocab import VocabularyEmoji, codepoints, load_candidates
from dcd_itr.errors import DcdError, OutputError

__all__ = ["build_scenes_dataset", "load_scene_annotations", "split_twin_index"]

DATASET_FILENAME = "dataset_scenes.json"
DEFAULT_SEED = 0  # the published benchmark's seed
DEFAULT_VOCAB = (
    600  # half the ~1,265 eligible emoji: ample recognition, pairs left over for unseen compositions
)
DEFAULT_TRAIN_SCENES = 3000  # 6,000 train images: features + training fit a 2-core CPU budget
DEFAULT_VAL_PAIRS = 150  # 300 val images: a stable RSUM for model selection, cheap to score all pairs
DEFAULT_TEST_PAIRS = 150  # 300 test images, 600 captions, 150 twin pairs: the probe's size
DEFAULT_OBJECTS = 4  # a full 2x2 grid: a single vector must hold more than the caption asks (DESIGN.md)
DEFAULT_CANVAS = 224  # the teacher's largest tower view; students downscale
CANVAS_RANGE = (128, 512)  # below, objects sit too close for the detector's merge gap; above, no gain
SPLIT_ORDER = ("test", "val", "train")  # drawing order (test first: it does not depend on the train size)
MAX_TRIES_PER_SCENE = 200  # rejection sampling of fresh pairs; failing means the vocabulary is too small
SEED_LIMIT = 2**63  # numpy seeds must be non-negative; keep them in a signed 64-bit range


def check_sizes(vocab: int, split_pairs: dict[str, int], objects: int, canvas: int, seed: int) -> None:
    """DcdError naming the option when a size or the seed is out of range or cannot fit the vocabulary."""
    if not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise DcdError(f"--seed must be an integer in [0, 2**63), got {seed!r}")
    if not 2 <= objects <= 4:
        raise DcdError(f"--objects must be 2, 3 or 4 (cells of a 2x2 grid), got {objects}")
    if not CANVAS_RANGE[0] <= canvas <= CANVAS_RANGE[1]:
        raise DcdError(f"--canvas must be in [{CANVAS_RANGE[0]}, {CANVAS_RANGE[1]}] px, got {canvas}")
    if vocab < objects:
        raise DcdError(f"--vocab must be at least --objects ({objects}), got {vocab}")
    for split, count in split_pairs.items():
        option = "--train-scenes" if split == "train" else f"--{split}-pairs"
        if count < 1:
            raise DcdError(f"{option} must be >= 1, got {count}")
    needed = sum(split_pairs.values()) * comb(objects, 2)
    available = comb(vocab, 2)
    if needed > available // 2:
        raise DcdError(
            f"{sum(split_pairs.values())} scenes of {objects} objects use {needed:,} distinct emoji pairs, but a "
            f"vocabulary of {vocab} has only {available:,} and rejection sampling needs half of them free: raise "
            f"--vocab to at least {int((4 * needed) ** 0.5) + 2} or lower the scene counts"
        )


def draw_splits(
    vocabulary_size: int, split_pairs: dict[str, int], objects: int, seed: int
) -> dict[str, list[SceneSpec]]:
    """Twin-pair specs per split; every unordered emoji pair is used by at most one of them."""
    used: set[tuple[int, int]] = set()
    drawn: dict[str, list[SceneSpec]] = {}
    for stream, split in enumerate(SPLIT_ORDER):
        rng = np.random.default_rng([seed, stream])
        specs: list[SceneSpec] = []
        tries = 0
        while len(specs) < split_pairs[split]:
            tries += 1
            if tries > MAX_TRIES_PER_SCENE * split_pairs[split]:
                raise DcdError(
                    f"could draw only {len(specs)} of {split_pairs[split]} {split} scenes with fresh emoji pairs "
                    f"from a vocabulary of {vocabulary_size}: raise --vocab or lower the scene counts"
                )
            spec = sample_spec(rng, vocabulary_size, objects)
            pairs = spec.pairs()
            if any(pair in used for pair in pairs):
                continue
            used.update(pairs)
            specs.append(spec)
        drawn[split] = specs
    return drawn


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # no timestamp or text chunks: same pixels, same bytes
    return buffer.getvalue()


def _record(spec: SceneSpec, vocabulary: list[VocabularyEmoji], boxes: list, filename: str) -> dict:
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


def _write_split(
    folder: Path,
    split: str,
    specs: list[SceneSpec],
    vocabulary: list[VocabularyEmoji],
    canvas: int,
    seed: int,
    bar: tqdm,
) -> list[dict]:
    """Render a split's scenes and twins into ``folder/images``; their records in the split's (shuffled) order."""
    members = [(pair, twin) for pair in range(len(specs)) for twin in (0, 1)]
    order = np.random.default_rng([seed, 10 + SPLIT_ORDER.index(split)]).permutation(len(members))
    position = {members[m]: p for p, m in enumerate(order.tolist())}
    crops = [emoji.image for emoji in vocabulary]
    records: list[dict] = [{} for _ in members]
    for pair, spec in enumerate(specs):
        for twin, scene in enumerate((spec, spec.swapped())):
            row = position[(pair, twin)]
            image, boxes = compose(scene, crops, canvas)
            filename = f"{split}_{row:05d}.png"
            (folder / "images" / filename).write_bytes(_png_bytes(image))
            records[row] = _record(scene, vocabulary, boxes, filename) | {
                "split": split,
                "twin_row": position[(pair, 1 - twin)],
            }
            bar.update(1)
    return records


def _karpathy_payload(split_records: dict[str, list[dict]], info: dict) -> dict:
    """Number images train, val, test; add sentences and the twin's imgid."""
    images, sentence_id, first_id = [], 0, 0
    for split in ("train", "val", "test"):
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
    return {"dataset": "scenes", "info": info, "images": images}


def _check_captions_unique(payload: dict) -> None:
    seen: dict[tuple[str, str], int] = {}
    for image in payload["images"]:
        for sentence in image["sentences"]:
            key = (image["split"], sentence["raw"])
            if seen.setdefault(key, image["imgid"]) != image["imgid"]:
                raise DcdError(
                    f"internal error: caption {sentence['raw']!r} names two images of {image['split']}"
                )


def _install(temp: Path, out: Path) -> None:
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


def build_scenes_dataset(
    out_dir: str | Path,
    seed: int = DEFAULT_SEED,
    vocab: int = DEFAULT_VOCAB,
    train_scenes: int = DEFAULT_TRAIN_SCENES,
    val_pairs: int = DEFAULT_VAL_PAIRS,
    test_pairs: int = DEFAULT_TEST_PAIRS,
    objects: int = DEFAULT_OBJECTS,
    canvas: int = DEFAULT_CANVAS,
    emoji_data: str | Path | None = None,
    font_path: str | Path | None = None,
    cldr_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Build the benchmark into ``out_dir`` (atomically: a temporary sibling folder renamed into place).

    ``train_scenes`` / ``val_pairs`` / ``test_pairs`` count twin pairs: each is 2 images (a scene and its twin).
    Renders come from ``emoji_data`` (a ``dcd data emoji`` folder) when given, else from the font and CLDR.
    Returns the path of ``dataset_scenes.json``.
    """
    split_pairs = {"train": train_scenes, "val": val_pairs, "test": test_pairs}
    check_sizes(vocab, split_pairs, objects, canvas, seed)
    detection_size = round(SIZE_RANGE[1] * (canvas // 2))
    candidates, dropped = load_candidates(emoji_data, font_path, cldr_dir, detection_size, progress)
    if vocab > len(candidates):
        raise DcdError(f"--vocab {vocab} is more than the {len(candidates)} eligible emoji")
    chosen = sorted(
        np.random.default_rng([seed, 3]).choice(len(candidates), size=vocab, replace=False).tolist()
    )
    vocabulary = [candidates[i] for i in chosen]
    specs = draw_splits(vocab, split_pairs, objects, seed)
    out = Path(out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as error:
        raise OutputError(out, f"cannot write here ({error.strerror or error})") from error
    try:
        (temp / "images").mkdir()
        total = 2 * sum(split_pairs.values())
        with tqdm(total=total, desc="render scenes", unit="image", disable=not progress) as bar:
            records = {
                split: _write_split(temp, split, specs[split], vocabulary, canvas, seed, bar)
                for split in SPLIT_ORDER
            }
        source = (
            {"emoji_data": "dcd data emoji build"}
            if emoji_data is not None
            else {"font_sha256": hashlib.sha256(find_font(font_path).read_bytes()).hexdigest()}
        )
        info = {
            "description": "emoji scenes on a 2x2 grid captioned with one relation; every scene has its swapped twin",
            "seed": seed,
            "sizes": {"vocab": vocab, **split_pairs, "objects": objects, "canvas": canvas},
            "eligible_emoji": len(candidates),
            "dropped_emoji": dropped,
            "vocabulary": [{"name": e.name, "codepoints": codepoints(e.sequence)} for e in vocabulary],
            "debian_packages": {name: debian_package_version(name) for name in DEBIAN_PACKAGES},
            **source,
            "licenses": "artwork: Noto Emoji, Apache-2.0; names: Unicode CLDR, Unicode-DFS-2016",
        }
        payload = _karpathy_payload(records, info)
        _check_captions_unique(payload)
        (temp / DATASET_FILENAME).write_text(
            json.dumps(payload, indent=1, ensure_ascii=False) + "\n", "utf-8"
        )
        _install(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out / DATASET_FILENAME
