"""Streaming capacity on the Pub/Sub emulator: the job, the publisher and the emulator each in
their own process, measured from outside.

One emulator, fresh topics per run (alerts with the job's and a *tap* subscription, rows, dead
letters), and three processes besides this one::

    stampflow publish ──▶ alerts ──┬─▶ sub ──▶ stampflow run --streaming ──▶ rows, dead letters
                                   └─▶ tap (pulled after the run: each message's publish_time)
                                                                              │
    this process: pulls rows and dead letters as they come (arrival times), reads the job's
    progress lines (alerts read), samples /proc every second (CPU of each process tree)

- **steady** (``--rates 50,330,1000``): the job starts, a few warm-up messages load its model,
  then ``stampflow publish --rate R`` sends ``R × seconds`` messages. Latency of a first
  detection = its row's arrival − the ``publish_time`` Pub/Sub stamped on its alert's message
  (read from the tap after the run, so the tap costs nothing while measuring). Rows that had not
  arrived when the run stopped count as infinitely late (a percentile past them is shown ``>``).
- **backlog** (``--backlog 5000,20000``): every message is published first, then the job starts;
  alerts read per second (from the job's progress lines) and rows out per second, in bins.

Nothing lost: expected rows are the first detections in the messages published (one decoding
pass over their files), the job's own summary (it is stopped with SIGINT, Ctrl-C, and prints
its counts) must account for every alert, and dead letters arrive on their topic. Logs of the
job, the publisher and the emulator are kept in the run's work directory.

    stampflow bench --streaming --streaming-mode steady --rates 50,330 --stream-seconds 60
    stampflow bench --streaming --streaming-mode backlog --backlog 5000,20000
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "stampflow-bench"
#: Width of the rate-over-time bins of the backlog mode [s].
BIN_S = 10.0
#: Deadline of the bench's pulls of rows and dead letters (a stop waits for one) [s].
PULL_TIMEOUT_S = 2.0
#: CPU sampling period [s].
CPU_INTERVAL_S = 1.0
#: Messages published before a steady run to start the job's model (not in the latencies).
WARMUP_MESSAGES = 20
#: Shortest publishing time over which the alerts read per second are reported (the job prints
#: its progress line every 5 s at most) [s].
MIN_READ_WINDOW_S = 15.0
#: Longest wait for the job's start-up and warm-up rows [s].
STARTUP_TIMEOUT_S = 180.0
#: Longest wait for a SIGINT'd job to print its summary and exit [s].
STOP_TIMEOUT_S = 60.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")

_PROGRESS = re.compile(
    r"\[stampflow\] ([\d,]+) alerts read · ([\d,]+) classified · ([\d,]+) dead letters · "
    r"([\d,.]+) alerts/s"
)
_SUMMARY = re.compile(r"(\d+) records in → (\d+) classified, (\d+) skipped, (\d+) dead letters")
_PUBLISHED = re.compile(r"published (\d+) messages to \S+ \((\d+)/s\)")


# --- Pure functions -------------------------------------------------------------------------------
def parse_progress(line: str) -> dict[str, float] | None:
    """The counts of a job's progress line (:mod:`pipeline.progress`), or None for other lines.

    Returns
    -------
    dict or None
        ``read``, ``classified``, ``dead`` (alerts so far) and ``rate`` (alerts read per second
        since the first count, as the job printed it, rounded).
    """
    m = _PROGRESS.search(line)
    if m is None:
        return None
    read, classified, dead, rate = (float(g.replace(",", "")) for g in m.groups())
    return {"read": read, "classified": classified, "dead": dead, "rate": rate}


def progress_samples(lines: Iterable[tuple[float, str]]) -> list[tuple[float, float]]:
    """Cumulative alerts read over time from timestamped job output lines.

    A progress line is printed at most every 5 s, and only while the job counts something; the
    first one also says when counting began (its count over its rate), which becomes a
    ``(time, 0)`` sample, so that reading is not spread over the job's start-up.

    Parameters
    ----------
    lines
        ``(time.time() when the line was read, line)``.

    Returns
    -------
    list of (float, float)
        ``(time, alerts read)``, in time order.
    """
    samples: list[tuple[float, float]] = []
    for t, line in lines:
        p = parse_progress(line)
        if p is None:
            continue
        if not samples and p["rate"] > 0:
            samples.append((t - p["read"] / p["rate"], 0.0))
        samples.append((t, p["read"]))
    return samples


def parse_summary(text: str) -> dict[str, int] | None:
    """The counts of the summary a stopped ``stampflow run --streaming`` prints, or None.

    Returns
    -------
    dict or None
        ``records_in``, ``classified``, ``skipped``, ``dead_letters``.
    """
    m = _SUMMARY.search(text)
    if m is None:
        return None
    keys = ("records_in", "classified", "skipped", "dead_letters")
    return dict(zip(keys, (int(g) for g in m.groups()), strict=True))


def final_counts(text: str) -> dict[str, Any] | None:
    """A stopped job's counts: its summary (:func:`parse_summary`), else its last progress line.

    A job that prints no summary in time (it is then killed) still printed progress lines; the
    last one has the alerts read (``records_in``: decoded alerts, the read stage's dead letters
    not among them), classified and dead letters, but no skipped count (None). ``from`` says
    which it was. None when the job printed neither.
    """
    summary = parse_summary(text)
    if summary is not None:
        return {**summary, "from": "summary"}
    lines = [p for p in map(parse_progress, text.splitlines()) if p is not None]
    if not lines:
        return None
    last = lines[-1]
    return {
        "records_in": int(last["read"]),
        "classified": int(last["classified"]),
        "skipped": None,
        "dead_letters": int(last["dead"]),
        "from": "progress",
    }


def parse_published(text: str) -> dict[str, int] | None:
    """``published`` and ``rate`` (its own, over its whole run) from ``stampflow publish``."""
    m = _PUBLISHED.search(text)
    return None if m is None else {"published": int(m.group(1)), "rate": int(m.group(2))}


def parse_stat(text: str) -> tuple[int, int, float]:
    """``(pid, ppid, CPU seconds)`` from a ``/proc/PID/stat`` line (user + system time).

    The command name (field 2) may hold spaces and parentheses: fields are counted after its
    last ``)``.
    """
    pid = int(text[: text.index(" ")])
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15 (proc(5)).
    return pid, int(rest[1]), (int(rest[11]) + int(rest[12])) / _CLK_TCK


def read_stats(proc: str | Path = "/proc") -> dict[int, tuple[int, float]]:
    """Every process's ``{pid: (ppid, CPU seconds)}`` under ``proc``, in one scan."""
    out = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat")) as f:
                pid, ppid, cpu = parse_stat(f.read())
        except (OSError, ValueError, IndexError):  # gone since the listing
            continue
        out[pid] = (ppid, cpu)
    return out


