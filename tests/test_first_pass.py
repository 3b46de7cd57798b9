"""The first-pass scanner against the full decoder: same selection facts, same dead letters.

For every input, :func:`transforms.first_pass.scan_alerts` must give per record exactly what
:func:`transforms.alerts.decode_alerts` plus :func:`transforms.rules.history_skip_reason` give
(``objectId``, ``candid``, ``jd``, earlier detection or not), the same number of records before a
problem, and the same error (code and text). Real alerts, the broken real inputs, a simulated
night, hand-made histories, and hypothesis mutations of all of them.
"""

from __future__ import annotations

import copy
import io
import json
import math
import re

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import (
    BAD,
    MINI_SCHEMA,
    byte_flips,
    flip_bytes,
    fuzz_seeds,
    fuzz_settings,
    mini_container,
    mini_record,
    nan_equal,
    needs_bad,
    splice,
    truncate,
    with_cutouts,
)
from transforms import first_pass
from transforms.alerts import (
    AlertDecodeError,
    _read_header,
    _Reader,
    decode_alerts,
    encode_long,
    iter_alerts,
)
from transforms.first_pass import Scanned, scan_alerts, scan_counts, slim_alerts
from transforms.rules import history_skip_reason

_ADDRESS = re.compile(r"0x[0-9a-f]+")  # fastavro's EOFError texts name the BytesIO's address


def _reference(data: bytes, source: str = "x", path: str = "") -> tuple[list[tuple], str | None]:
    alerts, error = decode_alerts(data, source, path)
    rows = [
        (
            a.object_id,
            a.candid,
            a.jd,
            history_skip_reason(a.candidate, a.prv_candidates) is not None,
            a.source,
            a.path,
        )
        for a in alerts
    ]
    return rows, None if error is None else _ADDRESS.sub("0x?", error.reason)


def _scanned(data: bytes, source: str = "x", path: str = "") -> tuple[list[tuple], str | None]:
    scanned, error = scan_alerts(data, source, path)
    assert all(isinstance(s, Scanned) for s in scanned)
    return [tuple(s) for s in scanned], None if error is None else _ADDRESS.sub("0x?", error.reason)


