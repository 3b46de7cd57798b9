"""Sinks and the outcome counts: refused BigQuery rows become dead letters, slim alerts' letters get
their bytes back once per file, and one count scheme serves batch and streaming summaries."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.options import ModelInfo
from pipeline.sinks import CollectDeadLetters, fill_raw, refused_row_letter
from pipeline.summary import CountOutcomes, counters, dead_keys, row_keys, summarise
from tests.helpers import mini_container, mini_record
from transforms.alerts import decode_alerts
from transforms.dead_letters import REREAD_PATH, dead_letter
from transforms.density import nights_label
from transforms.schema import (
    STAGE_BIGQUERY,
    STAGE_DECODE,
    STAGE_FEATURES,
    STAGE_INFERENCE,
    STAGE_READ,
    STAGE_STAMPS,
    TAG_ALERTS,
    TAG_DEAD_LETTERS,
    TAG_ROWS,
    TAG_SKIPPED,
)

MODEL = ModelInfo("m", "test-model", "1.0", ("sgscore1",), {})


def _row(candid: int, cls: str = "SN", rule: str | None = None) -> dict:
    return {"objectId": f"ZTF{candid}", "candid": candid, "predicted_class": cls, "rule": rule}


# --- BigQuery refusals ----------------------------------------------------------------------------
def test_a_refused_row_is_a_bigquery_dead_letter_with_the_row_as_json():
    row = {"objectId": "ZTF18abc", "candid": 42, "rule": "known_solar_system_object"}
    errors = [{"index": 0, "errors": [{"reason": "invalid", "message": "Cannot convert 'rule'"}]}]
    letter = refused_row_letter(("p:ds.probabilities__staging_x", row, errors))
    assert letter["stage"] == STAGE_BIGQUERY
    assert letter["reason"] == "rejected: probabilities__staging_x: Cannot convert 'rule'"
    assert letter["source"] == "bigquery:p:ds.probabilities__staging_x"
    assert (letter["objectId"], letter["candid"]) == ("ZTF18abc", 42)
    assert json.loads(letter["raw"]) == row
    density = refused_row_letter(("p:ds.sky_density", {"night": "20180601"}, "boom"))
    assert density["candid"] is None and density["reason"].endswith("sky_density: boom")


# --- Dead-letter bytes read back ------------------------------------------------------------------
@pytest.fixture
def archive(tmp_path) -> Path:
    multi = mini_container([mini_record(1), mini_record(2)])
    path = tmp_path / "night.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("a.avro", multi), ("b.avro", mini_container([mini_record(3)]))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _slim_letter(path: Path, source: str, candid: int) -> dict:
    letter = dead_letter(STAGE_STAMPS, "null: x", source, b"", "ZTF", candid)
    letter[REREAD_PATH] = str(path)
    return letter


def test_fill_raw_reads_each_file_once_and_cuts_single_alert_containers(archive, monkeypatch):
    import transforms.sources as sources

    opened = []
    real = sources.read_path
    monkeypatch.setattr(sources, "read_path", lambda p: opened.append(p) or real(p))
    a, b = f"{archive}!a.avro", f"{archive}!b.avro"
    letters = [
        _slim_letter(archive, a, 1_000_000_000_002),
        _slim_letter(archive, b, 1_000_000_000_003),
    ]
    letters.append(_slim_letter(archive, f"{archive}!gone.avro", 9))
    filled = {d["candid"]: d for d in fill_raw((str(archive), letters))}
    assert opened == [str(archive)]  # one read for all the file's letters
    assert all(REREAD_PATH not in d for d in filled.values())
    (two,), _ = decode_alerts(filled[1_000_000_000_002]["raw"], "x")
    assert two.candid == 1_000_000_000_002  # its own container, not the two-record member
    assert decode_alerts(filled[1_000_000_000_003]["raw"], "x")[0][0].candid == 1_000_000_000_003
    assert filled[9]["raw"] == b""  # no longer there: written without bytes


def test_collect_dead_letters_fills_slim_letters_in_a_pipeline(archive):
    full = dead_letter(STAGE_DECODE, "truncated: x", "f.avro", b"abc")
    slim = _slim_letter(archive, f"{archive}!b.avro", 1_000_000_000_003)
    with BeamTestPipeline() as p:
        one = p | "One" >> beam.Create([full])
        two = p | "Two" >> beam.Create([slim])
        out = (one, two) | CollectDeadLetters(read_back=True)
        assert_that(
            out | beam.Map(lambda d: (d["stage"], len(d["raw"]) > 3, REREAD_PATH in d)),
            equal_to([(STAGE_DECODE, False, False), (STAGE_STAMPS, True, False)]),
        )


# --- Outcome counts and the summary ---------------------------------------------------------------
def test_outcome_keys():
    assert row_keys(_row(1, "asteroid", "known_solar_system_object")) == [
        "classified",
        "class=asteroid",
        "rule=known_solar_system_object",
    ]
    assert dead_keys(dead_letter(STAGE_FEATURES, "null: magpsf", "s", b"")) == [
        "dead=features",
        "reason=features:null",
    ]


def test_summary_reconciles_and_keeps_sink_refusals_out_of_the_input_sum():
    counts = {
        "decoded": 10,
        "classified": 6,
        "class=SN": 6,
        "skipped=duplicate_candid": 2,
        "dead=read": 1,
        "dead=stamps": 1,
        "dead=inference": 1,
        "dead=bigquery": 3,  # rows that are in the Parquet files all the same
    }
    s = summarise(counts, MODEL, 2.0)
    assert s["records_in"] == 11 and s["reconciled"] is True
    assert s["dead_letters"] == {"bigquery": 3, "inference": 1, "read": 1, "stamps": 1}
    assert summarise({**counts, "classified": 5}, MODEL, 2.0)["reconciled"] is False
    stream = summarise(counts, MODEL, 2.0, state="CANCELLED")
    assert stream["state"] == "CANCELLED" and stream["reconciled"] is None


def test_streaming_counters_count_every_stages_dead_letters():
    # The streaming summary used to read only counters named dead_letters_*, which featurize and
    # inference do not emit: their dead letters were missing from it.
    letters = [
        dead_letter(STAGE_DECODE, "truncated: x", "m1", b"x"),
        dead_letter(STAGE_STAMPS, "null: x", "m2", b"x"),
        dead_letter(STAGE_FEATURES, "null: magpsf", "m3", b"x"),
        dead_letter(STAGE_INFERENCE, "model: boom", "m4", b"x"),
        dead_letter(STAGE_INFERENCE, "model: boom", "m5", b"x"),
    ]
    p = BeamTestPipeline()
    pcolls = {
        TAG_ALERTS: p | "Alerts" >> beam.Create(["a"] * 6),
        TAG_ROWS: p | "Rows" >> beam.Create([_row(1), _row(2, "VS")]),
        TAG_SKIPPED: p | "Skipped" >> beam.Create([("duplicate_candid", 3)]),
        TAG_DEAD_LETTERS: p | "Dead" >> beam.Create(letters),
    }
    _ = pcolls | CountOutcomes(output=None)
    result = p.run()
    result.wait_until_finish()
    s = summarise(counters(result), MODEL, 1.0, state=str(result.state))
    assert s["dead_letters"] == {"decode": 1, "features": 1, "inference": 2, "stamps": 1}
    assert s["records_in"] == 7 and s["classified"] == 2
    assert s["per_class"]["SN"] == 1 and s["skipped"] == {"duplicate_candid": 1}


def test_batch_counts_file(tmp_path):
    with BeamTestPipeline() as p:
        pcolls = {
            TAG_ALERTS: p | "Alerts" >> beam.Create(["a", "b"]),
            TAG_ROWS: p | "Rows" >> beam.Create([_row(1)]),
            TAG_SKIPPED: p | "Skipped" >> beam.Create([("duplicate_candid", 3)]),
            TAG_DEAD_LETTERS: p
            | "Dead" >> beam.Create([dead_letter(STAGE_READ, "no_match: x", "x", b"")]),
        }
        _ = pcolls | CountOutcomes(output=str(tmp_path))
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert counts == {
        "class=SN": 1,
        "classified": 1,
        "dead=read": 1,
        "decoded": 2,
        "reason=read:no_match": 1,
        "skipped=duplicate_candid": 1,
    }


def test_night_labels_stay_short():
    assert nights_label([]) == ""
    assert nights_label(["20180601", "20180601"]) == "night 20180601"
    assert nights_label(["20180602", "20180601"]) == "nights 20180601, 20180602"
    many = [f"201806{d:02d}" for d in range(1, 31)]
    assert nights_label(many) == "30 nights, 20180601 to 20180630"
