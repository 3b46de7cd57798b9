"""Evaluation metrics of the stamp classifier against labels: the numbers of SPEC §7.

Everything here is a pure function of labels ``y_true [N]`` (indices into
:data:`transforms.schema.CLASS_NAMES`) and the network's probabilities ``probs [N, 5]``::

    evaluate(y_true, probs[, predicted]) ─ report (JSON-serialisable dict)
      └─ format_report(report)            markdown table for READMEs

The pictures of the same report (confusion matrix, SN ROC, probability histograms, reliability)
and :func:`model.plots.write_report`, which writes them with ``report.json``, are in
:mod:`model.plots`.

The paper's figures to compare with (real ZTF data, balanced test set of 100 per class): balanced
accuracy 0.941, SN recall 0.87, SN ROC (threshold → FPR, TPR) 0.1 → (0.87, 0.94),
0.2 → (0.03, 0.92), 0.5 → (0.01, 0.83), top-2 accuracy 0.99; see :data:`PAPER_RESULTS`.
The paper's "SN false positives 5%" does not say its denominator: compare it with both
``sn_decision.false_discovery_rate`` (share of SN decisions that are not SN) and
``sn_decision.false_positive_rate`` (share of non-SN decided SN).

Class *decisions* are the argmax of ``probs`` unless ``predicted`` is given (e.g. after the
production rules of :mod:`transforms.rules`); threshold-free metrics (top-2, ROC, calibration, log
loss) always use ``probs``. A metric that is undefined on the sample (a class with no true member or
never predicted, a ROC without SN or without non-SN) is reported as ``0.0`` and listed, with the
reason, in the report's ``undefined`` mapping, so the report never holds NaN or null.

This module imports numpy only (never matplotlib), so :func:`evaluate` stays cheap to import on
workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from transforms.schema import CLASS_NAMES

__all__ = [
    "ECE_BINS",
    "LOG_LOSS_EPS",
    "PAPER_RESULTS",
    "SN_INDEX",
    "SN_THRESHOLDS",
    "SUM_TOLERANCE",
    "confusion_matrix",
    "evaluate",
    "expected_calibration_error",
    "format_report",
    "log_loss",
    "rates_at_threshold",
    "reliability_bins",
    "roc_auc",
    "roc_curve",
    "top_k_accuracy",
]

#: Index of the SN class in :data:`CLASS_NAMES`.
SN_INDEX: Final[int] = CLASS_NAMES.index("SN")
#: SN probability thresholds of the paper's ROC (Fig. 9) [probability].
SN_THRESHOLDS: Final[tuple[float, ...]] = (0.1, 0.2, 0.5)
#: Equal-width bins of the max probability for the expected calibration error.
ECE_BINS: Final[int] = 15
#: Probabilities are clipped to ``[LOG_LOSS_EPS, 1]`` before taking the log (as scikit-learn does).
LOG_LOSS_EPS: Final[float] = 1e-15
#: Tolerance on ``|Σ_k probs[i, k] − 1|`` (float32 softmax outputs sum to 1 within ~1e-6).
SUM_TOLERANCE: Final[float] = 1e-3
#: The paper's test-set results (Carrasco-Davis et al. 2021; SPEC §7), for side-by-side tables.
PAPER_RESULTS: Final[dict[str, Any]] = {
    "balanced_accuracy": 0.941,
    "balanced_accuracy_images_only": 0.883,
    "sn_recall": 0.87,
    "top2_accuracy": 0.99,
    "sn_tpr_fpr": {0.1: (0.94, 0.87), 0.2: (0.92, 0.03), 0.5: (0.83, 0.01)},  # t: (TPR, FPR)
}


# --- validation ---------------------------------------------------------------------------------
def _check_labels(labels: np.ndarray, n: int, what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{what} must have shape [{n}], got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must hold integer class indices, got dtype {arr.dtype}")
    if n and (arr.min() < 0 or arr.max() >= len(CLASS_NAMES)):
        raise ValueError(
            f"{what} must lie in [0, {len(CLASS_NAMES)}), got {arr.min()}..{arr.max()}"
        )
    return arr.astype(np.int64)


def _check_inputs(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and cast ``(y_true, probs)`` to ``(int64 [N], float64 [N, K])``.

    Raises
    ------
    ValueError
        Empty input, wrong shapes, labels out of range, non-finite or negative probabilities, or
        rows that do not sum to 1 within :data:`SUM_TOLERANCE`.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(CLASS_NAMES):
        raise ValueError(f"probs must have shape [N, {len(CLASS_NAMES)}], got {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("nothing to evaluate: probs is empty")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probs must be finite and non-negative")
    worst = float(np.max(np.abs(p.sum(axis=1) - 1.0)))
    if worst > SUM_TOLERANCE:
        raise ValueError(f"probs rows must sum to 1 (worst row is off by {worst:.3g})")
    return _check_labels(y_true, p.shape[0], "y_true"), p


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


# --- metrics ------------------------------------------------------------------------------------
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts of (true, predicted) pairs.

    Parameters
    ----------
    y_true, y_pred
        Integer class indices ``[N]``.

    Returns
    -------
    np.ndarray
        ``[K, K]`` int64 counts, rows true class, columns predicted class, K = ``len(CLASS_NAMES)``.
    """
    k = len(CLASS_NAMES)
    y_true = _check_labels(y_true, np.shape(y_true)[0], "y_true")
    y_pred = _check_labels(y_pred, y_true.shape[0], "y_pred")
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int = 2) -> float:
    """Fraction of samples whose true class is among the ``k`` most probable.

    A true class tied with others counts as in the top ``k`` when fewer than ``k`` classes have a
    strictly higher probability.

    Parameters
    ----------
    y_true
        Integer class indices ``[N]``.
    probs
        Class probabilities ``[N, K]``.
    k
        How many top classes count.

    Returns
    -------
    float
        Top-``k`` accuracy in ``[0, 1]``.
    """
    y, p = _check_inputs(y_true, probs)
    p_true = p[np.arange(len(y)), y]
    higher = (p > p_true[:, None]).sum(axis=1)
    return float(np.mean(higher < k))


