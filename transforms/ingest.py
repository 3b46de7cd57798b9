"""Beam stage *read → decode*: input patterns to :class:`~transforms.alerts.Alert` records.

``ReadAlerts`` is the first composite of the pipeline::

    patterns ─ ExpandInputs ─ Reshuffle ─ ReadFiles ─ DecodeAlerts ─▶ alerts
                   │                          │            │
                   └──────────────────────────┴────────────┴──────▶ dead_letters (read / decode)

The DoFns only adapt the pure functions of :mod:`transforms.sources` and :mod:`transforms.alerts`:
every error becomes a dead letter on the ``dead_letters`` output and is counted with a Beam metric,
so ``containers in == alerts + dead letters`` holds for every bundle. ``DecodeAlerts`` is also the
decoder for Pub/Sub messages (one container per message).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.alerts import Alert, decode_alerts
from transforms.dead_letters import dead_letter
from transforms.first_pass import scan_alerts
from transforms.schema import (
    METRICS_NAMESPACE,
    STAGE_DECODE,
    STAGE_READ,
    TAG_ALERTS,
    TAG_DEAD_LETTERS,
)
from transforms.sources import ReadError, expand_pattern, read_path
from transforms.wire import SchemaSources, configure_schemas


class ExpandInputs(beam.DoFn):
    """Pattern (file, directory, glob) → file paths; ``no_match`` patterns become dead letters."""

    def __init__(self) -> None:
        self.files = Metrics.counter(METRICS_NAMESPACE, "files_matched")
        self.dead = Metrics.counter(METRICS_NAMESPACE, f"dead_letters_{STAGE_READ}")

    def process(self, pattern: str) -> Iterator[Any]:
        for item in expand_pattern(pattern):
            if isinstance(item, ReadError):
                self.dead.inc()
                yield beam.pvalue.TaggedOutput(
                    TAG_DEAD_LETTERS, dead_letter(STAGE_READ, item.reason, item.source, item.raw)
                )
            else:
                self.files.inc()
                yield item


class ReadFiles(beam.DoFn):
    """File path → ``(source, container bytes, path)``, one per file or archive member."""

    def __init__(self) -> None:
        self.containers = Metrics.counter(METRICS_NAMESPACE, "containers_read")
        self.dead = Metrics.counter(METRICS_NAMESPACE, f"dead_letters_{STAGE_READ}")

    def process(self, path: str) -> Iterator[Any]:
        for item in read_path(path):
            if isinstance(item, ReadError):
                self.dead.inc()
                yield beam.pvalue.TaggedOutput(
                    TAG_DEAD_LETTERS, dead_letter(STAGE_READ, item.reason, item.source, item.raw)
                )
            else:
                self.containers.inc()
                yield (*item, path)


class DecodeAlerts(beam.DoFn):
    """``(source, container bytes[, path])`` → alerts; the undecodable remainder → one dead letter.

    ``path`` (the file read, from :class:`ReadFiles`) is kept on the alerts; Pub/Sub messages
    come without one.

    Parameters
    ----------
    scan
        Emit :class:`transforms.first_pass.Scanned` records (ids, ``jd``, whether the history
        holds an earlier detection) instead of full alerts: what the batch job's first pass
        needs, read without decoding histories or cutouts. The records before a problem and the
        problem itself, hence the dead letters, are exactly those of a full decode.
    schemas
        Where wire-format messages' writer schemas are found (:mod:`transforms.wire`), set on
        every worker in ``setup``; None keeps the process's own setting.
    """

    def __init__(self, scan: bool = False, schemas: SchemaSources | None = None) -> None:
        self.scan = scan
        self.schemas = schemas
        self._decode = scan_alerts if scan else decode_alerts
        self.alerts = Metrics.counter(METRICS_NAMESPACE, "alerts_decoded")
        self.dead = Metrics.counter(METRICS_NAMESPACE, f"dead_letters_{STAGE_DECODE}")

    def setup(self) -> None:
        if self.schemas is not None:
            configure_schemas(self.schemas.dirs, self.schemas.registry)

    def process(self, element: tuple[str, bytes] | tuple[str, bytes, str]) -> Iterator[Any]:
        source, data = element[:2]
        path = element[2] if len(element) > 2 else ""
        try:
            alerts, error = self._decode(data, source, path)
        except Exception as e:  # a bug, not bad data; still never lose the input
            alerts, error = [], e
        yield from decoded_outputs(alerts, error, source, data, self.alerts, self.dead)


def decoded_outputs(
    alerts: list[Alert], error: Exception | None, source: str, data: bytes, counted, dead
) -> Iterator[Any]:
    """What one input became: its alerts, then its ``decode`` dead letter if decoding stopped.

    Parameters
    ----------
    alerts, error
        A decoder's result (``error``: its exception, or a bug's).
    source, data
        The input's name and raw bytes (kept in the dead letter).
    counted, dead
        Beam counters of decoded alerts and of decode dead letters.
    """
    for alert in alerts:
        counted.inc()
        yield alert
    if error is not None:
        dead.inc()
        reason = getattr(error, "reason", None) or f"internal: {type(error).__name__}: {error}"
        if alerts:
            reason += f" (after {len(alerts)} record(s) decoded)"
        yield beam.pvalue.TaggedOutput(
            TAG_DEAD_LETTERS, dead_letter(STAGE_DECODE, reason, source, data)
        )


class ReadAlerts(beam.PTransform):
    """Read and decode alerts from files, directories, globs, archives or ``gs://`` paths.

    Parameters
    ----------
    patterns
        Input arguments as a user gives them (see :func:`transforms.sources.expand_pattern`).
    scan
        Emit first-pass :class:`transforms.first_pass.Scanned` records instead of alerts (see
        :class:`DecodeAlerts`); :class:`transforms.selection.SelectFirstDetections` takes either.
    spread
        Reshuffle the matched files so that every worker reads some (distributed runners, local
        worker processes); one local process reads them where they were matched.
    schemas
        Wire-format schema sources (see :class:`DecodeAlerts`).

    Returns
    -------
    dict
        ``{"alerts": PCollection[Alert | Scanned], "dead_letters": PCollection[dict]}``.
    """

    def __init__(
        self,
        patterns: Iterable[str],
        scan: bool = False,
        spread: bool = True,
        schemas: SchemaSources | None = None,
    ) -> None:
        super().__init__()
        self.patterns = list(patterns)
        self.scan = scan
        self.spread = spread
        self.schemas = schemas

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        matched = (
            pbegin
            | "Patterns" >> beam.Create(self.patterns)
            | "Expand" >> beam.ParDo(ExpandInputs()).with_outputs(TAG_DEAD_LETTERS, main="paths")
        )
        paths = matched.paths
        if self.spread:  # matching happens on one worker
            paths = paths | "Spread" >> beam.Reshuffle()
        read = paths | "Read" >> beam.ParDo(ReadFiles()).with_outputs(
            TAG_DEAD_LETTERS, main="containers"
        )
        decoded = read.containers | "Decode" >> beam.ParDo(
            DecodeAlerts(self.scan, self.schemas)
        ).with_outputs(TAG_DEAD_LETTERS, main=TAG_ALERTS)
        dead = (
            matched[TAG_DEAD_LETTERS],
            read[TAG_DEAD_LETTERS],
            decoded[TAG_DEAD_LETTERS],
        ) | "DeadLetters" >> beam.Flatten()
        return {TAG_ALERTS: decoded[TAG_ALERTS], TAG_DEAD_LETTERS: dead}
