"""Part 3: online latency of one text query -- encode it, then search a gallery -- with FAISS exact and ANN indexes.

Query encoding is timed on real captions through the dual's own text tower and head (what ``dcd serve`` runs per
request). Search is timed one query at a time against SYNTHETIC galleries of unit vectors at the dual's
dimension (no real 1M-image gallery exists here): each vector is ``normalize(c + noise * e)`` with ``c`` one of
the dual's real image embeddings of the split and ``e`` a random unit direction, so the gallery is clustered
like real embeddings (isotropic noise within a cluster is a pessimistic model for ANN: real variants differ along
fewer directions); the queries are the dual's real caption embeddings. Each index is built once and searched at
several search-time settings (HNSW efSearch, IVF nprobe): the recall / latency trade-off. ANN recall@10 is
measured against exact search of the same gallery; bytes per vector = serialised FAISS index size / gallery size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from dcd_itr.search.index import create_index
from dcd_itr.speed.common import percentile_ms, timed


@dataclass
class LatencyConfig:
    sizes: list[int] = field(default_factory=lambda: [10_000, 100_000, 1_000_000])  # the galleries
    num_queries: int = 200  # p99 of 200 single queries rests on the 2 slowest; seconds even at 1M exact
    k: int = 10  # results per query, as recall@10 is defined
    # two members of a cluster then have cos ~0.64, near the real emoji images' nearest-neighbour cos (0.55)
    noise: float = 0.75
    hnsw: dict[str, int] = field(  # M=16, efC=40: 1M x 256 builds in minutes on 2 cores
        default_factory=lambda: {"m": 16, "ef_construction": 40}
    )
    hnsw_ef_search: list[int] = field(default_factory=lambda: [64, 256, 1024])  # recall vs latency, one build
    hnsw_max_size: int | None = None  # skip HNSW above this gallery size (None: build it at every size)
    # nlist ~ 4 sqrt(N), capped at train_size / 39 (2,564 at 1M): the 1M build (k-means + adding) took 61 s
    ivfflat: dict[str, int] = field(default_factory=lambda: {"train_size": 100_000})
    # lists scanned exactly per query; at 1M, 32 reached recall@10 0.985 at p50 2.6 ms, 64 0.998 at 4.4 ms
    ivfflat_nprobe: list[int] = field(default_factory=lambda: [16, 32, 64])
    ivfpq: dict[str, int] = field(  # 32-byte codes of 8 dims each: PQ on 2- or 4-d sub-vectors trains for
        default_factory=lambda: {"m": 32, "train_size": 20_000}  # minutes on 2 cores; 20K = 78 per centroid
    )
    ivfpq_nprobe: list[int] = field(default_factory=lambda: [16, 64])  # lists visited per query
    seed: int = 0  # gallery and sampling seed, so reruns search the same vectors

    def search_settings(self, backend: str) -> list[dict[str, int]]:
        """Search-time settings to time on one built index of ``backend``."""
        if backend == "faiss-hnsw":
            return [{"ef_search": ef} for ef in self.hnsw_ef_search]
        if backend == "faiss-ivfflat":
            return [{"nprobe": nprobe} for nprobe in self.ivfflat_nprobe]
        if backend == "faiss-ivfpq":
            return [{"nprobe": nprobe} for nprobe in self.ivfpq_nprobe]
        return [{}]


BACKENDS = ("faiss-flat", "faiss-hnsw", "faiss-ivfflat", "faiss-ivfpq")


def query_encoding_seconds(encode: Callable[[str], Any], captions: list[str], count: int) -> list[float]:
    """Seconds to embed each of ``count`` captions alone (cycled if fewer), after one untimed warm-up."""
    encode(captions[0])
    return [timed(lambda i=i: encode(captions[i % len(captions)]))[1] for i in range(count)]


def synthetic_gallery(size: int, centres: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """(size, D) float32 unit vectors clustered around ``centres`` (C, D) -- see the module docstring."""
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    gallery = np.empty((size, dim), dtype=np.float32)
    for start in range(0, size, 100_000):  # bounded temporaries
        stop = min(start + 100_000, size)
        directions = rng.standard_normal((stop - start, dim), dtype=np.float32)
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        block = centres[rng.integers(0, len(centres), stop - start)] + noise * directions
        gallery[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return gallery


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found top-k intersect exact top-k| / k; found and exact (Q, k) ids."""
    hits = [len(set(row.tolist()) & set(truth.tolist())) for row, truth in zip(found, exact, strict=True)]
    return float(np.mean(hits) / exact.shape[1])


