"""Pictures of the stamp classifier's evaluation (SPEC §7), drawn from :mod:`model.metrics`::

    plot_confusion(report, path)                     row-normalised confusion matrix (paper Fig. 6)
    plot_sn_roc(y_true, probs, path)                 SN-vs-rest ROC, thresholds 0.1/0.2/0.5 (Fig. 9)
    plot_probability_histograms(y_true, probs, path) per-class probability histograms (Fig. 7)
    plot_reliability(y_true, probs, path)            reliability diagram with bin counts
    plot_comparison({name: report}, path)            per-class recall of several models
    plot_training_curve(curve, path)                 training and validation loss against the step
    write_report(y_true, probs, out_dir)             report.json + the first four pictures

``report`` is the dict of :func:`model.metrics.evaluate`; ``y_true [N]`` are class indices into
:data:`transforms.schema.CLASS_NAMES` and ``probs [N, 5]`` the network's probabilities.

matplotlib is imported only inside the functions that draw (the Agg canvas, no pyplot state), so
importing this module costs no more than :mod:`model.metrics`. :func:`_new_figure`, :func:`_save`
and :func:`_confusion_panel` are also used by :func:`model.compare.plot_compare`, so both confusion
matrices look alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from model.metrics import (
    ECE_BINS,
    SN_INDEX,
    SN_THRESHOLDS,
    _check_inputs,
    _ece,
    evaluate,
    rates_at_threshold,
    reliability_bins,
    roc_auc,
    roc_curve,
)
from transforms.schema import CLASS_NAMES

__all__ = [
    "REPORT_FILES",
    "TRAINING_CURVE_FILE",
    "plot_comparison",
    "plot_confusion",
    "plot_probability_histograms",
    "plot_reliability",
    "plot_sn_roc",
    "plot_training_curve",
    "write_report",
]

#: File names :func:`write_report` writes into its output directory, by picture.
REPORT_FILES: Final[dict[str, str]] = {
    "report": "report.json",
    "confusion": "confusion.png",
    "sn_roc": "sn_roc.png",
    "probability_histograms": "probability_histograms.png",
    "reliability": "reliability.png",
}
#: The learning curve's picture, written beside the report by ``stampflow train``.
TRAINING_CURVE_FILE: Final[str] = "training_curve.png"


# --- pictures -----------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight", pad_inches=0.15)
    return out


def _confusion_panel(
    fig: Any,
    ax: Any,
    names: Sequence[str],
    fractions: np.ndarray,
    support: np.ndarray,
    cells: Sequence[Sequence[str]],
    *,
    xlabel: str,
    ylabel: str,
    colorbar_label: str,
) -> None:
    """Draw a confusion matrix on ``ax``: cells shaded by row fraction, annotated, with a colorbar.

    Shared by :func:`plot_confusion` and :func:`model.compare.plot_compare`, which differ only in
    what the cells say and how the axes are named. The title is left to the caller.

    Parameters
    ----------
    fig
        The matplotlib Figure holding ``ax`` (the colorbar is added to it).
    ax
        The Axes to draw on.
    names
        Class names ``[K]``, for both axes.
    fractions
        Row fractions ``[K, K]`` in ``[0, 1]`` (rows: the true or reference class); the shading.
    support
        Members of each row's class ``[K]``, shown under its name.
    cells
        ``cells[i][j]``: the text of cell ``(i, j)``; diagonal cells are bold, and white on cells
        darker than a fraction of 0.55 so the text stays readable.
    xlabel, ylabel
        Axis labels (columns, rows).
    colorbar_label
        What the shading means.
    """
    k = len(names)
    im = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                cells[i][j],
                ha="center",
                va="center",
                fontsize=10,
                color="white" if fractions[i, j] > 0.55 else "black",
                fontweight="bold" if i == j else "normal",
            )
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), [f"{name}\n(n={support[i]})" for i, name in enumerate(names)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.tick_params(length=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).set_label(colorbar_label)


def plot_confusion(
    report: Mapping[str, Any], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Row-normalised confusion matrix annotated with percentages and counts (paper Fig. 6).

    Parameters
    ----------
    report
        Output of :func:`model.metrics.evaluate`.
    path
        PNG to write (parent directories are created).
    title
        Figure title; defaults to the report's ``name`` (if any), accuracy and balanced accuracy.

    Returns
    -------
    Path
        ``path``.
    """
    names = list(report["class_names"])
    counts = np.asarray(report["confusion_matrix"]["counts"])
    norm = np.asarray(report["confusion_matrix"]["normalized"])
    support = counts.sum(axis=1)
    k = len(names)
    cells = [
        [f"{100 * norm[i, j]:.0f}%\n({counts[i, j]})" if support[i] else "n/a" for j in range(k)]
        for i in range(k)
    ]
    fig = _new_figure(6.4, 5.6)
    ax = fig.add_subplot()
    _confusion_panel(
        fig,
        ax,
        names,
        norm,
        support,
        cells,
        xlabel="predicted class",
        ylabel="true class",
        colorbar_label="fraction of the true class",
    )
    decision = "" if report.get("decision", "argmax") == "argmax" else ", decisions after rules"
    prefix = f"{report['name']}: c" if report.get("name") else "C"
    ax.set_title(
        title
        or f"{prefix}onfusion matrix (n={report['n']}{decision})\n"
        f"accuracy {report['accuracy']:.3f}, balanced accuracy {report['balanced_accuracy']:.3f}"
    )
    return _save(fig, path)