def tree_cpu(root: int, stats: dict[int, tuple[int, float]]) -> float:
    """CPU seconds used so far by ``root`` and its live descendants (0 once it is gone)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root] if root in stats else []
    while todo:
        pid = todo.pop()
        total += stats[pid][1]
        todo += children.get(pid, [])
    return total


def cpu_usage(
    samples: Sequence[tuple[float, float]], start: float = -np.inf, end: float = np.inf
) -> dict[str, float]:
    """Cores used (CPU seconds per second) from cumulative CPU samples, within ``[start, end]``.

    Parameters
    ----------
    samples
        ``(time, CPU seconds so far)`` in time order.
    start, end
        The window [s, as the times].

    Returns
    -------
    dict
        ``mean`` (over the window, widened to the samples around it) and ``max`` (over one
        sampling interval), in cores; NaN with fewer than two samples. A drop (a process of the
        tree exited) counts as 0.
    """
    times = [t for t, _ in samples]
    # The samples bracketing the window: a window shorter than the sampling period still has two.
    first = max(0, bisect.bisect_right(times, start) - 1)
    last = min(len(samples), bisect.bisect_left(times, end) + 1)
    inside = samples[first:last]
    if len(inside) < 2:
        return {"mean": float("nan"), "max": float("nan")}
    steps = [
        max(0.0, c1 - c0) / (t1 - t0)
        for (t0, c0), (t1, c1) in itertools.pairwise(inside)
        if t1 > t0
    ]
    span = inside[-1][0] - inside[0][0]
    used = sum(max(0.0, c1 - c0) for (_, c0), (_, c1) in itertools.pairwise(inside))
    return {"mean": used / span if span > 0 else float("nan"), "max": max(steps, default=np.nan)}


def event_rates(times: Iterable[float], start: float, end: float, bin_s: float = BIN_S) -> list:
    """Events per second in whole bins of ``bin_s`` from ``start`` up to the one holding ``end``.

    Returns
    -------
    list of float
        One rate per bin; an event at ``end`` falls in the last bin.
    """
    edges = _edges(start, end, bin_s)
    counts, _ = np.histogram(np.asarray(list(times), float), bins=edges)
    return (counts / np.diff(edges)).tolist()


def cumulative_rates(
    samples: Sequence[tuple[float, float]], start: float, end: float, bin_s: float = BIN_S
) -> list:
    """Rates per whole bin of ``bin_s`` from ``start`` (up to the one holding ``end``) of a
    cumulative count sampled now and then.

    The count is interpolated linearly between samples, 0 before the first one and flat after the
    last one.

    Returns
    -------
    list of float
        One rate per bin.
    """
    edges = _edges(start, end, bin_s)
    if not samples:
        return [0.0] * (len(edges) - 1)
    t, c = np.array(samples, float).T
    at = np.interp(edges, t, c, left=0.0, right=c[-1])
    return (np.diff(at) / np.diff(edges)).tolist()


def _edges(start: float, end: float, bin_s: float) -> np.ndarray:
    """Edges of whole bins from ``start`` covering ``end`` (a short last bin would inflate its
    rate)."""
    n = max(1, int(np.ceil((end - start) / bin_s - 1e-9)))
    return start + bin_s * np.arange(n + 1, dtype=float)


def achieved_rate(times: Sequence[float]) -> float:
    """Messages per second from their publish times, over the middle 80% of them.

    The publisher's first messages wait for its connection and then go out together (it paces
    against its start), and the last ones end at any point of a batch; the middle is the rate
    sustained. Fewer than 10 messages: over all of them.
    """
    t = np.sort(np.asarray(times, float))
    if t.size < 2:
        return 0.0
    lo, hi = 0, t.size - 1
    if t.size >= 10:
        lo, hi = int(0.1 * (t.size - 1)), int(np.ceil(0.9 * (t.size - 1)))
    return (hi - lo) / (t[hi] - t[lo]) if t[hi] > t[lo] else float("inf")


def latencies(
    rows: Sequence[tuple[float, dict]], published: dict[str, float], source_of: dict[int, str]
) -> np.ndarray:
    """Publish → arrival [s] of each row whose alert's message was published.

    Parameters
    ----------
    rows
        ``(arrival time, row)`` as collected.
    published
        Publish time of each message, by its source.
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


