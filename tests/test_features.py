"""Features and stamp assembly: golden tests on real ZTF alerts, edge cases and properties.

The golden references (``reference_features_26``, ``reference_stamps`` in :mod:`tests.helpers`) are
deliberately written from SPEC §4-§5 with plain NumPy and one astropy ``SkyCoord`` per alert,
sharing no code with ``transforms.features``/``preprocess``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.alerce import read_feature_stats
from tests.helpers import (  # DATA: ../shared/data, or $STAMPFLOW_DATA
    ALERTS_DIR,
    DATA,
    load_real_alerts,
    raw_cube,
    reference_features_26,
    reference_stamps,
)
from transforms.alerts import Alert
from transforms.features import (
    clip_bounds,
    encode_isdiffpos,
    extract_features,
    pad_stamp,
    sky_coordinates,
    stack_stamps,
)
from transforms.preprocess import make_preprocessing_fn, preprocess_stamps
from transforms.schema import (
    CLIP_BOUNDS,
    FEATURES_ALERCE_26,
    FEATURES_PRODUCTION,
    IMPUTE_VALUES,
    RAW_FEATURES_KEY,
    RAW_STAMPS_KEY,
    STAMP_KINDS,
    TRANSFORMED_FEATURES_KEY,
    TRANSFORMED_STAMPS_KEY,
)
from transforms.stamps import StampError, decode_stamps

NORM_STATS = DATA / "alerce" / "feature_norm_stats.json"


@pytest.fixture(scope="module")
def real_alerts() -> list[Alert]:
    if not ALERTS_DIR.is_dir():
        pytest.skip(f"real ZTF alerts not found at {ALERTS_DIR}; golden tests need them")
    alerts = load_real_alerts()
    assert len(alerts) >= 200, "the shared data set holds 225 decodable alerts"
    return alerts


# --- golden tests on real alerts -----------------------------------------------------------------
def test_golden_features_26_match_reference(real_alerts: list[Alert]) -> None:
    stats = read_feature_stats(NORM_STATS, "best_model_so_far")
    assert tuple(stats) == FEATURES_ALERCE_26
    batch = extract_features([a.candidate for a in real_alerts], FEATURES_ALERCE_26)
    assert batch.valid.all()
    fn = make_preprocessing_fn(FEATURES_ALERCE_26, stats=stats, crop=21)
    stamps = np.zeros((len(real_alerts), 63, 63, 3), np.float32)
    got = fn({RAW_FEATURES_KEY: tf.constant(batch.values), RAW_STAMPS_KEY: tf.constant(stamps)})
    got = got[TRANSFORMED_FEATURES_KEY].numpy()
    want = np.stack([reference_features_26(a.candidate, stats) for a in real_alerts])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # ALeRCE's isdiffpos mean is exactly 0: 't' stays exactly 0 after standardisation.
    isdiffpos = FEATURES_ALERCE_26.index("isdiffpos")
    positive = np.array([a.candidate["isdiffpos"] in ("t", "1") for a in real_alerts])
    assert positive.any() and (~positive).any()
    assert np.all(got[positive, isdiffpos] == 0.0)


def test_golden_coordinates_match_per_alert_astropy(real_alerts: list[Alert]) -> None:
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    ra = np.array([a.candidate["ra"] for a in real_alerts])
    dec = np.array([a.candidate["dec"] for a in real_alerts])
    got = sky_coordinates(ra, dec)
    for i, (r, d) in enumerate(zip(ra, dec, strict=True)):
        c = SkyCoord(r * u.deg, d * u.deg, frame="icrs")
        assert abs(got["gal_lat"][i] - c.galactic.b.deg) < 1e-6
        assert abs(got["gal_long"][i] - c.galactic.l.deg) < 1e-6
        assert abs(got["ecl_lat"][i] - c.barycentricmeanecliptic.lat.deg) < 1e-6
        assert abs(got["ecl_long"][i] - c.barycentricmeanecliptic.lon.deg) < 1e-6
    assert np.all((got["gal_long"] >= 0) & (got["gal_long"] < 360))


def test_golden_stamps_match_reference(real_alerts: list[Alert]) -> None:
    cubes = np.stack([raw_cube(a) for a in real_alerts])
    assert np.isnan(cubes).any(), "real stamps carry NaN pixels; the test must exercise them"
    got = preprocess_stamps(tf.constant(cubes), 21).numpy()
    assert got.shape == (len(real_alerts), 21, 21, 3)
    want = np.stack([reference_stamps(c, 21) for c in cubes])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for crop in (41, 63):  # the other crops of the search space, on a few alerts
        got = preprocess_stamps(tf.constant(cubes[:20]), crop).numpy()
        want = np.stack([reference_stamps(c, crop) for c in cubes[:20]])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_edge_stamps_are_padded_on_the_cut_side(real_alerts: list[Alert]) -> None:
    edge = [
        a for a in real_alerts
        if decode_stamps({k: a.cutout_bytes(k) for k in STAMP_KINDS})["science"].shape != (63, 63)
    ]  # fmt: skip
    assert len(edge) == 3, "the shared set has three edge stamps (63x55, 51x63, 58x63)"
    for alert in edge:
        images = decode_stamps({k: alert.cutout_bytes(k) for k in STAMP_KINDS})
        cand = alert.candidate
        right, _ = stack_stamps(images, "pad", cand["xpos"], cand["ypos"])
        # Mirror the positions across the quadrant: the padding goes on the opposite sides.
        wrong, _ = stack_stamps(images, "pad", 3072 - cand["xpos"], 3080 - cand["ypos"])
        # The source must be back at the centre: the difference image's signal (either sign;
        # ZTF flips negative subtractions) in the central 3x3 stands out of the noise.
        centred = _centre_signal(right[:, :, 2])
        assert centred > 2.0, alert.source
        assert centred > 1.5 * _centre_signal(wrong[:, :, 2]), alert.source


def _centre_signal(diff: np.ndarray) -> float:
    """max |difference| in the central 3x3 over the 99th percentile of |difference|."""
    mag = np.abs(diff)
    return float(np.nanmax(mag[30:33, 30:33]) / np.nanpercentile(mag, 99))


# --- feature extraction --------------------------------------------------------------------------
def _candidate(**overrides: object) -> dict:
    cand = {
        "ra": 150.0, "dec": 2.0, "magpsf": 18.5, "sigmapsf": 0.1, "isdiffpos": "t",
        "ndethist": 3, "ncovhist": 50, "sgscore1": 0.9, "distpsnr1": 0.5, "sgscore2": 0.1,
        "distpsnr2": 8.0, "sgscore3": 0.5, "distpsnr3": 12.0, "fwhm": 2.5, "diffmaglim": 20.3,
        "classtar": 0.98, "chinr": 0.8, "sharpnr": 0.02, "rb": 0.8, "distnr": 0.3, "magnr": 17.0,
    }  # fmt: skip
    cand.update(overrides)
    return cand


def test_feature_lists_and_bounds_live_in_schema() -> None:
    assert len(FEATURES_PRODUCTION) == 23
    assert len(FEATURES_ALERCE_26) == 26
    i = FEATURES_ALERCE_26.index("diffmaglim")
    assert FEATURES_ALERCE_26[i + 1 : i + 4] == ("rb", "distnr", "magnr")
    assert set(CLIP_BOUNDS) <= set(FEATURES_ALERCE_26)
    lo, hi = clip_bounds(FEATURES_PRODUCTION)
    assert (
        lo[FEATURES_PRODUCTION.index("chinr")] == -1
        and hi[FEATURES_PRODUCTION.index("chinr")] == 15
    )
    assert np.isinf(lo[FEATURES_PRODUCTION.index("magpsf")])


@pytest.mark.parametrize(
    ("raw", "code"), [("t", 0.0), ("1", 0.0), ("f", 1.0), ("0", 1.0), ("x", None), (None, None)]
)
def test_isdiffpos_encoded_as_alerce(raw: object, code: float | None) -> None:
    assert encode_isdiffpos(raw) == code


def test_derived_features_and_order() -> None:
    batch = extract_features([_candidate(isdiffpos="f", ndethist=4, ncovhist=90)])
    row = dict(zip(FEATURES_PRODUCTION, batch.values[0], strict=True))
    assert batch.values.dtype == np.float32 and batch.values.shape == (1, 23)
    assert row["isdiffpos"] == 1.0
    assert row["non_detections"] == 86.0
    assert row["magpsf"] == np.float32(18.5)
    assert batch.null_counts == dict.fromkeys(FEATURES_PRODUCTION, 0)


def test_empty_batch() -> None:
    batch = extract_features([], FEATURES_ALERCE_26)
    assert batch.values.shape == (0, 26) and batch.valid.shape == (0,)


def test_nulls_are_imputed_and_counted() -> None:
    cands = [
        _candidate(sgscore1=None, fwhm=float("nan"), chinr=None),
        _candidate(sgscore1=None, rb=None, magnr=float("inf")),
    ]
    batch = extract_features(cands, FEATURES_ALERCE_26)
    assert batch.valid.all() and np.isfinite(batch.values).all()
    col = {n: batch.values[:, j] for j, n in enumerate(FEATURES_ALERCE_26)}
    assert col["sgscore1"].tolist() == [-999.0, -999.0]
    assert col["fwhm"][0] == np.float32(IMPUTE_VALUES["fwhm"])
    assert col["rb"][1] == np.float32(IMPUTE_VALUES["rb"])
    assert batch.null_counts["sgscore1"] == 2
    assert batch.null_counts["fwhm"] == batch.null_counts["chinr"] == 1
    assert batch.null_counts["rb"] == batch.null_counts["magnr"] == 1
    assert batch.null_counts["distnr"] == 0


def test_missing_required_fields_invalidate_only_their_row() -> None:
    cands = [_candidate(), _candidate(magpsf=None), _candidate(isdiffpos="?"), _candidate(dec=91.0)]
    batch = extract_features(cands)
    assert batch.valid.tolist() == [True, False, False, False]
    assert "magpsf" in batch.errors[1] and "isdiffpos" in batch.errors[2]
    assert "dec" in batch.errors[3]
    assert np.isfinite(batch.values).all()


def test_unknown_feature_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="unknown feature"):
        extract_features([_candidate()], ("magpsf", "not_a_feature"))


# --- stamp assembly ------------------------------------------------------------------------------
def test_pad_stamp_sides() -> None:
    img = np.ones((58, 55), np.float32)
    low = pad_stamp(img, xpos=20.0, ypos=10.0)  # near the low edges: missing rows/cols first
    assert np.isnan(low[:5]).all() and np.isnan(low[:, :8]).all() and low[5:, 8:].sum() == 58 * 55
    high = pad_stamp(img, xpos=3049.0, ypos=3070.0)  # near the high edges: missing last
    assert np.isnan(high[58:]).all() and np.isnan(high[:, 55:]).all() and high[:58, :55].all()
    centred = pad_stamp(img)
    assert (
        centred.shape == (63, 63) and np.isnan(centred[:2]).all() and np.isnan(centred[-3:]).all()
    )
    with pytest.raises(ValueError):
        pad_stamp(np.ones((64, 63), np.float32))


def test_stack_stamps_drop_and_pad_policies() -> None:
    images = {k: np.full((58, 63), i, np.float32) for i, k in enumerate(STAMP_KINDS)}
    with pytest.raises(StampError, match="size") as info:
        stack_stamps(images, "drop")
    assert info.value.code == "size"
    cube, padded = stack_stamps(images, "pad", xpos=100.0, ypos=20.0)
    assert padded and cube.shape == (63, 63, 3) and cube.dtype == np.float32
    assert np.isnan(cube[:5]).all() and (cube[5:, :, 2] == 2).all()
    with pytest.raises(ValueError):
        stack_stamps(images, "shrink")


# --- properties ----------------------------------------------------------------------------------
_UNIT_STATS = {n: {"mean": 0.0, "std": 1.0} for n in FEATURES_ALERCE_26}
_FN_UNIT = make_preprocessing_fn(FEATURES_ALERCE_26, stats=_UNIT_STATS)
_ALERCE_STATS = (
    json.loads(NORM_STATS.read_text())["best_model_so_far"]
    if NORM_STATS.exists()
    else {n: {"mean": 1.0, "std": 2.0} for n in FEATURES_ALERCE_26}
)
_FN_ALERCE = make_preprocessing_fn(FEATURES_ALERCE_26, stats=_ALERCE_STATS)
_NO_STAMPS = tf.zeros((1, 63, 63, 3))

_field_value = st.one_of(
    st.none(),
    st.just(-999.0),
    st.just(float("nan")),
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Subnormals excluded: TF on CPU flushes them to zero, which is not a clipping question.
@given(
    st.lists(
        st.floats(-1e7, 1e7, allow_nan=False, allow_subnormal=False, width=32),
        min_size=26,
        max_size=26,
    )
)
def test_property_clipping_bounds_hold(values: list[float]) -> None:
    x = tf.constant([values], tf.float32)
    out = _FN_UNIT({RAW_FEATURES_KEY: x, RAW_STAMPS_KEY: _NO_STAMPS})[TRANSFORMED_FEATURES_KEY]
    out = out.numpy()[0]
    lo, hi = clip_bounds(FEATURES_ALERCE_26)
    assert np.all(out >= lo) and np.all(out <= hi)
    inside = (np.array(values) >= lo) & (np.array(values) <= hi)
    np.testing.assert_array_equal(out[inside], np.array(values, np.float32)[inside])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({n: _field_value for n in ("sgscore1", "distpsnr1", "sgscore2",
        "distpsnr2", "sgscore3", "distpsnr3", "fwhm", "diffmaglim", "classtar", "chinr",
        "sharpnr", "rb", "distnr", "magnr")}))  # fmt: skip
def test_property_crossmatch_sentinels_and_nulls_give_finite_inputs(fields: dict) -> None:
    batch = extract_features([_candidate(**fields)], FEATURES_ALERCE_26)
    assert batch.valid.all()
    out = _FN_ALERCE({RAW_FEATURES_KEY: tf.constant(batch.values), RAW_STAMPS_KEY: _NO_STAMPS})
    assert np.isfinite(out[TRANSFORMED_FEATURES_KEY].numpy()).all()
    expected_nulls = sum(
        1 for v in fields.values() if v is None or (isinstance(v, float) and math.isnan(v))
    )
    assert sum(batch.null_counts.values()) == expected_nulls


_pixel = st.one_of(st.just(float("nan")), st.floats(-1e5, 1e5, allow_nan=False, width=32))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["all_nan", "constant", "random", "nan_channel"]),
    st.floats(-1e5, 1e5, allow_nan=False, width=32),
    st.integers(0, 2**31 - 1),
    st.sampled_from([21, 41, 63]),
)
def test_property_stamps_always_finite_in_unit_interval(
    kind: str, value: float, seed: int, crop: int
) -> None:
    rng = np.random.default_rng(seed)
    if kind == "all_nan":
        cube = np.full((63, 63, 3), np.nan, np.float32)
    elif kind == "constant":
        cube = np.full((63, 63, 3), value, np.float32)
    else:
        cube = (rng.normal(size=(63, 63, 3)) * (abs(value) + 1)).astype(np.float32)
        cube[rng.random((63, 63, 3)) < 0.2] = np.nan
        if kind == "nan_channel":
            cube[:, :, rng.integers(3)] = np.nan
    out = preprocess_stamps(tf.constant(cube[None]), crop).numpy()
    assert out.shape == (1, crop, crop, 3)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    if kind in ("all_nan", "constant"):
        assert (out == 0).all()
    np.testing.assert_allclose(out[0], reference_stamps(cube, crop), atol=1e-5, rtol=0)


def test_stamps_output_key_and_shape() -> None:
    fn = make_preprocessing_fn(FEATURES_PRODUCTION, stats=None, crop=41)
    with pytest.raises(ValueError):
        make_preprocessing_fn(FEATURES_PRODUCTION, crop=20)
    assert callable(fn)
    out = make_preprocessing_fn(FEATURES_ALERCE_26, stats=_UNIT_STATS, crop=41)(
        {RAW_FEATURES_KEY: tf.zeros((2, 26)), RAW_STAMPS_KEY: tf.zeros((2, 63, 63, 3))}
    )
    assert out[TRANSFORMED_STAMPS_KEY].shape == (2, 41, 41, 3)
