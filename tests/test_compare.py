"""``stampflow compare``: the pure agreement report on hand-made probabilities with known answers,
then the command end to end on the real alerts (self-comparison, ALeRCE's model as reference,
first detections) and the user's mistakes that must be one line and exit code 2."""

from __future__ import annotations

import csv
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from model.compare import (
    agreement_report,
    format_summary,
    imputed_features,
    plot_compare,
    recovery_line,
    write_csv,
)
from pipeline.cli import main
from tests.helpers import REAL, needs_real
from transforms.schema import CLASS_NAMES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "model" / "default"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
AGN, SN, VS, AST, BOGUS = range(5)


def soft(classes: list[int], top: float = 0.6) -> np.ndarray:
    """Rows with ``top`` on the given class and the rest spread evenly over the other four."""
    p = np.full((len(classes), 5), (1.0 - top) / 4)
    p[np.arange(len(classes)), classes] = top
    return p


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --- the pure report ----------------------------------------------------------------------------
def test_agreement_confusion_and_recovery_have_the_known_answers():
    ref = soft([AGN, SN, SN, SN, VS, VS, AST, BOGUS])
    mod = soft([AGN, SN, SN, VS, VS, AGN, AST, VS])
    ids = [(100 + i, f"ZTF{i}") for i in range(8)]
    r = agreement_report(ref, mod, ids)

    assert r["n"] == 8
    assert r["agreement_count"] == 5
    assert r["agreement"] == pytest.approx(5 / 8)
    counts = np.zeros((5, 5), int)
    for i, j in [(AGN, AGN), (SN, SN), (SN, SN), (SN, VS), (VS, VS), (VS, AGN), (AST, AST)]:
        counts[i, j] += 1
    counts[BOGUS, VS] += 1
    assert r["confusion_matrix"]["counts"] == counts.tolist()  # rows reference, columns model
    assert r["confusion_matrix"]["row_fractions"][SN] == pytest.approx([0, 2 / 3, 1 / 3, 0, 0])
    assert r["recovery"]["SN"] == {"count": 3, "recovered": 2, "fraction": pytest.approx(2 / 3)}
    assert r["recovery"]["VS"] == {"count": 2, "recovered": 1, "fraction": 0.5}
    assert r["recovery"]["bogus"] == {"count": 1, "recovered": 0, "fraction": 0.0}
    assert r["predicted_counts"]["reference"] == {
        "AGN": 1,
        "SN": 3,
        "VS": 2,
        "asteroid": 1,
        "bogus": 1,
    }
    assert r["predicted_counts"]["model"] == {"AGN": 2, "SN": 2, "VS": 3, "asteroid": 1, "bogus": 0}
    # Cohen's kappa: p_o = 5/8, p_e = (1*2 + 3*2 + 2*3 + 1*1 + 1*0) / 64 = 15/64.
    assert r["cohen_kappa"] == pytest.approx((5 / 8 - 15 / 64) / (1 - 15 / 64))
    assert recovery_line(r) == "AGN 1/1 · SN 2/3 · VS 1/2 · asteroid 1/1 · bogus 0/1"
    assert r["undefined"] == {}
    third = r["alerts"][3]
    assert third["candid"] == 103 and third["objectId"] == "ZTF3"
    assert (third["reference_class"], third["model_class"], third["agree"]) == ("SN", "VS", False)
    assert third["model_probabilities"] == pytest.approx(mod[3].tolist())
    json.dumps(r, allow_nan=False)  # JSON-serialisable, no NaN


