"""``stampflow label``: the pure pieces (class names, catalogue columns, cross-match, rules,
conflicts) and the command on the real alerts with small catalogues made here from their
positions, as CSV, TNS-style sexagesimal CSV and FITS."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from astropy.coordinates import SkyCoord, angular_separation
from astropy.table import Table

from model.label import (
    LabelError,
    crossmatch,
    known_asteroids,
    normalize_class,
    parse_catalog_spec,
    read_alert_positions,
    read_catalog,
    resolve_labels,
    select_first_detections,
)
from model.train import read_labels
from pipeline.cli import main
from tests.helpers import REAL, needs_real

ARCSEC = 1 / 3600


# --- pure functions -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "cls"),
    [
        ("AGN", "AGN"),
        ("qso", "AGN"),
        ("Sy1", "AGN"),
        ("SN", "SN"),
        ("SN Ia", "SN"),
        ("SN IIn", "SN"),
        ("SN Ic-BL", "SN"),
        ("SLSN-I", "SN"),
        ("SNR", None),  # a supernova remnant is not a transient
        ("TDE", None),
        ("vs", "VS"),
        ("Variable Star", "VS"),
        ("RRLyr", None),  # star types are given as FILE:VS, not guessed
        ("Asteroid", "asteroid"),
        ("bogus", "bogus"),
        ("", None),
        (None, None),
    ],
)
def test_normalize_class(value, cls):
    assert normalize_class(value) == cls


def test_parse_catalog_spec(tmp_path):
    f = tmp_path / "cat.csv"
    f.write_text("ra,dec\n1,2\n")
    assert parse_catalog_spec(str(f)) == (str(f), None)
    assert parse_catalog_spec(f"{f}:AGN") == (str(f), "AGN")
    assert parse_catalog_spec(f"{f}:QSO") == (str(f), "AGN")
    with pytest.raises(LabelError, match="unknown class 'Star'"):
        parse_catalog_spec(f"{f}:Star")
    with pytest.raises(LabelError, match=r"no such catalogue file: .*missing\.csv$"):
        parse_catalog_spec(str(tmp_path / "missing.csv:AGN"))


def brute_force(ra, dec, cat_ra, cat_dec, radius):
    """Nearest row within the radius by evaluating every pair (the reference)."""
    r = np.radians
    d = angular_separation(r(ra)[:, None], r(dec)[:, None], r(cat_ra)[None], r(cat_dec)[None])
    d = np.degrees(d) * 3600
    nearest = np.argmin(d, axis=1)
    sep = d[np.arange(len(ra)), nearest]
    hit = sep <= radius
    return np.where(hit, nearest, -1), np.where(hit, sep, np.nan)


def test_crossmatch_equals_brute_force_at_wrap_poles_and_chunks():
    rng = np.random.default_rng(4)
    # Alerts over the sphere, plus some at RA 0/360 and next to the pole.
    ra = np.concatenate([rng.uniform(0, 360, 300), [0.0001, 359.9999, 10.0, 190.0]])
    dec = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, 300))), [5, 5, 89.9999, 89.9999]])
    # Catalogue: jittered copies of half the alerts (0-3 arcsec), two rows across the RA wrap,
    # and unrelated rows.
    near = rng.choice(len(ra), 150, replace=False)
    cat_ra = (ra[near] + rng.normal(0, 1.5 * ARCSEC, 150) / np.cos(np.radians(dec[near]))) % 360
    cat_dec = np.clip(dec[near] + rng.normal(0, 1.5 * ARCSEC, 150), -90, 90)
    cat_ra = np.concatenate([cat_ra, [359.9999, 0.0001], rng.uniform(0, 360, 500)])
    cat_dec = np.concatenate([cat_dec, [5, 5], rng.uniform(-90, 90, 500)])
    want_idx, want_sep = brute_force(ra, dec, cat_ra, cat_dec, 2.0)
    assert 50 < (want_idx >= 0).sum() < len(ra)  # a real mix of matches and misses
    for max_pairs in (4_000_000, 7):  # one chunk, and many small ones
        idx, sep = crossmatch(ra, dec, cat_ra, cat_dec, 2.0, max_pairs=max_pairs)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_allclose(sep, want_sep, rtol=0, atol=1e-9)
    # The two alerts at RA 0.0001 and 359.9999 match across the wrap (0.72" apart at Dec 5).
    assert sep[300] < 1 and sep[301] < 1


def test_crossmatch_radius_edges_and_empty_inputs():
    ra, dec = np.array([10.0, 10.0, 10.0]), np.array([20.0, 30.0, np.nan])
    cat_ra = np.array([10.0, 10.0])
    cat_dec = np.array([20.0 + 0.999 * ARCSEC, 30.0 + 1.001 * ARCSEC])
    idx, sep = crossmatch(ra, dec, cat_ra, cat_dec, 1.0)
    assert idx.tolist() == [0, -1, -1]  # 0.999" matches, 1.001" does not, NaN matches nothing
    assert sep[0] == pytest.approx(0.999, abs=1e-9) and np.isnan(sep[1:]).all()
    # Equally near rows: the first row wins.
    idx, _ = crossmatch(np.array([0.0]), np.array([0.0]), np.array([0.0, 0.0]), np.zeros(2), 1.0)
    assert idx.tolist() == [0]
    idx, sep = crossmatch(ra, dec, np.array([]), np.array([]), 1.0)
    assert idx.tolist() == [-1, -1, -1] and np.isnan(sep).all()
    idx, sep = crossmatch(np.array([]), np.array([]), cat_ra, cat_dec, 1.0)
    assert idx.shape == sep.shape == (0,)


def test_known_asteroids_rule():
    d = np.array([-999.0, 0.0, 4.9, 5.0, 5.1, np.nan, -1.0])
    assert known_asteroids(d, 5.0).tolist() == [False, True, True, True, False, False, False]
    assert known_asteroids(d, 0.0).tolist() == [False, True, False, False, False, False, False]


def test_resolve_labels_agreement_conflict_and_nearest_separation():
    e = ""
    votes = [
        ("q", np.array(["AGN", e, "AGN", e, "AGN"], object), np.array([0.4, 0, 0.1, 0, 0.9])),
        ("t", np.array(["AGN", "SN", "SN", e, e], object), np.array([0.2, 0.3, 0.5, 0, 0])),
        ("ssdistnr", np.array([e, e, e, e, "asteroid"], object), np.array([0, 0, 0, 0, 3.0])),
    ]
    r = resolve_labels(5, votes)
    assert r.classes.tolist() == ["AGN", "SN", e, e, e]
    assert r.sources.tolist() == ["q+t", "t", e, e, e]
    assert r.sep_arcsec[:2].tolist() == [0.2, 0.3] and np.isnan(r.sep_arcsec[2:]).all()
    assert r.conflicts == {2: {"q": "AGN", "t": "SN"}, 4: {"q": "AGN", "ssdistnr": "asteroid"}}


def test_read_catalog_columns_units_sexagesimal_and_mistakes(tmp_path):
    # VizieR-style names with units, in FITS: arcsec-free degrees and a radian column.
    t = Table({"RAJ2000": [10.0, np.nan], "DEJ2000": [20.0, 1.0]})
    t["RAJ2000"].unit = "deg"
    t.write(tmp_path / "v.fits")
    cat = read_catalog(f"{tmp_path / 'v.fits'}:vs")
    assert cat.classes.tolist() == ["VS"] and cat.ra.tolist() == [10.0]
    assert cat.rows == 2 and cat.skipped["no_position"] == 1 and cat.fixed_class == "VS"
    t = Table({"ra": [np.pi], "dec": [0.0], "class": ["QSO"]})
    t["ra"].unit, t["dec"].unit = "rad", "rad"
    t.write(tmp_path / "rad.fits")
    cat = read_catalog(str(tmp_path / "rad.fits"))
    assert cat.ra.tolist() == pytest.approx([180.0]) and cat.classes.tolist() == ["AGN"]
    # TNS's CSV: sexagesimal RA/DEC and its "Obj. Type" column.
    (tmp_path / "tns.csv").write_text(
        '"Name","RA","DEC","Obj. Type"\n'
        '"2021abc","00:03:15.430","+16:08:44.52","SN Ia"\n'
        '"2021abd","12:00:00.000","-05:00:00.00","SN II"\n'
    )
    cat = read_catalog(str(tmp_path / "tns.csv"))
    assert cat.class_column == "Obj. Type" and cat.classes.tolist() == ["SN", "SN"]
    want = SkyCoord("00:03:15.430 +16:08:44.52", unit=("hourangle", "deg"))
    assert cat.ra[0] == pytest.approx(want.ra.deg) and cat.dec[1] == pytest.approx(-5.0)
    # Mistakes: no ra/dec, no class column, unknown class values (or skipped on request).
    (tmp_path / "nopos.csv").write_text("x,y,class\n1,2,AGN\n")
    with pytest.raises(LabelError, match=r"no ra/dec columns .*it has x, y, class"):
        read_catalog(str(tmp_path / "nopos.csv"))
    (tmp_path / "nocls.csv").write_text("ra,dec\n1,2\n")
    with pytest.raises(LabelError, match="no class column"):
        read_catalog(str(tmp_path / "nocls.csv"))
    with pytest.raises(LabelError, match="no column 'kind'"):
        read_catalog(str(tmp_path / "nocls.csv"), class_column="kind")
    (tmp_path / "mixed.csv").write_text("ra,dec,type\n1,2,QSO\n3,4,TDE\n5,6,TDE\n")
    with pytest.raises(LabelError, match=r"unknown class value.*'TDE'"):
        read_catalog(str(tmp_path / "mixed.csv"))
    cat = read_catalog(str(tmp_path / "mixed.csv"), skip_unknown=True)
    assert cat.classes.tolist() == ["AGN"] and cat.skipped["unknown_class"] == {"TDE": 2}


# --- the command on the real alerts ---------------------------------------------------------------
# Alerts of the real set (single alerts of their objects, nothing else within 30").
AGN_NEAR = 522193343315015006  # ZTF18aayhyhx: catalogue row 0.5" away -> AGN
AGN_FAR = 522193343315010000  # ZTF18aayhyhy: catalogue row 5" away -> not matched at 1"
VS_FITS = 516171791415015025  # ZTF18aaxlzgi: in the FITS variable-star catalogue
BOTH = 522193343215015012  # ZTF18aayhyjt: AGN in the CSV and VS in the FITS -> conflict
SN_OBJECT = "ZTF21abiuvdk"  # 34 alerts; the first, 1642404680815015001, is a first detection
SN_FIRST = 1642404680815015001
# Known solar-system objects of the real set, 0 <= ssdistnr <= 5": ssdistnr 5, 5, 4, 0, 0, 0.
ASTEROIDS = {
    522193343615015003,
    522193343215015006,
    522193343215015000,
    1034529320615015011,
    1034531144615015006,
}
ASTEROID_IN_AGN = 1034530232615015004  # ssdistnr 0, also put in the AGN CSV -> conflict


@pytest.fixture(scope="module")
def real_positions():
    if not REAL.is_dir():
        pytest.skip(f"real ZTF alerts not found at {REAL} (set STAMPFLOW_DATA)")
    return read_alert_positions([str(REAL)])


@pytest.fixture()
def catalogs(tmp_path, real_positions):
    pos, _ = real_positions
    at = {int(c): (pos.ra[i], pos.dec[i]) for i, c in enumerate(pos.candid)}

    def offset(candid, arcsec):
        ra, dec = at[candid]
        return ra, dec + arcsec * ARCSEC

    agn = tmp_path / "agn.csv"
    with agn.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "ra", "dec", "class"])
        for name, candid, arcsec in (
            ("near", AGN_NEAR, 0.5),
            ("far", AGN_FAR, 5.0),
            ("both", BOTH, 0.2),
            ("sso", ASTEROID_IN_AGN, 0.0),
        ):
            w.writerow([name, *(f"{v:.8f}" for v in offset(candid, arcsec)), "QSO"])
        w.writerow(["nowhere", "10.0", "-60.0", "AGN"])
    i = int(np.flatnonzero(pos.object_id == SN_OBJECT)[0])
    sn_pos = SkyCoord(pos.ra[i], pos.dec[i], unit="deg")
    tns = tmp_path / "tns.csv"
    tns.write_text(
        '"Name","RA","DEC","Obj. Type"\n'
        f'"2021xyz","{sn_pos.ra.to_string("hourangle", sep=":", precision=3)}",'
        f'"{sn_pos.dec.to_string("deg", sep=":", precision=2, alwayssign=True)}","SN Ia"\n'
    )
    vs = tmp_path / "vs.fits"
    rows = [at[VS_FITS], at[BOTH]]
    Table({"RA_DEG": [r for r, _ in rows], "DEC_DEG": [d for _, d in rows]}).write(vs)
    return {"agn": agn, "tns": tns, "vs": vs}


def run_label(tmp_path, catalogs, *extra):
    out = tmp_path / "labels.csv"
    rc = main(
        ["label", "--alerts", str(REAL), "--catalog", str(catalogs["agn"]),
         "--catalog", str(catalogs["tns"]), "--catalog", f"{catalogs['vs']}:VS",
         "--out", str(out), "--report", str(tmp_path / "report.json"), *extra]
    )  # fmt: skip
    assert rc == 0
    with out.open(newline="") as f:
        rows = {int(r["candid"]): r for r in csv.DictReader(f)}
    return rows, json.loads((tmp_path / "report.json").read_text())


@needs_real
def test_label_real_alerts_every_alert(tmp_path, catalogs, real_positions, capsys):
    pos, _ = real_positions
    rows, report = run_label(tmp_path, catalogs, "--select", "all")
    sn = {int(c) for c in pos.candid[pos.object_id == SN_OBJECT]}
    assert len(sn) == 34
    want = (
        {AGN_NEAR: ("AGN", "agn.csv"), VS_FITS: ("VS", "vs.fits")}
        | {c: ("SN", "tns.csv") for c in sn}
        | {c: ("asteroid", "ssdistnr") for c in ASTEROIDS}
    )
    assert {c: (r["class"], r["source"]) for c, r in rows.items()} == want
    assert float(rows[AGN_NEAR]["sep_arcsec"]) == pytest.approx(0.5, abs=1e-3)
    assert float(rows[VS_FITS]["sep_arcsec"]) == pytest.approx(0.0, abs=1e-3)
    assert {r["objectId"] for c, r in rows.items() if c in sn} == {SN_OBJECT}
    # The report: counts reconcile, per-catalogue matches, both conflicts named.
    assert report["alerts_read"] == 225 and report["duplicates"] == 2
    assert report["considered"] == 223 and report["skipped_not_first_detection"] == 0
    assert report["labelled_per_class"] == {"AGN": 1, "SN": 34, "VS": 1, "asteroid": 5, "bogus": 0}
    assert report["conflicts"] == 2
    assert report["labelled"] + report["conflicts"] + report["unmatched"] == report["considered"]
    matched = {c["source"]: c["matched"] for c in report["catalogs"]}
    assert matched == {"agn.csv": 3, "tns.csv": 34, "vs.fits": 2}
    assert report["asteroid_rule"] == {"ss_radius_arcsec": 5.0, "matched": 6}
    conflicts = {c["candid"]: c["matches"] for c in report["conflict_alerts"]}
    assert conflicts == {
        BOTH: {"agn.csv": "AGN", "vs.fits": "VS"},
        ASTEROID_IN_AGN: {"agn.csv": "AGN", "ssdistnr": "asteroid"},
    }
    assert report["catalogs"][0]["rows"] == 5 and report["catalogs"][0]["rows_used"] == 5
    assert report["dead_letters"] == 0
    printed = capsys.readouterr().out
    assert "labelled 41: AGN 1, SN 34, VS 1, asteroid 5, bogus 0 · 2 conflicts" in printed
    assert "conflict 522193343215015012 ZTF18aayhyjt: agn.csv AGN, vs.fits VS" in printed
    # stampflow train reads the file.
    labels = read_labels(str(tmp_path / "labels.csv"))
    assert labels[AGN_NEAR] == ("ZTF18aayhyhx", "AGN") and len(labels) == 41


@needs_real
def test_label_real_first_detections_radius_and_rules(tmp_path, catalogs):
    rows, report = run_label(tmp_path, catalogs)  # --select first is the default
    # Only the SN object's first detection; the other labelled alerts are all first detections.
    want = {AGN_NEAR: "AGN", VS_FITS: "VS", SN_FIRST: "SN"} | dict.fromkeys(ASTEROIDS, "asteroid")
    assert {c: r["class"] for c, r in rows.items()} == want
    assert report["considered"] == 37 and report["skipped_not_first_detection"] == 186
    # A wider radius takes the 5" row; no asteroid rule leaves the SSO to the AGN catalogue; a
    # wider --ss-radius adds the ssdistnr 6" and 7" ones.
    rows, report = run_label(tmp_path, catalogs, "--radius", "6", "--no-asteroids")
    assert rows[AGN_FAR]["class"] == "AGN" and float(rows[AGN_FAR]["sep_arcsec"]) == pytest.approx(
        5.0, abs=1e-3
    )
    assert rows[ASTEROID_IN_AGN]["class"] == "AGN" and report["asteroid_rule"] is None
    assert not ASTEROIDS & set(rows)
    rows, _ = run_label(tmp_path, catalogs, "--ss-radius", "7")
    extra = {522193343215015001, 522193343615015002, 522193343615015001}  # 6", 7", 6"
    assert {c for c, r in rows.items() if r["class"] == "asteroid"} == ASTEROIDS | extra


@needs_real
def test_label_counts_dead_letters(tmp_path, catalogs):
    junk = tmp_path / "junk.avro"
    junk.write_bytes(b"not an avro container")
    out = tmp_path / "l.csv"
    ztf = REAL / "ZwickyTransientFacility__ztf-avro-alert"
    rc = main(["label", "--alerts", str(junk), str(ztf), "--catalog", f"{catalogs['vs']}:VS",
               "--out", str(out),
               "--report", str(tmp_path / "r.json")])  # fmt: skip
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["dead_letters"] == 1 and report["alerts_read"] == 2
    assert list(report["dead_letters_by_reason"]) == ["decode: bad_magic"]
    assert report["dead_letter_sources"][0]["source"] == str(junk)
    assert out.read_text().splitlines() == ["candid,objectId,class,source,sep_arcsec"]


@needs_real
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: ["--catalog", str(d / "missing.csv")], "no such catalogue file: "),
        (lambda d: ["--catalog", f"{d / 'ok.csv'}:Star"], "unknown class 'Star'"),
        (lambda d: ["--catalog", str(d / "nopos.csv")], "no ra/dec columns"),
        (
            lambda d: ["--catalog", str(d / "ok.csv"), "--out", str(d / "no" / "l.csv")],
            "no directory",
        ),
        (lambda d: ["--catalog", str(d / "ok.csv"), "--alerts", str(d / "none*.avro")], "no_match"),
        (lambda d: ["--no-asteroids"], "nothing to label with"),
    ],
)
def test_label_user_mistakes_are_one_line(tmp_path, capsys, make, message):
    (tmp_path / "ok.csv").write_text("ra,dec,class\n1,2,AGN\n")
    (tmp_path / "nopos.csv").write_text("x,y,class\n1,2,AGN\n")
    args = ["label", "--alerts", str(REAL / "ZwickyTransientFacility__ztf-avro-alert"),
            "--out", str(tmp_path / "l.csv")]  # fmt: skip
    assert main([*args, *make(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stampflow label: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


@needs_real
def test_select_first_detections_matches_the_pipeline_rule(real_positions):
    from transforms.rules import earliest_key

    pos, _ = real_positions
    keep = select_first_detections(pos)
    for obj in set(pos.object_id):
        idx = np.flatnonzero(pos.object_id == obj)
        first = min(idx, key=lambda i: earliest_key(pos.jd[i], pos.candid[i]))
        assert keep[idx].tolist() == [i == first and pos.no_earlier_detection[i] for i in idx]
    assert keep.sum() == 37
