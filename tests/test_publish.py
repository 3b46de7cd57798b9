"""``stampflow publish`` (issue 28, item 2): asynchronous, batched, flow-controlled; the rate cap
never sends early; every failure is counted and reported. The client is replaced by a recorder so
nothing here depends on a server's timing; the emulator runs are in the streaming tests."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from pipeline.publish import (
    BATCH_MESSAGES,
    MAX_IN_FLIGHT_MESSAGES,
    messages,
    new_publisher,
    publish,
)
from tests.helpers import mini_container, mini_record


class Recorder:
    """A stand-in ``PublisherClient``: records each hand-over, acknowledges (or fails) later."""

    def __init__(self, fail_every: int = 0, refuse: set[int] | None = None) -> None:
        self.calls: list[tuple[float, str, bytes, dict]] = []
        self.fail_every, self.refuse = fail_every, refuse or set()
        self.pending: list[concurrent.futures.Future] = []

    def publish(self, topic: str, data: bytes, **attrs) -> concurrent.futures.Future:
        k = len(self.calls)
        self.calls.append((time.perf_counter(), topic, data, attrs))
        if k in self.refuse:
            raise ValueError("message too large")
        future: concurrent.futures.Future = concurrent.futures.Future()
        fail = self.fail_every and k % self.fail_every == self.fail_every - 1

        def settle() -> None:  # from another thread, as the real client's callbacks are
            if fail:
                future.set_exception(RuntimeError("DEADLINE_EXCEEDED"))
            else:
                future.set_result(str(k))

        threading.Timer(0.001, settle).start()
        return future


@pytest.fixture
def files(tmp_path):
    for i in range(40):
        (tmp_path / f"{i:03d}.avro").write_bytes(mini_container([mini_record(i)]))
    (tmp_path / "broken.avro").write_bytes(b"not an alert")
    return tmp_path


def test_messages_carry_source_and_event_time(files):
    got = [m for m in messages([str(files)]) if isinstance(m, tuple)]
    assert len(got) == 41
    by_source = {source.rsplit("/", 1)[1]: attrs for source, _, attrs in got}
    assert "event_time" in by_source["000.avro"] and "event_time" not in by_source["broken.avro"]
    assert all(attrs["source"].endswith(name) for name, attrs in by_source.items())


def test_publish_hands_everything_over_and_counts_acknowledgements(files):
    rec = Recorder()
    acked: list[str] = []
    counts = publish(
        "projects/p/topics/t",
        [str(files)],
        publisher=rec,
        on_published=lambda s, a, t: acked.append(s),
    )
    assert counts == {"published": 41, "failed": 0, "unreadable": 0}
    assert len(rec.calls) == 41 and sorted(acked) == sorted(c[3]["source"] for c in rec.calls)


def test_rate_cap_never_sends_early(files):
    rec = Recorder()
    publish("projects/p/topics/t", [str(files)], rate=400.0, publisher=rec)
    t0 = rec.calls[0][0]
    for k, (t, *_) in enumerate(rec.calls):
        assert t - t0 >= k / 400.0 - 1e-3, k  # message k no earlier than its slot


def test_failures_are_counted_and_reported(files, capsys):
    rec = Recorder(fail_every=10, refuse={3})
    counts = publish("projects/p/topics/t", [str(files)], publisher=rec, limit=30)
    assert len(rec.calls) == 30
    # Calls 9, 19, 29 fail at the server; call 3 is refused by the client.
    assert counts == {"published": 26, "failed": 4, "unreadable": 0}
    err = capsys.readouterr().err
    assert "DEADLINE_EXCEEDED" in err and "message too large" in err


def test_the_default_client_batches_and_blocks_when_too_much_is_in_flight(monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")  # never contacted here
    client = new_publisher()
    flow = client.publisher_options.flow_control
    assert flow.message_limit == MAX_IN_FLIGHT_MESSAGES
    assert flow.limit_exceeded_behavior.name == "BLOCK"
    assert client.batch_settings.max_messages == BATCH_MESSAGES
