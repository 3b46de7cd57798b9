"""Stage *ReadAlerts* of the streaming job: Pub/Sub messages → alerts on event time.

::

    ReadFromPubSub ─ ToContainer ─ Decode (DecodeAlerts) ─ EventTime (jd) ─▶ alerts
                                      └──────────────────────────────▶ dead letters

One message holds one Avro container (``stampflow publish`` and ZTF's Kafka-to-Pub/Sub bridges
alike); its ``source`` attribute, when set, names the file it came from. Event time is the
alert's ``jd`` (Unix seconds); inputs that never become an alert keep their Pub/Sub publish time
(or ``--timestamp-attribute``). The output has the batch reader's shape.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from pipeline.options import StreamingOptions
from transforms.ingest import DecodeAlerts
from transforms.schema import SOURCE_ATTRIBUTE, TAG_ALERTS, TAG_DEAD_LETTERS
from transforms.streaming_state import jd_to_unix
from transforms.wire import SchemaSources

__all__ = ["ReadPubSubAlerts", "message_to_container", "with_event_time"]


def message_to_container(message: Any) -> tuple[str, bytes]:
    """A Pub/Sub message → ``(source, container bytes)`` for :class:`DecodeAlerts`.

    The source is the publisher's ``source`` attribute, else ``pubsub:<message id>``.
    """
    attributes = message.attributes or {}
    source = attributes.get(SOURCE_ATTRIBUTE) or f"pubsub:{message.message_id or 'unknown'}"
    return source, message.data


def with_event_time(alert: Any) -> beam.window.TimestampedValue:
    """Timestamp an alert with its ``jd`` (event time) instead of the message's publish time."""
    return beam.window.TimestampedValue(alert, jd_to_unix(alert.jd))


class ReadPubSubAlerts(beam.PTransform):
    """A subscription → ``{"alerts", "dead_letters"}`` like :class:`transforms.ingest.ReadAlerts`.

    Parameters
    ----------
    streaming
        The subscription and the optional timestamp attribute.
    schemas
        Where wire-format (Rubin) messages' writer schemas are found.
    """

    def __init__(self, streaming: StreamingOptions, schemas: SchemaSources | None = None) -> None:
        super().__init__()
        self.streaming = streaming
        self.schemas = schemas

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        decoded = (
            pbegin
            | "ReadFromPubSub"
            >> beam.io.ReadFromPubSub(
                subscription=self.streaming.subscription,
                with_attributes=True,
                timestamp_attribute=self.streaming.timestamp_attribute,
            )
            | "ToContainer" >> beam.Map(message_to_container)
            | "Decode"
            >> beam.ParDo(DecodeAlerts(schemas=self.schemas)).with_outputs(
                TAG_DEAD_LETTERS, main=TAG_ALERTS
            )
        )
        alerts = decoded[TAG_ALERTS] | "EventTime" >> beam.Map(with_event_time)
        return {TAG_ALERTS: alerts, TAG_DEAD_LETTERS: decoded[TAG_DEAD_LETTERS]}
