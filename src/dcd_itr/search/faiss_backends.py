"""FAISS backends: exact inner product, HNSW, IVF-Flat and IVF-PQ, each wrapped in ``IndexIDMap2`` for int64 ids.

- ``faiss-flat``: exact search; the default, and the reference the approximate ones are measured against.
- ``faiss-hnsw``: a graph index; HNSW cannot remove vectors, so ``delete`` records tombstones (kept in
  ``index.json``) and searches skip them with an id selector.
- ``faiss-ivfflat``: inverted lists of full vectors, scanned exactly: the fast high-recall choice for galleries
  that fit in memory (about 1 KiB per 256-d vector, like ``faiss-flat``).
- ``faiss-ivfpq``: inverted lists of product-quantised codes for galleries that outgrow memory.

The IVF backends are trained on the first vectors added (a sample of them), their list count (about
4 * sqrt(N)) and code size shrinking to what a small gallery can train.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dcd_itr.errors import CorruptFileError
from dcd_itr.io_utils import atomic_path
from dcd_itr.search.base import (
    METADATA_FILE,
    VectorIndex,
    empty_results,
    file_digest,
    verify_file,
    write_metadata,
)

INDEX_FILE = "vectors.faiss"


class FaissIndex(VectorIndex):
    """Exact inner-product search (``faiss-flat``); the base of the approximate FAISS backends."""

    backend = "faiss-flat"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.index: faiss.IndexIDMap2 | None = faiss.IndexIDMap2(self._inner_index())

    def _inner_index(self) -> faiss.Index:
        return faiss.IndexFlatIP(self.dim)

    def params(self) -> dict[str, Any]:
        return {}

    def _stored_ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map) if self.index is not None else np.empty(0, np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = self.check_vectors(vectors)
        ids = self.check_ids(ids, len(vectors))
        clash = np.intersect1d(ids, self._stored_ids())
        if clash.size:
            raise ValueError(f"ids already in the index: {clash[:5].tolist()} (delete them first)")
        self.index.add_with_ids(vectors, ids)

    def _search_params(self) -> faiss.SearchParameters | None:
        return None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries, k = self.check_vectors(queries, "queries"), self.check_k(k)
        if len(self) == 0:
            return empty_results(len(queries), k)
        scores, ids = self.index.search(queries, k, params=self._search_params())  # (Q, k), (Q, k)
        scores[ids < 0] = -np.inf  # FAISS pads with -FLT_MAX; make "no result" unmistakable
        return scores, ids

    def delete(self, ids: np.ndarray) -> int:
        ids = self.check_ids(ids)
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids))) if ids.size else 0

    def __len__(self) -> int:
        return int(self.index.ntotal) if self.index is not None else 0

    def _extra_metadata(self) -> dict[str, Any]:
        return {}

    def save(self, folder: str | Path) -> None:
        """Write ``vectors.faiss`` atomically, then ``index.json`` with its checksum."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        if self.index is not None:
            with atomic_path(folder / INDEX_FILE) as temp:
                faiss.write_index(self.index, str(temp))
                with open(temp, "rb+") as stream:
                    os.fsync(stream.fileno())
            files[INDEX_FILE] = file_digest(folder / INDEX_FILE)
        write_metadata(folder, {**self.metadata(files), **self._extra_metadata()})

    @classmethod
    def load(cls, folder: Path, metadata: dict[str, Any]) -> FaissIndex:
        index = cls(metadata["dim"], **metadata["params"])
        if INDEX_FILE not in metadata["files"]:
            index.index = None  # an untrained IVF-PQ index
            return index
        path = verify_file(folder, INDEX_FILE, metadata["files"][INDEX_FILE])
        try:
            loaded = faiss.read_index(str(path))
        except RuntimeError as error:
            raise CorruptFileError(path, f"FAISS cannot read this index ({str(error)[:200]})") from None
        if not isinstance(loaded, faiss.IndexIDMap2) or loaded.d != index.dim:
            raise CorruptFileError(path, f"not an IndexIDMap2 of dimension {index.dim}")
        if loaded.ntotal != metadata.get("count"):
            raise CorruptFileError(
                folder / METADATA_FILE, f"count {metadata.get('count')} != {loaded.ntotal} vectors in {path}"
            )
        index.index = loaded
        index._restore(metadata)
        return index

    def _restore(self, metadata: dict[str, Any]) -> None:
        """Backend state beyond the FAISS file (tombstones, search-time settings)."""


