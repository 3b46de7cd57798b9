"""Light curves from an alert's own history (transforms/light_curve.py), on real and made alerts."""

from __future__ import annotations

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
