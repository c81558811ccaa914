"""A bounded load generator for ``dcd serve`` (point it at :func:`dcd_itr.speed.tiny_model.build_synthetic_index`).

- :func:`run_load`: ``clients`` concurrent loops of ``POST /search/text`` until ``seconds`` have passed or
  ``max_requests`` were sent, whichever comes first; every latency and status is recorded. Loopback only: a
  load test is never pointed at another machine by accident.
- :func:`rss_bytes`: a process's resident memory, from ``/proc``.
- :func:`synthetic_queries`: short text queries in the tiny model's vocabulary.

``benchmarks/load.py`` puts them together with the synthetic index; the tests run them small.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from dcd_itr.speed.tiny_model import TEXT_VOCAB

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


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


def synthetic_queries(count: int = 64, seed: int = 0) -> list[str]:
    """Short text queries from the tiny tower's vocabulary (and some unknown words), varied in length."""
    rng = np.random.default_rng(seed)
    words = TEXT_VOCAB[5:] + ["purple", "cat", "emoji"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 8)))) for _ in range(count)]
