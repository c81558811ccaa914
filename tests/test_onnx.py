"""ONNX Runtime serving of the dual student: export, equivalence with PyTorch, index/search with --runtime onnx.

The tiny random towers of ``search_fixtures`` (a 2-stage ResNet, a 2-layer BERT) are exported once per session
(~15-45 s: the dynamo exporter); everything else reuses that folder or cheap copies of it.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import search_fixtures
from dcd_itr.cli import main
from dcd_itr.data.loading import load_split
from dcd_itr.errors import CacheMismatchError, ConfigError, CorruptFileError
from dcd_itr.export import export_dual_onnx, load_dual_encoder, read_export_manifest
from dcd_itr.export.manifest import MANIFEST_FILE
from dcd_itr.export.onnx_export import quantize_onnx_export
from dcd_itr.io_utils import file_sha256
from dcd_itr.metrics import rank_dual
from dcd_itr.models.registry import weights_fingerprint
from dcd_itr.search.build import index_build
from dcd_itr.search.gallery import dual_fingerprint
from dcd_itr.search.retriever import Retriever

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECALL_KEYS = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return search_fixtures.tiny_setup(tmp_path_factory)


@pytest.fixture(scope="session")
def exported(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx") / "dual"
    export_dual_onnx(tiny.dual, folder)
    return folder


@pytest.fixture(scope="session")
def embeddings(tiny, exported):
    """Test-split embeddings of both runtimes: {runtime: (images (N, D), captions (M, D))}, and the split."""
    split = load_split(tiny.data, "test")
    out = {}
    for runtime, folder in (("torch", tiny.dual), ("onnx", exported)):
        encoder = load_dual_encoder(folder, runtime)
        out[runtime] = (
            encoder.encode_images(split.image_paths)["embedding"],
            encoder.encode_texts(split.captions)["embedding"],
        )
    return split, out


def copy_export(exported, tmp_path):
    return shutil.copytree(exported, tmp_path / "copy")


def test_manifest_records_fingerprint_opset_inputs_and_file_hashes(tiny, exported):
    manifest = read_export_manifest(exported)
    assert manifest["model_fingerprint"] == weights_fingerprint(tiny.dual) == dual_fingerprint(exported)
    assert manifest["opset"] == 20 and manifest["quantization"] is None and manifest["embed_dim"] == 8
    assert manifest["image"]["input_names"] == ["pixels"] and manifest["image"]["image_size"] == 32
    assert manifest["text"]["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert {"image.onnx", "text.onnx", "tokenizer/tokenizer.json"} <= set(manifest["files"])
    assert all(file_sha256(exported / name) == digest for name, digest in manifest["files"].items())
    assert min(manifest["check_min_cosine"].values()) >= 0.999


def test_onnx_embeddings_match_pytorch_and_keep_recall(embeddings):
    split, out = embeddings
    for torch_side, onnx_side in zip(out["torch"], out["onnx"], strict=True):
        assert torch_side.shape == onnx_side.shape
        assert torch.nn.functional.cosine_similarity(torch_side, onnx_side, dim=-1).min() >= 0.999
    torch_metrics = rank_dual(*out["torch"], split.caption_to_image)
    onnx_metrics = rank_dual(*out["onnx"], split.caption_to_image)
    for key in RECALL_KEYS:
        assert abs(torch_metrics[key] - onnx_metrics[key]) <= 0.1, key


def test_batching_does_not_change_onnx_embeddings(exported, embeddings):
    """Captions are sorted by length and padded per batch: one at a time must give the same rows."""
    split, out = embeddings
    encoder = load_dual_encoder(exported, "onnx")
    one_by_one = torch.cat([encoder.encode_texts([caption])["embedding"] for caption in split.captions[:5]])
    torch.testing.assert_close(one_by_one, out["onnx"][1][:5], atol=1e-5, rtol=1e-4)
    images = encoder.encode_images(split.image_paths, batch_size=4)["embedding"]
    torch.testing.assert_close(images, out["onnx"][0], atol=1e-5, rtol=1e-4)


def test_index_built_with_onnx_searches_like_torch(tiny, exported, tmp_path, tmp_path_factory, capsys):
    onnx_index = tmp_path / "onnx_index"
    index_build(exported, tiny.data, onnx_index, shard_size=4, progress=False, runtime="onnx")
    torch_index = search_fixtures.built_index(tmp_path_factory, "images")
    by_onnx = Retriever(onnx_index, runtime="onnx").search_text("a blue square", k=5)
    # a torch-built index searched through the export: same model fingerprint, so it is accepted
    mixed = Retriever(torch_index, model_dir=exported, runtime="onnx").search_text("a blue square", k=5)
    by_torch = Retriever(torch_index).search_text("a blue square", k=5)
    assert [h.id for h in by_onnx.hits] == [h.id for h in by_torch.hits] == [h.id for h in mixed.hits]
    for ours, reference in zip(by_onnx.hits, by_torch.hits, strict=True):
        assert ours.score == pytest.approx(reference.score, abs=1e-4)
    capsys.readouterr()
    args = ["search", "a blue square", "--index", str(onnx_index), "--runtime", "onnx", "-k", "3", "--json"]
    assert main(args) == 0
    assert [hit["id"] for hit in json.loads(capsys.readouterr().out)["hits"]] == [
        h.id for h in by_torch.hits[:3]
    ]


def test_search_with_rerank_under_onnx_runtime(tiny, exported, tmp_path_factory):
    index = search_fixtures.built_index(tmp_path_factory, "images")
    retriever = Retriever(index, model_dir=exported, cross_dir=tiny.cross, runtime="onnx")
    reference = search_fixtures.cached_retriever(tmp_path_factory, "images")
    ours, theirs = (
        retriever.search_text("the colour red", k=5, rerank=5),
        reference.search_text("the colour red", 5, 5),
    )
    assert [h.id for h in ours.hits] == [h.id for h in theirs.hits]


def test_unknown_runtime_is_a_clear_error(tiny, exported, tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown --runtime 'tensorrt'; valid: torch, onnx"):
        index_build(tiny.dual, tiny.data, tmp_path / "i", progress=False, runtime="tensorrt")
    with pytest.raises(ConfigError, match="unknown --runtime"):
        load_dual_encoder(exported, "tensorrt")
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "q", "--index", str(tmp_path), "--runtime", "tensorrt"])
    assert exit_info.value.code == 2 and "invalid choice: 'tensorrt'" in capsys.readouterr().err


def test_wrong_folder_for_the_runtime_says_what_to_do(tiny, exported, tmp_path_factory, capsys):
    with pytest.raises(ConfigError, match="PyTorch model folder, not an ONNX export.*dcd export --onnx"):
        load_dual_encoder(tiny.dual, "onnx")
    with pytest.raises(ConfigError, match="is an ONNX export: use --runtime onnx"):
        load_dual_encoder(exported, "torch")
    index = search_fixtures.built_index(tmp_path_factory, "images")  # records the torch model folder
    assert main(["search", "red", "--index", str(index), "--runtime", "onnx"]) == 2
    assert "dcd export --onnx" in capsys.readouterr().err


def test_missing_or_changed_onnx_file_is_named(exported, tmp_path):
    folder = copy_export(exported, tmp_path)
    (folder / "text.onnx").unlink()
    with pytest.raises(CorruptFileError, match=r"text\.onnx.*missing"):
        load_dual_encoder(folder, "onnx")
    folder = shutil.copytree(exported, tmp_path / "changed")
    with open(folder / "image.onnx", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(CorruptFileError, match=r"image\.onnx.*sha256"):
        load_dual_encoder(folder, "onnx")
    (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_dual_encoder(folder, "onnx")
    (folder / MANIFEST_FILE).unlink()
    with pytest.raises(ConfigError, match="manifest not found"):
        load_dual_encoder(folder, "onnx")


def test_export_of_another_model_is_refused_by_the_index(exported, tmp_path, tmp_path_factory):
    folder = copy_export(exported, tmp_path)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, "model_fingerprint": "0" * 64}))
    index = search_fixtures.built_index(tmp_path_factory, "images")
    with pytest.raises(CacheMismatchError, match="fingerprint"):
        Retriever(index, model_dir=folder, runtime="onnx")


def test_export_refuses_a_cross_encoder_and_needs_a_format(tiny, tmp_path, capsys):
    with pytest.raises(ConfigError, match="not a dual encoder"):
        export_dual_onnx(tiny.cross, tmp_path / "x")
    assert main(["export", str(tiny.dual), str(tmp_path / "y")]) == 2
    assert "--onnx" in capsys.readouterr().err
    assert main(["export", "--onnx", str(tmp_path / "nothing"), str(tmp_path / "z")]) == 2
    assert "model weights not found" in capsys.readouterr().err


def test_int8_quantisation_stays_close_and_reports_its_recall(exported, embeddings, tmp_path):
    split, out = embeddings
    manifest = quantize_onnx_export(exported, tmp_path / "int8")
    assert manifest["quantization"] == "int8-dynamic" and min(manifest["check_min_cosine"].values()) >= 0.9
    encoder = load_dual_encoder(tmp_path / "int8", "onnx")
    images = encoder.encode_images(split.image_paths)["embedding"]
    texts = encoder.encode_texts(split.captions)["embedding"]
    for quantised, reference in ((images, out["torch"][0]), (texts, out["torch"][1])):
        assert torch.nn.functional.cosine_similarity(quantised, reference, dim=-1).min() >= 0.9
    int8_metrics = rank_dual(images, texts, split.caption_to_image)
    torch_metrics = rank_dual(*out["torch"], split.caption_to_image)
    assert abs(int8_metrics["rsum"] - torch_metrics["rsum"]) <= 60  # 11 images: one rank moves a recall by 9
    with pytest.raises(ConfigError, match="already quantised"):
        quantize_onnx_export(tmp_path / "int8", tmp_path / "again")


@pytest.mark.slow
def test_cli_export_int8_end_to_end(tiny, tmp_path, capsys):
    """`dcd export --onnx --int8`: a second full export (the dynamo exporter takes tens of seconds here)."""
    assert main(["export", "--onnx", "--int8", str(tiny.dual), str(tmp_path / "e")]) == 0
    assert "int8-dynamic ONNX export" in capsys.readouterr().out
    assert read_export_manifest(tmp_path / "e")["quantization"] == "int8-dynamic"
    assert not list((tmp_path / "e").glob("*.float32"))
