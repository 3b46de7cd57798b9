"""Beam stage *select*: keep each object's first detection (SPEC §8), count what is skipped.

``--select first`` (the default, as ALeRCE production) keeps an alert when

1. its ``prv_candidates`` hold no detection earlier than itself (a pure check per alert, no
   shuffle: in ZTF's stream this alone removes every later alert of an object), and
2. it is the earliest alert (``jd``, then ``candid``) of its ``objectId`` in this input (for
   archives whose histories are missing, or that hold an object's alerts from several nights).

Step 2 needs every object's alerts side by side, i.e. a shuffle. Shuffling the alerts themselves
made a batch run's memory grow with the night (the local runner holds a ``GroupByKey``'s whole
input: ≈ 150 kB per kept alert, 15 GB for a 260k-alert night), so only *sightings*
``(objectId, jd, candid, source)`` are shuffled, ≈ 100 B each, and the winners are then read again
from their files::

    alerts ─ History ─▶ sightings ─ GroupByKey(objectId) ─ Earliest ─▶ winners
                                                                         │
    winners ─ GroupByKey(file) ─ Reread (decode only the winners' containers) ─▶ first detections

In the batch job the first read is a scan (:mod:`transforms.first_pass`): the alerts arrive as
``Scanned`` records holding only ids, ``jd``, source and whether the history has an earlier
detection, so histories and cutouts are decoded for the winners only.

The second read costs about one extra decode per *selected* alert: files without a winner are not
opened again, containers without one are not decoded, a multi-record container is decoded up to
its last wanted record, and an archive is streamed again only up to its last winner. A winner
that cannot be found again (the file changed or vanished between the passes) becomes a
``select`` dead letter, so the run still reconciles. On distributed runners (``spread``) the
re-read alerts are reshuffled, so one big archive's winners are classified by every worker.

``--select all`` classifies every alert, each once: the same two passes run with ``candid`` as
the key instead of ``objectId`` and no history check. In both modes an alert read twice (a file
given twice, overlapping archives) is classified once; its other copies are skipped as
``duplicate_candid``, as the streaming job's ``DropDuplicates`` does. Skipped alerts leave on the
``skipped`` output as ``(reason, candid)`` so the run summary can reconcile
``records in == classified + skipped + dead``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.alerts import Alert, AlertDecodeError, iter_alerts
from transforms.dead_letters import dead_letter
from transforms.first_pass import slim_alerts
from transforms.rules import earliest_key
from transforms.schema import (
    METRICS_NAMESPACE,
    SELECT_MODES,
    SKIP_DUPLICATE,
    SKIP_EARLIER_DETECTION,
    SKIP_NOT_FIRST_IN_INPUT,
    STAGE_SELECT,
    TAG_ALERTS,
    TAG_DEAD_LETTERS,
    TAG_SKIPPED,
)
from transforms.sources import ReadError, read_path
from transforms.wire import SchemaSources, configure_schemas

__all__ = [
    "SelectFirstDetections",
    "Sighting",
    "earliest",
    "history_reason",
    "reread_winners",
    "sighting",
    "source_path",
    "unique_sightings",
]


class Sighting(NamedTuple):
    """What first-detection selection needs of an alert: its order key and where to find it."""

    jd: float  # [day]
    candid: int
    source: str  # a path or ``archive!member``, as on :class:`~transforms.alerts.Alert`
    path: str  # the file ``source`` lives in
    object_id: str = ""


#: One selected alert, as the re-read looks for it: ``(source, candid, objectId, jd)``. All four,
#: since archives may hold two records with one ``candid`` (different objects or epochs).
Wanted = tuple[str, int, str, float]


def sighting(alert: Any) -> tuple[str, Sighting]:
    """``(objectId, Sighting)`` of an :class:`Alert` or a first-pass ``Scanned`` record."""
    path = alert.path or source_path(alert.source)
    return alert.object_id, Sighting(alert.jd, alert.candid, alert.source, path, alert.object_id)


def _by_candid(alert: Any) -> tuple[int, Sighting]:
    return alert.candid, sighting(alert)[1]


def source_path(source: str) -> str:
    """The file of a source recorded without one: ``night.tar.gz!a/b.avro`` → ``night.tar.gz``.

    Only a fallback: a path may contain ``!`` itself, so alerts carry their path
    (:attr:`transforms.alerts.Alert.path`).
    """
    return source.partition("!")[0]


def earliest(sightings: Iterable[Sighting]) -> tuple[Sighting, list[Sighting]]:
    """The earliest sighting (``jd``, then ``candid``) and the rest, in order.

    Parameters
    ----------
    sightings
        One object's sightings (at least one).

    Returns
    -------
    (Sighting, list of Sighting)
        The winner and the later sightings. Two copies of one alert (same ``candid``, e.g. a file
        given twice) are ordered by ``source`` so the choice does not depend on shuffle order.
    """
    ordered = sorted(sightings, key=lambda s: (*earliest_key(s.jd, s.candid), s.source))
    return ordered[0], ordered[1:]


def unique_sightings(sightings: Iterable[Sighting]) -> tuple[list[Sighting], list[Sighting]]:
    """One sighting per ``candid`` and the extra copies.

    Parameters
    ----------
    sightings
        Sightings of one object (or of one candid).

    Returns
    -------
    (list of Sighting, list of Sighting)
        The kept sightings (of each candid, the copy with the smallest ``source``, so the choice
        does not depend on shuffle order) and the duplicates.
    """
    kept: dict[int, Sighting] = {}
    copies: list[Sighting] = []
    for s in sorted(sightings, key=lambda s: (s.candid, s.source)):
        if s.candid in kept:
            copies.append(s)
        else:
            kept[s.candid] = s
    return list(kept.values()), copies


def reread_winners(
    path: str, wanted: Iterable[Wanted], slim: bool = False
) -> Iterator[Alert | tuple[Wanted, str]]:
    """Read ``path`` again and yield the wanted alerts, each exactly once.

    Parameters
    ----------
    path
        A file or archive, as matched by the first read.
    wanted
        The selected alerts that live in ``path``.
    slim
        Yield :meth:`~transforms.alerts.Alert.slim` alerts, decoded without their histories
        (:func:`transforms.first_pass.slim_alerts`, ~5x faster on real alerts).

    Yields
    ------
    Alert or (Wanted, reason)
        Each wanted alert found (full, with its raw container, unless ``slim``), then one
        ``(wanted, reason)`` per wanted alert that is no longer there. Containers without a
        wanted alert are not decoded, a container's decoding stops at its last wanted record,
        and the file is closed as soon as everything was found.
    """
    decode = slim_alerts if slim else iter_alerts
    missing: dict[str, set[Wanted]] = {}
    for w in wanted:
        missing.setdefault(w[0], set()).add(w)
    why = "reread: alert not found when its file was read again"
    for item in read_path(path):
        if isinstance(item, ReadError):
            if item.source == path:  # the whole file is gone or broken now
                why = f"reread: {item.reason}"
            continue
        source, data = item
        left = missing.get(source)
        if not left:
            continue
        try:
            for alert in decode(data, source, path):
                key = (alert.source, alert.candid, alert.object_id, alert.jd)
                if key in left:
                    left.discard(key)
                    yield alert
                    if not left:
                        break
        except AlertDecodeError:  # the first read dead-lettered the broken tail already
            pass
        if not left:
            del missing[source]
            if not missing:
                break  # stop streaming the archive
    for left in missing.values():
        for w in sorted(left):
            yield w, why


def history_reason(alert: Any) -> str | None:
    """Why an :class:`Alert` (its survey judges its history) or a first-pass
    :class:`transforms.first_pass.Scanned` record (which carries the answer) is not a first
    detection, or None."""
    return SKIP_EARLIER_DETECTION if alert.earlier_detection else None


class _History(beam.DoFn):
    def __init__(self) -> None:
        self.skipped = Metrics.counter(METRICS_NAMESPACE, "skipped_earlier_detection")

    def process(self, alert: Any) -> Iterator[Any]:
        reason = history_reason(alert)
        if reason is None:
            yield sighting(alert)
        else:
            self.skipped.inc()
            yield beam.pvalue.TaggedOutput(TAG_SKIPPED, (reason, alert.candid))


def _winner_by_path(item: tuple[Any, Iterable[Sighting]]) -> Iterator[Any]:
    # Grouped by objectId (--select first) or by candid (--select all): copies of one candid
    # are duplicates, and of the distinct alerts only the earliest is kept.
    _, sightings = item
    unique, copies = unique_sightings(sightings)
    for s in copies:
        yield beam.pvalue.TaggedOutput(TAG_SKIPPED, (SKIP_DUPLICATE, s.candid))
    first, later = earliest(unique)
    for s in later:
        yield beam.pvalue.TaggedOutput(TAG_SKIPPED, (SKIP_NOT_FIRST_IN_INPUT, s.candid))
    yield first.path, (first.source, first.candid, first.object_id, first.jd)


class _Reread(beam.DoFn):
    def __init__(self, schemas: SchemaSources | None = None) -> None:
        self.schemas = schemas
        self.reread = Metrics.counter(METRICS_NAMESPACE, "alerts_reread")
        self.dead = Metrics.counter(METRICS_NAMESPACE, f"dead_letters_{STAGE_SELECT}")

    def setup(self) -> None:
        if self.schemas is not None:  # wire-format files are decoded again here
            configure_schemas(self.schemas.dirs, self.schemas.registry)

    def process(self, item: tuple[str, Iterable[Wanted]]) -> Iterator[Any]:
        path, wanted = item
        # Only the candidate and cutouts are needed from here (dead letters re-read the bytes).
        for found in reread_winners(path, wanted, slim=True):
            if isinstance(found, Alert):
                self.reread.inc()
                yield found
            else:
                self.dead.inc()
                (source, candid, object_id, _), reason = found
                yield beam.pvalue.TaggedOutput(
                    TAG_DEAD_LETTERS,
                    dead_letter(STAGE_SELECT, reason, source, b"", object_id, candid),
                )


class SelectFirstDetections(beam.PTransform):
    """Alerts → first detections, ``skipped`` ``(reason, candid)`` pairs and ``dead_letters``.

    Parameters
    ----------
    mode
        ``"first"`` or ``"all"``.
    spread
        Reshuffle the re-read alerts, so that the winners of one big archive (read by one worker)
        are featurised and classified by all of them. For distributed runners: on the local
        runner a reshuffle would hold every selected alert in memory again.
    schemas
        Wire-format schema sources, for reading wire-format files again.

    Notes
    -----
    Both modes re-read the selected alerts from their ``source`` (see the module docstring), so
    the input must come from :class:`transforms.ingest.ReadAlerts` over files that stay in place
    for the run. The selected alerts are slim (:meth:`transforms.alerts.Alert.slim`).
    """

    def __init__(
        self, mode: str = "first", spread: bool = False, schemas: SchemaSources | None = None
    ) -> None:
        super().__init__()
        if mode not in SELECT_MODES:
            raise ValueError(f"select mode {mode!r} not in {SELECT_MODES}")
        self.mode = mode
        self.spread = spread
        self.schemas = schemas

    def expand(self, alerts: beam.PCollection) -> dict[str, beam.PCollection]:
        if self.mode == "all":
            sightings = alerts | "Sightings" >> beam.Map(_by_candid)
            history_skipped = alerts.pipeline | "NoHistoryCheck" >> beam.Create([])
        else:
            history = alerts | "History" >> beam.ParDo(_History()).with_outputs(
                TAG_SKIPPED, main="sightings"
            )
            sightings, history_skipped = history.sightings, history[TAG_SKIPPED]
        winners = (
            sightings
            | "GroupObjects" >> beam.GroupByKey()
            | "Earliest" >> beam.FlatMap(_winner_by_path).with_outputs(TAG_SKIPPED, main="winners")
        )
        reread = (
            winners.winners
            | "GroupFiles" >> beam.GroupByKey()
            | "Reread"
            >> beam.ParDo(_Reread(self.schemas)).with_outputs(TAG_DEAD_LETTERS, main=TAG_ALERTS)
        )
        selected = reread[TAG_ALERTS]
        if self.spread:
            selected = selected | "SpreadWinners" >> beam.Reshuffle()
        skipped = (history_skipped, winners[TAG_SKIPPED]) | "AllSkipped" >> beam.Flatten()
        return {
            TAG_ALERTS: selected,
            TAG_SKIPPED: skipped,
            TAG_DEAD_LETTERS: reread[TAG_DEAD_LETTERS],
        }
