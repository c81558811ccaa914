"""Service ids, docs and page, terminal output and ``imgid`` values (issue 16, items 6 and 7).

- ``DELETE /items/{id}`` with an id of 2^63 or more is 422, not a 500 (OverflowError);
- ``/images/1.0`` is 422: rows are plain integers;
- ``/docs`` works offline (no CDN assets) and points to ``/openapi.json``;
- the web page says that k is capped;
- ``dcd search`` shows control and bidi characters of captions as escapes;
- an object (or list, float, bool) ``imgid`` is refused, naming the record.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import write_karpathy_fixture
from dcd_itr.commands.search import format_hits
from dcd_itr.data.karpathy import read_karpathy_json
from dcd_itr.errors import DataError
from dcd_itr.search.retriever import SearchHit, SearchResult
from search_fixtures import built_index, cached_retriever

pytest.importorskip("fastapi", reason="the service needs the serve extra")
from fastapi.testclient import TestClient  # noqa: E402

from dcd_itr.search.retriever import Retriever  # noqa: E402
from dcd_itr.search.service import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return TestClient(create_app(cached_retriever(tmp_path_factory, "images")))


@pytest.fixture
def admin_client(tmp_path_factory, tmp_path):
    folder = shutil.copytree(built_index(tmp_path_factory, "images"), tmp_path / "index")
    return TestClient(create_app(Retriever(folder), api_key="s3cret"))


@pytest.mark.parametrize(
    ("item", "status"),
    [
        (str(2**63), 422),
        (str(2**64 + 5), 422),
        ("9" * 40, 422),
        ("-1", 422),
        ("1.0", 422),
        ("1e3", 422),
        ("٣", 422),  # an Arabic-Indic digit: isdigit() but not a plain integer
        (str(2**63 - 1), 404),  # a valid int64 that the index does not hold
        ("11", 404),
    ],
)
def test_delete_validates_ids_to_the_index_range(admin_client, item, status):
    response = admin_client.delete(f"/items/{item}", headers={"X-API-Key": "s3cret"})
    assert response.status_code == status, response.text
    assert admin_client.delete(f"/items/{item}").status_code == 401  # the key is still checked first


def test_delete_still_deletes(admin_client):
    response = admin_client.delete("/items/3", headers={"X-API-Key": "s3cret"})
    assert response.status_code == 200 and response.json()["deleted"] == 1


@pytest.mark.parametrize("row", ["1.0", "1e0", "+1", " 1", "-0", "0x1", str(2**63)])
def test_image_rows_are_plain_integers(client, row):
    assert client.get(f"/images/{row}").status_code == 422
    assert client.get("/images/1").status_code == 200


def test_docs_work_offline_and_point_to_the_schema(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
    assert "https://" not in page.text and "<script" not in page.text.lower()  # nothing loaded from elsewhere
    assert client.get("/redoc").status_code == 404
    assert "/images/{row}" in client.get("/openapi.json").json()["paths"]


def test_the_page_says_k_is_capped(client):
    page, script = client.get("/").text, client.get("/app.js").text
    assert 'id="k-note">(at most 100)' in page and 'max="100"' in page
    assert "`(at most ${health.limits.max_k})`" in script and "k capped at" in script


def hit(text: str, image_id: str = "x") -> SearchHit:
    return SearchHit(
        rank=1, id=0, image=0, image_id=image_id, path="p", text=text, captions=[text], score=0.5
    )


def test_search_table_escapes_control_and_bidi_characters():
    caption = "red\x1b[2J\x07 \u202eevil\u202c line\u2028two \U0001f468\u200d\U0001f469\ufe0f"
    table = format_hits(SearchResult(hits=[hit(caption, "id\x1b]0;title\x07")], milliseconds={"total": 1.0}))
    assert not any(ch in table for ch in "\x1b\x07\u202e\u202c\u2028")
    assert "red\\x1b[2J\\x07 \\u202eevil\\u202c line\\u2028two" in table and "id\\x1b]0;title\\x07" in table
    assert "\U0001f468\u200d\U0001f469\ufe0f" in table  # emoji sequences keep their joiner and selector
    from dcd_itr.commands.search import terminal_safe

    assert terminal_safe("plain text, é ü 日本") == "plain text, é ü 日本"


@pytest.mark.parametrize("imgid", [{"a": 1}, [1, 2], 1.5, True])
def test_imgid_that_is_not_a_string_or_integer_is_refused(tmp_path, imgid):
    data = write_karpathy_fixture(tmp_path)
    records = json.loads(data.read_text())["images"]
    records[2]["imgid"] = imgid
    data.write_text(json.dumps({"images": records}))
    with pytest.raises(
        DataError, match=r"images\[2\] \('img2.png'\): 'imgid' must be a string or an integer"
    ):
        read_karpathy_json(data)


@pytest.mark.parametrize(("k", "rerank"), [("0.0", "0"), ("10", "0.0"), ("1e1", "0"), ("10", "٣")])
def test_upload_form_numbers_are_plain_integers(tmp_path_factory, k, rerank):
    from search_fixtures import png_bytes, upload

    caption_client = TestClient(create_app(cached_retriever(tmp_path_factory, "captions")))
    assert upload(caption_client, png_bytes(), k=k, rerank=rerank).status_code == 422
    assert upload(caption_client, png_bytes(), k="3", rerank="0").status_code == 200
