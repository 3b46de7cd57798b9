"""Evaluation metrics against hand-computed values, edge cases, and the written report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.metrics import (
    SN_INDEX,
    evaluate,
    expected_calibration_error,
    format_report,
    log_loss,
    rates_at_threshold,
    reliability_bins,
    roc_auc,
    roc_curve,
    top_k_accuracy,
)
from model.plots import REPORT_FILES, plot_comparison, plot_sn_roc, write_report
from transforms.schema import CLASS_NAMES

# Ten alerts; columns AGN, SN, VS, asteroid, bogus. Comments: true class → argmax.
TINY_Y = np.array([0, 0, 1, 1, 1, 2, 2, 3, 4, 4])
TINY_P = np.array(
    [
        [0.70, 0.20, 0.05, 0.03, 0.02],  # AGN → AGN
        [0.40, 0.50, 0.05, 0.03, 0.02],  # AGN → SN (AGN second)
        [0.10, 0.80, 0.05, 0.03, 0.02],  # SN → SN
        [0.20, 0.15, 0.55, 0.05, 0.05],  # SN → VS (SN third: the only top-2 miss)
        [0.05, 0.45, 0.05, 0.05, 0.40],  # SN → SN
        [0.05, 0.05, 0.85, 0.03, 0.02],  # VS → VS
        [0.10, 0.30, 0.50, 0.05, 0.05],  # VS → VS
        [0.02, 0.03, 0.05, 0.60, 0.30],  # asteroid → asteroid
        [0.02, 0.03, 0.05, 0.50, 0.40],  # bogus → asteroid
        [0.01, 0.09, 0.10, 0.10, 0.70],  # bogus → bogus
    ]
)


def by_class(*values: float) -> dict[str, float]:
    return dict(zip(CLASS_NAMES, values, strict=True))


def assert_close_dict(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k]), k


def test_tiny_example_by_hand():
    r = evaluate(TINY_Y, TINY_P)
    assert r["n"] == 10
    assert r["decision"] == "argmax"
    assert r["per_class_n"] == by_class(2, 3, 2, 1, 2)
    assert r["per_class_predicted_n"] == by_class(1, 3, 3, 2, 1)
    assert r["confusion_matrix"]["counts"] == [
        [1, 1, 0, 0, 0],
        [0, 2, 1, 0, 0],
        [0, 0, 2, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    np.testing.assert_allclose(
        r["confusion_matrix"]["normalized"][1], [0, 2 / 3, 1 / 3, 0, 0], rtol=1e-12
    )
    assert r["accuracy"] == pytest.approx(0.7)
    assert_close_dict(r["recall"], by_class(0.5, 2 / 3, 1.0, 1.0, 0.5))
    assert_close_dict(r["precision"], by_class(1.0, 2 / 3, 2 / 3, 0.5, 1.0))
    assert_close_dict(r["f1"], by_class(2 / 3, 2 / 3, 0.8, 2 / 3, 2 / 3))
    assert r["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3 + 1 + 1 + 0.5) / 5)
    assert r["top2_accuracy"] == pytest.approx(0.9)
    # p(SN) of the 3 SN: .8 .15 .45; of the 7 others: .2 .5 .05 .3 .03 .03 .09 (.2 ≥ .2 counts).
    rates = {x["threshold"]: (x["tpr"], x["fpr"]) for x in r["sn_tpr_fpr"]}
    assert rates[0.1] == pytest.approx((1.0, 3 / 7))
    assert rates[0.2] == pytest.approx((2 / 3, 3 / 7))
    assert rates[0.5] == pytest.approx((1 / 3, 1 / 7))
    assert r["sn_tpr_fpr"][0]["positives"] == 3 and r["sn_tpr_fpr"][0]["negatives"] == 7
    assert r["sn_roc_auc"] == pytest.approx((7 + 4 + 6) / 21)  # pairs won by each SN
    assert r["sn_decision"] == pytest.approx(
        {
            "recall": 2 / 3,
            "precision": 2 / 3,
            "false_discovery_rate": 1 / 3,
            "false_positive_rate": 1 / 7,
        }
    )
    p_true = [0.7, 0.4, 0.8, 0.15, 0.45, 0.85, 0.5, 0.6, 0.4, 0.7]
    assert r["log_loss"] == pytest.approx(-sum(math.log(x) for x in p_true) / 10)
    assert r["undefined"] == {}
    json.dumps(r, allow_nan=False)


def test_given_decisions_change_decision_metrics_only():
    predicted = TINY_P.argmax(axis=1)
    predicted[1] = 0  # e.g. an SN veto sending the AGN back to AGN
    base, ruled = evaluate(TINY_Y, TINY_P), evaluate(TINY_Y, TINY_P, predicted)
    assert ruled["decision"] == "given"
    assert ruled["accuracy"] == pytest.approx(0.8)
    assert ruled["recall"]["AGN"] == 1.0
    assert ruled["precision"]["SN"] == 1.0
    assert ruled["sn_decision"]["false_positive_rate"] == 0.0
    for key in ("top2_accuracy", "sn_tpr_fpr", "sn_roc_auc", "log_loss"):
        assert ruled[key] == base[key], key
    assert ruled["expected_calibration_error"] == base["expected_calibration_error"]


def test_zero_support_and_never_predicted_class():
    asteroid = CLASS_NAMES.index("asteroid")
    keep = np.not_equal(TINY_Y, asteroid)
    y = TINY_Y[keep]
    p = TINY_P[keep].copy()
    p[:, 4] += p[:, 3]  # asteroid is now neither present nor ever predicted
    p[:, 3] = 0.0
    r = evaluate(y, p)
    assert r["per_class_n"]["asteroid"] == 0
    assert r["precision"]["asteroid"] == r["recall"]["asteroid"] == r["f1"]["asteroid"] == 0.0
    assert {"precision.asteroid", "recall.asteroid", "f1.asteroid"} <= r["undefined"].keys()
    assert r["confusion_matrix"]["normalized"][3] == [0.0] * 5
    recalls = [r["recall"][c] for c in CLASS_NAMES if c != "asteroid"]
    assert r["balanced_accuracy"] == pytest.approx(np.mean(recalls))  # over the classes present
    json.dumps(r, allow_nan=False)
    assert "| asteroid | 0 | n/a | n/a | n/a |" in format_report(r)


def test_no_sn_in_sample():
    keep = TINY_Y != SN_INDEX
    r = evaluate(TINY_Y[keep], TINY_P[keep])
    assert r["sn_roc_auc"] == 0.0 and "sn_roc_auc" in r["undefined"]
    assert all(x["tpr"] == 0.0 for x in r["sn_tpr_fpr"])
    assert "sn_tpr_fpr.tpr" in r["undefined"]
    json.dumps(r, allow_nan=False)


def test_sn_roc_picture_without_sn(tmp_path):
    keep = TINY_Y != SN_INDEX
    out = plot_sn_roc(TINY_Y[keep], TINY_P[keep], tmp_path / "roc.png")
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        (TINY_Y[:5], TINY_P, "shape"),
        (TINY_Y + 1, TINY_P, r"\[0, 5\)"),
        (TINY_Y.astype(float), TINY_P, "integer"),
        (TINY_Y, TINY_P[:, :4], "shape"),
        (TINY_Y, TINY_P * 2, "sum to 1"),
        (TINY_Y[:0], TINY_P[:0], "empty"),
    ],
)
def test_bad_inputs_raise(y, p, match):
    with pytest.raises(ValueError, match=match):
        evaluate(y, p)


def test_top_k_accuracy_ties_and_k():
    p = np.array([[0.4, 0.4, 0.2, 0.0, 0.0], [0.5, 0.3, 0.2, 0.0, 0.0]])
    y = np.array([1, 2])
    assert top_k_accuracy(y, p, 1) == 0.5  # a tie for first counts
    assert top_k_accuracy(y, p, 2) == 0.5
    assert top_k_accuracy(y, p, 3) == 1.0


def test_auc_perfect_reversed_random_and_ties():
    rng = np.random.default_rng(0)
    pos = rng.random(20_000) < 0.3
    assert roc_auc(pos + 0.01 * rng.random(pos.size), pos) == 1.0
    assert roc_auc(-pos.astype(float), pos) == 0.0
    assert roc_auc(rng.random(pos.size), pos) == pytest.approx(0.5, abs=0.015)
    assert roc_auc(np.ones(pos.size), pos) == pytest.approx(0.5)
    assert roc_auc(np.ones(4), np.ones(4, dtype=bool)) == 0.0  # undefined


def test_roc_curve_points_match_threshold_rates():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(300), 2)  # plenty of ties
    pos = rng.random(300) < scores
    fpr, tpr, thresholds = roc_curve(scores, pos)
    assert (fpr[0], tpr[0], thresholds[0]) == (0.0, 0.0, np.inf)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    for f, t, th in zip(fpr[1:], tpr[1:], thresholds[1:], strict=True):
        r = rates_at_threshold(scores, pos, th)
        assert (r["fpr"], r["tpr"]) == pytest.approx((f, t))


def confident(conf: float, label: int, correct: bool) -> tuple[int, np.ndarray]:
    """A sample with max probability ``conf``, on ``label`` when ``correct``, else elsewhere."""
    p = np.full(5, (1 - conf) / 4)
    p[label if correct else (label + 1) % 5] = conf
    return label, p


def stack(samples: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([s[0] for s in samples]), np.array([s[1] for s in samples])


def test_ece_by_hand():
    # 4 alerts at confidence .9 with 2 right (gap .4), 4 at .3 with 2 right (gap .2).
    y, p = stack([confident(c, i, i % 2 == 0) for c in (0.9, 0.3) for i in range(4)])
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.4 + 0.5 * 0.2)
    bins = reliability_bins(y, p)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 8
    assert [b["count"] for b in bins if b["count"]] == [4, 4]
    assert bins[13]["accuracy"] == 0.5 and bins[13]["confidence"] == pytest.approx(0.9)


def test_reliability_bin_edges_are_right_closed():
    # Bin b is (b/15, (b+1)/15]: 0.6 = 9/15 closes bin 8 and 1.0 closes bin 14.
    y, p = stack([confident(0.6, 0, True), confident(1.0, 1, True)])
    bins = reliability_bins(y, p)
    assert [i for i, b in enumerate(bins) if b["count"]] == [8, 14]
    assert bins[8]["upper"] == pytest.approx(0.6)


def test_ece_calibrated_is_zero_and_overconfident_is_large():
    exact = [confident(0.75, i % 5, i % 4 != 0) for i in range(40)]  # 75% right at .75
    exact += [confident(0.95, i % 5, i % 20 != 0) for i in range(40)]  # 95% right at .95
    assert expected_calibration_error(*stack(exact)) == pytest.approx(0.0, abs=1e-12)

    rng = np.random.default_rng(2)
    conf = rng.uniform(0.25, 1.0, 50_000)
    sampled = [
        confident(c, int(k), bool(u < c))
        for c, k, u in zip(conf, rng.integers(0, 5, conf.size), rng.random(conf.size), strict=True)
    ]
    assert expected_calibration_error(*stack(sampled)) < 0.02

    over = [confident(0.99, i % 5, i % 10 < 6) for i in range(200)]  # 60% right at .99
    assert expected_calibration_error(*stack(over)) == pytest.approx(0.39)
    assert evaluate(*stack(over))["expected_calibration_error"] > 0.1


def test_log_loss_uniform_and_clipped():
    y = np.arange(5)
    assert log_loss(y, np.full((5, 5), 0.2)) == pytest.approx(math.log(5))
    wrong = np.roll(np.eye(5), 1, axis=1)
    assert log_loss(y, wrong) == pytest.approx(-math.log(1e-15))


def test_format_report_markdown():
    text = format_report(evaluate(TINY_Y, TINY_P), paper=True)
    assert "| SN | 3 | 0.667 | 0.667 | 0.667 |" in text
    assert "| balanced accuracy | 0.733 | 0.941 |" in text
    assert "| SN FPR at p ≥ 0.5 | 0.143 | 0.01 |" in text
    assert "| top-2 accuracy | 0.900 | 0.99 |" in text


def realistic(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities correlated with them (noisy logits)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(5), n_per_class)
    logits = rng.normal(0.0, 1.5, (y.size, 5))
    logits[np.arange(y.size), y] += 4.0
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return y, e / e.sum(axis=1, keepdims=True)


def assert_png(path) -> None:
    import matplotlib.image

    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # not blank


@pytest.mark.parametrize("drop", [None, "asteroid"])
def test_write_report_json_and_pictures(tmp_path, drop):
    y, p = realistic(40, seed=3)
    if drop is not None:  # a class absent from the sample must not break any picture
        keep = y != CLASS_NAMES.index(drop)
        y, p = y[keep], p[keep]
    report = write_report(y, p, tmp_path, name="synthetic")
    on_disk = json.loads((tmp_path / REPORT_FILES["report"]).read_text())
    assert on_disk == report
    assert report["name"] == "synthetic"
    assert set(report["pictures"].values()) == set(REPORT_FILES.values()) - {"report.json"}
    for file in report["pictures"].values():
        assert_png(tmp_path / file)
    assert report["balanced_accuracy"] > 0.8


def test_plot_comparison(tmp_path):
    reports = {
        "images+metadata": evaluate(*realistic(30, seed=4)),
        "images only": evaluate(*realistic(30, seed=5)),
    }
    out = plot_comparison(reports, tmp_path / "sub" / "comparison.png")
    assert out == tmp_path / "sub" / "comparison.png"
    assert_png(out)
    with pytest.raises(ValueError):
        plot_comparison({}, tmp_path / "none.png")
