"""Karpathy JSON and JSONL/CSV pair readers: happy paths and every bad input named in the foundation issue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcd_itr.data.loading import load_dataset, load_split
from dcd_itr.data.pairs import hash_split, read_pairs
from dcd_itr.errors import DataError
from helpers import karpathy_record, make_image, write_karpathy_fixture


def test_karpathy_reads_splits_and_caption_mapping(karpathy_dataset: Path) -> None:
    splits, report = load_dataset(karpathy_dataset)
    assert sorted(splits) == ["test", "train", "val"]
    train = splits["train"]
    assert train.num_images == 4  # restval counts as train
    assert train.captions[:2] == ["a red square", "the colour red"]
    assert train.caption_to_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert train.image_to_captions == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert train.image_paths[0] == karpathy_dataset.parent / "imgs" / "img0.png"
    assert splits["test"].image_ids == ["6", "7"]
    assert report.records_read == 8 and report.skipped == []


def test_folder_with_one_dataset_json_resolves(karpathy_dataset: Path) -> None:
    assert load_split(karpathy_dataset.parent, "val").num_captions == 4
    with pytest.raises(DataError, match="no 'nope' split"):
        load_split(karpathy_dataset.parent, "nope")


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "dataset_bad.json"
    path.write_text('{"images": [\n  {"filename": "a.png",}\n]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"dataset_bad.json: line 2 column \d+: malformed JSON"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(split="training"), "unknown split 'training'"),
        (lambda r: r["sentences"][1].update(raw="   "), r"sentences\[1\].raw is empty"),
        (lambda r: r["sentences"][0].update(raw=7), r"sentences\[0\].raw must be a string"),
        (lambda r: r.update(sentences=[]), "'sentences' must be a non-empty list"),
        (lambda r: r.update(filename="missing.png"), "image file not found"),
        (lambda r: r.pop("filename"), "missing or empty 'filename'"),
    ],
)
def test_bad_karpathy_record_is_named(tmp_path: Path, mutate, message: str) -> None:
    records = [karpathy_record(i, "train", [f"caption {i}", f"other {i}"]) for i in range(3)]
    path = write_karpathy_fixture(tmp_path, records)
    mutate(records[1])
    path.write_text(json.dumps({"images": records}), encoding="utf-8")
    with pytest.raises(DataError, match=message) as error:
        load_dataset(path)
    assert "images[1]" in str(error.value) and str(path) in str(error.value)


def test_duplicate_ids_are_refused_or_skipped_and_counted(tmp_path: Path) -> None:
    records = [karpathy_record(i, "train", [f"caption {i}"]) for i in range(3)]
    records.append(dict(karpathy_record(0, "test", ["again"]), filename="img9.png"))  # imgid 0 again
    path = write_karpathy_fixture(tmp_path, records)
    with pytest.raises(DataError, match=r"images\[3\].*duplicate imgid '0' \(also images\[0\]\)"):
        load_dataset(path)
    splits, report = load_dataset(path, skip_bad_records=True)
    assert splits["train"].num_images == 3 and "test" not in splits
    assert len(report.skipped) == 1 and "duplicate imgid" in report.skipped[0]
    assert "skipped 1 bad records" in report.summary()


def test_not_a_karpathy_file(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match="'images' list"):
        load_dataset(path)


def write_pairs(tmp_path: Path, lines: list[str], name: str = "pairs.jsonl") -> Path:
    for colour in ("red", "blue", "green"):
        make_image(tmp_path / "pics" / f"{colour}.png", colour)
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_groups_captions_by_image_with_user_split(tmp_path: Path) -> None:
    path = write_pairs(
        tmp_path,
        [
            '{"image": "pics/red.png", "caption": "a red thing", "split": "train"}',
            '{"image": "pics/blue.png", "caption": "a blue thing", "split": "test"}',
            "",
            '{"image": "pics/red.png", "caption": "crimson", "split": "train"}',
        ],
    )
    splits, report = read_pairs(path)
    assert splits["train"].captions == ["a red thing", "crimson"]
    assert splits["train"].image_ids == ["pics/red.png"]
    assert splits["test"].caption_to_image.tolist() == [0]
    assert report.records_read == 3


def test_csv_and_deterministic_hash_split(tmp_path: Path) -> None:
    path = write_pairs(tmp_path, ["image,caption", "pics/red.png,red", "pics/blue.png,blue"], "pairs.csv")
    first, _ = read_pairs(path)
    second, _ = read_pairs(path)
    assert {name: s.image_ids for name, s in first.items()} == {
        name: s.image_ids for name, s in second.items()
    }
    for name, split in first.items():
        assert all(hash_split(image_id) == name for image_id in split.image_ids)
    # The split follows the path as written in the file, not where the dataset happens to live.
    assert hash_split("pics/red.png") == hash_split("pics/red.png")
    shares = [hash_split(f"img{i}.jpg") for i in range(5000)]
    assert abs(shares.count("train") / 5000 - 0.7) < 0.03 and abs(shares.count("test") / 5000 - 0.2) < 0.03


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"image": "pics/red.png", "caption": ', "line 2: malformed JSON"),
        ('{"image": "pics/red.png", "caption": 5}', "line 2: 'caption' must be a string, got int"),
        ('{"image": "pics/red.png", "caption": ""}', "line 2: 'caption' is empty"),
        ('{"image": "pics/none.png", "caption": "x"}', "line 2: image file not found"),
        ('{"image": "pics/red.png", "caption": "x", "split": "dev"}', "line 2: unknown split 'dev'"),
        ('{"image": "pics/blue.png", "caption": "blue"}', "line 2: duplicate caption 'blue'"),
        ("[1, 2]", "line 2: expected an object, got list"),
    ],
)
def test_bad_pair_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = write_pairs(tmp_path, ['{"image": "pics/blue.png", "caption": "blue"}', line])
    with pytest.raises(DataError, match=message):
        read_pairs(path)
    splits, report = read_pairs(path, skip_bad_records=True)
    assert sum(s.num_captions for s in splits.values()) == 1 and len(report.skipped) == 1


def test_conflicting_split_and_missing_csv_column(tmp_path: Path) -> None:
    path = write_pairs(
        tmp_path,
        [
            '{"image": "pics/red.png", "caption": "a", "split": "train"}',
            '{"image": "pics/red.png", "caption": "b", "split": "test"}',
        ],
    )
    with pytest.raises(DataError, match="line 2: split 'test' conflicts with 'train' at line 1"):
        read_pairs(path)
    csv_path = write_pairs(tmp_path, ["picture,caption", "pics/red.png,red"], "bad.csv")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['image'\]"):
        read_pairs(csv_path)


def test_non_utf8_pairs_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"image": "a.png", "caption": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_pairs(path)
