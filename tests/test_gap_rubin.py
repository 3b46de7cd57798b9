"""``stampflow gap`` on Rubin (LSST) alerts: the Rubin image statistics with known answers, the
cutout HDU reader against astropy, and the report of a small simulated Rubin night against the 36
real Rubin alerts (its columns, populations, discriminator), a deliberately broken simulation
(science stamps x 10) that must look further from the real alerts, the reference-model path with
a Rubin model, and the one-line refusals (mixed surveys, a simulation or model of another survey).
"""

from __future__ import annotations

import io
import json
import math
import shutil

import fastavro
import numpy as np
import pytest

from pipeline import cli
from simulator import gap
from tests.helpers import (
    ROOT,
    RUBIN,
    RUBIN_SCHEMAS,
    export_random_model,
    mini_container,
    mini_record,
    needs_rubin,
)
from transforms.schema import FEATURES_LSST, STAMP_KINDS

#: The real Rubin alerts, without lsst-alert-packet's made-up sample packets: 7 from Fink's Avro
#: (2 first detections, known asteroids), 25 from fink-science's Parquet (22 first detections)
#: and 4 from Fink's transfer Parquet (repeat detections, band g).
REAL_DIRS = [
    RUBIN / "astrolabsoftware__fink-client",
    RUBIN / "astrolabsoftware__fink-science",
    RUBIN / "astrolabsoftware__fink-tutorials",
]
N_SIM = 200
#: The shipped (ZTF) model.
DEFAULT_MODEL = str(ROOT / "model" / "default")


def stampflow(argv: list[str]) -> int:
    """``stampflow ARGV`` as the entry point dispatches it (without the TF start-up muting)."""
    args = cli.build_parser(argv).parse_args(argv)
    return args.func(args)


