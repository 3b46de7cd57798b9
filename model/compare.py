"""``stampflow compare``: how well a model agrees with a reference model on real, unlabelled alerts.

Real alerts carry no labels, so the reference model's class (typically ALeRCE's published
``best_model_so_far``, imported with ``stampflow import-alerce``) stands in for the truth
(SPEC §11)::

    --alerts ─ read, decode ─ [--select first] ─ featurize (each model's own feature list)
        ─ serving signature of --model and of --reference (raw network outputs, no rules)
        ─ agreement_report ─▶ OUT/compare.json, OUT/compare.csv, OUT/compare.png

The probabilities are those of ``stampflow run --select all --rules none`` (same featurisation,
:func:`transforms.featurize.featurize_alerts`, and the same exported signature,
:func:`model.train.evaluate_model`); ``--select first`` keeps what ``stampflow run --select
first`` keeps: alerts whose ``prv_candidates`` hold no earlier detection and that are their
object's earliest alert in the input. Alerts that cannot be featurised for either model are
counted as unusable, by reason (with the default ``--stamp-policy drop``, as ALeRCE, any stamp
that is not 63x63). An alert is compared once: further copies of a ``candid`` (the same alert in
several files) are skipped as ``duplicate_candid``. Null features are imputed as in the pipeline
and reported (ALeRCE's own graph would give such an alert NaN probabilities). On the 225 real
alerts of ``../shared/data/ztf_alerts`` this compares 220 distinct 63x63 alerts.

Rubin (LSST) models are compared the same way on Rubin alerts: both models must declare the same
``survey`` in their metadata, the alerts are featurised by that survey's adapter (alerts of the
other survey are unusable, ``features:no_model``), first detections are judged from each alert's
own history (``prvDiaSources`` for Rubin), and a Rubin feature counts as imputed when the adapter
imputed it (null ``snr``, ``reliability``, ``extendedness``, moments, ``trailLength``).

What matters for the SN hunt is reported for all compared alerts and again for the first
detections among them (judged as ``--select first`` judges, whatever ``--select`` is; 36 of the
220): agreement, top-2 agreement, Cohen's kappa, recovery per reference class (the reference's
bogus found among them), SN precision (of the alerts the model calls SN, the share the reference
also calls SN) and SN recall (the reference's SN the model calls SN).

The work is done by pure functions (:func:`key_metrics`, :func:`sn_precision`,
:func:`agreement_report`, :func:`metrics_line`, :func:`recovery_line`, :func:`format_summary`,
:func:`plot_compare`); :func:`score_alerts` reads and scores, and the command is a thin adapter::

    stampflow import-alerce ../shared/data/alerce/best_model_so_far --out models/alerce
    stampflow compare --model model/default --reference models/alerce \\
        --alerts ../shared/data/ztf_alerts --out compare/
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from transforms.schema import (
    CLASS_NAMES,
    IMPUTE_VALUES,
    PROBABILITY_COLUMNS,
    SKIP_DUPLICATE,
    SKIP_EARLIER_DETECTION,
    SKIP_NOT_FIRST_IN_INPUT,
    STAGE_DECODE,
    STAGE_READ,
    STAMP_SIZE_POLICIES,
)

__all__ = [
    "CSV_FILE",
    "FIGURE_FILE",
    "REPORT_FILE",
    "CompareError",
    "Scored",
    "agreement_report",
    "compare",
    "format_summary",
    "imputed_features",
    "key_metrics",
    "metrics_line",
    "plot_compare",
    "recovery_line",
    "register",
    "score_alerts",
    "sn_precision",
    "write_csv",
]

#: Files written into ``--out``.
REPORT_FILE: Final[str] = "compare.json"
CSV_FILE: Final[str] = "compare.csv"
FIGURE_FILE: Final[str] = "compare.png"
#: ``--select`` choices: every alert, or first detections only (as ``stampflow run``).
SELECT_MODES: Final[tuple[str, ...]] = ("all", "first")
#: Alerts featurised and scored per model call (bounds memory: ~0.2 MB per alert in flight).
CHUNK: Final[int] = 1024
#: Tolerance on ``|Σ_k p[i, k] − 1|`` for input probabilities (float32 softmax outputs).
SUM_TOLERANCE: Final[float] = 1e-3
#: Index of the SN class in :data:`transforms.schema.CLASS_NAMES` (the SN hunt's class).
SN_CLASS: Final[int] = CLASS_NAMES.index("SN")


class CompareError(Exception):
    """A user's mistake (bad path, nothing to compare, unwritable output): one line, exit 2."""


# --- the report (pure) --------------------------------------------------------------------------
def _check_probs(probs: Any, name: str, n: int | None = None) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(CLASS_NAMES):
        raise ValueError(f"{name} must have shape [N, {len(CLASS_NAMES)}], got {p.shape}")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"{name} has {p.shape[0]} rows, expected {n}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    if p.shape[0] and np.max(np.abs(p.sum(axis=1) - 1.0)) > SUM_TOLERANCE:
        raise ValueError(f"{name} rows must sum to 1")
    return p


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _share(num: int, den: int) -> dict[str, Any]:
    return {"numerator": int(num), "denominator": int(den), "fraction": num / den if den else None}


def sn_precision(reference_classes: Any, model_classes: Any) -> dict[str, Any]:
    """Of the alerts the model calls SN, the share the reference also calls SN.

    What a supernova hunter following the model's SN up would find confirmed by the reference:
    the precision of the model's SN class if the reference were the truth.

    Parameters
    ----------
    reference_classes, model_classes
        Argmax class indices ``[N]`` (into :data:`transforms.schema.CLASS_NAMES`) of the
        reference and of the model, in the same alert order; ``N`` may be 0.

    Returns
    -------
    dict
        ``numerator`` (alerts both call SN), ``denominator`` (alerts the model calls SN) and
        ``fraction`` (their ratio; None when the model calls no alert SN).

    Raises
    ------
    ValueError
        Class arrays of different lengths.

    Examples
    --------
    >>> sn_precision([1, 1, 0, 4], [1, 0, 1, 1])
    {'numerator': 1, 'denominator': 3, 'fraction': 0.3333333333333333}
    >>> sn_precision([1], [0])["fraction"] is None
    True
    """
    ref = np.asarray(reference_classes).reshape(-1)
    mod = np.asarray(model_classes).reshape(-1)
    if ref.shape != mod.shape:
        raise ValueError(f"class arrays differ in length: {ref.shape[0]} and {mod.shape[0]}")
    called = mod == SN_CLASS
    return _share(int(np.sum(called & (ref == SN_CLASS))), int(np.sum(called)))


