"""Search an index folder: embed the query with the gallery's own dual model, then optionally re-rank (the cascade).

Text queries search an index of images; image queries search an index of captions. With ``rerank=K`` the top K
candidates of the dual stage are re-scored by a cross-encoder (``score_pairs`` on its encoded features) and
re-ordered by that score; candidates below K keep their dual order after them. The cross-encoder's features of
gallery images are cached (a bounded LRU), so repeated queries pay only for the pair scoring.

The index records the fingerprint of the model that embedded it; a retriever refuses a different model. An index
built with ``--cross`` also stores the (grounded) cross-encoder's gallery-side encodings
(:mod:`dcd_itr.search.cross_store`): re-ranking then encodes only the query's text side and runs the vectorised
per-pair part, and a different ``--cross`` is refused naming both.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dcd_itr.errors import CacheMismatchError, ConfigError, DcdError
from dcd_itr.export.runtime import check_runtime, load_dual_encoder
from dcd_itr.interfaces import FeatureBatch, concat_features, slice_features
from dcd_itr.models.end_to_end import EndToEnd
from dcd_itr.models.registry import weights_fingerprint
from dcd_itr.search.cross_store import CROSS_FILE, grounded_scorer, load_cross_store
from dcd_itr.search.gallery import Gallery, dual_fingerprint
from dcd_itr.search.index import load_index

DEFAULT_K = 10  # one screen of results
DEFAULT_IMAGE_CACHE = 4096  # cross-encoder features of this many gallery images stay in memory (~50 MB fused)
# ...and never more than this many bytes of them: raw token grids of a large tower are ~0.5 MB an image, where the
# count bound alone would let the cache reach 2 GB (the service's memory growth under re-rank load)
DEFAULT_IMAGE_CACHE_BYTES = 256 * 2**20


class SearchError(DcdError, ValueError):
    """A search request that cannot be answered as asked (wrong query type for the index, bad k)."""


@dataclass
class SearchHit:
    rank: int  # 1-based position in the returned list
    id: int  # the item's id in the index
    image: int  # the image row it shows (itself for an image index)
    image_id: str  # the dataset's id of that image
    path: str  # that image's file
    text: str | None  # the caption, for a caption index
    captions: list[str]  # every caption of the image, for display
    score: float  # the dual encoder's cosine similarity
    cross_score: float | None = None  # the cross-encoder's logit, when re-ranked


@dataclass
class SearchResult:
    hits: list[SearchHit]
    milliseconds: dict[str, float] = field(default_factory=dict)  # encode / search / rerank / total


def _repeat(features: FeatureBatch, count: int) -> FeatureBatch:
    """One query's features (1, ...) broadcast to ``count`` rows without copying."""
    return {name: value.expand(count, *value.shape[1:]) for name, value in features.items()}


def _nbytes(features: FeatureBatch) -> int:
    return sum(value.nbytes for value in features.values())