def roc_curve(
    scores: np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-vs-rest ROC curve: a point per distinct score, from the highest score down.

    Parameters
    ----------
    scores
        Score of each sample ``[N]`` (e.g. ``probs[:, SN_INDEX]``); higher means more positive.
    positive
        Boolean ``[N]``: is the sample a true positive.

    Returns
    -------
    fpr, tpr, thresholds : np.ndarray
        ``[M + 1]`` arrays for the M distinct scores; point ``i`` classifies
        ``score >= thresholds[i]`` as positive. The first point is ``(0, 0)`` at threshold
        ``+inf``. A rate whose denominator is empty (no positives, or no negatives) is 0.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    order = np.argsort(-s, kind="stable")
    s, pos = s[order], pos[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tps = np.cumsum(pos)[last]
    fps = np.cumsum(~pos)[last]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    tpr = np.r_[0.0, tps / n_pos if n_pos else np.zeros_like(tps, dtype=np.float64)]
    fpr = np.r_[0.0, fps / n_neg if n_neg else np.zeros_like(fps, dtype=np.float64)]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids; ties count one half, as in the Mann–Whitney U).

    Parameters
    ----------
    scores
        Score of each sample ``[N]``.
    positive
        Boolean ``[N]``.

    Returns
    -------
    float
        AUC in ``[0, 1]``; 0.0 when there are no positives or no negatives (undefined).
    """
    pos = np.asarray(positive, dtype=bool)
    if pos.all() or not pos.any():
        return 0.0
    fpr, tpr, _ = roc_curve(scores, pos)
    return float(np.trapezoid(tpr, fpr))


def rates_at_threshold(
    scores: np.ndarray, positive: np.ndarray, threshold: float
) -> dict[str, float | int]:
    """True- and false-positive rates of ``score >= threshold``.

    Parameters
    ----------
    scores
        Score of each sample ``[N]``.
    positive
        Boolean ``[N]``.
    threshold
        Decision threshold on the score.

    Returns
    -------
    dict
        ``threshold``, ``tpr`` (positives at or above the threshold / positives), ``fpr`` (negatives
        at or above / negatives), and the counts ``tp``, ``fp``, ``positives``, ``negatives``.
        A rate with an empty denominator is 0.0.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    above = s >= threshold
    tp, fp = int(np.sum(above & pos)), int(np.sum(above & ~pos))
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return {
        "threshold": float(threshold),
        "tpr": _ratio(tp, n_pos),
        "fpr": _ratio(fp, n_neg),
        "tp": tp,
        "fp": fp,
        "positives": n_pos,
        "negatives": n_neg,
    }


def reliability_bins(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS
) -> list[dict[str, float | int]]:
    """Confidence (max probability) against accuracy of the argmax, in equal-width bins.

    Bin ``b`` holds samples with ``b / n_bins < confidence <= (b + 1) / n_bins`` (a confidence of
    exactly 0 falls in the first bin), the convention of Guo et al. (2017).

    Parameters
    ----------
    y_true
        Integer class indices ``[N]``.
    probs
        Class probabilities ``[N, K]``.
    n_bins
        Number of bins on ``[0, 1]``.

    Returns
    -------
    list of dict
        Per bin: ``lower``, ``upper``, ``count``, ``confidence`` (mean max probability) and
        ``accuracy`` (fraction whose argmax is the true class); the last two are 0.0 in empty bins.
    """
    y, p = _check_inputs(y_true, probs)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=n_bins)
    return [
        {
            "lower": float(edges[b]),
            "upper": float(edges[b + 1]),
            "count": int(count[b]),
            "confidence": _ratio(conf_sum[b], count[b]),
            "accuracy": _ratio(hit_sum[b], count[b]),
        }
        for b in range(n_bins)
    ]


