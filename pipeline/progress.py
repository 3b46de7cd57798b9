"""In-process outcome tallies: the progress line of a local run, and a local stream's summary.

Every outcome key (:mod:`pipeline.summary`) is also tallied here, in the worker process that
counted it. Two uses:

- **progress**: a throttled line on stderr while a run works (alerts read, classified, dead);
  in ``multi_processing`` mode every worker prints its own share;
- **a local streaming job's summary**: Beam's Python direct runner, in streaming mode, reports
  only the first bundle's update of each counter (measured with Beam 2.x: a counter incremented
  in three bundles reads 1), so a stream run on this machine is summarised from these tallies,
  which live in the same process. Dataflow's counters are right and are used there.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter

from transforms.schema import COUNT_CLASSIFIED, COUNT_DEAD_PREFIX, COUNT_DECODED

__all__ = ["INTERVAL_S", "enable_lines", "reset", "snapshot", "tally"]

#: Seconds between progress lines.
INTERVAL_S = 5.0

_counts: Counter[str] = Counter()
_lock = threading.Lock()
_state = {"started": 0.0, "last": 0.0, "lines": False}


def _line() -> str:
    elapsed = max(time.monotonic() - _state["started"], 1e-9)
    read = _counts[COUNT_DECODED]
    dead = sum(v for k, v in _counts.items() if k.startswith(COUNT_DEAD_PREFIX))
    return (
        f"[stampflow] {read:,} alerts read · {_counts[COUNT_CLASSIFIED]:,} classified · "
        f"{dead:,} dead letters · {read / elapsed:,.0f} alerts/s"
    )


def reset() -> None:
    """Start a new run's tallies (a process may run several jobs, as tests do)."""
    with _lock:
        _counts.clear()
        _state.update(started=0.0, last=0.0, lines=False)


def enable_lines() -> None:
    """Print progress lines from this process (``--quiet-progress`` leaves them off)."""
    _state["lines"] = True


def snapshot() -> dict[str, int]:
    """The outcome counts tallied in this process so far."""
    with _lock:
        return dict(_counts)


def tally(key: str, n: int = 1) -> None:
    """Count ``n`` outcomes ``key`` and print a progress line if one is due."""
    now = time.monotonic()
    with _lock:
        if not _state["started"]:
            _state["started"] = _state["last"] = now
        _counts[key] += n
        due = _state["lines"] and now - _state["last"] >= INTERVAL_S
        if due:
            _state["last"] = now
            line = _line()
    if due:
        print(line, file=sys.stderr, flush=True)