def key_metrics(ref_probs: Any, model_probs: Any) -> dict[str, Any]:
    """The class-level agreement of a model with a reference model on a set of alerts.

    The reference's argmax class plays the part of the label (see :func:`agreement_report`).
    Used for all compared alerts and for the first detections among them, so both sections of
    ``compare.json`` hold the same keys.

    Parameters
    ----------
    ref_probs, model_probs
        Probabilities ``[N, K]`` of the reference and of the model, rows in the same alert order,
        columns in :data:`transforms.schema.CLASS_NAMES` order; ``N`` may be 0 (every fraction
        is then 0.0 or None and listed in ``undefined``).

    Returns
    -------
    dict
        JSON-serialisable: ``n``, ``agreement`` and ``agreement_count`` (same argmax class),
        ``top2_agreement`` (reference class within the model's two most probable) and
        ``top2_agreement_reverse``, ``cohen_kappa``, ``confusion_matrix`` (``counts`` and
        ``row_fractions``, rows reference, columns model), ``recovery`` (per reference class:
        ``count``, ``recovered``, ``fraction``), ``predicted_counts`` (per model),
        ``sn_precision`` (:func:`sn_precision`), ``sn_recall`` (the reference's SN the model
        calls SN, as ``numerator``, ``denominator``, ``fraction``; the SN recovery, with None
        when the reference calls nothing SN) and ``undefined`` (quantity -> why the sample does
        not define it; such a fraction is reported as 0.0, or None for ``sn_*.fraction``).

    Raises
    ------
    ValueError
        Shapes that differ or are not ``[N, K]``, probabilities that are negative, non-finite or
        do not sum to 1.

    Examples
    --------
    >>> m = key_metrics(np.eye(5)[[1, 1, 4]], np.eye(5)[[1, 0, 1]])
    >>> m["agreement_count"], m["sn_precision"], m["recovery"]["bogus"]["recovered"]
    (1, {'numerator': 1, 'denominator': 2, 'fraction': 0.5}, 0)
    """
    from model.metrics import confusion_matrix, top_k_accuracy

    ref = _check_probs(ref_probs, "ref_probs")
    mod = _check_probs(model_probs, "model_probs", ref.shape[0])
    n, k = ref.shape
    ref_cls = ref.argmax(axis=1)
    mod_cls = mod.argmax(axis=1)
    counts = confusion_matrix(ref_cls, mod_cls)
    ref_support = counts.sum(axis=1)
    mod_support = counts.sum(axis=0)
    agree = int(np.trace(counts))
    undefined: dict[str, str] = {}
    if not n:
        for name in ("agreement", "top2_agreement", "top2_agreement_reverse"):
            undefined[name] = "no alert"

    row_fractions = [[_ratio(counts[i, j], ref_support[i]) for j in range(k)] for i in range(k)]
    recovery = {}
    for i, name in enumerate(CLASS_NAMES):
        recovery[name] = {
            "count": int(ref_support[i]),
            "recovered": int(counts[i, i]),
            "fraction": _ratio(counts[i, i], ref_support[i]),
        }
        if not ref_support[i]:
            undefined[f"recovery.{name}"] = f"the reference classifies no alert as {name}"

    chance = float(np.dot(ref_support, mod_support)) / float(n * n) if n else 1.0
    if chance < 1.0:
        kappa = (_ratio(agree, n) - chance) / (1.0 - chance)
    else:
        kappa = 0.0
        undefined["cohen_kappa"] = (
            "both models put every alert in one and the same class" if n else "no alert"
        )
    precision = sn_precision(ref_cls, mod_cls)
    if precision["fraction"] is None:
        undefined["sn_precision.fraction"] = "the model classifies no alert as SN"
    recall = _share(int(counts[SN_CLASS, SN_CLASS]), int(ref_support[SN_CLASS]))
    if recall["fraction"] is None:
        undefined["sn_recall.fraction"] = "the reference classifies no alert as SN"

    return {
        "n": n,
        "agreement": _ratio(agree, n),
        "agreement_count": agree,
        "cohen_kappa": float(kappa),
        "top2_agreement": top_k_accuracy(ref_cls, mod, 2) if n else 0.0,
        "top2_agreement_reverse": top_k_accuracy(mod_cls, ref, 2) if n else 0.0,
        "confusion_matrix": {
            "rows": "reference class",
            "columns": "model class",
            "counts": counts.tolist(),
            "row_fractions": row_fractions,
        },
        "recovery": recovery,
        "predicted_counts": {
            "model": {name: int(mod_support[j]) for j, name in enumerate(CLASS_NAMES)},
            "reference": {name: int(ref_support[j]) for j, name in enumerate(CLASS_NAMES)},
        },
        "sn_precision": precision,
        "sn_recall": recall,
        "undefined": undefined,
    }


