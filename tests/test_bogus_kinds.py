"""Each kind of bogus the simulator writes carries the signature it is named for.

The nine kinds are those ALeRCE's experts catalogued (Carrasco-Davis et al. 2021, Appendix E);
``simulator.generate.BOGUS_KINDS`` maps their names to ours. Each test checks its kind's signature
and that other kinds mostly lack it, so a kind drawn like the rest fails. Cosmic rays, saturation
and dipoles (near bad differences) are checked in ``tests/test_simulator.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from simulator import make_alerts
from simulator.generate import BOGUS_KINDS, FIRST_DETECTION_MIX
from transforms.stamps import decode_stamp

_YY, _XX = np.mgrid[0:63, 0:63]
_R = np.hypot(_XX - 31, _YY - 31)
_EDGE = _R >= 26  # the stamp's rim: sky only, for the noise


@pytest.fixture(scope="module")
def bogus() -> dict[str, dict[str, list]]:
    """~1,300 simulated bogus first detections, by kind (decoded stamps, signed difference)."""
    return bogus_by_kind()


def bogus_by_kind() -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list]] = {}
    for alert, label in make_alerts(1300, seed=11, mix="bogus=1", first_detections=True):
        cand = alert["candidate"]
        diff = decode_stamp(alert["cutoutDifference"]["stampData"])
        d = out.setdefault(label["subtype"], {"sci": [], "ref": [], "diff": [], "cand": []})
        d["sci"].append(decode_stamp(alert["cutoutScience"]["stampData"]))
        d["ref"].append(decode_stamp(alert["cutoutTemplate"]["stampData"]))
        # ZTF stores negative detections' differences flipped (reference minus science).
        d["diff"].append(diff if cand["isdiffpos"] == "t" else -diff)
        d["cand"].append(cand)
    return out


def _noise(img: np.ndarray) -> float:
    rim = img[_EDGE]
    rim = rim[np.isfinite(rim)]
    return float(1.4826 * np.median(np.abs(rim - np.median(rim))))


def _box(img: np.ndarray, half: int) -> np.ndarray:
    """Mean over a (2 half + 1)^2 box (NaN as 0), same shape."""
    a = np.nan_to_num(img)
    c = np.pad(a, half, mode="edge").cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))
    w = 2 * half + 1
    return (c[w:, w:] - c[:-w, w:] - c[w:, :-w] + c[:-w, :-w]) / w**2


def _share(kind_imgs: dict[str, list], test) -> float:
    return float(np.mean([test(i) for i in range(len(kind_imgs["cand"]))]))


def _others(bogus, kind):
    return [k for k in bogus if k != kind]


def test_every_kind_is_drawn_and_first_detections_have_no_history(bogus):
    assert set(bogus) == set(BOGUS_KINDS)
    assert all(len(d["cand"]) >= 30 for d in bogus.values())
    cands = [c for d in bogus.values() for c in d["cand"]]
    assert all(c["ndethist"] == 1 for c in cands)


def test_a_first_detection_night_has_the_production_mix_and_one_alert_per_object():
    from simulator.generate import CLASS_NAMES, plan_night

    plan = plan_night(20000, seed=3, first_detections=True)
    assert plan.n_alerts == 20000 and np.all(np.diff(plan.first_alert) == 1)
    share = np.bincount(plan.cls, minlength=len(CLASS_NAMES)) / plan.cls.size
    expected = np.array([FIRST_DETECTION_MIX[c] for c in CLASS_NAMES])
    assert np.abs(share - expected).max() < 0.015, share
    assert share[CLASS_NAMES.index("bogus")] > 0.55
    with pytest.raises(ValueError, match="one alert per object"):
        plan_night(100, first_detections=True, detections_per_object=2)


def _residual_of_a_star(d, i) -> bool:
    """A bright star at the candidate in both images, and a difference of a few per cent of it."""
    sci, ref, diff = d["sci"][i], d["ref"][i], d["diff"][i]
    core = _R <= 3
    star_ref = np.nanmax(ref[core]) - np.nanmedian(ref)
    star_sci = np.nanmax(sci[core]) - np.nanmedian(sci)
    residual = np.nanmax(np.abs(diff[core]))
    bright = star_ref > 100 * _noise(ref) and star_sci > 30 * _noise(sci)
    return bool(bright and 5 * _noise(diff) < residual < 0.2 * star_sci)


def test_bad_difference_is_a_residual_of_a_bright_star(bogus):
    d = bogus["bad_difference"]
    assert _share(d, lambda i: _residual_of_a_star(d, i)) > 0.8
    for other in ("cosmic_ray", "hot_pixel", "satellite", "ghost"):
        assert _share(bogus[other], lambda i, o=bogus[other]: _residual_of_a_star(o, i)) < 0.2
    c = d["cand"]
    # As the real star residuals ALeRCE calls bogus: a bright PS1 star under the candidate, the
    # residual ~3 mag fainter than the star and mostly negative, soft rb, drb low for about half.
    assert np.median([x["distpsnr1"] for x in c]) < 0.5
    assert np.median([x["sgscore1"] for x in c]) > 0.8
    assert np.median([x["srmag1"] for x in c]) < 16.5
    assert 2.0 < np.median([x["magpsf"] - x["srmag1"] for x in c]) < 5.0
    assert np.mean([x["isdiffpos"] == "f" for x in c]) > 0.6
    assert 0.5 < np.median([x["rb"] for x in c]) < 0.75
    # drb exists from ZTF schema 3.3 (mid-2019): null on the fixture's 2018 night, set later.
    assert all(x["drb"] is None for x in c)
    later = [
        a["candidate"]
        for a, label in make_alerts(400, seed=12, night="20210901", mix="bogus=1")
        if label["subtype"] == "bad_difference"
    ]
    assert len(later) > 40
    assert 0.3 < np.mean([x["drb"] < 0.2 for x in later]) < 0.7


def _field_residuals(d, i) -> int:
    """Pixels beyond 6 px of the candidate where the difference departs by more than 6 sigma."""
    diff = d["diff"][i]
    return int(np.sum((_R > 6) & (np.abs(np.nan_to_num(diff)) > 6 * _noise(diff))))


def test_bad_difference_leaves_residuals_across_the_stamp(bogus):
    # A misaligned, mismatched template: every star of a crowded field leaves a residual.
    bad = np.median([_field_residuals(bogus["bad_difference"], i) for i in range(40)])
    near = np.median([_field_residuals(bogus["cosmic_ray"], i) for i in range(40)])
    assert bad > 3 * max(near, 1)


def _dark_patch(d, i) -> bool:
    """A broad negative region in the (signed) difference, absent from the science."""
    diff, sci = d["diff"][i], d["sci"][i]
    # A 7x7 mean of white noise has sigma noise / 7: the patch is far below what noise reaches,
    # and the science has nothing of the kind.
    dark = _box(diff, 3).min() < -12 * _noise(diff) / 7
    return bool(dark and _box(sci, 3).min() > np.nanmedian(sci) - 7 * _noise(sci) / 7)


def test_dark_region_is_a_broad_negative_patch(bogus):
    d = bogus["dark_region"]
    assert _share(d, lambda i: _dark_patch(d, i)) > 0.8
    for other in ("cosmic_ray", "hot_pixel", "ghost"):
        assert _share(bogus[other], lambda i, o=bogus[other]: _dark_patch(o, i)) < 0.2
    assert np.mean([x["isdiffpos"] == "f" for x in d["cand"]]) > 0.5


_ANGLES = np.radians(np.arange(0, 180, 2))


def _line(d, i) -> bool:
    """Most of the science's excess lies on one line through the candidate, across the stamp."""
    sci = d["sci"][i]
    # On a 3x3 mean (noise / 3), so that faint streaks count too.
    high = _box(sci - np.nanmedian(sci), 1) > 4 * _noise(sci) / 3
    y, x = np.nonzero(high)
    if x.size < 20:
        return False
    across = np.abs(np.outer(np.sin(_ANGLES), x - 31) - np.outer(np.cos(_ANGLES), y - 31))
    on = across <= 2.5
    best = int(np.argmax(on.sum(axis=1)))
    along = (x * np.cos(_ANGLES[best]) + y * np.sin(_ANGLES[best]))[on[best]]
    return bool(on[best].mean() > 0.6 and np.ptp(along) > 40)


