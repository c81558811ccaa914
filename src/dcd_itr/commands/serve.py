"""`dcd serve`: the HTTP search service and its web page over an index folder (needs the `serve` extra)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from dcd_itr.commands.index import add_runtime_option
from dcd_itr.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"  # loopback: nothing outside this machine can connect unless asked for
DEFAULT_PORT = 8000  # uvicorn's usual port
DEFAULT_MAX_CONCURRENCY = 64  # connections beyond this get 503 at once instead of queueing without bound


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    index: Path,
    cross: Path | None = None,
    model: Path | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    api_key: str | None = None,  # None -> $DCD_API_KEY, else admin routes disabled
    cors_origins: list[str] | None = None,
    device: str = "cpu",
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    runtime: str = "torch",  # "onnx": the dual model is an export folder (dcd export --onnx)
) -> None:
    """Load the index (and cross-encoder), then run uvicorn until interrupted."""
    try:
        import uvicorn

        from dcd_itr.search.service import create_app
    except ImportError as error:
        raise ConfigError(
            f"dcd serve needs the serve extra ({error}): pip install 'dcd-itr[serve]'"
        ) from None
    from dcd_itr.search.retriever import Retriever

    api_key = api_key or os.environ.get("DCD_API_KEY") or None
    if not _is_loopback(host):
        print(f"dcd serve: listening on {host}: reachable from other machines", file=sys.stderr)
        if not api_key:
            print("dcd serve: no --api-key: admin routes stay disabled", file=sys.stderr)
    retriever = Retriever(index, model, cross, device, runtime=runtime)
    seconds = retriever.warm_up()  # the first burst of requests must not pay the models' cold start
    print(f"dcd serve: models warmed up in {seconds:.1f} s", file=sys.stderr)
    app = create_app(retriever, api_key=api_key, cors_origins=cors_origins)
    uvicorn.run(app, host=host, port=port, limit_concurrency=max_concurrency, log_level="info")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="HTTP search service with a web page (POST /search/text, /search/image; docs at /docs)",
        description="Serves an index built by `dcd index build`: JSON search routes with validated limits, gallery "
        "images by id, a web page at /, OpenAPI docs at /docs. Binds 127.0.0.1 unless --host says otherwise.",
    )
    parser.add_argument("--index", type=Path, required=True, help="index folder")
    parser.add_argument("--cross", type=Path, help="cross-encoder model folder: enables re-ranking")
    parser.add_argument(
        "--model", type=Path, help="dual model folder (default: the one that built the index)"
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    parser.add_argument(
        "--api-key", help="enables admin routes (X-API-Key header); prefer $DCD_API_KEY, which ps cannot show"
    )
    parser.add_argument(
        "--cors-origin", action="append", help="allow this browser origin (repeatable; default: CORS off)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    parser.add_argument(
        "--max-concurrency", type=int, default=DEFAULT_MAX_CONCURRENCY, help="default %(default)s connections"
    )
    add_runtime_option(parser)
    parser.set_defaults(
        handler=lambda a: serve(
            a.index,
            a.cross,
            a.model,
            a.host,
            a.port,
            a.api_key,
            a.cors_origin,
            a.device,
            a.max_concurrency,
            a.runtime,
        )
    )