# --- pure functions -------------------------------------------------------------------------------
def rubin_cubes(
    n: int, sigma_psf: float, flux: float, noise: float, seed: int, size: int = 30
) -> np.ndarray:
    """``[n, size, size, 3]`` background-subtracted nJy cubes: a Gaussian source at the centre of
    the science and difference, none in the template (noise / 4)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    c = (size - 1) / 2.0
    g = np.exp(-((x - c) ** 2 + (y - c) ** 2) / (2 * sigma_psf**2))
    g *= flux / g.sum()
    sci = g + rng.normal(0, noise, (n, size, size))
    tpl = rng.normal(0, noise / 4, (n, size, size))
    diff = g + rng.normal(0, noise, (n, size, size))
    return np.stack([sci, tpl, diff], axis=-1).astype(np.float32)


def gaussian_psf(size: int, sigma: float) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - (size - 1) / 2.0
    g = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return g / g.sum()


def test_lsst_image_statistics_known_answers():
    n, noise, sigma = 60, 40.0, 2.0
    cubes = rubin_cubes(n, sigma, flux=20000.0, noise=noise, seed=1)
    variance = np.empty_like(cubes)
    variance[..., 0] = noise**2
    variance[..., 1] = (noise / 4) ** 2 / 4.0  # the template's variance plane says half its noise
    variance[..., 2] = noise**2
    fwhm_psf = np.tile([4.7, 3.9, 4.7], (n, 1))
    s = gap.image_statistics(cubes, "lsst", variance=variance, psf_fwhm=fwhm_psf)
    assert list(s) == list(gap.LSST_IMAGE_COLUMNS)
    fwhm = 2.0 * math.sqrt(2.0 * math.log(2.0)) * sigma
    med = {k: float(np.median(v)) for k, v in s.items()}
    for kind in ("science", "difference"):
        assert med[f"{kind}_noise"] == pytest.approx(noise, rel=0.1)
        assert med[f"{kind}_noise_to_variance"] == pytest.approx(1.0, rel=0.1)
        assert med[f"{kind}_fwhm"] == pytest.approx(fwhm, rel=0.1)
        assert med[f"{kind}_background"] == pytest.approx(0.0, abs=0.2 * noise)
        # the central 5x5 of a sigma 2 Gaussian holds erf(2.5 / (2 sqrt 2))^2 = 0.62 of its flux;
        # the denominator adds the mean |noise| (0.8 sigma) of the 900 pixels
        centre = 0.62 * 20000 / (20000 + 0.8 * noise * 900)
        assert med[f"{kind}_centre_fraction"] == pytest.approx(centre, rel=0.15)
        assert med[f"{kind}_peak_snr"] == pytest.approx(20000 / (2 * math.pi * 4) / noise, rel=0.3)
        assert med[f"{kind}_psf_fwhm"] == 4.7
    assert med["template_noise"] == pytest.approx(noise / 4, rel=0.1)
    assert med["template_noise_to_variance"] == pytest.approx(2.0, rel=0.1)
    assert med["template_to_science_noise"] == pytest.approx(0.25, rel=0.1)
    # pure noise: the centre holds nothing, and 0.13% of the pixels lie below -3 sigma
    assert abs(med["template_centre_fraction"]) < 0.02
    assert np.mean(s["template_negative_fraction"]) == pytest.approx(0.00135, abs=0.001)
    assert np.all(s["science_nan_fraction"] == 0)


def test_lsst_image_statistics_edge_cases():
    cubes = rubin_cubes(3, 2.0, 5000.0, 40.0, seed=2)
    cubes[0] = np.nan  # a cube whose cutouts did not decode
    cubes[1, :, :, 1] = 0.0  # a constant template: no noise
    s = gap.image_statistics(cubes, "lsst")  # no variance, no PSF: those columns are NaN
    assert np.isnan(s["science_noise_to_variance"]).all() and np.isnan(s["science_psf_fwhm"]).all()
    assert all(np.isnan(s[c][0]) for c in gap.LSST_IMAGE_COLUMNS if not c.endswith("nan_fraction"))
    assert s["science_nan_fraction"][0] == 1.0
    assert np.isnan(s["template_noise"][1]) and np.isnan(s["template_negative_fraction"][1])
    assert gap.image_statistics(np.zeros((0, 30, 30, 3)), "lsst")["science_fwhm"].shape == (0,)
    with pytest.raises(ValueError, match="variance must be"):
        gap.image_statistics(cubes, "lsst", variance=np.zeros((3, 30, 30, 2)))
    with pytest.raises(ValueError, match="survey must be"):
        gap.image_statistics(cubes, "decam")


def test_psf_fwhm_of_psf_images_of_mixed_sizes():
    sigmas = [1.6, 2.0, 3.5]
    psfs = [gaussian_psf(41, 1.6), gaussian_psf(55, 2.0), None, gaussian_psf(41, 3.5)]
    got = gap.psf_image_fwhm(psfs)
    assert np.isnan(got[2])
    want = [2.0 * math.sqrt(2.0 * math.log(2.0)) * s for s in sigmas]
    assert got[[0, 1, 3]] == pytest.approx(want, rel=0.01)


def test_fits_images_reads_every_hdu_as_astropy_writes_them():
    from astropy.io import fits

    rng = np.random.default_rng(3)
    image = rng.normal(0, 40, (31, 31)).astype(np.float32)
    image[0, 0] = np.nan
    var = np.full((31, 31), 1600.0, np.float32)
    psf = gaussian_psf(41, 2.0)
    buf = io.BytesIO()
    fits.HDUList(
        [fits.PrimaryHDU(image), fits.ImageHDU(var, name="UNCERT"), fits.ImageHDU(psf)]
    ).writeto(buf)
    got = gap.fits_images(buf.getvalue())
    assert len(got) == 3
    np.testing.assert_array_equal(got[0], image.astype(np.float64))
    np.testing.assert_array_equal(got[1], var)
    np.testing.assert_array_equal(got[2], psf)
    with pytest.raises(ValueError, match="needs"):
        gap.fits_images(buf.getvalue()[:-3000])


@needs_rubin
def test_fits_images_matches_astropy_on_real_rubin_cutouts():
    from astropy.io import fits

    from tests.helpers import decoded_alerts

    alerts = decoded_alerts(REAL_DIRS[0])[:3]
    assert alerts
    for alert in alerts:
        for kind in STAMP_KINDS:
            data = alert.cutout_bytes(kind)
            with fits.open(io.BytesIO(data)) as hdul:
                want = [h.data for h in hdul]
            got = gap.fits_images(data)
            assert len(got) == len(want) == 3
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w.astype(np.float64))


# --- the report on the real alerts ----------------------------------------------------------------
@pytest.fixture(scope="module")
def rubin_sim(tmp_path_factory):
    """A small simulated night of Rubin first detections (Avro containers + labels.csv)."""
    if not RUBIN.is_dir():
        pytest.skip(f"real Rubin alerts not found at {RUBIN} (set STAMPFLOW_DATA)")
    from simulator.lsst import simulate_lsst

    out = tmp_path_factory.mktemp("rubin_sim")
    simulate_lsst(
        N_SIM, out, seed=3, fmt="avro", schema_dir=str(RUBIN_SCHEMAS), first_detections=True,
        workers=1,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def real_table():
    if not RUBIN.is_dir():
        pytest.skip(f"real Rubin alerts not found at {RUBIN} (set STAMPFLOW_DATA)")
    return gap.load_alert_table([str(d) for d in REAL_DIRS], skip_sample_data=True)


def scale_science(src, dst, factor: float) -> None:
    """Copy a simulated night with every science cutout's image multiplied by ``factor``."""
    from astropy.io import fits

    dst.mkdir()
    shutil.copy(src / "labels.csv", dst / "labels.csv")
    for path in sorted(src.glob("*.avro")):
        with path.open("rb") as f:
            reader = fastavro.reader(f)
            schema = reader.writer_schema
            records = list(reader)
        for r in records:
            with fits.open(io.BytesIO(r["cutoutScience"])) as hdul:
                hdul[0].data = hdul[0].data * np.float32(factor)
                buf = io.BytesIO()
                hdul.writeto(buf)
            r["cutoutScience"] = buf.getvalue()
        with (dst / path.name).open("wb") as f:
            fastavro.writer(f, fastavro.parse_schema(schema), records)


