"""The view grammar: a *view* is a tower at one input size, written ``NAME@SIZE``.

``efficientnet-lite2@260`` is the EfficientNet-Lite2 image tower at 260 px; ``minilm-l6@40`` is the MiniLM text
tower truncated at 40 tokens. The feature cache keeps one folder per view (:func:`view_key`), models name the
views they read, and the end-to-end wrappers build towers from them (:func:`parse_view`).
"""

from __future__ import annotations

from dcd_itr.errors import CacheMismatchError

DEFAULT_TEXT_LENGTH = 40  # the DCD reference truncates captions at 40 tokens


def parse_view(spec: str, default_size: int | None = None) -> tuple[str, int | None]:
    """``efficientnet-lite2@260`` -> (``efficientnet-lite2``, 260); no ``@`` -> (name, default_size)."""
    name, _, size = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if size and not size.isdigit():
        raise CacheMismatchError(f"bad view {spec!r}: expected NAME or NAME@SIZE with an integer size")
    return name, int(size) if size else default_size


def view_key(kind: str, tower_name: str, size: int) -> str:
    """``image-efficientnet-lite2@260`` / ``text-minilm-l6@40``: a tower at one input size."""
    return f"{kind}-{tower_name.replace('/', '_').replace(':', '_')}@{size}"
