"""The scenes benchmark builder and its pixel detector, with the real Noto font and a small CLDR fixture."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import pytest
from PIL import Image

from dcd_itr.cli import main
from dcd_itr.data.emoji import build_emoji_dataset
from dcd_itr.data.loading import load_dataset
from dcd_itr.data.regions import box_iou, detect_regions
from dcd_itr.data.scene_layout import captions
from dcd_itr.data.scene_vocab import eligible_names
from dcd_itr.data.scenes import build_scenes_dataset, load_scene_annotations, split_twin_index
from dcd_itr.errors import DcdError

PLAIN = {  # single code point, plain unique name, one blob: all eligible
    "\U0001f431": "cat face",
    "\U0001f355": "pizza",
    "\U0001f34e": "red apple",
    "\U0001f697": "automobile",
    "\U0001f335": "cactus",
    "\U0001f388": "balloon",
    "\U0001f422": "turtle",
    "\U0001f369": "doughnut",
    "\u26bd": "soccer ball",
    "\U0001f3b8": "guitar",
    "\U0001f319": "crescent moon",
    "\U0001f41d": "honeybee",
    "\U0001f34c": "banana",
    "\U0001f680": "rocket",
    "\U0001f511": "key",
    "\U0001f3a9": "top hat",
}
INELIGIBLE = {
    "\U0001f1e9\U0001f1ea": "flag: Germany",  # two code points
    "1\u20e3": "keycap: 1",  # keycap sequence
    "\U0001f3fb": "light skin tone",  # a modifier
    "\u2b05": "left arrow",  # a relation word in the name
    "\U0001f170": "A button (blood type)",  # parentheses
    "\U0001f408": "octopus",  # shares its name with the next one: both dropped
    "\U0001f419": "octopus",
    "\u2728": "sparkles",  # several separate stars: not one detectable object
}
SMALL = {"vocab": 14, "train_scenes": 4, "val_pairs": 2, "test_pairs": 2, "objects": 3}  # 24 of 91 pairs


def cldr_xml(names: dict[str, str]) -> str:
    rows = "\n".join(f'<annotation cp="{s}" type="tts">{n}</annotation>' for s, n in names.items())
    return f'<?xml version="1.0" encoding="UTF-8" ?>\n<ldml><annotations>\n{rows}\n</annotations></ldml>'


@pytest.fixture(scope="module")
def cldr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cldr")
    for folder, names in (("annotations", PLAIN | INELIGIBLE), ("annotationsDerived", {})):
        (root / folder).mkdir()
        (root / folder / "en.xml").write_text(cldr_xml(names), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def built(cldr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "data"
    build_scenes_dataset(out, seed=5, cldr_dir=cldr_dir, progress=False, **SMALL)
    return out


def records(folder: Path) -> list[dict]:
    return json.loads((folder / "dataset_scenes.json").read_text(encoding="utf-8"))["images"]


def test_vocabulary_keeps_plain_unique_single_emoji(built: Path) -> None:
    info = json.loads((built / "dataset_scenes.json").read_text(encoding="utf-8"))["info"]
    assert info["eligible_emoji"] == len(PLAIN)
    assert info["dropped_emoji"]["not_one_detectable_object"] == 1  # sparkles
    assert {v["name"] for v in info["vocabulary"]} <= set(PLAIN.values())
    assert eligible_names({"\U0001f431": "Cat Face", "\u2b05": "left arrow"}) == {"\U0001f431": "cat face"}


def test_same_seed_same_bytes_other_seed_differs(built: Path, cldr_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_scenes_dataset(again, seed=5, cldr_dir=cldr_dir, progress=False, **SMALL)
    assert (again / "dataset_scenes.json").read_bytes() == (built / "dataset_scenes.json").read_bytes()
    names = sorted(p.name for p in (built / "images").iterdir())
    assert names == sorted(p.name for p in (again / "images").iterdir()) and len(names) == 16
    for name in names:
        assert (again / "images" / name).read_bytes() == (built / "images" / name).read_bytes()
    other = tmp_path / "other"
    build_scenes_dataset(other, seed=6, cldr_dir=cldr_dir, progress=False, **SMALL)
    assert (other / "dataset_scenes.json").read_bytes() != (built / "dataset_scenes.json").read_bytes()


def test_loader_reads_it_and_captions_are_unique_per_split(built: Path) -> None:
    splits, report = load_dataset(built)
    assert {name: s.num_images for name, s in splits.items()} == {"train": 8, "val": 4, "test": 4}
    for split in splits.values():
        assert len(set(split.captions)) == split.num_captions == 2 * split.num_images
        assert all(caption == caption.lower() for caption in split.captions)


def test_no_val_or_test_pair_cooccurs_in_train(built: Path) -> None:
    pairs: dict[str, set] = {"train": set(), "val": set(), "test": set()}
    for record in records(built):
        names = sorted(o["name"] for o in record["objects"])
        assert len(names) == 3 and len(set(names)) == 3
        pairs[record["split"]].update(combinations(names, 2))
    assert not pairs["train"] & pairs["val"] and not pairs["train"] & pairs["test"]


def test_every_scene_has_its_swapped_twin_with_aligned_captions(built: Path) -> None:
    for split in ("train", "val", "test"):
        annotations = load_scene_annotations(built, split)
        loaded = load_dataset(built)[0][split]
        assert [a.image_id for a in annotations] == loaded.image_ids
        twin_index = split_twin_index(built, split)
        assert twin_index.tolist() == [a.twin_index for a in annotations]
        for row, scene in enumerate(annotations):
            twin = annotations[scene.twin_index]
            assert twin.twin_index == row and scene.twin_index != row
            assert (twin.subject, twin.object, twin.predicate) == (
                scene.subject,
                scene.object,
                scene.predicate,
            )
            names = [o.name for o in scene.objects]
            swapped = list(names)
            swapped[scene.subject], swapped[scene.object] = names[scene.object], names[scene.subject]
            assert [o.name for o in twin.objects] == swapped
            assert scene.captions == captions(names[scene.subject], names[scene.object], scene.predicate)
            assert twin.captions == captions(names[scene.object], names[scene.subject], scene.predicate)
            for index, (mine, theirs) in enumerate(zip(scene.objects, twin.objects, strict=True)):
                if index not in (scene.subject, scene.object):
                    assert mine.box == theirs.box  # same jitter: the bystanders are pixel-identical
            subject, object_ = scene.objects[scene.subject].box, scene.objects[scene.object].box
            if scene.predicate == "left of":
                assert subject[2] < object_[0]
            else:
                assert subject[3] < object_[1]


def test_detector_recovers_every_generator_box(built: Path) -> None:
    for split in ("train", "val", "test"):
        loaded = load_dataset(built)[0][split]
        for path, scene in zip(loaded.image_paths, load_scene_annotations(built, split), strict=True):
            with Image.open(path) as image:
                found = detect_regions(image)
                assert detect_regions(image) == found  # deterministic
            assert found == sorted(found, key=lambda b: (b[1], b[0], b[3], b[2]))
            assert len(found) == len(scene.objects), path
            for obj in scene.objects:
                assert max(box_iou(obj.box, box) for box in found) >= 0.9, (path, obj)
            boxes = [o.box for o in scene.objects]
            assert all(box_iou(a, b) == 0 for a, b in combinations(boxes, 2))  # objects never overlap


def test_detector_merges_fragments_and_drops_specks() -> None:
    image = Image.new("RGB", (100, 60), "white")
    image.paste((200, 0, 0), (10, 10, 30, 30))
    image.paste((0, 0, 200), (33, 12, 40, 28))  # 3 px from the first square: a fragment of the same object
    image.paste((0, 120, 0), (60, 5, 90, 50))  # 20 px away: another object
    image.paste((0, 0, 0), (50, 55, 52, 57))  # a 4-pixel speck
    image.paste((250, 250, 250), (2, 50, 8, 58))  # within the tolerance of white: background
    assert detect_regions(image) == [(60, 5, 90, 50), (10, 10, 40, 30)]
    assert detect_regions(Image.new("RGB", (20, 20), "white")) == []


def test_renders_from_an_emoji_build_match_the_font(built: Path, cldr_dir: Path, tmp_path: Path) -> None:
    emoji = tmp_path / "emoji"
    build_emoji_dataset(emoji, cldr_dir=cldr_dir, progress=False)
    from_build = tmp_path / "from_build"
    build_scenes_dataset(from_build, seed=5, emoji_data=emoji, progress=False, **SMALL)
    for record in records(built):
        name = record["filename"]
        assert (from_build / "images" / name).read_bytes() == (built / "images" / name).read_bytes()
    (emoji / "images" / "emoji_u1f431.png").unlink()  # cat face
    with pytest.raises(DcdError, match="emoji_u1f431.png: render of emoji U\\+1F431 not found"):
        build_scenes_dataset(tmp_path / "x", emoji_data=emoji, progress=False, **SMALL)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train_scenes": -1}, "--train-scenes must be >= 1"),
        ({"test_pairs": 0}, "--test-pairs must be >= 1"),
        ({"seed": -3}, "--seed"),
        ({"objects": 5}, "--objects"),
        ({"canvas": 64}, "--canvas"),
        ({"train_scenes": 40}, "raise --vocab"),
        ({"vocab": 17, "train_scenes": 6}, "more than the 16 eligible"),  # fits the pair budget, not the font
    ],
)
def test_bad_sizes_are_clear_errors(cldr_dir: Path, tmp_path: Path, changes: dict, message: str) -> None:
    settings = SMALL | changes
    with pytest.raises(DcdError, match=message):
        build_scenes_dataset(tmp_path / "out", cldr_dir=cldr_dir, progress=False, **settings)
    assert not (tmp_path / "out").exists()


def test_missing_font_or_cldr_and_foreign_folder(cldr_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DcdError, match="Noto Color Emoji font"):
        build_scenes_dataset(tmp_path / "a", font_path=tmp_path / "none.ttf", cldr_dir=cldr_dir, **SMALL)
    with pytest.raises(DcdError, match="CLDR annotations"):
        build_scenes_dataset(tmp_path / "a", cldr_dir=tmp_path / "nowhere", **SMALL)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DcdError, match="refusing to replace"):
        build_scenes_dataset(foreign, cldr_dir=cldr_dir, progress=False, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_cli_builds_a_tiny_benchmark_with_preview(
    cldr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, sheet = tmp_path / "scenes", tmp_path / "sheet.png"
    args = [
        "data",
        "scenes",
        "--out",
        str(out),
        "--cldr-dir",
        str(cldr_dir),
        "--quiet",
        "--preview",
        str(sheet),
    ]
    sizes = [
        "--vocab",
        "11",
        "--train-scenes",
        "2",
        "--val-pairs",
        "1",
        "--test-pairs",
        "2",
        "--objects",
        "3",
    ]
    assert main(args + sizes) == 0
    printed = capsys.readouterr().out
    assert "scenes benchmark written to" in printed and re.search(r"^test +4 +8 ", printed, re.MULTILINE)
    assert Image.open(sheet).size[0] > 600
    assert main(args + sizes + ["--novel-pairs", "1"]) == 0  # a rebuild replaces the earlier build
    assert "novel-emoji test split written to" in capsys.readouterr().out
    assert (out / "novel" / "images" / "novel_00001.png").is_file()
    assert main(args + ["--vocab", "12", "--train-scenes", "-2"]) == 2
    assert "--train-scenes must be >= 1" in capsys.readouterr().err


def test_novel_split_uses_only_unseen_emoji_and_leaves_the_main_build_alone(
    cldr_dir: Path, tmp_path: Path
) -> None:
    sizes = {"vocab": 10, "train_scenes": 3, "val_pairs": 1, "test_pairs": 1, "objects": 3}
    plain, novel = tmp_path / "plain", tmp_path / "novel"
    build_scenes_dataset(plain, seed=2, cldr_dir=cldr_dir, progress=False, **sizes)
    build_scenes_dataset(novel, seed=2, cldr_dir=cldr_dir, novel_pairs=2, progress=False, **sizes)
    assert (novel / "dataset_scenes.json").read_bytes() == (plain / "dataset_scenes.json").read_bytes()
    assert not (plain / "novel").exists()
    split = load_dataset(novel / "novel")[0]["test"]
    assert split.num_images == 4 and len(set(split.captions)) == 8
    unseen = {o.name for scene in load_scene_annotations(novel / "novel", "test") for o in scene.objects}
    seen = {o["name"] for record in records(novel) for o in record["objects"]}
    assert unseen and not unseen & seen
    assert split_twin_index(novel / "novel", "test").tolist() == [
        a.twin_index for a in load_scene_annotations(novel / "novel", "test")
    ]
    with pytest.raises(DcdError, match="lower --vocab or --novel-pairs"):
        build_scenes_dataset(
            tmp_path / "x", seed=2, cldr_dir=cldr_dir, novel_pairs=3, progress=False, **sizes
        )
    with pytest.raises(DcdError, match="--novel-pairs must be >= 0"):
        build_scenes_dataset(tmp_path / "x", cldr_dir=cldr_dir, novel_pairs=-1, progress=False, **sizes)