def test_satellite_is_a_streak_or_glints_in_a_line(bogus):
    d = bogus["satellite"]
    assert _share(d, lambda i: _line(d, i)) > 0.6
    for other in ("cosmic_ray", "hot_pixel", "dipole", "ghost"):
        assert _share(bogus[other], lambda i, o=bogus[other]: _line(o, i)) < 0.2
    assert np.median([x["elong"] for x in d["cand"]]) > 2


def _single_pixel(d, i) -> bool:
    """A peak at the candidate without a PSF: its four neighbours' median under 0.3 of it."""
    diff = np.nan_to_num(d["diff"][i])
    y, x = np.unravel_index(np.argmax(diff[28:35, 28:35]), (7, 7))
    y, x = y + 28, x + 28
    peak = diff[y, x]
    around = np.median([diff[y - 1, x], diff[y + 1, x], diff[y, x - 1], diff[y, x + 1]])
    return bool(peak > 5 * _noise(d["diff"][i]) and around < 0.3 * peak)


def test_hot_pixel_is_one_or_two_pixels(bogus):
    d = bogus["hot_pixel"]
    assert _share(d, lambda i: _single_pixel(d, i)) > 0.8
    # Against the extended kinds (a cosmic ray is as sharp, a star residual's core can be).
    for other in ("satellite", "dark_region", "ghost", "bad_column"):
        assert _share(bogus[other], lambda i, o=bogus[other]: _single_pixel(o, i)) < 0.2


