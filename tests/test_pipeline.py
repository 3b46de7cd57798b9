"""The batch pipeline end to end: a simulated night (and the real bad inputs) through
``stampflow run`` with a small exported model; outputs checked against independent computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.run_job import run
from tests.helpers import BAD, decoded_alerts, export_random_model, needs_bad
from transforms.featurize import featurize_alerts
from transforms.rules import history_skip_reason
from transforms.schema import FEATURES_PRODUCTION, PROBABILITY_COLUMN_NAMES

_alerts = decoded_alerts


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    from simulator import simulate

    out = tmp_path_factory.mktemp("night")
    simulate(240, out, seed=11, detections_per_object=3, defects=0.05, workers=1)
    return out


@pytest.fixture(scope="module")
def model_dir(night, tmp_path_factory):
    return export_random_model(night, tmp_path_factory.mktemp("model"), "0.0.1")


@pytest.fixture(scope="module")
def first_run(night, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run1")
    summary = run(["--input", str(night), "--output", str(out), "--model", str(model_dir)])
    return out, summary


def _rows(out: Path) -> list[dict]:
    return pq.read_table(out / "probabilities").to_pylist()


def test_outputs_and_reconciliation(first_run):
    out, summary = first_run
    assert summary["reconciled"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["records_in"] == 240
    assert on_disk["records_in"] == (
        on_disk["classified"]
        + sum(on_disk["skipped"].values())
        + sum(on_disk["dead_letters"].values())
    )
    rows = _rows(out)
    assert len(rows) == summary["classified"] > 0
    assert tuple(rows[0]) == PROBABILITY_COLUMN_NAMES
    probs = np.array([[r[c] for c in PROBABILITY_COLUMN_NAMES if c.startswith("p_")] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert {r["model_name"] for r in rows} == {"test-model"}
    density = pq.read_table(out / "sky_density").to_pylist()
    assert sum(d["count"] for d in density) == len(rows)
    assert (out / "sky_map.png").stat().st_size > 10_000
    assert (out / "sn_candidates.csv").exists()


def test_select_first_picks_exactly_the_first_detections(first_run, night):
    out, summary = first_run
    alerts = _alerts(night)
    by_object = {}
    for a in alerts:
        if history_skip_reason(a.candidate, a.prv_candidates) is None:
            best = by_object.get(a.object_id)
            if best is None or (a.jd, a.candid) < (best.jd, best.candid):
                by_object[a.object_id] = a
    expected = {a.candid for a in by_object.values()}
    dead = {
        json.loads(line)["candid"]
        for line in (out / "dead_letters").glob("*.jsonl").__next__().read_text().splitlines()
    }
    assert {r["candid"] for r in _rows(out)} == expected - dead
    assert summary["skipped"]["earlier_detection_in_history"] > 0  # repeats were simulated


def test_known_solar_system_objects_go_around_the_network(first_run, night, model_dir, tmp_path):
    # --rules alerce: ssdistnr >= 0 is an asteroid without asking the CNN, so it never reaches
    # RunInference (one-hot probabilities, the rule named); --rules none asks the network.
    out, summary = first_run
    known = {r["candid"]: r for r in _rows(out) if r["rule"] == "known_solar_system_object"}
    assert known and summary["rules_fired"]["known_solar_system_object"] == len(known)
    for r in known.values():
        assert r["predicted_class"] == "asteroid"
        assert [r[f"p_{c}"] for c in ("AGN", "SN", "VS", "asteroid", "bogus")] == [0, 0, 0, 1, 0]
    bare = tmp_path / "bare"
    argv = ["--input", str(night), "--output", str(bare), "--model", str(model_dir)]
    run([*argv, "--rules", "none"])
    asked = {r["candid"]: r for r in _rows(bare)}
    assert set(known) <= set(asked)
    assert all(0 < asked[c]["p_asteroid"] < 1 for c in known)  # the random network's own answer


def test_probabilities_equal_the_savedmodel_called_directly(first_run, night, model_dir):
    import tensorflow as tf

    out, _ = first_run
    rows = {r["candid"]: r for r in _rows(out) if r["rule"] != "known_solar_system_object"}
    alerts = [a for a in _alerts(night) if a.candid in rows]
    result = featurize_alerts(alerts, FEATURES_PRODUCTION, "drop")
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    feats = np.stack([e["features"] for _, e in result.examples])
    stamps = np.stack([e["stamps"] for _, e in result.examples])
    direct = serve(features=tf.constant(feats), stamps=tf.constant(stamps))["probabilities"]
    got = np.array(
        [
            [rows[c][f"p_{k}"] for k in ("AGN", "SN", "VS", "asteroid", "bogus")]
            for c, _ in result.examples
        ]
    )
    np.testing.assert_allclose(got, direct.numpy(), atol=1e-6)


def test_rerun_is_identical(first_run, night, model_dir, tmp_path):
    out, _ = first_run
    run(["--input", str(night), "--output", str(tmp_path), "--model", str(model_dir)])
    key = lambda r: r["candid"]  # noqa: E731
    assert sorted(_rows(out), key=key) == sorted(_rows(tmp_path), key=key)


def test_sn_page_is_self_contained(first_run):
    out, _ = first_run
    page = (out / "sn_candidates.html").read_text()
    n = len((out / "sn_candidates.csv").read_text().splitlines()) - 1
    data = page.split('<script id="sn-data" type="application/json">')[1].split("</script>")[0]
    records = json.loads(data)
    assert len(records) == n  # one record per candidate (the browser tests: tests/test_sn_page.py)
    assert all(len(r["stamps"]) == 3 for r in records)  # three stamps each, embedded
    assert all(r["stamps"]["science"].startswith("data:image/png;base64,") for r in records)
    for attr in ("src=", "href="):
        assert attr + '"http' not in page  # no external stylesheet or script


@needs_bad
def test_select_all_dead_letters_every_bad_input(night, model_dir, tmp_path):
    summary = run(
        [
            "--input",
            str(BAD),
            "--output",
            str(tmp_path),
            "--model",
            str(model_dir),
            "--select",
            "all",
            "--rules",
            "none",
        ]
    )
    assert summary["classified"] == 0 and summary["reconciled"]
    assert summary["dead_letters"] == {"decode": 15, "stamps": 18}


def test_winners_gone_before_the_reread_are_select_dead_letters(
    first_run, night, model_dir, tmp_path, monkeypatch
):
    # Files that vanish between the two reads of --select first: their first detections become
    # `select` dead letters and the run still reconciles (in-process runner: the patch applies).
    import transforms.selection as selection
    from transforms.sources import ReadError

    winners = sorted(r["candid"] for r in _rows(first_run[0]))[:5]
    gone = {str(night / f"{c}.avro") for c in winners}
    assert all(Path(g).is_file() for g in gone)
    real_read = selection.read_path

    def vanished(path):
        if path in gone:
            yield ReadError(path, "unreadable: FileNotFoundError: gone")
            return
        yield from real_read(path)

    monkeypatch.setattr(selection, "read_path", vanished)
    summary = run(["--input", str(night), "--output", str(tmp_path), "--model", str(model_dir)])
    assert summary["reconciled"]
    assert summary["dead_letters"].get("select") == len(gone)
    assert summary["classified"] == first_run[1]["classified"] - len(gone)
    dead = [json.loads(x) for f in (tmp_path / "dead_letters").glob("*.jsonl") for x in f.open()]
    select = sorted(d["candid"] for d in dead if d["stage"] == "select")
    assert select == winners
    assert all(d["reason"].startswith("reread: unreadable") for d in dead if d["stage"] == "select")


def test_multi_process_runner(night, model_dir, tmp_path):
    # Proof that every DoFn and the model handler pickle and set up in worker processes.
    summary = run(
        [
            "--input",
            str(night),
            "--output",
            str(tmp_path),
            "--model",
            str(model_dir),
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
        ]
    )
    assert summary["reconciled"] and summary["classified"] > 0


@pytest.fixture(scope="module")
def bigquery(tmp_path_factory):
    from bench.emulators import (
        BigQueryEmulator,
        EmulatorUnavailableError,
        bigquery_missing_requirements,
    )

    reason = bigquery_missing_requirements()
    if reason:
        pytest.skip(reason)
    try:
        emulator = BigQueryEmulator.start(tmp_path_factory.mktemp("bq"))
    except EmulatorUnavailableError as e:
        pytest.skip(f"BigQuery emulator cannot be started: {e}")
    with emulator:
        yield emulator


def test_bigquery_rows_equal_parquet_rows_and_reruns_replace(
    first_run, night, model_dir, tmp_path, bigquery
):
    emulator = bigquery
    args = [
        "--input", str(night), "--model", str(model_dir),
        "--bigquery-dataset", f"{emulator.project}:night",
        "--bigquery-emulator", emulator.url,
    ]  # fmt: skip
    for i in range(2):  # the second run of the same night must replace, not duplicate
        run([*args, "--output", str(tmp_path / f"out{i}")])
    client = emulator.client()
    table = f"{emulator.project}.night.probabilities"
    bq = [dict(r) for r in client.query(f"SELECT * FROM `{table}`").result()]
    parquet = _rows(first_run[0])
    key = lambda r: r["candid"]  # noqa: E731
    assert len(bq) == len(parquet)
    for got, want in zip(sorted(bq, key=key), sorted(parquet, key=key), strict=True):
        assert set(got) == set(want)
        for k, v in want.items():
            assert got[k] == pytest.approx(v) if isinstance(v, float) else got[k] == v, k


def test_rows_bigquery_refuses_become_dead_letters_and_the_run_reconciles(
    first_run, night, model_dir, tmp_path, bigquery, monkeypatch
):
    # A table whose `rule` column is INTEGER (a schema that drifted): BigQuery refuses exactly
    # the rows where a rule fired. They used to vanish (WriteTables' failed rows were dropped);
    # now each is a `bigquery` dead letter, in the files and in the dead_letters table, and the
    # rows are still in the Parquet output.
    from google.cloud import bigquery as gbq

    import pipeline.bigquery as bq

    real_schemas = bq.table_schemas

    def drifted():
        schemas = real_schemas()
        schemas["probabilities"] = [
            gbq.SchemaField(f.name, "INTEGER", mode=f.mode) if f.name == "rule" else f
            for f in schemas["probabilities"]
        ]
        return schemas

    monkeypatch.setattr(bq, "table_schemas", drifted)
    emulator = bigquery
    out = tmp_path / "out"
    summary = run(
        [
            "--input", str(night), "--model", str(model_dir), "--output", str(out),
            "--bigquery-dataset", f"{emulator.project}:drifted",
            "--bigquery-emulator", emulator.url,
        ]
    )  # fmt: skip
    ruled = sorted(r["candid"] for r in _rows(out) if r["rule"])
    assert ruled, "the simulated night should fire the known-asteroid rule"
    assert summary["reconciled"]
    assert summary["dead_letters"]["bigquery"] == len(ruled)
    assert summary["classified"] == first_run[1]["classified"] == len(_rows(out))
    letters = [json.loads(x) for f in (out / "dead_letters").glob("*.jsonl") for x in f.open()]
    refused = [d for d in letters if d["stage"] == "bigquery"]
    assert sorted(d["candid"] for d in refused) == ruled
    assert all(d["reason"].startswith("rejected: probabilities__staging_") for d in refused)
    client = emulator.client()
    rows = client.query(f"SELECT candid FROM `{emulator.project}.drifted.probabilities`").result()
    assert sorted(r["candid"] for r in rows) == sorted(
        r["candid"] for r in _rows(out) if not r["rule"]
    )
    table = f"{emulator.project}.drifted.dead_letters"
    in_table = client.query(f"SELECT candid FROM `{table}` WHERE stage = 'bigquery'").result()
    assert sorted(r["candid"] for r in in_table) == ruled


@pytest.mark.parametrize("select", ["first", "all"])
def test_the_same_alerts_read_twice_give_one_row_each(
    first_run, night, model_dir, tmp_path, select
):
    # Overlapping inputs (the night given twice): one row per alert, the copies skipped as
    # duplicates, and the run reconciles (with --select all they used to be classified twice).
    out = tmp_path / "twice"
    summary = run(
        ["--input", str(night), str(night), "--output", str(out), "--model", str(model_dir),
         "--select", select]
    )  # fmt: skip
    rows = _rows(out)
    assert len({r["candid"] for r in rows}) == len(rows) == summary["classified"]
    once = first_run[1]
    decoded = once["records_in"] - once["dead_letters"].get("decode", 0)
    # --select first checks histories before looking for copies: a repeat detection is skipped
    # for its history, whichever copy it is; every other alert's second copy is a duplicate.
    history = once["skipped"]["earlier_detection_in_history"] if select == "first" else 0
    assert summary["skipped"]["duplicate_candid"] == decoded - history
    assert summary["records_in"] == 2 * once["records_in"] and summary["reconciled"]
    if select == "first":
        assert sorted(r["candid"] for r in rows) == sorted(r["candid"] for r in _rows(first_run[0]))


def test_xla_compiled_model_gives_the_same_probabilities(night, model_dir):
    # --jit-compile: the whole serving function through XLA, parity with the plain graph.
    from bench.serving import load_serving

    result = featurize_alerts(_alerts(night)[:64], FEATURES_PRODUCTION, "pad")
    feats = np.stack([e["features"] for _, e in result.examples])
    stamps = np.stack([e["stamps"] for _, e in result.examples])
    plain = load_serving(model_dir)(feats, stamps)
    xla = load_serving(model_dir, jit_compile=True)(feats, stamps)
    np.testing.assert_allclose(xla, plain, atol=1e-5)
