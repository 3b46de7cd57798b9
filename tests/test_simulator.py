"""Tests of the ZTF alert simulator: format fidelity, determinism and per-class realism."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import astropy.units as u
import fastavro
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from fastavro.validation import validate

from simulator import make_alerts, plan_night, simulate
from simulator.generate import DRB_START_JD
from simulator.metadata import ecliptic, galactic
from simulator.montage import montage
from simulator.writer import load_alert_schema
from transforms.stamps import decode_stamp

CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
N_REALISM = 2500


def _astropy_stamp(data: bytes) -> np.ndarray:
    with fits.open(io.BytesIO(gzip.decompress(data))) as hdul:
        assert len(hdul) == 1 and hdul[0].header["BITPIX"] == -32
        return np.asarray(hdul[0].data)


def _read_labels(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def night() -> list[tuple[dict, dict]]:
    """~2,500 alerts in memory, equal class mix, some repeats and defects."""
    return make_alerts(N_REALISM, seed=7, detections_per_object=2, defects=0.1)


@pytest.fixture(scope="module")
def clean(night):
    """Per-class arrays of decoded stamps and metadata for alerts without defects."""
    out: dict[str, dict[str, list]] = {}
    for alert, label in night:
        if label["defect"]:
            continue
        d = out.setdefault(
            label["class"], {"sci": [], "ref": [], "diff": [], "cand": [], "sub": []}
        )
        d["sci"].append(decode_stamp(alert["cutoutScience"]["stampData"]))
        d["ref"].append(decode_stamp(alert["cutoutTemplate"]["stampData"]))
        d["diff"].append(decode_stamp(alert["cutoutDifference"]["stampData"]))
        d["cand"].append(alert["candidate"])
        d["sub"].append(label["subtype"])
    return {
        c: {k: np.array(v) if k in ("sci", "ref", "diff") else v for k, v in d.items()}
        for c, d in out.items()
    }


_YY, _XX = np.mgrid[0:63, 0:63]
_R = np.hypot(_XX - 31, _YY - 31)
_AP, _ANN = _R <= 3.0, (_R >= 8) & (_R <= 12)


def _point_flux(imgs: np.ndarray) -> np.ndarray:
    """Aperture flux (r <= 3 px) above the local annulus median, per image [DN]."""
    bkg = np.nanmedian(imgs[:, _ANN], axis=1)
    return np.nansum(imgs[:, _AP] - bkg[:, None], axis=1)


def _noise(imgs: np.ndarray) -> np.ndarray:
    """Robust per-image noise from the outer annulus [DN]."""
    ann = imgs[:, _ANN]
    med = np.nanmedian(ann, axis=1)
    return 1.4826 * np.nanmedian(np.abs(ann - med[:, None]), axis=1)


# --- format ---------------------------------------------------------------------------------------


def test_files_decode_validate_and_match_labels(tmp_path):
    summary = simulate(60, tmp_path, seed=3, detections_per_object=3, defects=0.3, workers=1)
    files = sorted(tmp_path.glob("*.avro"))
    assert summary.n_alerts == len(files) == 60
    labels = _read_labels(tmp_path / "labels.csv")
    assert list(labels[0]) == ["candid", "objectId", "class", "subtype", "defect"]
    assert {f"{r['candid']}.avro" for r in labels} == {f.name for f in files}
    schema = load_alert_schema()
    by_candid = {int(r["candid"]): r for r in labels}
    for f in files:
        with f.open("rb") as fh:
            reader = fastavro.reader(fh)
            records = list(reader)
        assert len(records) == 1
        assert reader.writer_schema["name"] == "ztf.alert"
        rec = records[0]
        assert validate(rec, schema)
        assert rec["schemavsn"] == "4.02" and f.name == f"{rec['candid']}.avro"
        row = by_candid[rec["candid"]]
        assert row["objectId"] == rec["objectId"]
        assert rec["objectId"].startswith("ZTF") and len(rec["objectId"]) == 12
        shapes = {_astropy_stamp(rec[k]["stampData"]).shape for k in CUTOUTS}
        assert len(shapes) == 1  # an edge defect crops all three stamps alike
        if row["defect"] == "edge_stamp":
            assert shapes != {(63, 63)}
        else:
            assert shapes == {(63, 63)}
        cand = rec["candidate"]
        assert cand["isdiffpos"] in ("t", "f") and cand["fid"] in (1, 2, 3)
        assert cand["dec"] > -31.0 and 0 <= cand["ra"] < 360


def test_official_schema_copy_is_unchanged():
    shared = Path("/work/shared/data/ztf_schemas")
    official = sorted(shared.glob("v4.02_*"))
    if not official:
        pytest.skip("shared schema directory not available")
    here = Path(__file__).resolve().parents[1] / "simulator" / "schema"
    for name in ("alert", "candidate", "prv_candidate", "fp_hist", "cutout"):
        assert (here / f"{name}.avsc").read_bytes() == (official[0] / f"{name}.avsc").read_bytes()


def test_deterministic_and_independent_of_workers(tmp_path):
    a = simulate(300, tmp_path / "a", seed=11, detections_per_object=2, defects=0.1, workers=1)
    b = simulate(300, tmp_path / "b", seed=11, detections_per_object=2, defects=0.1, workers=2)
    c = simulate(40, tmp_path / "c", seed=12, workers=1)
    fa, fb = sorted(a.out_dir.glob("*.avro")), sorted(b.out_dir.glob("*.avro"))
    assert [f.name for f in fa] == [f.name for f in fb]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb, strict=True))
    assert a.labels_path.read_bytes() == b.labels_path.read_bytes()
    assert {f.name for f in c.out_dir.glob("*.avro")}.isdisjoint({f.name for f in fa})


_SIMULATE_SNIPPET = """
import sys
from simulator import simulate
s = simulate(4, sys.argv[1], seed=3, night="20190101", fmt="tar", workers=1)
sys.stdout.buffer.write(s.archive_path.read_bytes() + s.labels_path.read_bytes())
"""


def test_output_bytes_independent_of_hash_seed(tmp_path):
    # The Avro header embeds the writer-schema JSON; fastavro fills each field's optional
    # properties ("doc", "default", ...) by iterating a set, so without canonicalisation the
    # header text (and the archive) changed with PYTHONHASHSEED (seeds 1 and 2 differ).
    root = Path(__file__).resolve().parents[1]
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", _SIMULATE_SNIPPET, str(tmp_path / hash_seed)],
            cwd=root,
            env=env,
            capture_output=True,
            check=True,
            timeout=120,
        )
        outputs.append(run.stdout)
    assert outputs[0], "simulator wrote nothing"
    assert outputs[0] == outputs[1]


def test_tar_archive_is_readable(tmp_path):
    s = simulate(50, tmp_path, seed=5, night="20190101", fmt="tar", workers=2)
    assert s.archive_path == tmp_path / "ztf_public_20190101.tar.gz"
    labels = {r["candid"] for r in _read_labels(s.labels_path)}
    with tarfile.open(s.archive_path, "r:gz") as tar:
        members = tar.getmembers()
        assert {m.name for m in members} == {f"{c}.avro" for c in labels}
        rec = next(iter(fastavro.reader(tar.extractfile(members[0]))))
    jd = rec["candidate"]["jd"]
    assert 2458484.5 < jd < 2458485.5  # inside the UT day 2019-01-01
    assert _astropy_stamp(rec["cutoutDifference"]["stampData"]).shape == (63, 63)


def test_candids_unique_and_plan_counts():
    plan = plan_night(20000, seed=1, detections_per_object=4)
    assert plan.n_alerts == 20000
    assert np.unique(plan.candid).size == 20000
    assert np.all(np.diff(plan.first_alert) >= 1)


# --- realism --------------------------------------------------------------------------------------


def test_coordinates_match_astropy(night):
    cands = [a["candidate"] for a, _ in night[:300]]
    ra, dec = np.array([c["ra"] for c in cands]), np.array([c["dec"] for c in cands])
    sky = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs")
    ecl = sky.barycentricmeanecliptic
    assert np.abs(galactic(ra, dec)[1] - sky.galactic.b.deg).max() < 1e-3
    assert np.abs(ecliptic(ra, dec)[1] - ecl.lat.deg).max() < 1e-3


def test_spatial_distribution_per_class(clean):
    def coords(cls):
        c = clean[cls]["cand"]
        ra, dec = np.array([x["ra"] for x in c]), np.array([x["dec"] for x in c])
        return SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs")

    b = {c: np.abs(coords(c).galactic.b.deg) for c in ("VS", "SN", "AGN")}
    assert np.median(b["VS"]) < 0.4 * min(np.median(b["SN"]), np.median(b["AGN"]))
    assert np.median(b["VS"]) < 10.0
    assert np.quantile(b["SN"], 0.05) > 7.0 and np.quantile(b["AGN"], 0.05) > 7.0
    beta_ast = np.abs(coords("asteroid").barycentricmeanecliptic.lat.deg)
    beta_sn = np.abs(coords("SN").barycentricmeanecliptic.lat.deg)
    # A band as wide as main-belt inclinations (sigma 8 deg for 70%, 18 deg for 30%).
    assert np.median(beta_ast) < 9.0 and np.mean(beta_ast < 35.0) > 0.95
    assert np.median(beta_sn) > 2 * np.median(beta_ast)
    decs = np.concatenate([coords(c).dec.deg for c in clean])
    assert decs.min() > -31.0


def test_sn_flux_in_science_and_difference_not_reference(clean):
    d = clean["SN"]
    noise = _noise(d["diff"])
    fd, fs, fr = _point_flux(d["diff"]), _point_flux(d["sci"]), _point_flux(d["ref"])
    assert np.median(fd / (noise * np.sqrt(_AP.sum()))) > 5  # well detected in the difference
    assert np.median(fs / fd) > 0.7  # the same flux is in the science image
    # and none in the reference but the host's light: hostless SNe leave the reference empty.
    hostless = np.array([s == "hostless" for s in d["sub"]])
    assert hostless.sum() > 20
    assert np.median(np.abs(fr[hostless]) / fd[hostless]) < 0.25
    assert np.mean(np.abs(fr) > 3 * fd) < 0.25
    assert np.mean([c["isdiffpos"] == "t" for c in d["cand"]]) > 0.97
    # Most SNe sit beside a resolved host: the nearest PS1 source is extended and offset.
    hosted = np.array([s == "hosted" for s in d["sub"]])
    sg = np.array([c["sgscore1"] for c in d["cand"]])
    dist = np.array([c["distpsnr1"] for c in d["cand"]])
    assert hosted.mean() > 0.7
    assert np.median(sg[hosted]) < 0.3 and np.median(dist[hosted]) > 0.5


def test_vs_and_agn_flux_in_reference(clean):
    for cls in ("VS", "AGN"):
        d = clean[cls]
        fr = _point_flux(d["ref"])
        assert np.median(fr / (_noise(d["ref"]) * np.sqrt(_AP.sum()))) > 10, cls
        assert np.median(fr / np.abs(_point_flux(d["diff"]))) > 1.0, cls
        isdiffpos = [c["isdiffpos"] for c in d["cand"]]
        assert 0.2 < isdiffpos.count("f") / len(isdiffpos) < 0.8, cls  # fading detections exist
    sg_vs = np.median([c["sgscore1"] for c in clean["VS"]["cand"]])
    assert sg_vs > 0.85
    # AGN: quasars are point sources in PS1, nuclei in visible hosts score lower; either way the
    # nearest reference source (the nucleus) is point-like (chinr ~ 1, as in real ALeRCE AGN).
    agn = clean["AGN"]
    sg = np.array([c["sgscore1"] for c in agn["cand"]])
    hosted = np.array([s == "hosted" for s in agn["sub"]])
    assert 0.2 < hosted.mean() < 0.5
    assert np.median(sg[~hosted]) > 0.7 > np.median(sg[hosted])
    assert np.median([c["chinr"] for c in agn["cand"]]) < 1.5


def test_asteroids_science_only_and_known_objects(clean):
    d = clean["asteroid"]
    fd, fr = _point_flux(d["diff"]), _point_flux(d["ref"])
    assert np.median(np.abs(fr) / fd) < 0.2
    ss = np.array([c["ssdistnr"] for c in d["cand"]])
    names = [c["ssnamenr"] for c in d["cand"]]
    known = ss >= 0
    assert 0.4 < known.mean() < 0.8
    assert all(n != "null" for n, k in zip(names, known, strict=True) if k)
    assert all(
        c["ssnamenr"] == "null" and c["ssdistnr"] == -999.0
        for cls in ("SN", "VS", "AGN")
        for c in clean[cls]["cand"]
    )
    elong = np.array([c["elong"] for c in d["cand"]])
    trailed = np.array([s == "trailed" for s in d["sub"]])
    assert trailed.any() and np.median(elong[trailed]) > 1.8 > np.median(elong[~trailed])


def test_cosmic_rays_sharper_than_psf(clean):
    def sharpness(imgs):
        # Peak pixel over the flux within r <= 3 px (point sources spread over ~10 pixels).
        bkg = np.nanmedian(imgs[:, _ANN], axis=1)
        return np.nanmax(imgs[:, _AP], axis=1) / np.nansum(imgs[:, _AP] - bkg[:, None], axis=1)

    b = clean["bogus"]
    cr = np.array([s == "cosmic_ray" for s in b["sub"]])
    assert cr.sum() > 20
    s_cr = sharpness(b["diff"][cr])
    s_sn = sharpness(clean["SN"]["diff"])
    # Faint cosmic rays (down to the detection limit, as real bogus are) dilute the peak with noise.
    assert np.median(s_cr) > 1.6 * np.median(s_sn)
    fwhm_cr = np.median([c["fwhm"] for c, k in zip(b["cand"], cr, strict=True) if k])
    assert fwhm_cr < np.median([c["fwhm"] for c in clean["SN"]["cand"]])


def test_bogus_kinds_and_scores(clean):
    b = clean["bogus"]
    kinds = set(b["sub"])
    assert {"cosmic_ray", "hot_pixel", "bad_column", "saturation", "dipole", "ghost"} <= kinds
    sat = np.array([s == "saturation" for s in b["sub"]])
    assert np.isnan(b["sci"][sat]).any(axis=(1, 2)).all()
    assert np.array_equal(np.isnan(b["sci"][sat]), np.isnan(b["ref"][sat]))
    dip = np.array([s == "dipole" for s in b["sub"]])
    both = (np.nanmax(b["diff"][dip], axis=(1, 2)) > 5 * _noise(b["diff"][dip])) & (
        np.nanmin(b["diff"][dip], axis=(1, 2)) < -5 * _noise(b["diff"][dip])
    )
    assert both.mean() > 0.8  # positive and negative lobes
    rb_bogus = np.median([c["rb"] for c in b["cand"]])
    rb_real = np.median([c["rb"] for c in clean["SN"]["cand"]])
    # Star residuals (bad_difference) fool the 2018 RealBogus: the bogus median sits near 0.5.
    assert rb_bogus < 0.5 < rb_real


def test_magnitudes_consistent_with_difference_flux(clean):
    d = clean["SN"]
    zp = np.array([c["magzpsci"] for c in d["cand"]])
    mag = np.array([c["magpsf"] for c in d["cand"]])
    lim = np.array([c["diffmaglim"] for c in d["cand"]])
    ratio = _point_flux(d["diff"]) / 10 ** (-0.4 * (mag - zp))
    # A r=3 px aperture holds ~70-90% of a Moffat PSF's flux.
    assert 0.6 < np.median(ratio) < 1.0
    assert np.all(mag < lim + 0.1)  # detections are above the 5-sigma limit
    # The 5-sigma cut is on the limit; sigmapsf carries up to 30% more error, as in real alerts
    # (their 1.0857 / sigmapsf is 0.6-0.9 of the S/N implied by diffmaglim for faint ones).
    snr = 1.0857 / np.array([c["sigmapsf"] for c in d["cand"]])
    assert np.all(snr > 5 / 1.3 - 0.01)


def test_repeat_detections_carry_history(night):
    by_obj: dict[str, list[dict]] = {}
    for alert, _ in night:
        by_obj.setdefault(alert["objectId"], []).append(alert)
    repeated = [v for v in by_obj.values() if len(v) > 1]
    assert len(repeated) > 200
    for alerts in repeated:
        alerts.sort(key=lambda a: a["candidate"]["jd"])
        jds = [a["candidate"]["jd"] for a in alerts]
        assert all(b > a for a, b in itertools.pairwise(jds))
        nd = [a["candidate"]["ndethist"] for a in alerts]
        assert nd == list(range(nd[0], nd[0] + len(nd)))
        for i, later in enumerate(alerts[1:], start=1):
            prv = later["prv_candidates"]
            prv_candids = [p["candid"] for p in prv]
            earlier = [a["candid"] for a in alerts[:i]]
            assert prv_candids[-i:] == earlier
            assert all(p["jd"] < later["candidate"]["jd"] for p in prv)
            assert all(later["candidate"]["jd"] - p["jd"] <= 30.0 for p in prv)
            assert prv[-1]["magpsf"] == alerts[i - 1]["candidate"]["magpsf"]


def test_sn_first_detections_rise_from_upper_limits(night):
    """The SN page's light curve on simulated alerts: a new SN has limits deeper than it before."""
    from transforms.alerts import Alert
    from transforms.light_curve import light_curve

    deeper, firsts = [], 0
    for record, label in night:
        if label["class"] != "SN":
            continue
        lc = light_curve(Alert(record=record, source="sim", raw=b""))
        if lc.first.jd != record["candidate"]["jd"]:
            continue  # a repeat detection
        firsts += 1
        if lc.last_non_detection is not None:
            assert 0 < lc.days_since_non_detection <= 30
            deeper.append(lc.last_non_detection.diffmaglim > lc.first.magpsf)
    assert firsts > 20
    assert len(deeper) >= 0.8 * firsts  # most have a non-detection in the 30 days before
    assert np.mean(deeper) >= 0.75  # and it was deeper than the first detection


