"""The featurize Beam adapter: the DoFn called directly, then in a pipeline with assert_that."""

from __future__ import annotations

import copy
import dataclasses

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.helpers import ALERTS_DIR, load_real_alerts
from transforms.alerts import Alert
from transforms.featurize import (
    METRIC_DEAD_FEATURES,
    METRIC_DEAD_STAMPS,
    METRIC_IMPUTED_PREFIX,
    METRIC_IN,
    METRIC_OUT,
    METRIC_PADDED,
    Featurize,
    FeaturizeBatchDoFn,
    featurize_alerts,
)
from transforms.schema import (
    DEAD_LETTER_FIELDS,
    FEATURES_ALERCE_26,
    FEATURES_PRODUCTION,
    RAW_FEATURES_KEY,
    RAW_STAMPS_KEY,
    STAGE_FEATURES,
    STAGE_STAMPS,
    TAG_DEAD_LETTERS,
    TAG_EXAMPLES,
)


def _with(alert: Alert, *, candidate: dict | None = None, **fields: object) -> Alert:
    """A copy of ``alert`` with top-level record fields and/or candidate fields replaced."""
    record = copy.deepcopy(alert.record)
    record.update(fields)
    record["candidate"].update(candidate or {})
    return dataclasses.replace(alert, record=record, source=alert.source + "#modified")


@pytest.fixture(scope="module")
def batch() -> tuple[list[Alert], dict[str, int]]:
    """Six good alerts, one edge stamp and three broken ones; returns them and expected counts."""
    if not ALERTS_DIR.is_dir():
        pytest.skip(f"real ZTF alerts not found at {ALERTS_DIR}")
    alerts = load_real_alerts()
    full = [a for a in alerts if "kowalski" in a.source][:6]  # all 63x63
    edge = next(a for a in alerts if a.candid == 595277915515015000)  # 51x63 stamps
    template = full[0]
    broken = [
        _with(template, cutoutTemplate=None, candid=1),  # null cutout -> stamps
        _with(template, candid=2, candidate={"magpsf": None}),  # required field -> features
        _with(template, candid=3, candidate={"sgscore1": None, "fwhm": None}),  # imputed, kept
    ]
    return [*full, edge, *broken], {"good": 7, "edge": 1}


def test_featurize_dofn_called_directly(batch: tuple[list[Alert], dict[str, int]]) -> None:
    alerts, _ = batch
    dofn = FeaturizeBatchDoFn(FEATURES_PRODUCTION, stamp_policy="drop")
    dofn.setup()
    outputs = list(dofn.process(alerts))
    dead = [o.value for o in outputs if isinstance(o, beam.pvalue.TaggedOutput)]
    examples = [o for o in outputs if not isinstance(o, beam.pvalue.TaggedOutput)]
    tags = {o.tag for o in outputs if isinstance(o, beam.pvalue.TaggedOutput)}
    assert tags == {TAG_DEAD_LETTERS}
    assert [c for c, _ in examples] == [a.candid for a in alerts[:6]] + [3]
    for _, example in examples:
        assert example[RAW_FEATURES_KEY].shape == (23,)
        assert example[RAW_FEATURES_KEY].dtype == np.float32
        assert np.isfinite(example[RAW_FEATURES_KEY]).all()
        assert example[RAW_STAMPS_KEY].shape == (63, 63, 3)
        assert example[RAW_STAMPS_KEY].dtype == np.float32
    by_candid = {d["candid"]: d for d in dead}
    assert set(by_candid) == {595277915515015000, 1, 2}
    assert all(tuple(d) == DEAD_LETTER_FIELDS for d in dead)
    assert by_candid[595277915515015000]["stage"] == STAGE_STAMPS
    assert by_candid[595277915515015000]["reason"].startswith("size:")
    assert by_candid[1]["stage"] == STAGE_STAMPS and "null" in by_candid[1]["reason"]
    assert by_candid[2]["stage"] == STAGE_FEATURES and "magpsf" in by_candid[2]["reason"]
    assert by_candid[2]["raw"] == alerts[0].raw and by_candid[2]["objectId"] == alerts[0].object_id


