"""Helpers every part of the benchmark shares: one thread setting, a clock, percentiles, the machine record."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")
TIMING_ONLY_LABEL = "random weights, timing only"  # printed beside every figure from a random-weight model


@contextlib.contextmanager
def thread_count(threads: int | None) -> Iterator[int]:
    """Use ``threads`` CPU threads in torch and FAISS (None: torch's current count) inside the block; yields the
    count used and restores both settings afterwards."""
    import faiss  # local import: only the latency part needs FAISS, but the thread count must match everywhere

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    count = threads or before[0]
    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])


def timed(action: Callable[[], T]) -> tuple[T, float]:
    """``(action(), seconds)`` measured with a monotonic high-resolution clock."""
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``seconds``, in milliseconds (linear interpolation, numpy's default)."""
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), q) * 1000.0)


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when the denominator is not positive (nothing measured)."""
    return numerator / denominator if denominator > 0 else None


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on: platform, CPU, thread counts, library versions, load at the start."""
    import faiss

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "faiss_threads": threads,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "device": "cpu",
        "load_average_1_5_15": [round(value, 2) for value in load],
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def format_seconds(seconds: float | None) -> str:
    """Human-readable duration: ``0.84 ms``, ``3.2 s``, ``4.1 min``, ``2.7 h``, ``15 d``, ``3.4 yr``."""
    if seconds is None:
        return "n/a"
    for limit, scale, unit in (
        (1.0, 1000.0, "ms"),
        (120.0, 1.0, "s"),
        (7200.0, 1 / 60, "min"),
        (172800.0, 1 / 3600, "h"),
        (3 * 31_557_600.0, 1 / 86400, "d"),
    ):
        if seconds < limit:
            return f"{seconds * scale:.3g} {unit}"
    return f"{seconds / 31_557_600.0:.3g} yr"


def format_ratio(value: float | None) -> str:
    """``1234.5`` -> ``1,234x``; ``2.34`` -> ``2.3x``; None -> ``n/a``."""
    if value is None:
        return "n/a"
    return f"{value:,.0f}x" if value >= 100 else f"{value:.3g}x"
