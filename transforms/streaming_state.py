"""Beam stages of the streaming job that need state: de-duplication, first detection, sky density.

In a stream there is no "whole input" to group, so the batch stages of
:mod:`transforms.selection` and the per-night density of :mod:`pipeline.sinks` become:

``DropDuplicateAlerts``
    State per ``candid`` (in the global window): the first copy of an alert passes, redeliveries and
    replays are dropped while the key's state lives. A *processing-time* TTL timer clears the state
    (``ttl_s`` after the first copy) so the state stays bounded; Pub/Sub redelivers within its ack
    deadline (minutes) and the TTL defaults to a night.

``SelectFirstDetectionsStreaming``
    ``DropDuplicateAlerts`` first, then the pure history check of the batch stage (an alert whose
    ``prv_candidates`` hold an earlier detection is never a first detection; in ZTF's stream this
    removes almost every later alert), then state per ``objectId``: alerts of an object are
    *buffered*, not emitted, until both

    * the watermark has passed the object's earliest event time + ``hold_s`` (event-time timer:
      correct when the source's watermark follows ``jd``, e.g. Dataflow with a timestamp
      attribute), and
    * ``hold_s`` of processing time has passed since the object's first alert arrived
      (processing-time timer: protects against out-of-order *arrival* on runners, or replays, whose
      watermark is the wall clock and is therefore already far past ``jd``).

    Then the earliest buffered alert (``jd``, then ``candid``, as
    :func:`transforms.rules.earliest_key`) is emitted, the others are skipped, and the object is
    marked done: every later alert of it is skipped too, so each object is classified once.
    **Latency cost**: a first detection leaves
    this stage ``max(hold_s, watermark lag + hold_s - alert age)`` after it arrives, i.e. about
    ``hold_s`` on a processing-time watermark. An alert that arrives after its object's release is
    skipped even when it is earlier (``first result per object wins``, SPEC §8); it is counted
    under its own reason so such disorder is visible. A processing-time TTL clears the object's
    state ``ttl_s`` after its release; a later alert of the object then carries the earlier
    detection in its ``prv_candidates`` and is still skipped by the history check.

``SkyDensityWindows``
    HEALPix counts and mean probabilities per class in fixed event-time windows, with early firings
    (processing time), the on-time firing at the watermark and one late firing per late row within
    the allowed lateness, panes accumulating, so the latest pane of a window is its full count.

Skipped alerts leave on the ``skipped`` output as ``(reason, candid)`` pairs, like the batch stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

import apache_beam as beam
import numpy as np
from apache_beam.coders import BooleanCoder, FloatCoder, PickleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.alerts import Alert
from transforms.density import healpix_pixels, sum_pairs
from transforms.rules import earliest_key
from transforms.schema import (
    DEFAULT_HOLD_S,
    DEFAULT_STATE_TTL_S,
    METRICS_NAMESPACE,
    SELECT_MODES,
    SKIP_DUPLICATE,
    SKIP_EARLIER_ALREADY_CLASSIFIED,
    SKIP_EARLIER_DETECTION,
    SKIP_NOT_FIRST_IN_INPUT,
    TAG_ALERTS,
    TAG_DEAD_LETTERS,
    TAG_SKIPPED,
)

#: Julian date of the Unix epoch (1970-01-01T00:00:00 UTC) [day].
JD_UNIX_EPOCH: Final[float] = 2440587.5


# State and timer specs, and the DoFn parameters naming them (module-level: Beam reads them from the
# process signatures' defaults).
_SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
_SEEN_EXPIRE = TimerSpec("expire", TimeDomain.REAL_TIME)
_BUFFER = BagStateSpec("buffer", PickleCoder())
_EARLIEST = ReadModifyWriteStateSpec("earliest", FloatCoder())  # event time [s] of the buffer
_FIRED = ReadModifyWriteStateSpec("fired", VarIntCoder())  # bit 1 event hold, bit 2 arrival hold
_DONE = ReadModifyWriteStateSpec("done", BooleanCoder())
_EVENT_HOLD = TimerSpec("event_hold", TimeDomain.WATERMARK)
_ARRIVAL_HOLD = TimerSpec("arrival_hold", TimeDomain.REAL_TIME)
_EXPIRE = TimerSpec("expire", TimeDomain.REAL_TIME)
SEEN = beam.DoFn.StateParam(_SEEN)
SEEN_EXPIRE = beam.DoFn.TimerParam(_SEEN_EXPIRE)
BUFFER = beam.DoFn.StateParam(_BUFFER)
EARLIEST = beam.DoFn.StateParam(_EARLIEST)
FIRED = beam.DoFn.StateParam(_FIRED)
DONE = beam.DoFn.StateParam(_DONE)
EVENT_HOLD = beam.DoFn.TimerParam(_EVENT_HOLD)
ARRIVAL_HOLD = beam.DoFn.TimerParam(_ARRIVAL_HOLD)
EXPIRE = beam.DoFn.TimerParam(_EXPIRE)


def jd_to_unix(jd: float) -> float:
    """Julian date [day] → Unix time [s], the event time of an alert.

    >>> jd_to_unix(2440587.5)
    0.0
    """
    return (jd - JD_UNIX_EPOCH) * 86400.0


def _now() -> Timestamp:
    return Timestamp.now()


def _sort_key(alert: Alert) -> tuple[float, int]:
    return earliest_key(alert.jd, alert.candid)


class DropDuplicatesFn(beam.DoFn):
    """``(candid, alert)`` → the first copy of each ``candid``; later copies → ``skipped``.

    Parameters
    ----------
    ttl_s
        Processing time [s] a ``candid`` is remembered after its first copy.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s

    def setup(self) -> None:
        self.dropped = Metrics.counter(METRICS_NAMESPACE, "skipped_duplicate")

    def process(
        self,
        element: tuple[int, Alert],
        seen=SEEN,
        expire=SEEN_EXPIRE,
    ) -> Iterator[Any]:
        _, alert = element
        if seen.read():
            self.dropped.inc()
            yield beam.pvalue.TaggedOutput(TAG_SKIPPED, (SKIP_DUPLICATE, alert.candid))
            return
        seen.write(True)
        expire.set(_now() + Duration(seconds=self.ttl_s))
        yield alert

    @on_timer(_SEEN_EXPIRE)
    def _expire(self, seen=SEEN) -> None:
        seen.clear()


