"""Realistic simulated ZTF alerts (schema 4.02) with labels, for training and load tests.

Public API:

* :func:`simulate` -- write a night of alerts (``.avro`` files or ``ztf_public_*.tar.gz``) and
  ``labels.csv``; returns a :class:`SimulationSummary`.
* :func:`make_alerts` -- the same alerts as in-memory records, for tests.
* :func:`plan_night` / :func:`make_chunk` -- the two stages behind both.
* :func:`simulator.physics.render_triplet` -- science/reference/difference images of a scene.
* :func:`montage` -- a PNG of stamp triplets per class.
"""

from simulator.core import SimulationSummary, make_alerts, simulate
from simulator.generate import make_chunk, plan_night
from simulator.montage import montage

__all__ = ["SimulationSummary", "make_alerts", "make_chunk", "montage", "plan_night", "simulate"]
