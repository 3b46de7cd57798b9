"""Property tests: mutated alert bytes never escape the adapters, never hang, never vanish.

Each example mutates a real alert (or a synthetic one without ../shared/data): truncation, byte
flips, splices of two alerts, and cutouts replaced by random bytes. Whatever comes in must leave the
read → decode → stamps adapters as decoded alerts or dead letters, with no exception.
"""

from __future__ import annotations

import io
from datetime import timedelta

import apache_beam as beam
import fastavro
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import REAL, mini_container, mini_record, real_containers
from transforms.cutouts import DecodeCutouts
from transforms.ingest import DecodeAlerts

if REAL.is_dir():
    SEEDS = [data for _, data in real_containers() if len(data) < 120_000][::7]
else:
    SEEDS = [mini_container([mini_record(i)]) for i in range(4)]
    SEEDS.append(mini_container([mini_record(i) for i in range(5)], block_size=2))

FUZZ = settings(
    max_examples=1000,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # reproducible in CI; the corpus is large enough to explore
)


def _run(data: bytes) -> tuple[int, int]:
    """Push bytes through the adapters; return (alerts with stamps, dead letters)."""
    decode, cutouts = DecodeAlerts(), DecodeCutouts()
    ok = dead = 0
    for item in decode.process(("fuzz", data)):
        if isinstance(item, beam.pvalue.TaggedOutput):
            dead += 1
            assert item.value["stage"] == "decode" and item.value["reason"]
            assert item.value["raw"] == data
            continue
        for out in cutouts.process(item):
            if isinstance(out, beam.pvalue.TaggedOutput):
                dead += 1
                assert out.value["stage"] == "stamps" and out.value["reason"]
            else:
                ok += 1
    assert ok + dead >= 1, "input vanished"
    return ok, dead


seed = st.sampled_from(SEEDS)


@FUZZ
@given(seed, st.floats(0, 1))
def test_truncation(data, frac):
    _run(data[: int(len(data) * frac)])


@FUZZ
@given(seed, st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8))
def test_byte_flips(data, flips):
    buf = bytearray(data)
    for where, xor in flips:
        buf[min(int(where * len(buf)), len(buf) - 1)] ^= xor
    _run(bytes(buf))


@FUZZ
@given(seed, seed, st.floats(0, 1), st.floats(0, 1))
def test_splices(a, b, i, j):
    _run(a[: int(len(a) * i)] + b[int(len(b) * j) :])


@FUZZ
@given(
    seed,
    st.sampled_from(["cutoutScience", "cutoutTemplate", "cutoutDifference"]),
    st.binary(max_size=3000) | st.sampled_from([b"\x1f\x8b", b"SIMPLE  =", b"\xff\xd8"]),
)
def test_random_cutouts(data, field, junk):
    reader = fastavro.reader(io.BytesIO(data))
    records = list(reader)
    for record in records:
        record[field] = {"fileName": "junk", "stampData": junk}
    buf = io.BytesIO()
    fastavro.writer(buf, reader.writer_schema, records)
    ok, dead = _run(buf.getvalue())
    assert ok + dead == len(records)
