"""The SN candidates CSV and page for Rubin (LSST) candidates, end to end from the real Rubin alerts
in ``../shared/data/rubin_alerts``: rows built as the pipeline builds them (``alert_meta`` +
``to_row``), their light curves, page records, CSV and page, and the page in headless Chromium.

ZTF pages and CSVs are covered, unchanged, by ``tests/test_sn_page.py``; here a mixed page checks
that ZTF rows beside Rubin ones keep their ZTF links, bands and TNS ids. Skipped with the reason
when the shared data (or, for the browser test, Chromium or Playwright) are absent.
"""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from pipeline.reports import (
    SN_CANDIDATE_COLUMNS,
    SN_CANDIDATE_COLUMNS_WITH_RUBIN,
    candidate_rows,
    lookup_links,
    write_csv,
)
from pipeline.sinks import light_curves, write_sn_candidates
from pipeline.sn_page import (
    TNS_FILTER_IDS,
    TNS_RUBIN_NOTE,
    jd_to_utc,
    page_records,
    render_page,
    rubin_stamp_geometry,
)
from tests.helpers import DATA, REAL
from tests.test_sn_page import _open
from tests.test_sn_page import browser as browser  # the module-scoped fixture, shared
from transforms.density import night_of
from transforms.light_curve import light_curve
from transforms.schema import LSST_ZERO_POINT
from transforms.sources import decode_paths
from transforms.surveys.lsst import mjd_tai_to_jd_utc

RUBIN = DATA / "rubin_alerts"
needs_rubin = pytest.mark.skipif(
    not RUBIN.is_dir(), reason=f"real Rubin alerts not found at {RUBIN} (../shared/data absent)"
)


def _rubin_alerts(with_cutouts: bool = True) -> list:
    alerts = [a for item in decode_paths([str(RUBIN)]) for a in item.alerts]
    assert alerts and all(a.survey.name == "lsst" for a in alerts)
    if with_cutouts:
        alerts = [a for a in alerts if a.cutout_bytes("science")]
    return alerts


def _rows(alerts, slim: bool = False) -> list[dict]:
    """Output rows as the pipeline writes them (``alert_meta`` then ``to_row``), P(SN) rising."""
    from pipeline.classify import alert_meta, to_row
    from pipeline.options import ModelInfo

    model = ModelInfo("m", "test-model-lsst", "0.0.1", (), {})
    rows = []
    for i, alert in enumerate(alerts):
        p = (i + 1) / (len(alerts) + 1)
        probs = [0.0, p, 1 - p, 0.0, 0.0]  # AGN, SN, VS, asteroid, bogus
        meta = alert_meta(alert.slim() if slim else alert)
        rows.append(to_row(meta, probs, rules=False, model=model))
    return rows


def _with_history(alerts):
    return max(alerts, key=lambda a: len(a.record.get("prvDiaForcedSources") or []))


# --- light curves ---------------------------------------------------------------------------------
@needs_rubin
def test_rubin_light_curve_counts_and_units():
    alert = _with_history(_rubin_alerts(with_cutouts=False))
    prv, forced = alert.record["prvDiaSources"], alert.record["prvDiaForcedSources"]
    assert prv and forced  # a real alert with history
    lc = light_curve(alert)
    assert lc.survey == "lsst"
    assert len(lc.detections) == len(prv) + 1
    assert len(lc.forced) == len(forced)
    assert all(not d.forced for d in lc.detections) and all(p.forced for p in lc.forced)
    jds = [d.jd for d in lc.detections]
    assert jds == sorted(jds) and lc.first.jd == jds[0] <= lc.alert.jd
    assert [p.jd for p in lc.forced] == sorted(p.jd for p in lc.forced)
    src = alert.candidate
    assert lc.alert.jd == mjd_tai_to_jd_utc(src["midpointMjdTai"]) == pytest.approx(alert.jd)
    assert (lc.alert.flux, lc.alert.flux_err, lc.alert.band) == (
        src["psfFlux"], src["psfFluxErr"], src["band"]
    )  # fmt: skip
    assert lc.alert.fid is None and lc.alert.diffmaglim is None
    for d in (*lc.detections, *lc.forced):  # magnitudes for positive fluxes only
        if d.flux > 0:
            assert d.positive and d.magpsf == pytest.approx(
                LSST_ZERO_POINT - 2.5 * math.log10(d.flux)
            )
            assert d.sigmapsf == pytest.approx(1.0857 * d.flux_err / d.flux, rel=1e-4)
        else:
            assert not d.positive and d.magpsf is None and d.sigmapsf is None
    assert any(d.flux < 0 for d in (*lc.detections, *lc.forced))  # why the page plots flux
    # Packets v10/v11 carry no non-detection limits.
    assert lc.upper_limits == () and lc.last_non_detection is None
    assert lc.days_since_non_detection is None


