"""The emoji benchmark builder, on a handful of emoji with the real Noto font and a small CLDR fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dcd_itr.data.emoji import (
    assign_splits,
    build_emoji_dataset,
    captions_for,
    emoji_filename,
    group_key,
)
from dcd_itr.data.emoji_source import Annotation, EmojiRenderer, find_font, read_annotations
from dcd_itr.data.loading import load_dataset
from dcd_itr.errors import DcdError

MAGE, MAN_MAGE, WOMAN_MAGE = "\U0001f9d9", "\U0001f9d9\u200d\u2642", "\U0001f9d9\u200d\u2640"
GRIN, FLAG_DE, FLAG_FR, KEYCAP_1 = "\U0001f600", "\U0001f1e9\U0001f1ea", "\U0001f1eb\U0001f1f7", "1\u20e3"
MAGE_LIGHT = "\U0001f9d9\U0001f3fb"
TWO_GLYPHS = "\U0001f600\U0001f436"

BASE_XML = f"""<?xml version="1.0" encoding="UTF-8" ?>
<ldml><annotations>
<annotation cp="{GRIN}">face | grin | grinning face</annotation>
<annotation cp="{GRIN}" type="tts">grinning face</annotation>
<annotation cp="{MAGE}">mage | sorcerer | sorceress | witch | wizard</annotation>
<annotation cp="{MAGE}" type="tts">mage</annotation>
<annotation cp="{{">brace | curly bracket</annotation>
<annotation cp="{{" type="tts">open curly bracket</annotation>
<annotation cp="{TWO_GLYPHS}">two things</annotation>
<annotation cp="{TWO_GLYPHS}" type="tts">grin and dog</annotation>
</annotations></ldml>"""
DERIVED_XML = f"""<?xml version="1.0" encoding="UTF-8" ?>
<ldml><annotations>
<annotation cp="{MAN_MAGE}">man mage | sorcerer | wizard</annotation>
<annotation cp="{MAN_MAGE}" type="tts">man mage</annotation>
<annotation cp="{WOMAN_MAGE}">sorceress | witch | woman mage</annotation>
<annotation cp="{WOMAN_MAGE}" type="tts">woman mage</annotation>
<annotation cp="{MAGE_LIGHT}">light skin tone | mage</annotation>
<annotation cp="{MAGE_LIGHT}" type="tts">mage: light skin tone</annotation>
<annotation cp="{FLAG_DE}">flag</annotation>
<annotation cp="{FLAG_DE}" type="tts">flag: Germany</annotation>
<annotation cp="{FLAG_FR}">flag</annotation>
<annotation cp="{FLAG_FR}" type="tts">flag: France</annotation>
<annotation cp="{KEYCAP_1}">keycap</annotation>
<annotation cp="{KEYCAP_1}" type="tts">keycap: 1</annotation>
</annotations></ldml>"""


@pytest.fixture
def cldr_dir(tmp_path: Path) -> Path:
    root = tmp_path / "cldr"
    (root / "annotations").mkdir(parents=True)
    (root / "annotationsDerived").mkdir()
    (root / "annotations" / "en.xml").write_text(BASE_XML, encoding="utf-8")
    (root / "annotationsDerived" / "en.xml").write_text(DERIVED_XML, encoding="utf-8")
    return root


def test_captions_name_then_keywords() -> None:
    assert captions_for(Annotation(GRIN, "grinning face", ("face", "grin", "grinning face"))) == (
        "grinning face",
        "face, grin",
    )
    assert captions_for(Annotation(MAGE, "mage", ("mage", "sorcerer", "sorceress", "witch", "wizard"))) == (
        "mage",
        "sorcerer, sorceress, witch, wizard",
    )
    assert captions_for(Annotation(KEYCAP_1, "keycap: 1", ())) == ("keycap: 1",)


def test_group_keys_keep_near_duplicates_together() -> None:
    keys = {
        name: group_key(Annotation(seq, name, ()))
        for seq, name in [(MAGE, "mage"), (MAN_MAGE, "man mage"), (WOMAN_MAGE, "woman mage")]
    }
    assert len(set(keys.values())) == 1
    assert group_key(Annotation(FLAG_DE, "flag: Germany", ())) == group_key(
        Annotation(FLAG_FR, "flag: France", ())
    )
    assert group_key(Annotation(GRIN, "grinning face", ())) != keys["mage"]


def test_assign_splits_hits_targets_and_is_deterministic() -> None:
    sizes = {f"g{i}": 1 + i % 3 for i in range(300)}
    first, second = assign_splits(sizes, seed=3), assign_splits(sizes, seed=3)
    assert first == second
    total = sum(sizes.values())
    share = {s: sum(n for g, n in sizes.items() if first[g] == s) / total for s in ("train", "val", "test")}
    assert (
        abs(share["train"] - 0.7) < 0.01
        and abs(share["val"] - 0.1) < 0.01
        and abs(share["test"] - 0.2) < 0.01
    )
    assert assign_splits(sizes, seed=4) != first


def test_renderer_single_glyph_blank_and_multi_glyph() -> None:
    renderer = EmojiRenderer(find_font())
    image = renderer.render(MAN_MAGE)
    assert image is not None and image.size == (136, 136) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert (pixels < 250).any(axis=2).mean() > 0.2  # real artwork, not a blank tile
    assert pixels[0, 0].tolist() == [255, 255, 255]  # padded on white
    assert renderer.render("{") is None  # not in the font: renders blank
    assert renderer.render(TWO_GLYPHS) is None  # two glyphs side by side


def test_build_on_a_handful(cldr_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "emoji"
    dataset_path = build_emoji_dataset(out, cldr_dir=cldr_dir, progress=False)
    payload = json.loads(dataset_path.read_text(encoding="utf-8"))
    by_emoji = {record["emoji"]: record for record in payload["images"]}
    assert set(by_emoji) == {
        GRIN,
        MAGE,
        MAN_MAGE,
        WOMAN_MAGE,
        FLAG_DE,
        FLAG_FR,
        KEYCAP_1,
    }  # no skin tone, '{', pair
    assert payload["info"]["skipped_not_single_glyph"] == 2
    assert by_emoji[MAN_MAGE]["filename"] == emoji_filename(MAN_MAGE) == "emoji_u1f9d9_200d_2642.png"
    assert len({by_emoji[e]["split"] for e in (MAGE, MAN_MAGE, WOMAN_MAGE)}) == 1
    assert by_emoji[FLAG_DE]["split"] == by_emoji[FLAG_FR]["split"]
    for record in payload["images"]:
        raws = [s["raw"] for s in record["sentences"]]
        assert len(set(raws)) == len(raws) and (out / "images" / record["filename"]).is_file()
    splits, _ = load_dataset(out)
    assert sum(s.num_images for s in splits.values()) == 7
    again = build_emoji_dataset(tmp_path / "again", cldr_dir=cldr_dir, progress=False)
    assert again.read_bytes() == dataset_path.read_bytes()  # byte-identical JSON
    for record in payload["images"]:
        name = record["filename"]
        assert (tmp_path / "again" / "images" / name).read_bytes() == (out / "images" / name).read_bytes()


def test_annotation_reader_merges_both_files(cldr_dir: Path) -> None:
    annotations = read_annotations(cldr_dir)
    assert annotations[MAN_MAGE].name == "man mage"
    assert annotations[GRIN].keywords == ("face", "grin", "grinning face")


def test_missing_packages_give_the_apt_line(tmp_path: Path) -> None:
    with pytest.raises(DcdError, match="apt-get install -y fonts-noto-color-emoji unicode-cldr-core"):
        build_emoji_dataset(tmp_path / "x", cldr_dir=tmp_path / "nowhere", progress=False)
    with pytest.raises(DcdError, match="Noto Color Emoji font"):
        build_emoji_dataset(tmp_path / "x", font_path=tmp_path / "no.ttf", progress=False)


@pytest.mark.slow
def test_full_benchmark_size_and_split_shares(tmp_path: Path) -> None:
    splits, _ = load_dataset(build_emoji_dataset(tmp_path / "full", progress=False))
    total = sum(s.num_images for s in splits.values())
    assert 1750 <= total <= 1950  # about 1,850 distinct emoji after removing skin tones
    assert abs(splits["test"].num_images / total - 0.2) < 0.02
    assert all(1 <= len(c) <= 2 for s in splits.values() for c in s.image_to_captions)