class DropDuplicateAlerts(beam.PTransform):
    """Alerts → alerts with redelivered/replayed copies (same ``candid``) removed.

    Returns ``{"alerts": ..., "skipped": (reason, candid)}``; the input's timestamps are kept.
    """

    def __init__(self, ttl_s: float = DEFAULT_STATE_TTL_S) -> None:
        super().__init__()
        self.ttl_s = ttl_s

    def expand(self, alerts: beam.PCollection) -> dict[str, beam.PCollection]:
        out = (
            alerts
            | "ByCandid" >> beam.Map(lambda a: (a.candid, a))
            | "FirstCopy"
            >> beam.ParDo(DropDuplicatesFn(self.ttl_s)).with_outputs(TAG_SKIPPED, main="alerts")
        )
        return {TAG_ALERTS: out.alerts, TAG_SKIPPED: out[TAG_SKIPPED]}


class _HistoryCheck(beam.DoFn):
    def setup(self) -> None:
        self.skipped = Metrics.counter(METRICS_NAMESPACE, "skipped_earlier_detection")

    def process(self, alert: Alert) -> Iterator[Any]:
        reason = SKIP_EARLIER_DETECTION if alert.earlier_detection else None
        if reason is None:
            yield alert
        else:
            self.skipped.inc()
            yield beam.pvalue.TaggedOutput(TAG_SKIPPED, (reason, alert.candid))


