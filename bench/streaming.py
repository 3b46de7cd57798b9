"""Streaming latency: publish → classification on the Pub/Sub emulator, at given publish rates.

For each rate, a fresh pair of topics on one emulator, ``stampflow run --streaming`` started in
this process (the local direct runner), a simulated night published with ``stampflow publish`` at
that rate, and every output row's arrival time recorded by a pulling thread. Latency of a first
detection = its row's arrival − the acknowledged publish of its alert's message. Also reported:
the span from the first publish to the last row.

    stampflow bench --streaming --rates 5,20,50
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PROJECT = "stampflow-bench"


def create_topics(publisher: Any, subscriber: Any, names: Sequence[str], project: str = PROJECT):
    """A topic and a subscription of the same name for each name.

    Returns
    -------
    dict
        ``{name: (topic path, subscription path)}``.
    """
    out = {}
    for name in names:
        topic = publisher.topic_path(project, name)
        publisher.create_topic(name=topic)
        sub = subscriber.subscription_path(project, name)
        subscriber.create_subscription(name=sub, topic=topic)
        out[name] = (topic, sub)
    return out


class Collector:
    """Pull a subscription in a thread, recording each JSON message and its arrival time.

    Parameters
    ----------
    subscriber
        A ``google.cloud.pubsub_v1.SubscriberClient``.
    subscription
        ``projects/P/subscriptions/S``.
    """

    def __init__(self, subscriber: Any, subscription: str) -> None:
        self.subscriber, self.subscription = subscriber, subscription
        self.messages: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.subscriber.pull(
                    subscription=self.subscription, max_messages=100, timeout=5
                )
            except Exception:  # deadline exceeded on an idle subscription
                continue
            now = time.time()
            for m in response.received_messages:
                self.messages.append((now, json.loads(m.message.data)))
            if response.received_messages:
                self.subscriber.acknowledge(
                    subscription=self.subscription,
                    ack_ids=[m.ack_id for m in response.received_messages],
                )

    def wait_for(self, n: int, timeout_s: float) -> bool:
        """Wait until ``n`` messages arrived (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def stop(self) -> None:
        """Stop pulling."""
        self._stop.set()
        self._thread.join(10)


def latencies(
    rows: Sequence[tuple[float, dict]], published: dict[str, float], source_of: dict[int, str]
) -> np.ndarray:
    """Publish → arrival [s] of each row whose alert's message was published.

    Parameters
    ----------
    rows
        ``(arrival time, row)`` as collected.
    published
        Acknowledged publish time of each message, by its source.
    source_of
        The source (message) each ``candid`` was published in.
    """
    return np.array(
        [
            t - published[source_of[r["candid"]]]
            for t, r in rows
            if source_of.get(r["candid"]) in published
        ]
    )


def measure(
    night: str | Path,
    model_dir: str | Path,
    rates: Sequence[float],
    hold_s: float = 4.0,
    timeout_s: float = 300.0,
) -> list[dict[str, Any]]:
    """Latency percentiles and sustained throughput of the streaming job at each publish rate.

    Parameters
    ----------
    night
        Alerts to publish (each rate publishes all of them, to its own topic).
    model_dir
        Exported model.
    rates
        Publish rates [messages/s].
    hold_s
        ``--hold-seconds`` of the job.
    timeout_s
        Longest wait for the last row of a rate.

    Returns
    -------
    list of dict
        Per rate: ``rate`` (asked), ``achieved_rate`` (acknowledged publishes per second),
        ``messages``, ``rows``, ``p50_s``, ``p90_s``, ``p99_s``, ``max_s``,
        ``span_s`` (first publish → last row).
    """
    from google.cloud import pubsub_v1

    from bench.emulators import PubSubEmulator, pubsub_missing_requirements
    from pipeline.options import parse
    from pipeline.publish import containers, publish
    from pipeline.run_job import start_streaming
    from transforms.alerts import decode_alerts
    from transforms.rules import history_skip_reason

    reason = pubsub_missing_requirements()
    if reason:
        raise RuntimeError(reason)
    # One pass over the night: the message of each candid, and the objects with a first
    # detection (one row each; simulated nights hold nothing broken).
    source_of: dict[int, str] = {}
    first: set[str] = set()
    for item in containers([str(night)]):
        if isinstance(item, tuple):
            for alert in decode_alerts(item[1], item[0])[0]:
                source_of.setdefault(alert.candid, item[0])
                if history_skip_reason(alert.candidate, alert.prv_candidates) is None:
                    first.add(alert.object_id)
    expected = len(first)
    results = []
    log = Path(tempfile.mkdtemp(prefix="pubsub-")) / "emulator.log"
    with PubSubEmulator.start(log) as emulator:
        saved = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        try:
            publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
            for i, rate in enumerate(rates):
                names = create_topics(publisher, subscriber, (f"alerts{i}", f"rows{i}"))
                opts = parse(
                    [
                        "--streaming",
                        "--input-subscription", names[f"alerts{i}"][1],
                        "--output-topic", names[f"rows{i}"][0],
                        "--model", str(model_dir),
                        "--hold-seconds", str(hold_s),
                    ]
                )  # fmt: skip
                rows = Collector(subscriber, names[f"rows{i}"][1])
                job = start_streaming(opts)
                published: dict[str, float] = {}
                try:
                    time.sleep(5)  # the reader starts pulling, RunInference loads the model
                    started = time.time()
                    counts = publish(
                        names[f"alerts{i}"][0],
                        [str(night)],
                        rate=rate,
                        publisher=publisher,
                        on_published=lambda s, _, t, seen=published: seen.setdefault(s, t),
                    )
                    rows.wait_for(expected, timeout_s)
                finally:
                    job.cancel()
                    rows.stop()
                lat = latencies(rows.messages, published, source_of)
                last = max((t for t, _ in rows.messages), default=started)
                p50, p90, p99 = np.percentile(lat, [50, 90, 99]) if lat.size else (np.nan,) * 3
                times = sorted(published.values())
                achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
                results.append(
                    {
                        "rate": rate,
                        "achieved_rate": achieved,
                        "messages": counts["published"],
                        "rows": len(rows.messages),
                        "expected_rows": expected,
                        "hold_s": hold_s,
                        "p50_s": float(p50),
                        "p90_s": float(p90),
                        "p99_s": float(p99),
                        "max_s": float(lat.max()) if lat.size else float("nan"),
                        "span_s": last - started,
                    }
                )
        finally:
            if saved is None:
                os.environ.pop("PUBSUB_EMULATOR_HOST", None)
            else:
                os.environ["PUBSUB_EMULATOR_HOST"] = saved
    return results


def format_markdown(results: Sequence[dict[str, Any]]) -> str:
    """The latency table."""
    lines = [
        "| publish rate, asked / achieved [msg/s] | messages | rows | p50 [s] | p90 [s] "
        "| p99 [s] | max [s] | first publish → last row [s] |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['rate']:g} / {r['achieved_rate']:.1f} | {r['messages']} "
            f"| {r['rows']}/{r['expected_rows']} "
            f"| {r['p50_s']:.1f} | {r['p90_s']:.1f} | {r['p99_s']:.1f} | {r['max_s']:.1f} "
            f"| {r['span_s']:.1f} |"
        )
    return "\n".join(lines)