def test_probability_differences_and_top2_are_exact():
    ref = np.array([[0.5, 0.3, 0.1, 0.05, 0.05], [0.1, 0.2, 0.3, 0.2, 0.2]])
    mod = np.array([[0.3, 0.5, 0.1, 0.05, 0.05], [0.1, 0.2, 0.3, 0.2, 0.2]])
    r = agreement_report(ref, mod)
    d = r["probability_difference"]
    assert d["per_class"]["AGN"] == pytest.approx(
        {"mean": -0.1, "mean_abs": 0.1, "median_abs": 0.1, "max_abs": 0.2}
    )
    assert d["per_class"]["SN"]["mean"] == pytest.approx(0.1)
    assert d["per_class"]["VS"] == pytest.approx(
        {"mean": 0.0, "mean_abs": 0.0, "median_abs": 0.0, "max_abs": 0.0}
    )
    assert d["max_abs"] == pytest.approx(0.2)
    assert d["mean_abs"] == pytest.approx(0.4 / 10)
    assert d["median_abs"] == 0.0
    assert d["mean_total_variation"] == pytest.approx((0.2 + 0.0) / 2)
    # Alert 0: reference AGN, model SN with AGN second -> a top-2 hit but not an agreement.
    assert r["agreement"] == 0.5
    assert r["top2_agreement"] == 1.0
    assert r["top2_agreement_reverse"] == 1.0
    ids = [a["candid"] for a in r["alerts"]]
    assert ids == [0, 1]  # row numbers without ids


def test_top2_misses_when_the_reference_class_is_third():
    ref = soft([BOGUS])
    mod = np.array([[0.5, 0.3, 0.1, 0.0, 0.1 - 1e-3]])
    mod = mod / mod.sum()
    r = agreement_report(ref, mod)
    assert r["top2_agreement"] == 0.0  # bogus is third of the model's classes
    # The model's AGN ties with three classes behind the reference's bogus: a tie counts as in.
    assert r["top2_agreement_reverse"] == 1.0


def test_a_class_the_reference_never_gives_is_zero_and_listed_as_undefined():
    ref = soft([AGN, SN, SN, VS, BOGUS])  # no asteroid
    mod = soft([AGN, SN, AST, VS, BOGUS])
    r = agreement_report(ref, mod)
    assert r["recovery"]["asteroid"] == {"count": 0, "recovered": 0, "fraction": 0.0}
    assert "recovery.asteroid" in r["undefined"]
    assert r["confusion_matrix"]["counts"][AST] == [0, 0, 0, 0, 0]
    assert r["confusion_matrix"]["row_fractions"][AST] == [0.0] * 5
    assert r["confusion_matrix"]["counts"][SN][AST] == 1  # the model's asteroid still counted
    assert r["predicted_counts"]["model"]["asteroid"] == 1
    assert r["agreement"] == pytest.approx(4 / 5)
    assert "asteroid 0/0" in recovery_line(r)


def test_identical_models_agree_completely():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=50)
    r = agreement_report(p, p.copy())
    assert r["agreement"] == 1.0 and r["top2_agreement"] == 1.0
    assert r["cohen_kappa"] == pytest.approx(1.0)
    assert r["probability_difference"]["max_abs"] == 0.0
    assert np.trace(r["confusion_matrix"]["counts"]) == 50


def test_one_class_everywhere_leaves_kappa_undefined():
    p = soft([SN, SN, SN])
    r = agreement_report(p, p)
    assert r["agreement"] == 1.0
    assert r["cohen_kappa"] == 0.0 and "cohen_kappa" in r["undefined"]


@pytest.mark.parametrize(
    ("ref", "mod", "ids", "match"),
    [
        (np.zeros((0, 5)), np.zeros((0, 5)), None, "no alerts"),
        (soft([0, 1]), soft([0]), None, "rows"),
        (soft([0]), np.ones((1, 4)) / 4, None, "shape"),
        (soft([0]), np.full((1, 5), 0.5), None, "sum to 1"),
        (soft([0]), np.array([[np.nan, 0.5, 0.5, 0.0, 0.0]]), None, "finite"),
        (soft([0, 1]), soft([0, 1]), [(1, "a")], "ids"),
    ],
)
def test_bad_inputs_are_refused(ref, mod, ids, match):
    with pytest.raises(ValueError, match=match):
        agreement_report(ref, mod, ids)


def test_imputed_features_are_the_nulls_featurisation_imputes():
    cand = {"fwhm": None, "sgscore1": 0.5, "chinr": math.nan, "classtar": "x", "ra": None}
    names = ["sgscore1", "fwhm", "chinr", "classtar", "ra", "ecl_lat"]
    assert imputed_features(cand, names) == ["fwhm", "chinr", "classtar"]  # ra is required