def time_searches(index: Any, queries: np.ndarray, k: int) -> tuple[list[float], np.ndarray]:
    """Seconds of each query searched alone (after one untimed warm-up), and the ids found (Q, k)."""
    index.search(queries[:1], k)
    seconds, found = [], []
    for query in queries:
        (_, result), elapsed = timed(lambda query=query: index.search(query[None, :], k))
        seconds.append(elapsed)
        found.append(result[0])
    return seconds, np.stack(found)


def measure_backend(
    backend: str,
    params: dict[str, Any],
    settings: list[dict[str, int]],
    gallery: np.ndarray,
    queries: np.ndarray,
    k: int,
) -> list[tuple[dict[str, Any], list[float], np.ndarray]]:
    """Build ``backend`` over ``gallery`` once, then per search setting: (row, per-query seconds, ids (Q, k))."""
    index = create_index(backend, gallery.shape[1], params)
    ids = np.arange(len(gallery), dtype=np.int64)
    _, build_s = timed(lambda: index.add(ids, gallery))
    bytes_per_vector = len(faiss.serialize_index(index.index)) / len(gallery)
    measured = []
    for setting in settings:
        for name, value in setting.items():
            setattr(index, name, value)  # ef_search / nprobe are read at search time
        seconds, found = time_searches(index, queries, k)
        row = {
            "backend": backend,
            "params": index.params(),
            "gallery_size": len(gallery),
            "build_s": build_s,
            "search_p50_ms": percentile_ms(seconds, 50),
            "search_p99_ms": percentile_ms(seconds, 99),
            "bytes_per_vector": bytes_per_vector,
        }
        measured.append((row, seconds, found))
    return measured


def run_latency(
    encode_query: Callable[[str], Any],
    captions: list[str],
    centres: np.ndarray,
    query_vectors: np.ndarray,
    config: LatencyConfig,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Query-encoding percentiles, then one row per (gallery size, backend); totals pair query i's encoding
    with query i's search."""
    rng = np.random.default_rng(config.seed)
    rows = rng.integers(0, len(query_vectors), config.num_queries)
    queries = np.ascontiguousarray(query_vectors[rows], dtype=np.float32)  # (Q, D)
    encode_s = query_encoding_seconds(encode_query, [captions[i] for i in rows], config.num_queries)
    result: dict[str, Any] = {
        "dimension": int(centres.shape[1]),
        "synthetic_gallery": True,
        "gallery": f"normalize(real image embedding + {config.noise} * random unit direction)",
        "num_queries": config.num_queries,
        "k": config.k,
        "query_encoding": {
            "p50_ms": percentile_ms(encode_s, 50),
            "p99_ms": percentile_ms(encode_s, 99),
        },
        "rows": [],
    }
    params = {
        "faiss-flat": {},
        "faiss-hnsw": config.hnsw,
        "faiss-ivfflat": config.ivfflat,
        "faiss-ivfpq": config.ivfpq,
    }
    for size in config.sizes:
        gallery = synthetic_gallery(size, centres, config.noise, config.seed + size)
        exact = None
        for backend in BACKENDS:
            if backend == "faiss-hnsw" and config.hnsw_max_size is not None and size > config.hnsw_max_size:
                log(f"  {size:>9,} {backend}: skipped (hnsw_max_size={config.hnsw_max_size:,})")
                continue
            settings = config.search_settings(backend)
            for row, seconds, found in measure_backend(
                backend, params[backend], settings, gallery, queries, config.k
            ):
                exact = found if backend == "faiss-flat" else exact
                row["recall_at_k"] = recall_at_k(found, exact)
                total = [e + s for e, s in zip(encode_s, seconds, strict=True)]
                row |= {"total_p50_ms": percentile_ms(total, 50), "total_p99_ms": percentile_ms(total, 99)}
                result["rows"].append(row)
                log(
                    f"  {size:>9,} {backend:<12} {setting_label(row)} build {row['build_s']:7.1f} s  search p50 "
                    f"{row['search_p50_ms']:7.2f} ms  p99 {row['search_p99_ms']:7.2f} ms  "
                    f"recall@{config.k} {row['recall_at_k']:.3f}"
                )
        del gallery
    return result


def setting_label(row: dict[str, Any]) -> str:
    """The search-time knob of a row, for logs and tables: ``efSearch=256``, ``nprobe=16`` or ``exact``."""
    params = row["params"]
    if "ef_search" in params:
        return f"efSearch={params['ef_search']}"
    return f"nprobe={params['nprobe']}" if "nprobe" in params else "exact"
