"""Index backends by name, and the two entry points: :func:`create_index` and :func:`load_index`.

To add a backend, implement :class:`~dcd_itr.search.base.VectorIndex` and add a line to :data:`INDEX_BACKENDS`.

>>> index = create_index("faiss-hnsw", dim=256, params={"ef_search": 64})  # doctest: +SKIP
>>> index.add(ids, vectors); index.save("gallery-index")                       # doctest: +SKIP
>>> scores, ids = load_index("gallery-index").search(queries, k=10)            # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dcd_itr.config import parse_key_values
from dcd_itr.errors import ConfigError, CorruptFileError
from dcd_itr.search.base import METADATA_FILE, VectorIndex, read_metadata
from dcd_itr.search.faiss_backends import FaissHNSWIndex, FaissIndex, FaissIVFFlatIndex, FaissIVFPQIndex
from dcd_itr.search.milvus_backend import LITE_FILE, MilvusIndex

INDEX_BACKENDS: dict[str, type[VectorIndex]] = {
    "faiss-flat": FaissIndex,
    "faiss-hnsw": FaissHNSWIndex,
    "faiss-ivfflat": FaissIVFFlatIndex,
    "faiss-ivfpq": FaissIVFPQIndex,
    "milvus": MilvusIndex,
}
DEFAULT_BACKEND = "faiss-flat"  # exact: galleries of up to ~1M vectors answer in milliseconds to tens of ms


def _backend_class(name: str) -> type[VectorIndex]:
    if name not in INDEX_BACKENDS:
        raise ConfigError(f"unknown index backend {name!r}; valid: {', '.join(INDEX_BACKENDS)}")
    return INDEX_BACKENDS[name]


def create_index(
    backend: str, dim: int, params: dict[str, Any] | None = None, folder: str | Path | None = None
) -> VectorIndex:
    """An empty index; ``folder`` is where a Milvus Lite database goes when no ``uri`` is given."""
    backend_class, params = _backend_class(backend), dict(params or {})
    if backend_class is MilvusIndex and params.get("uri") is None:
        if folder is None:
            raise ConfigError("a Milvus Lite index needs a folder (or give params={'uri': ...})")
        Path(folder).mkdir(parents=True, exist_ok=True)
        params["uri"] = str(Path(folder) / LITE_FILE)
    try:
        index = backend_class(dim, **params)
    except TypeError as error:  # an unknown parameter name
        raise ConfigError(f"bad parameters for the {backend} backend: {error}") from None
    if isinstance(index, MilvusIndex) and len(index):
        index.reset()  # create means empty: a rebuild must not append to an old collection
    return index


def load_index(folder: str | Path) -> VectorIndex:
    """The index saved in ``folder`` (any backend), checked against its metadata."""
    folder = Path(folder)
    metadata = read_metadata(folder)
    if metadata["backend"] not in INDEX_BACKENDS:
        raise CorruptFileError(folder / METADATA_FILE, f"unknown backend {metadata['backend']!r}")
    try:
        return INDEX_BACKENDS[metadata["backend"]].load(folder, metadata)
    except TypeError as error:
        raise CorruptFileError(folder / METADATA_FILE, f"bad backend parameters ({error})") from None


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``["m=16", "ef_search=64", "uri=http://h:19530"]`` -> ``{"m": 16, "ef_search": 64, "uri": "http://..."}``."""
    return {key.replace("-", "_"): value for key, value in parse_key_values(pairs, "--param").items()}


__all__ = ["DEFAULT_BACKEND", "INDEX_BACKENDS", "VectorIndex", "create_index", "load_index", "parse_params"]
