"""``stampflow publish``: replay alert files and archives into a Pub/Sub topic, as surveys send.

ZTF: every container (a ``.avro`` file or an archive member) becomes one message, as ZTF publishes.
Rubin: every alert becomes one Kafka *wire-format* message (byte 0, the int32 schema id, the
record; :mod:`transforms.wire`), as Rubin's stream carries them: wire-format files are sent as they
are, alerts from Avro or Parquet files are encoded with the schema version they name (Fink's
copies) or ``--schema-id``, from ``--schema-dir``. Each message has the attributes ``source``
(the path or ``archive!member``) and, when it decodes, ``event_time`` (the earliest ``jd`` it
holds, in ms since the Unix epoch) for ``--timestamp-attribute``. Unreadable paths are reported
and skipped. Against the emulator, set ``PUBSUB_EMULATOR_HOST``::

    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 stampflow publish --topic projects/P/topics/alerts \\
        --rate 50 night/ more/*.avro
    stampflow publish --topic projects/P/topics/rubin --schema-dir lsst_alert_packet/schema \\
        rubin/*.parquet
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.argtypes import positive_int
from transforms.alerts import decode_alerts
from transforms.schema import EVENT_TIME_ATTRIBUTE, SOURCE_ATTRIBUTE
from transforms.sources import ReadError, expand_pattern, read_path
from transforms.streaming_state import jd_to_unix
from transforms.surveys import LSST
from transforms.wire import configure_schemas, is_wire_format, to_wire


def containers(paths: Sequence[str]) -> Iterator[tuple[str, bytes] | ReadError]:
    """Every container of the given files/directories/globs/archives, in order."""
    for pattern in paths:
        for item in expand_pattern(pattern):
            if isinstance(item, ReadError):
                yield item
            else:
                yield from read_path(item)


def messages(
    paths: Sequence[str], schema_id: int | None = None
) -> Iterator[tuple[str, bytes] | ReadError]:
    """The messages a survey would send for the files under ``paths``: ``(source, bytes)``.

    A ZTF container is one message; a Rubin file is one wire-format message per alert
    (``source#index`` when it holds several). A container that does not decode is sent as it is
    (the job dead-letters it); a Rubin alert that cannot be encoded is a :class:`ReadError`.
    """
    for item in containers(paths):
        if isinstance(item, ReadError):
            yield item
            continue
        source, data = item
        try:
            alerts, _ = decode_alerts(data, source)
        except Exception:  # a bad container is still published: the job dead-letters it
            alerts = []
        if not alerts or alerts[0].survey is not LSST or is_wire_format(data):
            yield source, data
            continue
        for i, alert in enumerate(alerts):
            name = source if len(alerts) == 1 else f"{source}#{i}"
            try:
                yield name, to_wire(alert.record, schema_id)
            except ValueError as e:
                yield ReadError(name, f"wire: {e}")


def attributes(source: str, data: bytes) -> dict[str, str]:
    """Message attributes of a container: ``source`` and, if it decodes, ``event_time`` [ms]."""
    attrs = {SOURCE_ATTRIBUTE: source}
    try:
        alerts, _ = decode_alerts(data, source)
    except Exception:  # a bad container is still published: the job dead-letters it
        alerts = []
    if alerts:
        jd = min(a.jd for a in alerts)
        attrs[EVENT_TIME_ATTRIBUTE] = str(round(jd_to_unix(jd) * 1000))
    return attrs


def publish(
    topic: str,
    paths: Sequence[str],
    rate: float | None = None,
    limit: int | None = None,
    publisher: Any = None,
    on_published: Callable[[str, dict[str, str], float], None] | None = None,
    schema_id: int | None = None,
) -> dict[str, int]:
    """Publish every container under ``paths`` to ``topic``.

    Parameters
    ----------
    topic
        ``projects/P/topics/T``.
    paths
        Files, directories, globs or archives (:func:`transforms.sources.expand_pattern`).
    rate
        Messages per second at most; None for as fast as possible.
    limit
        Stop after this many messages.
    publisher
        A ``google.cloud.pubsub_v1.PublisherClient`` (default: a new one; it honours
        ``PUBSUB_EMULATOR_HOST``).
    on_published
        Called with ``(source, attributes, time.time() after the publish was acknowledged)``.
    schema_id
        Rubin alerts' writer schema id (None: the version each names, else the newest known).

    Returns
    -------
    dict
        ``published`` and ``unreadable`` counts.
    """
    if publisher is None:
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
    counts = {"published": 0, "unreadable": 0}
    interval = 1.0 / rate if rate else 0.0
    next_at = time.perf_counter()
    for item in messages(paths, schema_id):
        if limit is not None and counts["published"] >= limit:
            break
        if isinstance(item, ReadError):
            counts["unreadable"] += 1
            print(f"skipped {item.source}: {item.reason}", file=sys.stderr)
            continue
        source, data = item
        attrs = attributes(source, data)
        if interval:
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            next_at = max(next_at, time.perf_counter() - interval) + interval
        # Wait for each acknowledgement: the rate is then a real rate and errors surface here.
        publisher.publish(topic, data, **attrs).result(timeout=60)
        counts["published"] += 1
        if on_published is not None:
            on_published(source, attrs, time.time())
    return counts


def _rate(text: str) -> float:
    value = float(text.removesuffix("/s"))
    if value <= 0:
        raise argparse.ArgumentTypeError("rate must be > 0 messages/s")
    return value


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    """Add ``stampflow publish`` to the command line."""
    parser = subparsers.add_parser(
        name,
        help="replay alert files into a Pub/Sub topic",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="alert files, dirs, archives")
    parser.add_argument("--topic", required=True, help="projects/P/topics/T")
    parser.add_argument("--rate", type=_rate, default=None, help="messages per second, e.g. 50/s")
    parser.add_argument("--limit", type=positive_int, default=None, help="stop after N messages")
    parser.add_argument(
        "--schema-dir",
        action="append",
        default=None,
        help="Rubin alert schemas (lsst.vMAJOR_MINOR.alert.avsc): Rubin alerts are sent as "
        "wire-format messages encoded with them",
    )
    parser.add_argument(
        "--schema-id",
        type=positive_int,
        default=None,
        help="Rubin writer schema id (major*100+minor, e.g. 1000 for v10.0); default: the "
        "version each alert names, else the newest in --schema-dir",
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    for d in args.schema_dir or ():
        if not Path(d).is_dir():
            print(f"stampflow publish: --schema-dir {d} is not a directory", file=sys.stderr)
            return 2
    configure_schemas(args.schema_dir or ())
    counts = publish(args.topic, args.paths, args.rate, args.limit, schema_id=args.schema_id)
    print(f"published {counts['published']} messages to {args.topic}", end="")
    print(f" ({counts['unreadable']} unreadable paths skipped)" if counts["unreadable"] else "")
    return 0
