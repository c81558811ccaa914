"""Gallery-side cross encodings stored in the index (`dcd index build --cross`): re-ranking from them equals
re-ranking with the cross-encoder run on the gallery images at query time; the store round-trips; a different
--cross, a non-grounded cross-encoder and a captions index are refused with errors naming the cause."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from dcd_itr.errors import CacheMismatchError, ConfigError
from dcd_itr.models.end_to_end import EndToEnd
from dcd_itr.models.grounded import GroundedConfig, GroundedCrossEncoder
from dcd_itr.models.grounded_pairs import GroundedPairScorer
from dcd_itr.models.registry import weights_fingerprint
from dcd_itr.search.build import index_build
from dcd_itr.search.cross_store import CROSS_FILE, load_cross_store
from dcd_itr.search.retriever import Retriever
from helpers import karpathy_record
from search_fixtures import COLOUR_NAMES, COLOUR_VALUES, save_model

QUERIES = ["a red square the blue square", "the green square", "a yellow square a pink square"]


def scenes_dataset(root: Path) -> Path:
    """8 test images, each two coloured squares on white (two regions for the detector), 2 captions each."""
    records, colours = [], [c for c, name in enumerate(COLOUR_NAMES) if name != "white"]
    for index in range(8):
        left, right = colours[index % len(colours)], colours[(3 * index + 1) % len(colours)]
        record = karpathy_record(
            index, "test", [f"a {COLOUR_NAMES[left]} square", f"the {COLOUR_NAMES[right]}"]
        )
        image = Image.new("RGB", (48, 48), (255, 255, 255))
        image.paste(COLOUR_VALUES[left], (3, 10 + index, 15, 22 + index))  # 18 px apart: two regions
        image.paste(COLOUR_VALUES[right], (33, 20 - index, 45, 32 - index))
        (root / "imgs").mkdir(parents=True, exist_ok=True)
        image.save(root / "imgs" / record["filename"])
        records.append(record)
    (root / "dataset_tiny.json").write_text(json.dumps({"dataset": "tiny", "images": records}))
    return root


def grounded_cross(tiny, folder: Path, seed: int) -> Path:
    """A tiny grounded cross-encoder on the tiny towers (region view over the tiny ResNet), weights moved off init."""
    torch.manual_seed(seed)
    config = GroundedConfig(
        image_view=f"regions-hf:{tiny.image_tower}@32",
        text_view=f"hf:{tiny.text_tower}@12",
        region_dim=16,
        text_dim=32,
        ground_dim=8,
        width=16,
        num_layers=2,
        num_heads=2,
        max_text_tokens=12,
    )
    model = GroundedCrossEncoder(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return save_model(model.eval(), folder)


@pytest.fixture(scope="module")
def stored(tiny_search, tmp_path_factory):
    root = tmp_path_factory.mktemp("cross_store")
    data = scenes_dataset(root / "data")
    cross, other = (
        grounded_cross(tiny_search, root / "cross", 0),
        grounded_cross(tiny_search, root / "other", 1),
    )
    plain = root / "plain"
    index_build(tiny_search.dual, data, plain, "test", "images", progress=False)
    with_cross = root / "with_cross"
    index_build(tiny_search.dual, data, with_cross, "test", "images", progress=False, cross=cross)
    return {"data": data, "cross": cross, "other": other, "plain": plain, "with_cross": with_cross}


def test_reranking_from_stored_encodings_equals_the_query_time_path(stored):
    old = Retriever(stored["plain"], cross_dir=stored["cross"])
    new = Retriever(stored["with_cross"], cross_dir=stored["cross"])
    assert old.cross_store is None and new.cross_store is not None
    for query in QUERIES:
        expected, found = old.search_text(query, k=8, rerank=6), new.search_text(query, k=8, rerank=6)
        assert [hit.id for hit in found.hits] == [hit.id for hit in expected.hits]
        torch.testing.assert_close(
            torch.tensor([hit.cross_score or 0.0 for hit in found.hits]),
            torch.tensor([hit.cross_score or 0.0 for hit in expected.hits]),
            rtol=1e-4,
            atol=1e-5,
        )
    scores = [hit.cross_score for hit in new.search_text(QUERIES[0], k=8, rerank=8).hits]
    assert max(scores) - min(scores) > 0.1  # the cross-encoder really reorders


def test_store_round_trip(stored):
    store = load_cross_store(stored["with_cross"])
    assert store.cross_fingerprint == weights_fingerprint(stored["cross"])
    assert store.cross_dir == str(stored["cross"].resolve())
    cross = EndToEnd.load(stored["cross"])
    scorer = GroundedPairScorer(cross.model)
    paths = sorted((stored["data"] / "imgs").glob("img*.png"), key=lambda p: int(p.stem[3:]))
    with torch.inference_mode():
        direct = scorer.encode_images(cross.tower_image_features(paths))
    assert set(store.features) == set(direct)
    for name, value in direct.items():
        torch.testing.assert_close(store.features[name], value)
    assert store.features["pairs.region_mask"].sum(1).min() == 2  # both squares were detected


def test_a_different_cross_model_is_refused_naming_both(stored):
    with pytest.raises(CacheMismatchError) as error:
        Retriever(stored["with_cross"], cross_dir=stored["other"])
    message = str(error.value)
    assert str(stored["other"]) in message and str(stored["cross"].resolve()) in message
    assert "fingerprint" in message


def test_a_store_of_another_gallery_is_refused(stored, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(stored["plain"], copy)
    shutil.copy(stored["with_cross"] / CROSS_FILE, copy / CROSS_FILE)  # same gallery: accepted
    Retriever(copy, cross_dir=stored["cross"])
    gallery = json.loads((copy / "gallery.json").read_text())
    gallery["image_captions"][0] = ["another caption"]
    (copy / "gallery.json").write_text(json.dumps(gallery))
    with pytest.raises(CacheMismatchError, match="another gallery"):
        Retriever(copy, cross_dir=stored["cross"])


def test_only_grounded_cross_encoders_and_image_galleries(stored, tiny_search, tmp_path):
    with pytest.raises(ConfigError, match="only grounded cross-encoders"):
        index_build(tiny_search.dual, stored["data"], tmp_path / "a", progress=False, cross=tiny_search.cross)
    with pytest.raises(ConfigError, match="--side images"):
        index_build(tiny_search.dual, stored["data"], tmp_path / "b", side="captions", cross=stored["cross"])
