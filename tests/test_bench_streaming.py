"""``stampflow bench --streaming`` (:mod:`bench.streaming`): the pure functions on hand-made inputs
(progress lines, the job's summary, ``/proc`` stat text, binning, latency matching with tap
publish times, accounting), then one small run of each mode on the Pub/Sub emulator with the job
and the publisher in their own processes: every expected row, nothing lost. No timing is asserted.
The emulator runs are skipped, saying why, without gcloud or its emulator."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bench import streaming as sb
from bench.end_to_end import alert_files
from tests.helpers import export_random_model

TICK = sb._CLK_TCK


# --- Pure functions -------------------------------------------------------------------------------
def test_progress_line_is_parsed_and_other_lines_are_not():
    line = "[stampflow] 12,345 alerts read · 3,001 classified · 7 dead letters · 1,234 alerts/s\n"
    assert sb.parse_progress(line) == {
        "read": 12345.0,
        "classified": 3001.0,
        "dead": 7.0,
        "rate": 1234.0,
    }
    assert sb.parse_progress("stampflow run: onnxruntime 1.2 runs model.onnx") is None


def test_progress_samples_start_when_counting_began():
    lines = [
        (100.0, "WARNING something\n"),
        (110.0, "[stampflow] 50 alerts read · 10 classified · 0 dead letters · 10 alerts/s\n"),
        (115.0, "[stampflow] 100 alerts read · 20 classified · 0 dead letters · 10 alerts/s\n"),
    ]
    # 50 alerts at 10/s: counting began 5 s before the first line.
    assert sb.progress_samples(lines) == [(105.0, 0.0), (110.0, 50.0), (115.0, 100.0)]
    assert sb.progress_samples([]) == []


def test_summary_and_publisher_lines_are_parsed():
    text = (
        "streaming job CANCELLED (counts so far; a stream does not reconcile)\n"
        "150 records in → 40 classified, 108 skipped, 2 dead letters (31.0 s, 4.8 alerts/s)\n"
        "classes: AGN 3\n"
    )
    assert sb.parse_summary(text) == {
        "records_in": 150,
        "classified": 40,
        "skipped": 108,
        "dead_letters": 2,
    }
    assert sb.parse_summary("Traceback (most recent call last):") is None
    out = "published 150 messages to projects/p/topics/alerts1 (48/s)\n"
    assert sb.parse_published(out) == {"published": 150, "rate": 48}
    assert sb.parse_published("publish failed: x") is None


def test_final_counts_fall_back_on_the_last_progress_line():
    summary = "150 records in → 40 classified, 108 skipped, 2 dead letters (31.0 s, 4.8 alerts/s)"
    progress = "[stampflow] 150 alerts read · 40 classified · 2 dead letters · 9 alerts/s\n"
    assert sb.final_counts(progress + summary)["from"] == "summary"
    killed = sb.final_counts(
        "[stampflow] 9 alerts read · 1 classified · 0 dead letters · 3 alerts/s\n" + progress
    )
    assert killed == {
        "records_in": 150,
        "classified": 40,
        "skipped": None,
        "dead_letters": 2,
        "from": "progress",
    }
    assert sb.final_counts("Traceback (most recent call last):") is None
    want = sb.Expected(messages=150, alerts=150, first={i: f"ZTF{i}" for i in range(40)})
    rows = [(0.0, {"candid": i, "objectId": f"ZTF{i}"}) for i in range(40)]
    checked = sb.check_rows(rows, want)
    assert sb.reconcile(checked, want, 150, killed, 2)
    assert not sb.reconcile(checked, want, 150, dict(killed, records_in=149), 2)  # not all read


def _stat(pid: int, ppid: int, utime: int, stime: int, name: str = "python3") -> str:
    # Fields 3.. of proc(5): state, ppid, pgrp, session, tty, tpgid, flags, minflt, cminflt,
    # majflt, cmajflt, utime, stime, cutime, cstime, ...
    rest = ["S", ppid, pid, pid, 0, -1, 0, 1, 2, 3, 4, utime, stime, 999, 999, 20, 0, 1]
    return f"{pid} ({name}) " + " ".join(map(str, rest)) + "\n"


def test_stat_line_with_spaces_and_parentheses_in_the_name():
    assert sb.parse_stat(_stat(42, 7, 3 * TICK, 2 * TICK, name="a (b) c")) == (42, 7, 5.0)


def test_tree_cpu_from_a_fake_proc(tmp_path):
    # 10 ─ 11 ─ 12, and 20 beside them; /proc/self and a vanished entry are ignored.
    procs = {10: (1, 1, 1), 11: (10, 2, 0), 12: (11, 0, 3), 20: (1, 50, 50)}
    for pid, (ppid, u, s) in procs.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(_stat(pid, ppid, u * TICK, s * TICK))
    (tmp_path / "self").mkdir()
    (tmp_path / "99").mkdir()  # no stat: exited between listing and reading
    stats = sb.read_stats(tmp_path)
    assert set(stats) == {10, 11, 12, 20}
    assert sb.tree_cpu(10, stats) == 7.0
    assert sb.tree_cpu(11, stats) == 5.0
    assert sb.tree_cpu(404, stats) == 0.0
    sampler = sb.CpuSampler({"job": 10, "other": 20}, proc=tmp_path)
    sampler.sample()
    (tmp_path / "12" / "stat").write_text(_stat(12, 11, 5 * TICK, 3 * TICK))
    sampler.sample()
    assert [c for _, c in sampler.samples["job"]] == [7.0, 12.0]
    assert [c for _, c in sampler.samples["other"]] == [100.0, 100.0]


def test_cpu_usage_mean_and_max_within_a_window():
    samples = [(0.0, 0.0), (1.0, 0.5), (2.0, 2.0), (3.0, 2.5), (4.0, 1.0), (5.0, 1.5)]
    whole = sb.cpu_usage(samples)
    # 0.5 + 1.5 + 0.5 + 0 (a process exited: counted as 0) + 0.5 over 5 s
    assert whole == {"mean": pytest.approx(3.0 / 5), "max": pytest.approx(1.5)}
    window = sb.cpu_usage(samples, start=2.0, end=3.0)
    assert window == {"mean": pytest.approx(0.5), "max": pytest.approx(0.5)}
    # a window shorter than the sampling period: the samples around it
    assert sb.cpu_usage(samples, start=2.2, end=2.8)["mean"] == pytest.approx(0.5)
    assert math.isnan(sb.cpu_usage(samples[:1])["mean"])


def test_event_rates_in_bins():
    times = [0.5, 1.0, 9.9, 10.0, 12.0, 25.0]
    # whole bins [0,10), [10,20), [20,30]: the last one holds the event at the end
    assert sb.event_rates(times, 0.0, 25.0, 10.0) == pytest.approx([0.3, 0.2, 0.1])
    assert sb.event_rates([0.0, 20.0], 0.0, 20.0, 10.0) == pytest.approx([0.1, 0.1])
    assert sb.event_rates([], 0.0, 20.0, 10.0) == [0.0, 0.0]


def test_cumulative_rates_interpolate_between_progress_lines():
    samples = [(5.0, 0.0), (15.0, 100.0), (25.0, 100.0)]
    # 0 until 5 s, then 10/s until 15 s, then flat
    assert sb.cumulative_rates(samples, 0.0, 30.0, 10.0) == pytest.approx([5.0, 5.0, 0.0])
    assert sb.cumulative_rates([], 0.0, 10.0, 10.0) == [0.0]


def test_achieved_rate_is_the_sustained_middle():
    # 100 messages at 10/s after a start-up burst of 5 at once: the middle says 10/s
    times = [0.0] * 5 + [1.0 + 0.1 * k for k in range(95)]
    assert sb.achieved_rate(times) == pytest.approx(10.0, rel=0.02)
    assert sb.achieved_rate([0.0, 0.5, 1.0]) == 2.0
    assert sb.achieved_rate([5.0]) == 0.0


def test_latency_is_row_arrival_minus_the_tap_publish_time():
    published = {"a.avro": 100.0, "b.avro": 101.0, "c.avro": 102.0, "d.avro": 103.0}
    source_of = {1: "a.avro", 2: "b.avro", 3: "c.avro", 4: "d.avro", 5: "e.avro"}
    rows = [(104.5, {"candid": 1}), (106.0, {"candid": 2}), (106.0, {"candid": 2})]
    rows += [(105.0, {"candid": 3}), (120.0, {"candid": 5})]
    assert sorted(sb.latencies(rows, published, source_of)) == [3.0, 4.5, 5.0, 5.0]
    wanted = {1: "a.avro", 2: "b.avro", 3: "c.avro", 4: "d.avro", 5: "e.avro"}
    stats = sb.latency_stats(rows, published, wanted)
    # candid 2 counted once (its first arrival); 4 never came (inf); 5 was never published
    assert stats["measured"] == 4 and stats["arrived"] == 3
    assert stats["p50_s"] == 4.5 and stats["max_s"] == math.inf and stats["p99_s"] == math.inf
    done = sb.latency_stats(rows, published, {1: "a.avro", 3: "c.avro"})
    assert (done["p50_s"], done["p90_s"], done["max_s"]) == (3.0, 4.5, 4.5)
    assert math.isnan(sb.latency_stats([], {}, wanted)["p50_s"])


def test_accounting():
    want = sb.Expected(messages=4, alerts=4, first={1: "ZTF1", 2: "ZTF2"}, broken=0)
    rows = [(0.0, {"candid": 1, "objectId": "ZTF1"}), (0.0, {"candid": 2, "objectId": "ZTF2"})]
    checked = sb.check_rows(rows, want)
    assert checked == {"rows": 2, "duplicates": 0, "unexpected": 0, "missing": 0}
    summary = {"records_in": 4, "classified": 2, "skipped": 2, "dead_letters": 0}
    assert sb.reconcile(checked, want, 4, summary, 0)
    assert not sb.reconcile(checked, want, 3, summary, 0)  # a message not published
    assert not sb.reconcile(checked, want, 4, None, 0)  # no summary from the job
    assert not sb.reconcile(checked, want, 4, dict(summary, skipped=1), 0)  # one unaccounted
    assert not sb.reconcile(checked, want, 4, summary, 1)  # a dead letter it did not count
    again = sb.check_rows([*rows, rows[0]], want)
    assert again["duplicates"] == 1 and not sb.reconcile(again, want, 4, summary, 0)
    stray = sb.check_rows([(0.0, {"candid": 9, "objectId": "ZTF9"})], want)
    assert stray == {"rows": 1, "duplicates": 0, "unexpected": 1, "missing": 2}


def test_tables_show_censored_latency_and_accounting():
    cpu = {"mean": 0.5, "max": 1.0}
    steady = {
        "rate": 330.0, "achieved_rate": 329.5, "messages": 1000, "read_rate": 50.0, "rows": 10,
        "expected_rows": 20, "dead_letters": 0, "p50_s": 4.2, "p90_s": math.inf,
        "p99_s": math.inf, "max_s": math.inf, "cpu": {"job": cpu, "emulator": cpu},
        "reconciled": False, "caught_up": False, "censored_s": 61.6,
    }  # fmt: skip
    table = sb.format_steady([steady])
    # rows that never came: waited at least 61.6 s, so the percentiles past them are > 62 s
    assert "| 330 / 329.5 | 1,000 | 50.0 | 10 / 20 | 0 | 4.2 | > 62 | > 62 | > 62 |" in table
    assert table.endswith("| 0.5 / 1.0 | 0.5 / 1.0 | **no** |")
    ok = sb.format_steady([dict(steady, p90_s=5.0, p99_s=5.5, max_s=6.0, reconciled=True)])
    assert "| 4.2 | 5.0 | 5.5 | 6.0 |" in ok and ok.endswith("| yes |")


def test_json_is_strict():
    import json

    text = sb.to_json({"p99_s": math.inf, "read_rate": math.nan, "bins": [{"x": 1.5}]})
    assert json.loads(text) == {"p99_s": "inf", "read_rate": None, "bins": [{"x": 1.5}]}


# --- On the emulator ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Path:
    from simulator import simulate

    out = tmp_path_factory.mktemp("bench_stream_night")
    simulate(130, out, seed=5, detections_per_object=3, workers=1)
    return out


@pytest.fixture(scope="module")
def bench(pubsub, night, tmp_path_factory):
    model = export_random_model(night, tmp_path_factory.mktemp("bench_stream_model"))
    work = tmp_path_factory.mktemp("bench_stream_work")
    return sb.Bench(pubsub.host, pubsub.process.pid, model, work, hold_s=1.0, timeout_s=120.0)


def _nothing_lost(r: dict) -> None:
    assert r["rows"] == r["expected_rows"] > 0
    assert r["duplicates"] == r["unexpected"] == r["missing"] == 0
    assert r["dead_letters"] == r["expected_broken"] == 0
    assert r["summary"] is not None and r["summary"]["classified"] == r["expected_rows"]
    assert r["reconciled"] is True
    assert r["cpu"]["job"]["mean"] > 0  # the job's process tree was sampled while it worked
    assert r["cpu"]["emulator"]["mean"] >= 0  # and the emulator's (NaN: never sampled)


def test_steady_run_on_the_emulator(bench, night):
    r = sb.run_steady(bench, alert_files(night), rate=30.0, messages=60)
    _nothing_lost(r)
    assert r["messages"] == r["published"] == 60
    # every measured row has a latency from the tap's publish time, at least the hold
    assert r["arrived"] == r["measured"] > 0
    assert r["p50_s"] >= bench.hold_s and np.isfinite(r["max_s"])
    assert "| 30 / " in sb.format_steady([r])


def test_backlog_run_on_the_emulator(bench, night):
    r = sb.run_backlog(bench, alert_files(night), messages=100)
    _nothing_lost(r)
    assert r["summary"]["records_in"] == r["alerts"] == 100
    assert r["bins"] and sum(b["rows_per_s"] for b in r["bins"]) > 0
    assert "| 100 |" in sb.format_backlog([r])
