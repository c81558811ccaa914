"""The emoji-scenes relation benchmark: several emoji on a 2x2 grid, captioned with one relation, with twins.

``build_scenes_dataset(out_dir)`` writes ``out_dir/images/*.png`` and ``out_dir/dataset_scenes.json``: Karpathy
format (read by :func:`dcd_itr.data.loading.load_dataset` like any dataset) plus, per image,
``"objects": [{"name", "codepoints", "box": [x0, y0, x1, y1]}]`` (grid-cell order, pixel boxes, exclusive ends),
``"relation": {"subject": i, "object": j, "predicate": "left of" | "above"}`` (subject = the left / upper one) and
``"twin": imgid``. :func:`load_scene_annotations` / :func:`split_twin_index` read them back in a split's order.

- Vocabulary: see :mod:`dcd_itr.data.scene_vocab` (one code point, plain unique CLDR name, one detectable glyph);
  ``vocab`` of them drawn by the seed.
- Scenes: see :mod:`dcd_itr.data.scene_layout`; each drawn scene is stored with its swapped twin (the two
  related emoji exchanged, all else equal), both in the same split; captions are the two converse forms.
- Splits by composition: every unordered pair of emoji appears together in at most one twin pair of the whole
  dataset, so no val/test pair ever co-occurs in train, and no caption text is shared by two images.
- Deterministic from the seed: the test split is drawn first, then val, then train, each from its own random
  stream, so the test split does not change with ``train_scenes``.
- Optionally (``novel_pairs``) a second test set in ``novel/``: scenes made only of eligible emoji left out of
  the vocabulary, so none of them is ever seen in training. The main dataset is byte-identical with or without it.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from math import comb
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dcd_itr.data.emoji_source import DEBIAN_PACKAGES, debian_package_version, find_font
from dcd_itr.data.scene_annotations import load_scene_annotations, split_twin_index
from dcd_itr.data.scene_files import DATASET_FILENAME, install, karpathy_payload, write_payload, write_split
from dcd_itr.data.scene_layout import SIZE_RANGE, SceneSpec, sample_spec
from dcd_itr.data.scene_vocab import codepoints, load_candidates
from dcd_itr.errors import DcdError, OutputError

__all__ = ["build_scenes_dataset", "load_scene_annotations", "split_twin_index"]

DEFAULT_SEED = 0  # the published benchmark's seed
DEFAULT_VOCAB = 600  # about half the eligible emoji: ample recognition; the rest can make --novel-pairs
DEFAULT_TRAIN_SCENES = 3000  # 6,000 train images: features + training fit a 2-core CPU budget
DEFAULT_VAL_PAIRS = 150  # 300 val images: a stable RSUM for model selection, cheap to score all pairs
DEFAULT_TEST_PAIRS = 150  # 300 test images, 600 captions, 150 twin pairs: the probe's size
DEFAULT_OBJECTS = 4  # a full 2x2 grid: a single vector must hold more than the caption asks (DESIGN.md)
DEFAULT_CANVAS = 224  # the teacher's largest tower view; students downscale
CANVAS_RANGE = (128, 512)  # below, objects sit too close for the detector's merge gap; above, no gain
NOVEL_FOLDER, NOVEL_FILENAME = "novel", "dataset_scenes_novel.json"  # the optional unseen-emoji test split
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


def draw_specs(
    rng: np.random.Generator, vocabulary_size: int, count: int, objects: int, used: set, what: str
) -> list[SceneSpec]:
    """``count`` twin-pair specs whose emoji pairs are not in ``used`` (which they are added to)."""
    specs: list[SceneSpec] = []
    tries = 0
    while len(specs) < count:
        tries += 1
        if tries > MAX_TRIES_PER_SCENE * count:
            raise DcdError(
                f"could draw only {len(specs)} of {count} {what} scenes with fresh emoji pairs from "
                f"{vocabulary_size} emoji: raise --vocab (or lower it, for --novel-pairs) or lower the scene counts"
            )
        spec = sample_spec(rng, vocabulary_size, objects)
        pairs = spec.pairs()
        if any(pair in used for pair in pairs):
            continue
        used.update(pairs)
        specs.append(spec)
    return specs


def draw_splits(
    vocabulary_size: int, split_pairs: dict[str, int], objects: int, seed: int
) -> dict[str, list[SceneSpec]]:
    """Twin-pair specs per split; every unordered emoji pair is used by at most one of them."""
    used: set[tuple[int, int]] = set()
    return {
        split: draw_specs(
            np.random.default_rng([seed, stream]), vocabulary_size, split_pairs[split], objects, used, split
        )
        for stream, split in enumerate(SPLIT_ORDER)
    }


def draw_novel(novel_size: int, novel_pairs: int, objects: int, seed: int) -> list[SceneSpec]:
    """Twin-pair specs over the ``novel_size`` eligible emoji left out of the vocabulary."""
    needed, available = novel_pairs * comb(objects, 2), comb(novel_size, 2)
    if novel_size < objects or needed > available // 2:
        raise DcdError(
            f"--novel-pairs {novel_pairs} needs {needed:,} distinct pairs of the {novel_size} eligible emoji outside "
            f"the vocabulary ({available:,} pairs, half must stay free): lower --vocab or --novel-pairs"
        )
    return draw_specs(np.random.default_rng([seed, 20]), novel_size, novel_pairs, objects, set(), "novel")


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
    novel_pairs: int = 0,
    progress: bool = True,
) -> Path:
    """Build the benchmark into ``out_dir`` (atomically: a temporary sibling folder renamed into place).

    ``train_scenes`` / ``val_pairs`` / ``test_pairs`` count twin pairs: each is 2 images (a scene and its twin).
    Renders come from ``emoji_data`` (a ``dcd data emoji`` folder) when given, else from the font and CLDR.
    ``novel_pairs`` > 0 also writes ``novel/dataset_scenes_novel.json`` (a "test" split of that many twin pairs
    whose emoji are all outside the vocabulary, so never seen in train); the main dataset is the same either way.
    Returns the path of ``dataset_scenes.json``.
    """
    split_pairs = {"train": train_scenes, "val": val_pairs, "test": test_pairs}
    check_sizes(vocab, split_pairs, objects, canvas, seed)
    if novel_pairs < 0:
        raise DcdError(f"--novel-pairs must be >= 0, got {novel_pairs}")
    detection_size = round(SIZE_RANGE[1] * (canvas // 2))
    candidates, dropped = load_candidates(emoji_data, font_path, cldr_dir, detection_size, progress)
    if vocab > len(candidates):
        raise DcdError(f"--vocab {vocab} is more than the {len(candidates)} eligible emoji")
    chosen = sorted(
        np.random.default_rng([seed, 3]).choice(len(candidates), size=vocab, replace=False).tolist()
    )
    vocabulary = [candidates[i] for i in chosen]
    specs = draw_splits(vocab, split_pairs, objects, seed)
    unchosen = set(range(len(candidates))) - set(chosen)
    novel_vocabulary = [candidates[i] for i in sorted(unchosen)]
    novel_specs = draw_novel(len(novel_vocabulary), novel_pairs, objects, seed) if novel_pairs else []
    out = Path(out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as error:
        raise OutputError(out, f"cannot write here ({error.strerror or error})") from error
    try:
        (temp / "images").mkdir()
        total = 2 * (sum(split_pairs.values()) + novel_pairs)
        with tqdm(total=total, desc="render scenes", unit="image", disable=not progress) as bar:
            records = {
                split: write_split(temp, split, specs[split], vocabulary, canvas, [seed, 10 + stream], bar)
                for stream, split in enumerate(SPLIT_ORDER)
            }
            if novel_specs:
                (temp / NOVEL_FOLDER / "images").mkdir(parents=True)
                novel_records = write_split(
                    temp / NOVEL_FOLDER,
                    "test",
                    novel_specs,
                    novel_vocabulary,
                    canvas,
                    [seed, 21],
                    bar,
                    "novel",
                )
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
        write_payload(temp / DATASET_FILENAME, karpathy_payload(records, info))
        if novel_specs:
            novel_info = info | {
                "description": "scenes of emoji outside the main vocabulary: none appears in ../dataset_scenes.json",
                "sizes": {"novel_pairs": novel_pairs, "objects": objects, "canvas": canvas},
                "vocabulary": [
                    {"name": e.name, "codepoints": codepoints(e.sequence)} for e in novel_vocabulary
                ],
            }
            payload = karpathy_payload({"test": novel_records}, novel_info, "scenes_novel")
            write_payload(temp / NOVEL_FOLDER / NOVEL_FILENAME, payload)
        install(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out / DATASET_FILENAME
