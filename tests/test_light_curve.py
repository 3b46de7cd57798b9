"""Light curves from an alert's own history (transforms/light_curve.py), on real and made alerts."""

from __future__ import annotations

import math

import pytest

from tests.helpers import load_real_alerts, needs_real
from transforms.alerts import Alert
from transforms.light_curve import light_curve


def _alert(candidate: dict, history: list[dict]) -> Alert:
    record = {"objectId": "ZTF18made", "candid": candidate["candid"], "candidate": candidate}
    record["prv_candidates"] = history
    return Alert(record=record, source="made", raw=b"", path="")


def _detection(jd, fid, mag, candid, sigma=0.1, isdiffpos="t"):
    return {"jd": jd, "fid": fid, "magpsf": mag, "sigmapsf": sigma, "candid": candid,
            "diffmaglim": 20.5, "isdiffpos": isdiffpos}  # fmt: skip


def _limit(jd, fid, lim):
    return {"jd": jd, "fid": fid, "diffmaglim": lim, "candid": None, "magpsf": None}


def test_first_detection_after_limits():
    alert = _alert(
        _detection(2459000.9, 2, 19.1, 7),
        [_limit(2458998.8, 1, 20.2), _limit(2458996.7, 2, 20.6), _limit(2458999.4, 2, 20.4)],
    )
    lc = light_curve(alert)
    assert [d.jd for d in lc.detections] == [2459000.9]
    assert lc.first == lc.alert and lc.first.magpsf == 19.1 and lc.first.positive
    assert [u.jd for u in lc.upper_limits] == [2458996.7, 2458998.8, 2458999.4]  # time order
    assert lc.last_non_detection.jd == 2458999.4 and lc.last_non_detection.diffmaglim == 20.4
    assert lc.days_since_non_detection == pytest.approx(1.5)


def test_repeat_detection_first_is_the_earliest_and_later_limits_do_not_count():
    alert = _alert(
        _detection(2459010.0, 1, 18.0, 9),
        [
            _limit(2459001.0, 1, 20.0),
            _detection(2459003.0, 2, 19.5, 8, isdiffpos="f"),
            _limit(2459005.0, 2, 20.3),  # after the first detection: not the "last non-detection"
            _detection(2459010.0, 1, 18.0, 9),  # the alert's own candid repeated: counted once
        ],
    )
    lc = light_curve(alert)
    assert [d.jd for d in lc.detections] == [2459003.0, 2459010.0]
    assert lc.first.jd == 2459003.0 and not lc.first.positive
    assert lc.alert.jd == 2459010.0
    assert lc.last_non_detection.jd == 2459001.0
    assert lc.days_since_non_detection == pytest.approx(2.0)


def test_no_history_and_a_candidate_without_photometry():
    lc = light_curve(_alert(_detection(2459000.5, 1, 19.0, 1), []))
    assert lc.upper_limits == () and lc.last_non_detection is None
    assert lc.days_since_non_detection is None
    with pytest.raises(ValueError, match="no jd, fid or magpsf"):
        light_curve(_alert({"candid": 2, "jd": 2459000.5, "fid": 1, "magpsf": None}, []))


@needs_real
def test_every_real_alert_has_a_consistent_light_curve():
    seen = with_limit = 0
    for alert in load_real_alerts():
        lc = light_curve(alert)
        seen += 1
        jds = [d.jd for d in lc.detections]
        assert jds == sorted(jds) and lc.first.jd == jds[0] <= alert.jd == lc.alert.jd
        assert len(lc.detections) == 1 + sum(
            p.get("candid") is not None and p.get("candid") != alert.candid
            for p in alert.prv_candidates
        )
        if lc.last_non_detection is not None:
            with_limit += 1
            assert lc.last_non_detection.jd < lc.first.jd
            assert 0 < lc.days_since_non_detection <= 31
    assert seen >= 200 and with_limit > 20  # real histories carry limits before detections


@needs_real
def test_a_slim_alert_has_only_its_own_detection():
    alert = load_real_alerts()[0]
    lc = light_curve(alert.slim())
    assert len(lc.detections) == 1 and lc.upper_limits == ()