def plot_sn_roc(
    y_true: np.ndarray,
    probs: np.ndarray,
    path: str | os.PathLike,
    thresholds: Sequence[float] = SN_THRESHOLDS,
    title: str | None = None,
) -> Path:
    """SN-versus-rest ROC curve with the decision thresholds marked (paper Fig. 9).

    The left panel shows the whole curve, the right one zooms on low false-positive rates (log
    scale), where the thresholds that matter for follow-up sit.

    Parameters
    ----------
    y_true
        True class indices ``[N]``.
    probs
        Probabilities ``[N, 5]``.
    path
        PNG to write.
    thresholds
        SN probabilities to mark on the curve.
    title
        Figure title; defaults to one with the AUC.

    Returns
    -------
    Path
        ``path``.
    """
    y, p = _check_inputs(y_true, probs)
    is_sn, p_sn = y == SN_INDEX, p[:, SN_INDEX]
    fpr, tpr, _ = roc_curve(p_sn, is_sn)
    auc = roc_auc(p_sn, is_sn)
    rates = [rates_at_threshold(p_sn, is_sn, t) for t in thresholds]
    n_pos, n_neg = int(is_sn.sum()), int((~is_sn).sum())
    colors = ("tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown")
    if not n_pos or not n_neg:  # no curve to draw: say so rather than draw a misleading one
        fig = _new_figure(6.0, 3.0)
        ax = fig.add_subplot()
        ax.axis("off")
        missing = "no true SN" if not n_pos else "no non-SN alert"
        ax.text(0.5, 0.5, f"SN ROC undefined:\n{missing} in the sample (n={len(y)})",
                ha="center", va="center", fontsize=12)  # fmt: skip
        fig.suptitle(title or "SN vs rest ROC")
        return _save(fig, path)

    floor = 0.5 / n_neg if n_neg else 1e-3  # log-FPR zoom: FPR = 0 is drawn at this left edge
    fig = _new_figure(10.5, 4.8)
    full, zoom = fig.subplots(1, 2)
    for ax, x_of in ((full, lambda f: f), (zoom, lambda f: np.maximum(f, floor))):
        ax.plot(x_of(fpr), tpr, color="tab:blue", lw=2, label=f"SN vs rest, AUC {auc:.3f}")
        for i, r in enumerate(rates):
            ax.plot(
                x_of(r["fpr"]),
                r["tpr"],
                "o",
                ms=8,
                mfc=colors[i % len(colors)],
                mec="black",
                zorder=3,
                label=f"p(SN) ≥ {r['threshold']:g}: TPR {r['tpr']:.2f}, FPR {r['fpr']:.3f}",
            )
        ax.set_ylabel("true-positive rate (SN recall)")
        ax.grid(alpha=0.3)
    full.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    full.set_xlim(0, 1)
    full.set_ylim(0, 1.02)
    full.set_xlabel("false-positive rate (non-SN with p(SN) ≥ t)")
    full.legend(loc="lower right", fontsize=8.5)
    zoom.set_xscale("log")
    zoom.set_xlim(floor, 1)
    low_tpr = min([r["tpr"] for r in rates] + [1.0])
    zoom.set_ylim(max(0.0, low_tpr - 0.2), 1.01)
    zoom.set_xlabel("false-positive rate (log scale; FPR = 0 at the left edge)")
    # Labels stacked in the empty lower-right corner (highest threshold lowest), so close points
    # never overlap; a thin line leads from each label to its point.
    by_threshold = sorted(range(len(rates)), key=lambda i: -rates[i]["threshold"])
    for slot, i in enumerate(by_threshold):
        r = rates[i]
        zoom.annotate(
            f"p(SN) ≥ {r['threshold']:g}: TPR {r['tpr']:.2f}, FPR {r['fpr']:.3f}",
            (max(r["fpr"], floor), r["tpr"]),
            xytext=(0.97, 0.04 + 0.085 * slot),
            textcoords="axes fraction",
            ha="right",
            va="bottom",
            fontsize=8.5,
            color=colors[i % len(colors)],
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colors[i % len(colors)]},
            arrowprops={"arrowstyle": "-", "color": colors[i % len(colors)], "lw": 0.8},
        )
    zoom.set_title("low false-positive region", fontsize=10)
    fig.suptitle(title or f"SN vs rest ROC ({int(is_sn.sum())} SN, {n_neg} others), AUC {auc:.3f}")
    return _save(fig, path)


