"""Timing shared by the bench scripts (run as ``python bench/<script>.py``: this folder is on sys.path)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["median_s"]


def median_s(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
