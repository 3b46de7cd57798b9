"""Container decoding: equality with plain fastavro, schema caching, and specific error codes."""

from __future__ import annotations

import io

import fastavro
import pytest

from tests.helpers import mini_container, mini_record, nan_equal
from transforms import alerts as alerts_mod
from transforms.alerts import AlertDecodeError, decode_alerts, iter_alerts


def test_all_real_alerts_decode_equal_to_fastavro(real):
    total = 0
    for source, data in real:
        got, error = decode_alerts(data, source)
        assert error is None, (source, error)
        expected = list(fastavro.reader(io.BytesIO(data)))
        assert len(got) == len(expected)
        for alert, record in zip(got, expected, strict=True):
            assert nan_equal(alert.record, record), source
            assert alert.source == source
        total += len(got)
    assert total == 225


def test_real_alert_properties(real):
    versions = set()
    for source, data in real:
        for alert in iter_alerts(data, source):
            assert alert.object_id.startswith("ZTF")
            assert alert.candid == alert.record["candid"]
            assert 2458000 < alert.jd < 2470000
            assert isinstance(alert.prv_candidates, list)
            versions.add(alert.schema_version)
    assert {"1.8", "3.0", "3.2", "3.3", "4.02"} <= versions


def test_raw_is_a_single_record_container(real):
    # Multi-record files get their records re-wrapped; single-record files keep their own bytes.
    for source, data in real:
        got, _ = decode_alerts(data, source)
        for alert in got:
            back = list(fastavro.reader(io.BytesIO(alert.raw)))
            assert len(back) == 1 and nan_equal(back[0], alert.record)
        if len(got) == 1:
            assert got[0].raw is data


@pytest.mark.parametrize("codec", ["null", "deflate"])
@pytest.mark.parametrize("block_size", [1, 10**9])
def test_multi_record_containers(codec, block_size):
    records = [mini_record(i) for i in range(7)]
    data = mini_container(records, codec=codec, block_size=block_size)
    got, error = decode_alerts(data, "mini")
    assert error is None
    assert [a.record for a in got] == records
    for alert in got:
        assert list(fastavro.reader(io.BytesIO(alert.raw))) == [alert.record]


def test_schema_parsed_once_per_distinct_schema(monkeypatch):
    files = [mini_container([mini_record(i)]) for i in range(20)]
    calls = []
    real_parse = fastavro.parse_schema
    monkeypatch.setattr(alerts_mod, "_WRITERS", {})
    monkeypatch.setattr(
        alerts_mod.fastavro, "parse_schema", lambda s: calls.append(1) or real_parse(s)
    )
    for data in files:
        assert decode_alerts(data, "x")[1] is None
    assert len(calls) == 1


def _code(data: bytes) -> str:
    _, error = decode_alerts(data, "x")
    assert isinstance(error, AlertDecodeError)
    return error.code


def test_error_codes():
    good = mini_container([mini_record(i) for i in range(3)])
    assert _code(b"") == "truncated"
    assert _code(b"\xff\xd8\xff\xe0 jpeg") == "bad_magic"
    assert _code(b"PK\x03\x04zip") == "bad_magic"
    assert _code(good[:-5]) == "truncated"
    assert _code(good[:200]) == "truncated"
    # Flip one byte of the final sync marker.
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF
    assert _code(bytes(flipped)) == "sync_mismatch"


def test_truncated_multi_record_keeps_leading_records():
    data = mini_container([mini_record(i) for i in range(5)], block_size=1)
    got, error = decode_alerts(data[: len(data) - 40], "x")
    assert error is not None and error.code == "truncated"
    assert [a.candid for a in got] == [mini_record(i)["candid"] for i in range(4)]


def test_schema_of_no_survey_is_rejected():
    buf = io.BytesIO()
    fastavro.writer(
        buf,
        {"type": "record", "name": "decam", "fields": [{"name": "alertId", "type": "long"}]},
        [{"alertId": 1}],
    )
    _, error = decode_alerts(buf.getvalue(), "x")
    assert error.code == "unknown_survey" and "objectId" in error.detail


def test_record_without_required_values_is_a_bad_alert():
    record = mini_record(1)
    record["candidate"]["jd"] = float("nan")  # present; still accepted (NaN is a value)
    assert decode_alerts(mini_container([record]), "x")[1] is None
    record = mini_record(2)
    record["objectId"] = ""
    got, error = decode_alerts(mini_container([record]), "x")
    assert error is None and got[0].object_id == ""
