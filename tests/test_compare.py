"""``stampflow compare``: the pure agreement report on hand-made probabilities with known answers
(all alerts and first detections, SN precision), then the command end to end on the real alerts
(self-comparison, ALeRCE's model as reference, first detections) and the user's mistakes that must
be one line and exit code 2."""

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
    key_metrics,
    metrics_line,
    plot_compare,
    recovery_line,
    sn_precision,
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


def two(first: int, second: int) -> list[float]:
    """A row with 0.6 on ``first``, 0.25 on ``second`` and 0.05 on the other three."""
    row = [0.05] * 5
    row[first], row[second] = 0.6, 0.25
    return row


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


# --- first detections and SN precision (pure) ---------------------------------------------------
# Ten alerts; rows 1, 2, 5, 6, 7, 8 are first detections. The model's second class decides top-2.
HUNT_REF = soft([AGN, SN, SN, SN, VS, AST, AST, BOGUS, BOGUS, SN])
HUNT_MOD = np.array(
    [
        two(AGN, SN),  # agree
        two(SN, AGN),  # agree (first)
        two(VS, SN),  # SN called VS, SN second: top-2 hit (first)
        two(SN, VS),  # agree
        two(VS, AGN),  # agree
        two(SN, BOGUS),  # asteroid called SN: top-2 miss (first)
        two(BOGUS, AST),  # asteroid called bogus: top-2 hit (first)
        two(SN, VS),  # bogus called SN: top-2 miss (first)
        two(BOGUS, SN),  # agree (first)
        two(AGN, VS),  # SN called AGN: top-2 miss
    ]
)
HUNT_FIRST = [False, True, True, False, False, True, True, True, True, False]


def _hunt_report() -> dict:
    return agreement_report(HUNT_REF, HUNT_MOD, [(i, f"ZTF{i}") for i in range(10)], HUNT_FIRST)


def test_sn_precision_is_the_share_of_the_models_sn_the_reference_calls_sn():
    # The model calls rows 0, 2, 3 SN; the reference calls row 0 SN of them (and row 1, missed).
    assert sn_precision([SN, SN, VS, BOGUS, SN], [SN, VS, SN, SN, AGN]) == {
        "numerator": 1,
        "denominator": 3,
        "fraction": pytest.approx(1 / 3),
    }
    assert sn_precision([SN, SN], [SN, SN])["fraction"] == 1.0
    assert sn_precision([], []) == {"numerator": 0, "denominator": 0, "fraction": None}
    with pytest.raises(ValueError, match="length"):
        sn_precision([SN], [SN, SN])


def test_model_calling_nothing_sn_has_null_sn_precision():
    ref = soft([SN, SN, VS, BOGUS])
    mod = soft([AGN, VS, VS, BOGUS])
    r = agreement_report(ref, mod, first_detection=[True, False, True, True])
    assert r["sn_precision"] == {"numerator": 0, "denominator": 0, "fraction": None}
    assert r["sn_recall"] == {"numerator": 0, "denominator": 2, "fraction": 0.0}
    assert r["first_detections"]["sn_precision"]["fraction"] is None
    assert r["first_detections"]["sn_recall"] == {"numerator": 0, "denominator": 1, "fraction": 0.0}
    assert "sn_precision.fraction" in r["undefined"]
    assert "sn_precision.fraction" in r["first_detections"]["undefined"]
    assert "SN precision 0/0 (n/a) · SN recall 0/2 (0.0%) · bogus found 1/1" in metrics_line(r)
    text = json.dumps(r, allow_nan=False)
    assert '"sn_precision": {"numerator": 0, "denominator": 0, "fraction": null}' in text
    # Nor does the reference call anything SN: recall is null too.
    r = agreement_report(soft([VS, BOGUS]), soft([VS, AGN]))
    assert r["sn_recall"] == {"numerator": 0, "denominator": 0, "fraction": None}
    assert "sn_recall.fraction" in r["undefined"]