@needs_rubin
def test_every_real_rubin_alert_has_a_consistent_light_curve():
    for alert in _rubin_alerts(with_cutouts=False):
        lc = light_curve(alert)
        prv = alert.record.get("prvDiaSources") or []
        assert len(lc.detections) == len(prv) + 1
        assert len(lc.forced) == len(alert.record.get("prvDiaForcedSources") or [])
        assert {d.band for d in lc.detections} <= set("ugrizy")
        json.dumps(lc.to_json(), allow_nan=False)
    slim = light_curve(_with_history(_rubin_alerts()).slim())
    assert len(slim.detections) == 1 and slim.forced == ()


@needs_rubin
def test_v7_non_detection_limits_give_the_last_non_detection():
    alert = _with_history(_rubin_alerts(with_cutouts=False))
    first_mjd = min(p["midpointMjdTai"] for p in alert.record["prvDiaSources"])
    record = {
        **alert.record,
        "prvDiaNondetectionLimits": [
            {"ccdVisitId": 1, "midpointMjdTai": first_mjd - 3.0, "band": "r", "diaNoise": 100.0},
            {"ccdVisitId": 2, "midpointMjdTai": first_mjd - 1.5, "band": "g", "diaNoise": 80.0},
            {"ccdVisitId": 3, "midpointMjdTai": first_mjd + 1.0, "band": "g", "diaNoise": 80.0},
            {"ccdVisitId": 4, "midpointMjdTai": first_mjd - 1.0, "band": "g", "diaNoise": None},
        ],
    }
    from transforms.alerts import Alert

    lc = light_curve(Alert(record=record, source="v7", raw=b"", survey=alert.survey))
    assert len(lc.upper_limits) == 3  # the one without a noise is skipped
    last = lc.last_non_detection
    assert last.band == "g" and last.flux_limit == 400.0  # 5 x diaNoise [nJy]
    assert last.diffmaglim == pytest.approx(LSST_ZERO_POINT - 2.5 * math.log10(400.0))
    assert lc.days_since_non_detection == pytest.approx(1.5)


# --- links, CSV -----------------------------------------------------------------------------------
def test_rubin_links_are_fink_and_positions_and_none_for_solar_system_objects():
    links = lookup_links("313875416793743402", 150.1, 2.2, "lsst")
    assert list(links) == ["fink_url", "tns_url", "simbad_url", "ned_url"]
    assert links["fink_url"] == "https://lsst.fink-portal.org/313875416793743402"
    assert links["tns_url"] == lookup_links("ZTF18a", 150.1, 2.2)["tns_url"]
    assert lookup_links("ss21163624394469969", 150.1, 2.2, "lsst")["fink_url"] == ""
    ztf = lookup_links("ZTF18abc", 1.0, 2.0)
    assert list(ztf) == ["alerce_url", "tns_url", "simbad_url", "ned_url"]
    assert lookup_links("ZTF18abc", 1.0, 2.0, None) == ztf


@needs_rubin
def test_csv_keeps_ztf_columns_for_ztf_runs_and_adds_rubin_columns_for_rubin_ones():
    rows = candidate_rows(_rows(_rubin_alerts()))
    text = io.StringIO()
    write_csv(rows, text)
    read = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert tuple(read[0]) == SN_CANDIDATE_COLUMNS_WITH_RUBIN
    for r, row in zip(read, rows, strict=True):
        assert r["survey"] == "lsst" and r["band"] == row["band"] and r["fid"] == ""
        assert float(r["psfFlux"]) == pytest.approx(row["psfFlux"])
        assert r["alerce_url"] == "" and r["tns_url"].startswith("https://www.wis-tns.org/")
        solar = row["objectId"].startswith("ss")
        assert r["fink_url"] == ("" if solar else f"https://lsst.fink-portal.org/{row['objectId']}")
        assert (r["ssObjectId"] != "") == solar
    # Old rows (no survey) and ZTF rows alone: the columns of before.
    text = io.StringIO()
    write_csv(candidate_rows([{**rows[0], "survey": None, "objectId": "ZTF18a"}]), text)
    assert text.getvalue().splitlines()[0] == ",".join(SN_CANDIDATE_COLUMNS)


# --- page records ---------------------------------------------------------------------------------
def _ztf_rows(n: int) -> list[dict]:
    from tests.test_sn_page import _real_rows

    return _real_rows(n, raw=True) if REAL.is_dir() else []


