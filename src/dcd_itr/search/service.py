"""The HTTP search service: ``create_app(retriever)`` -> a FastAPI app (``dcd serve`` runs it with uvicorn).

Routes: ``GET /`` (the web page), ``GET /health``, ``POST /search/text``, ``POST /search/image`` (multipart
upload), ``GET /images/{row}`` (gallery files only), and the admin routes ``POST /admin/reload`` and
``DELETE /items/{id}`` (API key in ``X-API-Key``; disabled when no key is set). The OpenAPI schema is at
``/openapi.json``; ``/docs`` points there (Swagger UI's CDN assets would leave it blank offline). Rows and item
ids are plain non-negative integers below 2^63 (``1.0``, ``-1``, ``2**63`` are 422).

User mistakes are 4xx with a ``detail`` that says what is wrong: 422 for schema violations, 400 for a request
the index cannot answer, 413 for bodies over the limit, 415 for image types, 401/403 for the admin key. CORS is
off unless origins are given.
"""

# No `from __future__ import annotations` here: FastAPI must see the real (locally built) request model classes.
import re
from dataclasses import asdict
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi import Path as FastAPIPath
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BeforeValidator
from starlette.concurrency import run_in_threadpool

from dcd_itr import __version__
from dcd_itr.errors import CacheMismatchError, CorruptFileError, DcdError
from dcd_itr.search.http_guards import BodySizeLimit, check_api_key, gallery_file, item_number, read_upload
from dcd_itr.search.retriever import Retriever, SearchResult
from dcd_itr.search.schemas import Deleted, Health, SearchResponse, ServiceLimits, text_query_model

