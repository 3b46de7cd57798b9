"""Property tests: mutated alert bytes never escape the adapters, never hang, never vanish.

Each example mutates a real alert (or a synthetic one without ../shared/data): truncation, byte
flips, splices of two alerts, and cutouts replaced by random bytes. Whatever comes in must leave the
read → decode → stamps adapters as decoded alerts or dead letters, with no exception.
"""

from __future__ import annotations

import apache_beam as beam
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import (
    byte_flips,
    flip_bytes,
    fuzz_seeds,
    fuzz_settings,
    splice,
    truncate,
    with_cutouts,
)
from transforms.cutouts import DecodeCutouts
from transforms.ingest import DecodeAlerts

SEEDS = fuzz_seeds()
FUZZ = fuzz_settings(1000)  # the corpus is large enough to explore


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
    _run(truncate(data, frac))


@FUZZ
@given(seed, byte_flips(8))
def test_byte_flips(data, flips):
    _run(flip_bytes(data, flips))


@FUZZ
@given(seed, seed, st.floats(0, 1), st.floats(0, 1))
def test_splices(a, b, i, j):
    _run(splice(a, b, i, j))


@FUZZ
@given(
    seed,
    st.sampled_from(["cutoutScience", "cutoutTemplate", "cutoutDifference"]),
    st.binary(max_size=3000) | st.sampled_from([b"\x1f\x8b", b"SIMPLE  =", b"\xff\xd8"]),
)
def test_random_cutouts(data, field, junk):
    mutated, n = with_cutouts(data, field, junk)
    ok, dead = _run(mutated)
    assert ok + dead == n