class FirstDetectionFn(beam.DoFn):
    """``(objectId, alert)`` → the object's earliest alert, once, after the hold (module doc).

    Parameters
    ----------
    hold_s
        Event- and processing-time hold [s] before an object's earliest alert is released.
    ttl_s
        Processing time [s] an object's state is kept after its release.
    """

    def __init__(self, hold_s: float, ttl_s: float) -> None:
        self.hold_s = hold_s
        self.ttl_s = ttl_s

    def setup(self) -> None:
        self.not_first = Metrics.counter(METRICS_NAMESPACE, "skipped_not_first_in_stream")
        self.released = Metrics.counter(METRICS_NAMESPACE, "first_detections_released")

    def process(
        self,
        element: tuple[str, Alert],
        timestamp=beam.DoFn.TimestampParam,
        buffer=BUFFER,
        earliest=EARLIEST,
        fired=FIRED,
        done=DONE,
        event_hold=EVENT_HOLD,
        arrival_hold=ARRIVAL_HOLD,
    ) -> Iterator[Any]:
        _, alert = element
        if done.read():
            self.not_first.inc()
            yield beam.pvalue.TaggedOutput(
                TAG_SKIPPED, (SKIP_EARLIER_ALREADY_CLASSIFIED, alert.candid)
            )
            return
        first = earliest.read()
        if first is None:
            # The arrival hold starts with the object's first alert and is never pushed back, so
            # a steady trickle of alerts cannot starve the object.
            arrival_hold.set(_now() + Duration(seconds=self.hold_s))
        t = float(timestamp)
        if first is None or t < first:
            earliest.write(t)
            event_hold.set(Timestamp(t + self.hold_s))
        buffer.add(alert)

    def _fire(self, bit: int, fired, buffer, earliest, done, expire) -> Iterator[Any]:
        state = (fired.read() or 0) | bit
        fired.write(state)
        if state != 3 or done.read():
            return
        ordered = sorted(buffer.read(), key=_sort_key)
        buffer.clear()
        earliest.clear()
        fired.clear()
        done.write(True)
        expire.set(_now() + Duration(seconds=self.ttl_s))
        if not ordered:
            return
        self.released.inc()
        # Event time stays the alert's jd, not the timer's: the density windows downstream use it.
        yield window.TimestampedValue(ordered[0], jd_to_unix(ordered[0].jd))
        for later in ordered[1:]:
            self.not_first.inc()
            yield beam.pvalue.TaggedOutput(TAG_SKIPPED, (SKIP_NOT_FIRST_IN_INPUT, later.candid))

    @on_timer(_EVENT_HOLD)
    def _event_hold(
        self,
        fired=FIRED,
        buffer=BUFFER,
        earliest=EARLIEST,
        done=DONE,
        expire=EXPIRE,
    ) -> Iterator[Any]:
        yield from self._fire(1, fired, buffer, earliest, done, expire)

    @on_timer(_ARRIVAL_HOLD)
    def _arrival_hold(
        self,
        fired=FIRED,
        buffer=BUFFER,
        earliest=EARLIEST,
        done=DONE,
        expire=EXPIRE,
    ) -> Iterator[Any]:
        yield from self._fire(2, fired, buffer, earliest, done, expire)

    @on_timer(_EXPIRE)
    def _expire(
        self,
        buffer=BUFFER,
        earliest=EARLIEST,
        fired=FIRED,
        done=DONE,
    ) -> None:
        for state in (buffer, earliest, fired, done):
            state.clear()


class SelectFirstDetectionsStreaming(beam.PTransform):
    """Alerts (timestamped with their ``jd``) → first detections and ``skipped`` pairs.

    Copies of an alert already seen (same ``candid``) are dropped first, in both modes, as the
    batch stage does (:class:`DropDuplicateAlerts`).

    Parameters
    ----------
    mode
        ``"first"`` or ``"all"`` (every distinct alert passes, nothing is held).
    hold_s, ttl_s
        See :class:`FirstDetectionFn`.
    """

    def __init__(
        self,
        mode: str = "first",
        hold_s: float = DEFAULT_HOLD_S,
        ttl_s: float = DEFAULT_STATE_TTL_S,
    ) -> None:
        super().__init__()
        if mode not in SELECT_MODES:
            raise ValueError(f"select mode {mode!r} not in {SELECT_MODES}")
        self.mode, self.hold_s, self.ttl_s = mode, hold_s, ttl_s

    def expand(self, alerts: beam.PCollection) -> dict[str, beam.PCollection]:
        # A stream's selection has no dead letters (no file is read again); the empty output keeps
        # the batch stage's shape.
        no_dead = alerts.pipeline | "NoDeadLetters" >> beam.Create([])
        unique = alerts | "DropDuplicates" >> DropDuplicateAlerts(self.ttl_s)
        if self.mode == "all":
            return {
                TAG_ALERTS: unique[TAG_ALERTS],
                TAG_SKIPPED: unique[TAG_SKIPPED],
                TAG_DEAD_LETTERS: no_dead,
            }
        history = unique[TAG_ALERTS] | "History" >> beam.ParDo(_HistoryCheck()).with_outputs(
            TAG_SKIPPED, main="alerts"
        )
        first = (
            history.alerts
            | "ByObject" >> beam.Map(lambda a: (a.object_id, a))
            | "Earliest"
            >> beam.ParDo(FirstDetectionFn(self.hold_s, self.ttl_s)).with_outputs(
                TAG_SKIPPED, main="alerts"
            )
        )
        skipped = (
            unique[TAG_SKIPPED],
            history[TAG_SKIPPED],
            first[TAG_SKIPPED],
        ) | "AllSkipped" >> beam.Flatten()
        return {TAG_ALERTS: first.alerts, TAG_SKIPPED: skipped, TAG_DEAD_LETTERS: no_dead}