def test_all_alerts_and_first_detections_have_the_known_answers():
    r = _hunt_report()
    # All ten: agree on rows 0, 1, 3, 4, 8; model SN on rows 1, 3, 5, 7 (reference SN: 1, 3);
    # reference SN on rows 1, 2, 3, 9 (model SN: 1, 3); reference bogus 7, 8 (model bogus: 8).
    assert (r["n"], r["agreement_count"], r["agreement"]) == (10, 5, 0.5)
    assert r["top2_agreement"] == pytest.approx(0.7)  # misses: rows 5, 7, 9
    # p_e = (AGN 1*2 + SN 4*4 + VS 1*2 + asteroid 2*0 + bogus 2*2) / 100 = 0.24
    assert r["cohen_kappa"] == pytest.approx((0.5 - 0.24) / (1 - 0.24))
    assert r["sn_precision"] == {"numerator": 2, "denominator": 4, "fraction": 0.5}
    assert r["sn_recall"] == {"numerator": 2, "denominator": 4, "fraction": 0.5}
    assert r["recovery"]["bogus"] == {"count": 2, "recovered": 1, "fraction": 0.5}

    f = r["first_detections"]
    # Rows 1, 2, 5, 6, 7, 8: reference SN SN ast ast bogus bogus, model SN VS SN bogus SN bogus.
    assert (f["n"], f["agreement_count"], f["agreement"]) == (6, 2, pytest.approx(1 / 3))
    assert f["top2_agreement"] == pytest.approx(4 / 6)  # misses: rows 5, 7
    # p_e = (SN 2*3 + asteroid 2*0 + bogus 2*2) / 36 = 10/36; kappa = (12/36 - 10/36) / (26/36)
    assert f["cohen_kappa"] == pytest.approx(1 / 13)
    assert f["sn_precision"] == {"numerator": 1, "denominator": 3, "fraction": pytest.approx(1 / 3)}
    assert f["sn_recall"] == {"numerator": 1, "denominator": 2, "fraction": 0.5}
    assert recovery_line(f) == "AGN 0/0 · SN 1/2 · VS 0/0 · asteroid 0/2 · bogus 1/2"
    assert set(f["undefined"]) == {"recovery.AGN", "recovery.VS"}
    assert f["predicted_counts"]["model"] == {"AGN": 0, "SN": 3, "VS": 1, "asteroid": 0, "bogus": 2}
    assert [a["first_detection"] for a in r["alerts"]] == HUNT_FIRST
    json.dumps(r, allow_nan=False)


def test_first_detections_are_the_key_metrics_of_those_alerts_alone():
    r = _hunt_report()
    rows = np.flatnonzero(HUNT_FIRST)
    alone = agreement_report(HUNT_REF[rows], HUNT_MOD[rows])
    assert r["first_detections"] == key_metrics(HUNT_REF[rows], HUNT_MOD[rows])
    for key, value in r["first_detections"].items():
        assert alone[key] == value, key
    # Every alert a first detection: both sections say the same.
    everyone = agreement_report(HUNT_REF, HUNT_MOD, first_detection=[True] * 10)
    for key, value in everyone["first_detections"].items():
        assert everyone[key] == value, key
    # Without flags there is no section and no per-alert flag.
    plain = agreement_report(HUNT_REF, HUNT_MOD)
    assert "first_detections" not in plain and "first_detection" not in plain["alerts"][0]
    with pytest.raises(ValueError, match="first_detection"):
        agreement_report(HUNT_REF, HUNT_MOD, first_detection=[True] * 9)


def test_no_first_detection_gives_an_empty_section():
    r = agreement_report(HUNT_REF, HUNT_MOD, first_detection=[False] * 10)
    f = r["first_detections"]
    assert (f["n"], f["agreement_count"], f["agreement"], f["cohen_kappa"]) == (0, 0, 0.0, 0.0)
    assert f["top2_agreement"] == 0.0
    assert f["sn_precision"] == {"numerator": 0, "denominator": 0, "fraction": None}
    assert {"agreement", "cohen_kappa", "sn_precision.fraction"} <= set(f["undefined"])
    assert metrics_line(f) == "no alert"
    json.dumps(r, allow_nan=False)