@needs_rubin
def test_rubin_page_records_end_to_end():
    alerts = _rubin_alerts()
    by_candid = {a.candid: a for a in alerts}
    ranked = candidate_rows(_rows(alerts, slim=True))
    for r in ranked:
        r["stamps"] = {}
    curves = light_curves(ranked)  # batch: history read back from each file
    assert all(c is not None and c.survey == "lsst" for c in curves)
    records = page_records(ranked, curves)
    json.dumps(records, allow_nan=False)  # strict JSON for the page
    for rec, row, lc in zip(records, ranked, curves, strict=True):
        alert = by_candid[row["candid"]]
        prv = alert.record.get("prvDiaSources") or []
        forced = alert.record.get("prvDiaForcedSources") or []
        assert rec["survey"] == "lsst" and rec["band"] == alert.band and rec["fid"] is None
        assert rec["candid"] == str(alert.candid) and rec["objectId"] == alert.object_id
        assert rec["psfFlux"] == pytest.approx(alert.candidate["psfFlux"])
        assert rec["sgscore1"] is None and rec["distpsnr1"] is None
        # Links: Fink by diaObjectId (none for a solar-system object), positions; no ALeRCE.
        solar = alert.object_id.startswith("ss")
        assert ("fink_url" in rec["links"]) != solar and "alerce_url" not in rec["links"]
        assert {"tns_url", "simbad_url", "ned_url"} <= set(rec["links"])
        assert (rec["ssObjectId"] is not None) == solar
        # Light curve: every detection and forced point, in flux.
        page_lc = rec["light_curve"]
        assert page_lc["survey"] == "lsst"
        assert len(page_lc["detections"]["jd"]) == len(prv) + 1 == len(lc.detections)
        assert len(page_lc["forced"]["flux"]) == len(forced) == len(lc.forced)
        assert page_lc["detections"]["flux"][-1] is not None
        assert page_lc["first"]["jd"] == lc.first.jd
        # Stamps: the cutout's own size at 0.2"/px, the visit's rotator angle.
        geo = rec["stamp_geometry"]
        header = alert.cutout_bytes("science")[: 2880 * 4].decode("ascii", "replace")
        rotpa = float(header.split("ROTPA   =")[1].split("/")[0])
        assert geo["nx"] == geo["ny"] and 30 <= geo["nx"] <= 48
        assert geo["pixel_scale"] == 0.2 and geo["fov"] == [round(geo["nx"] * 0.2, 2)] * 2
        assert geo["rotpa"] == pytest.approx(rotpa)
        # TNS: no ZTF ids, the filter by name, the discovery from the first detection.
        t = rec["tns"]
        assert t["instrument_value"] == t["discovery_data_source_id"] == ""
        assert t["discovery_filter"] == "" and t["discovery_filter_name"] == lc.first.band
        assert t["note"] == TNS_RUBIN_NOTE and t["position_error_arcsec"] is None
        assert t["discovery_datetime"] == jd_to_utc(lc.first.jd)
        assert t["discovery_mag"] == lc.first.magpsf  # None for a negative first flux
        assert t["non_detection"] is None
        assert rec["night"] == night_of(row["jd"], "lsst")  # Rubin's dayObs


@needs_rubin
def test_rubin_light_curves_from_bytes_equal_those_read_back_from_files():
    alerts = _rubin_alerts()
    from_bytes, from_files = light_curves(_rows(alerts)), light_curves(_rows(alerts, slim=True))
    assert from_bytes == from_files == [light_curve(a) for a in alerts]


@needs_rubin
def test_stamp_geometry_without_header_cards():
    assert rubin_stamp_geometry(None)["nx"] is None
    alert = _rubin_alerts()[0]
    data = alert.cutout_bytes("science")
    no_rotpa = data.replace(b"ROTPA   =", b"NOTROT  =", 1)
    geo = rubin_stamp_geometry({"science": no_rotpa})
    assert geo["nx"] is not None and geo["rotpa"] is None  # the page says "unknown"
    assert rubin_stamp_geometry({"science": b"junk", "difference": data})["rotpa"] is not None


@needs_rubin
def test_mixed_page_keeps_ztf_records_and_states_both_scales(tmp_path):
    rubin = _rows(_rubin_alerts(), slim=True)
    ztf = _ztf_rows(4)
    n = write_sn_candidates(rubin + ztf, str(tmp_path), "m 1")
    assert n == len(rubin) + len(ztf)
    page = (tmp_path / "sn_candidates.html").read_text()
    records = json.loads(page.split('<script id="sn-data" type="application/json">')[1].split(
        "</script>")[0])  # fmt: skip
    assert "visit" in page and "not north-up" in page and "0.2″/pixel" in page
    assert "Rubin light curves are in flux" in page
    if ztf:
        assert "ZTF 63×63 pixels at 1.01″/pixel (63.6″ across)" in page
    for rec in records:
        if rec.get("survey") == "lsst":
            assert rec["stamps"] and rec["stamp_geometry"]["rotpa"] is not None
        else:  # ZTF records as on a ZTF-only page
            assert "survey" not in rec and rec["band"] in "gri"
            assert list(rec["links"]) == ["alerce_url", "tns_url", "simbad_url", "ned_url"]
            assert "instrument_value" not in rec["tns"]
            assert rec["tns"]["discovery_filter"] in TNS_FILTER_IDS.values()
            assert "forced" not in rec["light_curve"]
    rows = list(csv.DictReader((tmp_path / "sn_candidates.csv").open()))
    assert {r["survey"] for r in rows} == ({"lsst", "ztf"} if ztf else {"lsst"})