def latency_stats(
    rows: Sequence[tuple[float, dict]],
    published: dict[str, float],
    wanted: dict[int, str],
) -> dict[str, float]:
    """Latency percentiles over the rows ``wanted``, a row that never came counting as infinite.

    Parameters
    ----------
    rows
        ``(arrival time, row)`` as collected (a repeated ``candid``: its first arrival).
    published
        Publish time of each message, by its source (the tap's ``publish_time``).
    wanted
        ``{candid: source}`` of the first detections whose latency is measured.

    Returns
    -------
    dict
        ``p50_s``, ``p90_s``, ``p99_s``, ``max_s`` (``inf`` when that share of rows had not
        arrived), ``arrived`` (rows with a latency) and ``measured`` (rows wanted whose message's
        publish time is known).
    """
    first: dict[int, float] = {}
    for t, r in rows:
        first.setdefault(r["candid"], t)
    lat = [
        first[c] - published[s] if c in first else np.inf
        for c, s in wanted.items()
        if s in published
    ]
    if not lat:
        nan = float("nan")
        return {"p50_s": nan, "p90_s": nan, "p99_s": nan, "max_s": nan, "arrived": 0, "measured": 0}
    arr = np.array(lat)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99], method="inverted_cdf")
    return {
        "p50_s": float(p50),
        "p90_s": float(p90),
        "p99_s": float(p99),
        "max_s": float(arr.max()),
        "arrived": int(np.isfinite(arr).sum()),
        "measured": len(lat),
    }


@dataclass
class Expected:
    """What the job should make of a set of messages (:func:`expected`).

    Attributes
    ----------
    messages
        Messages (one per container file).
    alerts
        Alerts in them.
    source_of
        ``{candid: source}`` of every alert.
    first
        ``{candid: objectId}`` of the first detections: one row each.
    broken
        Containers that do not decode (one read dead letter each).
    """

    messages: int = 0
    alerts: int = 0
    source_of: dict[int, str] = field(default_factory=dict)
    first: dict[int, str] = field(default_factory=dict)
    broken: int = 0


def expected(paths: Sequence[str]) -> Expected:
    """Messages, alerts and first detections of the files ``stampflow publish`` sends for ``paths``.

    One message per container, as the publisher reads them; a first detection is an alert the
    job's rule (:func:`transforms.rules.history_skip_reason`) does not skip for its history.
    """
    from pipeline.publish import containers
    from transforms.alerts import decode_alerts
    from transforms.rules import history_skip_reason

    out = Expected()
    for item in containers(list(paths)):
        if not isinstance(item, tuple):
            continue
        out.messages += 1
        alerts, error = decode_alerts(item[1], item[0])
        out.broken += error is not None
        for alert in alerts:
            out.alerts += 1
            out.source_of.setdefault(alert.candid, item[0])
            if history_skip_reason(alert.candidate, alert.prv_candidates) is None:
                out.first[alert.candid] = alert.object_id
    return out


def check_rows(rows: Sequence[tuple[float, dict]], want: Expected) -> dict[str, int]:
    """Rows against the expected first detections.

    Returns
    -------
    dict
        ``rows`` (distinct candids), ``duplicates`` (rows repeating a candid or an object),
        ``unexpected`` (candids that are no expected first detection), ``missing``.
    """
    candids = [r["candid"] for _, r in rows]
    objects = [r.get("objectId") for _, r in rows]
    distinct = set(candids)
    return {
        "rows": len(distinct),
        "duplicates": max(len(candids) - len(distinct), len(objects) - len(set(objects))),
        "unexpected": len(distinct - set(want.first)),
        "missing": len(set(want.first) - distinct),
    }


def reconcile(
    checked: dict[str, int],
    want: Expected,
    published: int,
    summary: dict[str, int] | None,
    dead_received: int,
) -> bool:
    """Nothing lost: every message published, every alert in the job's counts, every first
    detection one row, every dead letter on its topic.

    Parameters
    ----------
    checked
        :func:`check_rows`.
    want
        The messages' expected outcome.
    published
        Messages the publisher had acknowledged.
    summary
        The job's final counts (:func:`final_counts`); None (the job printed none) fails. From
        its last progress line (no skipped count), every alert must have been read, and the
        ones neither classified nor dead-lettered are the skipped.
    dead_received
        Dead letters pulled from the dead-letter topic.
    """
    if summary is None:
        return False
    if summary.get("skipped") is None:
        counted = summary["records_in"] == want.alerts
    else:
        accounted = summary["classified"] + summary["skipped"] + summary["dead_letters"]
        counted = summary["records_in"] == want.alerts + want.broken
        counted = counted and accounted == summary["records_in"]
    return (
        counted
        and published == want.messages
        and checked["rows"] == len(want.first)
        and checked["duplicates"] == checked["unexpected"] == checked["missing"] == 0
        and summary["classified"] == len(want.first)
        and dead_received == summary["dead_letters"]
    )


# --- Processes and collectors ---------------------------------------------------------------------
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


def delete_topics(publisher: Any, subscriber: Any, names: dict[str, tuple[str, str]]) -> None:
    """Delete what :func:`create_topics` made (the emulator keeps unread messages in memory)."""
    for topic, sub in names.values():
        with contextlib.suppress(Exception):
            subscriber.delete_subscription(subscription=sub)
        with contextlib.suppress(Exception):
            publisher.delete_topic(topic=topic)


