"""Throughput timing shared by the benchmarks (:mod:`bench.stages`, :mod:`bench.baseline`)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["best_rate"]


def best_rate(fn: Callable[[], int], repeat: int, min_seconds: float = 0.0) -> float:
    """Best-of-``repeat`` items/s of ``fn`` (which returns how many items it processed).

    Each pass calls ``fn`` until at least ``min_seconds`` have elapsed, so short calls are timed
    over many iterations. The best pass, not the mean, is kept: slower passes measure the other
    load on the machine, not the code.

    Parameters
    ----------
    fn
        The work to time; returns the number of items it processed.
    repeat
        Number of passes (at least one is made).
    min_seconds
        Minimum duration of a pass [s].

    Returns
    -------
    float
        Items per second of the fastest pass.
    """
    best = 0.0
    for _ in range(max(1, repeat)):
        n, t0 = 0, time.perf_counter()
        while True:
            n += fn()
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        best = max(best, n / elapsed)
    return best
