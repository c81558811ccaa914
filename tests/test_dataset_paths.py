"""Image paths that leave the dataset folder are refused (issue 16, item 2).

``../`` paths, absolute ``filename`` / ``filepath`` / ``image`` values and symlinks to outside files, in Karpathy
JSON, JSONL and CSV: each is a DataError naming the record (or a skipped, listed record with
``skip_bad_records``); ``--image-root`` still points the readers at images kept elsewhere. The service serves only
files under the image root recorded in the index.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import karpathy_record, make_image, write_karpathy_fixture
from dcd_itr.cli import main
from dcd_itr.data.karpathy import read_karpathy_json
from dcd_itr.data.loading import load_dataset
from dcd_itr.data.pairs import read_pairs
from dcd_itr.errors import DataError
from dcd_itr.search.gallery import Gallery
from search_fixtures import tiny_setup


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """``root/data`` (the dataset folder, one good image) beside ``root/outside`` (a file that must not be read)."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    make_image(data / "imgs" / "good.png")
    make_image(outside / "secret.png", "blue")
    (data / "imgs" / "link.png").symlink_to(outside / "secret.png")
    (data / "linkdir").symlink_to(outside, target_is_directory=True)
    (data / "imgs" / "inner_link.png").symlink_to(data / "imgs" / "good.png")  # inside: allowed
    return {"data": data, "outside": outside}


def karpathy_escapes(outside: Path) -> list[tuple[str, str]]:
    """(filepath, filename) pairs that each name a file outside the dataset folder."""
    return [
        ("imgs", "../../outside/secret.png"),
        ("../outside", "secret.png"),
        ("", str(outside / "secret.png")),  # absolute filename
        (str(outside), "secret.png"),  # absolute filepath
        ("/etc", "hostname"),
        ("imgs", "link.png"),  # a symlink inside the folder to an outside file
        ("linkdir", "secret.png"),  # a symlinked folder
    ]


def write_karpathy(folder: Path, pairs: list[tuple[str, str]]) -> Path:
    records = [karpathy_record(0, "test", ["a good image"], filepath="imgs") | {"filename": "good.png"}]
    for index, (filepath, filename) in enumerate(pairs, start=1):
        records.append({**karpathy_record(index, "test", [f"caption {index}"]), "filepath": filepath})
        records[-1]["filename"] = filename
    path = folder / "dataset_x.json"
    path.write_text(json.dumps({"images": records}))
    return path


def test_karpathy_refuses_each_escape_naming_the_record(tree):
    for filepath, filename in karpathy_escapes(tree["outside"]):
        path = write_karpathy(tree["data"], [(filepath, filename)])
        with pytest.raises(DataError, match=r"images\[1\].*leaves the dataset folder") as caught:
            read_karpathy_json(path)
        assert str(path) in str(caught.value) and "--image-root" in str(caught.value)


def test_karpathy_skips_and_lists_escapes_and_keeps_the_rest(tree):
    escapes = karpathy_escapes(tree["outside"])
    path = write_karpathy(tree["data"], escapes)
    splits, report = read_karpathy_json(path, skip_bad_records=True)
    assert report.records_read == 1 and len(report.skipped) == len(escapes)
    assert splits["test"].image_paths == [tree["data"] / "imgs" / "good.png"]
    assert splits["test"].image_root == tree["data"]


def test_symlinks_and_absolute_paths_inside_the_folder_are_read_as_their_real_path(tree):
    inside = str(tree["data"] / "imgs" / "good.png")
    path = write_karpathy(tree["data"], [])
    records = json.loads(path.read_text())["images"]
    records[0]["filename"] = "inner_link.png"
    records.append(
        {**karpathy_record(5, "test", ["absolute but inside"]), "filepath": "", "filename": inside}
    )
    path.write_text(json.dumps({"images": records}))
    with pytest.raises(DataError, match="duplicate image path"):  # both resolve to good.png
        read_karpathy_json(path)
    records[0]["filename"] = "good.png"
    records[1]["filename"] = str(tree["data"] / "imgs" / "inner_link.png")
    path.write_text(json.dumps({"images": records}))
    with pytest.raises(DataError, match="duplicate image path"):
        read_karpathy_json(path)