class Collector:
    """Pull a subscription in a thread, recording each message and its arrival time.

    Parameters
    ----------
    subscriber
        A ``google.cloud.pubsub_v1.SubscriberClient``.
    subscription
        ``projects/P/subscriptions/S``.
    parse
        Turns a received ``PubsubMessage`` into what is kept (default: its data as JSON).
    pull_timeout_s
        Deadline of each pull; :meth:`stop` waits for the one in progress [s].
    """

    def __init__(
        self,
        subscriber: Any,
        subscription: str,
        parse: Callable[[Any], Any] | None = None,
        pull_timeout_s: float = 5.0,
    ) -> None:
        self.subscriber, self.subscription = subscriber, subscription
        self.parse = parse or (lambda m: json.loads(m.data))
        self.pull_timeout_s = pull_timeout_s
        self.messages: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.subscriber.pull(
                    subscription=self.subscription, max_messages=100, timeout=self.pull_timeout_s
                )
            except Exception:  # deadline exceeded on an idle subscription
                continue
            now = time.time()
            for m in response.received_messages:
                self.messages.append((now, self.parse(m.message)))
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
        """Stop pulling (waits for the pull in progress, at most its deadline)."""
        self._stop.set()
        self._thread.join(10)


def stop_all(*collectors: Collector) -> None:
    """Stop several collectors, their last pulls waited for together."""
    for c in collectors:
        c._stop.set()
    for c in collectors:
        c.stop()


def tap_message(message: Any) -> tuple[str, float]:
    """``(source attribute, publish_time as Unix seconds)`` of a message pulled from the tap."""
    from transforms.schema import SOURCE_ATTRIBUTE

    return message.attributes.get(SOURCE_ATTRIBUTE, ""), message.publish_time.timestamp()


def drain_tap(
    subscriber: Any, subscription: str, want: int, timeout_s: float = 120.0, batch: int = 40
) -> dict[str, float]:
    """Pull the tap subscription until ``want`` messages came (or it stays empty for 10 s).

    Alert messages are large (~70 kB): a pull of ``batch`` stays under gRPC's 4 MB receive limit,
    and a pull refused for its size is asked again for half as many.

    Returns
    -------
    dict
        ``{source: publish time [Unix s]}``.
    """
    from google.api_core.exceptions import ResourceExhausted

    seen: dict[str, float] = {}
    deadline, empty = time.monotonic() + timeout_s, 0
    while len(seen) < want and time.monotonic() < deadline and empty < 2:
        try:
            response = subscriber.pull(subscription=subscription, max_messages=batch, timeout=5)
        except ResourceExhausted:  # the response was over the receive limit
            batch = max(1, batch // 2)
            continue
        except Exception:  # deadline exceeded: nothing left
            empty += 1
            continue
        got = response.received_messages
        empty = 0 if got else empty + 1
        for m in got:
            source, t = tap_message(m.message)
            seen.setdefault(source, t)
        if got:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in got])
    return seen


