"""Realistic simulated ZTF alerts (schema 4.02) with labels, for training and load tests.

Public API:

* :func:`simulate` -- write a night of alerts (``.avro`` files or ``ztf_public_*.tar.gz``) and
  ``labels.csv``; returns a :class:`SimulationSummary`.
* :func:`make_alerts` -- the same alerts as in-memory records, for tests.
* :func:`plan_night` / :func:`make_chunk` -- the two stages behind both.
* :func:`simulator.physics.render_triplet` -- science/reference/difference images of a scene.
* :func:`montage` -- a PNG of stamp triplets per class.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulator.core import SimulationSummary, make_alerts, simulate
    from simulator.generate import make_chunk, plan_night
    from simulator.montage import montage

# Exported lazily (PEP 562): the submodules import each other through this package
# (`from simulator import metadata`), so an eager re-export here made import circles.
_EXPORTS = {
    "SimulationSummary": "simulator.core",
    "make_alerts": "simulator.core",
    "simulate": "simulator.core",
    "make_chunk": "simulator.generate",
    "plan_night": "simulator.generate",
    "montage": "simulator.montage",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'simulator' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["SimulationSummary", "make_alerts", "make_chunk", "montage", "plan_night", "simulate"]