def test_csv_and_picture_from_a_small_report(tmp_path):
    ref = soft([AGN, SN, SN, VS, BOGUS, AST])
    mod = soft([AGN, SN, VS, VS, AGN, AST], top=0.5)
    r = agreement_report(ref, mod, [(10 + i, f"ZTF{i}") for i in range(6)])
    rows = list(csv.DictReader(write_csv(r, tmp_path / "c.csv").open()))
    assert [row["candid"] for row in rows] == [str(10 + i) for i in range(6)]
    assert rows[2]["reference_class"] == "SN" and rows[2]["model_class"] == "VS"
    assert float(rows[2]["max_abs_dp"]) == pytest.approx(0.6 - 0.125)  # p_SN
    assert {f"model_p_{c}" for c in CLASS_NAMES} <= set(rows[0])
    width, height = png_size(plot_compare(r, tmp_path / "c.png"))
    assert width > 1000 and height > 500


# --- the command on real alerts -----------------------------------------------------------------
def _compare(tmp_path: Path, model: Path, reference: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--model",
            str(model),
            "--reference",
            str(reference),
            "--alerts",
            str(REAL),
            "--out",
            str(out),
            *extra,
        ]
    )
    result = json.loads((out / "compare.json").read_text()) if code == 0 else {}
    return code, result


def _assert_reconciles(result: dict) -> None:
    after_decode = sum(
        n for s, n in result["unusable"]["by_stage"].items() if s not in ("read", "decode")
    )
    skipped = sum(result["skipped"].values())
    assert result["alerts_decoded"] == result["n"] + skipped + after_decode


@needs_real
def test_self_comparison_on_real_alerts_agrees_completely(tmp_path, capsys):
    code, r = _compare(tmp_path, DEFAULT_MODEL, DEFAULT_MODEL)
    assert code == 0
    for key in (
        "model",
        "reference",
        "n",
        "unusable",
        "skipped",
        "agreement",
        "top2_agreement",
        "confusion_matrix",
        "recovery",
        "predicted_counts",
        "probability_difference",
        "alerts",
    ):
        assert key in r, key
    # 225 real alerts: 2 copies of one alert in other files, 3 stamps that are not 63x63.
    assert r["alerts_decoded"] == 225
    assert r["skipped"] == {"duplicate_candid": 2}
    assert r["unusable"]["by_reason"] == {"stamps:size": 3}
    assert r["n"] == 220 == len({a["candid"] for a in r["alerts"]})
    _assert_reconciles(r)
    assert r["agreement"] == 1.0 and r["top2_agreement"] == 1.0
    assert r["probability_difference"]["max_abs"] == 0.0
    counts = np.array(r["confusion_matrix"]["counts"])
    assert counts.sum() == 220 and np.trace(counts) == 220
    assert r["model"]["name"] == r["reference"]["name"] == "stampflow-sim"
    assert r["model"]["feature_set"] == "production"
    assert all(a["model_probabilities"] == a["reference_probabilities"] for a in r["alerts"])
    out = tmp_path / "cmp"
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert len(rows) == 220
    width, height = png_size(out / "compare.png")
    assert width > 1000 and height > 500
    printed = capsys.readouterr().out
    assert "agreement 100.0% (220/220)" in printed
    assert "recovery of the reference class: AGN " in printed


@needs_real
def test_first_detections_only(tmp_path):
    code, r = _compare(tmp_path, DEFAULT_MODEL, DEFAULT_MODEL, "--select", "first")
    assert code == 0
    assert r["select"] == "first"
    assert 0 < r["n"] < 220
    assert r["skipped"]["earlier_detection_in_history"] > 100
    _assert_reconciles(r)
    objects = [a["objectId"] for a in r["alerts"]]
    assert len(objects) == len(set(objects))  # one alert per object

    from tests.helpers import decoded_alerts

    by_candid = {a.candid: a for a in decoded_alerts(REAL)}
    for entry in r["alerts"]:
        alert = by_candid[entry["candid"]]
        earlier = [
            p
            for p in alert.prv_candidates
            if p.get("candid") is not None and p.get("jd") is not None and p["jd"] < alert.jd
        ]
        assert not earlier, entry["candid"]


