"""The scenes benchmark's vocabulary: emoji whose CLDR short names are unique and unambiguous, with their renders.

Eligible: one code point (U+FE0F dropped, as CLDR writes it); not ASCII, a skin-tone modifier, a regional
indicator (flag half) or a hair component; a name of lower-case ASCII letters, digits, spaces, hyphens and
apostrophes (no "flag: ...", "keycap: ...", no parentheses or quotes) without the relation words "left",
"right", "above", "below" (captions stay unambiguous), unique after normalisation (any name two
emoji share is dropped for both); a render that is one glyph, not blank, and that the region detector sees as
one object whose box is the render's own (so every scene object is detectable from the pixels).

Renders come from the font (as ``dcd data emoji`` makes them) or from an existing emoji benchmark folder; both
are the same 136 px images, cropped here to their content.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dcd_itr.data.emoji_source import (
    SKIN_TONES,
    VARIATION_SELECTOR,
    EmojiRenderer,
    find_cldr_dir,
    find_font,
    read_annotations,
)
from dcd_itr.data.images import load_rgb
from dcd_itr.data.regions import box_iou, detect_regions
from dcd_itr.errors import DataError, DcdError

NAME_PATTERN = re.compile(r"[a-z][a-z0-9 '\-]*[a-z0-9]")  # plain English words only
RELATION_WORDS = frozenset(
    {"left", "right", "above", "below"}
)  # "a left arrow to the left of ..." is ambiguous
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)  # the halves of flag pairs
HAIR_COMPONENTS = range(0x1F9B0, 0x1F9B4)  # red / curly / white / bald hair: parts of ZWJ sequences
SELF_DETECTION_IOU = (
    0.95  # a render whose detected box differs more than this from its content box is dropped
)
DETECTION_SIZE = 96  # the largest emoji a 224 px scene holds: fragment gaps are widest there


@dataclass(frozen=True)
class VocabularyEmoji:
    sequence: str  # one code point (CLDR form, no U+FE0F)
    name: str  # lower-case CLDR short name, as used in captions
    image: Image.Image  # RGB render on white, cropped to its non-white content


def codepoints(sequence: str) -> str:
    """ "U+1F431" style, space separated."""
    return " ".join(f"U+{ord(c):04X}" for c in sequence)


def normalise_name(name: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", name.casefold()).split())


def eligible_sequence(sequence: str) -> bool:
    """One code point that is a picture of its own (not ASCII, a modifier, a flag half or a hair component)."""
    sequence = sequence.replace(VARIATION_SELECTOR, "")
    if len(sequence) != 1:
        return False
    point = ord(sequence)
    return not (
        point < 0x80 or sequence in SKIN_TONES or point in REGIONAL_INDICATORS or point in HAIR_COMPONENTS
    )


def content_crop(render: Image.Image) -> Image.Image | None:
    """The render cropped to its non-white pixels, or None when it is blank."""
    pixels = np.asarray(render.convert("RGB"))
    rows, cols = np.nonzero((pixels < 255).any(axis=2))
    if len(rows) == 0:
        return None
    return render.convert("RGB").crop((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))


def detectable(crop: Image.Image, size: int = DETECTION_SIZE) -> bool:
    """Does the detector see this emoji, scaled to ``size`` on a white margin, as one object with its own box?"""
    scale = size / max(crop.size)
    width, height = max(1, round(crop.width * scale)), max(1, round(crop.height * scale))
    tile = crop.resize((width, height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width + 20, height + 20), "white")
    canvas.paste(tile, (10, 10))
    found = detect_regions(canvas)
    pixels = np.asarray(tile)
    rows, cols = np.nonzero((pixels < 255).any(axis=2))
    if len(found) != 1 or len(rows) == 0:
        return False
    truth = (int(cols.min()) + 10, int(rows.min()) + 10, int(cols.max()) + 11, int(rows.max()) + 11)
    return box_iou(found[0], truth) >= SELF_DETECTION_IOU


def _names_from_cldr(cldr_dir: str | Path | None) -> dict[str, str]:
    annotations = read_annotations(find_cldr_dir(cldr_dir))
    return {sequence: annotation.name for sequence, annotation in annotations.items()}


def _names_from_emoji_build(emoji_data: Path) -> tuple[dict[str, str], dict[str, Path]]:
    """Sequence -> name (its first caption) and -> render path, from a ``dcd data emoji`` folder."""
    dataset = emoji_data / "dataset_emoji.json"
    if not dataset.is_file():
        raise DataError(dataset, "emoji benchmark not found (build it with `dcd data emoji --out DIR`)")
    try:
        payload = json.loads(dataset.read_text(encoding="utf-8"))
        records = payload["images"]
        names = {r["emoji"]: r["sentences"][0]["raw"] for r in records}
        paths = {r["emoji"]: emoji_data / r.get("filepath", "") / r["filename"] for r in records}
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise DataError(
            dataset, f"not an emoji benchmark dataset ({type(error).__name__}: {error})"
        ) from None
    return names, paths


def eligible_names(names: dict[str, str]) -> dict[str, str]:
    """Sequence -> lower-case name for the eligible sequences whose names are plain and unique."""
    candidates = {
        s: name.lower()
        for s, name in names.items()
        if eligible_sequence(s)
        and NAME_PATTERN.fullmatch(name.lower())
        and not RELATION_WORDS & set(normalise_name(name).split())
    }
    owners: dict[str, list[str]] = {}
    for sequence, name in candidates.items():
        owners.setdefault(normalise_name(name), []).append(sequence)
    return {s: name for s, name in candidates.items() if len(owners[normalise_name(name)]) == 1}


def load_candidates(
    emoji_data: str | Path | None = None,
    font_path: str | Path | None = None,
    cldr_dir: str | Path | None = None,
    detection_size: int = DETECTION_SIZE,
    progress: bool = True,
) -> tuple[list[VocabularyEmoji], dict[str, int]]:
    """Every eligible emoji with its cropped render, in code point order, and counts of what was dropped.

    ``detection_size``: the largest size (px) the emoji will have in a scene; detectability is checked there.
    """
    if emoji_data is not None:
        names, paths = _names_from_emoji_build(Path(emoji_data))
        renderer = None
    else:
        font = find_font(font_path)
        names, paths, renderer = _names_from_cldr(cldr_dir), {}, EmojiRenderer(font)
    named = eligible_names(names)
    dropped = {
        "not_one_code_point_or_plain_unique_name": len(names) - len(named),
        "blank_or_not_one_glyph": 0,
    }
    dropped["not_one_detectable_object"] = 0
    vocabulary: list[VocabularyEmoji] = []
    for sequence in tqdm(sorted(named), desc="vocabulary", unit="emoji", disable=not progress):
        if renderer is None:
            if not paths[sequence].is_file():
                raise DataError(paths[sequence], f"render of emoji {codepoints(sequence)} not found")
            render = load_rgb(paths[sequence])
        else:
            render = renderer.render(sequence)
        crop = content_crop(render) if render is not None else None
        if crop is None:
            dropped["blank_or_not_one_glyph"] += 1
        elif not detectable(crop, detection_size):
            dropped["not_one_detectable_object"] += 1
        else:
            vocabulary.append(VocabularyEmoji(sequence, named[sequence], crop))
    if not vocabulary:
        raise DcdError("no eligible emoji found: check the font, the CLDR annotations or --emoji-data")
    return vocabulary, dropped
