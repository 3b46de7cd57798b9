"""``stampflow publish``: replay alert files and archives into a Pub/Sub topic, one container each.

Every container (a ``.avro`` file or an archive member) becomes one message, as ZTF publishes, with
the attributes ``source`` (the path or ``archive!member``) and, when it decodes, ``event_time``
(the earliest ``jd`` it holds, in ms since the Unix epoch) for ``--timestamp-attribute``.
Unreadable paths are reported and skipped. Against the emulator, set ``PUBSUB_EMULATOR_HOST``::

    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 stampflow publish --topic projects/P/topics/alerts \\
        --rate 50 night/ more/*.avro
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pipeline.argtypes import positive_int
from transforms.alerts import decode_alerts
from transforms.schema import EVENT_TIME_ATTRIBUTE, SOURCE_ATTRIBUTE
from transforms.sources import ReadError, expand_pattern, read_path
from transforms.streaming_state import jd_to_unix


def containers(paths: Sequence[str]) -> Iterator[tuple[str, bytes] | ReadError]:
    """Every container of the given files/directories/globs/archives, in order."""
    for pattern in paths:
        for item in expand_pattern(pattern):
            if isinstance(item, ReadError):
                yield item
            else:
                yield from read_path(item)


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
    for item in containers(paths):
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
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    counts = publish(args.topic, args.paths, args.rate, args.limit)
    print(f"published {counts['published']} messages to {args.topic}", end="")
    print(f" ({counts['unreadable']} unreadable paths skipped)" if counts["unreadable"] else "")
    return 0
