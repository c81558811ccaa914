"""`dcd data ...`: build the emoji and scenes benchmarks and describe any dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcd_itr.commands.data_scenes import add_scenes_parser
from dcd_itr.data.dataset import SPLITS, RetrievalSplit
from dcd_itr.data.emoji import DEFAULT_SEED, build_emoji_dataset
from dcd_itr.data.image_check import drop_unreadable
from dcd_itr.data.loading import load_dataset
from dcd_itr.data.preview import split_contact_sheet
from dcd_itr.data.statistics import dataset_statistics


def data_emoji(
    out: Path,
    preview: Path | None = None,
    seed: int = DEFAULT_SEED,
    font: Path | None = None,
    cldr_dir: Path | None = None,
    progress: bool = True,
) -> Path:
    """Build the emoji benchmark into ``out``, print its statistics, optionally write a contact sheet."""
    dataset_path = build_emoji_dataset(out, font_path=font, cldr_dir=cldr_dir, seed=seed, progress=progress)
    splits, _ = load_dataset(dataset_path)
    print(f"emoji benchmark written to {dataset_path}")
    print(dataset_statistics(splits))
    if preview is not None:
        print(
            f"contact sheet: {split_contact_sheet(splits.get('test') or next(iter(splits.values())), preview)}"
        )
    return dataset_path


def data_stats(
    data: Path,
    image_root: Path | None = None,
    skip_bad_records: bool = False,
    preview: Path | None = None,
    split: str = "test",
    check_images: bool = False,  # True: open and decode every image (slow on big datasets)
) -> dict[str, RetrievalSplit]:
    """Read any dataset, report what was read and skipped, and print its statistics."""
    splits, report = load_dataset(data, image_root=image_root, skip_bad_records=skip_bad_records)
    if check_images:
        splits, summary = drop_unreadable(splits, SPLITS, skip_bad_records)
        print(summary)
    print(report.summary())
    print(dataset_statistics(splits))
    if preview is not None and split in splits:
        print(f"contact sheet: {split_contact_sheet(splits[split], preview)}")
    return splits


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data", help="build the emoji and scenes benchmarks; read and check datasets"
    )
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="{emoji,scenes,stats}")

    emoji = data_commands.add_parser(
        "emoji",
        help="build the emoji benchmark from Debian's Noto Color Emoji and CLDR annotations",
        description="Render every Noto emoji (skin-tone variants dropped), caption it with CLDR English names and "
        "keywords, split 70/10/20 by emoji family, and write PNGs plus a Karpathy-format dataset_emoji.json.",
    )
    emoji.add_argument(
        "--out", type=Path, required=True, help="output folder (images/ and dataset_emoji.json)"
    )
    emoji.add_argument(
        "--preview", type=Path, help="also write a PNG contact sheet of test images with captions"
    )
    emoji.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split seed (default %(default)s)")
    emoji.add_argument(
        "--font", type=Path, help="NotoColorEmoji.ttf (default: where the Debian package puts it)"
    )
    emoji.add_argument("--cldr-dir", type=Path, help="CLDR 'common' folder (default: the Debian package's)")
    emoji.add_argument("--quiet", action="store_true", help="no progress bar")
    emoji.set_defaults(
        handler=lambda a: data_emoji(a.out, a.preview, a.seed, a.font, a.cldr_dir, progress=not a.quiet)
    )

    add_scenes_parser(data_commands)

    stats = data_commands.add_parser(
        "stats",
        help="read a dataset (Karpathy JSON, JSONL/CSV pairs, or a folder) and print its statistics",
        description="Read and validate a dataset; every bad record is an error naming the file and record, "
        "unless --skip-bad-records, which skips, counts and lists them.",
    )
    stats.add_argument("--data", type=Path, required=True, help="dataset file or folder")
    stats.add_argument(
        "--image-root", type=Path, help="folder image paths are relative to (default: the file's)"
    )
    stats.add_argument(
        "--skip-bad-records", action="store_true", help="skip and report bad records, not fail"
    )
    stats.add_argument("--preview", type=Path, help="write a PNG contact sheet of --split")
    stats.add_argument(
        "--split", default="test", choices=SPLITS, help="split for --preview (default %(default)s)"
    )
    stats.add_argument(
        "--check-images",
        action="store_true",
        help="also open and decode every image (header, size limit, pixels); slow on large datasets",
    )
    stats.set_defaults(
        handler=lambda a: data_stats(
            a.data, a.image_root, a.skip_bad_records, a.preview, a.split, a.check_images
        )
    )