class Retriever:
    """An index folder with its dual model and an optional cross-encoder for the cascade."""

    def __init__(
        self,
        folder: str | Path,
        model_dir: str | Path | None = None,  # None -> the model folder recorded in the index
        cross_dir: str | Path | None = None,  # None -> no re-ranking
        device: str = "cpu",  # "cuda" where present
        image_cache_size: int = DEFAULT_IMAGE_CACHE,  # see the constant's reason
        runtime: str = "torch",  # "onnx": the dual model is an export folder run by onnxruntime
        image_cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES,  # see the constant's reason
    ) -> None:
        self.folder, self.device = Path(folder), device
        self.lock = threading.RLock()  # index reads vs deletes and reloads
        # Models run one request at a time: fast tokenizers are not thread-safe ("RuntimeError: Already
        # borrowed" under concurrent calls), and one CPU forward already uses every core.
        self.model_lock = threading.Lock()
        self._image_cache: OrderedDict[int, FeatureBatch] = OrderedDict()
        self._image_cache_size = image_cache_size
        self._image_cache_bytes_limit, self.image_cache_bytes = image_cache_bytes, 0
        self._load_index()
        self.runtime = check_runtime(runtime)
        self.model_dir = Path(model_dir or self.gallery.model_dir)
        found = dual_fingerprint(self.model_dir)
        if found != self.gallery.model_fingerprint:
            raise CacheMismatchError(
                f"{self.folder} was built by the model with fingerprint {self.gallery.model_fingerprint[:16]}, "
                f"but {self.model_dir} has {found[:16]}: queries would not be comparable with the gallery; "
                f"rebuild the index (dcd index build --model {self.model_dir}) or load the model that built it"
            )
        self.dual = load_dual_encoder(self.model_dir, runtime, device)
        self.cross = EndToEnd.load(cross_dir, device) if cross_dir else None
        if self.cross is not None and not hasattr(self.cross.model, "score_pairs"):
            raise ConfigError(f"{cross_dir} is not a cross-encoder; re-ranking needs one (score_pairs)")
        self.cross_dir, self.cross_store, self.cross_scorer = cross_dir, None, None
        self._load_cross_store()

    def _load_cross_store(self) -> None:
        """The index's stored gallery-side encodings of ``--cross``, checked against it (see cross_store)."""
        store = load_cross_store(self.folder) if self.cross is not None else None
        if store is not None:
            store.check(
                self.cross_dir, weights_fingerprint(self.cross_dir), self.gallery, self.folder / CROSS_FILE
            )
            self.cross_scorer = grounded_scorer(self.cross, self.cross_dir)
        self.cross_store = store

    def warm_up(self) -> float:
        """Run one query through every model (dual and, when loaded, the cross-encoder's re-rank path) so that the
        first requests do not pay for first-call kernel set-up and allocator growth; returns the seconds taken."""
        started = time.perf_counter()
        rerank = 1 if self.cross is not None and len(self.gallery) else 0
        if self.gallery.side == "images":
            self.search_text("warm up", k=1, rerank=rerank)
        else:
            self.search_image(Image.new("RGB", (64, 64), "grey"), k=1, rerank=rerank)
        return time.perf_counter() - started

    def _load_index(self) -> None:
        gallery, index = Gallery.load(self.folder), load_index(self.folder)
        with self.lock:
            self.gallery, self.index = gallery, index
            self._image_cache.clear()
            self.image_cache_bytes = 0

    def reload(self) -> None:
        """Re-read the index folder (after a rebuild by the same model)."""
        old = self.gallery.model_fingerprint
        self._load_index()
        if self.gallery.model_fingerprint != old:
            raise CacheMismatchError(f"{self.folder} was rebuilt by another model; restart the service")
        self._load_cross_store()

    def delete(self, ids: list[int]) -> int:
        """Remove items from the index and save it; returns how many were present."""
        with self.lock:
            removed = self.index.delete(np.asarray(ids, dtype=np.int64))
            if removed:
                self.index.save(self.folder)
            return removed

    # ------------------------------------------------------------------ queries

    def search_text(self, query: str, k: int = DEFAULT_K, rerank: int = 0) -> SearchResult:
        """Text -> images; ``rerank`` > 0 re-scores the top ``rerank`` with the cross-encoder."""
        if self.gallery.side != "images":
            raise SearchError("this index holds captions: query it with an image, or index images for text")
        if not query.strip():
            raise SearchError("the query is empty")
        self._check_request(k, rerank)
        started = time.perf_counter()
        with self.model_lock:
            embedding = self.dual.encode_texts([query])["embedding"]  # (1, D)
            cross_query = self._cross_text_query(query) if rerank and self.cross else None
        return self._search(embedding, k, rerank, cross_query, started)

    @torch.inference_mode()
    def _cross_text_query(self, query: str) -> FeatureBatch:
        """The query's cross-encoder text side: the split scorer's encodings when the gallery side is stored."""
        if self.cross_scorer is not None:
            return self.cross_scorer.encode_texts(self.cross.tower_text_features([query]))
        return self.cross.encode_texts([query])

    def search_image(
        self, image: Image.Image | str | Path, k: int = DEFAULT_K, rerank: int = 0
    ) -> SearchResult:
        """Image (PIL or path) -> captions; ``rerank`` as for :meth:`search_text`."""
        if self.gallery.side != "captions":
            raise SearchError("this index holds images: query it with text, or index captions for images")
        self._check_request(k, rerank)
        started = time.perf_counter()
        with self.model_lock:
            embedding = self.dual.encode_images([image])["embedding"]  # (1, D)
            cross_query = self.cross.encode_images([image]) if rerank and self.cross else None
        return self._search(embedding, k, rerank, cross_query, started)

    def _check_request(self, k: int, rerank: int) -> None:
        if not isinstance(k, int) or k < 1 or not isinstance(rerank, int) or rerank < 0:
            raise SearchError(f"k must be >= 1 and rerank >= 0, got k={k!r}, rerank={rerank!r}")
        if rerank and self.cross is None:
            raise SearchError("re-ranking needs a cross-encoder (start with --cross MODEL_DIR)")

    def _search(
        self, embedding: torch.Tensor, k: int, rerank: int, cross_query: FeatureBatch | None, started: float
    ) -> SearchResult:
        if embedding.shape[-1] != self.index.dim:
            raise CacheMismatchError(
                f"the model embeds in {embedding.shape[-1]}-d, the index holds {self.index.dim}-d"
            )
        encoded = time.perf_counter()
        with self.lock:
            scores, ids = self.index.search(embedding.float().cpu().numpy(), max(k, rerank))
            gallery = self.gallery
        searched = time.perf_counter()
        hits = [
            self._hit(gallery, int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0
        ]
        if rerank and hits:
            head = hits[:rerank]
            with self.model_lock:
                logits = self._cross_scores(head, cross_query).tolist()  # (K,)
            for hit, logit in zip(head, logits, strict=True):
                hit.cross_score = logit
            by_cross = sorted(head, key=lambda hit: -hit.cross_score)  # stable: ties keep the dual order
            hits = by_cross + hits[rerank:]
        hits = hits[:k]
        for rank, hit in enumerate(hits, start=1):
            hit.rank = rank
        done = time.perf_counter()
        timings = {
            "encode": encoded - started,
            "search": searched - encoded,
            "rerank": done - searched,
            "total": done - started,
        }
        return SearchResult(hits, {name: round(1000 * value, 3) for name, value in timings.items()})

    def _hit(self, gallery: Gallery, item_id: int, score: float) -> SearchHit:
        row = gallery.image_row(item_id)
        text = gallery.item_texts[item_id] if gallery.side == "captions" else None
        return SearchHit(
            0,
            item_id,
            row,
            gallery.image_ids[row],
            gallery.image_paths[row],
            text,
            gallery.image_captions[row],
            score,
        )

    @torch.inference_mode()
    def _cross_scores(self, hits: list[SearchHit], query: FeatureBatch) -> torch.Tensor:
        """Cross-encoder logits (K,) of the query against each hit's image or caption."""
        if (
            self.cross_store is not None and self.gallery.side == "images"
        ):  # stored gallery side: per-pair only
            rows = torch.tensor([hit.image for hit in hits], dtype=torch.long)
            scores = self.cross_scorer.score(self.cross_store.features, query, rows, torch.zeros_like(rows))
            return scores.float().cpu()
        if self.gallery.side == "images":
            images, texts = self._cross_image_features([hit.image for hit in hits]), _repeat(query, len(hits))
        else:
            images, texts = _repeat(query, len(hits)), self.cross.encode_texts([hit.text for hit in hits])
        return self.cross.score_pairs(images, texts).float().cpu()

    def _cross_image_features(self, rows: list[int]) -> FeatureBatch:
        """The cross-encoder's features of gallery image rows, encoding only those not cached."""
        with self.lock:
            known = {row: self._image_cache[row] for row in rows if row in self._image_cache}
        missing = [row for row in dict.fromkeys(rows) if row not in known]
        if missing:
            encoded = self.cross.encode_images([self.gallery.image_paths[row] for row in missing])
            for position, row in enumerate(missing):
                one = slice_features(encoded, slice(position, position + 1))
                known[row] = {name: value.clone() for name, value in one.items()}  # free the batch tensor
        with self.lock:
            for row, features in known.items():
                if row not in self._image_cache:
                    self.image_cache_bytes += _nbytes(features)
                self._image_cache[row] = features
                self._image_cache.move_to_end(row)
            while self._image_cache and (
                len(self._image_cache) > self._image_cache_size
                or self.image_cache_bytes > self._image_cache_bytes_limit
            ):
                self.image_cache_bytes -= _nbytes(self._image_cache.popitem(last=False)[1])
        return concat_features([known[row] for row in rows])
