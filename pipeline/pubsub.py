"""Stage *ReadAlerts* of the streaming job: Pub/Sub messages → alerts on event time.

::

    ReadFromPubSub ─ Decode (DecodePubSubMessages: DecodeMessages ─ EventTime (jd)) ─▶ alerts
                                                          └──────────────────────▶ dead letters

A message is read with its attributes and decoded by :class:`transforms.pittgoogle.DecodeMessages`:
an Avro container (``stampflow publish``, ZTF's and Pitt-Google's ``ztf-alerts``), a wire-format
message (Rubin, Pitt-Google's ``lsst-alerts``; schemas from ``--schema-dir`` /
``--schema-registry``) or a Pitt-Google JSON alert (``lsst-alerts-json``, its schema named by the
``schema_version`` attribute). Attributes that contradict the data, like undecodable data, make a
dead letter. A message's source is its ``source`` attribute, else its Kafka coordinates
(``kafka.topic``/``kafka.partition``/``kafka.offset``), else its message id. Event time is the
alert's ``jd`` (Unix seconds); inputs that never become an alert keep their Pub/Sub publish time
(or ``--timestamp-attribute``, e.g. ``kafka.timestamp``). The output has the batch reader's shape.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from pipeline.options import StreamingOptions
from transforms.pittgoogle import DecodeMessages
from transforms.schema import TAG_ALERTS, TAG_DEAD_LETTERS
from transforms.streaming_state import jd_to_unix
from transforms.wire import SchemaSources

__all__ = ["DecodePubSubMessages", "ReadPubSubAlerts", "with_event_time"]


def with_event_time(alert: Any) -> beam.window.TimestampedValue:
    """Timestamp an alert with its ``jd`` (event time) instead of the message's publish time."""
    return beam.window.TimestampedValue(alert, jd_to_unix(alert.jd))


class DecodePubSubMessages(beam.PTransform):
    """``PubsubMessage`` objects (data and attributes) → ``{"alerts", "dead_letters"}``.

    Parameters
    ----------
    schemas
        Where wire-format and JSON messages' writer schemas are found.
    """

    def __init__(self, schemas: SchemaSources | None = None) -> None:
        super().__init__()
        self.schemas = schemas

    def expand(self, messages: beam.PCollection) -> dict[str, beam.PCollection]:
        decoded = messages | "Messages" >> beam.ParDo(DecodeMessages(self.schemas)).with_outputs(
            TAG_DEAD_LETTERS, main=TAG_ALERTS
        )
        alerts = decoded[TAG_ALERTS] | "EventTime" >> beam.Map(with_event_time)
        return {TAG_ALERTS: alerts, TAG_DEAD_LETTERS: decoded[TAG_DEAD_LETTERS]}


class ReadPubSubAlerts(beam.PTransform):
    """A subscription → ``{"alerts", "dead_letters"}`` like :class:`transforms.ingest.ReadAlerts`.

    Parameters
    ----------
    streaming
        The subscription and the optional timestamp attribute.
    schemas
        Where wire-format (Rubin) and JSON messages' writer schemas are found.
    """

    def __init__(self, streaming: StreamingOptions, schemas: SchemaSources | None = None) -> None:
        super().__init__()
        self.streaming = streaming
        self.schemas = schemas

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        return (
            pbegin
            | "ReadFromPubSub"
            >> beam.io.ReadFromPubSub(
                subscription=self.streaming.subscription,
                with_attributes=True,
                timestamp_attribute=self.streaming.timestamp_attribute,
            )
            | "Decode" >> DecodePubSubMessages(self.schemas)
        )