def test_ztf_only_page_header_is_unchanged():
    header = render_page([], "t", "m").split("<p class=small>")[1].split("</p>")[0]
    assert "Stamps: 63×63 pixels (1″/pixel), grey scale" in header and "Rubin" not in header


# --- the page in a real browser -------------------------------------------------------------------
@pytest.fixture(scope="module")
def rubin_page(tmp_path_factory):
    if not RUBIN.is_dir():
        pytest.skip(f"real Rubin alerts not found at {RUBIN} (../shared/data absent)")
    out = tmp_path_factory.mktemp("rubin_page")
    rows = _rows(_rubin_alerts(), slim=True) + _ztf_rows(3)
    write_sn_candidates(rows, str(out), "m 1")
    return out


def test_rubin_page_draws_flux_curves_stamps_and_exports_tns(browser, rubin_page, tmp_path):
    context, page, errors = _open(browser, rubin_page / "sn_candidates.html")
    records = json.loads(page.inner_text("#sn-data"))
    n = len(records)
    assert page.inner_text("#shown-count") == f"{n} of {n} shown"
    rubin = [r for r in records if r.get("survey") == "lsst"]
    # A flux light curve for each Rubin row: a dot per detection, a square per forced point.
    rec = max(rubin, key=lambda r: len(r["light_curve"]["forced"]["jd"]))
    row = page.locator(f"tr[data-candid='{rec['candid']}']")
    lc = rec["light_curve"]
    assert row.locator("svg.lc-flux").count() == 1
    assert row.locator("svg.lc-flux circle.det").count() == len(lc["detections"]["jd"])
    assert row.locator("svg.lc-flux rect.forced").count() == len(lc["forced"]["jd"])
    assert row.locator("svg.lc-flux circle.first").count() >= 1
    assert "nJy" in row.locator(".lc-note").inner_text()
    geo = row.locator(".stamp-geometry").inner_text()
    assert f"{rec['stamp_geometry']['nx']}×" in geo and "0.2″" in geo and "not north-up" in geo
    assert f"ROTPA {rec['stamp_geometry']['rotpa']:.1f}°" in geo
    links = row.locator("a").all_inner_texts()
    assert links[0] == "Fink" and "ALeRCE" not in links and "TNS" in links
    assert page.locator("tr.cand svg.lc").count() == n  # ZTF rows keep their magnitude curves
    # Bands: every band a candidate has can be filtered.
    for band in {r["band"] for r in records}:
        page.uncheck(f".f-band[value={band}]")
        want = sum(r["band"] != band for r in records)
        assert page.inner_text("#shown-count") == f"{want} of {n} shown"
        page.check(f".f-band[value={band}]")
    # TNS: a vetted Rubin candidate has no ZTF ids and says so.
    page.check(f"input[name='vet-{rec['candid']}'][value=sn]")
    page.fill("#tns-group", "74")
    page.fill("#tns-reporter", "A. Tester")
    with page.expect_download() as download:
        page.click("#export-tns")
    path = tmp_path / "tns.json"
    download.value.save_as(path)
    at = json.loads(path.read_text())["at_report"]["0"]
    assert at["internal_name"] == rec["objectId"]
    assert at["discovery_data_source_id"] == "" and at["ra"]["error"] == ""
    phot = at["photometry"]["photometry_group"]["0"]
    assert phot["instrument_value"] == "" and phot["filter_value"] == "" and phot["exptime"] == ""
    assert phot["comments"].endswith(f"band {rec['tns']['discovery_filter_name']}")
    want_mag = rec["tns"]["discovery_mag"]  # None when the first flux is negative
    if want_mag is None:
        assert phot["flux"] == ""
    else:
        assert float(phot["flux"]) == pytest.approx(want_mag)
    assert at["non_detection"]["archival_remarks"].startswith("no non-detection limits")
    assert "Rubin" in page.inner_text("#export-msg")
    page.locator(f"tr[data-candid='{rec['candid']}'] img").first.click()
    assert "not north-up" in page.inner_text("#zoom")
    assert errors == []
    context.close()
