"""The service under re-rank load: warm-up at start-up, a byte-bounded cross-encoder cache, and a bounded load
test (loopback only: 20 clients for a few seconds against an in-process server with the tiny cascade)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest

from dcd_itr.search.loadtest import rss_bytes, run_load
from dcd_itr.search.retriever import Retriever
from search_fixtures import COLOUR_NAMES, built_index, tiny_setup

MIB = 2**20
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_setup(tmp_path_factory)


@contextlib.contextmanager
def running_server(app):
    """uvicorn on 127.0.0.1 in a thread of this process; yields the base URL, stops on exit."""
    uvicorn = pytest.importorskip("uvicorn")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_warm_up_runs_every_model_once(tiny, tmp_path_factory):
    for side in ("images", "captions"):
        retriever = Retriever(built_index(tmp_path_factory, side), cross_dir=tiny.cross)
        assert retriever.warm_up() > 0
        if side == "images":  # the re-rank path ran: one gallery image's cross features are cached
            assert len(retriever._image_cache) == 1


def test_cross_feature_cache_is_bounded_in_bytes_and_keeps_results(tiny, tmp_path_factory):
    index = built_index(tmp_path_factory, "images")
    unbounded = Retriever(index, cross_dir=tiny.cross)
    reference = unbounded.search_text("a red square", k=8, rerank=8)
    one_entry = unbounded.image_cache_bytes // len(unbounded._image_cache)
    bounded = Retriever(index, cross_dir=tiny.cross, image_cache_bytes=2 * one_entry)
    for colour in COLOUR_NAMES:  # many distinct candidates: the cache must keep evicting
        bounded.search_text(f"the colour {colour}", k=8, rerank=8)
    assert len(bounded._image_cache) == 2 and bounded.image_cache_bytes <= 2 * one_entry
    result = bounded.search_text("a red square", k=8, rerank=8)
    assert [hit.id for hit in result.hits] == [hit.id for hit in reference.hits]
    assert [hit.cross_score for hit in result.hits] == pytest.approx([h.cross_score for h in reference.hits])


def test_service_under_rerank_load_answers_everything_within_a_memory_ceiling(tiny, tmp_path_factory):
    pytest.importorskip("httpx")
    from dcd_itr.search.service import create_app

    retriever = Retriever(built_index(tmp_path_factory, "images"), cross_dir=tiny.cross)
    retriever.warm_up()
    queries = [f"{article} {colour} square" for colour in COLOUR_NAMES for article in ("a", "the")]
    with running_server(create_app(retriever)) as base_url:
        run_load(base_url, queries, clients=2, seconds=3, max_requests=20, rerank=8)  # allocator warm-up
        before = rss_bytes(os.getpid())
        result = run_load(base_url, queries, clients=20, seconds=3, max_requests=3000, rerank=8)
        after = rss_bytes(os.getpid())
    summary = result.summary()
    print("rerank load:", summary)
    assert result.requests >= 20 and result.errors == 0, result.statuses
    assert (after - before) / MIB < 64, f"RSS grew by {(after - before) / MIB:.0f} MiB under load"
