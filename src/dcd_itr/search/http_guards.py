"""Request guards for the service: body size refused early, uploads checked, API key, gallery-only files.

- :class:`BodySizeLimit` is ASGI middleware: a ``Content-Length`` over the route's limit is answered 413 before
  any of the body is read, and a body without one (chunked) is counted while it streams and cut off at the limit.
- :func:`read_upload` decodes an uploaded image within the pixel limit and the allowed formats.
- :func:`gallery_file` maps an image row to its file, refusing anything that resolves outside the gallery.
"""

from __future__ import annotations

import hmac
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

from fastapi import HTTPException, UploadFile
from PIL import Image, UnidentifiedImageError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dcd_itr.data.images import load_rgb
from dcd_itr.errors import ImageLoadError
from dcd_itr.search.gallery import Gallery
from dcd_itr.search.schemas import IMAGE_TYPES


class BodySizeLimit:
    """Refuse request bodies over ``limit_for(path)`` bytes with 413, early (see the module docstring)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await JSONResponse({"detail": "invalid Content-Length"}, 400)(scope, receive, send)
                return
            if int(length) > limit:
                await _too_large(limit)(scope, receive, send)
                return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body over the limit of {limit} bytes")
            return message

        await self.app(scope, counted_receive, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"detail": f"request body over the limit of {limit} bytes"}, 413, {"Connection": "close"}
    )


async def read_upload(upload: UploadFile, max_bytes: int, max_pixels: int) -> Image.Image:
    """The uploaded file as an RGB image, or HTTP 413 / 415 / 400 saying what is wrong with it."""
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    if declared not in IMAGE_TYPES:
        raise HTTPException(
            415, f"unsupported upload type {declared or 'none'!r}; allowed: {sorted(IMAGE_TYPES)}"
        )
    data = await upload.read(max_bytes + 1)  # the middleware bounds the body; this bounds the part
    if len(data) > max_bytes:
        raise HTTPException(413, f"image over the limit of {max_bytes} bytes")
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            actual = probe.format
    except Image.DecompressionBombError as error:  # a header claiming over twice Pillow's pixel limit
        raise HTTPException(400, f"refused as a possible decompression bomb: {error}") from None
    except (UnidentifiedImageError, OSError):
        raise HTTPException(400, "the upload is not an image Pillow can identify") from None
    if actual != IMAGE_TYPES[declared][0]:
        raise HTTPException(415, f"the upload says {declared} but holds {actual}")
    with tempfile.NamedTemporaryFile(suffix=IMAGE_TYPES[declared][1][0]) as stream:
        stream.write(data)
        stream.flush()
        try:
            return load_rgb(stream.name, max_pixels=max_pixels)
        except ImageLoadError as error:
            raise HTTPException(400, f"cannot use the uploaded image: {error.reason}") from None


MAX_ITEM_NUMBER = 2**63 - 1  # ids are int64 in the index


def item_number(text: str, what: str) -> int:
    """A row or item id from the URL: digits only, at most int64's maximum; else 422 (never a 500)."""
    if not text.isascii() or not text.isdigit() or int(text) > MAX_ITEM_NUMBER:
        raise HTTPException(422, f"{what} must be an integer from 0 to {MAX_ITEM_NUMBER}")
    return int(text)


def gallery_file(gallery: Gallery, row: int) -> tuple[Path, str]:
    """The resolved file of image ``row`` and its content type; 404 / 403 for anything else."""
    if not 0 <= row < len(gallery.image_paths):
        raise HTTPException(404, f"no image {row} in this gallery")
    root = Path(gallery.image_root).resolve()
    try:
        path = Path(gallery.image_paths[row]).resolve(strict=True)
    except (FileNotFoundError, RuntimeError):  # missing, or a symlink loop
        raise HTTPException(404, f"image {row} is missing on disk") from None
    if not path.is_relative_to(root) or not path.is_file():
        raise HTTPException(403, f"image {row} resolves outside the gallery folder")
    for content_type, (_, suffixes) in IMAGE_TYPES.items():
        if path.suffix.lower() in suffixes:
            return path, content_type
    raise HTTPException(403, f"image {row} is not a served image type")


def check_api_key(configured: str | None, given: str | None) -> None:
    """Admin routes: 403 while no key is configured, 401 for a missing or wrong key."""
    if not configured:
        raise HTTPException(403, "admin routes are disabled; start the service with --api-key")
    if not given or not hmac.compare_digest(given.encode(), configured.encode()):
        raise HTTPException(401, "missing or wrong X-API-Key", headers={"WWW-Authenticate": "X-API-Key"})