def test_ztf_json_has_the_keys_it_had_before_rubin():
    alert = _alert(_detection(2459010.0, 1, 18.0, 9), [_limit(2459001.0, 2, 20.0)])
    lc = light_curve(alert)
    assert lc.survey == "ztf" and lc.forced == () and lc.first.band == "g"
    data = lc.to_json()
    keys = ["jd", "fid", "magpsf", "sigmapsf", "diffmaglim", "positive"]
    assert list(data) == [
        "detections", "upper_limits", "first", "alert", "last_non_detection",
        "days_since_non_detection",
    ]  # fmt: skip
    assert list(data["first"]) == keys and list(data["detections"][0]) == keys
    assert list(data["last_non_detection"]) == ["jd", "fid", "diffmaglim"]


# --- Rubin ----------------------------------------------------------------------------------------
def _source(mjd, flux, source_id, band="r", err=100.0):
    return {"diaSourceId": source_id, "midpointMjdTai": mjd, "psfFlux": flux, "psfFluxErr": err,
            "band": band, "ra": 150.0, "dec": 2.0, "diaObjectId": 77}  # fmt: skip


def _rubin_alert(source: dict, prv: list, forced: list, limits: list | None = None) -> Alert:
    from transforms.surveys import LSST

    record = {"diaSourceId": source["diaSourceId"], "diaSource": source, "prvDiaSources": prv,
              "prvDiaForcedSources": forced, "cutoutDifference": None}  # fmt: skip
    if limits is not None:
        record["prvDiaNondetectionLimits"] = limits
    return Alert(record=record, source="made", raw=b"", path="", survey=LSST)


def test_rubin_detections_forced_points_and_fluxes():
    from transforms.surveys.lsst import mjd_tai_to_jd_utc

    alert = _rubin_alert(
        _source(61000.5, 2000.0, 5, band="g"),
        [
            _source(60998.0, -300.0, 3, band="i"),  # negative: no magnitude
            _source(60990.0, 1000.0, 2),
            _source(61000.5, 2000.0, 5, band="g"),  # the alert's own source repeated: once
            _source(60995.0, None, 4),  # no flux: skipped
        ],
        [_source(60999.0, 50.0, 10), _source(60989.0, -20.0, 11), _source(61000.5, 1990.0, 12)],
    )
    lc = light_curve(alert)
    assert lc.survey == "lsst"
    assert [d.flux for d in lc.detections] == [1000.0, -300.0, 2000.0]  # time order
    assert [d.band for d in lc.detections] == ["r", "i", "g"]
    assert lc.first.jd == mjd_tai_to_jd_utc(60990.0) and lc.alert.flux == 2000.0
    assert lc.alert.jd == pytest.approx(61000.5 + 2400000.5 - 37 / 86400)
    assert lc.alert.magpsf == pytest.approx(31.4 - 2.5 * math.log10(2000.0))
    assert lc.alert.sigmapsf == pytest.approx(1.0857 * 100.0 / 2000.0, rel=1e-4)
    negative = lc.detections[1]
    assert not negative.positive and negative.magpsf is None and negative.sigmapsf is None
    assert [p.flux for p in lc.forced] == [-20.0, 50.0, 1990.0] and all(p.forced for p in lc.forced)
    assert all(d.fid is None and not d.forced for d in lc.detections)
    assert lc.upper_limits == () and lc.days_since_non_detection is None
    data = lc.to_json()  # every field, for Rubin
    assert data["survey"] == "lsst" and len(data["forced"]) == 3
    assert {"flux", "flux_err", "band", "forced"} <= set(data["first"])


def test_rubin_v7_limits_and_a_diasource_without_flux():
    limits = [{"ccdVisitId": 1, "midpointMjdTai": 60998.0, "band": "r", "diaNoise": 40.0}]
    lc = light_curve(_rubin_alert(_source(61000.0, 900.0, 1), [], [], limits))
    assert lc.last_non_detection.flux_limit == 200.0  # 5 x diaNoise [nJy]
    assert lc.last_non_detection.diffmaglim == pytest.approx(31.4 - 2.5 * math.log10(200.0))
    assert lc.days_since_non_detection == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no midpointMjdTai or psfFlux"):
        light_curve(_rubin_alert(_source(61000.0, None, 1), [], []))