def agreement_report(
    ref_probs: np.ndarray,
    model_probs: np.ndarray,
    ids: Sequence[tuple[int, str]] | None = None,
    first_detection: Sequence[bool] | np.ndarray | None = None,
) -> dict[str, Any]:
    """Agreement of a model's classes and probabilities with a reference model's, per alert.

    The reference model's argmax class plays the part of the label: the confusion matrix has one
    row per reference class and one column per model class, and the *recovery* of a class is the
    fraction of the alerts the reference puts in it that the model puts there too (the model's
    recall if the reference were the truth). The key metrics (:func:`key_metrics`) are given for
    every alert and, when ``first_detection`` is given, again for the first detections alone:
    the alerts a supernova hunt classifies.

    Parameters
    ----------
    ref_probs, model_probs
        Probabilities ``[N, K]`` of the reference model and of the model, rows in the same alert
        order, columns in :data:`transforms.schema.CLASS_NAMES` order; ``N >= 1``.
    ids
        ``(candid, objectId)`` per row, for the per-alert list (default: row numbers, no object).
    first_detection
        Per row, whether the alert is its object's first detection (see :func:`score_alerts`);
        None leaves ``first_detections`` out.

    Returns
    -------
    dict
        JSON-serialisable: ``n``, ``class_names``, every key of :func:`key_metrics` for all
        alerts (``agreement``, ``agreement_count``, ``cohen_kappa``, ``top2_agreement``,
        ``top2_agreement_reverse``, ``confusion_matrix``, ``recovery``, ``predicted_counts``,
        ``sn_precision``, ``sn_recall``, ``undefined``), ``probability_difference``
        (``Δp = p_model − p_reference``: per class ``mean``, ``mean_abs``, ``median_abs``,
        ``max_abs``; the same over every class; ``mean_total_variation``, the mean of
        ``½ Σ_k |Δp_k|``), with ``first_detection``: ``first_detections`` (:func:`key_metrics`
        of those rows), and ``alerts`` (per row: ``candid``, ``objectId``, both classes,
        ``agree``, ``first_detection`` when given, both probability vectors). Fractions a
        sample does not define are 0.0 (None for ``sn_precision`` and ``sn_recall``) and listed
        in ``undefined`` with why.

    Raises
    ------
    ValueError
        Empty input, shapes that differ or are not ``[N, K]``, ``ids`` or ``first_detection`` of
        the wrong length, probabilities that are negative, non-finite or do not sum to 1.

    Examples
    --------
    >>> ref = np.eye(5)[[0, 1, 1]]
    >>> mod = np.eye(5)[[0, 1, 2]]
    >>> r = agreement_report(ref, mod, first_detection=[True, False, True])
    >>> round(r["agreement"], 3), r["recovery"]["SN"]
    (0.667, {'count': 2, 'recovered': 1, 'fraction': 0.5})
    >>> r["first_detections"]["agreement_count"], r["first_detections"]["n"]
    (1, 2)
    """
    ref = _check_probs(ref_probs, "ref_probs")
    mod = _check_probs(model_probs, "model_probs", ref.shape[0])
    n = ref.shape[0]
    if n == 0:
        raise ValueError("nothing to compare: no alerts")
    if ids is None:
        ids = [(i, "") for i in range(n)]
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries, expected {n}")
    first = None
    if first_detection is not None:
        first = np.asarray(first_detection, dtype=bool).reshape(-1)
        if first.shape[0] != n:
            raise ValueError(f"first_detection has {first.shape[0]} entries, expected {n}")
    metrics = key_metrics(ref, mod)
    ref_cls = ref.argmax(axis=1)
    mod_cls = mod.argmax(axis=1)

    delta = mod - ref
    absd = np.abs(delta)
    per_class = {
        name: {
            "mean": float(delta[:, j].mean()),
            "mean_abs": float(absd[:, j].mean()),
            "median_abs": float(np.median(absd[:, j])),
            "max_abs": float(absd[:, j].max()),
        }
        for j, name in enumerate(CLASS_NAMES)
    }
    alerts = []
    for i, (candid, object_id) in enumerate(ids):
        entry = {
            "candid": int(candid),
            "objectId": str(object_id),
            "reference_class": CLASS_NAMES[int(ref_cls[i])],
            "model_class": CLASS_NAMES[int(mod_cls[i])],
            "agree": bool(ref_cls[i] == mod_cls[i]),
        }
        if first is not None:
            entry["first_detection"] = bool(first[i])
        entry["reference_probabilities"] = [float(x) for x in ref[i]]
        entry["model_probabilities"] = [float(x) for x in mod[i]]
        alerts.append(entry)
    undefined = metrics.pop("undefined")
    report = {
        "n": n,
        "class_names": list(CLASS_NAMES),
        **metrics,
        "probability_difference": {
            "definition": "p_model - p_reference",
            "per_class": per_class,
            "mean_abs": float(absd.mean()),
            "median_abs": float(np.median(absd)),
            "max_abs": float(absd.max()),
            "mean_total_variation": float(0.5 * absd.sum(axis=1).mean()),
        },
    }
    if first is not None:
        report["first_detections"] = key_metrics(ref[first], mod[first])
    report["undefined"] = undefined
    report["alerts"] = alerts
    return report


def recovery_line(report: Mapping[str, Any]) -> str:
    """Per-class recovery as ``AGN 2/13 · SN 30/83 · ...`` (reference classes in order).

    Parameters
    ----------
    report
        Output of :func:`agreement_report` or :func:`key_metrics` (e.g. its
        ``first_detections``).

    Returns
    -------
    str
        One ``class recovered/count`` item per class, joined by `` · ``.
    """
    rec = report["recovery"]
    names = report.get("class_names", CLASS_NAMES)
    return " · ".join(f"{c} {rec[c]['recovered']}/{rec[c]['count']}" for c in names)


def _share_text(share: Mapping[str, Any]) -> str:
    fraction = share["fraction"]
    percent = "n/a" if fraction is None else f"{100 * fraction:.1f}%"
    return f"{share['numerator']}/{share['denominator']} ({percent})"


