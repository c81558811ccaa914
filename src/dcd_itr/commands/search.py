"""`dcd search`: query an index from the command line, text -> images or image -> captions, with the cascade."""

from __future__ import annotations

import argparse
import json
import unicodedata
from dataclasses import asdict
from pathlib import Path

from dcd_itr.errors import ConfigError
from dcd_itr.search.retriever import DEFAULT_K, Retriever, SearchResult

BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def terminal_safe(text: str) -> str:
    """``text`` with control characters (ESC, BEL, CR...), line separators, lone surrogates and bidi overrides
    shown as escapes (``\\x1b``, ``\\u202e``): a caption cannot move the cursor, ring the bell or reverse the
    table. Joiners and variation selectors, which emoji sequences need, are kept."""
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if ch in BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs")
        else ch
        for ch in text
    )


def format_hits(result: SearchResult) -> str:
    """A fixed-width table: rank, id, dual score, cross score, image id, then the caption or image path."""
    lines = [f"{'rank':>4} {'id':>7} {'score':>8} {'cross':>8}  {'image':<16} caption / path"]
    for hit in result.hits:
        cross = f"{hit.cross_score:8.3f}" if hit.cross_score is not None else f"{'-':>8}"
        shown = terminal_safe(hit.text if hit.text is not None else str(hit.path))
        image_id = terminal_safe(str(hit.image_id))
        lines.append(f"{hit.rank:>4} {hit.id:>7} {hit.score:8.4f} {cross}  {image_id:<16} {shown}")
    timings = ", ".join(f"{name} {value:.1f} ms" for name, value in result.milliseconds.items())
    lines.append(f"({len(result.hits)} results; {timings})")
    return "\n".join(lines)


def run_search(
    index: Path,
    query: str | None = None,  # text -> images
    image: Path | None = None,  # image -> captions
    k: int = DEFAULT_K,  # one screen of results
    rerank: int = 0,  # 0 -> the dual encoder's ranking alone
    cross: Path | None = None,  # needed only for rerank > 0
    model: Path | None = None,  # None -> the model folder recorded in the index
    device: str = "cpu",  # "cuda" where present
    as_json: bool = False,  # a table for people, JSON for programs
) -> SearchResult:
    """Run one query and print the hits as a table or as JSON."""
    if (query is None) == (image is None):
        raise ConfigError("give either a text query or --image PATH (not both)")
    if rerank and cross is None:
        raise ConfigError("--rerank needs --cross MODEL_DIR (the compressed cross-encoder)")
    retriever = Retriever(index, model, cross if rerank else None, device)
    if query is not None:
        result = retriever.search_text(query, k, rerank)
    else:
        result = retriever.search_image(image, k, rerank)
    if as_json:
        payload = {
            "query": query if query is not None else str(image),
            "k": k,
            "rerank": rerank,
            "hits": [asdict(hit) for hit in result.hits],
            "milliseconds": result.milliseconds,
        }
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        print(format_hits(result))
    return result


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="search an index: a text query finds images, --image finds captions",
        description="Embeds the query with the index's own dual encoder (refusing any other model) and prints "
        "the top k. --rerank K re-scores the top K with a cross-encoder (--cross) and re-orders them.",
    )
    parser.add_argument("query", nargs="?", help="text query (needs an index of images)")
    parser.add_argument("--index", type=Path, required=True, help="index folder (dcd index build)")
    parser.add_argument("--image", type=Path, help="image query (needs an index of captions)")
    parser.add_argument("-k", type=_positive, default=DEFAULT_K, help="results to show (default %(default)s)")
    parser.add_argument("--rerank", type=int, default=0, metavar="K", help="re-score the top K (default off)")
    parser.add_argument("--cross", type=Path, help="cross-encoder model folder for --rerank")
    parser.add_argument(
        "--model", type=Path, help="dual model folder (default: the one that built the index)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(
        handler=lambda a: run_search(
            a.index, a.query, a.image, a.k, a.rerank, a.cross, a.model, a.device, a.json
        )
    )