class FaissHNSWIndex(FaissIndex):
    """HNSW graph (``faiss-hnsw``) with tombstone deletion."""

    backend = "faiss-hnsw"

    def __init__(
        self,
        dim: int,
        m: int = 32,  # links per node: the usual choice for recall@10 >= 0.95 on 100-1000-d embeddings
        ef_construction: int = 200,  # build-time beam: better graphs for a one-off cost
        ef_search: int = 128,  # query-time beam: recall vs latency; raise it for higher recall
    ) -> None:
        self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search
        self.deleted: set[int] = set()
        super().__init__(dim)

    def _inner_index(self) -> faiss.Index:
        inner = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = self.ef_construction
        return inner

    def params(self) -> dict[str, Any]:
        return {"m": self.m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        reused = self.deleted.intersection(self.check_ids(ids).tolist())
        if reused:
            raise ValueError(f"ids {sorted(reused)[:5]} were deleted; an HNSW index cannot reuse an id")
        super().add(ids, vectors)

    def _search_params(self) -> faiss.SearchParameters:
        if not self.deleted:
            return faiss.SearchParametersHNSW(efSearch=self.ef_search)
        tombstones = np.fromiter(self.deleted, dtype=np.int64, count=len(self.deleted))
        self._selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(tombstones))  # kept alive during search
        return faiss.SearchParametersHNSW(efSearch=self.ef_search, sel=self._selector)

    def delete(self, ids: np.ndarray) -> int:
        present = np.intersect1d(self.check_ids(ids), self._stored_ids())
        fresh = set(present.tolist()) - self.deleted
        self.deleted |= fresh
        return len(fresh)

    def __len__(self) -> int:
        return super().__len__() - len(self.deleted)

    def metadata(self, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {**super().metadata(files), "count": super().__len__()}  # FAISS's count; tombstones below

    def _extra_metadata(self) -> dict[str, Any]:
        return {"deleted": sorted(self.deleted)}

    def _restore(self, metadata: dict[str, Any]) -> None:
        self.deleted = {int(i) for i in metadata.get("deleted", [])}


class FaissIVFFlatIndex(FaissIndex):
    """Inverted lists of full float32 vectors (``faiss-ivfflat``), trained on the first vectors added.

    A query scans the ``nprobe`` lists whose centroids are nearest and scores their vectors exactly, so recall
    is limited only by the lists it skips, not by compression: the fast setting for tight clusters whose inner
    order IVF-PQ's codes lose. The base of IVF-PQ, which changes only what a list stores.
    """

    backend = "faiss-ivfflat"

    def __init__(
        self,
        dim: int,
        nlist: int | None = None,  # None -> about 4 * sqrt(N) for N vectors, the FAISS wiki's rule of thumb
        nprobe: int = 32,  # lists visited per query: recall vs latency
        train_size: int = 100_000,  # k-means sample: >= 25 points per list for 4096 lists, bounded time
        trained: bool = False,  # set once trained; nlist then holds the value actually used
    ) -> None:
        self.nlist, self.nprobe, self.train_size, self.trained = nlist, nprobe, train_size, trained
        super().__init__(dim)
        self.index = None  # built by train(), when the gallery size is known

    def params(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in ("nlist", "nprobe", "train_size", "trained")}

    def train(self, vectors: np.ndarray, seed: int = 0) -> None:
        """Fit the coarse quantizer (and any codebooks) on ``vectors``, a random sample of ``train_size``."""
        vectors = self.check_vectors(vectors)
        if len(vectors) < 2:
            raise ValueError(f"{self.backend} needs at least 2 training vectors")
        wanted = self.nlist or max(1, round(4 * math.sqrt(len(vectors))))  # sized by the whole first batch
        if len(vectors) > self.train_size:
            rows = np.random.default_rng(seed).choice(len(vectors), self.train_size, replace=False)
            vectors = vectors[np.sort(rows)]
        self.nlist = max(1, min(wanted, len(vectors) // 39 or 1))  # FAISS wants >= 39 points per list
        inner = self._inverted_index(faiss.IndexFlatIP(self.dim), len(vectors), seed)
        inner.cp.seed = seed
        inner.train(vectors)
        self.index, self.trained = faiss.IndexIDMap2(inner), True

    def _inverted_index(self, quantizer: faiss.Index, sample_size: int, seed: int) -> faiss.IndexIVF:
        """The untrained IVF index over ``quantizer``, with ``self.nlist`` lists."""
        return faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.index is None:
            self.train(vectors)
        super().add(ids, vectors)

    def _search_params(self) -> faiss.SearchParameters:
        return faiss.SearchParametersIVF(nprobe=min(self.nprobe, self.nlist or 1))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None:
            return empty_results(len(self.check_vectors(queries, "queries")), self.check_k(k))
        return super().search(queries, k)

    def delete(self, ids: np.ndarray) -> int:
        return super().delete(ids) if self.index is not None else 0


class FaissIVFPQIndex(FaissIVFFlatIndex):
    """Inverted lists + product quantisation (``faiss-ivfpq``); trained on the first vectors added."""

    backend = "faiss-ivfpq"

    def __init__(
        self,
        dim: int,
        nlist: int | None = None,  # None -> about 4 * sqrt(N) for N vectors, the FAISS wiki's rule of thumb
        m: int | None = None,  # None -> dim / 2 sub-quantizers: 2 dims per byte, 8x smaller than float32
        nbits: int = 8,  # 256 centroids per sub-quantizer, the fast PQ kernel's size
        nprobe: int = 32,  # lists visited per query: recall vs latency
        train_size: int = 100_000,  # k-means sample: >= 25 points per list for 4096 lists, bounded time
        trained: bool = False,  # set once trained; nlist/nbits then hold the values actually used
    ) -> None:
        self.m = m if m is not None else next(c for c in range(max(1, dim // 2), 0, -1) if dim % c == 0)
        if dim % self.m:
            raise ValueError(f"IVF-PQ needs m to divide the dimension {dim}, got m={self.m}")
        self.nbits = nbits
        super().__init__(dim, nlist, nprobe, train_size, trained)

    def params(self) -> dict[str, Any]:
        keys = ("nlist", "m", "nbits", "nprobe", "train_size", "trained")
        return {key: getattr(self, key) for key in keys}

    def _inverted_index(self, quantizer: faiss.Index, sample_size: int, seed: int) -> faiss.IndexIVF:
        self.nbits = max(1, min(self.nbits, int(math.log2(sample_size))))  # PQ needs >= 2^nbits points
        inner = faiss.IndexIVFPQ(
            quantizer, self.dim, self.nlist, self.m, self.nbits, faiss.METRIC_INNER_PRODUCT
        )
        inner.pq.cp.seed = seed
        return inner
