"""Beam stage *stamps*: check that an alert's three cutouts decode into images.

Pure work is :func:`transforms.stamps.decode_stamps`; this DoFn adapts it, routing alerts whose
cutouts are null, JPEG, corrupt or not FITS to ``stamps`` dead letters with the alert's ids and its
single-alert container as raw bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.alerts import Alert
from transforms.dead_letters import alert_dead_letter
from transforms.schema import METRICS_NAMESPACE, STAGE_STAMPS, STAMP_KINDS, TAG_DEAD_LETTERS
from transforms.stamps import StampError, decode_stamps


def alert_images(alert: Alert) -> dict[str, Any]:
    """Decode the science, template and difference stamps of an alert.

    Parameters
    ----------
    alert
        A decoded alert.

    Returns
    -------
    dict
        ``{kind: float32 image}`` for each kind in :data:`transforms.schema.STAMP_KINDS`.

    Raises
    ------
    transforms.stamps.StampError
        When any cutout is null, not gzipped FITS, corrupt or of an unsupported type.
    """
    return decode_stamps({kind: alert.cutout_bytes(kind) for kind in STAMP_KINDS})


class DecodeCutouts(beam.DoFn):
    """Alert → ``(alert, {kind: image})``; undecodable cutouts → ``stamps`` dead letters."""

    def __init__(self) -> None:
        self.ok = Metrics.counter(METRICS_NAMESPACE, "alerts_with_stamps")
        self.dead = Metrics.counter(METRICS_NAMESPACE, f"dead_letters_{STAGE_STAMPS}")

    def process(self, alert: Alert) -> Iterator[Any]:
        try:
            images = alert_images(alert)
        except StampError as e:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput(
                TAG_DEAD_LETTERS, alert_dead_letter(alert, STAGE_STAMPS, str(e))
            )
            return
        self.ok.inc()
        yield alert, images
