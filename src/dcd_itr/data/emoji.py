"""The emoji benchmark: Noto Color Emoji artwork captioned with CLDR's human-written English names and keywords.

``build_emoji_dataset(out_dir)`` writes ``out_dir/images/*.png`` and ``out_dir/dataset_emoji.json`` in the
Karpathy split format, so every later stage reads it through the same path as COCO or Flickr30K.

- Images: every annotated emoji that renders as a single, non-blank glyph; skin-tone variants are dropped (they
  share captions with their base emoji). Cropped to content and centred on a white 136 px square.
- Captions: the CLDR short name, and the keywords (other than the name) joined as a second caption.
- Splits: about 70/10/20, deterministic for a seed, with emoji that share a base (man mage / woman mage / mage;
  all flags; all keycaps; all families) in the same split so that near-duplicates do not leak across splits.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dcd_itr.data.emoji_source import (
    DEBIAN_PACKAGES,
    SKIN_TONES,
    VARIATION_SELECTOR,
    Annotation,
    EmojiRenderer,
    debian_package_version,
    find_cldr_dir,
    find_font,
    read_annotations,
)
from dcd_itr.io_utils import write_bytes_atomic, write_json_atomic

DATASET_FILENAME = "dataset_emoji.json"
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}  # the usual retrieval proportions
DEFAULT_SEED = 0  # the published benchmark's seed; another seed gives another (equally valid) split
ZERO_WIDTH_JOINER = "\u200d"
GENDER_SIGNS = frozenset("\u2640\u2642")
PERSON_BASES = frozenset(
    "\U0001f468\U0001f469\U0001f9d1"
)  # man, woman, person: joined to a role in ZWJ sequences


@dataclass(frozen=True)
class EmojiItem:
    sequence: str
    filename: str
    captions: tuple[str, ...]
    group: str


def emoji_filename(sequence: str) -> str:
    """Noto's naming: ``emoji_u1f9d9_200d_2642.png`` (U+FE0F left out)."""
    return "emoji_u" + "_".join(f"{ord(c):04x}" for c in sequence if c != VARIATION_SELECTOR) + ".png"


def is_skin_tone_variant(sequence: str) -> bool:
    return any(c in SKIN_TONES for c in sequence)


def captions_for(annotation: Annotation) -> tuple[str, ...]:
    """The name, then the keywords other than the name joined as a second caption ("face, grin, smile").

    Splitting the keywords over more captions was tried and rejected: halves such as "face, open" describe dozens
    of emoji, so they measure ambiguity rather than retrieval.
    """
    name = annotation.name
    keywords = ", ".join(word for word in annotation.keywords if word.casefold() != name.casefold())
    return (name, keywords) if keywords else (name,)


def group_key(annotation: Annotation) -> str:
    """Emoji with the same key are near-duplicates and go to the same split.

    The CLDR name's prefix before ':' ("flag: Germany", "keycap: 1", "family: man, girl") groups flags, keycaps
    and families; otherwise the sequence with joiners, gender signs and person bases removed ("man mage" ->
    mage), or the sequence itself when nothing is left.
    """
    if ": " in annotation.name:
        return "name:" + annotation.name.split(": ", 1)[0]
    dropped = GENDER_SIGNS | PERSON_BASES | {ZERO_WIDTH_JOINER, VARIATION_SELECTOR}
    core = "".join(c for c in annotation.sequence if c not in dropped)
    return "seq:" + (core or annotation.sequence)