MULTIPART_OVERHEAD = 16 * 1024  # boundaries, part headers and the k / rerank form fields
PAGE_HEADERS = {  # the page loads only its own script; nothing may frame it
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


DOCS_PAGE = (  # no CDN assets: the service works offline, so its docs page must too
    "<!doctype html><title>dcd-itr search API</title><h1>dcd-itr search API</h1><p>The OpenAPI schema of "
    'every route is at <a href="/openapi.json">/openapi.json</a> (load it into any OpenAPI viewer). The '
    "interactive Swagger page is off: it loads its scripts from a CDN, which an offline machine cannot reach.</p>"
)
RowParameter = Annotated[
    str,
    FastAPIPath(pattern=r"^[0-9]{1,19}$", description="a non-negative integer below 2^63", examples=["0"]),
]


def integer_text(value: object) -> object:
    """A form field that must be an integer: "0.0" or "1e1", which pydantic's lax mode accepts, are refused."""
    if isinstance(value, str) and not re.fullmatch(r"\s*[+-]?[0-9]+\s*", value, flags=re.ASCII):
        raise ValueError("must be an integer")
    return value


def _static(name: str) -> str:
    return resources.files("dcd_itr.search").joinpath("static", name).read_text(encoding="utf-8")


def _safe(value: object) -> object:
    """Strings made encodable (lone surrogates replaced); other values unchanged."""
    return value.encode("utf-8", "replace").decode("utf-8") if isinstance(value, str) else value


def _response(result: SearchResult, k: int, rerank: int) -> SearchResponse:
    hits = [{**asdict(hit), "image_url": f"/images/{hit.image}"} for hit in result.hits]
    for hit in hits:
        hit.pop("path")  # server paths stay on the server
    return SearchResponse(hits=hits, k=k, rerank=rerank, milliseconds=result.milliseconds)


def create_app(
    retriever: Retriever,
    api_key: str | None = None,  # None -> admin routes answer 403
    cors_origins: list[str] | None = None,  # None -> no CORS headers: browsers allow same-origin only
    limits: ServiceLimits | None = None,  # None -> ServiceLimits() defaults
) -> FastAPI:
    """The search service over one :class:`Retriever` (see the module docstring)."""
    limits = limits or ServiceLimits()
    app = FastAPI(
        title="dcd-itr search",
        version=__version__,
        description="Text -> image and image -> caption search with a distilled dual encoder, optionally "
        "re-ranked by a compressed cross-encoder. The schema is at /openapi.json.",
        docs_url=None,  # Swagger UI loads its assets from a CDN: blank offline; /docs points to the schema
        redoc_url=None,
    )
    page, script = _static("index.html"), _static("app.js")
    TextQuery = text_query_model(limits)  # noqa: N806 (a class)
    upload_limit = limits.max_upload_bytes + MULTIPART_OVERHEAD
    app.add_middleware(
        BodySizeLimit,
        limit_for=lambda path: upload_limit if path == "/search/image" else limits.max_json_bytes,
    )
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        """422 with where and what, without echoing the input (it may be huge or not encodable)."""
        details = [
            {
                "loc": [_safe(part) for part in e.get("loc", ())],
                "msg": _safe(e.get("msg", "")),
                "type": e.get("type"),
            }
            for e in error.errors()
        ]
        return JSONResponse({"detail": details}, status_code=422)

    @app.exception_handler(DcdError)
    async def _user_error(request: Request, error: DcdError) -> JSONResponse:
        status = 409 if isinstance(error, (CacheMismatchError, CorruptFileError)) else 400
        return JSONResponse({"detail": str(error)}, status_code=status)

    def admin(x_api_key: Annotated[str | None, Header()] = None) -> None:
        check_api_key(api_key, x_api_key)

    def check_rerank(rerank: int) -> None:
        if rerank and retriever.cross is None:
            raise HTTPException(400, "re-ranking is not available: the service was started without --cross")

    def run(search, query, k: int, rerank: int) -> SearchResponse:
        check_rerank(rerank)
        return _response(search(query, k, rerank), k, rerank)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/app.js", include_in_schema=False)
    def home_script() -> Response:
        return Response(script, media_type="text/javascript", headers=PAGE_HEADERS)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_PAGE, headers=PAGE_HEADERS)

    @app.get("/health")
    def health() -> Health:
        return Health(
            status="ok",
            side=retriever.gallery.side,
            items=len(retriever.index),
            rerank_available=retriever.cross is not None,
            model_fingerprint=retriever.gallery.model_fingerprint,
            limits={k: v for k, v in asdict(limits).items()},
        )

    @app.post("/search/text", responses={400: {"description": "the index cannot answer this query"}})
    def search_text(request: TextQuery) -> SearchResponse:
        return run(retriever.search_text, request.query, request.k, request.rerank)

    @app.post(
        "/search/image", responses={413: {"description": "upload too large"}, 415: {"description": "type"}}
    )
    async def search_image(
        file: Annotated[UploadFile, File(description="PNG, JPEG, WebP, GIF or BMP")],
        k: Annotated[int, BeforeValidator(integer_text), Form(ge=1, le=limits.max_k)] = 10,
        rerank: Annotated[int, BeforeValidator(integer_text), Form(ge=0, le=limits.max_rerank)] = 0,
    ) -> SearchResponse:
        if retriever.gallery.side != "captions":
            raise HTTPException(400, "this index holds images: query it with text (POST /search/text)")
        check_rerank(rerank)
        image = await read_upload(file, limits.max_upload_bytes, limits.max_upload_pixels)
        return await run_in_threadpool(run, retriever.search_image, image, k, rerank)

    @app.get(
        "/images/{row}", responses={403: {"description": "outside the gallery"}, 404: {"description": "none"}}
    )
    def image_file(row: RowParameter) -> FileResponse:
        path, content_type = gallery_file(retriever.gallery, item_number(row, "row"))
        return FileResponse(path, media_type=content_type, headers={"X-Content-Type-Options": "nosniff"})

    @app.post("/admin/reload", dependencies=[Depends(admin)])
    def reload() -> Health:
        retriever.reload()
        return health()

    @app.delete("/items/{item_id}", dependencies=[Depends(admin)])
    def delete_item(item_id: RowParameter) -> Deleted:
        item_id = item_number(item_id, "item id")  # within int64, the index's id type: no OverflowError
        removed = retriever.delete([item_id]) if item_id < len(retriever.gallery) else 0
        if not removed:
            raise HTTPException(404, f"no item {item_id} in the index")
        return Deleted(deleted=removed, items=len(retriever.index))

    return app