def test_image_root_points_elsewhere_on_purpose(tree):
    path = write_karpathy(tree["data"], [("", "secret.png")])
    with pytest.raises(DataError, match="image file not found"):  # data/secret.png does not exist
        read_karpathy_json(path)
    json_records = json.loads(path.read_text())["images"][1:]
    path.write_text(json.dumps({"images": json_records}))
    splits, _ = load_dataset(path, image_root=tree["outside"])
    assert splits["test"].image_paths == [tree["outside"] / "secret.png"]
    assert splits["test"].image_root == tree["outside"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_pairs_refuse_escapes_naming_the_line(tree, suffix):
    escapes = ["../outside/secret.png", str(tree["outside"] / "secret.png"), "/etc/hostname", "imgs/link.png"]
    escapes += ["linkdir/secret.png"]
    for escape in escapes:
        path = tree["data"] / f"pairs{suffix}"
        rows = [("imgs/good.png", "a good image"), (escape, "the secret")]
        if suffix == ".csv":
            path.write_text("image,caption\n" + "".join(f"{image},{caption}\n" for image, caption in rows))
        else:
            path.write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in rows))
        line = "line 3" if suffix == ".csv" else "line 2"
        with pytest.raises(
            DataError, match=rf"pairs{suffix}: {line}: image path .* leaves the dataset folder"
        ):
            read_pairs(path)
        splits, report = read_pairs(path, skip_bad_records=True)
        assert report.records_read == 1 and len(report.skipped) == 1 and line in report.skipped[0]
        assert [p for s in splits.values() for p in s.image_paths] == [tree["data"] / "imgs" / "good.png"]


def test_data_stats_cli_is_rc2_naming_the_record(tree, capsys):
    path = write_karpathy(tree["data"], [("/etc", "hostname")])
    assert main(["data", "stats", "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert "images[1] ('hostname')" in err and "leaves the dataset folder" in err and "Traceback" not in err
    assert main(["data", "stats", "--data", str(path), "--skip-bad-records"]) == 0
    assert "skipped 1 bad records" in capsys.readouterr().out


def test_index_build_refuses_an_escaping_gallery(tmp_path_factory, tmp_path, capsys):
    setup = tiny_setup(tmp_path_factory)
    data = write_karpathy_fixture(tmp_path / "data")
    records = json.loads(data.read_text())["images"]
    records[-1]["filepath"] = "../../etc"
    records[-1]["filename"] = "hostname"
    data.write_text(json.dumps({"images": records}))
    args = ["index", "build", "--model", str(setup.dual), "--data", str(data), "--out", str(tmp_path / "i")]
    assert main([*args, "--quiet"]) == 2
    assert "images[7] ('hostname'): image path" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the service


def _gallery(paths: list[Path], source: dict | None) -> Gallery:
    names = [p.name for p in paths]
    return Gallery("images", names, [str(p) for p in paths], [[n] for n in names], [], [], source=source)


def test_service_serves_only_under_the_recorded_image_root(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from dcd_itr.search.service import create_app

    images = tmp_path / "project" / "data" / "images"
    good, secret = make_image(images / "ok.png"), make_image(tmp_path / "project" / "secret.png")
    # an index whose table names a file beside the dataset folder (built before readers checked paths):
    # the deepest common folder of the paths would be "project" and would let it through
    source = {
        "data": str(images.parent / "dataset_x.json"),
        "split": "test",
        "image_root": str(images.parent),
    }
    client = TestClient(create_app(SimpleNamespace(gallery=_gallery([good, secret], source), index=[])))
    assert client.get("/images/0").status_code == 200
    assert client.get("/images/1").status_code == 403
    legacy = {
        "data": str(images.parent / "dataset_x.json"),
        "split": "test",
    }  # no recorded root: the data folder
    client = TestClient(create_app(SimpleNamespace(gallery=_gallery([good, secret], legacy), index=[])))
    assert client.get("/images/0").status_code == 200
    assert client.get("/images/1").status_code == 403


def test_gallery_records_the_dataset_image_root(tmp_path_factory, tmp_path):
    setup = tiny_setup(tmp_path_factory)
    data = write_karpathy_fixture(tmp_path / "data")
    split = load_dataset(data)[0]["test"]
    gallery = Gallery.from_split(split, "images", setup.dual, data)
    assert gallery.source["image_root"] == str(tmp_path / "data") == gallery.image_root
