"""Search with a distilled dual encoder: index backends, gallery embedding, the cascade and the HTTP service.

- :mod:`~dcd_itr.search.base`: the :class:`VectorIndex` interface (add / search / delete / save / load);
- :mod:`~dcd_itr.search.faiss_backends`, :mod:`~dcd_itr.search.milvus_backend`: the backends, named in
  :data:`~dcd_itr.search.index.INDEX_BACKENDS` (``faiss-flat``, ``faiss-hnsw``,
  ``faiss-ivfflat``, ``faiss-ivfpq``, ``milvus``);
- :mod:`~dcd_itr.search.gallery`, :mod:`~dcd_itr.search.build`: the gallery table and resumable, shardable
  embedding into an index folder (``dcd index build``);
- :mod:`~dcd_itr.search.retriever`: queries and the dual -> cross-encoder cascade (``dcd search``);
- :mod:`~dcd_itr.search.service` (+ ``schemas``, ``http_guards``, ``static/``): the FastAPI app and its page
  (``dcd serve``; needs the ``serve`` extra, so it is not imported here).
"""

from dcd_itr.search.base import VectorIndex
from dcd_itr.search.index import DEFAULT_BACKEND, INDEX_BACKENDS, create_index, load_index

__all__ = ["DEFAULT_BACKEND", "INDEX_BACKENDS", "VectorIndex", "create_index", "load_index"]
