"""The read → decode stage as Beam code: DoFns called directly, then whole pipelines."""

from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.helpers import BAD, REAL, mini_container, mini_record, needs_bad, needs_real
from transforms.cutouts import DecodeCutouts
from transforms.dead_letters import reason_code
from transforms.ingest import DecodeAlerts, ReadAlerts
from transforms.schema import TAG_ALERTS as ALERTS
from transforms.schema import TAG_DEAD_LETTERS as DEAD_LETTERS

# What every broken real input must become: file name -> (stage, reason code).
BAD_EXPECTED = {
    **{f"1215407935151350{i:02d}.avro": ("stamps", "jpeg") for i in range(12) if i not in (9, 10)},
    "121540793515135009.avro": ("decode", "truncated"),
    "121540793515135010.avro": ("decode", "truncated"),
    "121540793515135009.avro.zip!121540793515135009.avro": ("decode", "unknown_survey"),
    **{f"test_alerts_Ia_Hsiao_v2_{i}.avro": ("decode", "unknown_survey") for i in range(51, 56)},
    **{
        f"{n}.avro": ("decode", "truncated")
        for n in (
            516401801315010009,
            516434762915010006,
            516442330015015017,
            516442805615015004,
            516476004815015005,
        )
    },
    "ZTF20abyfpze.avro": ("stamps", "null"),
    "DC21baaa.570349.decat_20210414_2021A-0113.avro": ("decode", "unknown_survey"),
    "87704463155000.avro": ("decode", "unknown_survey"),
}
BAD_TAR_MEMBERS = {"ZTF18abxhyqv.tar.gz": 4, "ZTF18acruwxq.tar.gz": 3}  # all with null cutouts


def _pipeline() -> BeamTestPipeline:
    # Name the runner: a bare DirectRunner may try to download Prism.
    return BeamTestPipeline(runner="FnApiRunner")


def _split(outputs):
    main, dead = [], []
    for item in outputs:
        (dead if isinstance(item, beam.pvalue.TaggedOutput) else main).append(item)
    return main, [d.value for d in dead]


def test_decode_dofn_directly():
    fn = DecodeAlerts()
    good = mini_container([mini_record(i) for i in range(3)])
    alerts, dead = _split(fn.process(("a.avro", good)))
    assert [a.candid for a in alerts] == [mini_record(i)["candid"] for i in range(3)] and not dead
    alerts, dead = _split(fn.process(("b.avro", good[:-30])))
    assert len(alerts) == 2 and len(dead) == 1
    assert dead[0]["stage"] == "decode" and dead[0]["raw"] == good[:-30]
    assert "after 2 record(s) decoded" in dead[0]["reason"]


def test_decode_cutouts_dofn_directly():
    record = mini_record(1)
    record["cutoutTemplate"] = None
    ((alert,), _) = _split(DecodeAlerts().process(("x", mini_container([record]))))
    _, dead = _split(DecodeCutouts().process(alert))
    assert dead[0]["stage"] == "stamps" and reason_code(dead[0]) == "null"
    assert dead[0]["candid"] == record["candid"] and dead[0]["objectId"] == record["objectId"]


def test_pipeline_on_synthetic_night(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.avro").write_bytes(mini_container([mini_record(i)]))
    (tmp_path / "broken.avro").write_bytes(b"Obj\x01garbage")
    with _pipeline() as p:
        out = p | ReadAlerts([str(tmp_path), str(tmp_path / "nothing-*.avro")])
        assert_that(
            out[ALERTS] | beam.Map(lambda a: a.candid),
            equal_to([mini_record(i)["candid"] for i in range(5)]),
            label="alerts",
        )
        assert_that(
            out[DEAD_LETTERS] | beam.Map(lambda d: (d["stage"], reason_code(d))),
            equal_to([("decode", "truncated"), ("read", "no_match")]),
            label="dead",
        )


@needs_real
def test_pipeline_reads_all_real_alerts():
    with _pipeline() as p:
        out = p | ReadAlerts([str(REAL)])
        assert_that(out[ALERTS] | beam.combiners.Count.Globally(), equal_to([225]), label="alerts")
        assert_that(out[DEAD_LETTERS], equal_to([]), label="dead")


@needs_bad
def test_every_bad_input_is_a_specific_dead_letter():
    def key(d):
        name = os.path.basename(
            d["source"].split(".tar.gz!")[0] + (".tar.gz" if ".tar.gz!" in d["source"] else "")
        )
        if ".zip!" in d["source"]:
            name = d["source"].rsplit("/", 1)[1]
        return name, d["stage"], reason_code(d)

    expected = [(name, stage, code) for name, (stage, code) in BAD_EXPECTED.items()]
    expected += [(n, "stamps", "null") for n, k in BAD_TAR_MEMBERS.items() for _ in range(k)]
    with _pipeline() as p:
        out = p | ReadAlerts([str(BAD)])
        stamps = out[ALERTS] | beam.ParDo(DecodeCutouts()).with_outputs("dead_letters", main="ok")
        dead = (out[DEAD_LETTERS], stamps.dead_letters) | beam.Flatten()
        assert_that(dead | beam.Map(key), equal_to(expected), label="dead")
        assert_that(stamps.ok, equal_to([]), label="none_ok")


@pytest.mark.parametrize("mode", ["multi_processing"])
def test_read_runs_in_worker_processes(tmp_path, mode):
    # Proof that the DoFns pickle and run in separate worker processes.
    for i in range(4):
        (tmp_path / f"{i}.avro").write_bytes(mini_container([mini_record(i)]))
    options = beam.options.pipeline_options.PipelineOptions(
        direct_running_mode=mode, direct_num_workers=2
    )
    with BeamTestPipeline(runner="FnApiRunner", options=options) as p:
        out = p | ReadAlerts([str(tmp_path)])
        assert_that(
            out[ALERTS] | beam.Map(lambda a: a.object_id),
            equal_to([mini_record(i)["objectId"] for i in range(4)]),
        )