def test_first_in_input_is_the_earliest_history_clean_alert_of_each_object():
    from model.compare import _first_in_input

    letter = {"stage": "stamps"}
    outcomes = [  # (objectId, order key, row, dead letter, no earlier detection in history)
        ("A", (2.0, 11), 0, None, True),  # A's two clean alerts (histories missing): later one
        ("A", (1.0, 10), 1, None, True),  # the earliest clean alert of A
        ("B", (1.0, 20), 2, None, False),  # an earlier detection in its history
        ("C", (1.0, 30), None, letter, True),  # C's earliest clean alert is dead: it still wins
        ("C", (2.0, 31), 3, None, True),
        (None, (), 4, None, True),  # no object: its history decides
        (None, (), 5, None, False),
    ]
    assert _first_in_input(outcomes) == [False, True, False, True, False, True, False]


def _result(report: dict, select: str = "all") -> dict:
    """``report`` with what :func:`compare` adds, as :func:`format_summary` reads it."""
    return {
        "model": {"name": "m", "version": "1"},
        "reference": {"name": "ref", "version": "2"},
        "select": select,
        "alerts_decoded": report["n"] + 2,
        "skipped": {"duplicate_candid": 2},
        "unusable": {"count": 0, "by_reason": {}},
        **report,
    }


def test_summary_lines_for_all_alerts_and_first_detections():
    lines = format_summary(_result(_hunt_report()), "out").splitlines()
    assert lines[0] == (
        "compare: m 1 vs reference ref 2 · 10 alerts compared (12 decoded; skipped: "
        "duplicate_candid 2)"
    )
    assert lines[1] == (
        "all alerts: agreement 50.0% (5/10) · top-2 70.0% · Cohen's kappa 0.34 · "
        "SN precision 2/4 (50.0%) · SN recall 2/4 (50.0%) · bogus found 1/2"
    )
    assert lines[2] == (
        "first detections: agreement 33.3% (2/6) · top-2 66.7% · Cohen's kappa 0.08 · "
        "SN precision 1/3 (33.3%) · SN recall 1/2 (50.0%) · bogus found 1/2"
    )
    assert lines[3] == (
        "recovery of the reference class: AGN 1/1 · SN 2/4 · VS 1/1 · asteroid 0/2 · bogus 1/2"
    )
    assert lines[4] == (
        "recovery on first detections: AGN 0/0 · SN 1/2 · VS 0/0 · asteroid 0/2 · bogus 1/2"
    )
    assert lines[5].startswith("mean |Δp|: AGN ")
    assert lines[6] == "outputs: out/ (compare.json, compare.csv, compare.png)"
    assert len(lines) == 7


def test_summary_under_select_first_has_one_metrics_line():
    report = agreement_report(HUNT_REF, HUNT_MOD, first_detection=[True] * 10)
    text = format_summary(_result(report, "first"))
    assert "all alerts" not in text and "recovery on first detections" not in text
    assert text.splitlines()[1].startswith("first detections: agreement 50.0% (5/10) · top-2 ")
    # No first detection among the compared alerts: said once, no empty recovery line.
    empty = format_summary(
        _result(agreement_report(HUNT_REF, HUNT_MOD, [(i, "") for i in range(10)], [False] * 10))
    )
    assert "first detections: no alert" in empty
    assert "recovery on first detections" not in empty


def test_csv_and_picture_carry_the_first_detections(tmp_path):
    r = _hunt_report()
    rows = list(csv.DictReader(write_csv(r, tmp_path / "c.csv").open()))
    assert [row["first_detection"] == "True" for row in rows] == HUNT_FIRST
    plain = list(
        csv.DictReader(write_csv(agreement_report(HUNT_REF, HUNT_MOD), tmp_path / "p.csv").open())
    )
    assert {row["first_detection"] for row in plain} == {""}
    width, height = png_size(plot_compare(r, tmp_path / "c.png"))
    assert width > 1000 and height > 900
    # No SN called by the model, no first detection: the bars say n/a, the picture is drawn.
    none = agreement_report(soft([SN, VS]), soft([VS, VS]), first_detection=[False, False])
    assert png_size(plot_compare(none, tmp_path / "none.png"))[1] > 900


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


