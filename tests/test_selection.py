"""First-detection selection in batch: sightings shuffled by object, winners re-read from their
files (pure functions, the re-read DoFn, and the composite in a TestPipeline on real alerts)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.helpers import (
    BAD,
    REAL,
    decoded_alerts,
    mini_container,
    mini_record,
    needs_bad,
    needs_real,
)
from transforms.ingest import ReadAlerts
from transforms.rules import history_skip_reason
from transforms.schema import (
    SKIP_DUPLICATE,
    SKIP_NOT_FIRST_IN_INPUT,
    STAGE_SELECT,
    TAG_ALERTS,
    TAG_DEAD_LETTERS,
    TAG_SKIPPED,
)
from transforms.selection import (
    SelectFirstDetections,
    Sighting,
    _Reread,
    earliest,
    reread_winners,
    source_path,
)


def _record(i: int, object_id: str, jd: float) -> dict:
    rec = mini_record(i)
    rec["objectId"] = object_id
    rec["candidate"]["jd"] = jd
    return rec


@pytest.fixture
def archive(tmp_path) -> Path:
    """An object seen three times (a multi-record file, an archive member, a single file) and a
    second object seen once; no histories, so only the shuffle can pick the first detections."""
    d = tmp_path / "night"
    d.mkdir()
    (d / "multi.avro").write_bytes(
        mini_container([_record(1, "ZTF99obj1", 2460001.7), _record(2, "ZTF99obj2", 2460001.9)])
    )
    member = mini_container([_record(3, "ZTF99obj1", 2460001.6)])  # obj1's earliest
    with tarfile.open(d / "night.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("sub/three.avro")
        info.size = len(member)
        tar.addfile(info, io.BytesIO(member))
    (d / "single.avro").write_bytes(mini_container([_record(4, "ZTF99obj1", 2460001.8)]))
    return d


def test_source_path_strips_the_archive_member():
    assert source_path("gs://b/n.tar.gz!a/b.avro") == "gs://b/n.tar.gz"
    assert source_path("/data/x.avro") == "/data/x.avro"


def test_earliest_orders_by_jd_then_candid_then_source():
    a = Sighting(2460001.5, 7, "b.avro", "b.avro")
    b = Sighting(2460001.5, 5, "c.avro", "c.avro")
    c = Sighting(2460001.4, 9, "a.avro", "a.avro")
    assert earliest([a, b, c]) == (c, [b, a])
    # the same alert read twice (a file given twice): the same winner whatever the input order
    dup1, dup2 = Sighting(1.0, 1, "x.avro", "x.avro"), Sighting(1.0, 1, "y.avro", "y.avro")
    assert earliest([dup2, dup1])[0] == earliest([dup1, dup2])[0] == dup1


# (source, candid, objectId, jd) of the records written by the `archive` fixture
def _wanted(archive: Path, i: int) -> tuple[str, int, str, float]:
    where = {1: "multi.avro", 2: "multi.avro", 3: "night.tar.gz!sub/three.avro", 4: "single.avro"}
    obj = {1: "ZTF99obj1", 2: "ZTF99obj2", 3: "ZTF99obj1", 4: "ZTF99obj1"}
    jd = {1: 2460001.7, 2: 2460001.9, 3: 2460001.6, 4: 2460001.8}
    return f"{archive}/{where[i]}", 1_000_000_000_000 + i, obj[i], jd[i]


def test_reread_decodes_only_the_wanted_alerts(archive):
    multi = str(archive / "multi.avro")
    found = list(reread_winners(multi, [_wanted(archive, 2)]))
    assert [a.candid for a in found] == [1_000_000_000_002]
    assert found[0].object_id == "ZTF99obj2" and found[0].raw  # full alert, own container
    assert found[0].path == multi
    tar = str(archive / "night.tar.gz")
    member = f"{tar}!sub/three.avro"
    assert [a.source for a in reread_winners(tar, [_wanted(archive, 3)])] == [member]


def test_reread_reports_what_is_gone(archive):
    multi = str(archive / "multi.avro")
    gone = (multi, 42, "ZTF99obj1", 2460001.7)
    missing = list(reread_winners(multi, [gone]))
    assert missing == [(gone, "reread: alert not found when its file was read again")]
    (archive / "single.avro").unlink()
    single = str(archive / "single.avro")
    [(wanted, reason)] = reread_winners(single, [_wanted(archive, 4)])
    assert wanted == _wanted(archive, 4)
    assert reason.startswith("reread: unreadable")


def test_reread_dofn_turns_missing_alerts_into_select_dead_letters(archive):
    multi = str(archive / "multi.avro")
    gone = (multi, 42, "ZTF99obj9", 2460001.7)
    out = list(_Reread().process((multi, [_wanted(archive, 1), gone])))
    alerts = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    dead = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    assert [a.candid for a in alerts] == [1_000_000_000_001]
    assert alerts[0].raw == b""  # slim: the history and raw bytes stay on disk
    assert [(d["stage"], d["candid"], d["objectId"], d["source"]) for d in dead] == [
        (STAGE_SELECT, 42, "ZTF99obj9", multi)
    ]


def test_two_records_sharing_a_candid_are_two_winners(tmp_path):
    # Two objects whose alerts carry the same candid in one container: both are classified.
    path = tmp_path / "dup.avro"
    path.write_bytes(
        mini_container([_record(1, "ZTF99obja", 2460001.5), _record(1, "ZTF99objb", 2460001.5)])
    )
    with BeamTestPipeline() as p:
        read = p | ReadAlerts([str(path)])
        sel = read[TAG_ALERTS] | SelectFirstDetections("first")
        assert_that(
            sel["alerts"] | beam.Map(lambda a: a.object_id),
            equal_to(["ZTF99obja", "ZTF99objb"]),
        )
        assert_that(sel[TAG_DEAD_LETTERS], equal_to([]), label="dead")


def test_a_bang_in_a_directory_name_is_read_again(tmp_path, archive):
    # `!` separates archive members in sources; a directory may contain one too.
    odd = tmp_path / "wow!night"
    archive.rename(odd)
    with BeamTestPipeline() as p:
        read = p | ReadAlerts([str(odd)])
        out = read[TAG_ALERTS] | SelectFirstDetections("first", spread=True)
        assert_that(
            out["alerts"] | beam.Map(lambda a: a.candid),
            equal_to([1_000_000_000_003, 1_000_000_000_002]),
        )
        assert_that(out[TAG_DEAD_LETTERS], equal_to([]), label="dead")


def test_pipeline_picks_one_alert_per_object_across_files_and_archives(archive):
    with BeamTestPipeline() as p:
        read = p | ReadAlerts([str(archive)])
        out = read[TAG_ALERTS] | SelectFirstDetections("first")
        assert_that(
            out["alerts"] | beam.Map(lambda a: (a.object_id, a.candid, a.source)),
            equal_to(
                [
                    ("ZTF99obj1", 1_000_000_000_003, f"{archive}/night.tar.gz!sub/three.avro"),
                    ("ZTF99obj2", 1_000_000_000_002, f"{archive}/multi.avro"),
                ]
            ),
            label="winners",
        )
        assert_that(
            out[TAG_SKIPPED],
            equal_to(
                [
                    (SKIP_NOT_FIRST_IN_INPUT, 1_000_000_000_001),
                    (SKIP_NOT_FIRST_IN_INPUT, 1_000_000_000_004),
                ]
            ),
            label="skipped",
        )
        assert_that(out[TAG_DEAD_LETTERS], equal_to([]), label="dead")


@pytest.mark.parametrize("mode", ["first", "all"])
def test_a_file_given_twice_is_classified_once(archive, mode):
    # Overlapping inputs: the second copy of an alert is a duplicate in both modes (it used to be
    # classified twice with --select all).
    single = str(archive / "single.avro")
    with BeamTestPipeline() as p:
        read = p | ReadAlerts([single, single])
        out = read[TAG_ALERTS] | SelectFirstDetections(mode)
        assert_that(out["alerts"] | beam.Map(lambda a: a.candid), equal_to([1_000_000_000_004]))
        assert_that(out[TAG_SKIPPED], equal_to([(SKIP_DUPLICATE, 1_000_000_000_004)]), label="skip")
        assert_that(out[TAG_DEAD_LETTERS], equal_to([]), label="dead")


def test_select_all_keeps_every_distinct_alert_and_drops_copies(archive):
    # Every alert once, later detections of an object included; reading the night twice makes
    # the second copies the only skips.
    with BeamTestPipeline() as p:
        read = p | ReadAlerts([str(archive), str(archive)])
        out = read[TAG_ALERTS] | SelectFirstDetections("all")
        assert_that(
            out["alerts"] | beam.Map(lambda a: a.candid),
            equal_to([1_000_000_000_000 + i for i in (1, 2, 3, 4)]),
            label="alerts",
        )
        assert_that(
            out[TAG_SKIPPED] | beam.MapTuple(lambda reason, _: reason),
            equal_to([SKIP_DUPLICATE] * 4),
            label="skips",
        )


@needs_real
@pytest.mark.parametrize("scan", [False, True])
def test_real_alerts_select_the_earliest_detection_without_history(scan):
    # scan: the batch job's first pass (transforms.first_pass), same winners as full decoding.
    alerts = decoded_alerts(REAL)
    best: dict[str, object] = {}
    history = 0
    for a in alerts:
        if history_skip_reason(a.candidate, a.prv_candidates) is not None:
            history += 1
            continue
        b = best.get(a.object_id)
        if b is None or (a.jd, a.candid, a.source) < (b.jd, b.candid, b.source):
            best[a.object_id] = a
    expected = sorted((a.candid, a.source) for a in best.values())
    assert len(expected) > 10
    with BeamTestPipeline() as p:
        read = p | ReadAlerts([str(REAL)], scan=scan)
        out = read[TAG_ALERTS] | SelectFirstDetections("first")
        assert_that(
            out["alerts"] | beam.Map(lambda a: (a.candid, a.source)),
            equal_to(expected),
            label="winners",
        )
        assert_that(
            out[TAG_SKIPPED] | beam.combiners.Count.Globally(),
            equal_to([len(alerts) - len(expected)]),
            label="skipped",
        )
        assert_that(out[TAG_DEAD_LETTERS], equal_to([]), label="dead")


@needs_bad
@pytest.mark.parametrize("scan", [False, True])
def test_the_first_pass_dead_letters_the_bad_inputs_as_full_decoding_does(scan):
    from transforms.sources import decode_paths

    expected = []
    for item in decode_paths([str(BAD)]):
        if item.decode_error is not None:
            expected.append(("decode", item.decode_error.reason, item.source, len(item.alerts)))
    assert expected
    with BeamTestPipeline() as p:
        read = p | ReadAlerts([str(BAD)], scan=scan)
        decoded = read[TAG_ALERTS] | beam.Map(lambda a: (a.source, a.candid))
        letters = read[TAG_DEAD_LETTERS] | beam.Map(
            lambda d: (d["stage"], d["reason"].split(" (after ")[0], d["source"])
        )
        assert_that(letters, equal_to([e[:3] for e in expected]), label="letters")
        want = [(a.source, a.candid) for i in decode_paths([str(BAD)]) for a in i.alerts]
        assert_that(decoded, equal_to(want), label="alerts")