def expected_calibration_error(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Expected calibration error: ``Σ_b (n_b / N) |accuracy_b − confidence_b|``.

    Parameters
    ----------
    y_true
        Integer class indices ``[N]``.
    probs
        Class probabilities ``[N, K]``.
    n_bins
        Number of equal-width bins of the max probability (see :func:`reliability_bins`).

    Returns
    -------
    float
        ECE in ``[0, 1]``; 0 for a perfectly calibrated classifier.
    """
    return _ece(reliability_bins(y_true, probs, n_bins))


def _ece(bins: Sequence[Mapping[str, float | int]]) -> float:
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / n)


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-probability of the true class [nats].

    Parameters
    ----------
    y_true
        Integer class indices ``[N]``.
    probs
        Class probabilities ``[N, K]``; clipped to ``[LOG_LOSS_EPS, 1]`` so the loss stays finite.

    Returns
    -------
    float
        Cross-entropy; ``log K`` for a uniform classifier.
    """
    y, p = _check_inputs(y_true, probs)
    p_true = np.clip(p[np.arange(len(y)), y], LOG_LOSS_EPS, 1.0)
    return float(-np.mean(np.log(p_true)))


def evaluate(
    y_true: np.ndarray,
    probs: np.ndarray,
    predicted: np.ndarray | None = None,
    *,
    sn_thresholds: Sequence[float] = SN_THRESHOLDS,
    n_bins: int = ECE_BINS,
) -> dict[str, Any]:
    """Every SPEC §7 metric of a labelled sample, as a JSON-serialisable dict.

    Parameters
    ----------
    y_true
        True class indices ``[N]`` into :data:`CLASS_NAMES`.
    probs
        Network probabilities ``[N, 5]`` in :data:`CLASS_NAMES` order (rows sum to 1).
    predicted
        Class decisions ``[N]`` to score instead of ``argmax(probs)`` (e.g. after the production
        rules). Only the decision metrics use it: accuracy, balanced accuracy, precision, recall,
        F1, the confusion matrix and ``sn_decision``.
    sn_thresholds
        SN probability thresholds for ``sn_tpr_fpr``.
    n_bins
        Bins of the expected calibration error.

    Returns
    -------
    dict
        ``class_names``, ``n``, ``per_class_n`` and ``per_class_predicted_n`` (by class name),
        ``decision`` (``"argmax"`` or ``"given"``), ``accuracy``, ``balanced_accuracy`` (mean recall
        over the classes present), ``precision`` / ``recall`` / ``f1`` (by class name),
        ``confusion_matrix`` (``counts`` and row-normalised ``normalized``, rows true, columns
        predicted), ``top2_accuracy``, ``sn_decision`` (recall, precision, false-discovery rate =
        share of SN decisions that are not SN, and false-positive rate = share of non-SN decided
        SN), ``sn_tpr_fpr`` (one dict per threshold, see :func:`rates_at_threshold`),
        ``sn_roc_auc``, ``expected_calibration_error``, ``reliability`` (its bins, see
        :func:`reliability_bins`), ``log_loss`` and ``undefined`` (``{metric: reason}`` for every
        value reported as 0.0 because the sample cannot define it).

    Raises
    ------
    ValueError
        Malformed inputs (see :func:`_check_inputs`) or ``predicted`` of the wrong shape or range.
    """
    y, p = _check_inputs(y_true, probs)
    if predicted is None:
        pred, decision = p.argmax(axis=1), "argmax"
    else:
        pred, decision = _check_labels(predicted, len(y), "predicted"), "given"
    cm = confusion_matrix(y, pred)
    support = cm.sum(axis=1)
    n_predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    undefined: dict[str, str] = {}

    precision, recall, f1 = {}, {}, {}
    for i, name in enumerate(CLASS_NAMES):
        precision[name] = _ratio(tp[i], n_predicted[i])
        recall[name] = _ratio(tp[i], support[i])
        pr = precision[name] + recall[name]
        f1[name] = 2 * precision[name] * recall[name] / pr if pr else 0.0
        if not n_predicted[i]:
            undefined[f"precision.{name}"] = f"{name} is never predicted"
        if not support[i]:
            undefined[f"recall.{name}"] = (
                f"no true {name} in the sample (left out of balanced_accuracy)"
            )
        if not n_predicted[i] or not support[i]:
            undefined[f"f1.{name}"] = f"precision or recall of {name} is undefined"
    present = support > 0
    balanced = float(np.mean(tp[present] / support[present]))
    normalized = np.divide(cm, support[:, None], out=np.zeros(cm.shape), where=present[:, None])

    is_sn, p_sn = y == SN_INDEX, p[:, SN_INDEX]
    decided_sn = pred == SN_INDEX
    sn_rates = [rates_at_threshold(p_sn, is_sn, t) for t in sn_thresholds]
    sn_decision = {
        "recall": recall["SN"],
        "precision": precision["SN"],
        "false_discovery_rate": _ratio(np.sum(decided_sn & ~is_sn), np.sum(decided_sn)),
        "false_positive_rate": _ratio(np.sum(decided_sn & ~is_sn), np.sum(~is_sn)),
    }
    if not is_sn.any():
        undefined["sn_decision.recall"] = "no true SN in the sample"
        undefined["sn_roc_auc"] = "no true SN in the sample"
        undefined["sn_tpr_fpr.tpr"] = "no true SN in the sample"
    if is_sn.all():
        undefined["sn_roc_auc"] = "no non-SN in the sample"
        undefined["sn_tpr_fpr.fpr"] = "no non-SN in the sample"
        undefined["sn_decision.false_positive_rate"] = "no non-SN in the sample"
    if not decided_sn.any():
        undefined["sn_decision.precision"] = "SN is never predicted"
        undefined["sn_decision.false_discovery_rate"] = "SN is never predicted"

    bins = reliability_bins(y, p, n_bins)
    return {
        "class_names": list(CLASS_NAMES),
        "n": len(y),
        "per_class_n": {name: int(c) for name, c in zip(CLASS_NAMES, support, strict=True)},
        "per_class_predicted_n": {
            name: int(c) for name, c in zip(CLASS_NAMES, n_predicted, strict=True)
        },
        "decision": decision,
        "accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": balanced,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion_matrix": {"counts": cm.tolist(), "normalized": normalized.tolist()},
        "top2_accuracy": top_k_accuracy(y, p, 2),
        "sn_decision": sn_decision,
        "sn_tpr_fpr": sn_rates,
        "sn_roc_auc": roc_auc(p_sn, is_sn),
        "expected_calibration_error": _ece(bins),
        "reliability": bins,
        "log_loss": log_loss(y, p),
        "undefined": undefined,
    }


# --- markdown -----------------------------------------------------------------------------------
def format_report(report: Mapping[str, Any], paper: bool = False) -> str:
    """A short markdown summary of :func:`evaluate`'s report, for READMEs.

    Parameters
    ----------
    report
        Output of :func:`evaluate` (or ``report.json``).
    paper
        Add a column with the paper's numbers (:data:`PAPER_RESULTS`) to the summary table.

    Returns
    -------
    str
        A per-class table (n, precision, recall, F1) and a summary table (accuracy, balanced
        accuracy, top-2, SN ROC AUC, ECE, SN TPR/FPR per threshold). Undefined values show "n/a".
    """
    undefined = report.get("undefined", {})

    def cell(key: str, value: float) -> str:
        return "n/a" if key in undefined else f"{value:.3f}"

    lines = [
        "| class | n | precision | recall | F1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in report["class_names"]:
        lines.append(
            f"| {name} | {report['per_class_n'][name]} "
            f"| {cell(f'precision.{name}', report['precision'][name])} "
            f"| {cell(f'recall.{name}', report['recall'][name])} "
            f"| {cell(f'f1.{name}', report['f1'][name])} |"
        )
    ref = PAPER_RESULTS
    rows: list[tuple[str, str, str]] = [
        ("accuracy", f"{report['accuracy']:.3f}", ""),
        ("balanced accuracy", f"{report['balanced_accuracy']:.3f}", f"{ref['balanced_accuracy']}"),
        ("top-2 accuracy", f"{report['top2_accuracy']:.3f}", f"{ref['top2_accuracy']}"),
        ("SN ROC AUC", cell("sn_roc_auc", report["sn_roc_auc"]), ""),
        ("ECE (15 bins)", f"{report['expected_calibration_error']:.3f}", ""),
        ("log loss", f"{report['log_loss']:.3f}", ""),
    ]
    for r in report["sn_tpr_fpr"]:
        t = r["threshold"]
        paper_tpr, paper_fpr = ref["sn_tpr_fpr"].get(t, ("", ""))
        rows.append((f"SN TPR at p ≥ {t:g}", cell("sn_tpr_fpr.tpr", r["tpr"]), f"{paper_tpr}"))
        rows.append((f"SN FPR at p ≥ {t:g}", cell("sn_tpr_fpr.fpr", r["fpr"]), f"{paper_fpr}"))
    head = f"n = {report['n']}, decisions: {report['decision']}"
    if paper:
        summary = ["| metric | value | paper |", "|---|---:|---:|"]
        summary += [f"| {m} | {v} | {p} |" for m, v, p in rows]
    else:
        summary = ["| metric | value |", "|---|---:|"]
        summary += [f"| {m} | {v} |" for m, v, _ in rows]
    return "\n".join([head, "", *lines, "", *summary]) + "\n"