def test_defects_at_requested_rate(night):
    defects = [lab["defect"] for _, lab in night]
    rate = sum(bool(d) for d in defects) / len(defects)
    assert 0.08 < rate < 0.12
    assert {"nan_pixels", "edge_stamp", "null_fields"} <= set(defects)
    for alert, lab in night:
        if lab["defect"] == "null_fields":
            c = alert["candidate"]
            assert any(
                c[f] is None for f in ("fwhm", "chinr", "sharpnr", "classtar", "diffmaglim", "drb")
            )
        elif lab["defect"] == "nan_pixels":
            imgs = [decode_stamp(alert[k]["stampData"]) for k in CUTOUTS]
            assert sum(np.isnan(i).sum() for i in imgs) > 20
        elif lab["defect"] == "edge_stamp":
            shapes = {decode_stamp(alert[k]["stampData"]).shape for k in CUTOUTS}
            assert len(shapes) == 1 and shapes != {(63, 63)}
        else:
            assert all(alert["candidate"][f] is not None for f in ("fwhm", "diffmaglim"))
            # drb exists from ZTF schema 3.3 (simulator.generate.DRB_START_JD) on.
            jd = alert["candidate"]["jd"]
            assert (alert["candidate"]["drb"] is None) == (jd < DRB_START_JD)


def test_mix_is_respected():
    rows = make_alerts(400, seed=2, mix="SN=3,bogus=1")
    classes = [lab["class"] for _, lab in rows]
    assert set(classes) == {"SN", "bogus"}
    assert 0.65 < classes.count("SN") / len(classes) < 0.85
    with pytest.raises(ValueError, match="unknown classes"):
        make_alerts(10, mix="SNIa=1")


def test_montage_and_cli(tmp_path):
    from pipeline.cli import main

    out = tmp_path / "alerts"
    assert main(["simulate", "--n", "40", "--out", str(out), "--seed", "4", "--workers", "1"]) == 0
    png = tmp_path / "m.png"
    rc = main(
        [
            "montage",
            "--alerts",
            str(out),
            "--labels",
            str(out / "labels.csv"),
            "--out",
            str(png),
            "--per-class",
            "1",
        ]
    )
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert montage(out, out / "labels.csv", tmp_path / "m2.png", per_class=2).exists()
