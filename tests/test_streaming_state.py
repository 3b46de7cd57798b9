"""Streaming stages with ``TestStream`` (BundleBasedDirectRunner, named so Prism is never fetched):
duplicates dropped, one classification per object, out-of-order first detection within the hold,
and windowed sky density with early, on-time and late panes."""

from __future__ import annotations

import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import IntervalWindow, TimestampedValue

from tests.helpers import mini_record
from transforms.alerts import Alert
from transforms.density import healpix_pixels
from transforms.schema import (
    SKIP_DUPLICATE,
    SKIP_EARLIER_ALREADY_CLASSIFIED,
    SKIP_NOT_FIRST_IN_INPUT,
    TAG_SKIPPED,
)
from transforms.streaming_state import (
    DropDuplicateAlerts,
    SelectFirstDetectionsStreaming,
    SkyDensityWindows,
    jd_to_unix,
)

HOLD_S = 30.0
JD0 = 2460000.5
T0 = jd_to_unix(JD0)


def _pipeline() -> beam.Pipeline:
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    return beam.Pipeline(options=options)


def _alert(object_id: str, candid: int, minutes: float) -> Alert:
    record = mini_record(candid % 1000)
    record["objectId"] = object_id
    record["candid"] = candid
    record["candidate"] = dict(record["candidate"], jd=JD0 + minutes / 1440.0)
    return Alert(record, f"test:{candid}", b"")


def _at(alert: Alert) -> TimestampedValue:
    return TimestampedValue(alert, jd_to_unix(alert.jd))


def _sync_clock(stream: BeamTestStream) -> BeamTestStream:
    # TestStream's processing-time clock starts at 0; the stages set real-time timers from the
    # wall clock, so bring the test clock to now first (timers then fire on later advances).
    return stream.advance_processing_time(int(time.time()))


def test_jd_to_unix():
    assert jd_to_unix(2440587.5) == 0.0
    assert jd_to_unix(2440588.5) == 86400.0


def test_duplicates_dropped():
    a, b = _alert("ZTF1", 1, 0), _alert("ZTF2", 2, 1)
    stream = (
        _sync_clock(BeamTestStream())
        .advance_watermark_to(T0 - 60)
        .add_elements([_at(a), _at(a), _at(b)])
        .add_elements([_at(a)])  # a redelivery in a later bundle
        .advance_processing_time(60)
        .advance_watermark_to_infinity()
    )
    with _pipeline() as p:
        out = p | stream | DropDuplicateAlerts(ttl_s=3600)
        assert_that(out["alerts"] | "Candids" >> beam.Map(lambda x: x.candid), equal_to([1, 2]))
        assert_that(
            out[TAG_SKIPPED],
            equal_to([(SKIP_DUPLICATE, 1), (SKIP_DUPLICATE, 1)]),
            label="Skipped",
        )


def test_object_classified_once_and_out_of_order_first_detection():
    # ZTF1: the later alert (minute 5) arrives first, the earliest (minute 0) 3 alerts later but
    # within the hold: the earliest must win. A third alert after the release is skipped, even
    # though it is earlier still (first result per object wins).
    late_first = _alert("ZTF1", 12, 5)
    earliest = _alert("ZTF1", 11, 0)
    middle = _alert("ZTF1", 13, 3)
    after_release = _alert("ZTF1", 10, -1)
    other = _alert("ZTF2", 21, 2)
    stream = (
        _sync_clock(BeamTestStream())
        .advance_watermark_to(T0 - 120)
        .add_elements([_at(late_first)])
        .add_elements([_at(other), _at(middle)])
        .add_elements([_at(earliest)])
        # Arrival hold passes, but the watermark is still before earliest + hold: nothing yet.
        .advance_processing_time(HOLD_S + 60)
        .advance_watermark_to(T0 + HOLD_S + 600)
        .add_elements([_at(after_release)])
        .advance_processing_time(HOLD_S + 60)
        .advance_watermark_to_infinity()
    )
    with _pipeline() as p:
        out = p | stream | SelectFirstDetectionsStreaming("first", hold_s=HOLD_S, ttl_s=7200)
        assert_that(
            out["alerts"] | "Ids" >> beam.Map(lambda x: (x.object_id, x.candid)),
            equal_to([("ZTF1", 11), ("ZTF2", 21)]),
        )
        assert_that(
            out[TAG_SKIPPED],
            equal_to(
                [
                    (SKIP_NOT_FIRST_IN_INPUT, 12),
                    (SKIP_NOT_FIRST_IN_INPUT, 13),
                    (SKIP_EARLIER_ALREADY_CLASSIFIED, 10),
                ]
            ),
            label="Skipped",
        )


