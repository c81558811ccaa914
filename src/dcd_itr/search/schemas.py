"""The service's limits and its JSON schemas (pydantic), built from the limits so the OpenAPI docs show them."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

IMAGE_TYPES = {  # accepted uploads and served files: content type <-> Pillow format <-> suffixes
    "image/png": ("PNG", (".png",)),
    "image/jpeg": ("JPEG", (".jpg", ".jpeg")),
    "image/webp": ("WEBP", (".webp",)),
    "image/gif": ("GIF", (".gif",)),
    "image/bmp": ("BMP", (".bmp",)),
}


@dataclass(frozen=True)
class ServiceLimits:
    """Bounds on every request, so no single request can take the service down."""

    max_query_chars: int = (
        256  # captions are a few words; the text tower keeps only DEFAULT_TEXT_LENGTH (40) tokens anyway
    )
    max_k: int = 100  # results per request: a page of thumbnails
    max_rerank: int = 64  # cross-encoder pairs per request: keeps one request's latency bounded
    default_rerank: int = 16  # what the page's re-rank toggle asks for: the cascade's usual k
    max_upload_bytes: int = 8 * 1024 * 1024  # a phone photo is 2-5 MB
    max_upload_pixels: int = 40_000_000  # refuse decompression bombs well below Pillow's 89 Mpx
    max_json_bytes: int = 64 * 1024  # any other request body (a text query is under 1 KiB)


class TextQueryBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("query", check_fields=False)
    @classmethod
    def _printable_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the query is empty")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the query is not valid Unicode (lone surrogate)") from None
        return value


def text_query_model(limits: ServiceLimits) -> type[BaseModel]:
    """``{"query": str, "k": int, "rerank": int}`` with this service's bounds."""
    return create_model(
        "TextQuery",
        __base__=TextQueryBase,
        query=(str, Field(min_length=1, max_length=limits.max_query_chars, description="what to look for")),
        k=(int, Field(10, ge=1, le=limits.max_k, strict=True, description="results to return")),
        rerank=(
            int,
            Field(0, ge=0, le=limits.max_rerank, strict=True, description="re-score the top K (0: off)"),
        ),
    )


class Hit(BaseModel):
    rank: int
    id: int = Field(description="the item's id in the index")
    image: int = Field(description="image row; its file is served at image_url")
    image_id: str
    image_url: str
    text: str | None = Field(description="the caption, for an index of captions")
    captions: list[str]
    score: float = Field(description="dual-encoder cosine similarity")
    cross_score: float | None = Field(description="cross-encoder logit when re-ranked")


class SearchResponse(BaseModel):
    hits: list[Hit]
    k: int
    rerank: int
    milliseconds: dict[str, float] = Field(description="server time: encode, search, rerank, total")


class Health(BaseModel):
    status: str
    side: str = Field(description="images (text queries) or captions (image queries)")
    items: int
    rerank_available: bool
    model_fingerprint: str
    limits: dict[str, int]


class Deleted(BaseModel):
    deleted: int
    items: int
