"""SPEC §8 rules and first-detection checks, and the sky-density helpers, as pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.density import density_rows, healpix_pixels, night_of
from transforms.rules import (
    apply_rules,
    history_skip_reason,
    is_known_sso,
    is_negative_difference,
)
from transforms.schema import (
    RULE_KNOWN_ASTEROID,
    RULE_SN_VETO_NEGATIVE,
    RULE_SN_VETO_STAR,
    SKIP_EARLIER_DETECTION,
)

SN_TOP = np.array([0.1, 0.6, 0.05, 0.05, 0.2])
AGN_TOP = np.array([0.7, 0.1, 0.1, 0.05, 0.05])
CLEAN = {"ssdistnr": -999.0, "isdiffpos": "t", "sgscore1": 0.1, "distpsnr1": 3.0}


def test_cnn_decides_when_no_rule_fires():
    assert apply_rules(SN_TOP, CLEAN) == ("SN", None)
    assert apply_rules(AGN_TOP, CLEAN) == ("AGN", None)


def test_known_solar_system_object_is_an_asteroid():
    assert apply_rules(SN_TOP, {**CLEAN, "ssdistnr": 0.0}) == ("asteroid", RULE_KNOWN_ASTEROID)
    assert apply_rules(AGN_TOP, {**CLEAN, "ssdistnr": 4.2})[1] == RULE_KNOWN_ASTEROID
    assert apply_rules(SN_TOP, {**CLEAN, "ssdistnr": None}) == ("SN", None)
    assert [is_known_sso(v) for v in (0.0, 4.2, -999.0, -1.0, None)] == [1, 1, 0, 0, 0]


@pytest.mark.parametrize("flag", ["f", "0"])
def test_sn_veto_negative_difference(flag):
    # The runner-up (bogus, 0.2) takes over; the probabilities themselves are not touched.
    assert apply_rules(SN_TOP, {**CLEAN, "isdiffpos": flag}) == ("bogus", RULE_SN_VETO_NEGATIVE)
    assert apply_rules(AGN_TOP, {**CLEAN, "isdiffpos": flag}) == ("AGN", None)


def test_sn_veto_star_on_top():
    star = {**CLEAN, "sgscore1": 0.9, "distpsnr1": 0.4}
    assert apply_rules(SN_TOP, star) == ("bogus", RULE_SN_VETO_STAR)
    assert apply_rules(SN_TOP, {**star, "distpsnr1": 1.5}) == ("SN", None)  # too far
    assert apply_rules(SN_TOP, {**star, "sgscore1": 0.4}) == ("SN", None)  # a galaxy
    assert apply_rules(SN_TOP, {**star, "sgscore1": -999.0, "distpsnr1": -999.0}) == ("SN", None)


def test_rules_off():
    assert apply_rules(SN_TOP, {**CLEAN, "ssdistnr": 0.0, "isdiffpos": "f"}, enabled=False) == (
        "SN",
        None,
    )


def test_negative_difference_encodings():
    assert [is_negative_difference(v) for v in ("t", "1", "f", "0", None)] == [
        False,
        False,
        True,
        True,
        False,
    ]


def test_history_check():
    cand = {"jd": 2460000.8}
    upper_limit = {"jd": 2460000.1, "candid": None}
    earlier = {"jd": 2460000.5, "candid": 123}
    later = {"jd": 2460001.0, "candid": 456}
    assert history_skip_reason(cand, []) is None
    assert history_skip_reason(cand, [upper_limit, later]) is None
    assert history_skip_reason(cand, [upper_limit, earlier]) == SKIP_EARLIER_DETECTION


def test_night_and_pixels():
    assert night_of(2458345.5) == "20180815"  # MJD 58345.0 = 2018-08-15 00:00 UT
    assert night_of(2458345.99) == "20180815"
    # Rubin's night is its dayObs, the date at UTC-12 h: 2026-03-07 05:00 UT is night 20260306.
    assert night_of(2461106.7083, "lsst") == "20260306"
    assert night_of(2461106.7083, "ztf") == "20260307"
    import astropy.units as u
    from astropy_healpix import HEALPix

    ra, dec = np.array([0.0, 180.0, 359.9]), np.array([-30.0, 0.0, 89.0])
    expected = HEALPix(nside=64, order="nested").lonlat_to_healpix(ra * u.deg, dec * u.deg)
    np.testing.assert_array_equal(healpix_pixels(ra, dec, 64), expected)
    (row,) = density_rows([(("20180815", 7, "SN", "ztf"), (4, 3.0))], 64)
    assert row == {
        "night": "20180815",
        "nside": 64,
        "pixel": 7,
        "class": "SN",
        "count": 4,
        "mean_probability": 0.75,
        "survey": "ztf",
    }


# --- Inference dead letters -----------------------------------------------------------------------
def _exception_info(error: Exception) -> tuple[type, str, list[str]]:
    """What Beam's ``with_exception_handling`` emits beside a failed element."""
    import sys
    import traceback

    try:
        raise error
    except Exception:
        return type(error), repr(error), traceback.format_exception(*sys.exc_info())


def test_failed_batch_letters_name_the_exception_and_keep_the_bytes():
    from pipeline.classify import failed_batch_letters
    from transforms.dead_letters import REREAD_PATH
    from transforms.schema import STAGE_INFERENCE

    meta = {"objectId": "ZTF1", "candid": 7, "source": "a.avro", "raw": b"xyz", "path": None}
    slim = {**meta, "candid": 8, "raw": b"", "path": "/night/b.avro"}
    info = _exception_info(ValueError("stamps: bad shape (21, 21, 3)"))
    letters = list(failed_batch_letters(([(meta, {}), (slim, {})], info)))
    assert [d["stage"] for d in letters] == [STAGE_INFERENCE] * 2
    reason = "model: ValueError: stamps: bad shape (21, 21, 3)"
    assert [d["reason"] for d in letters] == [reason] * 2
    assert letters[0]["candid"] == 7 and REREAD_PATH not in letters[0]
    assert letters[1][REREAD_PATH] == "/night/b.avro"


def test_failure_reason_without_a_traceback_uses_the_repr():
    from pipeline.classify import failure_reason

    assert failure_reason((KeyError, "KeyError('x')", [])) == "KeyError: KeyError('x')"


def test_failure_reason_skips_notes_after_the_message():
    from pipeline.classify import failure_reason

    error = ValueError("bad batch")
    error.add_note("while serving model v3")
    assert failure_reason(_exception_info(error)) == "ValueError: bad batch"
