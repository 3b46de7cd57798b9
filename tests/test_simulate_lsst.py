"""The Rubin simulator (``stampflow simulate --survey lsst``): signatures, formats, decoding."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from simulator import lsst_physics as ph
from simulator.lsst import SUBTYPES, make_lsst_alerts, simulate_lsst
from tests.helpers import RUBIN_SCHEMAS, needs_rubin
from transforms import wire
from transforms.schema import FEATURES_LSST
from transforms.sources import decode_paths
from transforms.stamps import decode_stamp

pytestmark = needs_rubin
ALL_SUBTYPES = [(c, s) for c, subs in SUBTYPES.items() for s in subs]


@pytest.fixture(scope="module")
def alerts_by_subtype():
    """A few alerts of every subtype (equal class mix, bogus weighted up)."""
    rows = make_lsst_alerts(
        700,
        seed=4,
        mix="AGN=1,SN=1,VS=1.5,asteroid=1.5,bogus=5",
        first_detections=True,
        schema_dir=str(RUBIN_SCHEMAS),
    )
    out: dict[str, list[dict]] = {}
    for rec, label in rows:
        out.setdefault(label["subtype"], []).append(rec)
    return out


def _stamps(rec: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(
        decode_stamp(rec[k]).astype(np.float64)
        for k in ("cutoutScience", "cutoutTemplate", "cutoutDifference")
    )


def _sigma(rec: dict, kind: str = "cutoutDifference") -> float:
    with fits.open(io.BytesIO(rec[kind])) as h:
        return float(np.sqrt(np.nanmedian(h[1].data)))


def _centre(img: np.ndarray, r: int = 2) -> np.ndarray:
    c = img.shape[0] // 2
    return img[c - r : c + r, c - r : c + r]


def _frac(recs, test) -> float:
    return float(np.mean([bool(test(r)) for r in recs]))


def test_every_subtype_is_drawn(alerts_by_subtype):
    missing = [s for _, s in ALL_SUBTYPES if len(alerts_by_subtype.get(s, [])) < 8]
    assert not missing, f"too few alerts of {missing}"


def test_cutouts_are_rubin_shaped(alerts_by_subtype):
    for recs in alerts_by_subtype.values():
        for rec in recs[:3]:
            with fits.open(io.BytesIO(rec["cutoutDifference"])) as h:
                assert [x.header.get("EXTNAME", "PRIMARY") for x in h] == [
                    "PRIMARY",
                    "UNCERT",
                    "PSFIMAGE",
                ]
                img, var, psf = (x.data for x in h)
                side = max(rec["diaSource"]["bboxSize"], ph.MIN_STAMP)
                assert img.shape == var.shape == (side, side)
                assert h[0].header["BUNIT"].strip() == "nJy" and 0 <= h[0].header["ROTPA"] < 360
                assert psf.shape == (41, 41) and psf.sum() == pytest.approx(1.0)
                # The source at CRPIX, within half a pixel of the centre.
                cx = h[0].header["CRPIX1"] - 1
                assert abs(cx - (side - 1) / 2) <= 0.5
            with fits.open(io.BytesIO(rec["cutoutTemplate"])) as h:
                assert h[2].data.shape[0] in range(51, 56)


def test_photometry_agrees_with_the_pixels(alerts_by_subtype):
    """psfFlux, its error and snr are measured on the difference cutout."""
    for sub in ("on_host", "hostless", "unknown"):  # sky-limited: no bright star in the stamp
        for rec in alerts_by_subtype[sub][:5]:
            src = rec["diaSource"]
            _, _, diff = _stamps(rec)
            sigma = _sigma(rec)
            # The PSF fit's error is σ / sqrt(Σ P²) for a white-noise difference.
            with fits.open(io.BytesIO(rec["cutoutDifference"])) as h:
                p = h[2].data
            # (within 15%: the fit sees the stamp only, and bright sources add their own noise)
            assert src["psfFluxErr"] == pytest.approx(sigma / np.sqrt((p * p).sum()), rel=0.15)
            assert src["snr"] >= abs(src["psfFlux"]) / src["psfFluxErr"] - 1e-6
            assert np.sign(_centre(diff).sum()) == np.sign(src["psfFlux"])


def test_class_signatures(alerts_by_subtype):
    a = alerts_by_subtype

    def tpl_centre_snr(rec):
        _, tpl, _ = _stamps(rec)
        return _centre(tpl).sum() / (_sigma(rec, "cutoutTemplate") * 4)

    # SN on a host: a galaxy in the template, none in the hostless ones.
    assert _frac(a["on_host"], lambda r: r["diaSource"]["templateFlux"] > 0) > 0.8
    hostless = [r["diaSource"] for r in a["hostless"]]
    hostless = [abs(s["templateFlux"]) / s["templateFluxErr"] for s in hostless]
    assert np.median(hostless) < 3
    # AGN and variable stars: a point source at the centre of the template.
    for sub in ("quasar", "seyfert", "pulsating", "eclipsing"):
        assert _frac(a[sub], lambda r: tpl_centre_snr(r) > 5) > 0.9, sub
    assert _frac(a["eclipsing"], lambda r: r["diaSource"]["psfFlux"] < 0) == 1.0
    assert _frac(a["flare"], lambda r: r["diaSource"]["psfFlux"] > 0) == 1.0
    # Asteroids: nothing in the template; known ones carry ssObjectId and ssSource.
    for sub in ("known", "unknown", "fast"):
        assert _frac(a[sub], lambda r: abs(tpl_centre_snr(r)) < 5) > 0.9, sub
    assert all(r["diaSource"]["ssObjectId"] and r["ssSource"] for r in a["known"])
    assert all(r["diaObject"] is None for r in a["known"])
    assert all(r["diaSource"]["ssObjectId"] == 0 and r["ssSource"] is None for r in a["unknown"])
    assert all(r["diaObject"]["diaObjectId"] for r in a["unknown"] + a["fast"])
    trails = [r["diaSource"]["trailLength"] for r in a["fast"] if r["diaSource"]["trailLength"]]
    assert np.median(trails) > 3.0  # [arcsec]: 1-8 deg/day over 30 s is 1.25-10″


def _elongation(img: np.ndarray, sigma: float) -> float:
    """Length over width of the pixels above 3σ (second moments)."""
    y, x = np.nonzero(np.nan_to_num(img) > 3 * sigma)
    if x.size < 4:
        return 1.0
    ev = np.linalg.eigvalsh(np.cov(np.vstack([x, y])))
    return float(np.sqrt(ev[1] / max(ev[0], 1e-3)))


def test_artefact_signatures(alerts_by_subtype):
    a = alerts_by_subtype

    def diff_sigma(r):
        return _stamps(r)[2], _sigma(r)

    # Dipoles: a positive and a negative lobe beside each other at the centre (3σ in 3×3 boxes).
    def lobes(r):
        d, s = diff_sigma(r)
        c = _centre(d, 5)
        box = sum(c[i : i + 8, j : j + 8] for i in range(3) for j in range(3)) / 9.0
        return box.max() > s and box.min() < -s

    assert _frac(a["dipole"], lobes) > 0.7
    assert _frac(a["dipole"], lambda r: r["diaSource"]["isDipole"]) > 0.5

    # PSF mismatch: the centre and the ring around it of opposite signs.
    def ring(r):
        d, _ = diff_sigma(r)
        n = d.shape[0]
        y, x = np.mgrid[0:n, 0:n]
        rr = np.hypot(x - (n - 1) / 2, y - (n - 1) / 2)
        return np.sign(d[rr < 2].sum()) != np.sign(d[(rr > 3) & (rr < 8)].sum())

    assert _frac(a["psf_mismatch"], ring) > 0.8
    # Streaks cross the stamp; glints are dashes; both much longer than wide.
    assert _frac(a["streak"], lambda r: _elongation(*diff_sigma(r)) > 3) > 0.8
    assert _frac(a["glint"], lambda r: _elongation(*diff_sigma(r)) > 2) > 0.8
    assert _frac(a["streak"], lambda r: r["diaSource"]["pixelFlags_streak"]) > 0.3

    # Cosmic rays: sharper than the PSF, in the science image only.
    def sharp(r):
        _, tpl, d = _stamps(r)
        peak = np.unravel_index(np.nanargmax(d), d.shape)
        return d[peak] > 5 * _sigma(r) and np.nansum(_centre(tpl)) < 5 * 4 * _sigma(
            r, "cutoutTemplate"
        )

    assert _frac(a["cosmic_ray"], sharp) > 0.8
    src = [r["diaSource"] for r in a["cosmic_ray"]]
    widths = [s["ixx"] + s["iyy"] for s in src if s["ixx"]]
    psf = [s["ixxPSF"] + s["iyyPSF"] for s in src]
    assert np.median(widths) < np.median(psf)

    # Crosstalk: a flat top (many pixels within 10% of the maximum).
    def flat(r):
        d, _ = diff_sigma(r)
        return (np.nan_to_num(d) > 0.9 * np.nanmax(d)).sum() >= 4

    assert _frac(a["crosstalk"], flat) > 0.8

    # Ghosts: a smooth excess spread over the science stamp.
    def smooth_excess(r):
        return np.nanmean(_stamps(r)[0]) > 0.5 * _sigma(r, "cutoutScience")

    assert _frac(a["ghost"], smooth_excess) > 0.7
    # Bright stars: saturated pixels, flagged.
    assert _frac(a["bright_star"], lambda r: r["diaSource"]["pixelFlags_saturated"]) > 0.5
    # Edge stamps: a strip off the detector (NaN) and the edge flag.
    assert all(r["diaSource"]["pixelFlags_edge"] for r in a["edge"])
    assert all(np.isnan(_stamps(r)[2]).any() for r in a["edge"])
    # Noise peaks: faint.
    assert np.median([r["diaSource"]["snr"] for r in a["noise"]]) < 12


@pytest.mark.parametrize(
    ("fmt", "version"), [("avro", "11.1"), ("parquet", "10.0"), ("wire", "10.0")]
)
def test_a_simulated_night_decodes_with_no_dead_letter(tmp_path, fmt, version):
    from transforms.featurize import featurize_alerts
    from transforms.surveys import LSST

    s = simulate_lsst(
        150, tmp_path, seed=2, fmt=fmt, schema_dir=str(RUBIN_SCHEMAS), workers=1, version=version
    )
    wire.configure_schemas([str(RUBIN_SCHEMAS)])
    try:
        alerts, errors = [], []
        for item in decode_paths([str(tmp_path)]):
            if item.read_error or item.decode_error:
                errors.append(item.read_error or item.decode_error)
            alerts.extend(item.alerts)
    finally:
        wire.configure_schemas()
    assert not errors
    with open(s.labels_path) as fh:
        labels = {int(r["candid"]): r for r in csv.DictReader(fh)}
    assert len(labels) == len(alerts) == 150
    assert {a.candid for a in alerts} == set(labels)
    for alert in alerts:
        assert alert.object_id == labels[alert.candid]["objectId"]
    res = featurize_alerts(alerts, FEATURES_LSST, "pad", survey=LSST)
    assert not res.dead_letters and len(res.examples) == 150
    # First detections: empty histories (forced photometry too); the others carry earlier
    # detections, each before the alert.
    for alert in alerts:
        src, prv = alert.record["diaSource"], alert.record["prvDiaSources"] or []
        forced = alert.record["prvDiaForcedSources"] or []
        if labels[alert.candid]["class"] == "asteroid" or not prv:
            assert not prv and not forced
        else:
            assert all(d["midpointMjdTai"] < src["midpointMjdTai"] for d in prv + forced)


def test_same_bytes_whatever_the_workers(tmp_path):
    kw = {"seed": 9, "schema_dir": str(RUBIN_SCHEMAS)}
    simulate_lsst(260, tmp_path / "one", workers=1, **kw)
    simulate_lsst(260, tmp_path / "two", workers=2, **kw)
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert "labels.csv" in one and len(one) == 4  # 3 Avro containers of <= 128 alerts
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_ids_are_unique_across_alerts_histories_seeds_and_nights():
    def ids(**kw):
        rows = make_lsst_alerts(120, schema_dir=str(RUBIN_SCHEMAS), mix="AGN=1,VS=1,SN=1", **kw)
        out = []
        for rec, _ in rows:
            out.append(rec["diaSourceId"])
            out += [d["diaSourceId"] for d in rec["prvDiaSources"]]
            out += [d["diaForcedSourceId"] for d in rec["prvDiaForcedSources"]]
            out.append(rec["diaObject"]["diaObjectId"])
        return out

    a, b, c = ids(seed=0), ids(seed=1), ids(seed=0, night="20260306")  # (seeds mod 1000)
    assert len(a) > 2000 and len(set(a)) == len(a)  # long AGN/VS histories included
    assert not set(a) & set(b) and not set(a) & set(c)
    assert all(x < 2**63 for x in a + b + c)


def test_cli(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "simulate", "--survey", "lsst", *args],
            capture_output=True,
            text=True,
        )

    ok = run(
        "--n",
        "5",
        "--out",
        str(tmp_path / "a"),
        "--schema-dir",
        str(RUBIN_SCHEMAS),
        "--workers",
        "1",
        "--format",
        "parquet",
    )
    assert ok.returncode == 0, ok.stderr
    assert "wrote 5 Rubin alerts" in ok.stdout
    bad = run("--n", "5", "--out", str(tmp_path / "b"), "--schema-dir", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "not a directory" in bad.stderr and "Traceback" not in bad.stderr
    bad = run("--n", "5", "--out", str(tmp_path / "c"), "--format", "tar")
    assert bad.returncode == 2 and "avro, parquet or wire" in bad.stderr


def test_a_simulated_night_through_the_pipeline(tmp_path):
    """``stampflow run`` on a simulated night (histories included): every alert accounted for,
    first detections classified, the others skipped for their history, no dead letter."""
    from pipeline.run_job import run
    from tests.helpers import export_random_model

    night = tmp_path / "night"
    s = simulate_lsst(200, night, seed=12, schema_dir=str(RUBIN_SCHEMAS), workers=1)
    model = export_random_model(night, tmp_path / "model", survey="lsst")
    out = tmp_path / "out"
    summary = run(["--input", str(night), "--output", str(out), "--model", str(model)])
    with open(s.labels_path) as fh:
        labels = list(csv.DictReader(fh))
    firsts = {candid for candid, first in make_first_flags(night) if first}
    assert summary["reconciled"] and summary["records_in"] == len(labels) == 200
    assert not summary["dead_letters"]  # per stage: none
    assert summary["classified"] == len(firsts)
    assert summary["skipped"] == {"earlier_detection_in_history": 200 - len(firsts)}
    assert 0 < len(firsts) < 200  # the default mix has later detections too


def make_first_flags(directory) -> list[tuple[int, bool]]:
    """(candid, is a first detection) of every alert, from its own history."""
    return [
        (a.candid, not a.earlier_detection)
        for item in decode_paths([str(directory)])
        for a in item.alerts
    ]
