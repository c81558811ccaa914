"""Tests for `dcd index` and `dcd search`: building (resumable, sharded), searching, the cascade, mismatches.

Rankings are checked against a brute-force reference computed with the same tiny models end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import search_fixtures
from conftest import karpathy_record, make_image
from dcd_itr.cli import main
from dcd_itr.commands.index import index_info
from dcd_itr.data.loading import load_split
from dcd_itr.distributed import parse_shard
from dcd_itr.errors import CacheMismatchError, ConfigError, CorruptFileError
from dcd_itr.models.end_to_end import EndToEnd
from dcd_itr.models.registry import weights_fingerprint
from dcd_itr.search import build as build_module
from dcd_itr.search.build import index_build, index_merge
from dcd_itr.search.retriever import Retriever
from search_fixtures import built_index, tiny_setup


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return tiny_setup(tmp_path_factory)


@pytest.fixture(scope="session")
def image_index(tmp_path_factory):
    return built_index(tmp_path_factory, "images")


@pytest.fixture(scope="session")
def caption_index(tmp_path_factory):
    return built_index(tmp_path_factory, "captions")


@pytest.fixture(scope="session")
def reference(tiny):
    """Brute-force dual embeddings of the test split: images (N, D) and captions (M, D)."""
    split = load_split(tiny.data, "test")
    dual = EndToEnd.load(tiny.dual)
    return (
        split,
        dual.encode_images(split.image_paths)["embedding"],
        dual.encode_texts(split.captions)["embedding"],
    )


def search_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["search", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def stored_vectors(folder) -> torch.Tensor:
    return load_file(str(folder / "vectors.safetensors"))["embedding"]


# ----------------------------------------------------------------------------- build


def test_built_index_holds_vectors_table_and_fingerprint(tiny, image_index, reference, capsys):
    assert {p.name for p in image_index.iterdir()} >= {"index.json", "gallery.json", "vectors.safetensors"}
    assert not (image_index / "embeddings").exists()  # shards are merged and removed
    torch.testing.assert_close(stored_vectors(image_index), reference[1], rtol=1e-5, atol=1e-6)
    info = index_info(image_index)
    assert (
        info["count"] == info["items"] == 11 and info["side"] == "images" and info["backend"] == "faiss-flat"
    )
    assert info["model_fingerprint"] == weights_fingerprint(tiny.dual) and info["model_dir"] == str(tiny.dual)
    gallery = json.loads((image_index / "gallery.json").read_text())
    assert gallery["image_captions"][0] == ["a red square", "the colour red"]


def test_interrupted_build_resumes_to_the_same_index(tiny, image_index, tmp_path, monkeypatch):
    writes = []
    real_write = build_module._write_shard

    def write_then_die(*args, **kwargs):
        if writes:
            raise KeyboardInterrupt  # killed after the first shard
        writes.append(args[0])
        real_write(*args, **kwargs)

    monkeypatch.setattr(build_module, "_write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        index_build(tiny.dual, tiny.data, tmp_path, shard_size=4, progress=False)
    assert sorted(p.name for p in (tmp_path / "embeddings").glob("shard-*")) == ["shard-00000.safetensors"]
    assert not (tmp_path / "gallery.json").exists() and not list(tmp_path.rglob(".*.tmp"))
    monkeypatch.setattr(build_module, "_write_shard", real_write)
    result = index_build(tiny.dual, tiny.data, tmp_path, shard_size=4, progress=False)
    assert result.embedded_items == 11 - 4  # only the missing shards
    assert torch.equal(stored_vectors(tmp_path), stored_vectors(image_index))  # bit-identical


def test_sharded_build_then_merge(tiny, image_index, tmp_path, monkeypatch):
    first = index_build(tiny.dual, tiny.data, tmp_path, shard="0/2", shard_size=4, progress=False)
    assert not first.merged and first.embedded_items == 4 + 3  # shards 0 and 2
    with pytest.raises(ConfigError, match=r"shards \[1\] of 3 are not embedded"):
        index_merge(tmp_path)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    assert index_build(tiny.dual, tiny.data, tmp_path, shard_size=4, progress=False).embedded_items == 4
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["index", "merge", "--out", str(tmp_path)]) == 0
    assert torch.equal(stored_vectors(tmp_path), stored_vectors(image_index))
    with pytest.raises(ConfigError, match="RANK/WORLD"):
        parse_shard("2/2")


def test_rebuild_with_another_backend_reuses_the_vectors(tiny, image_index, tmp_path):
    folder = shutil.copytree(image_index, tmp_path / "copy")
    result = index_build(tiny.dual, tiny.data, folder, backend="faiss-hnsw", shard_size=4, progress=False)
    assert (
        result.embedded_items == 0
        and json.loads((folder / "index.json").read_text())["backend"] == "faiss-hnsw"
    )


def test_partial_build_of_another_gallery_is_refused(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "merge_shards", lambda *a, **k: None)
    index_build(tiny.dual, tiny.data, tmp_path, shard="0/2", shard_size=4, progress=False)
    with pytest.raises(CacheMismatchError, match="side, num_items, gallery_fingerprint differ"):
        index_build(tiny.dual, tiny.data, tmp_path, side="captions", shard_size=4, progress=False)


def test_corrupt_shard_is_named_at_merge(tiny, tmp_path):
    index_build(tiny.dual, tiny.data, tmp_path, shard="0/2", shard_size=4, progress=False)
    index_build(tiny.dual, tiny.data, tmp_path, shard="1/2", shard_size=4, progress=False)
    shard = tmp_path / "embeddings" / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CorruptFileError, match="cannot read embedding shard") as error:
        index_merge(tmp_path)
    assert error.value.path == str(shard)


# ----------------------------------------------------------------------------- search


def test_text_search_json_matches_brute_force(tiny, image_index, reference, capsys):
    split, images, texts = reference
    payload = search_json(capsys, "--index", str(image_index), "a blue square", "-k", "5")
    query = EndToEnd.load(tiny.dual).encode_texts(["a blue square"])["embedding"]  # (1, D)
    expected = (query @ images.T)[0]  # (N,)
    order = torch.argsort(expected, descending=True, stable=True)[:5]
    assert [hit["id"] for hit in payload["hits"]] == order.tolist()
    np.testing.assert_allclose([hit["score"] for hit in payload["hits"]], expected[order].numpy(), rtol=1e-5)
    top = payload["hits"][0]
    assert (
        top["path"] == str(split.image_paths[top["id"]]) and top["rank"] == 1 and top["cross_score"] is None
    )
    assert set(payload["milliseconds"]) == {"encode", "search", "rerank", "total"}


def test_image_search_on_a_caption_index(caption_index, reference, tiny, capsys):
    split, images, texts = reference
    query = split.image_paths[3]
    payload = search_json(capsys, "--index", str(caption_index), "--image", str(query), "-k", "4")
    expected = (images[3:4] @ texts.T)[0]
    order = torch.argsort(expected, descending=True, stable=True)[:4]
    assert [hit["id"] for hit in payload["hits"]] == order.tolist()
    assert [hit["text"] for hit in payload["hits"]] == [split.captions[i] for i in order.tolist()]
    assert payload["hits"][0]["image"] == int(split.caption_to_image[order[0]])


def test_cascade_rescores_the_top_k_with_the_cross_encoder(tiny, image_index, capsys):
    query = ["--index", str(image_index), "the colour green", "-k", "6"]
    dual_only = search_json(capsys, *query)
    payload = search_json(capsys, *query, "--rerank", "6", "--cross", str(tiny.cross))
    dual_ids, ids = [h["id"] for h in dual_only["hits"]], [h["id"] for h in payload["hits"]]
    assert set(ids) == set(dual_ids) and ids != dual_ids  # same candidates; the fusion term reorders them
    cross = EndToEnd.load(tiny.cross)
    paths, text = [h["path"] for h in payload["hits"]], cross.encode_texts(["the colour green"])
    with torch.inference_mode():
        texts = {k: v.expand(len(paths), *v.shape[1:]) for k, v in text.items()}
        direct = cross.score_pairs(cross.encode_images(paths), texts)  # (6,)
    scores = [h["cross_score"] for h in payload["hits"]]
    np.testing.assert_allclose(scores, direct.numpy(), rtol=1e-4, atol=1e-5)
    assert scores == sorted(scores, reverse=True)
    partial = search_json(capsys, *query, "--rerank", "2", "--cross", str(tiny.cross))
    assert [h["id"] for h in partial["hits"][2:]] == dual_ids[2:]  # below K: the dual order
    assert all(h["cross_score"] is None for h in partial["hits"][2:])


def test_table_output(image_index, capsys):
    assert main(["search", "--index", str(image_index), "a red square", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["rank", "id", "score", "cross"] and len(lines) == 5
    assert lines[-1].startswith("(3 results;")


def test_another_model_is_refused(tiny, image_index, tmp_path, capsys):
    other = shutil.copytree(tiny.dual, tmp_path / "retrained")
    weights = load_file(str(other / "model.safetensors"))
    save_file({k: v + 0.01 for k, v in weights.items()}, str(other / "model.safetensors"))
    with pytest.raises(CacheMismatchError, match="built by the model with fingerprint"):
        Retriever(image_index, model_dir=other)
    assert main(["search", "--index", str(image_index), "--model", str(other), "a red square"]) == 2
    assert "rebuild the index" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a red square", "--rerank", "3"], "--rerank needs --cross"),
        ([], "give either a text query or --image"),
        (["--image", "x.png", "a red square"], "give either a text query or --image"),
        (["   "], "the query is empty"),
    ],
)
def test_bad_searches_exit_2_with_a_message(image_index, capsys, args, message):
    assert main(["search", "--index", str(image_index), *args]) == 2
    assert message in capsys.readouterr().err


def test_query_of_the_wrong_kind_is_refused(image_index, caption_index, tiny, capsys):
    assert main(["search", "--index", str(caption_index), "a red square"]) == 2
    assert "this index holds captions" in capsys.readouterr().err
    image = str(load_split(tiny.data, "test").image_paths[0])
    assert main(["search", "--index", str(image_index), "--image", image]) == 2
    assert "this index holds images" in capsys.readouterr().err
    assert main(["search", "--index", str(caption_index), "--image", "/no/such.png"]) == 2
    assert "image file not found" in capsys.readouterr().err


def test_milvus_backend_end_to_end(tiny, image_index, tmp_path, capsys):
    pytest.importorskip("milvus_lite", reason="Milvus backend untested: pip install 'dcd-itr[milvus]'")
    index_build(tiny.dual, tiny.data, tmp_path, backend="milvus", shard_size=4, progress=False)
    milvus = search_json(capsys, "--index", str(tmp_path), "a blue square", "-k", "5")
    flat = search_json(capsys, "--index", str(image_index), "a blue square", "-k", "5")
    assert [h["id"] for h in milvus["hits"]] == [h["id"] for h in flat["hits"]]


@pytest.mark.slow
def test_sigkill_during_build_then_rerun_equals_uninterrupted(tiny, tmp_path):
    """A real kill (SIGKILL) of `dcd index build` after its first shard; the rerun completes the same index."""
    words = search_fixtures.VOCAB[5:]
    captions = [f"{a} {b} {c}" for a in words for b in words for c in words[:3]][:150]  # 150 shards of 1
    record = karpathy_record(0, "test", captions)
    make_image(tmp_path / "data" / record["filepath"] / record["filename"], "red")
    (tmp_path / "data" / "dataset_many.json").write_text(json.dumps({"images": [record]}))
    command = [
        sys.executable, "-m", "dcd_itr.cli", "index", "build", "--model", str(tiny.dual),
        "--data", str(tmp_path / "data"), "--side", "captions", "--shard-size", "1", "--batch-size", "1", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(killed)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((killed / "embeddings").glob("shard-*.safetensors")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    shards = list((killed / "embeddings").glob("shard-*.safetensors"))
    assert 1 <= len(shards) < 150 and not (killed / "gallery.json").exists()
    subprocess.run([*command, "--out", str(killed)], env=env, check=True, timeout=300)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses: float sums depend on the thread count
    try:
        index_build(
            tiny.dual, tmp_path / "data", tmp_path / "clean", side="captions", shard_size=1, batch_size=1
        )
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(stored_vectors(killed), stored_vectors(tmp_path / "clean"))