def plot_probability_histograms(
    y_true: np.ndarray,
    probs: np.ndarray,
    path: str | os.PathLike,
    bins: int = 20,
    title: str | None = None,
) -> Path:
    """Per class, the distribution of that class's probability for its members and for the rest
    (paper Fig. 7): five panels, each normalised within its group, log-scaled counts.

    Parameters
    ----------
    y_true
        True class indices ``[N]``.
    probs
        Probabilities ``[N, 5]``.
    path
        PNG to write.
    bins
        Equal-width probability bins on ``[0, 1]``.
    title
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.patches import Patch

    y, p = _check_inputs(y_true, probs)
    edges = np.linspace(0.0, 1.0, bins + 1)
    fig = _new_figure(3.3 * len(CLASS_NAMES), 3.9)
    axes = fig.subplots(1, len(CLASS_NAMES), sharey=True)
    styles = (
        ("members of the class", {"color": "tab:blue", "alpha": 0.6}),
        ("all other classes", {"color": "tab:red", "alpha": 0.35}),
    )
    for i, (ax, name) in enumerate(zip(axes, CLASS_NAMES, strict=True)):
        member = y == i
        for mask, (_, style) in zip((member, ~member), styles, strict=True):
            if mask.any():
                ax.hist(
                    p[mask, i],
                    bins=edges,
                    weights=np.full(int(mask.sum()), 1.0 / mask.sum()),
                    edgecolor=style["color"],
                    linewidth=1.2,
                    **style,
                )
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_title(
            f"p({name})\n{int(member.sum())} {name} vs {int((~member).sum())} others", fontsize=10
        )
        ax.set_xlabel(f"probability of {name}")
        ax.grid(alpha=0.3, which="major")
    axes[0].set_ylabel("fraction of the group (log)")
    axes[0].set_ylim(top=1.05)
    handles = [Patch(label=label, edgecolor=st["color"], facecolor=st["color"], alpha=st["alpha"])
               for label, st in styles]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_reliability(
    y_true: np.ndarray,
    probs: np.ndarray,
    path: str | os.PathLike,
    n_bins: int = ECE_BINS,
    title: str | None = None,
) -> Path:
    """Reliability diagram: accuracy of the argmax against its probability, with bin counts.

    Parameters
    ----------
    y_true
        True class indices ``[N]``.
    probs
        Probabilities ``[N, 5]``.
    path
        PNG to write.
    n_bins
        Equal-width bins of the max probability.
    title
        Figure title; defaults to one with the ECE.

    Returns
    -------
    Path
        ``path``.
    """
    bins = reliability_bins(y_true, probs, n_bins)
    n, ece = sum(b["count"] for b in bins), _ece(bins)
    lower = np.array([b["lower"] for b in bins])
    width = 1.0 / n_bins
    count = np.array([b["count"] for b in bins])
    acc = np.array([b["accuracy"] for b in bins])
    conf = np.array([b["confidence"] for b in bins])
    filled = count > 0

    fig = _new_figure(6.0, 6.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.2))
    top.bar(
        lower[filled], acc[filled], width=width, align="edge", color="tab:blue", alpha=0.85,
        edgecolor="black", lw=0.6, label="accuracy of the argmax",
    )  # fmt: skip
    gap_low = np.minimum(acc, conf)[filled]
    top.bar(
        lower[filled], np.abs(conf - acc)[filled], bottom=gap_low, width=width, align="edge",
        facecolor="none", edgecolor="tab:red", hatch="///", lw=0.8, label="gap to mean confidence",
    )  # fmt: skip
    top.plot(
        lower[filled] + width / 2, conf[filled], "D", color="tab:red", ms=4,
        label="mean confidence in the bin",
    )  # fmt: skip
    top.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    for lo, a, c, k in zip(lower[filled], acc[filled], conf[filled], count[filled], strict=True):
        top.text(lo + width / 2, max(a, c) + 0.015, str(k), ha="center", va="bottom", fontsize=7)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.08)
    top.set_ylabel("accuracy")
    top.legend(  # above the axes: no bin's bar or count label can hide under it
        loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, fontsize=8.5, frameon=False
    )
    top.grid(alpha=0.3)
    fig.suptitle(title or f"Reliability ({n_bins} bins, n={n}): ECE {ece:.3f}")
    bottom.bar(lower, count, width=width, align="edge", color="grey", edgecolor="black", lw=0.6)
    bottom.set_xlabel("confidence (max class probability)")
    bottom.set_ylabel("alerts per bin")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def plot_comparison(
    reports: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Per-class recall and balanced accuracy of several models as grouped bars.

    Parameters
    ----------
    reports
        ``{model name: report of model.metrics.evaluate}``, e.g.
        ``{"images+metadata": a, "images only": b}``.
    path
        PNG to write.
    title
        Figure title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        No report given.
    """
    if not reports:
        raise ValueError("plot_comparison needs at least one report")
    groups = [*CLASS_NAMES, "balanced\naccuracy"]
    m = len(reports)
    width = 0.8 / m
    x = np.arange(len(groups))
    fig = _new_figure(max(7.5, 1.4 * len(groups) + 0.5 * m), 4.6)
    ax = fig.add_subplot()
    for j, (name, rep) in enumerate(reports.items()):
        values = [rep["recall"][c] for c in CLASS_NAMES] + [rep["balanced_accuracy"]]
        bars = ax.bar(
            x - 0.4 + width * (j + 0.5), values, width, label=name, edgecolor="black", lw=0.5
        )
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.axvline(len(CLASS_NAMES) - 0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 1.2)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.set_ylabel("recall (balanced accuracy = mean recall)")
    ax.legend(loc="upper center", fontsize=9, ncols=min(m, 4))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Per-class recall")
    return _save(fig, path)