def _stable_hash(text: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")


def assign_splits(group_sizes: dict[str, int], seed: int = DEFAULT_SEED) -> dict[str, str]:
    """Group -> split: largest groups first (seeded order among equals), each to the split furthest below its
    target share. Deterministic for a seed."""
    total = sum(group_sizes.values())
    filled = dict.fromkeys(SPLIT_FRACTIONS, 0)
    order = sorted(group_sizes, key=lambda g: (-group_sizes[g], _stable_hash(g, seed)))
    assignment: dict[str, str] = {}
    for group in order:
        split = max(SPLIT_FRACTIONS, key=lambda s: SPLIT_FRACTIONS[s] * total - filled[s])
        assignment[group] = split
        filled[split] += group_sizes[group]
    return assignment


def karpathy_payload(items: list[EmojiItem], split_of: dict[str, str], info: dict) -> dict:
    images, sentence_id = [], 0
    for image_id, item in enumerate(items):
        sentences = []
        for caption in item.captions:
            tokens = caption.lower().replace(",", " ").replace(":", " ").split()
            sentences.append({"raw": caption, "tokens": tokens, "imgid": image_id, "sentid": sentence_id})
            sentence_id += 1
        images.append(
            {
                "filepath": "images",
                "filename": item.filename,
                "imgid": image_id,
                "split": split_of[item.group],
                "emoji": item.sequence,
                "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
            }
        )
    return {"dataset": "emoji", "info": info, "images": images}


def build_emoji_dataset(
    out_dir: str | Path,
    font_path: str | Path | None = None,
    cldr_dir: str | Path | None = None,
    seed: int = DEFAULT_SEED,
    only: Iterable[str] | None = None,
    progress: bool = True,
) -> Path:
    """Render and caption the emoji, write PNGs and the Karpathy JSON; return the JSON's path.

    ``only`` restricts the build to the given sequences (CLDR form, without U+FE0F), for tests.
    """
    out_dir = Path(out_dir)
    font, cldr = find_font(font_path), find_cldr_dir(cldr_dir)
    annotations = read_annotations(cldr)
    wanted = set(only) if only is not None else None
    sequences = sorted(
        (s for s in annotations if not is_skin_tone_variant(s) and (wanted is None or s in wanted)),
        key=lambda s: [ord(c) for c in s],
    )
    renderer = EmojiRenderer(font)
    items: list[EmojiItem] = []
    dropped: list[str] = []
    for sequence in tqdm(sequences, desc="render emoji", unit="emoji", disable=not progress):
        image = renderer.render(sequence)
        if image is None:
            dropped.append(sequence)
            continue
        annotation = annotations[sequence]
        item = EmojiItem(sequence, emoji_filename(sequence), captions_for(annotation), group_key(annotation))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        write_bytes_atomic(out_dir / "images" / item.filename, buffer.getvalue())
        items.append(item)
    group_sizes: dict[str, int] = {}
    for item in items:
        group_sizes[item.group] = group_sizes.get(item.group, 0) + 1
    info = {
        "description": "Noto Color Emoji rendered at 109 pt, captioned with CLDR English annotations",
        "debian_packages": {name: debian_package_version(name) for name in DEBIAN_PACKAGES},
        "font_sha256": hashlib.sha256(font.read_bytes()).hexdigest(),
        "seed": seed,
        "split_fractions": SPLIT_FRACTIONS,
        "skipped_not_single_glyph": len(dropped),
        "licenses": "artwork: Noto Emoji, Apache-2.0; captions: Unicode CLDR, Unicode-DFS-2016",
    }
    dataset_path = out_dir / DATASET_FILENAME
    write_json_atomic(dataset_path, karpathy_payload(items, assign_splits(group_sizes, seed), info), indent=1)
    return dataset_path


def emoji_dataset_is_current(data_dir: Path, seed: int) -> bool:
    """True when ``data_dir`` holds a complete emoji build from the installed font with this seed."""
    dataset_path = data_dir / DATASET_FILENAME
    try:
        payload = json.loads(dataset_path.read_text(encoding="utf-8"))
        info = payload["info"]
        font_hash = hashlib.sha256(find_font().read_bytes()).hexdigest()
        images_present = all((data_dir / i["filepath"] / i["filename"]).is_file() for i in payload["images"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return info.get("seed") == seed and info.get("font_sha256") == font_hash and images_present