def metrics_line(metrics: Mapping[str, Any]) -> str:
    """The key metrics of a set of alerts on one line, what matters first for the SN hunt.

    Parameters
    ----------
    metrics
        Output of :func:`key_metrics`, or :func:`agreement_report` (its all-alerts metrics).

    Returns
    -------
    str
        ``agreement 27.8% (10/36) · top-2 69.4% · Cohen's kappa 0.16 · SN precision 3/20 (15.0%)
        · SN recall 3/5 (60.0%) · bogus found 1/6``; SN precision is ``n/a`` when the model calls
        no alert SN, and a set without alerts is ``no alert``.

    Examples
    --------
    >>> line = metrics_line(key_metrics(np.eye(5)[[1, 1, 4]], np.eye(5)[[1, 0, 1]]))
    >>> line.split(" · ")[0]
    'agreement 33.3% (1/3)'
    >>> line.split(" · ")[3:]
    ['SN precision 1/2 (50.0%)', 'SN recall 1/2 (50.0%)', 'bogus found 0/1']
    """
    if not metrics["n"]:
        return "no alert"
    bogus = metrics["recovery"]["bogus"]
    return (
        f"agreement {100 * metrics['agreement']:.1f}% "
        f"({metrics['agreement_count']}/{metrics['n']})"
        f" · top-2 {100 * metrics['top2_agreement']:.1f}%"
        f" · Cohen's kappa {metrics['cohen_kappa']:.2f}"
        f" · SN precision {_share_text(metrics['sn_precision'])}"
        f" · SN recall {_share_text(metrics['sn_recall'])}"
        f" · bogus found {bogus['recovered']}/{bogus['count']}"
    )


def _model_label(info: Mapping[str, Any]) -> str:
    return f"{info.get('name', '?')} {info.get('version', '?')}"


def format_summary(result: Mapping[str, Any], out_dir: str | None = None) -> str:
    """A short human summary of a comparison.

    Parameters
    ----------
    result
        The content of ``compare.json`` (see :func:`compare`).
    out_dir
        Where the files were written, for the last line (omitted when None).

    Returns
    -------
    str
        A few lines: models and counts; :func:`metrics_line` for all alerts and for the first
        detections among them (one ``first detections`` line when ``select`` is ``"first"``, as
        every compared alert is one); recovery per class, for all alerts and for the first
        detections; mean ``|Δp|`` per class.
    """
    unusable = result["unusable"]
    dead = ", ".join(f"{k} {v}" for k, v in unusable["by_reason"].items())
    skipped = ", ".join(f"{k} {v}" for k, v in result["skipped"].items())
    counts = f"{result['n']} alerts compared ({result['alerts_decoded']} decoded"
    counts += f"; skipped: {skipped}" if skipped else ""
    counts += f"; unusable: {dead}" if unusable["count"] else ""
    imputed = result.get("imputed", {}).get("alerts", 0)
    counts += f"; {imputed} with imputed features)" if imputed else ")"
    diff = result["probability_difference"]
    first = result.get("first_detections")
    lines = [
        f"compare: {_model_label(result['model'])} vs reference "
        f"{_model_label(result['reference'])} · {counts}"
    ]
    if result.get("select") == "first":
        lines += [
            f"first detections: {metrics_line(result)}",
            f"recovery of the reference class: {recovery_line(result)}",
        ]
    else:
        lines.append(f"all alerts: {metrics_line(result)}")
        if first is not None:
            lines.append(f"first detections: {metrics_line(first)}")
        lines.append(f"recovery of the reference class: {recovery_line(result)}")
        if first is not None and first["n"]:
            lines.append(f"recovery on first detections: {recovery_line(first)}")
    lines.append(
        "mean |Δp|: "
        + " · ".join(f"{c} {diff['per_class'][c]['mean_abs']:.3f}" for c in result["class_names"])
        + f" (max {diff['max_abs']:.3f})"
    )
    if out_dir is not None:
        lines.append(f"outputs: {out_dir}/ ({REPORT_FILE}, {CSV_FILE}, {FIGURE_FILE})")
    return "\n".join(lines)