# --- everything at once -------------------------------------------------------------------------
def write_report(
    y_true: np.ndarray,
    probs: np.ndarray,
    out_dir: str | os.PathLike,
    name: str = "stamp classifier",
    predicted: np.ndarray | None = None,
) -> dict[str, Any]:
    """Evaluate, then write ``report.json`` and the four pictures into ``out_dir``.

    Parameters
    ----------
    y_true
        True class indices ``[N]``.
    probs
        Probabilities ``[N, 5]``.
    out_dir
        Output directory (created if missing); file names are :data:`REPORT_FILES`.
    name
        Model or run name, stored in the report and used in picture titles.
    predicted
        Class decisions to score instead of the argmax (see :func:`model.metrics.evaluate`).

    Returns
    -------
    dict
        The report of :func:`model.metrics.evaluate` plus ``name`` and ``pictures``
        (``{picture: file name}``, relative to ``out_dir``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"name": name, **evaluate(y_true, probs, predicted)}
    pictures = {key: file for key, file in REPORT_FILES.items() if key != "report"}
    report["pictures"] = pictures
    ax_title = f"{name}: " if name else ""
    plot_confusion(report, out / pictures["confusion"])
    plot_sn_roc(
        y_true,
        probs,
        out / pictures["sn_roc"],
        title=f"{ax_title}SN vs rest ROC, AUC {report['sn_roc_auc']:.3f}",
    )
    plot_probability_histograms(
        y_true,
        probs,
        out / pictures["probability_histograms"],
        title=f"{ax_title}class probabilities of members vs others",
    )
    plot_reliability(
        y_true,
        probs,
        out / pictures["reliability"],
        title=f"{ax_title}reliability, ECE {report['expected_calibration_error']:.3f}",
    )
    (out / REPORT_FILES["report"]).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def plot_training_curve(
    curve: Sequence[Mapping[str, float | None]], path: str | os.PathLike, title: str = ""
) -> Path:
    """Training and validation loss against the iteration (``OUT/training_curve.json``).

    Parameters
    ----------
    curve
        Points ``{"step", "val_loss", "train_loss", ["train_loss_mean"]}``; the mean training loss
        since the previous point is drawn when present (one batch's loss is noisy), else the loss
        of the batch at the point.
    path
        PNG to write.
    title
        Heading (e.g. the model's name and version).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    steps = np.array([p["step"] for p in curve], float)
    val = np.array([np.nan if p["val_loss"] is None else p["val_loss"] for p in curve], float)
    mean = any("train_loss_mean" in p for p in curve)
    key = "train_loss_mean" if mean else "train_loss"
    train = np.array([np.nan if p.get(key) is None else p[key] for p in curve], float)
    fig = _new_figure(7.0, 3.6)
    ax = fig.add_subplot()
    label = "training (mean since last point)" if mean else "training (one batch)"
    ax.plot(steps, train, color="0.6", lw=0.8, label=label)
    ax.plot(steps, val, color="C0", lw=1.2, label="validation")
    if np.isfinite(val).any():
        best = int(np.nanargmin(val))
        ax.plot(steps[best], val[best], "o", color="C3", label=f"best, step {int(steps[best])}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (cross-entropy − β·entropy)")
    ax.set_title(title or "learning curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