# --- Sky density per event-time window ------------------------------------------------------------
def _density_key(row: dict[str, Any], nside: int) -> tuple[tuple[int, str, str], tuple[int, float]]:
    (pixel,) = healpix_pixels(np.array([row["ra"]]), np.array([row["dec"]]), nside)
    cls = row["predicted_class"]
    return (int(pixel), cls, row.get("survey") or "ztf"), (1, float(row[f"p_{cls}"]))


def _iso(ts: Timestamp) -> str:
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _DensityRow(beam.DoFn):
    def __init__(self, nside: int) -> None:
        self.nside = nside

    def process(
        self,
        element: tuple[tuple[int, str, str], tuple[int, float]],
        win=beam.DoFn.WindowParam,
        pane=beam.DoFn.PaneInfoParam,
    ) -> Iterator[dict[str, Any]]:
        (pixel, cls, survey), (count, total) = element
        yield {
            # The window start in the batch table's `night` column, so both modes share a table.
            "night": datetime.fromtimestamp(float(win.start), UTC).strftime("%Y%m%dT%H%M%SZ"),
            "nside": self.nside,
            "pixel": pixel,
            "class": cls,
            "count": count,
            "mean_probability": total / count if count else 0.0,
            "survey": survey,
            "window_start": _iso(win.start),
            "window_end": _iso(win.end),
            "timing": {0: "EARLY", 1: "ON_TIME", 2: "LATE"}.get(pane.timing, "UNKNOWN"),
            "pane_index": pane.index,
        }


class SkyDensityWindows(beam.PTransform):
    """Probability rows → sky-density rows per fixed event-time window (early, on-time, late).

    Parameters
    ----------
    window_s
        Window length [s].
    allowed_lateness_s
        How long after the watermark passes a window's end late rows still update it [s].
    early_s
        Processing-time delay of the early firings [s].
    nside
        HEALPix resolution.

    Returns
    -------
    PCollection[dict]
        Rows of :data:`transforms.schema.SKY_DENSITY_ROW` (``night`` holds the window start) plus
        ``window_start``, ``window_end``, ``timing`` and ``pane_index``. Panes accumulate: the row
        with the highest ``pane_index`` of a (window, pixel, class) is its current total.
    """

    def __init__(
        self, window_s: float, allowed_lateness_s: float, early_s: float = 5.0, nside: int = 64
    ) -> None:
        super().__init__()
        self.window_s, self.lateness_s = window_s, allowed_lateness_s
        self.early_s, self.nside = early_s, nside

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "EventTime" >> beam.Map(lambda r: window.TimestampedValue(r, jd_to_unix(r["jd"])))
            | "Window"
            >> beam.WindowInto(
                window.FixedWindows(self.window_s),
                trigger=trigger.AfterWatermark(
                    early=trigger.AfterProcessingTime(max(1, round(self.early_s))),  # whole s
                    late=trigger.AfterCount(1),
                ),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=Duration(seconds=self.lateness_s),
            )
            | "Pixels" >> beam.Map(_density_key, nside=self.nside)
            | "SumPerPixel" >> beam.CombinePerKey(sum_pairs)
            | "DensityRow" >> beam.ParDo(_DensityRow(self.nside))
        )