# --- against ALeRCE's published model (26 features) --------------------------------------------
@pytest.fixture(scope="module")
def alerce_model(tmp_path_factory):
    from tests.helpers import ALERCE

    if not (ALERCE / "best_model_so_far").is_dir() or not REAL.is_dir():
        pytest.skip(f"ALeRCE checkpoints or real alerts not found under {ALERCE.parent}")
    from model.alerce import import_alerce

    out = tmp_path_factory.mktemp("alerce") / "best_model_so_far"
    import_alerce(ALERCE / "best_model_so_far", out)
    return out


def test_reference_probabilities_are_alerce_tf1_graph(tmp_path, alerce_model):
    """With ALeRCE's weights as reference, the reference probabilities equal ALeRCE's own TF1
    graph on ALeRCE's preprocessing (independent of our featurisation), alert by alert."""
    from model.alerce import find_feature_stats
    from model.alerce_reference import AlerceGraph
    from tests.helpers import ALERCE, load_real_alerts, reference_inputs

    code, r = _compare(tmp_path, DEFAULT_MODEL, alerce_model)
    assert code == 0
    assert r["reference"]["feature_set"] == "alerce26"
    assert r["model"]["feature_set"] == "production"
    assert r["n"] == 220
    _assert_reconciles(r)
    assert r["agreement"] < 1.0  # a model trained on simulated alerts is not ALeRCE

    stats = find_feature_stats(ALERCE / "best_model_so_far")
    alerts, feats, stamps = reference_inputs(load_real_alerts(), stats)
    ckpt = ALERCE / "best_model_so_far"
    graph = AlerceGraph(ckpt / "model.meta", str(ckpt / "model"))
    try:
        expected = dict(zip((a.candid for a in alerts), graph.predict(stamps, feats), strict=True))
    finally:
        graph.close()
    assert set(expected) == {a["candid"] for a in r["alerts"]}
    got = np.array([a["reference_probabilities"] for a in r["alerts"]])
    want = np.array([expected[a["candid"]] for a in r["alerts"]])
    assert np.abs(got - want).max() <= 1e-4
    ref_classes = [a["reference_class"] for a in r["alerts"]]
    assert ref_classes == [CLASS_NAMES[int(i)] for i in want.argmax(1)]
    recovered = sum(v["recovered"] for v in r["recovery"].values())
    assert recovered == r["agreement_count"]
    assert format_summary(r).count("\n") == 3


# --- a user's mistakes: one line on stderr, exit code 2 -----------------------------------------
def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("stampflow compare: ")
    return err


def test_a_wrong_model_directory_exits_2_with_one_line(tmp_path, capsys):
    argv = ["compare", "--model", str(tmp_path / "nope"), "--reference", str(DEFAULT_MODEL)]
    argv += ["--alerts", str(tmp_path), "--out", str(tmp_path / "out")]
    err = _one_line_error(capsys, argv)
    assert "--model" in err and "not an exported stampflow model" in err
    assert not (tmp_path / "out").exists()


def test_no_matching_alerts_exits_2_with_one_line(tmp_path, capsys):
    argv = ["compare", "--model", str(DEFAULT_MODEL), "--reference", str(DEFAULT_MODEL)]
    argv += ["--alerts", str(tmp_path / "*.avro"), "--out", str(tmp_path / "out")]
    assert "no_match" in _one_line_error(capsys, argv)


def test_an_unwritable_out_exits_2_with_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    argv = ["compare", "--model", str(DEFAULT_MODEL), "--reference", str(DEFAULT_MODEL)]
    argv += ["--alerts", str(tmp_path), "--out", str(blocker / "out")]
    assert "--out" in _one_line_error(capsys, argv)