class CpuSampler:
    """Sample the CPU seconds of named process trees every ``interval`` s, in a thread.

    Parameters
    ----------
    roots
        ``{name: pid}``; more can be added with :meth:`add` while it runs.
    interval
        Sampling period [s].
    proc
        The ``/proc`` to read (a directory of fake ``PID/stat`` files in tests).
    """

    def __init__(
        self, roots: dict[str, int], interval: float = CPU_INTERVAL_S, proc: str | Path = "/proc"
    ) -> None:
        self.roots, self.interval, self.proc = dict(roots), interval, proc
        self.samples: dict[str, list[tuple[float, float]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CpuSampler:
        """Start sampling; returns self."""
        self._thread.start()
        return self

    def add(self, name: str, pid: int) -> None:
        """Also sample the tree of ``pid`` from now on, as ``name`` (a new one replaces it)."""
        with self._lock:
            self.roots[name] = pid
            self.samples[name] = []

    def sample(self) -> None:
        """Take one sample of every tree."""
        now, stats = time.time(), read_stats(self.proc)
        with self._lock:
            for name, pid in self.roots.items():
                if pid in stats:
                    self.samples.setdefault(name, []).append((now, tree_cpu(pid, stats)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def usage(self, name: str, start: float = -np.inf, end: float = np.inf) -> dict[str, float]:
        """:func:`cpu_usage` of the tree ``name`` within ``[start, end]``."""
        with self._lock:
            samples = list(self.samples.get(name, ()))
        return cpu_usage(samples, start, end)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


def _env(host: str) -> dict[str, str]:
    return {
        **os.environ,
        "PUBSUB_EMULATOR_HOST": host,
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }


class JobProcess:
    """``stampflow run --streaming`` in its own process, its output read line by line.

    Every line goes to ``log`` and is kept with the time it was read, so progress lines give
    alerts read over time. :meth:`stop` sends SIGINT (Ctrl-C): the job stops and prints its
    summary, which :attr:`summary` parses (a job that prints none within
    :data:`STOP_TIMEOUT_S` is killed, and its last progress line stands for it).

    Parameters
    ----------
    args
        ``stampflow run`` arguments.
    host
        ``PUBSUB_EMULATOR_HOST``.
    log
        The job's output.
    """

    def __init__(self, args: Sequence[str], host: str, log: Path) -> None:
        # A process started in the background by a shell (``cmd &``) ignores SIGINT, and so would
        # the job it starts: Python installs its Ctrl-C handler only where SIGINT is not ignored.
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            with contextlib.suppress(ValueError):  # not the main thread: leave it
                signal.signal(signal.SIGINT, signal.default_int_handler)
        self.lines: list[tuple[float, str]] = []
        self.stop_s = float("nan")  # SIGINT to exit [s]
        self.started = time.time()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", *args],
            cwd=ROOT,
            env=_env(host),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # SIGINT from us only; its group is ours to stop
        )
        self._log = log
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self._log, "w") as log:
            for line in self.process.stdout:
                self.lines.append((time.time(), line))
                log.write(line)
                log.flush()

    @property
    def pid(self) -> int:
        """The job's process id (for ``py-spy``, and the CPU sampler)."""
        return self.process.pid

    def progress(self) -> list[tuple[float, float]]:
        """``(time, alerts read)`` so far (:func:`progress_samples`)."""
        return progress_samples(list(self.lines))

    def alerts_read(self) -> float:
        """Alerts read at the last progress line (0 before the first)."""
        samples = self.progress()
        return samples[-1][1] if samples else 0.0

    def check_alive(self) -> None:
        """Raise if the job has exited (with the end of its log)."""
        if self.process.poll() is not None:
            tail = "".join(line for _, line in self.lines[-30:])
            raise RuntimeError(f"the streaming job exited with {self.process.returncode}:\n{tail}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int] | None:
        """Ctrl-C the job, wait for its summary and exit (else SIGTERM/SIGKILL its group).

        Returns
        -------
        dict or None
            :func:`final_counts` of its output.
        """
        asked = time.time()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.process.pid, sig)
                    try:
                        self.process.wait(10)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        self._reader.join(10)
        self.stop_s = time.time() - asked
        return self.summary

    @property
    def summary(self) -> dict[str, Any] | None:
        """Its final counts (:func:`final_counts`), or None."""
        return final_counts("".join(line for _, line in self.lines))


def start_publisher(
    topic: str, paths: Sequence[str], host: str, log: Path, rate: float | None = None
) -> subprocess.Popen:
    """``stampflow publish`` in its own process, its output to ``log``."""
    cmd = [sys.executable, "-m", "pipeline.cli", "publish", "--topic", topic]
    if rate:
        cmd += ["--rate", f"{rate:g}"]
    with open(log, "w") as out:
        return subprocess.Popen(
            [*cmd, *paths],
            cwd=ROOT,
            env=_env(host),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def link_files(files: Sequence[Path], directory: Path) -> Path:
    """A directory of symbolic links to ``files`` (a slice of a night, published as one input)."""
    directory.mkdir(parents=True, exist_ok=True)
    for f in files:
        (directory / f.name).symlink_to(f.resolve())
    return directory


# --- The two modes --------------------------------------------------------------------------------
@dataclass
class Bench:
    """What every run shares: the emulator, its clients, the model and the work directory.

    Attributes
    ----------
    host
        ``PUBSUB_EMULATOR_HOST``.
    emulator_pid
        The emulator's process (its tree is sampled: gcloud's launcher and the JVM).
    model_dir
        Exported model.
    work
        Where logs and the night's slices go.
    hold_s
        ``--hold-seconds`` of the job.
    timeout_s
        Longest wait for the rows after the last publish (steady) or the job start (backlog).
    log
        Progress printer.
    """

    host: str
    emulator_pid: int
    model_dir: Path
    work: Path
    hold_s: float = 4.0
    timeout_s: float = 600.0
    log: Callable[[str], None] = print
    runs: int = 0
    publisher: Any = None
    subscriber: Any = None

    def __post_init__(self) -> None:
        from google.cloud import pubsub_v1

        saved = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = self.host  # the clients read it when made
        try:
            self.publisher = pubsub_v1.PublisherClient()
            self.subscriber = pubsub_v1.SubscriberClient()
        finally:
            if saved is None:
                os.environ.pop("PUBSUB_EMULATOR_HOST", None)
            else:
                os.environ["PUBSUB_EMULATOR_HOST"] = saved

    def topics(self, tap: bool) -> dict[str, tuple[str, str]]:
        """Fresh topics for one run: ``alerts``, ``rows``, ``dead`` (and a ``tap`` subscription)."""
        self.runs += 1
        i = self.runs
        names = create_topics(
            self.publisher, self.subscriber, (f"alerts{i}", f"rows{i}", f"dead{i}")
        )
        out = {"alerts": names[f"alerts{i}"], "rows": names[f"rows{i}"], "dead": names[f"dead{i}"]}
        if tap:
            sub = self.subscriber.subscription_path(PROJECT, f"tap{i}")
            self.subscriber.create_subscription(name=sub, topic=out["alerts"][0])
            out["tap"] = ("", sub)
        return out

    def job(self, names: dict[str, tuple[str, str]], log: Path) -> JobProcess:
        """Start the streaming job on ``names``' subscription and topics."""
        return JobProcess(
            [
                "--streaming",
                "--input-subscription", names["alerts"][1],
                "--output-topic", names["rows"][0],
                "--dead-letter-topic", names["dead"][0],
                "--model", str(self.model_dir),
                "--hold-seconds", f"{self.hold_s:g}",
            ],
            self.host,
            log,
        )  # fmt: skip

    def publish(
        self, topic: str, directory: Path, log: Path, rate: float | None, cpu: CpuSampler
    ) -> tuple[subprocess.Popen, float]:
        """Start ``stampflow publish`` (sampled as ``publisher``); returns it and its start."""
        started = time.time()
        process = start_publisher(topic, [str(directory)], self.host, log, rate)
        cpu.add("publisher", process.pid)
        return process, started

    def wait_rows(self, rows: Collector, want: int, job: JobProcess, timeout_s: float) -> bool:
        """Wait for ``want`` rows; True if they came, False after ``timeout_s``.

        Raises
        ------
        RuntimeError
            If the job exits meanwhile.
        """
        deadline = time.monotonic() + timeout_s
        while len(rows.messages) < want:
            job.check_alive()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True


def run_steady(
    bench: Bench, files: Sequence[Path], rate: float, messages: int, warmup: int = WARMUP_MESSAGES
) -> dict[str, Any]:
    """One steady run: warm-up, then ``messages`` messages at ``rate`` per second.

    Parameters
    ----------
    bench
        The shared emulator, clients and settings.
    files
        The night's alert files, sorted (the first ``warmup`` warm the job up, the next
        ``messages`` are measured).
    rate
        Publish rate [messages/s].
    messages
        Messages published at that rate.
    warmup
        Messages published first, as fast as possible, until their rows arrive (model loaded).

    Returns
    -------
    dict
        See :func:`format_steady` for the columns; also ``logs`` (the run's directory) and the
        job's ``summary``.
    """
    files = list(files)
    if len(files) < warmup + messages:
        raise ValueError(f"{warmup + messages} alert files needed, the night has {len(files)}")
    run_dir = bench.work / f"steady-{rate:g}-{bench.runs + 1}"
    warm_dir = link_files(files[:warmup], run_dir / "warmup")
    main_dir = link_files(files[warmup : warmup + messages], run_dir / "alerts")
    warm, want = expected([str(warm_dir)]), expected([str(main_dir)])
    if not warm.first:
        raise ValueError("the warm-up messages hold no first detection: no row tells it is over")
    expected_rows = len(set(warm.first) | set(want.first))
    names = bench.topics(tap=True)
    rows = Collector(bench.subscriber, names["rows"][1], pull_timeout_s=PULL_TIMEOUT_S)
    dead = Collector(bench.subscriber, names["dead"][1], pull_timeout_s=PULL_TIMEOUT_S)
    cpu = CpuSampler({"emulator": bench.emulator_pid}).start()
    job = bench.job(names, run_dir / "job.log")
    cpu.add("job", job.pid)
    try:
        bench.log(
            f"  steady {rate:g}/s: job started (pid {job.pid}), its output in "
            f"{run_dir / 'job.log'}; warming up ..."
        )
        warm_pub, _ = bench.publish(names["alerts"][0], warm_dir, run_dir / "warmup.log", None, cpu)
        warm_pub.wait(STARTUP_TIMEOUT_S)
        warm_published = parse_published((run_dir / "warmup.log").read_text()) or {"published": 0}
        if not bench.wait_rows(rows, len(warm.first), job, STARTUP_TIMEOUT_S):
            raise RuntimeError(f"warm-up rows did not arrive in {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(bench.hold_s + 1)  # idle again: held warm-up objects out, state quiet
        bench.log(f"  steady {rate:g}/s: publishing {messages} messages ...")
        pub, pub_start = bench.publish(
            names["alerts"][0], main_dir, run_dir / "publish.log", rate, cpu
        )
        while pub.poll() is None:
            job.check_alive()
            time.sleep(0.5)
        pub_end = time.time()
        published = parse_published((run_dir / "publish.log").read_text()) or {"published": 0}
        caught_up = bench.wait_rows(rows, expected_rows, job, bench.timeout_s)
        time.sleep(bench.hold_s + 2)  # a duplicate or a late dead letter would arrive by now
        end = time.time()
    finally:
        summary = job.stop()
        stop_all(rows, dead)
        cpu.stop()
    tap = drain_tap(bench.subscriber, names["tap"][1], warm.messages + want.messages)
    delete_topics(bench.publisher, bench.subscriber, {**names, "tap": ("", names["tap"][1])})
    checked = check_rows(rows.messages, _merge(warm, want))
    wanted = {c: want.source_of[c] for c in want.first if c not in warm.first}
    stats = latency_stats(rows.messages, tap, wanted)
    times = sorted(t for s, t in tap.items() if s in set(want.source_of.values()))
    achieved = achieved_rate(times)
    # Rates and CPU over the publishing itself (first to last publish_time), without the
    # publisher's start-up; its own start and end when the tap told nothing.
    a, b = (times[0], times[-1]) if len(times) > 1 else (pub_start, pub_end)
    progress = job.progress()
    last_row = max((t for t, _ in rows.messages), default=end)
    return {
        "mode": "steady",
        "rate": rate,
        "achieved_rate": achieved,
        "publisher_rate": published.get("rate", 0),
        "messages": want.messages,
        "published": published["published"],
        "publish_s": b - a,
        "publisher_wall_s": pub_end - pub_start,
        "read_rate": _read_rate(progress, a, b) if b - a >= MIN_READ_WINDOW_S else float("nan"),
        "read_at_publish_end": _read_at(progress, b) - warm.alerts,
        "caught_up": caught_up,
        "lag_s": last_row - (times[-1] if times else pub_end),
        # a row that never came was waited for at least this long after its publish [s]
        "censored_s": end - (times[-1] if times else pub_end),
        **stats,
        **checked,
        "expected_rows": expected_rows,
        "dead_letters": len(dead.messages),
        "expected_broken": want.broken + warm.broken,
        "cpu": {n: cpu.usage(n, a, b) for n in ("job", "emulator", "publisher")},
        "summary": summary,
        "reconciled": reconcile(
            checked,
            _merge(warm, want),
            published["published"] + warm_published["published"],
            summary,
            len(dead.messages),
        ),
        "hold_s": bench.hold_s,
        "job_pid": job.pid,
        "job_stop_s": job.stop_s,
        "logs": str(run_dir),
    }


def run_backlog(bench: Bench, files: Sequence[Path], messages: int) -> dict[str, Any]:
    """One backlog run: ``messages`` messages published first, then the job drains them.

    Parameters
    ----------
    bench
        The shared emulator, clients and settings.
    files
        The night's alert files, sorted (the first ``messages`` are published).
    messages
        Messages in the backlog.

    Returns
    -------
    dict
        See :func:`format_backlog` for the columns; ``bins`` holds the rates over time
        (``t_s`` from the job's start, ``read_per_s``, ``rows_per_s``, ``job_cores``,
        ``emulator_cores``).
    """
    files = list(files)
    if len(files) < messages:
        raise ValueError(f"{messages} alert files needed, the night has {len(files)}")
    run_dir = bench.work / f"backlog-{messages}-{bench.runs + 1}"
    main_dir = link_files(files[:messages], run_dir / "alerts")
    want = expected([str(main_dir)])
    names = bench.topics(tap=False)
    cpu = CpuSampler({"emulator": bench.emulator_pid}).start()
    bench.log(f"  backlog {messages}: publishing ...")
    pub, pub_start = bench.publish(names["alerts"][0], main_dir, run_dir / "publish.log", None, cpu)
    pub.wait()
    pub_s = time.time() - pub_start
    published = parse_published((run_dir / "publish.log").read_text()) or {"published": 0}
    rows = Collector(bench.subscriber, names["rows"][1], pull_timeout_s=PULL_TIMEOUT_S)
    dead = Collector(bench.subscriber, names["dead"][1], pull_timeout_s=PULL_TIMEOUT_S)
    job = bench.job(names, run_dir / "job.log")
    bench.log(
        f"  backlog {messages}: {published['published']} published; job (pid {job.pid}) "
        f"draining, its output in {run_dir / 'job.log'} ..."
    )
    cpu.add("job", job.pid)
    start = job.started
    try:
        drained = bench.wait_rows(rows, len(want.first), job, bench.timeout_s)
        time.sleep(bench.hold_s + 2)
        end = time.time()
    finally:
        summary = job.stop()
        stop_all(rows, dead)
        cpu.stop()
    delete_topics(bench.publisher, bench.subscriber, names)
    progress = job.progress()
    row_times = sorted(t for t, _ in rows.messages)
    last_row = row_times[-1] if row_times else end
    # No progress line at all when the job read everything within its first 5 s (tiny runs).
    first_read = progress[0][0] if progress else float("nan")
    all_read = next((t for t, n in progress if n >= want.alerts), float("nan"))
    busy_from = first_read if progress else start
    read_end = all_read if np.isfinite(all_read) else (progress[-1][0] if progress else start)
    checked = check_rows(rows.messages, want)
    bins = _bins(progress, row_times, cpu, start, last_row)
    reading = [b["read_per_s"] for b in bins if b["read_per_s"] > 0]
    return {
        "mode": "backlog",
        "messages": want.messages,
        "alerts": want.alerts,
        "published": published["published"],
        "publish_rate": published.get("rate", 0),
        "publish_wall_s": pub_s,
        "startup_s": first_read - start,
        "first_row_s": (row_times[0] - start) if row_times else float("nan"),
        "all_read_s": all_read - start,
        "drain_s": last_row - start,
        "drained": drained,
        "read_rate": _read_rate(progress, first_read, read_end) if progress else float("nan"),
        "read_rate_peak": max(reading, default=0.0),
        "rows_rate": checked["rows"] / (last_row - busy_from) if last_row > busy_from else 0.0,
        **checked,
        "expected_rows": len(want.first),
        "dead_letters": len(dead.messages),
        "expected_broken": want.broken,
        "cpu": {n: cpu.usage(n, busy_from, last_row) for n in ("job", "emulator")},
        "bins": bins,
        "summary": summary,
        "reconciled": reconcile(checked, want, published["published"], summary, len(dead.messages)),
        "hold_s": bench.hold_s,
        "job_pid": job.pid,
        "job_stop_s": job.stop_s,
        "logs": str(run_dir),
    }


def _merge(a: Expected, b: Expected) -> Expected:
    return Expected(
        a.messages + b.messages,
        a.alerts + b.alerts,
        {**a.source_of, **b.source_of},
        {**a.first, **b.first},
        a.broken + b.broken,
    )


def _read_at(samples: Sequence[tuple[float, float]], t: float) -> float:
    if not samples:
        return 0.0
    ts, cs = np.array(samples, float).T
    return float(np.interp(t, ts, cs, left=0.0, right=cs[-1]))


def _read_rate(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Alerts read per second between ``start`` and ``end`` (interpolated progress)."""
    if not samples or not end > start:
        return 0.0
    return (_read_at(samples, end) - _read_at(samples, start)) / (end - start)


def _bins(
    progress: Sequence[tuple[float, float]],
    row_times: Sequence[float],
    cpu: CpuSampler,
    start: float,
    end: float,
) -> list[dict[str, float]]:
    read = cumulative_rates(progress, start, end)
    out = event_rates(row_times, start, end)
    bins = []
    for i, (r, o) in enumerate(zip(read, out, strict=True)):
        a, b = start + i * BIN_S, start + (i + 1) * BIN_S
        bins.append(
            {
                "t_s": i * BIN_S,
                "read_per_s": r,
                "rows_per_s": o,
                "job_cores": cpu.usage("job", a, b)["mean"],
                "emulator_cores": cpu.usage("emulator", a, b)["mean"],
            }
        )
    return bins


def measure(
    night: str | Path,
    model_dir: str | Path,
    rates: Sequence[float] = (),
    backlogs: Sequence[int] = (),
    seconds: float = 60.0,
    messages: int | None = None,
    hold_s: float = 4.0,
    timeout_s: float = 600.0,
    work_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Steady runs at each rate and backlog runs of each size, on one Pub/Sub emulator.

    Parameters
    ----------
    night
        A simulated night (one alert per ``*.avro`` file); runs publish its first files.
    model_dir
        Exported model.
    rates
        Steady publish rates [messages/s].
    backlogs
        Backlog sizes [messages].
    seconds
        Publishing time of a steady run (``rate × seconds`` messages).
    messages
        Messages per steady run instead (the old ``--alerts``); None: by ``seconds``.
    hold_s
        ``--hold-seconds`` of the job.
    timeout_s
        Longest wait for the rows after the last publish (steady) or the job's start (backlog).
    work_dir
        Where logs and slices of the night go (default: a new temporary directory).
    log
        Progress printer.

    Returns
    -------
    dict
        ``steady`` and ``backlog`` (a list of run results each), ``cpus``, ``load_average``
        (start, end), ``hold_s``, ``work_dir``.

    Raises
    ------
    RuntimeError
        When the emulator cannot run here, or a job exits or never warms up.
    """
    from bench.emulators import PubSubEmulator, pubsub_missing_requirements
    from bench.end_to_end import alert_files

    reason = pubsub_missing_requirements()
    if reason:
        raise RuntimeError(reason)
    work = Path(work_dir or tempfile.mkdtemp(prefix="stampflow-streaming-"))
    work.mkdir(parents=True, exist_ok=True)
    files = alert_files(night)
    result: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_average": [os.getloadavg()[0]],
        "hold_s": hold_s,
        "work_dir": str(work),
        "steady": [],
        "backlog": [],
    }
    with PubSubEmulator.start(work / "emulator.log") as emulator:
        bench = Bench(emulator.host, emulator.process.pid, Path(model_dir), work, hold_s, timeout_s)
        bench.log = log
        for rate in rates:
            n = messages or max(1, round(rate * seconds))
            result["steady"].append(run_steady(bench, files, rate, n))
            log(format_steady(result["steady"][-1:]).splitlines()[-1])
        for n in backlogs:
            result["backlog"].append(run_backlog(bench, files, n))
            log(format_backlog(result["backlog"][-1:]).splitlines()[-1])
    result["load_average"].append(os.getloadavg()[0])
    return result


def to_json(result: dict[str, Any]) -> str:
    """A :func:`measure` result as strict JSON: NaN (not measured) as null, an infinite latency
    (the row never came) as ``"inf"``."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not np.isfinite(x):
            return None if np.isnan(x) else "inf"
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(result), indent=2, allow_nan=False)


# --- Tables ---------------------------------------------------------------------------------------
def _s(x: float, measured_to: float | None = None) -> str:
    if x is None or np.isnan(x):
        return "—"
    if np.isinf(x):
        return f"> {measured_to:.0f}" if measured_to else "∞"
    return f"{x:.1f}"


def _cores(c: dict[str, float]) -> str:
    return f"{_s(c['mean'])} / {_s(c['max'])}" if c else "—"


def format_steady(results: Sequence[dict[str, Any]]) -> str:
    """The steady-rate table (latency, rates, CPU, accounting)."""
    lines = [
        "| publish rate, asked / achieved [msg/s] | messages | read during publishing "
        "[alerts/s] | rows / expected | dead letters | p50 [s] | p90 [s] | p99 [s] | max [s] "
        "| job CPU mean / max [cores] | emulator CPU mean / max [cores] | reconciled |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        waited = r.get("censored_s")
        lines.append(
            f"| {r['rate']:g} / {r['achieved_rate']:.1f} | {r['messages']:,} "
            f"| {_s(r['read_rate'])} | {r['rows']:,} / {r['expected_rows']:,} "
            f"| {r['dead_letters']} | {_s(r['p50_s'], waited)} | {_s(r['p90_s'], waited)} "
            f"| {_s(r['p99_s'], waited)} | {_s(r['max_s'], waited)} "
            f"| {_cores(r['cpu']['job'])} | {_cores(r['cpu']['emulator'])} "
            f"| {'yes' if r['reconciled'] else '**no**'} |"
        )
    return "\n".join(lines)


def format_backlog(results: Sequence[dict[str, Any]]) -> str:
    """The backlog table (drain time and rates, CPU, accounting)."""
    lines = [
        "| messages | published at [msg/s] | job start → first read [s] | all read [s] "
        "| last row [s] | read mean / peak [alerts/s] | rows out [rows/s] | rows / expected "
        "| dead letters | job CPU mean / max [cores] | emulator CPU mean / max [cores] "
        "| reconciled |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['messages']:,} | {r['publish_rate']:,.0f} | {_s(r['startup_s'])} "
            f"| {_s(r['all_read_s'])} | {_s(r['drain_s'])} "
            f"| {_s(r['read_rate'])} / {r['read_rate_peak']:,.1f} | {r['rows_rate']:,.1f} "
            f"| {r['rows']:,} / {r['expected_rows']:,} | {r['dead_letters']} "
            f"| {_cores(r['cpu']['job'])} | {_cores(r['cpu']['emulator'])} "
            f"| {'yes' if r['reconciled'] else '**no**'} |"
        )
    return "\n".join(lines)


def format_bins(result: dict[str, Any]) -> str:
    """One backlog run's rates over time, one row per bin."""
    lines = [
        f"{result['messages']:,} messages, bins of {BIN_S:g} s from the job's start:",
        "",
        "| t [s] | read [alerts/s] | rows out [rows/s] | job [cores] | emulator [cores] |",
        "|---:|---:|---:|---:|---:|",
    ]
    for b in result["bins"]:
        lines.append(
            f"| {b['t_s']:.0f} | {b['read_per_s']:,.1f} | {b['rows_per_s']:,.1f} "
            f"| {_s(b['job_cores'])} | {_s(b['emulator_cores'])} |"
        )
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    """Every table of a :func:`measure` result."""
    load = result["load_average"]
    parts = [
        f"{result['cpus']} CPUs, load average {load[0]:.1f} → {load[-1]:.1f}, "
        f"--hold-seconds {result['hold_s']:g}; logs in {result['work_dir']}"
    ]
    if result["steady"]:
        parts += ["Steady publishing:", format_steady(result["steady"])]
    if result["backlog"]:
        parts += ["Backlog drain:", format_backlog(result["backlog"])]
        parts += [format_bins(r) for r in result["backlog"]]
    return "\n\n".join(parts)
