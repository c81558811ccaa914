"""The Milvus backend: the same interface over a Milvus collection, for galleries that outgrow one machine.

``uri`` is either a local Milvus Lite database (a path ending in ``.db``; by default ``milvus.db`` inside the
index folder, stored relative to it so the folder can move) or the URI of a Milvus server or cluster
(``http://host:19530``). Credentials are never written to ``index.json``: a server's token is read from the
``MILVUS_TOKEN`` environment variable. ``pymilvus`` (and ``milvus-lite`` for local files) come with the
``milvus`` extra and are imported only when this backend is used.

Milvus persists every insert and delete itself, so ``save`` only flushes and writes ``index.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dcd_itr.errors import ConfigError, CorruptFileError
from dcd_itr.search.base import METADATA_FILE, MISSING_ID, VectorIndex, empty_results, write_metadata

LITE_FILE = "milvus.db"
INSERT_BATCH = 2048  # rows per insert call: stays far below gRPC's 64 MiB message limit at D <= 2048


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "unix:"))


class MilvusIndex(VectorIndex):
    """A Milvus collection with an INT64 primary key ``id`` and a FLOAT_VECTOR ``vector`` field (IP metric)."""

    backend = "milvus"

    def __init__(
        self,
        dim: int,
        uri: str | None = None,  # None -> Milvus Lite file milvus.db in the folder given to save()/create
        collection: str = "dcd_gallery",  # one gallery per collection
        index_type: str = "AUTOINDEX",  # Lite maps it to exact FLAT; a server picks a suitable ANN index
        search_params: dict[str, Any] | None = None,  # e.g. {"ef": 128} for HNSW, {"nprobe": 32} for IVF
    ) -> None:
        super().__init__(dim)
        if uri is None:
            raise ConfigError("the milvus backend needs a uri (a Milvus Lite .db path or a server URI)")
        self.uri, self.collection, self.index_type = str(uri), collection, index_type
        self.search_params = dict(search_params or {})
        self.client = self._connect()
        if self.client.has_collection(collection):
            self.client.load_collection(collection)  # a reopened collection starts released
        else:
            self._create_collection()

    def _connect(self):
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise ConfigError("the milvus backend needs pymilvus: pip install 'dcd-itr[milvus]'") from None
        try:
            return MilvusClient(self.uri, token=os.environ.get("MILVUS_TOKEN", ""))
        except (
            Exception
        ) as error:  # Milvus raises many types for unreadable databases and unreachable servers
            if _is_server(self.uri):
                raise ConfigError(f"cannot connect to Milvus at {self.uri}: {error}") from None
            raise CorruptFileError(
                self.uri,
                f"Milvus Lite cannot open this database ({error}); it is unreadable, or another process has it "
                "open (Milvus Lite allows one process per database)",
            ) from None

    def _create_collection(self) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name="vector", index_type=self.index_type, metric_type="IP")
        self.client.create_collection(self.collection, schema=schema, index_params=index_params)

    def reset(self) -> None:
        """Drop and recreate the collection (a rebuild starts from nothing)."""
        self.client.drop_collection(self.collection)
        self._create_collection()

    def params(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "collection": self.collection,
            "index_type": self.index_type,
            "search_params": self.search_params,
        }

    def _existing(self, ids: np.ndarray) -> np.ndarray:
        if not ids.size:
            return ids
        rows = self.client.get(self.collection, ids=ids.tolist(), output_fields=["id"])
        return np.asarray(sorted(int(row["id"]) for row in rows), dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = self.check_vectors(vectors)
        ids = self.check_ids(ids, len(vectors))
        clash = self._existing(ids)  # Milvus would silently store a second row under the same key
        if clash.size:
            raise ValueError(f"ids already in the index: {clash[:5].tolist()} (delete them first)")
        for start in range(0, len(ids), INSERT_BATCH):
            rows = [
                {"id": int(i), "vector": v}
                for i, v in zip(
                    ids[start : start + INSERT_BATCH], vectors[start : start + INSERT_BATCH], strict=True
                )
            ]
            self.client.insert(self.collection, rows)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries, k = self.check_vectors(queries, "queries"), self.check_k(k)
        scores, ids = empty_results(len(queries), k)
        if len(self) == 0:
            return scores, ids
        params = {"metric_type": "IP", "params": self.search_params}
        hits = self.client.search(
            self.collection, data=list(queries), limit=k, search_params=params, output_fields=["id"]
        )
        for row, row_hits in enumerate(hits):
            for column, hit in enumerate(row_hits):
                ids[row, column], scores[row, column] = int(hit["id"]), float(hit["distance"])
        scores[ids == MISSING_ID] = -np.inf
        return scores, ids

    def delete(self, ids: np.ndarray) -> int:
        present = self._existing(self.check_ids(ids))
        if present.size:
            self.client.delete(self.collection, ids=present.tolist())
        return int(present.size)

    def __len__(self) -> int:
        result = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def save(self, folder: str | Path) -> None:
        """Flush (a server) and write ``index.json``; a Lite file inside ``folder`` is stored relatively."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if _is_server(self.uri):
            self.client.flush(self.collection)
        params = self.params()
        if not _is_server(self.uri) and Path(self.uri).resolve().parent == folder.resolve():
            params["uri"] = Path(self.uri).name
        write_metadata(folder, {**self.metadata({}), "params": params})

    @classmethod
    def load(cls, folder: Path, metadata: dict[str, Any]) -> MilvusIndex:
        params = dict(metadata["params"])
        uri = str(params.get("uri", LITE_FILE))
        if not _is_server(uri):
            uri = str(folder / uri) if not Path(uri).is_absolute() else uri
            if not Path(uri).exists():
                raise CorruptFileError(uri, f"Milvus Lite database is missing (listed in {METADATA_FILE})")
        index = cls(metadata["dim"], **{**params, "uri": uri})
        if metadata.get("count") is not None and len(index) != metadata["count"] and not _is_server(uri):
            raise CorruptFileError(
                uri, f"holds {len(index)} vectors, {METADATA_FILE} says {metadata['count']}"
            )
        return index

    def close(self) -> None:
        """Disconnect; for Milvus Lite also stop its in-process server so the database folder is unlocked."""
        self.client.close()
        if not _is_server(self.uri):
            try:
                from milvus_lite.server_manager import server_manager_instance
            except ImportError:  # an older milvus-lite that runs a subprocess: closing the client is enough
                return
            server_manager_instance.release_server(self.uri)
