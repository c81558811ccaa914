"""Tests for the service's guards: upload limits and types, gallery-only files, the admin key, CORS.

Each test fails if its protection is removed (see the comments on what is being refused).
"""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import pytest
from PIL import Image

from search_fixtures import png_bytes, upload

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install 'dcd-itr[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from dcd_itr.search.gallery import Gallery  # noqa: E402
from dcd_itr.search.retriever import Retriever  # noqa: E402
from dcd_itr.search.schemas import ServiceLimits  # noqa: E402
from dcd_itr.search.service import create_app  # noqa: E402

SMALL = ServiceLimits(max_upload_bytes=4096, max_upload_pixels=100_000)


@pytest.fixture(scope="session")
def image_retriever(tiny_retriever):
    return tiny_retriever("images")


@pytest.fixture(scope="session")
def caption_retriever(tiny_retriever):
    return tiny_retriever("captions")


@pytest.fixture(scope="session")
def client(image_retriever):
    return TestClient(create_app(image_retriever))


@pytest.fixture(scope="session")
def caption_client(caption_retriever):
    return TestClient(create_app(caption_retriever, limits=SMALL))


# ----------------------------------------------------------------------------- uploads


@pytest.mark.parametrize(
    ("data", "content_type", "status", "message"),
    [
        (png_bytes(), "text/plain", 415, "unsupported upload type"),
        (png_bytes(), "application/octet-stream", 415, "unsupported upload type"),
        (png_bytes(fmt="JPEG"), "image/png", 415, "holds JPEG"),
        (b"not an image at all", "image/png", 400, "not an image"),
        (png_bytes()[:60], "image/png", 400, "cannot use the uploaded image"),  # truncated
        (b"", "image/png", 400, "empty"),
        (png_bytes(size=(400, 400)), "image/png", 400, "over the limit of 100000"),  # too many pixels
        (os.urandom(5000), "image/png", 413, "over the limit"),  # bytes over the upload limit
    ],
    ids=["text", "octet", "mislabelled", "garbage", "truncated", "empty", "pixels", "bytes"],
)
def test_bad_uploads(caption_client, data, content_type, status, message):
    response = upload(caption_client, data, content_type)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_oversized_upload_is_refused_before_it_is_read(caption_retriever):
    """A Content-Length over the limit is answered without reading the body; a chunked one is cut off."""
    received = []

    class Spy:  # outermost: records every body message the service asks for
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            async def spy_receive():
                message = await receive()
                received.append(len(message.get("body", b"")))
                return message

            await self.app(scope, spy_receive, send)

    app = create_app(caption_retriever, limits=SMALL)
    client = TestClient(Spy(app))
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    response = client.post("/search/image", content=b"x" * (SMALL.max_upload_bytes * 50), headers=multipart)
    assert response.status_code == 413 and "over the limit" in response.json()["detail"]
    assert received == []  # refused on the header alone

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(50):
            yield b"y" * SMALL.max_upload_bytes

    assert client.post("/search/image", content=chunks(), headers=multipart).status_code == 413


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"k": "0"}, 422),
        ({"k": "101"}, 422),
        ({"k": "ten"}, 422),
        ({"rerank": "65"}, 422),
        ({"rerank": "-1"}, 422),
    ],
)
def test_upload_form_bounds(caption_client, form, status):
    assert upload(caption_client, png_bytes(), **form).status_code == status


def test_upload_without_a_file_is_422(caption_client):
    assert caption_client.post("/search/image", data={"k": "3"}).status_code == 422


# ----------------------------------------------------------------------------- /images: gallery files only


@pytest.mark.parametrize(
    "path",
    [
        "/images/..%2F..%2F..%2Fetc%2Fpasswd",
        "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/images/..%252F..%252Fetc%252Fpasswd",
        "/images/../../../etc/passwd",
        "/images/0/../../../etc/passwd",
        "/images/%2Fetc%2Fpasswd",
        "/images/0%00.png",
        "/images/img0.png",
        "/images/-1",
        "/images/11",
        "/images/99999999999999999999999",
    ],
)
def test_image_route_refuses_anything_but_gallery_rows(client, path):
    response = client.get(path)
    assert 400 <= response.status_code < 500, (path, response.status_code)
    assert b"root:" not in response.content


def test_symlinks_out_of_the_gallery_are_refused(tmp_path):
    gallery_dir, outside = tmp_path / "gallery", tmp_path / "secret"
    gallery_dir.mkdir()
    outside.mkdir()
    Image.new("RGB", (4, 4)).save(gallery_dir / "ok.png")
    Image.new("RGB", (4, 4)).save(outside / "private.png")
    (gallery_dir / "link.png").symlink_to(outside / "private.png")
    (gallery_dir / "loop.png").symlink_to(gallery_dir / "loop.png")
    (gallery_dir / "notes.txt").write_text("not an image")
    names = ["ok.png", "link.png", "loop.png", "missing.png", "notes.txt"]
    gallery = Gallery(
        side="images",
        image_ids=names,
        image_paths=[str(gallery_dir / n) for n in names],
        image_captions=[[n] for n in names],
        item_texts=[],
        item_images=[],
    )
    client = TestClient(create_app(SimpleNamespace(gallery=gallery, index=[], cross=None)))
    assert client.get("/images/0").status_code == 200
    assert client.get("/images/1").status_code == 403  # points outside the gallery folder
    assert client.get("/images/2").status_code == 404  # a symlink loop
    assert client.get("/images/3").status_code == 404
    assert client.get("/images/4").status_code == 403  # not an image type


# ----------------------------------------------------------------------------- admin routes, CORS


def test_admin_routes_need_the_key(tmp_path, tiny_index):
    folder = shutil.copytree(tiny_index("images"), tmp_path / "index")
    retriever = Retriever(folder)
    disabled = TestClient(create_app(retriever))
    assert disabled.post("/admin/reload").status_code == 403
    assert disabled.delete("/items/3", headers={"X-API-Key": "anything"}).status_code == 403
    client = TestClient(create_app(retriever, api_key="s3cret"))
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/admin/reload", headers={"X-API-Key": "s3cret"}).json()["items"] == 11
    deleted = client.delete("/items/3", headers={"X-API-Key": "s3cret"})
    assert deleted.status_code == 200 and deleted.json() == {"deleted": 1, "items": 10}
    assert client.delete("/items/3", headers={"X-API-Key": "s3cret"}).status_code == 404
    assert client.delete("/items/abc", headers={"X-API-Key": "s3cret"}).status_code == 422
    hits = client.post("/search/text", json={"query": "a", "k": 11}).json()["hits"]
    assert len(hits) == 10 and 3 not in [h["id"] for h in hits]
    assert json.loads((folder / "index.json").read_text())["count"] == 10  # persisted
    assert Retriever(folder).search_text("a", 11).hits.__len__() == 10


def test_cors_is_off_unless_configured(image_retriever):
    origin = {"Origin": "https://elsewhere.example"}
    closed = TestClient(create_app(image_retriever))
    assert "access-control-allow-origin" not in closed.get("/health", headers=origin).headers
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in closed.options("/search/text", headers=preflight).headers
    opened = TestClient(create_app(image_retriever, cors_origins=["https://elsewhere.example"]))
    assert opened.get("/health", headers=origin).headers["access-control-allow-origin"] == origin["Origin"]
    other = opened.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