# --- files --------------------------------------------------------------------------------------
def write_csv(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """One row per compared alert: ids, both classes, whether it is a first detection, both
    probability vectors, max ``|Δp|`` and the imputed features.

    Parameters
    ----------
    report
        Output of :func:`agreement_report`.
    path
        CSV file to write.

    Returns
    -------
    Path
        ``path``. ``first_detection`` is ``True``/``False``, or empty when the report was made
        without first-detection flags.
    """
    out = Path(path)
    header = ["candid", "objectId", "reference_class", "model_class", "agree", "first_detection"]
    header += [f"reference_{c}" for c in PROBABILITY_COLUMNS]
    header += [f"model_{c}" for c in PROBABILITY_COLUMNS]
    header += ["max_abs_dp", "imputed"]
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for a in report["alerts"]:
            ref, mod = a["reference_probabilities"], a["model_probabilities"]
            dp = max(abs(m - r) for m, r in zip(mod, ref, strict=True))
            writer.writerow(
                [a["candid"], a["objectId"], a["reference_class"], a["model_class"], a["agree"]]
                + [a.get("first_detection", "")]
                + [f"{x:.6g}" for x in ref]
                + [f"{x:.6g}" for x in mod]
                + [f"{dp:.6g}", ";".join(a.get("imputed", []))]
            )
    return out


def plot_compare(
    report: Mapping[str, Any],
    path: str | os.PathLike,
    model_label: str = "model",
    reference_label: str = "reference",
) -> Path:
    """The comparison picture: the confusion matrix, ``p_model`` against ``p_reference``, and what
    matters for the SN hunt on all alerts and on first detections.

    Top left, the confusion matrix (rows reference class, columns model class) annotated with
    counts and row fractions, shaded by row fraction; top right, one scatter per class of the
    model's probability against the reference's (points on the diagonal agree exactly), and the
    histograms of ``|Δp|`` per class. Bottom, bars for all alerts beside the first detections
    (``first_detections`` of the report, when present): left, agreement, top-2 agreement, SN
    precision, SN recall and the reference's bogus recovered; right, recovery per reference
    class; each bar labelled with its count.

    Parameters
    ----------
    report
        Output of :func:`agreement_report`.
    path
        PNG to write (parent directories are created).
    model_label, reference_label
        How the two models are named on the axes.

    Returns
    -------
    Path
        ``path``.
    """
    from model.plots import _confusion_panel, _new_figure, _save

    names = list(report["class_names"])
    k = len(names)
    counts = np.asarray(report["confusion_matrix"]["counts"])
    frac = np.asarray(report["confusion_matrix"]["row_fractions"])
    support = counts.sum(axis=1)
    ref = np.array([a["reference_probabilities"] for a in report["alerts"]]).reshape(-1, k)
    mod = np.array([a["model_probabilities"] for a in report["alerts"]]).reshape(-1, k)
    agree = np.array([a["agree"] for a in report["alerts"]], bool)

    fig = _new_figure(15.0, 9.8)
    grid = fig.add_gridspec(
        3, 6, width_ratios=[1.25, 1.25, 1.25, 1, 1, 1], height_ratios=[1, 1, 0.95]
    )
    ax = fig.add_subplot(grid[:2, :3])
    cells = [
        [f"{counts[i, j]}\n{100 * frac[i, j]:.0f}%" if support[i] else "0\n–" for j in range(k)]
        for i in range(k)
    ]
    _confusion_panel(
        fig,
        ax,
        names,
        frac,
        support,
        cells,
        xlabel=f"class by {model_label}",
        ylabel=f"class by {reference_label}",
        colorbar_label="fraction of the reference class",
    )
    ax.set_title(
        f"agreement {100 * report['agreement']:.1f}% ({report['agreement_count']}/{report['n']}),"
        f" top-2 {100 * report['top2_agreement']:.1f}%\nrecovery: {recovery_line(report)}",
        fontsize=10,
    )

    colors = [f"C{j}" for j in range(k)]
    per_class = report["probability_difference"]["per_class"]
    for j, name in enumerate(names):
        sx = fig.add_subplot(grid[j // 3, 3 + j % 3])
        sx.plot([0, 1], [0, 1], color="0.6", lw=0.8, zorder=0)
        sx.scatter(
            ref[agree, j], mod[agree, j], s=7, color=colors[j], alpha=0.6, lw=0, label="same class"
        )
        sx.scatter(
            ref[~agree, j],
            mod[~agree, j],
            s=9,
            color=colors[j],
            alpha=0.6,
            marker="x",
            label="classes differ",
        )
        if j == 0:
            sx.legend(fontsize=7, frameon=False, loc="upper left", handletextpad=0.1)
        sx.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal")
        sx.set_title(f"p_{name}: mean |Δp| {per_class[name]['mean_abs']:.3f}", fontsize=9)
        sx.tick_params(labelsize=7)
        if j % 3 == 0:
            sx.set_ylabel(model_label, fontsize=8)
        if j // 3 == 1 or j >= k - 3:
            sx.set_xlabel(reference_label, fontsize=8)
    hx = fig.add_subplot(grid[1, 5])
    bins = np.linspace(0.0, 1.0, 21)
    for j, name in enumerate(names):
        hx.hist(
            np.abs(mod[:, j] - ref[:, j]),
            bins=bins,
            histtype="step",
            color=colors[j],
            label=name,
            lw=1.2,
        )
    hx.set_yscale("log")
    hx.set_xlabel("|p_model − p_reference|", fontsize=8)
    hx.set_ylabel("alerts", fontsize=8)
    hx.tick_params(labelsize=7)
    hx.legend(fontsize=7, frameon=False)
    hx.set_title("|Δp| per class", fontsize=9)
    _hunt_panels(fig.add_subplot(grid[2, :3]), fig.add_subplot(grid[2, 3:]), report)
    return _save(fig, path)


def _hunt_panels(mx: Any, rx: Any, report: Mapping[str, Any]) -> None:
    """Bars of the key metrics (``mx``) and per-class recovery (``rx``): all alerts beside the
    first detections, each bar labelled ``numerator/denominator``."""
    sets = [(f"all alerts (n={report['n']})", report, "0.55")]
    first = report.get("first_detections")
    if first is not None:
        sets.append((f"first detections (n={first['n']})", first, "C1"))
    width = 0.8 / len(sets)

    def shares(m: Mapping[str, Any]) -> list[tuple[int, int]]:
        bogus = m["recovery"]["bogus"]
        return [
            (m["agreement_count"], m["n"]),
            (round(m["top2_agreement"] * m["n"]), m["n"]),
            (m["sn_precision"]["numerator"], m["sn_precision"]["denominator"]),
            (m["sn_recall"]["numerator"], m["sn_recall"]["denominator"]),
            (bogus["recovered"], bogus["count"]),
        ]

    def recoveries(m: Mapping[str, Any]) -> list[tuple[int, int]]:
        return [(m["recovery"][c]["recovered"], m["recovery"][c]["count"]) for c in CLASS_NAMES]

    panels = [
        (
            mx,
            [
                "agreement",
                "top-2\nagreement",
                "SN precision\n(model's SN)",
                "SN recall\n(ref.'s SN)",
                "ref.'s bogus\nfound",
            ],
            shares,
            "agreement with the reference: what matters for the SN hunt",
        ),
        (rx, list(CLASS_NAMES), recoveries, "recovery of the reference class"),
    ]
    for ax, groups, values, title in panels:
        x = np.arange(len(groups))
        for s, (label, metrics, color) in enumerate(sets):
            pairs = values(metrics)
            heights = [num / den if den else 0.0 for num, den in pairs]
            pos = x - 0.4 + width * (s + 0.5)
            ax.bar(pos, heights, width, color=color, edgecolor="black", lw=0.5, label=label)
            for xi, h, (num, den) in zip(pos, heights, pairs, strict=True):
                text = f"{num}/{den}" if den else "n/a"
                ax.text(xi, h + 0.02, text, ha="center", va="bottom", fontsize=7.5)
        ax.set_xticks(x, groups, fontsize=8.5)
        ax.set_ylim(0, 1.18)
        ax.set_yticks(np.linspace(0.0, 1.0, 6))
        ax.tick_params(axis="y", labelsize=7.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, frameon=False, loc="upper right", ncols=len(sets))
    mx.set_ylabel("fraction", fontsize=8.5)


# --- reading and scoring ------------------------------------------------------------------------
@dataclass
class Scored:
    """Both models' probabilities on the usable alerts of an input, and what was not usable.

    Attributes
    ----------
    candids, object_ids
        Ids per compared alert ``[N]``, in input order.
    model_probs, ref_probs
        Probabilities ``[N, K]`` of the model and of the reference.
    imputed
        Per compared alert, the features imputed for either model (see :func:`imputed_features`).
    alerts_decoded
        Alerts decoded from the input (compared + skipped + unusable after decoding).
    skipped
        Skip reason -> alerts: further copies of a ``candid`` and, with ``--select first``, alerts
        that are not first detections.
    dead_letters
        Dead letters without their raw bytes: ``stage, reason, source, objectId, candid``.
    first_detection
        Per compared alert ``[N]``, whether it is its object's first detection: no earlier
        detection in its ``prv_candidates``, and the earliest such alert of its object in the
        input (what ``--select first`` keeps; every compared alert is one under it).
    """

    candids: np.ndarray
    object_ids: np.ndarray
    model_probs: np.ndarray
    ref_probs: np.ndarray
    imputed: list[list[str]] = field(default_factory=list)
    alerts_decoded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    first_detection: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def imputed_features(candidate: Mapping[str, Any], feature_names: Iterable[str]) -> list[str]:
    """The features of ``feature_names`` that featurisation imputes for this candidate.

    Parameters
    ----------
    candidate
        An alert's ``candidate`` record.
    feature_names
        A model's feature list.

    Returns
    -------
    list of str
        Imputable features (:data:`transforms.schema.IMPUTE_VALUES`) whose value is null or not a
        finite number, in ``feature_names`` order.

    Examples
    --------
    >>> imputed_features({"fwhm": None, "sgscore1": 0.5, "rb": math.nan}, ["fwhm", "rb", "ra"])
    ['fwhm', 'rb']
    """
    out = []
    for name in feature_names:
        if name not in IMPUTE_VALUES:
            continue
        value = candidate.get(name)
        try:
            finite = not isinstance(value, str | bytes) and math.isfinite(float(value))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            out.append(name)
    return out


#: Rubin features computed from the position, never imputed: left out of the per-alert imputation
#: check, where each would cost an astropy frame transform.
_SKY_FEATURES: Final[frozenset[str]] = frozenset({"ecl_lat", "ecl_long", "gal_lat", "gal_long"})


def _imputed(alert: Any, feature_names: Sequence[str]) -> list[str]:
    """The features of ``feature_names`` featurisation imputes for this alert, by its survey:
    ZTF's by :func:`imputed_features`, Rubin's as the adapter counts them."""
    if alert.survey.name == "ztf":
        return imputed_features(alert.candidate, feature_names)
    names = [n for n in feature_names if n not in _SKY_FEATURES]
    counts = alert.survey.features([alert.candidate], names).null_counts
    return [n for n in names if counts.get(n)]


def _history_reason(alert: Any) -> str | None:
    """Why an alert is not a first detection by its own history (any survey), or None."""
    return SKIP_EARLIER_DETECTION if alert.earlier_detection else None


def _slim_dead_letter(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("stage", "reason", "source", "objectId", "candid")}


def _iter_alerts(patterns: Sequence[str], dead: list[dict[str, Any]]) -> Iterable[Any]:
    """Decoded alerts of every pattern; read and decode failures appended to ``dead``."""
    from transforms.sources import NoInputError, decode_paths

    try:
        for item in decode_paths(patterns):
            if item.read_error is not None:
                dead.append(
                    {"stage": STAGE_READ, "reason": item.read_error.reason, "source": item.source}
                )
                continue
            yield from item.alerts
            if item.decode_error is not None:
                after = f" (after {len(item.alerts)} record(s) decoded)" if item.alerts else ""
                reason = item.decode_error.reason + after
                dead.append({"stage": STAGE_DECODE, "reason": reason, "source": item.source})
    except NoInputError as e:  # nothing matched, or the pattern cannot be listed
        raise CompareError(f"--alerts {e.reason}") from e


def _aligned(alerts: Sequence[Any], examples: Sequence[tuple[int, dict]]) -> list[tuple[Any, dict]]:
    """Pair the examples (a subsequence of ``alerts``, in order) with their alerts by ``candid``."""
    out, it = [], iter(alerts)
    for candid, example in examples:
        alert = next(a for a in it if a.candid == candid)
        out.append((alert, example))
    return out


def _first_in_input(outcomes: Sequence[tuple[str | None, tuple, Any, Any, bool]]) -> list[bool]:
    """Per outcome ``(objectId, order key, row, dead letter, no earlier detection in history)``:
    whether it is a history-clean alert that is the earliest clean one of its object. An
    object's earliest clean alert wins whether it was scored or dead, as the pipeline selects
    before featurising; an alert without an object is judged by its history alone."""
    best: dict[str, tuple] = {}
    for object_id, order, _, _, clean in outcomes:
        if clean and object_id is not None and (object_id not in best or order < best[object_id]):
            best[object_id] = order
    return [
        clean and (object_id is None or best[object_id] == order)
        for object_id, order, _, _, clean in outcomes
    ]


def score_alerts(
    patterns: Sequence[str],
    model_dir: str,
    reference_dir: str,
    model_features: Sequence[str],
    reference_features: Sequence[str],
    select: str = "all",
    stamp_policy: str = "drop",
    chunk: int = CHUNK,
    survey: str = "ztf",
) -> Scored:
    """Read, select and featurise alerts, and run both models' serving signatures on them.

    Each model gets the features of its own list; an alert is compared only when it can be
    featurised for both (otherwise it is a dead letter of stage ``stamps`` or ``features``).

    Parameters
    ----------
    patterns
        Alert files, directories, archives or globs (any Beam filesystem).
    model_dir, reference_dir
        Exported stampflow model directories.
    model_features, reference_features
        Their feature lists (``features`` of their metadata).
    select
        ``"all"`` (every distinct ``candid``) or ``"first"`` (no earlier detection in
        ``prv_candidates`` and the earliest alert, by ``jd`` then ``candid``, of its object in the
        input; as ``stampflow run``).
    stamp_policy
        ``"drop"`` or ``"pad"`` (:func:`transforms.featurize.featurize_alerts`).
    chunk
        Alerts per featurisation and model call.
    survey
        The survey both models classify (``ztf``, ``lsst``); other alerts are unusable.

    Returns
    -------
    Scored
        Probabilities of both models on the compared alerts, in input order, and which of them
        are first detections (judged as ``--select first`` judges, whatever ``select`` is).

    Raises
    ------
    CompareError
        When a pattern matches nothing or cannot be listed.
    """
    from model.train import evaluate_model
    from transforms.featurize import featurize_alerts
    from transforms.rules import earliest_key
    from transforms.surveys import get_survey

    adapter = get_survey(survey)
    dead: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    # Per scored or dead alert: (objectId, order key, row or None, dead letter or None, no
    # earlier detection in its history).
    outcomes: list[tuple[str, tuple, int | None, dict | None, bool]] = []
    candids: list[int] = []
    objects: list[str] = []
    model_probs: list[np.ndarray] = []
    ref_probs: list[np.ndarray] = []
    imputed: list[list[str]] = []
    pending: list[Any] = []
    decoded = 0

    def key(alert: Any) -> tuple:
        return (*earliest_key(alert.jd, alert.candid), alert.source)

    all_features = list(dict.fromkeys([*model_features, *reference_features]))

    def flush() -> None:
        if not pending:
            return
        first = featurize_alerts(pending, model_features, stamp_policy, adapter)
        letters = list(first.dead_letters)
        pairs = _aligned(pending, first.examples)
        if list(reference_features) == list(model_features):
            both = [(a, ex, ex) for a, ex in pairs]
        else:
            alerts = [a for a, _ in pairs]
            second = featurize_alerts(alerts, reference_features, stamp_policy, adapter)
            letters += second.dead_letters
            by_alert = {id(a): ex for a, ex in pairs}
            both = [(a, by_alert[id(a)], ex) for a, ex in _aligned(alerts, second.examples)]
        order_of = {a.candid: key(a) for a in pending}
        clean_of = {a.candid: _history_reason(a) is None for a in pending}
        for letter in letters:
            slim = _slim_dead_letter(letter)
            candid = slim["candid"]
            order, clean = order_of.get(candid, ()), clean_of.get(candid, select == "first")
            outcomes.append((slim["objectId"], order, None, slim, clean))
        if both:
            stamps = np.stack([ex["stamps"] for _, ex, _ in both])
            p_mod = evaluate_model(
                model_dir, np.stack([ex["features"] for _, ex, _ in both]), stamps
            )
            stamps = np.stack([ex["stamps"] for _, _, ex in both])
            p_ref = evaluate_model(
                reference_dir, np.stack([ex["features"] for _, _, ex in both]), stamps
            )
            for i, (alert, _, _) in enumerate(both):
                clean = clean_of[alert.candid]
                outcomes.append((alert.object_id, key(alert), len(candids), None, clean))
                candids.append(alert.candid)
                objects.append(alert.object_id)
                model_probs.append(p_mod[i])
                ref_probs.append(p_ref[i])
                imputed.append(_imputed(alert, all_features))
        pending.clear()

    seen: set[int] = set()
    for alert in _iter_alerts(patterns, dead):
        decoded += 1
        if alert.candid in seen:
            skipped[SKIP_DUPLICATE] += 1
            continue
        seen.add(alert.candid)
        if select == "first":
            reason = _history_reason(alert)
            if reason is not None:
                skipped[reason] += 1
                continue
        pending.append(alert)
        if len(pending) >= chunk:
            flush()
    flush()

    keep = np.ones(len(candids), bool)
    first_detection = np.zeros(len(candids), bool)
    firsts = _first_in_input(outcomes)
    for (_, _, row, letter, _), is_first in zip(outcomes, firsts, strict=True):
        if row is not None:
            first_detection[row] = is_first
        if select == "first" and not is_first:
            # Every outcome is history-clean here: an object's later alerts are skipped.
            skipped[SKIP_NOT_FIRST_IN_INPUT] += 1
            if row is not None:
                keep[row] = False
        elif letter is not None:
            dead.append(letter)
    k = len(CLASS_NAMES)
    return Scored(
        candids=np.array(candids, np.int64)[keep],
        object_ids=np.array(objects, dtype=object)[keep],
        model_probs=np.array(model_probs, np.float32).reshape(-1, k)[keep],
        ref_probs=np.array(ref_probs, np.float32).reshape(-1, k)[keep],
        imputed=[f for f, kept in zip(imputed, keep, strict=True) if kept],
        alerts_decoded=decoded,
        skipped=dict(sorted(skipped.items())),
        dead_letters=dead,
        first_detection=first_detection[keep],
    )


# --- the command --------------------------------------------------------------------------------
def _model_info(model_dir: str, flag: str) -> dict[str, Any]:
    from apache_beam.io.filesystems import FileSystems

    from model.handler import ModelDirError, model_survey, read_metadata
    from model.train import SURVEY_FEATURE_SETS

    try:
        meta = read_metadata(model_dir)
    except ModelDirError as e:
        raise CompareError(f"{flag}: {e}") from e
    if not FileSystems.exists(FileSystems.join(model_dir, "saved_model.pb")):
        raise CompareError(
            f"{flag}: {model_dir} has {model_dir}/stampflow_model.json but no saved_model.pb"
        )
    features = list(meta["features"])
    survey = model_survey(meta)
    sets = SURVEY_FEATURE_SETS.get(survey, {})
    feature_set = next((n for n, f in sets.items() if list(f) == features), "custom")
    return {
        "dir": model_dir,
        "name": meta.get("name"),
        "version": meta.get("version"),
        "survey": survey,
        "feature_set": feature_set,
        "features": features,
    }


def _writable_dir(out_dir: str) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise CompareError(f"--out {out_dir} is not a writable directory: {e.strerror or e}") from e
    return out


def compare(
    model_dir: str,
    reference_dir: str,
    alerts: Sequence[str],
    out_dir: str,
    select: str = "all",
    stamp_policy: str = "drop",
) -> dict[str, Any]:
    """The whole ``stampflow compare`` job: score, report, and write the three files.

    Parameters
    ----------
    model_dir, reference_dir
        Exported stampflow model directories (the reference's class stands in for the label).
    alerts
        Alert files, directories, archives or globs.
    out_dir
        Directory for ``compare.json``, ``compare.csv`` and ``compare.png`` (created).
    select, stamp_policy
        As in :func:`score_alerts`.

    Returns
    -------
    dict
        The content of ``compare.json``: ``model`` and ``reference`` (dir, name, version, feature
        set), ``inputs``, ``select``, ``stamp_policy``, ``rules`` (``"none"``),
        ``alerts_decoded``, ``skipped`` by reason, ``unusable`` (``count``, ``by_stage``,
        ``by_reason`` as ``stage:code``, ``records``), ``imputed`` (compared alerts with an imputed
        feature, and counts by feature), then every key of :func:`agreement_report`, with
        ``first_detections`` (the key metrics, :func:`key_metrics`, of the compared alerts that
        are their object's first detection; all of them under ``select="first"``) and
        ``sn_precision``/``sn_recall`` for all alerts; each entry of ``alerts`` also says whether
        it is a ``first_detection`` and lists its ``imputed`` features.

    Raises
    ------
    CompareError
        A model directory that is not an exported model, models of two surveys, a pattern that
        matches nothing, an unwritable ``out_dir``, or no alert usable by both models.
    """
    if select not in SELECT_MODES:
        raise CompareError(f"--select {select!r} not in {SELECT_MODES}")
    if stamp_policy not in STAMP_SIZE_POLICIES:
        raise CompareError(f"--stamp-policy {stamp_policy!r} not in {STAMP_SIZE_POLICIES}")
    model = _model_info(model_dir, "--model")
    reference = _model_info(reference_dir, "--reference")
    if model["survey"] != reference["survey"]:
        raise CompareError(
            f"--model classifies {model['survey']} alerts, --reference {reference['survey']} "
            "alerts: compare two models of one survey"
        )
    out = _writable_dir(out_dir)
    scored = score_alerts(
        alerts,
        model_dir,
        reference_dir,
        model["features"],
        reference["features"],
        select,
        stamp_policy,
        survey=model["survey"],
    )
    by_stage = Counter(d["stage"] for d in scored.dead_letters)
    by_reason = Counter(f"{d['stage']}:{d['reason'].split(':', 1)[0]}" for d in scored.dead_letters)
    unusable = {
        "count": len(scored.dead_letters),
        "by_stage": dict(sorted(by_stage.items())),
        "by_reason": dict(sorted(by_reason.items())),
        "records": scored.dead_letters,
    }
    if not len(scored.candids):
        dead = ", ".join(f"{k} {v}" for k, v in unusable["by_reason"].items()) or "none"
        raise CompareError(
            f"no alert to compare in {' '.join(alerts)}: {scored.alerts_decoded} decoded, "
            f"{sum(scored.skipped.values())} skipped, unusable: {dead}"
        )
    report = agreement_report(
        scored.ref_probs,
        scored.model_probs,
        list(zip(scored.candids.tolist(), scored.object_ids.tolist(), strict=True)),
        scored.first_detection,
    )
    for entry, names in zip(report["alerts"], scored.imputed, strict=True):
        entry["imputed"] = names
    by_feature = Counter(name for names in scored.imputed for name in names)
    result = {
        "model": {k: v for k, v in model.items() if k != "features"},
        "reference": {k: v for k, v in reference.items() if k != "features"},
        "inputs": list(alerts),
        "select": select,
        "stamp_policy": stamp_policy,
        "rules": "none",
        "alerts_decoded": scored.alerts_decoded,
        "skipped": scored.skipped,
        "unusable": unusable,
        "imputed": {
            "alerts": sum(bool(names) for names in scored.imputed),
            "by_feature": dict(sorted(by_feature.items())),
        },
        **report,
    }
    (out / REPORT_FILE).write_text(json.dumps(result, indent=1), encoding="utf-8")
    write_csv(report, out / CSV_FILE)
    plot_compare(
        report, out / FIGURE_FILE, _model_label(model), f"reference {_model_label(reference)}"
    )
    return result


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    """Add ``stampflow compare``."""
    parser = subparsers.add_parser(
        name,
        help="agreement of a model with a reference model on real alerts",
        description=(
            "Agreement of a model with a reference model (e.g. ALeRCE's best_model_so_far via "
            "`stampflow import-alerce`) on real, unlabelled alerts: class agreement, confusion "
            "matrix (rows reference class), per-class recovery and probability differences of the "
            "raw network outputs (no rules), as OUT/compare.json, compare.csv and compare.png."
        ),
    )
    parser.add_argument("--model", type=str, required=True, help="exported model directory")
    parser.add_argument(
        "--reference", type=str, required=True, help="exported reference model directory"
    )
    parser.add_argument(
        "--alerts", nargs="+", required=True, help="alert files, directories, archives, globs"
    )
    parser.add_argument("--out", type=str, required=True, help="directory for the three files")
    parser.add_argument(
        "--select",
        choices=SELECT_MODES,
        default="all",
        help="every alert (default) or first detections only, as `stampflow run --select first`",
    )
    parser.add_argument(
        "--stamp-policy",
        choices=STAMP_SIZE_POLICIES,
        default="drop",
        help=(
            "stamps smaller than the survey's (ZTF: non-63x63) unusable (default, as ALeRCE) or "
            "NaN-padded"
        ),
    )

    def _main(args: argparse.Namespace) -> int:
        try:
            result = compare(
                args.model,
                args.reference,
                args.alerts,
                args.out,
                args.select,
                args.stamp_policy,
            )
        except CompareError as e:
            print(f"stampflow compare: {e}", file=sys.stderr)
            return 2
        print(format_summary(result, args.out.rstrip("/")))
        return 0

    parser.set_defaults(func=_main)
