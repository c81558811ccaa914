"""A bounded load generator for ``dcd serve``, and a synthetic index to point it at.

- :func:`build_synthetic_index`: a tiny dual model with random weights (a 2-layer BERT text tower, a 2-stage
  ResNet image tower: query latency depends on the architecture, not on the weights) and an index of
  ``num_vectors`` random unit vectors of its dimension, with a gallery of fake captions. No dataset needed.
- :func:`run_load`: ``clients`` concurrent loops of ``POST /search/text`` until ``seconds`` have passed or
  ``max_requests`` were sent, whichever comes first; every latency and status is recorded. Loopback only: a
  load test is never pointed at another machine by accident.
- :func:`rss_bytes`: a process's resident memory, from ``/proc``.

``benchmarks/load.py`` puts the three together; the tests run them small.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TEXT_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "the",
    "red",
    "green",
    "blue",
    "square",
    "dog",
]


@dataclass
class LoadResult:
    """What :func:`run_load` saw: one latency per completed request, and every status (or error name)."""

    seconds: float
    latencies_ms: list[float] = field(default_factory=list)  # completed requests, any status
    statuses: Counter = field(default_factory=Counter)  # 200, 422, ... or an exception's class name

    @property
    def requests(self) -> int:
        """Requests answered or failed."""
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        """Requests that did not get a 200 (other statuses and connection errors)."""
        return self.requests - self.statuses.get(200, 0)

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        """Counts, throughput and latency percentiles (ms) as one flat dict."""
        latencies = np.asarray(self.latencies_ms or [float("nan")])
        return {
            "requests": self.requests,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.requests / self.seconds, 2) if self.seconds else 0.0,
            "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2),
            "latency_ms_p90": round(float(np.percentile(latencies, 90)), 2),
            "latency_ms_p99": round(float(np.percentile(latencies, 99)), 2),
            "latency_ms_max": round(float(latencies.max()), 2),
        }


def check_loopback(base_url: str) -> None:
    """Refuse (ValueError) any URL whose host is not the loopback interface."""
    host = urlparse(base_url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"load tests run on loopback only; {base_url!r} points at {host!r}")


async def _client_loop(
    client, queries: list[str], k: int, deadline: float, budget: list[int], result, rerank: int = 0
) -> None:
    """One client: send, wait for the answer, send the next, until the deadline or the shared budget is spent."""
    index = 0
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        query = queries[index % len(queries)]
        index += 1
        started = time.perf_counter()
        try:
            response = await client.post("/search/text", json={"query": query, "k": k, "rerank": rerank})
            result.statuses[response.status_code] += 1
        except Exception as error:  # a refused or reset connection counts as an error, not a crash
            result.statuses[type(error).__name__] += 1
        result.latencies_ms.append(1000 * (time.perf_counter() - started))


async def _run(base_url, queries, clients, seconds, max_requests, k, request_timeout, rerank=0) -> LoadResult:
    """The clients on one event loop, sharing one connection pool and one request budget."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=request_timeout) as client:
        result = LoadResult(seconds=0.0)
        budget = [max_requests]  # shared across the clients (one event loop: no lock needed)
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(
            *(_client_loop(client, queries, k, deadline, budget, result, rerank) for _ in range(clients))
        )
        result.seconds = time.monotonic() - started
        return result


def run_load(
    base_url: str,
    queries: list[str],
    clients: int = 20,  # the setting: 20 concurrent users
    seconds: float = 30.0,  # time bound
    max_requests: int = 100_000,  # count bound: whichever bound is reached first ends the test
    k: int = 10,  # results per query: one screen
    request_timeout: float = 30.0,  # a request slower than this counts as an error
    rerank: int = 0,  # re-score the top ``rerank`` with the server's cross-encoder (0: the dual ranking alone)
) -> LoadResult:
    """Closed-loop load: each of ``clients`` sends its next query as soon as the previous one is answered."""
    check_loopback(base_url)
    if not queries:
        raise ValueError("give at least one query")
    return asyncio.run(_run(base_url, queries, clients, seconds, max_requests, k, request_timeout, rerank))


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def build_tiny_dual_model(folder: Path, embed_dim: int = 64, seed: int = 0) -> Path:
    """A dual model folder with random tiny towers (saved beside it); returns the model folder."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, BertTokenizer, ResNetConfig, ResNetModel

    from dcd_itr.models.dual import DualConfig, DualEncoderModel
    from dcd_itr.models.registry import save_model_description

    torch.manual_seed(seed)
    image_tower, text_tower, model_dir = folder / "resnet", folder / "bert", folder / "dual"
    ResNetModel(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ).save_pretrained(image_tower)
    BertTokenizer(vocab={token: i for i, token in enumerate(TEXT_VOCAB)}).save_pretrained(text_tower)
    bert = BertConfig(
        vocab_size=len(TEXT_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(bert).save_pretrained(text_tower)
    config = DualConfig(
        image_view=f"hf:{image_tower}@32",
        text_view=f"hf:{text_tower}@16",
        image_dim=16,
        text_dim=32,
        embed_dim=embed_dim,
        hidden_dim=64,
        dropout=0.0,
    )
    model = DualEncoderModel(config).eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    save_model_description(model, model_dir)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(model_dir / "model.safetensors"))
    return model_dir


def build_synthetic_index(
    folder: Path, num_vectors: int = 100_000, embed_dim: int = 64, seed: int = 0
) -> Path:
    """``folder/index``: ``num_vectors`` random unit vectors in a faiss-flat index, searchable by the tiny model
    in ``folder/dual`` (same dimension); the gallery's image files do not exist (text search never reads them)."""
    from dcd_itr.models.registry import weights_fingerprint
    from dcd_itr.search.gallery import Gallery
    from dcd_itr.search.index import create_index

    folder = Path(folder)
    model_dir = build_tiny_dual_model(folder, embed_dim, seed)
    vectors = np.random.default_rng(seed).standard_normal((num_vectors, embed_dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, D) unit rows
    index = create_index("faiss-flat", embed_dim)
    index.add(np.arange(num_vectors, dtype=np.int64), vectors)
    out = folder / "index"
    index.save(out)
    gallery = Gallery(
        side="images",
        image_ids=[str(i) for i in range(num_vectors)],
        image_paths=[str(out / "images" / f"{i}.png") for i in range(num_vectors)],
        image_captions=[[f"synthetic item {i}"] for i in range(num_vectors)],
        item_texts=[],
        item_images=[],
        model_dir=str(model_dir.resolve()),
        model_fingerprint=weights_fingerprint(model_dir),
        source={"data": "synthetic random unit vectors", "split": json.dumps({"seed": seed})},
    )
    gallery.save(out)
    return out


def synthetic_queries(count: int = 64, seed: int = 0) -> list[str]:
    """Short text queries from the tiny tower's vocabulary (and some unknown words), varied in length."""
    rng = np.random.default_rng(seed)
    words = TEXT_VOCAB[5:] + ["purple", "cat", "emoji"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 8)))) for _ in range(count)]