def _column(d, i) -> bool:
    diff = np.nan_to_num(d["diff"][i])
    cols = np.median(diff[10:53], axis=0)
    return bool(cols[30:33].max() > 4 * np.median(np.abs(cols)) + 0.3 * _noise(d["diff"][i]))


def test_bad_column_is_a_column(bogus):
    d = bogus["bad_column"]
    assert _share(d, lambda i: _column(d, i)) > 0.6
    assert _share(bogus["cosmic_ray"], lambda i: _column(bogus["cosmic_ray"], i)) < 0.2


def _arc(d, i) -> bool:
    """Excess spread along an arc (a ghost ring passes through the candidate), not compact."""
    diff = _box(d["diff"][i], 1)
    y, x = np.nonzero(diff > 3 * _noise(d["diff"][i]) / 3)
    return bool(x.size > 40 and np.ptp(x) > 8 and np.ptp(y) > 8)


def test_ghost_is_a_diffuse_ring_in_science_and_difference(bogus):
    d = bogus["ghost"]
    assert _share(d, lambda i: _arc(d, i)) > 0.6
    for other in ("cosmic_ray", "hot_pixel", "dark_region"):
        assert _share(bogus[other], lambda i, o=bogus[other]: _arc(o, i)) < 0.2
    ref_flat = [abs(_box(r, 2)[31, 31] - np.nanmedian(r)) < 3 * _noise(r) for r in d["ref"]]
    assert np.mean(ref_flat) > 0.8  # the reference does not have it


def test_bad_difference_crowding_does_not_depend_on_the_chunk():
    # Each bad difference gets Poisson(40) field stars beyond its latitude's, whatever else its
    # chunk holds (a chunk with a dense Galactic-plane field once set everyone's crowding).
    from simulator.generate import CLASS_NAMES, sample_objects

    def star_counts(m: int, seeds: range) -> tuple[list[int], list[int]]:
        bad, rest = [], []
        for seed in seeds:
            cls = np.full(m, CLASS_NAMES.index("bogus"))
            truth = sample_objects(cls, np.full(m, 2459000.5), np.random.default_rng(seed))
            n = np.isfinite(truth.star_mag).sum(axis=1)
            high = np.abs(truth.gal_b) > 30  # away from the plane, where fields are sparse
            bd = truth.kind == BOGUS_KINDS.index("bad_difference")
            bad += n[bd & high].tolist()
            rest += n[~bd & high].tolist()
        return bad, rest

    small = [np.mean(x) for x in star_counts(8, range(300))]
    large = [np.mean(x) for x in star_counts(3000, range(1))]
    assert 30 < small[0] - small[1] < 45 and 30 < large[0] - large[1] < 45, (small, large)
