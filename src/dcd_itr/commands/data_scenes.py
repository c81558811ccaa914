"""`dcd data scenes`: build the emoji-scenes relation benchmark (wired into `dcd data` by commands/data.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dcd_itr.data import scenes
from dcd_itr.data.loading import load_dataset
from dcd_itr.data.preview import twin_contact_sheet
from dcd_itr.data.scenes import build_scenes_dataset
from dcd_itr.data.statistics import dataset_statistics


def data_scenes(args: argparse.Namespace) -> Path:
    started = time.perf_counter()
    dataset_path = build_scenes_dataset(
        args.out,
        seed=args.seed,
        vocab=args.vocab,
        train_scenes=args.train_scenes,
        val_pairs=args.val_pairs,
        test_pairs=args.test_pairs,
        objects=args.objects,
        canvas=args.canvas,
        emoji_data=args.emoji_data,
        font_path=args.font,
        cldr_dir=args.cldr_dir,
        novel_pairs=args.novel_pairs,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - started
    splits, _ = load_dataset(dataset_path)
    print(f"scenes benchmark written to {dataset_path} in {seconds:.1f} s")
    print(dataset_statistics(splits))
    novel = dataset_path.parent / scenes.NOVEL_FOLDER / scenes.NOVEL_FILENAME
    if args.novel_pairs:
        print(f"novel-emoji test split written to {novel}")
        print(dataset_statistics(load_dataset(novel)[0]))
    if args.preview is not None:
        print(f"contact sheet: {twin_contact_sheet(dataset_path, args.preview)}")
    return dataset_path


# The integer options of `dcd data scenes`: flag, default, help (the default is appended).
_SIZE_OPTIONS = (
    ("--seed", scenes.DEFAULT_SEED, "seed of vocabulary, scenes and splits"),
    (
        "--vocab",
        scenes.DEFAULT_VOCAB,
        "emoji drawn from the ~1,250 eligible ones (single code point, plain unique name)",
    ),
    (
        "--train-scenes",
        scenes.DEFAULT_TRAIN_SCENES,
        "train twin pairs; each is 2 images, a scene and its swapped twin",
    ),
    ("--val-pairs", scenes.DEFAULT_VAL_PAIRS, "val twin pairs, 2 images each"),
    (
        "--test-pairs",
        scenes.DEFAULT_TEST_PAIRS,
        "test twin pairs, 2 images each; drawn first, so they do not change with --train-scenes",
    ),
    (
        "--objects",
        scenes.DEFAULT_OBJECTS,
        "emoji per scene, 2 to 4 (cells of the 2x2 grid); the relation names two of them",
    ),
    (
        "--canvas",
        scenes.DEFAULT_CANVAS,
        f"image side in px, {scenes.CANVAS_RANGE[0]} to {scenes.CANVAS_RANGE[1]}",
    ),
    (
        "--novel-pairs",
        0,
        "also write novel/dataset_scenes_novel.json: a test split of this many twin pairs made only of eligible emoji "
        "outside --vocab, never seen in training; the main dataset is unchanged",
    ),
)


def add_scenes_parser(data_commands: argparse._SubParsersAction) -> None:
    parser = data_commands.add_parser(
        "scenes",
        help="build the emoji-scenes relation benchmark (swapped twins, relation captions)",
        description="Compose Noto emoji renders into scenes: a 2x2 grid of emoji jittered in size and position, "
        "one relation between two neighbours captioned in both converse forms ('a cat face to the left of a pizza' "
        "/ 'a pizza to the right of a cat face'; 'X above Y' / 'Y below X'). Every scene is stored with its swapped "
        "twin (the two related emoji exchanged, all else equal) in the same split. No emoji pair that appears "
        "together in a val or test scene appears together in train, and no caption is shared by two images. "
        "Writes images/*.png and dataset_scenes.json (Karpathy format plus objects, boxes, relation and twin); "
        "the build goes to a temporary folder renamed into place. Deterministic from --seed.",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (images/ and dataset_scenes.json)"
    )
    for flag, default, help_text in _SIZE_OPTIONS:
        parser.add_argument(flag, type=int, default=default, help=f"{help_text} (default %(default)s)")
    parser.add_argument(
        "--emoji-data",
        type=Path,
        help="read the renders and names from a `dcd data emoji` folder instead of the font and CLDR files",
    )
    parser.add_argument(
        "--font", type=Path, help="NotoColorEmoji.ttf (default: where the Debian package puts it)"
    )
    parser.add_argument("--cldr-dir", type=Path, help="CLDR 'common' folder (default: the Debian package's)")
    parser.add_argument(
        "--preview", type=Path, help="also write a PNG contact sheet of test scenes, each beside its twin"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=data_scenes)
