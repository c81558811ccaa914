"""Load test of the search service: `dcd serve` on 127.0.0.1 over a 100K-vector index, with 20 concurrent clients
sending text queries for 30 s from a second process (this one), optionally re-ranking each query's top K.

    python benchmarks/load.py [--vectors 100000] [--clients 20] [--seconds 30] [--max-requests 100000]
                              [--rerank 8] [--rss-growth-bound-mib 64] [--results benchmarks/results]

The index holds random unit vectors (faiss-flat, exact search) and the dual model is tiny with random weights:
a query's cost is the text tower, the exact search over every vector, and the HTTP path — none depends on the
values. With ``--rerank K`` the server also loads a tiny fusion cross-encoder (``dcd serve --cross``) and re-scores
each query's top K: the gallery points at 2,048 small PNGs on disk, so most candidates miss the server's
cross-feature cache and are encoded by the cross-encoder's image tower, as for a real gallery. The server's
resident memory is read from /proc before the load (after a warm-up) and after it, and sampled every second; the
run passes when no request fails and the growth stays under the stated bound. Writes load.json and load.md
(load_rerank.* with --rerank) under --results. Exits 1 when the run fails its bounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.speed.service_load import rss_bytes, run_load, synthetic_queries
from dcd_itr.speed.tiny_model import build_synthetic_index, build_tiny_cross_model

MIB = 2**20
IMAGE_FILES = (
    2048  # gallery PNGs when re-ranking (item i shows file i % 2048); the server's cross-feature cache
)
# keys on gallery rows (100K of them), so most re-ranked candidates miss it and are encoded, as for a real gallery


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(index: Path, port: int, log: Path, cross: Path | None = None) -> subprocess.Popen:
    """`dcd serve` in its own process; returns once /health answers (or raises with the server's log)."""
    command = [sys.executable, "-m", "dcd_itr.cli", "serve", "--index", str(index), "--port", str(port)]
    command += ["--cross", str(cross)] if cross else []
    with open(log, "wb") as stream:
        server = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"dcd serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError("dcd serve did not answer /health within 300 s")


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM (uvicorn's graceful shutdown), then SIGKILL after 30 s."""
    server.terminate()  # uvicorn shuts down gracefully on SIGTERM
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=30)


def sample_rss(pid: int, samples: list[tuple[float, int]], stop: threading.Event, every: float = 1.0) -> None:
    """Append (seconds, RSS bytes) of ``pid`` every ``every`` seconds until ``stop`` is set."""
    started = time.monotonic()
    while not stop.wait(every):
        samples.append((round(time.monotonic() - started, 1), rss_bytes(pid)))


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    """Build the index, start the server, warm up, run the load and read the memory; one result row."""
    load_before = [round(v, 2) for v in os.getloadavg()]
    started = time.perf_counter()
    index = build_synthetic_index(
        workdir, args.vectors, args.dim, image_files=IMAGE_FILES if args.rerank else 0
    )
    cross = build_tiny_cross_model(workdir) if args.rerank else None
    build_seconds = time.perf_counter() - started
    port = free_port()
    server = start_server(index, port, workdir / "server.log", cross)
    try:
        base_url, queries = f"http://127.0.0.1:{port}", synthetic_queries(64)
        warm = run_load(
            base_url, queries, clients=2, seconds=10, max_requests=args.warmup, rerank=args.rerank
        )
        rss_before = rss_bytes(server.pid)
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(server.pid, samples, stop), daemon=True)
        sampler.start()
        result = run_load(
            base_url, queries, args.clients, args.seconds, args.max_requests, rerank=args.rerank
        )
        stop.set()
        sampler.join()
        rss_after = rss_bytes(server.pid)
    finally:
        stop_server(server)
    half = [rss for t, rss in samples if t >= args.seconds / 2] or [rss_after]
    growth_mib = (rss_after - rss_before) / MIB
    summary = result.summary()
    return {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
        },
        "setting": {
            "vectors": args.vectors,
            "dim": args.dim,
            "backend": "faiss-flat",
            "clients": args.clients,
            "seconds": args.seconds,
            "max_requests": args.max_requests,
            "k": 10,
            "rerank": args.rerank,
            "image_files": IMAGE_FILES if args.rerank else 0,
            "warmup_requests": warm.requests,
            "index_build_seconds": round(build_seconds, 1),
        },
        **summary,
        "server_rss_mib_before": round(rss_before / MIB, 1),
        "server_rss_mib_after": round(rss_after / MIB, 1),
        "server_rss_mib_peak": round(max([rss for _, rss in samples] + [rss_after]) / MIB, 1),
        "server_rss_growth_mib": round(growth_mib, 1),
        "server_rss_growth_second_half_mib": round((rss_after - half[0]) / MIB, 1),
        "rss_growth_bound_mib": args.rss_growth_bound_mib,
        "rss_samples_mib": [(t, round(rss / MIB, 1)) for t, rss in samples],
        "passed": summary["errors"] == 0 and growth_mib <= args.rss_growth_bound_mib,
    }


def markdown(row: dict) -> str:
    """The result row as the Markdown summary in benchmarks/results/load.md."""
    setting, machine = row["setting"], row["machine"]
    rerank_option = f" --rerank {setting['rerank']}" if setting.get("rerank") else ""
    reranked = (
        f", each query's top {setting['rerank']} re-ranked by a tiny fusion cross-encoder (images read from "
        f"{setting['image_files']:,} PNGs on disk)"
        if setting.get("rerank")
        else ""
    )
    return "\n".join(
        [
            f"Load test of `dcd serve` (127.0.0.1): {setting['clients']} concurrent clients sending text queries "
            f"(k={setting['k']}) for {setting['seconds']:g} s against {setting['vectors']:,} random unit vectors "
            f"(dim {setting['dim']}, {setting['backend']}), tiny dual model with random weights{reranked}. "
            f"{machine['cpu_count']} CPUs, {machine['platform']}; load average before the run "
            f"{machine['load_average_before']} (the machine is shared).",
            "",
            "| requests | errors | throughput (req/s) | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {row['requests']} | {row['errors']} | {row['throughput_rps']} | {row['latency_ms_p50']} "
            f"| {row['latency_ms_p90']} | {row['latency_ms_p99']} | {row['latency_ms_max']} |",
            "",
            f"Server memory (RSS): {row['server_rss_mib_before']} MiB after warm-up, {row['server_rss_mib_after']} "
            f"MiB after the run (peak {row['server_rss_mib_peak']} MiB): growth {row['server_rss_growth_mib']} MiB "
            f"({row['server_rss_growth_second_half_mib']} MiB in the second half), bound "
            f"{row['rss_growth_bound_mib']} MiB. Status counts: {row['statuses']}. "
            f"{'PASSED' if row['passed'] else 'FAILED'}.",
            "",
            f"Command: `python benchmarks/load.py{rerank_option}` (other options at their defaults, above).",
            "",
        ]
    )


def main() -> None:
    """Parse the options, run, write load.json and load.md; exit 1 when the bounds are not met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=50, help="requests before the memory baseline")
    parser.add_argument("--rerank", type=int, default=0, help="re-rank each query's top K (0: dual only)")
    parser.add_argument("--rss-growth-bound-mib", type=float, default=64.0)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dcd-load-") as workdir:
        row = measure(args, Path(workdir))
    name = "load_rerank" if args.rerank else "load"
    write_json_atomic(args.results / f"{name}.json", row)
    write_text_atomic(args.results / f"{name}.md", markdown(row))
    print(markdown(row))
    sys.exit(0 if row["passed"] else 1)


if __name__ == "__main__":
    main()
