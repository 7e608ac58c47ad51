"""Timing shared by the bench scripts (run as ``python bench/<script>.py``: this folder is on sys.path)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["Load", "alternate", "median_s", "paired_ratio"]

_T = TypeVar("_T")


def median_s(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def alternate(
    floor: Callable[[], object], ours: Callable[[], _T], repeat: int
) -> tuple[list[float], list[_T]]:
    """``repeat`` rounds of one timed ``floor`` run, then one ``ours`` run: the floor times, our results.

    On a shared machine whose load changes by the second, each of our runs is compared with
    the floor run just before it (:func:`paired_ratio`), so that the load weighs on both alike.
    """
    floors: list[float] = []
    results: list[_T] = []
    for _ in range(repeat):
        floors.append(median_s(floor, 1))
        results.append(ours())
    return floors, results


def paired_ratio(times: Sequence[float], floors: Sequence[float]) -> float:
    """The median of each time over the floor run beside it (see :func:`alternate`)."""
    return statistics.median(t / f for t, f in zip(times, floors, strict=True))


class Load:
    """The machine's 1-minute load average, sampled when asked: figures are quoted with it."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> None:
        """Note the load average now."""
        self.samples.append(os.getloadavg()[0])

    def __str__(self) -> str:
        if not self.samples:
            return "load average not sampled"
        return f"load average {min(self.samples):.1f}-{max(self.samples):.1f}"