def test_select_all_passes_every_alert():
    alerts = [_alert("ZTF1", 1, 0), _alert("ZTF1", 2, 1)]
    stream = BeamTestStream().add_elements([_at(a) for a in alerts]).advance_watermark_to_infinity()
    with _pipeline() as p:
        out = p | stream | SelectFirstDetectionsStreaming("all")
        assert_that(out["alerts"] | beam.Map(lambda x: x.candid), equal_to([1, 2]))


def _row(minutes: float, cls: str, p: float, ra: float = 10.0) -> dict:
    return {
        "jd": JD0 + minutes / 1440.0,
        "ra": ra,
        "dec": 20.0,
        "predicted_class": cls,
        f"p_{cls}": p,
    }


@pytest.mark.parametrize("nside", [8])
def test_windowed_density_early_on_time_and_late(nside):
    window_s, lateness_s = 600.0, 1200.0
    (pixel,) = healpix_pixels([10.0], [20.0], nside)
    w0 = IntervalWindow(T0, T0 + window_s)
    w1 = IntervalWindow(T0 + window_s, T0 + 2 * window_s)
    # The trigger's timers run on the TestStream clock itself: no wall-clock sync here.
    stream = (
        BeamTestStream()
        .advance_watermark_to(T0)
        .add_elements([TimestampedValue(_row(1, "SN", 0.8), T0 + 60)])
        .advance_processing_time(10)  # early pane of w0: 1 SN
        .add_elements([TimestampedValue(_row(2, "SN", 0.6), T0 + 120)])
        .add_elements([TimestampedValue(_row(11, "VS", 0.9), T0 + 660)])
        .advance_watermark_to(T0 + window_s + 1)  # on-time pane of w0: 2 SN
        .add_elements([TimestampedValue(_row(3, "SN", 0.4), T0 + 180)])  # late, within lateness
        .advance_watermark_to(T0 + 2 * window_s + 1)  # on-time pane of w1
        .advance_watermark_to(T0 + window_s + lateness_s + 60)  # w0 expired
        .add_elements([TimestampedValue(_row(4, "SN", 0.2), T0 + 240)])  # dropped: too late
        .advance_watermark_to_infinity()
    )

    def pane(r):
        return (r["class"], r["pixel"], r["count"], round(r["mean_probability"], 6), r["timing"])

    with _pipeline() as p:
        rows = p | stream | SkyDensityWindows(window_s, lateness_s, early_s=5, nside=nside)
        panes = rows | beam.Map(pane)
        assert_that(
            panes,
            equal_to_per_window(
                {
                    w0: [
                        ("SN", pixel, 1, 0.8, "EARLY"),
                        ("SN", pixel, 2, 0.7, "ON_TIME"),
                        ("SN", pixel, 3, 0.6, "LATE"),  # accumulating: all three
                    ],
                    w1: [("VS", pixel, 1, 0.9, "ON_TIME")],
                }
            ),
        )
        assert_that(
            rows | "Starts" >> beam.Map(lambda r: (r["night"], r["window_start"])),
            equal_to(
                [("20230225T000000Z", "2023-02-25T00:00:00Z")] * 3
                + [("20230225T001000Z", "2023-02-25T00:10:00Z")]
            ),
            label="WindowLabels",
        )
