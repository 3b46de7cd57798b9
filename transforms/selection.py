"""Beam stage *select*: keep each object's first detection (SPEC §8), count what is skipped.

``--select first`` (the default, as ALeRCE production) keeps an alert when

1. its ``prv_candidates`` hold no detection earlier than itself (a pure check per alert, no
   shuffle: in ZTF's stream this alone removes every later alert of an object), and
2. it is the earliest alert (``jd``, then ``candid``) of its ``objectId`` in this input (a
   ``GroupByKey`` over the alerts that survived step 1, for archives whose histories are missing).

``--select all`` classifies every alert. Skipped alerts leave on the ``skipped`` output as
``(reason, candid)`` so the run summary can reconcile ``records in == classified + skipped + dead``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.alerts import Alert
from transforms.rules import earliest_key, history_skip_reason
from transforms.schema import METRICS_NAMESPACE, SKIP_NOT_FIRST_IN_INPUT

SELECT_MODES = ("first", "all")
SKIPPED = "skipped"


class _HistoryFilter(beam.DoFn):
    def __init__(self) -> None:
        self.skipped = Metrics.counter(METRICS_NAMESPACE, "skipped_earlier_detection")

    def process(self, alert: Alert) -> Iterator[Any]:
        reason = history_skip_reason(alert.candidate, alert.prv_candidates)
        if reason is None:
            # The GroupByKey below holds every kept alert of the night: shuffle it slim.
            yield alert.slim()
        else:
            self.skipped.inc()
            yield beam.pvalue.TaggedOutput(SKIPPED, (reason, alert.candid))


def _earliest(item: tuple[str, Iterable[Alert]]) -> Iterator[Any]:
    _, alerts = item
    ordered = sorted(alerts, key=lambda a: earliest_key(a.jd, a.candid))
    yield ordered[0]
    for later in ordered[1:]:
        yield beam.pvalue.TaggedOutput(SKIPPED, (SKIP_NOT_FIRST_IN_INPUT, later.candid))


class SelectFirstDetections(beam.PTransform):
    """Alerts → first detections (main output) and ``skipped`` ``(reason, candid)`` pairs.

    Parameters
    ----------
    mode
        ``"first"`` or ``"all"``.
    """

    def __init__(self, mode: str = "first") -> None:
        super().__init__()
        if mode not in SELECT_MODES:
            raise ValueError(f"select mode {mode!r} not in {SELECT_MODES}")
        self.mode = mode

    def expand(self, alerts: beam.PCollection) -> dict[str, beam.PCollection]:
        if self.mode == "all":
            none = alerts.pipeline | "NoSkips" >> beam.Create([])
            return {"alerts": alerts, SKIPPED: none}
        history = alerts | "History" >> beam.ParDo(_HistoryFilter()).with_outputs(
            SKIPPED, main="alerts"
        )
        earliest = (
            history.alerts
            | "ByObject" >> beam.Map(lambda a: (a.object_id, a))
            | "GroupObjects" >> beam.GroupByKey()
            | "Earliest" >> beam.FlatMap(_earliest).with_outputs(SKIPPED, main="alerts")
        )
        skipped = (history[SKIPPED], earliest[SKIPPED]) | "AllSkipped" >> beam.Flatten()
        return {"alerts": earliest.alerts, SKIPPED: skipped}
