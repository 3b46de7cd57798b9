"""Progress of a local run, printed while it works (alerts read, classified, dead).

Beam metrics are only readable after a run, so each worker process keeps its own tallies in a
module-level counter fed by tap DoFns on side branches of the pipeline, and prints a throttled
line to stderr. In ``multi_processing`` mode every worker prints its own share.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import Any

import apache_beam as beam

#: Seconds between progress lines.
INTERVAL_S = 5.0

_counts: Counter[str] = Counter()
_lock = threading.Lock()
_state = {"started": 0.0, "last": 0.0}


def _line() -> str:
    elapsed = max(time.monotonic() - _state["started"], 1e-9)
    read = _counts["read"]
    return (
        f"[stampflow] {read:,} alerts read · {_counts['classified']:,} classified · "
        f"{_counts['dead']:,} dead letters · {read / elapsed:,.0f} alerts/s"
    )


def tally(stage: str, n: int = 1) -> None:
    """Count ``n`` items at ``stage`` and print a progress line if one is due."""
    now = time.monotonic()
    with _lock:
        if not _state["started"]:
            _state["started"] = _state["last"] = now
        _counts[stage] += n
        due = now - _state["last"] >= INTERVAL_S
        if due:
            _state["last"] = now
    if due:
        print(_line(), file=sys.stderr, flush=True)


class Tap(beam.DoFn):
    """A side-branch sink that counts the elements of a stage for the progress line."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def process(self, element: Any):
        tally(self.stage)
        return ()