#: Distinct real 63x63 alerts without an earlier detection in their history (37 such distinct
#: alerts, one with a stamp that is not 63x63), as ``--select first`` compares them.
REAL_FIRST_DETECTIONS = 36


def _assert_first_detections_consistent(result: dict) -> None:
    """The first-detection section counts what the per-alert flags say."""
    first = [a for a in result["alerts"] if a["first_detection"]]
    f = result["first_detections"]
    assert f["n"] == len(first) <= result["n"]
    assert f["agreement_count"] == sum(a["agree"] for a in first)
    assert sum(v["count"] for v in f["recovery"].values()) == f["n"]
    assert sum(v["recovered"] for v in f["recovery"].values()) == f["agreement_count"]
    for section, alerts in ((result, result["alerts"]), (f, first)):
        model_sn = [a for a in alerts if a["model_class"] == "SN"]
        both = sum(a["reference_class"] == "SN" for a in model_sn)
        assert section["sn_precision"]["denominator"] == len(model_sn)
        assert section["sn_precision"]["numerator"] == both
        assert section["sn_recall"]["numerator"] == both == section["recovery"]["SN"]["recovered"]
        assert section["sn_recall"]["denominator"] == section["recovery"]["SN"]["count"]


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
        "sn_precision",
        "sn_recall",
        "first_detections",
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
    assert r["model"]["feature_set"] == "alerce26"  # the shipped model's (docs/model.md)
    assert all(a["model_probabilities"] == a["reference_probabilities"] for a in r["alerts"])
    _assert_first_detections_consistent(r)
    f = r["first_detections"]
    assert f["n"] == REAL_FIRST_DETECTIONS
    assert f["agreement"] == 1.0 and f["cohen_kappa"] == pytest.approx(1.0)
    model_sn = r["predicted_counts"]["model"]["SN"]
    assert model_sn > 0
    assert r["sn_precision"] == {"numerator": model_sn, "denominator": model_sn, "fraction": 1.0}
    out = tmp_path / "cmp"
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert len(rows) == 220
    assert sum(row["first_detection"] == "True" for row in rows) == REAL_FIRST_DETECTIONS
    width, height = png_size(out / "compare.png")
    assert width > 1000 and height > 900
    printed = capsys.readouterr().out
    assert "all alerts: agreement 100.0% (220/220)" in printed
    assert f"first detections: agreement 100.0% ({REAL_FIRST_DETECTIONS}/" in printed
    assert f"SN precision {model_sn}/{model_sn} (100.0%)" in printed
    assert "recovery of the reference class: AGN " in printed


@needs_real
def test_first_detections_only(tmp_path):
    code, r = _compare(tmp_path, DEFAULT_MODEL, DEFAULT_MODEL, "--select", "first")
    assert code == 0
    assert r["select"] == "first"
    assert 0 < r["n"] < 220
    assert r["n"] == r["first_detections"]["n"] == REAL_FIRST_DETECTIONS
    assert all(a["first_detection"] for a in r["alerts"])
    _assert_first_detections_consistent(r)
    for key, value in r["first_detections"].items():
        assert r[key] == value, key
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
    assert r["model"]["feature_set"] == "alerce26"
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
    _assert_first_detections_consistent(r)
    assert r["first_detections"]["n"] == REAL_FIRST_DETECTIONS
    # The first detections --select all finds are the alerts --select first compares.
    code, first = _compare(tmp_path / "first", DEFAULT_MODEL, alerce_model, "--select", "first")
    assert code == 0
    flagged = {a["candid"] for a in r["alerts"] if a["first_detection"]}
    assert flagged == {a["candid"] for a in first["alerts"]}
    for key in ("n", "agreement_count", "top2_agreement", "recovery", "sn_precision", "sn_recall"):
        assert r["first_detections"][key] == first[key], key
    lines = format_summary(r).splitlines()
    assert [line.split(":")[0] for line in lines[1:]] == [
        "all alerts",
        "first detections",
        "recovery of the reference class",
        "recovery on first detections",
        "mean |Δp|",
    ]


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
