"""Tests for dcd_itr.search index backends, on vectors whose nearest neighbours are known by construction.

FAISS backends are tested directly; the Milvus backend runs on Milvus Lite (a local database folder). Where
pymilvus / milvus-lite is not installed the Milvus tests skip with the reason (``-ra`` prints it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dcd_itr.errors import ConfigError, CorruptFileError
from dcd_itr.search.index import INDEX_BACKENDS, create_index, load_index, parse_params

FAISS_BACKENDS = ["faiss-flat", "faiss-hnsw", "faiss-ivfflat", "faiss-ivfpq"]


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(count: int, dim: int, seed: int, centres: np.ndarray | None = None) -> np.ndarray:
    """Unit vectors around 40 cluster centres: the structure real embeddings have (and ANN indexes exploit)."""
    rng = np.random.default_rng(seed)
    centres = centres if centres is not None else np.random.default_rng(99).standard_normal((40, dim))
    return unit(centres[rng.integers(0, len(centres), count)] + 0.6 * rng.standard_normal((count, dim)))


def basis_gallery(dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """ids 100..107 on the unit axes: the neighbours of e_3 + 0.5 e_5 are 103, 105, then ties at 0."""
    return np.arange(100, 100 + dim, dtype=np.int64), np.eye(dim, dtype=np.float32)


def query_near_3_then_5(dim: int = 8) -> np.ndarray:
    query = np.zeros((1, dim), dtype=np.float32)
    query[0, 3], query[0, 5] = 1.0, 0.5
    return unit(query)


def recall_at_10(reference: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(r) & set(f)) / 10 for r, f in zip(reference, found, strict=True)]))


@pytest.fixture
def milvus_available():
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError as error:
        pytest.skip(f"Milvus backend untested here: {error} (pip install 'dcd-itr[milvus]')")


# ----------------------------------------------------------------------------- exact answers


@pytest.mark.parametrize("backend", ["faiss-flat", "faiss-hnsw"])
def test_exact_neighbours_of_constructed_vectors(backend):
    ids, vectors = basis_gallery()
    index = create_index(backend, dim=8)
    index.add(ids, vectors)
    scores, found = index.search(query_near_3_then_5(), k=2)
    assert found.tolist() == [[103, 105]]
    np.testing.assert_allclose(scores, [[2 / np.sqrt(5), 1 / np.sqrt(5)]], rtol=1e-6)
    assert len(index) == 8 and found.dtype == np.int64 and scores.dtype == np.float32


def test_short_results_are_padded_with_missing_ids():
    index = create_index("faiss-flat", dim=8)
    scores, found = index.search(query_near_3_then_5(), k=3)  # empty index
    assert found.tolist() == [[-1, -1, -1]] and np.isneginf(scores).all()
    index.add(np.array([7]), np.eye(8, dtype=np.float32)[3:4])
    scores, found = index.search(query_near_3_then_5(), k=3)
    assert found.tolist() == [[7, -1, -1]] and np.isneginf(scores[0, 1:]).all()


@pytest.mark.parametrize("backend", ["faiss-hnsw", "faiss-ivfflat", "faiss-ivfpq"])
def test_approximate_recall_against_exact(backend):
    gallery, queries = clustered(2000, 16, seed=0), clustered(100, 16, seed=1)
    ids = np.arange(2000, dtype=np.int64) * 3  # non-contiguous ids go through the id map
    exact = create_index("faiss-flat", dim=16)
    exact.add(ids, gallery)
    approximate = create_index(backend, dim=16)
    approximate.add(ids, gallery)
    recall = recall_at_10(exact.search(queries, 10)[1], approximate.search(queries, 10)[1])
    assert recall >= {"faiss-hnsw": 0.95, "faiss-ivfflat": 0.95, "faiss-ivfpq": 0.75}[backend], recall


def test_ivfflat_recall_on_a_clustered_gallery_and_exact_answers_when_every_list_is_scanned(tmp_path):
    gallery, queries = clustered(20_000, 32, seed=10), clustered(100, 32, seed=11)
    ids = np.arange(20_000, dtype=np.int64) * 7 + 1
    exact = create_index("faiss-flat", dim=32)
    exact.add(ids, gallery)
    exact_scores, exact_ids = exact.search(queries, 10)
    index = create_index("faiss-ivfflat", dim=32, params={"nprobe": 64})
    index.add(ids, gallery)
    assert index.params()["nlist"] == 512  # 4 * sqrt(20K) = 566 lists, capped at 39 training points per list
    scores, found = index.search(queries, 10)
    assert recall_at_10(exact_ids, found) >= 0.9
    np.testing.assert_allclose(  # no compression: a found vector's score is its exact inner product
        scores, np.einsum("qd,qkd->qk", queries, gallery[(found - 1) // 7]), atol=1e-5
    )
    index.save(tmp_path)
    loaded = load_index(tmp_path)
    assert loaded.nprobe == 64 and loaded.params() == index.params()
    assert json.loads((tmp_path / "index.json").read_text())["params"]["nprobe"] == 64
    loaded.nprobe = loaded.nlist  # scanning every list is exact search
    scores, found = loaded.search(queries, 10)
    np.testing.assert_array_equal(found, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_ivfpq_shrinks_to_a_small_gallery_and_records_what_it_used(tmp_path):
    index = create_index("faiss-ivfpq", dim=16, params={"nlist": 1024})
    assert index.search(clustered(2, 16, 3), 4)[1].tolist() == [[-1] * 4] * 2  # untrained: empty answer
    index.add(np.arange(300), clustered(300, 16, seed=2))
    assert index.params()["nlist"] == 300 // 39 and index.params()["nbits"] == 8 and index.params()["m"] == 8
    index.save(tmp_path)
    assert json.loads((tmp_path / "index.json").read_text())["params"]["trained"] is True


# ----------------------------------------------------------------------------- persistence and deletion


@pytest.mark.parametrize("backend", FAISS_BACKENDS)
def test_save_load_round_trip(tmp_path, backend):
    gallery, queries = clustered(500, 16, seed=4), clustered(5, 16, seed=5)
    index = create_index(backend, dim=16, params={"nprobe": 4} if "ivf" in backend else None)
    index.add(np.arange(1000, 1500), gallery)
    index.save(tmp_path)
    loaded = load_index(tmp_path)
    assert type(loaded) is type(index) and len(loaded) == 500 and loaded.params() == index.params()
    for got, want in zip(loaded.search(queries, 7), index.search(queries, 7), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not list(tmp_path.glob(".*.tmp")), "atomic writes leave no temporary files"


@pytest.mark.parametrize("backend", FAISS_BACKENDS)
def test_delete_removes_ids_and_survives_a_reload(tmp_path, backend):
    gallery = clustered(400, 16, seed=6)
    index = create_index(backend, dim=16)
    index.add(np.arange(400), gallery)
    assert index.delete(np.array([5, 17, 17_000])) == 2  # an unknown id is not counted
    assert index.delete(np.array([5])) == 0 and len(index) == 398
    assert not {5, 17} & set(index.search(gallery[[5, 17]], 10)[1].ravel().tolist())
    index.save(tmp_path)
    reloaded = load_index(tmp_path)
    assert len(reloaded) == 398 and 5 not in reloaded.search(gallery[[5]], 10)[1]
    if backend == "faiss-hnsw":
        with pytest.raises(ValueError, match="cannot reuse"):
            reloaded.add(np.array([5]), gallery[[5]])
    else:
        reloaded.add(np.array([5]), gallery[[5]])  # a deleted id may be added again
        assert reloaded.search(gallery[[5]], 1)[1].tolist() == [[5]]


def test_bad_inputs_are_refused_with_reasons():
    index = create_index("faiss-flat", dim=4)
    index.add(np.array([1]), unit(np.ones((1, 4))))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        index.add(np.array([2]), np.ones((1, 5)))
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.array([2]), np.full((1, 4), np.nan))
    with pytest.raises(ValueError, match="already in the index"):
        index.add(np.array([1]), unit(np.ones((1, 4))))
    with pytest.raises(ValueError, match="unique"):
        index.add(np.array([3, 3]), unit(np.ones((2, 4))))
    with pytest.raises(ValueError, match="2 ids for 1 vectors"):
        index.add(np.array([3, 4]), unit(np.ones((1, 4))))
    with pytest.raises(ValueError, match="non-negative"):
        index.add(np.array([-1]), unit(np.ones((1, 4))))
    with pytest.raises(ValueError, match="positive integer"):
        index.search(unit(np.ones((1, 4))), 0)
    with pytest.raises(ConfigError, match="unknown index backend 'annoy'"):
        create_index("annoy", dim=4)
    with pytest.raises(ConfigError, match="bad parameters"):
        create_index("faiss-hnsw", dim=4, params={"links": 3})
    assert parse_params(["m=16", "uri=http://h:19530", "index-type=HNSW"]) == {
        "m": 16,
        "uri": "http://h:19530",
        "index_type": "HNSW",
    }
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_params(["m"])


# ----------------------------------------------------------------------------- corrupt files


@pytest.fixture
def saved_flat(tmp_path):
    index = create_index("faiss-flat", dim=8)
    index.add(*basis_gallery())
    index.save(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:-9] + b"\x7f" + p.read_bytes()[-8:]), "checksum"),
        (lambda p: p.unlink(), "missing"),
    ],
    ids=["truncated", "flipped-byte", "missing"],
)
def test_damaged_index_file_is_named(saved_flat, damage, message):
    damage(saved_flat / "vectors.faiss")
    with pytest.raises(CorruptFileError, match=message) as error:
        load_index(saved_flat)
    assert error.value.path == str(saved_flat / "vectors.faiss")


def test_unreadable_faiss_file_with_matching_checksum_is_named(saved_flat):
    """A file FAISS cannot parse (checksum rewritten to match) is still refused with its name."""
    path = saved_flat / "vectors.faiss"
    path.write_bytes(path.read_bytes()[:40])
    metadata = json.loads((saved_flat / "index.json").read_text())
    from dcd_itr.search.base import file_digest

    metadata["files"]["vectors.faiss"] = file_digest(path)
    (saved_flat / "index.json").write_text(json.dumps(metadata))
    with pytest.raises(CorruptFileError, match="FAISS cannot read") as error:
        load_index(saved_flat)
    assert error.value.path == str(path)


@pytest.mark.parametrize(
    "text", ['{"backend": "faiss-flat", "dim": 8', "[1, 2]", '{"format": 1, "backend": "faiss-flat"}', ""]
)
def test_corrupt_metadata_is_named(saved_flat, text):
    (saved_flat / "index.json").write_text(text)
    with pytest.raises(CorruptFileError) as error:
        load_index(saved_flat)
    assert error.value.path == str(saved_flat / "index.json")


def test_missing_index_folder_says_so(tmp_path):
    with pytest.raises(CorruptFileError, match="is this an index folder"):
        load_index(tmp_path / "nothing")


# ----------------------------------------------------------------------------- Milvus (Lite)


def test_milvus_lite_matches_exact_faiss(tmp_path, milvus_available):
    gallery, queries = clustered(300, 16, seed=7), clustered(4, 16, seed=8)
    ids = np.arange(300, dtype=np.int64) + 50
    exact = create_index("faiss-flat", dim=16)
    exact.add(ids, gallery)
    index = create_index("milvus", dim=16, folder=tmp_path)
    index.add(ids, gallery)
    scores, found = index.search(queries, 10)
    np.testing.assert_array_equal(found, exact.search(queries, 10)[1])
    np.testing.assert_allclose(scores, exact.search(queries, 10)[0], atol=1e-5)
    with pytest.raises(ValueError, match="already in the index"):
        index.add(ids[:2], gallery[:2])
    assert index.delete(np.array([50, 51, 9999])) == 2 and len(index) == 298
    index.save(tmp_path)
    index.close()
    metadata = json.loads((tmp_path / "index.json").read_text())
    assert (
        metadata["params"]["uri"] == "milvus.db" and metadata["count"] == 298
    )  # relative: the folder can move
    moved = tmp_path.rename(tmp_path.with_name(tmp_path.name + "-moved"))
    reloaded = load_index(moved)
    assert len(reloaded) == 298 and not {50, 51} & set(reloaded.search(gallery[:2], 5)[1].ravel().tolist())
    assert reloaded.search(queries, 400)[1].shape == (4, 400)  # k beyond the count: padded with -1
    assert (reloaded.search(queries, 400)[1][:, 298:] == -1).all()
    reloaded.close()


def test_milvus_rebuild_starts_empty_and_missing_database_is_named(tmp_path, milvus_available):
    index = create_index("milvus", dim=4, folder=tmp_path)
    index.add(np.arange(3), unit(np.eye(4)[:3]))
    index.close()
    again = create_index("milvus", dim=4, folder=tmp_path)
    assert len(again) == 0
    again.save(tmp_path)
    again.close()
    import shutil

    shutil.rmtree(tmp_path / "milvus.db")
    with pytest.raises(CorruptFileError, match="Milvus Lite database is missing"):
        load_index(tmp_path)


def test_every_backend_is_listed():
    assert set(INDEX_BACKENDS) == {"faiss-flat", "faiss-hnsw", "faiss-ivfflat", "faiss-ivfpq", "milvus"}
