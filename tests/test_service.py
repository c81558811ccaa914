"""Tests for the HTTP service through FastAPI's test client: happy paths, bad requests, the page, the docs.

Every user mistake must be a 4xx with a ``detail``; the test client re-raises server exceptions, so a 500 would
fail these tests loudly.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search_fixtures import built_index, cached_retriever, png_bytes, upload

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install 'dcd-itr[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from dcd_itr.search.retriever import Retriever  # noqa: E402
from dcd_itr.search.schemas import ServiceLimits  # noqa: E402
from dcd_itr.search.service import create_app  # noqa: E402

SMALL = ServiceLimits(max_upload_bytes=4096, max_upload_pixels=100_000)


@pytest.fixture(scope="session")
def image_retriever(tmp_path_factory):
    return cached_retriever(tmp_path_factory, "images")


@pytest.fixture(scope="session")
def client(image_retriever):
    return TestClient(create_app(image_retriever))


@pytest.fixture(scope="session")
def caption_client(tmp_path_factory):
    return TestClient(create_app(cached_retriever(tmp_path_factory, "captions"), limits=SMALL))


# ----------------------------------------------------------------------------- happy paths


def test_health_page_and_docs(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["side"] == "images" and health["items"] == 11
    assert health["rerank_available"] is True and health["limits"]["max_k"] == 100
    page = client.get("/")
    assert (
        page.status_code == 200
        and 'id="query"' in page.text
        and "script-src 'self'" in page.headers["content-security-policy"]
    )
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/search/text", "/search/image", "/images/{row}", "/health"} <= set(schema["paths"])
    assert schema["components"]["schemas"]["TextQuery"]["properties"]["query"]["maxLength"] == 256


def test_text_search_equals_the_retriever(client, image_retriever):
    response = client.post("/search/text", json={"query": "a green square", "k": 4})
    assert response.status_code == 200
    body = response.json()
    direct = image_retriever.search_text("a green square", 4)
    assert [h["id"] for h in body["hits"]] == [h.id for h in direct.hits]
    assert body["hits"][0]["image_url"] == f"/images/{direct.hits[0].image}" and "path" not in body["hits"][0]
    assert body["milliseconds"]["total"] > 0 and body["rerank"] == 0


def test_text_search_with_rerank(client):
    body = client.post("/search/text", json={"query": "the colour pink", "k": 3, "rerank": 8}).json()
    scores = [h["cross_score"] for h in body["hits"]]
    assert len(scores) == 3 and None not in scores and scores == sorted(scores, reverse=True)


def test_image_search_on_captions(caption_client):
    response = upload(caption_client, png_bytes(), k="3", rerank="2")
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert len(hits) == 3 and all(h["text"] for h in hits) and hits[0]["cross_score"] is not None
    assert upload(caption_client, png_bytes(fmt="JPEG"), "image/jpeg").status_code == 200


def test_gallery_image_is_served(client, image_retriever):
    response = client.get("/images/2")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with open(image_retriever.gallery.image_paths[2], "rb") as stream:
        assert response.content == stream.read()
    assert response.headers["x-content-type-options"] == "nosniff"


# ----------------------------------------------------------------------------- bad input -> 4xx


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"query": ""},
        {"query": "   \n\t"},
        {"query": "x" * 257},
        {"query": 5},
        {"query": ["a"]},
        {"query": "a", "k": 0},
        {"query": "a", "k": 101},
        {"query": "a", "k": -3},
        {"query": "a", "k": "5"},
        {"query": "a", "k": 1.5},
        {"query": "a", "k": True},
        {"query": "a", "k": None},
        {"query": "a", "rerank": -1},
        {"query": "a", "rerank": 65},
        {"query": "a", "rerank": "yes"},
        {"query": "a", "unexpected": 1},
        [],
        "a red car",
        None,
    ],
)
def test_bad_text_queries_are_422(client, body):
    response = client.post("/search/text", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"query": "\\ud800"}', "application/json", 422),  # a lone surrogate
        (b'{"query": "a",', "application/json", 422),  # truncated JSON
        (b"\xff\xfe\x00garbage", "application/json", 422),
        (b"query=a", "application/x-www-form-urlencoded", 422),
        (b'{"query": "a"}', "text/plain", 422),
        (b"{" + b" " * (70 * 1024) + b"}", "application/json", 413),  # over the JSON body limit
    ],
)
def test_malformed_bodies_are_4xx(client, content, content_type, status):
    response = client.post("/search/text", content=content, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text


def test_requests_the_index_cannot_answer_are_400(client, caption_client, image_retriever):
    no_cross = TestClient(create_app(Retriever(image_retriever.folder)))
    response = no_cross.post("/search/text", json={"query": "a", "rerank": 4})
    assert response.status_code == 400 and "without --cross" in response.json()["detail"]
    response = caption_client.post("/search/text", json={"query": "a red square"})
    assert response.status_code == 400 and "holds captions" in response.json()["detail"]
    assert upload(client, png_bytes()).status_code == 400  # an image query on an index of images


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    query=st.one_of(
        st.text(max_size=300), st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2)
    ),
    k=st.one_of(st.integers(-5, 200), st.text(max_size=3), st.floats(allow_nan=True), st.booleans()),
    rerank=st.one_of(st.integers(-5, 100), st.none()),
)
def test_any_json_request_is_answered_or_refused_never_crashes(client, query, k, rerank):
    body = json.dumps(
        {"query": query, "k": k, "rerank": rerank}
    )  # NaN / Infinity as a lax client writes them
    response = client.post("/search/text", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 400, 422), response.text


def test_concurrent_queries_give_the_sequential_answers(image_retriever):
    """Many threads at once (as uvicorn's thread pool runs them): no tokenizer race, the same results."""
    queries = [f"a {colour} square" for colour in ("red", "green", "blue", "pink")] * 3
    expected = {q: [h.id for h in image_retriever.search_text(q, 5, 3).hits] for q in set(queries)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda q: image_retriever.search_text(q, 5, 3), queries))
    assert [[h.id for h in r.hits] for r in results] == [expected[q] for q in queries]


def test_serve_binds_loopback_by_default(monkeypatch, tmp_path_factory):
    import uvicorn

    from dcd_itr.cli import build_parser

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    index = built_index(tmp_path_factory, "images")
    args = build_parser().parse_args(["serve", "--index", str(index)])
    assert args.host == "127.0.0.1" and args.cors_origin is None and args.api_key is None
    args.handler(args)
    assert (
        calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 8000 and calls[0]["limit_concurrency"] == 64
    )