@needs_rubin
def test_gap_cli_on_rubin_alerts(rubin_sim, tmp_path, capsys):
    model = export_random_model(REAL_DIRS[1], tmp_path / "m", survey="lsst")
    out = tmp_path / "gap"
    # the whole directory: lsst-alert-packet's sample packets are skipped
    argv = ["gap", "--sim", str(rubin_sim), "--real", str(RUBIN), "--out", str(out)]
    assert stampflow([*argv, "--folds", "3", "--reference", str(model)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("survey lsst:") and "discriminator AUC" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["survey"] == "lsst" and report["inputs"]["survey"] == "auto"
    assert list(report["features"]) == list(FEATURES_LSST)
    for name in FEATURES_LSST:
        entry = report["features"][name]
        assert {"ks", "p", "real", "sim", "all"} <= set(entry), name
        assert entry["real"]["n"] == 24 and entry["sim"]["n"] > 0, name
    # every numeric diaSource field, booleans as 0/1
    fields = report["candidate_fields"]
    for name in ("psfFlux", "psfFluxErr", "snr", "reliability", "ixxPSF", "bboxSize", "isDipole"):
        assert name in fields, name
    assert fields["pixelFlags_crCenter"]["real"]["median"] in (0.0, 1.0)
    assert set(report["history"]) == {"n_prv_dia_sources", "n_prv_dia_forced_sources"}
    assert report["history"]["n_prv_dia_sources"]["real"]["median"] == 0  # first detections
    assert report["history"]["n_prv_dia_sources"]["all"]["real"]["p90"] > 100
    for kind in STAMP_KINDS:
        assert set(report["images"][kind]) == set(gap.LSST_IMAGE_STATS)
        for stat in ("noise", "fwhm", "psf_fwhm", "noise_to_variance"):
            assert report["images"][kind][stat]["sim"]["n"] > 0, (kind, stat)
    # real Rubin cutouts: the i-band difference noise is 37-46 nJy and agrees with its variance
    diff = report["images"]["difference"]
    assert 35 < diff["noise"]["real"]["median"] < 48
    assert diff["noise_to_variance"]["real"]["median"] == pytest.approx(1.0, abs=0.08)
    pop = report["population"]
    assert (pop["real"]["n"], pop["real"]["n_first"]) == (36, 24)
    assert (pop["sim"]["n"], pop["sim"]["n_first"]) == (N_SIM, N_SIM)
    assert pop["real"]["counts"]["skipped_sample_data"] == 2
    assert pop["real"]["counts"]["plane_errors"] == 0
    assert pop["matched_on"] == "first" and pop["bands"] == ["i"]  # the real first detections
    d = report["discriminator"]
    assert 0.0 <= d["auc"] <= 1.0 and 0.0 <= d["auc_without_position"] <= 1.0
    assert d["n_real"] == 24 and gap.MIN_MATCHED_LSST <= d["n_sim"] < N_SIM
    assert set(FEATURES_LSST) <= set(d["features"])
    assert report["worst"] == sorted(report["worst"], key=lambda w: -w["ks"])
    assert not {w["name"] for w in report["worst"]} & gap.LSST_NON_MEASUREMENT_FIELDS
    assert sum(report["sim_labels"].values()) == N_SIM
    ref = report["reference"]  # a random Rubin model, through the pipeline's featurisation
    assert ref["model"]["survey"] == "lsst" and ref["n"] + ref["n_dropped"] == N_SIM
    assert 0.0 <= ref["balanced_accuracy"] <= 1.0
    for png in ("gap_features.png", "gap_images.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_rubin
def test_a_broken_simulation_is_further_from_the_real_alerts(rubin_sim, real_table, tmp_path):
    broken_dir = tmp_path / "broken"
    scale_science(rubin_sim, broken_dir, 10.0)
    sim = gap.load_alert_table([str(rubin_sim)])
    broken = gap.load_alert_table([str(broken_dir)])
    assert np.array_equal(sim.candid, broken.candid)
    np.testing.assert_allclose(
        broken.images["science_noise"], 10 * sim.images["science_noise"], rtol=1e-4
    )
    good = gap.build_report(real_table, sim, folds=2)
    bad = gap.build_report(real_table, broken, folds=2)
    ks = bad["images"]["science"]["noise"]["ks"]
    assert ks > 0.95 and ks > good["images"]["science"]["noise"]["ks"] + 0.3
    assert "science" in bad["worst"][0]["name"]  # science_noise or template_to_science_noise
    assert bad["discriminator"]["auc"] >= good["discriminator"]["auc"]
    alone = {t["name"]: t["auc"] for t in bad["discriminator"]["top_features"]}
    assert alone["science_noise"] > 0.95
    # one half of the simulation against the other is near chance; against the broken other half
    # it is not
    half = np.arange(len(sim)) % 2 == 0

    def images(table, rows):
        return np.column_stack([table.images[c][rows] for c in gap.LSST_IMAGE_COLUMNS])

    same = gap.discriminator_auc(images(sim, half), images(sim, ~half), folds=3)
    apart = gap.discriminator_auc(images(sim, half), images(broken, ~half), folds=3)
    assert same < 0.7 < 0.95 < apart


@needs_rubin
def test_sample_data_packets_are_skipped_when_walking_a_directory():
    # the schema tree holds nothing but lsst-alert-packet's two made-up packets
    with pytest.raises(gap.GapError, match=r"\(2 in sample_data/ directories skipped\)"):
        gap.load_alert_table([str(RUBIN_SCHEMAS)], skip_sample_data=True)
    assert len(gap.load_alert_table([str(RUBIN_SCHEMAS)])) == 2
    sample = RUBIN_SCHEMAS / "10" / "0" / "sample_data"  # named: read
    named = gap.load_alert_table([str(sample)], skip_sample_data=True)
    assert list(named.candid) == [1231321321]


@needs_rubin
def test_one_survey_at_a_time_or_one_line_exit_2(rubin_sim, tmp_path, capsys):
    ztf = tmp_path / "ztf"
    ztf.mkdir()
    (ztf / "alert.avro").write_bytes(mini_container([mini_record(0)]))
    real = [str(d) for d in REAL_DIRS]

    def run(*argv):
        rc = stampflow(["gap", "--out", str(tmp_path / "o"), "--max-alerts", "5", *argv])
        return rc, capsys.readouterr().err.strip()

    rc, err = run("--sim", str(rubin_sim), "--real", str(ztf / "alert.avro"), *real)
    assert rc == 2 and "\n" not in err and "real alerts mix surveys" in err
    rc, err = run("--sim", str(rubin_sim), "--real", *real, "--survey", "ztf")
    assert rc == 2 and "\n" not in err and "is a lsst alert, not ztf (--survey ztf)" in err
    rc, err = run("--sim", str(ztf), "--real", *real)
    assert rc == 2 and "\n" not in err and err.startswith("stampflow gap: --sim:")
    assert "is a ztf alert, not lsst" in err and "--survey lsst" in err
    rc, err = run("--sim", str(rubin_sim), "--real", *real, "--reference", DEFAULT_MODEL)
    assert rc == 2 and "\n" not in err and "classifies ztf alerts; these are lsst" in err
    rc, err = run(
        "--sim", str(rubin_sim), "--real", *real, "--survey", "lsst", "--reference", DEFAULT_MODEL
    )
    assert rc == 2 and "\n" not in err and "classifies ztf alerts, not lsst" in err