def test_two_records_sharing_a_candid_keep_their_own_metadata(batch) -> None:
    # Examples used to be matched back to their alerts through {candid: alert}: the second
    # record with a candid got the first one's key (objectId, position, cutouts).
    alerts, _ = batch
    first, second = alerts[0], _with(alerts[1], candid=alerts[0].candid)
    assert first.candid == second.candid and first.object_id != second.object_id
    dofn = FeaturizeBatchDoFn(FEATURES_PRODUCTION, key=lambda a: (a.object_id, a.candidate["ra"]))
    dofn.setup()
    keys = [k for k, _ in dofn.process([first, second])]
    assert keys == [
        (first.object_id, first.candidate["ra"]),
        (second.object_id, second.candidate["ra"]),
    ]


def test_letters_of_slim_alerts_name_their_file_and_read_nothing(batch, monkeypatch) -> None:
    # featurize_alerts is pure: a slim alert's letter carries no bytes and says where they are
    # (the batch dead-letter sink reads them back, once per file).
    import transforms.sources as sources
    from transforms.dead_letters import REREAD_PATH

    monkeypatch.setattr(sources, "read_path", lambda *_: pytest.fail("featurize read a file"))
    alerts, _ = batch
    broken = _with(alerts[0], cutoutTemplate=None, candid=1)
    slim = dataclasses.replace(broken.slim(), path="night.tar.gz")
    (letter,) = featurize_alerts([slim]).dead_letters
    assert letter["raw"] == b"" and letter[REREAD_PATH] == "night.tar.gz"
    (full,) = featurize_alerts([broken]).dead_letters
    assert full["raw"] == broken.raw and REREAD_PATH not in full


def test_pad_policy_keeps_edge_stamps(batch: tuple[list[Alert], dict[str, int]]) -> None:
    alerts, _ = batch
    result = featurize_alerts(alerts, FEATURES_ALERCE_26, stamp_policy="pad")
    assert result.padded == 1
    assert 595277915515015000 in [c for c, _ in result.examples]
    assert {d["candid"] for d in result.dead_letters} == {1, 2}
    assert result.null_counts["sgscore1"] == 1 and result.null_counts["fwhm"] == 1
    with pytest.raises(ValueError):
        FeaturizeBatchDoFn(FEATURES_PRODUCTION, stamp_policy="resize")


def test_featurize_in_pipeline(batch: tuple[list[Alert], dict[str, int]]) -> None:
    alerts, _ = batch
    pipeline = test_pipeline.TestPipeline(runner=FnApiRunner())
    outputs = (
        pipeline
        | beam.Create(alerts)
        | Featurize(FEATURES_PRODUCTION, "drop", min_batch_size=4, max_batch_size=4)
    )
    shapes = outputs[TAG_EXAMPLES] | "Shapes" >> beam.Map(
        lambda kv: (kv[0], kv[1][RAW_FEATURES_KEY].shape, kv[1][RAW_STAMPS_KEY].shape)
    )
    expected = [(a.candid, (23,), (63, 63, 3)) for a in alerts[:6]] + [(3, (23,), (63, 63, 3))]
    assert_that(shapes, equal_to(expected), label="CheckExamples")
    dead = outputs[TAG_DEAD_LETTERS] | "Stages" >> beam.Map(lambda d: (d["candid"], d["stage"]))
    assert_that(
        dead,
        equal_to([(595277915515015000, STAGE_STAMPS), (1, STAGE_STAMPS), (2, STAGE_FEATURES)]),
        label="CheckDeadLetters",
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        r.key.metric.name: r.committed
        for r in result.metrics().query(MetricsFilter().with_namespace("stampflow"))["counters"]
    }
    assert counters[METRIC_IN] == 10
    assert counters[METRIC_OUT] == 7
    assert counters[METRIC_DEAD_STAMPS] == 2
    assert counters[METRIC_DEAD_FEATURES] == 1
    assert counters[METRIC_IMPUTED_PREFIX + "sgscore1"] == 1
    assert METRIC_PADDED not in counters  # drop policy pads nothing
