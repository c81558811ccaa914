"""Property test (hypothesis): no dataset reader ever yields an image path outside the dataset folder.

Each example builds a small file tree -- the dataset folder with images, symlinks to files and folders inside
and outside it, a symlink loop, a dangling link, and an ``outside`` folder beside it -- then a Karpathy JSON,
JSONL or CSV file whose image paths are drawn from ``..``, absolute paths, those links, odd text and plain
names. The property, for strict and lenient reading and with and without the file check: either a
``DataError`` that names the file (and, for a record, the record), or splits whose every image path (symlinks
resolved) is inside the dataset folder, with records read + records skipped = records in. Never another
exception, never an escape. Bounded: 100 examples per format, each in milliseconds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcd_itr.data.karpathy import read_karpathy_json
from dcd_itr.data.pairs import read_pairs
from dcd_itr.errors import DataError

PROPERTY = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Path parts: plain names, parent steps, links (see make_tree), absolute anchors, odd text.
PARTS = st.one_of(
    st.sampled_from(
        ["imgs", "a.png", "b.png", "..", ".", "", "link_out.png", "link_in.png", "linkdir", "loop.png"]
        + ["dangling.png", "secret.png", "ok", "imgs/a.png", "../outside", "//", "~", "a.png/..", "\\..\\"]
    ),
    st.sampled_from(["<ROOT>", "<OUTSIDE>", "/etc", "/"]),  # absolute anchors, replaced per tree
    st.text(max_size=6),
    st.just("x" * 300),  # longer than a file name may be
)
PATHS = st.lists(PARTS, min_size=1, max_size=4).map(lambda parts: parts)


def make_tree(base: Path) -> tuple[Path, Path]:
    """``base/data`` (the dataset folder) and ``base/outside``, with links between them."""
    root, outside = base / "data", base / "outside"
    (root / "imgs").mkdir(parents=True)
    outside.mkdir()
    for folder in (root, root / "imgs", outside):
        for name in ("a.png", "b.png", "secret.png"):
            (folder / name).write_bytes(b"\x89PNG")  # the readers do not decode images
    (root / "imgs" / "link_out.png").symlink_to(outside / "secret.png")
    (root / "imgs" / "link_in.png").symlink_to(root / "imgs" / "a.png")
    (root / "link_out.png").symlink_to("../outside/secret.png")  # relative link
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "imgs" / "linkdir").symlink_to(root / "imgs", target_is_directory=True)  # inside: allowed
    (root / "loop.png").symlink_to(root / "loop.png")
    (root / "dangling.png").symlink_to(outside / "nothing.png")
    return root, outside


def join(parts: list[str], root: Path, outside: Path) -> str:
    anchors = {"<ROOT>": str(root), "<OUTSIDE>": str(outside)}
    return "/".join(anchors.get(part, part) for part in parts)


def check_outcome(path: Path, root: Path, outcome, records_in: int, pattern: str) -> None:
    if isinstance(outcome, DataError):
        message = str(outcome)
        assert str(path) in message
        if "no usable" not in message:
            assert re.search(pattern, message), message
        return
    splits, report = outcome
    assert report.records_read + len(report.skipped) == records_in
    real_root = Path(os.path.realpath(root))
    for split in splits.values():
        assert getattr(split, "image_root", real_root) == real_root
        for image_path in split.image_paths:
            assert Path(os.path.realpath(image_path)).is_relative_to(real_root), image_path


def read_all_ways(reader, path: Path, root: Path, records_in: int, pattern: str) -> None:
    for check_files in (False, True):
        for skip in (False, True):
            try:
                outcome = reader(path, check_files=check_files, skip_bad_records=skip)
            except DataError as error:
                outcome = error
            check_outcome(path, root, outcome, records_in, pattern)


@PROPERTY
@given(records=st.lists(st.tuples(PATHS, PATHS), min_size=1, max_size=4))
def test_karpathy_paths_stay_inside(tmp_path_factory, records):
    root, outside = make_tree(tmp_path_factory.mktemp("tree"))
    images = [
        {
            "filepath": join(filepath, root, outside),
            "filename": join(filename, root, outside),
            "split": "test",
            "sentences": [{"raw": f"caption {index}"}],
        }
        for index, (filepath, filename) in enumerate(records)
    ]
    path = root / "dataset_fuzz.json"
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    read_all_ways(read_karpathy_json, path, root, len(images), r"images\[\d+\]")


@PROPERTY
@given(images=st.lists(PATHS, min_size=1, max_size=4), as_csv=st.booleans())
def test_pairs_paths_stay_inside(tmp_path_factory, images, as_csv):
    root, outside = make_tree(tmp_path_factory.mktemp("tree"))
    rows = [(join(parts, root, outside), f"caption {index}") for index, parts in enumerate(images)]
    if as_csv:
        path = root / "pairs.csv"
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
        path.write_text(buffer.getvalue(), encoding="utf-8", errors="surrogatepass")
    else:
        path = root / "pairs.jsonl"
        text = "".join(json.dumps({"image": image, "caption": caption}) + "\n" for image, caption in rows)
        path.write_text(text, encoding="utf-8")
    read_all_ways(read_pairs, path, root, len(rows), r"line \d+")