def _same(a: list[tuple], b: list[tuple]) -> bool:
    """Row lists equal, NaN jd equal to NaN jd."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        nan = isinstance(x[2], float) and isinstance(y[2], float) and math.isnan(x[2])
        if nan and math.isnan(y[2]) and x[:2] + x[3:] == y[:2] + y[3:]:
            continue
        if x != y or type(x[2]) is not type(y[2]):
            return False
    return True


def _agree(data: bytes, source: str = "x", path: str = "") -> tuple[list[tuple], str | None]:
    want_rows, want_error = _reference(data, source, path)
    got_rows, got_error = _scanned(data, source, path)
    assert _same(got_rows, want_rows), (got_rows, want_rows)
    assert got_error == want_error
    _slim_agrees(data, source, path)
    return got_rows, got_error


def _decoded(alerts, source: str, path: str) -> tuple[list, str | None]:
    out = []
    try:
        for a in alerts:
            out.append(a)
    except AlertDecodeError as e:
        return out, _ADDRESS.sub("0x?", e.reason)
    return out, None


def _slim_agrees(data: bytes, source: str, path: str) -> None:
    """The second pass's slim decoder: the full decode's ``.slim()``, record for record, and
    the same error after the same records."""
    full, full_error = _decoded((a.slim() for a in iter_alerts(data, source, path)), source, path)
    slim, slim_error = _decoded(slim_alerts(data, source, path), source, path)
    assert slim_error == full_error
    assert len(slim) == len(full)
    for a, b in zip(slim, full, strict=True):
        assert (a.source, a.raw, a.path) == (b.source, b.raw, b.path)
        assert nan_equal(a.record, b.record)


def _delta(before: dict[str, int]) -> dict[str, int]:
    now = scan_counts()
    return {k: now[k] - before[k] for k in now}


# --- real inputs -------------------------------------------------------------------------------
def test_real_alerts_agree_and_take_the_fast_path(real):
    before = scan_counts()
    total = earlier = 0
    for source, data in real:
        rows, error = _agree(data, source, "p")
        assert error is None, source
        total += len(rows)
        earlier += sum(r[3] for r in rows)
    assert total == 225
    assert 0 < earlier < total  # both decisions occur
    # The comparison is only worth something if the fast path produced the rows.
    assert _delta(before) == {"fast": total, "exact": 0, "fallback": 0}
    # ... and the slim decoder's own fast path, the alerts (not the full decode's fallback).
    slim = [first_pass._slim_fast(data, source, "p") for source, data in real]
    assert all(s is not None for s in slim) and sum(map(len, slim)) == total


@needs_bad
def test_bad_inputs_give_the_same_dead_letters():
    from transforms.sources import ReadError, expand_pattern, read_path

    errors = set()
    for path in expand_pattern(str(BAD)):
        if isinstance(path, ReadError):
            continue
        for item in read_path(path):
            if isinstance(item, ReadError):
                continue
            source, data = item
            _, error = _agree(data, source, path)
            errors.add(error.split(":")[0] if error else None)
    assert {"unknown_survey", "truncated", None} <= errors


# --- a simulated night ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def night(tmp_path_factory):
    from simulator import simulate

    out = tmp_path_factory.mktemp("night")
    simulate(200, out, seed=5, detections_per_object=3, defects=0.05, workers=1)
    return out


def test_simulated_night_agrees(night):
    before = scan_counts()
    rows = []
    for f in sorted(night.glob("*.avro")):
        got, error = _agree(f.read_bytes(), str(f), str(f))
        assert error is None
        rows += got
    assert len(rows) == 200
    assert 0 < sum(r[3] for r in rows) < len(rows)
    assert _delta(before)["fast"] == 200


# --- hand-made containers ------------------------------------------------------------------------
_ENTRY = {
    "type": "record",
    "name": "prv_candidate",
    "fields": [
        {"name": "jd", "type": "double"},
        {"name": "candid", "type": ["null", "long"]},
        {"name": "magpsf", "type": ["null", "float"]},
        {"name": "pdiffimfilename", "type": ["null", "string"]},
        {"name": "isdiffpos", "type": {"type": "enum", "name": "sign", "symbols": ["t", "f"]}},
    ],
}
HIST_SCHEMA = copy.deepcopy(MINI_SCHEMA)
for _f in HIST_SCHEMA["fields"]:
    if _f["name"] == "prv_candidates":
        _f["type"] = ["null", {"type": "array", "items": _ENTRY}]


def _entry(jd: float, candid: int | None, name: str | None = "diff.fits") -> dict:
    return {"jd": jd, "candid": candid, "magpsf": 19.0, "pdiffimfilename": name, "isdiffpos": "t"}


def _hist_record(i: int, prv: list[dict] | None, jd: float | None = None) -> dict:
    record = mini_record(i, stamp=b"\x1f\x8b stamp bytes %d" % i)
    if jd is not None:
        record["candidate"]["jd"] = jd
    record["prv_candidates"] = prv
    return record


def _container(schema: dict, records: list[dict], **kw) -> bytes:
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records, **kw)
    return buf.getvalue()


JD = 2460000.5
HISTORIES = {
    "none": (None, False),
    "empty": ([], False),
    "earlier detection": ([_entry(JD - 1, 7)], True),
    "upper limits only": ([_entry(JD - 2, None), _entry(JD - 1, None)], False),
    "later detection": ([_entry(JD + 1, 7)], False),
    "same time": ([_entry(JD, 7)], False),
    "nan entry": ([_entry(float("nan"), 7)], False),
    "mixed": ([_entry(JD - 3, None), _entry(JD + 1, 8), _entry(JD - 0.5, 9)], True),
}


@pytest.mark.parametrize("name", sorted(HISTORIES))
def test_history_decisions(name):
    prv, expected = HISTORIES[name]
    before = scan_counts()
    rows, error = _agree(_container(HIST_SCHEMA, [_hist_record(0, prv, JD)]))
    assert error is None and rows[0][3] is expected
    assert _delta(before)["fast"] == 1


def test_nan_alert_jd_never_has_an_earlier_detection():
    rows, _ = _agree(_container(HIST_SCHEMA, [_hist_record(0, [_entry(JD, 1)], float("nan"))]))
    assert math.isnan(rows[0][2]) and rows[0][3] is False


@pytest.mark.parametrize(
    "name", ["x" * 300, "é" * 10, "ok"], ids=["300-byte string", "non-ASCII", "short"]
)
def test_strings_outside_the_patterns_go_exact(name):
    before = scan_counts()
    data = _container(HIST_SCHEMA, [_hist_record(0, [_entry(JD - 1, 3, name)], JD)])
    rows, error = _agree(data)
    assert error is None and rows[0][3] is True
    assert _delta(before)["exact" if name != "ok" else "fast"] == 1


@pytest.mark.parametrize("codec", ["null", "deflate", "bzip2", "xz"])
@pytest.mark.parametrize("block", [1, 3, 10**9])
def test_multi_record_containers(codec, block):
    records = [_hist_record(i, [_entry(JD - 1, i)] if i % 2 else None) for i in range(7)]
    rows, error = _agree(_container(HIST_SCHEMA, records, codec=codec, sync_interval=block))
    assert error is None and [r[3] for r in rows] == [bool(i % 2) for i in range(7)]


def test_mini_schema_and_required_nulls():
    # MINI_SCHEMA's history is an array of strings: never a detection (and never non-null here).
    assert _agree(mini_container([mini_record(i) for i in range(3)], block_size=2))[1] is None
    schema = copy.deepcopy(HIST_SCHEMA)
    cand = next(f for f in schema["fields"] if f["name"] == "candidate")["type"]
    for f in cand["fields"]:
        if f["name"] in ("ra", "fid"):
            f["type"] = ["null", f["type"]]
    good = _hist_record(0, None)
    bad = _hist_record(1, None)
    bad["candidate"]["fid"] = None
    rows, error = _agree(_container(schema, [good, bad, good]))
    assert len(rows) == 1 and error.startswith(
        "bad_alert: record 1: ztf alert with candidate lacks fid"
    )


def test_schema_errors():
    assert _agree(b"")[1].startswith("truncated")
    assert _agree(b"\xff\xd8\xff\xe0 jpeg")[1].startswith("bad_magic")
    no_ztf = _container(
        {"type": "record", "name": "decam", "fields": [{"name": "alertId", "type": "long"}]},
        [{"alertId": 1}],
    )
    assert _agree(no_ztf)[1].startswith("unknown_survey")
    data = bytearray(_container(HIST_SCHEMA, [_hist_record(0, None)]))
    at = data.index(b'"type": "record"')
    data[at + 1 : at + 5] = b"tipe"  # the schema JSON no longer parses as Avro
    assert _agree(bytes(data))[1].startswith("bad_schema")


def test_unplannable_schema_falls_back_to_decode_alerts():
    schema = copy.deepcopy(HIST_SCHEMA)
    cand = next(f for f in schema["fields"] if f["name"] == "candidate")["type"]
    cand["fields"].append({"name": "extra", "type": {"type": "array", "items": "int"}})
    records = [_hist_record(i, [_entry(JD - 1, 1)]) for i in range(3)]
    for r in records:
        r["candidate"]["extra"] = [1, 2]
    before = scan_counts()
    rows, error = _agree(_container(schema, records))
    assert error is None and len(rows) == 3 and _delta(before)["fallback"] == 3


def _header_meta(schema: dict) -> bytes:
    _, meta_bytes, _ = _read_header(_Reader(memoryview(_container(schema, []))))
    return meta_bytes


def _encode(schema, value) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), value)
    return buf.getvalue()


def _with_blocked_history(entries: list[dict], size_delta: int = 0) -> bytes:
    """A HIST_SCHEMA container whose history array uses a negative count and a byte size."""
    from transforms.alerts import single_record_container

    record = _hist_record(0, None, JD)
    parts = []
    for f in HIST_SCHEMA["fields"]:
        if f["name"] == "prv_candidates":
            items = b"".join(_encode(_ENTRY, e) for e in entries)
            size = encode_long(len(items) + size_delta)
            parts.append(b"\x02" + encode_long(-len(entries)) + size + items + b"\x00")
        else:
            parts.append(_encode(f["type"], record[f["name"]]))
    return single_record_container(_header_meta(HIST_SCHEMA), b"".join(parts))


@pytest.mark.parametrize("size_delta", [0, 5, -3])
def test_negative_block_counts(size_delta):
    # fastavro reads the byte size of such a block and ignores it; a wrong size changes nothing.
    before = scan_counts()
    rows, error = _agree(_with_blocked_history([_entry(JD + 1, 1), _entry(JD - 1, 2)], size_delta))
    assert error is None and rows[0][3] is True and _delta(before)["fast"] == 1


def test_noncanonical_union_index_goes_exact():
    data = bytearray(_container(HIST_SCHEMA, [_hist_record(0, [_entry(JD - 1, 5)], JD)]))
    # The entry's candid union index 1 (b"\x02") re-encoded as -1 (b"\x01"): fastavro reads
    # branch -1 of ["null", "long"], i.e. "long"; the scanner leaves that to fastavro.
    at = data.index(_encode("double", JD - 1)) + 8
    assert data[at] == 2
    data[at] = 1
    before = scan_counts()
    rows, error = _agree(bytes(data))
    assert error is None and rows[0][3] is True and _delta(before)["exact"] == 1


# --- mutations ------------------------------------------------------------------------------------
SEEDS = fuzz_seeds()
SEEDS += [
    _container(HIST_SCHEMA, [_hist_record(i, HISTORIES["mixed"][0]) for i in range(4)]),
    _container(
        HIST_SCHEMA, [_hist_record(i, HISTORIES["mixed"][0]) for i in range(3)], codec="deflate"
    ),
    _with_blocked_history(HISTORIES["mixed"][0]),
]
FUZZ = fuzz_settings(80)
seed = st.sampled_from(SEEDS)


def _body(data: bytes) -> int:
    """Where the first block starts (flips before it mostly break the schema JSON)."""
    try:
        r = _Reader(memoryview(data))
        _read_header(r)
        return r.pos
    except Exception:
        return 0


@FUZZ
@given(seed, st.floats(0, 1))
def test_fuzz_truncation(data, frac):
    _agree(truncate(data, frac))


@FUZZ
@given(seed, byte_flips(8))
def test_fuzz_byte_flips(data, flips):
    _agree(flip_bytes(data, flips))


@settings(FUZZ, max_examples=120)
@given(seed, byte_flips(3))
def test_fuzz_byte_flips_in_records(data, flips):
    # Aimed at the candidate and history (cutouts come last): the bytes the fast path reads.
    start = _body(data)
    _agree(flip_bytes(data, flips, start, max(1, (len(data) - start) // 2)))


@FUZZ
@given(seed, seed, st.floats(0, 1), st.floats(0, 1))
def test_fuzz_splices(a, b, i, j):
    _agree(splice(a, b, i, j))


@settings(FUZZ, max_examples=30)
@given(
    seed,
    st.sampled_from(["cutoutScience", "cutoutTemplate", "cutoutDifference"]),
    st.binary(max_size=3000) | st.sampled_from([b"", b"\x1f\x8b", b"\xff\xd8"]),
)
def test_fuzz_random_cutouts(data, field, junk):
    mutated, n = with_cutouts(data, field, junk)
    rows, error = _agree(mutated)
    assert error is None and len(rows) == n


def test_plans_are_cached_per_schema(monkeypatch):
    monkeypatch.setattr(first_pass, "_PLANS", {})
    monkeypatch.setattr(first_pass, "_RECENT", {})
    calls = []
    real_plan = first_pass._Plan
    monkeypatch.setattr(first_pass, "_Plan", lambda p: calls.append(1) or real_plan(p))
    for i in range(5):
        assert scan_alerts(_container(HIST_SCHEMA, [_hist_record(i, None)]), "x")[1] is None
    other = json.loads(json.dumps(HIST_SCHEMA))
    other["doc"] = "same fields, other bytes"
    assert scan_alerts(_container(other, [_hist_record(0, None)]), "x")[1] is None
    assert len(calls) == 2
