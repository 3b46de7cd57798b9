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
import concurrent.futures
import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pipeline.argtypes import positive_int
from transforms.alerts import AVRO_MAGIC, container_survey, decode_alerts
from transforms.first_pass import scan_alerts
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


def _event_attrs(source: str, jds: Sequence[float]) -> dict[str, str]:
    attrs = {SOURCE_ATTRIBUTE: source}
    if jds:
        attrs[EVENT_TIME_ATTRIBUTE] = str(round(jd_to_unix(min(jds)) * 1000))
    return attrs


def messages(
    paths: Sequence[str], schema_id: int | None = None
) -> Iterator[tuple[str, bytes, dict[str, str]] | ReadError]:
    """The messages a survey would send for the files under ``paths``: ``(source, bytes, attrs)``.

    A ZTF container is one message; a Rubin file is one wire-format message per alert
    (``source#index`` when it holds several). A container that does not decode is sent as it is
    (the job dead-letters it); a Rubin alert that cannot be encoded is a :class:`ReadError`. Each
    container is decoded once: ZTF ones by the first pass (ids and times only, :mod:`transforms.
    first_pass`), Rubin ones in full.
    """
    for item in containers(paths):
        if isinstance(item, ReadError):
            yield item
            continue
        source, data = item
        survey, schema_name = container_survey(data)
        rubin_file = not data.startswith(AVRO_MAGIC) or survey is LSST
        if not rubin_file or is_wire_format(data):
            try:
                scanned, _ = scan_alerts(data, source)
            except Exception:  # a bad container is still published: the job dead-letters it
                scanned = []
            yield source, data, _event_attrs(source, [a.jd for a in scanned])
            continue
        alerts, error = decode_alerts(data, source)
        if not alerts:
            yield source, data, _event_attrs(source, [])
            continue
        for i, alert in enumerate(alerts):
            name = source if len(alerts) == 1 and error is None else f"{source}#{i}"
            try:
                message = to_wire(alert.record, schema_id, schema_name)
            except ValueError as e:
                yield ReadError(name, f"wire: {e}")
            else:
                yield name, message, _event_attrs(name, [alert.jd])
        if error is not None:  # the alerts after a broken one cannot be sent: say so
            yield ReadError(source, f"{error.reason} (after {len(alerts)} alerts sent)")


#: Messages and bytes in flight at most (the client blocks beyond). Measured on the emulator with
#: 5,000 ~70 kB alerts: 500 in flight and 4 MB batches gave ~940 messages/s, 1,000 and 2 MB
#: ~1,700/s (smaller requests keep the emulator busy while the next one is built).
MAX_IN_FLIGHT_MESSAGES = 1000
MAX_IN_FLIGHT_BYTES = 128 * 1024 * 1024
#: Client-side batching: up to this many messages, bytes or seconds per publish request (well under
#: gRPC's 10 MB request limit).
BATCH_MESSAGES = 50
BATCH_BYTES = 2 * 1024 * 1024
BATCH_LATENCY_S = 0.005


def new_publisher() -> Any:
    """A ``PublisherClient`` that batches and applies flow control (it honours
    ``PUBSUB_EMULATOR_HOST``)."""
    from google.cloud import pubsub_v1
    from google.cloud.pubsub_v1 import types

    return pubsub_v1.PublisherClient(
        batch_settings=types.BatchSettings(
            max_messages=BATCH_MESSAGES, max_bytes=BATCH_BYTES, max_latency=BATCH_LATENCY_S
        ),
        publisher_options=types.PublisherOptions(
            flow_control=types.PublishFlowControl(
                message_limit=MAX_IN_FLIGHT_MESSAGES,
                byte_limit=MAX_IN_FLIGHT_BYTES,
                limit_exceeded_behavior=types.LimitExceededBehavior.BLOCK,
            )
        ),
    )


def publish(
    topic: str,
    paths: Sequence[str],
    rate: float | None = None,
    limit: int | None = None,
    publisher: Any = None,
    on_published: Callable[[str, dict[str, str], float], None] | None = None,
    schema_id: int | None = None,
    timeout_s: float = 120.0,
) -> dict[str, int]:
    """Publish every message of the files under ``paths`` to ``topic``, asynchronously.

    Messages are handed to the client without waiting for each acknowledgement: it batches them
    and blocks when :data:`MAX_IN_FLIGHT_MESSAGES` or :data:`MAX_IN_FLIGHT_BYTES` are in flight.
    With ``rate``, message *k* is handed over at ``start + k / rate`` (never earlier), so the rate
    is exact over any stretch; batching then adds at most :data:`BATCH_LATENCY_S`.

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
        A ``google.cloud.pubsub_v1.PublisherClient`` (default: :func:`new_publisher`).
    on_published
        Called with ``(source, attributes, time.time() when the publish was acknowledged)``, from
        the client's callback thread.
    schema_id
        Rubin alerts' writer schema id (None: the version each names, else the newest known).
    timeout_s
        How long to wait for the last acknowledgements [s].

    Returns
    -------
    dict
        ``published`` (acknowledged), ``failed`` (the client or the service refused them; the
        first errors are printed) and ``unreadable`` counts.
    """
    publisher = publisher or new_publisher()
    counts = {"published": 0, "failed": 0, "unreadable": 0}
    errors: list[str] = []
    lock = threading.Lock()
    interval = 1.0 / rate if rate else 0.0
    start = time.perf_counter()
    futures = []
    sent = 0

    def done(future: Any, source: str, attrs: dict[str, str]) -> None:
        acked_at = time.time()
        error = future.exception()
        with lock:
            if error is None:
                counts["published"] += 1
            else:
                counts["failed"] += 1
                if len(errors) < 5:
                    errors.append(f"{source}: {type(error).__name__}: {error}")
        if error is None and on_published is not None:
            on_published(source, attrs, acked_at)

    for item in messages(paths, schema_id):
        if limit is not None and sent >= limit:
            break
        if isinstance(item, ReadError):
            counts["unreadable"] += 1
            print(f"skipped {item.source}: {item.reason}", file=sys.stderr)
            continue
        source, data, attrs = item
        if interval:
            delay = start + sent * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        try:
            future = publisher.publish(topic, data, **attrs)
        except Exception as e:  # refused before sending (e.g. a message over the size limit)
            counts["failed"] += 1
            errors.append(f"{source}: {type(e).__name__}: {e}")
        else:
            future.add_done_callback(functools.partial(done, source=source, attrs=attrs))
            futures.append(future)
        sent += 1
    concurrent.futures.wait(futures, timeout=timeout_s)
    with lock:
        unfinished = sum(not f.done() for f in futures)
        if unfinished:
            counts["failed"] += unfinished
            errors.append(f"{unfinished} messages not acknowledged within {timeout_s:.0f} s")
        for line in errors:
            print(f"publish failed: {line}", file=sys.stderr)
        return dict(counts)


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
    from pipeline.options import check_schema_dirs  # the run's own check (local or gs://)

    configure_schemas(check_schema_dirs(args.schema_dir or ()))
    started = time.perf_counter()
    counts = publish(args.topic, args.paths, args.rate, args.limit, schema_id=args.schema_id)
    took = time.perf_counter() - started
    rate = counts["published"] / took if took > 0 else 0.0
    print(f"published {counts['published']} messages to {args.topic} ({rate:.0f}/s)", end="")
    print(
        f"; {counts['unreadable']} unreadable paths skipped" if counts["unreadable"] else "", end=""
    )
    print(f"; {counts['failed']} FAILED" if counts["failed"] else "")
    return 1 if counts["failed"] else 0
