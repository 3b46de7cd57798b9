"""``stampflow gap``: image statistics with known answers, KS, AUC, discriminator, reference
accuracy, and the CLI on a tiny simulation against a few real alerts (the report must hold every
production feature)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline import cli
from simulator import gap
from simulator.core import simulate
from tests.helpers import REAL, default_model_features, needs_real
from transforms.schema import CLASS_NAMES, FEATURES_PRODUCTION, STAMP_KINDS

# A handful of real alerts: 22 from a night of first detections (21 with no earlier detection in
# prv_candidates; schema 1.8) and 12 repeat detections (3.3).
REAL_FIRST = REAL / "AmpelProject__Ampel-ZTF" / "alerts" / "recent_alerts.tar.gz"
REAL_REPEAT = REAL / "dmitryduev__kowalski" / "data" / "ztf_alerts" / "20200202"


def gaussian_stamps(
    n: int, sigma: float, amp: float, bkg: float, noise: float, template_noise: float, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:63, :63]
    g = amp * np.exp(-((x - 31.4) ** 2 + (y - 30.7) ** 2) / (2 * sigma**2))
    sci = bkg + g + rng.normal(0, noise, (n, 63, 63))
    tpl = 0.5 * bkg + g + rng.normal(0, template_noise, (n, 63, 63))
    diff = g + rng.normal(0, noise, (n, 63, 63))
    return np.stack([sci, tpl, diff], axis=-1).astype(np.float32)


@pytest.mark.parametrize(("sigma", "amp"), [(0.9, 40.0), (1.5, 200.0), (2.5, 1000.0)])
def test_image_statistics_known_gaussian(sigma, amp):
    stamps = gaussian_stamps(30, sigma, amp, bkg=100.0, noise=5.0, template_noise=2.0, seed=1)
    s = gap.image_statistics(stamps)
    assert set(s) == set(gap.IMAGE_COLUMNS)
    fwhm = 2.0 * math.sqrt(2.0 * math.log(2.0)) * sigma
    for kind in STAMP_KINDS:
        assert s[f"{kind}_fwhm"].shape == (30,)
        assert np.median(s[f"{kind}_fwhm"]) == pytest.approx(fwhm, rel=0.1)
        assert np.all(s[f"{kind}_nan_fraction"] == 0)
    assert np.median(s["science_background"]) == pytest.approx(100.0, abs=0.5)
    assert np.median(s["template_background"]) == pytest.approx(50.0, abs=0.5)
    assert np.median(s["difference_background"]) == pytest.approx(0.0, abs=0.5)
    assert np.median(s["science_noise"]) == pytest.approx(5.0, rel=0.1)
    assert np.median(s["template_noise"]) == pytest.approx(2.0, rel=0.1)
    assert np.median(s["template_to_science_noise"]) == pytest.approx(0.4, rel=0.1)
    # the central 5x5 maximum sits on the Gaussian's peak plus at most a few sigma of noise
    assert np.median(s["science_peak_snr"]) == pytest.approx(amp / 5.0, rel=0.25, abs=2.0)


def test_image_statistics_nan_and_empty_stamps():
    stamps = gaussian_stamps(4, 1.5, 200.0, 100.0, 5.0, 2.0, seed=2)
    stamps[0, :10, :, 0] = np.nan  # 10 of 63 rows of the science cutout
    stamps[1] = np.nan  # nothing at all
    stamps[2, :, :, 2] = 0.0  # a constant difference: zero noise
    s = gap.image_statistics(stamps)
    assert s["science_nan_fraction"][0] == pytest.approx(10 / 63)
    assert s["science_fwhm"][0] == pytest.approx(3.53, rel=0.1)  # the source is untouched
    assert all(np.isnan(s[c][1]) for c in gap.IMAGE_COLUMNS if not c.endswith("nan_fraction"))
    assert s["science_nan_fraction"][1] == 1.0
    assert np.isnan(s["difference_noise"][2]) and np.isnan(s["difference_peak_snr"][2])
    with pytest.raises(ValueError, match="stamps must be"):
        gap.image_statistics(np.zeros((2, 63, 63)))
    assert gap.image_statistics(np.zeros((0, 63, 63, 3)))["science_fwhm"].shape == (0,)


def test_ks_statistic_known_values():
    assert gap.ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert gap.ks_statistic([1, 2, 3], [4, 5, 6]) == 1.0
    assert gap.ks_statistic([0, 1, 2, 3], [2, 3, 4, 5]) == 0.5
    assert gap.ks_statistic([0, 1, np.nan, 2, 3], [2, 3, 4, np.inf, 5]) == 0.5
    assert math.isnan(gap.ks_statistic([np.nan], [1.0]))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200), rng.normal(1.0, 1.0, size=150)
    grid = np.concatenate([a, b])
    brute = max(abs(np.mean(a <= g) - np.mean(b <= g)) for g in grid)
    assert gap.ks_statistic(a, b) == pytest.approx(brute)
    assert gap.ks_pvalue(gap.ks_statistic(a, b), 200, 150) < 1e-3
    same = gap.ks_statistic(rng.normal(size=200), rng.normal(size=200))
    assert gap.ks_pvalue(same, 200, 200) > 0.01


def test_auc_matches_pair_counting():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=120), 1)  # plenty of ties
    pos = rng.random(120) < 0.4
    pairs = [(p > q) + 0.5 * (p == q) for p in scores[pos] for q in scores[~pos]]
    assert gap.auc(scores, pos) == pytest.approx(np.mean(pairs))
    assert math.isnan(gap.auc([1.0, 2.0], [True, True]))


def test_discriminator_auc_chance_and_separable():
    rng = np.random.default_rng(4)
    same = gap.discriminator_auc(rng.normal(size=(300, 3)), rng.normal(size=(400, 3)))
    assert abs(same - 0.5) < 0.08
    real = rng.normal(size=(300, 3))
    shifted = rng.normal(size=(400, 3))
    shifted[:, 1] += 4.0
    assert gap.discriminator_auc(real, shifted) > 0.97
    # a difference in spread only (same mean) is found too: the columns are binned
    wide = rng.normal(size=(400, 3))
    wide[:, 2] *= 3.0
    assert gap.discriminator_auc(real, wide) > 0.7


def test_discriminator_report_ranks_the_giveaway_column():
    rng = np.random.default_rng(5)
    real = {"a": rng.normal(size=200), "b": rng.normal(size=200), "ra": rng.normal(size=200)}
    sim = {"a": rng.normal(size=300), "b": rng.normal(2.0, 1.0, 300), "ra": rng.normal(size=300)}
    sim["a"][:30] = np.nan  # NaN is a bin of its own
    d = gap.discriminator_report(real, sim, ["a", "b", "ra", "missing"], folds=4)
    assert d["features"] == ["a", "b", "ra"]
    assert d["top_features"][0]["name"] == "b"
    assert d["auc"] > 0.8 and d["auc_without_position"] > 0.8
    assert (d["n_real"], d["n_sim"], d["folds"]) == (200, 300, 4)


def test_reference_accuracy_per_class_and_subtype():
    labels = ["SN", "SN", "SN", "SN", "AGN", "AGN", "bogus", "bogus"]
    subtypes = ["hosted", "hosted", "hostless", "hostless", "nuclear", "nuclear", "dipole", ""]
    predicted = ["SN", "SN", "SN", "asteroid", "AGN", "AGN", "bogus", "bogus"]
    probs = np.eye(len(CLASS_NAMES))[[CLASS_NAMES.index(c) for c in predicted]]
    r = gap.reference_accuracy(probs, labels, subtypes)
    assert r["class_recall"] == {"AGN": 1.0, "SN": 0.75, "bogus": 1.0}
    assert r["balanced_accuracy"] == pytest.approx((1 + 0.75 + 1) / 3)
    assert r["subtype_recall"]["SN/hostless"] == {
        "n": 2,
        "recall": 0.5,
        "predicted": {"SN": 1, "asteroid": 1},
    }
    assert set(r["subtype_recall"]) == {"SN/hosted", "SN/hostless", "AGN/nuclear", "bogus/dipole",
                                        "bogus"}  # fmt: skip
    assert r["confusion"][CLASS_NAMES.index("SN")][CLASS_NAMES.index("asteroid")] == 1
    assert not r["meets_goals"]
    assert r["failing"] == ["subtype SN/hostless recall 0.500 < 0.75"]


def test_compare_columns_summaries():
    real = {"x": np.array([1.0, 2.0, 3.0, np.nan]), "s": np.array([-999.0, 0.5, 0.6, 0.7])}
    sim = {"x": np.array([1.0, 2.0, 3.0]), "s": np.array([0.5, 0.6, 0.7, 0.8]), "only": [1.0]}
    c = gap.compare_columns(real, sim)
    assert set(c) == {"x", "s"}
    assert c["x"]["ks"] == 0.0 and c["x"]["real"]["null_frac"] == 0.25
    assert c["x"]["real"]["median"] == 2.0 and c["x"]["real"]["n"] == 3
    assert c["s"]["real"]["sentinel_frac"] == 0.25 and c["s"]["sim"]["sentinel_frac"] == 0.0


def stampflow(argv: list[str]) -> int:
    """``stampflow ARGV`` as the entry point parses and dispatches it, minus the TensorFlow
    start-up muting of :func:`pipeline.cli.main` (a gap run without ``--reference`` needs no TF)."""
    args = cli.build_parser(argv).parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def tiny_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    simulate(60, out, seed=1, workers=1)
    return out


@needs_real
def test_gap_cli_report_holds_every_feature(tiny_sim, tmp_path, capsys):
    out = tmp_path / "gap"
    rc = stampflow(
        ["gap", "--sim", str(tiny_sim), "--real", str(REAL_FIRST), str(REAL_REPEAT),
         "--out", str(out), "--folds", "3"]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "discriminator AUC" in printed and "worst KS" in printed
    report = json.loads((out / "report.json").read_text())
    # the test that fails if the report misses a feature
    missing = [f for f in FEATURES_PRODUCTION if f not in report["features"]]
    assert not missing, f"report.json lacks features {missing}"
    for name in FEATURES_PRODUCTION:
        entry = report["features"][name]
        assert {"ks", "p", "real", "sim", "all"} <= set(entry), name
        assert entry["real"]["n"] + entry["sim"]["n"] > 0, name
    for kind in STAMP_KINDS:
        assert set(report["images"][kind]) == set(gap.IMAGE_STATS)
        assert report["images"][kind]["fwhm"]["sim"]["n"] > 0
    assert "template_to_science_noise" in report["images"]
    # raw candidate fields present in both sets, e.g. the ones the features do not cover
    for name in ("diffmaglim", "scorr", "chipsf", "elong", "magzpsci"):
        assert name in report["candidate_fields"], name
    pop = report["population"]
    assert pop["real"]["n"] == 34 and pop["real"]["n_first"] >= gap.MIN_MATCHED
    assert pop["matched_on"] == "first" and pop["sim"]["n"] == 60
    d = report["discriminator"]
    assert 0.0 <= d["auc"] <= 1.0 and d["n_real"] == pop["real"]["n_first"]
    assert set(FEATURES_PRODUCTION) <= set(d["features"])
    assert 0 < len(report["worst"]) <= 15
    assert report["worst"] == sorted(report["worst"], key=lambda w: -w["ks"])
    assert report["sim_labels"] and sum(report["sim_labels"].values()) == 60
    for png in ("gap_features.png", "gap_images.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_real
def test_gap_reference_on_the_labelled_sim(tiny_sim, tmp_path):
    report = gap.run_gap(
        [str(tiny_sim)],
        [str(REAL_FIRST)],
        str(tmp_path / "gap"),
        reference="model/default",
        folds=3,
        plots=False,
    )
    ref = report["reference"]
    labels = gap.read_sim_labels(tiny_sim / "labels.csv")
    assert ref["n"] + ref["n_dropped"] == 60
    assert ref["model"]["features"] == list(default_model_features())
    assert set(ref["class_recall"]) == {r["class"] for r in labels.values()}
    subtypes = {gap._subtype_key(r["class"], r["subtype"]) for r in labels.values()}
    assert set(ref["subtype_recall"]) == subtypes
    assert 0.0 <= ref["balanced_accuracy"] <= 1.0
    assert sum(map(sum, ref["confusion"])) == ref["n"]


def test_gap_user_mistakes_exit_2(tiny_sim, tmp_path, capsys):
    def run(*argv):
        rc = stampflow(["gap", *argv])
        return rc, capsys.readouterr().err.strip()

    rc, err = run("--sim", str(tmp_path / "nope"), "--real", str(tiny_sim), "--out", str(tmp_path))
    assert rc == 2 and err.startswith("stampflow gap: --sim") and "\n" not in err
    out = str(tmp_path / "o")
    rc, err = run("--sim", str(tiny_sim), "--real", str(tmp_path / "none*.avro"), "--out", out)
    assert rc == 2 and "real alerts" in err and "\n" not in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, err = run("--sim", str(tiny_sim), "--real", str(tiny_sim), "--out", str(blocker / "x"))
    assert rc == 2 and "cannot write to --out" in err and "\n" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, err = run("--sim", str(empty), "--real", str(tiny_sim), "--out", str(tmp_path / "o"))
    assert rc == 2 and "\n" not in err
    rc, err = run(
        "--sim", str(tiny_sim), "--real", str(tiny_sim), "--out", str(tmp_path / "o"),
        "--reference", str(tmp_path),
    )  # fmt: skip
    assert rc == 2 and "not an exported stampflow model" in err and "\n" not in err
