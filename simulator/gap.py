"""``stampflow gap``: how far simulated alerts are from real ones (the domain-gap report).

Flow: real and simulated alert files are read and decoded as the pipeline does
(:mod:`transforms.sources`, :mod:`transforms.alerts`, :mod:`transforms.stamps`) into an
:class:`AlertTable`: every numeric ``candidate`` field, the model features exactly as
:func:`transforms.features.extract_features` computes them (the 26 of ALeRCE's
``best_model_so_far``, which hold the 23 production ones), the length of the history in
``prv_candidates``, and image statistics per cutout kind (:func:`image_statistics`; the stamps
themselves are not kept). Then:

- real vs simulated distributions per column (:func:`compare_columns`: two-sample KS statistic and
  its asymptotic p-value, medians, 10th/90th percentiles, null and ``-999`` fractions), on the
  matched population (see below) and on everything;
- a cross-validated real-vs-simulated discriminator on features plus image statistics
  (:func:`discriminator_report`: L2 logistic regression on quantile-binned one-hot columns, with the
  AUC of each column alone to show which ones give the simulation away);
- with ``--reference MODEL``, that model on the simulator's labelled alerts
  (:func:`reference_report`): balanced accuracy, recall per class and per subtype, against the
  goals (>= 0.85 balanced, >= 0.75 for every class and subtype);
- ``OUT/report.json``, ``OUT/gap_features.png`` and ``OUT/gap_images.png``.

Population matching: ``stampflow run`` classifies first detections; the simulator writes alerts
across each class's history (about half are first detections) and most real alerts at hand are
repeat detections with long histories. An alert is a
*first detection* here by the production rule (:func:`transforms.rules.history_skip_reason`): no
earlier detection in its ``prv_candidates``. The comparison and the discriminator use the first
detections of both sets when the real set holds at least :data:`MIN_MATCHED` of them (else
everything, and the report says so); the report also gives the all-alerts comparison and the
population counts (``population``).

Run::

    stampflow simulate --n 3000 --out sim --seed 5
    stampflow gap --sim sim --real ../shared/data/ztf_alerts --out gap/ [--reference models/alerce]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from pipeline.argtypes import positive_int
from transforms.schema import (
    CLASS_NAMES,
    FEATURES_ALERCE_26,
    STAMP_KINDS,
    STAMP_SIZE,
)

__all__ = [
    "IMAGE_COLUMNS",
    "IMAGE_STATS",
    "MIN_MATCHED",
    "POSITION_COLUMNS",
    "AlertTable",
    "GapError",
    "auc",
    "build_report",
    "compare_columns",
    "discriminator_auc",
    "discriminator_report",
    "image_statistics",
    "ks_pvalue",
    "ks_statistic",
    "load_alert_table",
    "plot_histograms",
    "read_sim_labels",
    "reference_accuracy",
    "reference_report",
    "register",
    "run_gap",
    "summarize",
]

#: Feature columns of the report: ALeRCE's 26, a superset of the 23 production ones.
REPORT_FEATURES: Final[tuple[str, ...]] = FEATURES_ALERCE_26
#: Image statistics per cutout kind (:func:`image_statistics`).
IMAGE_STATS: Final[tuple[str, ...]] = (
    "background",  # [counts] median of the border pixels
    "noise",  # [counts] 1.4826 * MAD of the border pixels
    "peak_snr",  # (max of the central 5x5 - background) / noise
    "fwhm",  # [pixel] adaptive second-moment FWHM of the central source
    "nan_fraction",  # fraction of NaN pixels
)
#: Template noise / science noise, per alert.
NOISE_RATIO: Final[str] = "template_to_science_noise"
#: Every image-statistic column, ``{kind}_{stat}`` then :data:`NOISE_RATIO`.
IMAGE_COLUMNS: Final[tuple[str, ...]] = (
    *(f"{kind}_{stat}" for kind in STAMP_KINDS for stat in IMAGE_STATS),
    NOISE_RATIO,
)
#: History columns derived from ``prv_candidates``.
HISTORY_COLUMNS: Final[tuple[str, ...]] = ("n_prev_detections", "n_prev_nondetections")
#: Sky-position columns: the real alerts come from a few fields and nights, so the discriminator is
#: also reported without them.
POSITION_COLUMNS: Final[tuple[str, ...]] = (
    "ra",
    "dec",
    "ecl_lat",
    "ecl_long",
    "gal_lat",
    "gal_long",
)
#: Positions left out of ``worst`` (still compared): where a few real fields happen to lie on the
#: sky says nothing about the simulator.
UNRANKED_POSITION_COLUMNS: Final[frozenset[str]] = frozenset(
    {*POSITION_COLUMNS, "ranr", "decnr", "xpos", "ypos"}
)
#: Candidate fields that are identifiers, times or bookkeeping, not measurements: listed in
#: ``candidate_fields`` but neither ranked in ``worst`` nor plotted.
NON_MEASUREMENT_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "candid",
        "pid",
        "jd",
        "jdstarthist",
        "jdendhist",
        "jdstartref",
        "jdendref",
        "nid",
        "tblid",
        "field",
        "rcid",
        "programid",
        "programpi",
        "objectidps1",
        "objectidps2",
        "objectidps3",
        "ssnamenr",
        "tooflag",
    }
)
#: Raw candidate fields drawn in ``gap_features.png`` after the features (when present).
KEY_RAW_FIELDS: Final[tuple[str, ...]] = (
    "drb",
    "scorr",
    "chipsf",
    "elong",
    "clrcoeff",
    "clrcounc",
    "magzpsci",
    "magap",
    "sigmagap",
    "magdiff",
    "nbad",
    "ssdistnr",
    "neargaia",
    "maggaia",
    "srmag1",
    "exptime",
)
#: Fewest real first detections for the comparison to use the matched population.
MIN_MATCHED: Final[int] = 20
#: Width of the border frame whose pixels give background and noise [pixel].
BORDER: Final[int] = 8
#: Goals of the reference model on simulated alerts.
GOALS: Final[dict[str, float]] = {
    "balanced_accuracy": 0.85,
    "class_recall": 0.75,
    "subtype_recall": 0.75,
}
#: ZTF's "no counterpart" sentinel.
SENTINEL: Final[float] = -999.0
_MAD_TO_SIGMA: Final[float] = 1.4826
_SIGMA_TO_FWHM: Final[float] = 2.0 * math.sqrt(2.0 * math.log(2.0))


class GapError(ValueError):
    """A user mistake (missing input, nothing matched, unwritable output): one line, exit 2."""


@dataclass
class AlertTable:
    """Columns of a set of alerts (one row per decoded alert).

    Attributes
    ----------
    candid, object_id
        Identifiers, ``int64 [N]`` and ``object [N]``.
    candidate
        Every numeric candidate field seen, ``float64 [N]`` (None, absent or non-finite -> NaN).
    features
        :data:`REPORT_FEATURES` as the pipeline computes them (imputed, unclipped); rows whose
        required fields are missing are NaN.
    history
        :data:`HISTORY_COLUMNS`: detections (entries with a ``candid``) and upper limits in
        ``prv_candidates`` before this alert.
    images
        :data:`IMAGE_COLUMNS`; NaN for alerts whose stamps do not decode.
    first
        ``bool [N]``: a first detection (no earlier detection in ``prv_candidates``).
    schema_versions
        ``schemavsn`` -> count.
    counts
        ``alerts``, ``read_errors``, ``decode_errors``, ``stamp_errors``, ``padded_stamps``,
        ``feature_errors``.
    """

    candid: np.ndarray
    object_id: np.ndarray
    candidate: dict[str, np.ndarray]
    features: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    images: dict[str, np.ndarray]
    first: np.ndarray
    schema_versions: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.candid.size)

    def subset(self, mask: np.ndarray) -> AlertTable:
        """The rows where ``mask`` is True (a boolean or index array)."""

        def take(cols: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: v[mask] for k, v in cols.items()}

        return AlertTable(
            candid=self.candid[mask],
            object_id=self.object_id[mask],
            candidate=take(self.candidate),
            features=take(self.features),
            history=take(self.history),
            images=take(self.images),
            first=self.first[mask],
            schema_versions=dict(self.schema_versions),
            counts=dict(self.counts),
        )

    def columns(self) -> dict[str, np.ndarray]:
        """Every numeric column in one dict (features win over candidate fields of the name)."""
        return {**self.candidate, **self.history, **self.images, **self.features}


# --- image statistics -----------------------------------------------------------------------------
def _border_mask(rows: int, cols: int, width: int = BORDER) -> np.ndarray:
    mask = np.ones((rows, cols), dtype=bool)
    if rows > 2 * width and cols > 2 * width:
        mask[width : rows - width, width : cols - width] = False
    return mask


def _adaptive_fwhm(
    images: np.ndarray, background: np.ndarray, half: int = 8, max_sigma: float = 6.0
) -> np.ndarray:
    """Adaptive Gaussian-weighted second-moment FWHM of the source nearest the centre [pixel].

    The weight is a circular Gaussian re-centred on the weighted centroid (kept within 3 px of the
    stamp centre) whose variance is set, each iteration, to twice the weighted per-axis second
    moment; for a Gaussian source of width ``s`` this converges to ``s`` whatever the noise
    (unweighted moments of positive pixels are biased up by the noise), and it reaches ``r ~ 6 px``
    at most. NaN pixels count as background; no positive flux -> NaN.
    """
    n, rows, cols = images.shape
    cy, cx = rows // 2, cols // 2
    box = images[:, max(cy - half, 0) : cy + half + 1, max(cx - half, 0) : cx + half + 1]
    box = np.nan_to_num(box.astype(np.float64) - background[:, None, None], nan=0.0)
    y = np.arange(box.shape[1], dtype=np.float64)[None, :, None] - min(cy, half)
    x = np.arange(box.shape[2], dtype=np.float64)[None, None, :] - min(cx, half)
    xc = np.zeros(n)
    yc = np.zeros(n)
    w2 = np.full(n, 1.5**2)
    flux = np.zeros(n)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for _ in range(40):
            r2 = (x - xc[:, None, None]) ** 2 + (y - yc[:, None, None]) ** 2
            weighted = box * np.exp(-r2 / (2.0 * w2[:, None, None]))
            flux = weighted.sum(axis=(1, 2))
            good = flux > 0
            safe = np.where(good, flux, 1.0)
            m = (weighted * r2).sum(axis=(1, 2)) / safe / 2.0
            xc = np.clip((weighted * x).sum(axis=(1, 2)) / safe, -3.0, 3.0)
            yc = np.clip((weighted * y).sum(axis=(1, 2)) / safe, -3.0, 3.0)
            w2 = np.where(good & (m > 0), np.clip(2.0 * m, 0.3**2, max_sigma**2), w2)
    fwhm = _SIGMA_TO_FWHM * np.sqrt(w2)
    return np.where(flux > 0, fwhm, np.nan)


def image_statistics(stamps: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of each cutout kind, vectorised over alerts.

    Parameters
    ----------
    stamps
        ``[N, H, W, 3]`` raw stamps in :data:`~transforms.schema.STAMP_KINDS` channel order
        (science, template, difference), normally 63x63; NaN allowed.

    Returns
    -------
    dict
        :data:`IMAGE_COLUMNS` -> ``float64 [N]``: per kind ``background`` (median of the pixels in
        the outer :data:`BORDER`-pixel frame), ``noise`` (1.4826 * MAD of those pixels),
        ``peak_snr`` ((max of the central 5x5 - background) / noise), ``fwhm`` (adaptive
        second-moment FWHM of the central source, see :func:`_adaptive_fwhm`) and
        ``nan_fraction``; and ``template_to_science_noise``. A statistic that cannot be computed
        (all-NaN border, zero noise) is NaN.

    Raises
    ------
    ValueError
        If ``stamps`` is not ``[N, H, W, 3]``.
    """
    stamps = np.asarray(stamps, dtype=np.float32)
    if stamps.ndim != 4 or stamps.shape[-1] != len(STAMP_KINDS):
        raise ValueError(f"stamps must be [N, H, W, {len(STAMP_KINDS)}], got {stamps.shape}")
    n, rows, cols, _ = stamps.shape
    border = _border_mask(rows, cols)
    cy, cx = rows // 2, cols // 2
    out: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        # All-NaN stamps (saturated or missing) give NaN statistics, which is what we want.
        warnings.simplefilter("ignore", RuntimeWarning)
        for c, kind in enumerate(STAMP_KINDS):
            img = stamps[..., c]
            if n == 0:
                for stat in IMAGE_STATS:
                    out[f"{kind}_{stat}"] = np.zeros(0)
                continue
            ring = img[:, border].astype(np.float64)
            bkg = np.nanmedian(ring, axis=1)
            noise = _MAD_TO_SIGMA * np.nanmedian(np.abs(ring - bkg[:, None]), axis=1)
            noise = np.where(noise > 0, noise, np.nan)
            core = img[:, cy - 2 : cy + 3, cx - 2 : cx + 3].astype(np.float64)
            peak = np.nanmax(core.reshape(n, -1), axis=1)
            out[f"{kind}_background"] = bkg
            out[f"{kind}_noise"] = noise
            out[f"{kind}_peak_snr"] = (peak - bkg) / noise
            out[f"{kind}_fwhm"] = np.where(
                np.isfinite(bkg), _adaptive_fwhm(img, np.nan_to_num(bkg)), np.nan
            )
            out[f"{kind}_nan_fraction"] = np.isnan(img).reshape(n, -1).mean(axis=1)
        out[NOISE_RATIO] = out["template_noise"] / out["science_noise"]
    return out


# --- reading alerts -------------------------------------------------------------------------------
def _iter_alerts(paths: Sequence[str], counts: dict[str, int]) -> Iterator[Any]:
    """Decoded alerts under ``paths``; read/decode problems are counted, unmatched paths raise."""
    from transforms.sources import NoInputError, decode_paths

    try:
        for item in decode_paths(paths):
            counts["read_errors"] += item.read_error is not None
            counts["decode_errors"] += item.decode_error is not None
            yield from item.alerts
    except NoInputError as e:
        raise GapError(f"{e.pattern}: {e.reason}") from e


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _history_counts(alert: Any) -> tuple[int, int, bool]:
    """(earlier detections, earlier upper limits, is a first detection) from ``prv_candidates``."""
    jd = alert.candidate.get("jd")
    detections = limits = 0
    for prv in alert.prv_candidates:
        if prv.get("candid") is not None:
            if prv.get("jd") is not None and jd is not None and prv["jd"] < jd:
                detections += 1
        else:
            limits += 1
    return detections, limits, detections == 0


def load_alert_table(paths: Sequence[str], max_alerts: int | None = None) -> AlertTable:
    """Read, decode and tabulate every alert under ``paths``.

    Parameters
    ----------
    paths
        Files, directories, archives or globs (anything ``stampflow run`` reads).
    max_alerts
        Stop after this many decoded alerts (None: all).

    Returns
    -------
    AlertTable
        One row per decoded alert, in input order. Stamps that are not 63x63 are NaN-padded
        (``pad`` policy) for the statistics, ``nan_fraction`` being that of the cutout as sent;
        alerts whose stamps do not decode get NaN image statistics.

    Raises
    ------
    GapError
        When a path matches nothing or no alert decodes.
    """
    from transforms.features import extract_features, stack_stamps
    from transforms.stamps import StampError, decode_stamps

    counts = dict.fromkeys(
        (
            "alerts",
            "read_errors",
            "decode_errors",
            "stamp_errors",
            "padded_stamps",
            "feature_errors",
        ),
        0,
    )
    candids: list[int] = []
    objects: list[str] = []
    cand_rows: list[dict[str, float]] = []
    candidates: list[dict[str, Any]] = []
    hist: list[tuple[int, int, bool]] = []
    versions: Counter[str] = Counter()
    image_cols: dict[str, list[np.ndarray]] = {c: [] for c in IMAGE_COLUMNS}
    cubes: list[np.ndarray] = []
    nan_fracs: list[list[float]] = []

    def flush() -> None:
        if not cubes:
            return
        stats = image_statistics(np.stack(cubes))
        nan = np.asarray(nan_fracs, dtype=np.float64)
        for c, kind in enumerate(STAMP_KINDS):
            stats[f"{kind}_nan_fraction"] = nan[:, c]
        for name in IMAGE_COLUMNS:
            image_cols[name].append(stats[name])
        cubes.clear()
        nan_fracs.clear()

    for alert in _iter_alerts(paths, counts):
        if max_alerts is not None and counts["alerts"] >= max_alerts:
            break
        counts["alerts"] += 1
        cand = alert.candidate
        candids.append(int(alert.candid))
        objects.append(str(alert.object_id))
        candidates.append(cand)
        cand_rows.append({k: float(v) for k, v in cand.items() if _is_number(v)})
        hist.append(_history_counts(alert))
        versions[alert.schema_version] += 1
        try:
            images = decode_stamps({kind: alert.cutout_bytes(kind) for kind in STAMP_KINDS})
            cube, padded = stack_stamps(images, "pad", xpos=cand.get("xpos"), ypos=cand.get("ypos"))
        except StampError:
            counts["stamp_errors"] += 1
            cube = np.full((STAMP_SIZE, STAMP_SIZE, len(STAMP_KINDS)), np.nan, np.float32)
            padded, images = False, {}
        counts["padded_stamps"] += padded
        cubes.append(cube)
        nan_fracs.append(
            [float(np.isnan(images[k]).mean()) if k in images else np.nan for k in STAMP_KINDS]
        )
        if len(cubes) >= 512:
            flush()
    flush()
    n = counts["alerts"]
    if n == 0:
        raise GapError(f"no alerts decoded from {', '.join(map(str, paths))}")

    names = sorted({k for row in cand_rows for k in row})
    candidate = {k: np.array([row.get(k, np.nan) for row in cand_rows]) for k in names}
    for col in candidate.values():
        col[~np.isfinite(col)] = np.nan
    batch = extract_features(candidates, REPORT_FEATURES)
    counts["feature_errors"] = int((~batch.valid).sum())
    values = batch.values.astype(np.float64)
    values[~batch.valid] = np.nan
    features = {name: values[:, j].copy() for j, name in enumerate(batch.feature_names)}
    h = np.asarray(hist, dtype=np.int64).reshape(n, 3)
    return AlertTable(
        candid=np.asarray(candids, dtype=np.int64),
        object_id=np.asarray(objects, dtype=object),
        candidate=candidate,
        features=features,
        history={
            "n_prev_detections": h[:, 0].astype(np.float64),
            "n_prev_nondetections": h[:, 1].astype(np.float64),
        },
        images={k: np.concatenate(v) for k, v in image_cols.items()},
        first=h[:, 2].astype(bool),
        schema_versions=dict(sorted(versions.items())),
        counts=counts,
    )


# --- distributions --------------------------------------------------------------------------------
def _finite(a: Any) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def ks_statistic(a: Any, b: Any) -> float:
    """Two-sample Kolmogorov-Smirnov statistic, ignoring NaN and infinities.

    Parameters
    ----------
    a, b
        Samples (any shape).

    Returns
    -------
    float
        ``max |F_a(x) - F_b(x)|`` in [0, 1]; NaN when either sample has no finite value.

    Examples
    --------
    >>> ks_statistic([1, 2, 3], [1, 2, 3])
    0.0
    >>> ks_statistic([1, 2], [3, 4, float("nan")])
    1.0
    """
    a, b = np.sort(_finite(a)), np.sort(_finite(b))
    if a.size == 0 or b.size == 0:
        return float("nan")
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic p-value of a two-sample KS statistic (Kolmogorov distribution, Stephens' term).

    Parameters
    ----------
    d
        KS statistic.
    n, m
        Sample sizes.

    Returns
    -------
    float
        Probability of a statistic >= ``d`` when both samples share one distribution (NaN for an
        undefined ``d`` or an empty sample).
    """
    if not math.isfinite(d) or n == 0 or m == 0:
        return float("nan")
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 0.3:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return float(min(max(2.0 * total, 0.0), 1.0))


def summarize(values: Any) -> dict[str, float | int]:
    """Median, 10th and 90th percentiles, count, null and ``-999`` fractions of one column.

    Parameters
    ----------
    values
        The column (NaN = null).

    Returns
    -------
    dict
        ``n`` (finite values), ``null_frac`` (non-finite), ``sentinel_frac`` (== -999),
        ``median``, ``p10``, ``p90`` (of the finite values, NaN when none).
    """
    a = np.asarray(values, dtype=np.float64).ravel()
    f = a[np.isfinite(a)]
    total = max(a.size, 1)
    if f.size:
        p10, median, p90 = (float(v) for v in np.percentile(f, [10, 50, 90]))
    else:
        p10 = median = p90 = float("nan")
    return {
        "n": int(f.size),
        "null_frac": float((a.size - f.size) / total),
        "sentinel_frac": float(np.count_nonzero(f == SENTINEL) / total),
        "median": median,
        "p10": p10,
        "p90": p90,
    }


def compare_columns(
    real: Mapping[str, Any], sim: Mapping[str, Any], names: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Real vs simulated distribution of each column.

    Parameters
    ----------
    real, sim
        Column name -> values.
    names
        Columns to compare (default: those in both, sorted).

    Returns
    -------
    dict
        name -> ``{"ks", "p", "real": summarize(...), "sim": summarize(...)}``; ``ks`` is NaN
        when a side has no finite value.
    """
    if names is None:
        names = sorted(set(real) & set(sim))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        r, s = np.asarray(real[name], np.float64), np.asarray(sim[name], np.float64)
        d = ks_statistic(r, s)
        out[name] = {
            "ks": d,
            "p": ks_pvalue(d, int(np.isfinite(r).sum()), int(np.isfinite(s).sum())),
            "real": summarize(r),
            "sim": summarize(s),
        }
    return out


# --- discriminator --------------------------------------------------------------------------------
def auc(scores: Any, positive: Any) -> float:
    """ROC AUC as the Mann-Whitney U (ties count one half).

    Parameters
    ----------
    scores
        ``[N]`` scores, higher meaning positive.
    positive
        ``[N]`` booleans.

    Returns
    -------
    float
        AUC in [0, 1]; NaN without both classes.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    boundaries = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1, s.size]
    for lo, hi in itertools.pairwise(boundaries):
        ranks[order[lo:hi]] = 0.5 * (lo + hi - 1) + 1.0
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _bin_design(train: np.ndarray, test: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """One-hot quantile bins per column (edges from ``train``), plus a NaN bin per column."""
    blocks_tr, blocks_te = [], []
    for j in range(train.shape[1]):
        col = train[:, j]
        finite = col[np.isfinite(col)]
        edges = (
            np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
            if finite.size
            else np.zeros(0)
        )
        k = edges.size + 2  # value bins, plus NaN

        def onehot(x: np.ndarray, edges: np.ndarray = edges, k: int = k) -> np.ndarray:
            idx = np.where(np.isfinite(x), np.searchsorted(edges, x, side="right"), k - 1)
            out = np.zeros((x.size, k))
            out[np.arange(x.size), idx] = 1.0
            return out

        blocks_tr.append(onehot(col))
        blocks_te.append(onehot(test[:, j]))
    return np.hstack(blocks_tr), np.hstack(blocks_te)


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 25) -> np.ndarray:
    """L2-regularised logistic regression with class-balanced weights, by Newton's method."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    n_pos = max(int(y.sum()), 1)
    n_neg = max(n - n_pos, 1)
    sw = np.where(y > 0, n / (2.0 * n_pos), n / (2.0 * n_neg))
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0  # intercept not penalised
    w = np.zeros(d + 1)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (sw * (p - y)) + reg * w
        hess = (xb * (sw * p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return w


def _folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified fold index per row."""
    rng = np.random.default_rng(seed)
    fold = np.empty(y.size, dtype=np.int64)
    for label in (0, 1):
        idx = np.flatnonzero(y == label)
        fold[rng.permutation(idx)] = np.arange(idx.size) % folds
    return fold


def discriminator_auc(
    x_real: Any,
    x_sim: Any,
    folds: int = 5,
    seed: int = 0,
    bins: int = 8,
    l2: float = 1.0,
) -> float:
    """Cross-validated AUC of a classifier telling real from simulated rows.

    The classifier is an L2 logistic regression on quantile-binned one-hot columns (an additive
    model: any difference in a column's marginal distribution is learnable, whatever its shape;
    NaN is a bin of its own), class-balanced. 0.5 means the columns do not tell the sets apart.

    Parameters
    ----------
    x_real, x_sim
        ``[N_real, F]`` and ``[N_sim, F]`` (NaN allowed).
    folds
        Stratified folds (reduced to the smaller set's size when that is smaller).
    seed
        Fold assignment seed.
    bins
        Quantile bins per column (edges fitted on each training fold).
    l2
        Ridge penalty.

    Returns
    -------
    float
        Mean out-of-fold AUC (NaN when a set has fewer than 2 rows).
    """
    aucs = _cv_aucs(x_real, x_sim, folds, seed, bins, l2)
    return float(np.mean(aucs)) if aucs else float("nan")


def _cv_aucs(x_real: Any, x_sim: Any, folds: int, seed: int, bins: int, l2: float) -> list[float]:
    xr = np.asarray(x_real, dtype=np.float64)
    xs = np.asarray(x_sim, dtype=np.float64)
    if xr.ndim == 1:
        xr, xs = xr[:, None], xs[:, None]
    folds = min(folds, len(xr), len(xs))
    if folds < 2:
        return []
    x = np.vstack([xr, xs])
    y = np.r_[np.ones(len(xr)), np.zeros(len(xs))]
    fold = _folds(y, folds, seed)
    out = []
    for k in range(folds):
        test = fold == k
        xtr, xte = _bin_design(x[~test], x[test], bins)
        w = _fit_logistic(xtr, y[~test], l2)
        scores = xte @ w[:-1] + w[-1]
        out.append(auc(scores, y[test] > 0))
    return out


def discriminator_report(
    real: Mapping[str, Any],
    sim: Mapping[str, Any],
    names: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    top: int = 15,
) -> dict[str, Any]:
    """The real-vs-simulated discriminator on some columns, and which columns give it away.

    Parameters
    ----------
    real, sim
        Column name -> values.
    names
        Columns to use (those missing from a side are skipped).
    folds, seed
        See :func:`discriminator_auc`.
    top
        How many single-column AUCs to list.

    Returns
    -------
    dict
        ``auc`` (all columns), ``auc_std`` (over folds), ``auc_without_position`` (without
        :data:`POSITION_COLUMNS`), ``folds``, ``n_real``, ``n_sim``, ``features`` (columns used),
        ``top_features``: ``[{"name", "auc"}]``, the cross-validated AUC of each column alone,
        highest first.
    """
    cols = [n for n in names if n in real and n in sim]
    xr = np.column_stack([np.asarray(real[n], np.float64) for n in cols])
    xs = np.column_stack([np.asarray(sim[n], np.float64) for n in cols])
    aucs = _cv_aucs(xr, xs, folds, seed, 8, 1.0)
    keep = [j for j, n in enumerate(cols) if n not in POSITION_COLUMNS]
    single = [
        {"name": n, "auc": discriminator_auc(xr[:, j], xs[:, j], folds, seed)}
        for j, n in enumerate(cols)
    ]
    single.sort(key=lambda r: -np.nan_to_num(r["auc"], nan=0.0))
    return {
        "auc": float(np.mean(aucs)) if aucs else float("nan"),
        "auc_std": float(np.std(aucs)) if aucs else float("nan"),
        "auc_without_position": discriminator_auc(xr[:, keep], xs[:, keep], folds, seed),
        "folds": min(folds, len(xr), len(xs)),
        "n_real": len(xr),
        "n_sim": len(xs),
        "features": cols,
        "top_features": single[:top],
    }


# --- the reference model on labelled simulated alerts ---------------------------------------------
def _subtype_key(cls: str, subtype: str) -> str:
    return f"{cls}/{subtype}" if subtype else cls


def reference_accuracy(
    probs: Any, labels_class: Sequence[Any], labels_subtype: Sequence[str] | None = None
) -> dict[str, Any]:
    """Balanced accuracy, recall per class and per subtype, confusion matrix, against the goals.

    Parameters
    ----------
    probs
        ``[N, 5]`` probabilities in :data:`~transforms.schema.CLASS_NAMES` order.
    labels_class
        ``[N]`` true classes (names or indices).
    labels_subtype
        ``[N]`` subtypes as ``labels.csv`` writes them (``""`` for none), or None.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present),
        ``class_recall``, ``subtype_recall`` (``"class/subtype"`` -> ``{"n", "recall",
        "predicted": {class: count}}``: the fraction of that subtype predicted as its class),
        ``confusion`` (rows true, columns predicted, CLASS_NAMES order), ``goals`` and
        ``failing`` (what misses a goal).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.array(
        [CLASS_NAMES.index(c) if isinstance(c, str) else int(c) for c in labels_class],
        dtype=np.int64,
    )
    if p.ndim != 2 or p.shape != (y.size, len(CLASS_NAMES)):
        raise ValueError(f"probs must be [{y.size}, {len(CLASS_NAMES)}], got {p.shape}")
    pred = p.argmax(axis=1) if y.size else np.zeros(0, np.int64)
    k = len(CLASS_NAMES)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    class_recall = {
        c: float(confusion[i, i] / confusion[i].sum())
        for i, c in enumerate(CLASS_NAMES)
        if confusion[i].sum()
    }
    subtypes = list(labels_subtype) if labels_subtype is not None else [""] * y.size
    groups: dict[str, list[int]] = {}
    for i, (cls, sub) in enumerate(zip(y, subtypes, strict=True)):
        groups.setdefault(_subtype_key(CLASS_NAMES[cls], sub or ""), []).append(i)
    subtype_recall = {}
    for key in sorted(groups):
        idx = np.asarray(groups[key])
        predicted = Counter(CLASS_NAMES[j] for j in pred[idx])
        subtype_recall[key] = {
            "n": int(idx.size),
            "recall": float(np.mean(pred[idx] == y[idx])),
            "predicted": dict(predicted.most_common()),
        }
    balanced = float(np.mean(list(class_recall.values()))) if class_recall else float("nan")
    failing = []
    if not balanced >= GOALS["balanced_accuracy"]:
        failing.append(f"balanced_accuracy {balanced:.3f} < {GOALS['balanced_accuracy']}")
    for c, r in class_recall.items():
        if r < GOALS["class_recall"]:
            failing.append(f"class {c} recall {r:.3f} < {GOALS['class_recall']}")
    for key, s in subtype_recall.items():
        if s["recall"] < GOALS["subtype_recall"]:
            failing.append(f"subtype {key} recall {s['recall']:.3f} < {GOALS['subtype_recall']}")
    return {
        "n": int(y.size),
        "accuracy": float(np.mean(pred == y)) if y.size else float("nan"),
        "balanced_accuracy": balanced,
        "class_recall": class_recall,
        "subtype_recall": subtype_recall,
        "confusion": confusion.tolist(),
        "class_names": list(CLASS_NAMES),
        "goals": dict(GOALS),
        "meets_goals": not failing,
        "failing": failing,
    }


def read_sim_labels(path: str | os.PathLike) -> dict[int, dict[str, str]]:
    """``labels.csv`` of ``stampflow simulate``: candid -> ``{objectId, class, subtype, defect}``.

    Raises
    ------
    GapError
        When the file is missing or lacks ``candid``/``class`` columns.
    """
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"candid", "class"} <= set(reader.fieldnames):
                raise GapError(f"{path}: not a labels.csv (needs candid and class columns)")
            return {
                int(row["candid"]): {
                    "objectId": row.get("objectId") or "",
                    "class": row["class"],
                    "subtype": row.get("subtype") or "",
                    "defect": row.get("defect") or "",
                }
                for row in reader
            }
    except OSError as e:
        raise GapError(f"cannot read labels {path}: {e.strerror or e}") from e


def reference_report(
    model_dir: str,
    sim_paths: Sequence[str],
    labels: Mapping[int, Mapping[str, str]],
    max_alerts: int | None = None,
) -> dict[str, Any]:
    """A model's accuracy on the labelled simulated alerts (bare network, no rules).

    The alerts are featurised as ``stampflow run`` does for that model (its own feature list,
    ``drop`` policy for stamps that are not 63x63) and classified through the exported SavedModel
    (:func:`model.train.evaluate_model`).

    Parameters
    ----------
    model_dir
        Exported stampflow model (e.g. ``stampflow import-alerce best_model_so_far``).
    sim_paths
        Simulated alert files.
    labels
        :func:`read_sim_labels`.
    max_alerts
        Stop after this many decoded alerts.

    Returns
    -------
    dict
        :func:`reference_accuracy` plus ``model`` (name, version, features), ``n_dropped``
        (dead letters), ``n_unlabelled`` and ``per_defect`` recall when alerts carry defects.

    Raises
    ------
    GapError
        When the model directory is not an exported model or no labelled alert is usable.
    """
    from model.handler import ModelDirError, read_metadata
    from model.train import evaluate_model
    from transforms.featurize import featurize_alerts

    try:
        meta = read_metadata(model_dir)
    except ModelDirError as e:
        raise GapError(str(e)) from e
    names = list(meta["features"])
    counts = {"read_errors": 0, "decode_errors": 0}
    feats, stamps, kept, pending = [], [], [], []
    unlabelled = dropped = seen = 0

    def flush() -> None:
        nonlocal dropped
        result = featurize_alerts(pending, names, "drop")
        dropped += len(result.dead_letters)
        for candid, ex in result.examples:
            feats.append(ex["features"])
            stamps.append(ex["stamps"])
            kept.append(candid)
        pending.clear()

    for alert in _iter_alerts(sim_paths, counts):
        if max_alerts is not None and seen >= max_alerts:
            break
        seen += 1
        if alert.candid not in labels:
            unlabelled += 1
            continue
        pending.append(alert)
        if len(pending) >= 256:
            flush()
    flush()
    if not kept:
        raise GapError("no labelled simulated alert could be featurised for --reference")
    probs = evaluate_model(model_dir, np.stack(feats), np.stack(stamps))
    rows = [labels[c] for c in kept]
    out = reference_accuracy(probs, [r["class"] for r in rows], [r["subtype"] for r in rows])
    defects = [r["defect"] for r in rows]
    if any(defects):
        pred = probs.argmax(axis=1)
        y = np.array([CLASS_NAMES.index(r["class"]) for r in rows])
        out["per_defect"] = {
            d: {
                "n": int(sum(1 for x in defects if x == d)),
                "recall": float(
                    np.mean([pred[i] == y[i] for i, x in enumerate(defects) if x == d])
                ),
            }
            for d in sorted(set(defects))
        }
    out["model"] = {
        "dir": str(model_dir),
        "name": meta.get("name"),
        "version": meta.get("version"),
        "features": names,
    }
    out["n_dropped"] = dropped
    out["n_unlabelled"] = unlabelled
    out["rules"] = "none (bare network)"
    return out


# --- the report -----------------------------------------------------------------------------------
def _population(real: AlertTable, sim: AlertTable, matched: bool) -> dict[str, Any]:
    def describe(t: AlertTable) -> dict[str, Any]:
        nd = t.candidate.get("ndethist", np.full(len(t), np.nan))
        first = t.first
        return {
            "n": len(t),
            "n_first": int(first.sum()),
            "median_ndethist": summarize(nd)["median"],
            "median_ndethist_first": summarize(nd[first])["median"],
            "median_n_prev_detections": summarize(t.history["n_prev_detections"])["median"],
            "schema_versions": t.schema_versions,
            "counts": t.counts,
        }

    r, s = describe(real), describe(sim)
    differs = (
        r["n_first"] < 0.9 * r["n"]
        or abs(np.nan_to_num(r["median_ndethist"]) - np.nan_to_num(s["median_ndethist"])) > 2
    )
    if matched:
        used = (
            f"compared on first detections: {r['n_first']} real, {s['n_first']} simulated "
            "(no earlier detection in prv_candidates, the rule `stampflow run --select first` uses)"
        )
    else:
        used = (
            f"only {r['n_first']} real first detections (< {MIN_MATCHED}): compared on all alerts"
        )
    note = (
        f"real: {r['n']} alerts, {r['n_first']} first detections, median ndethist "
        f"{r['median_ndethist']:g}; simulated: {s['n']} alerts, {s['n_first']} first detections, "
        f"median ndethist {s['median_ndethist']:g}. "
    )
    if differs:
        note += "The real set is a different population (mostly repeat detections); "
    return {
        "real": r,
        "sim": s,
        "matched_on": "first" if matched else "all",
        "different_population": bool(differs),
        "note": note + used + ".",
    }


def _merge(primary: dict[str, Any], everything: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, entry in primary.items():
        out[name] = {**entry, "all": everything.get(name)}
    return out


def build_report(
    real: AlertTable,
    sim: AlertTable,
    folds: int = 5,
    seed: int = 0,
    worst: int = 15,
) -> dict[str, Any]:
    """The gap report (without the reference model) as a JSON-ready dict.

    Parameters
    ----------
    real, sim
        :func:`load_alert_table` of each set.
    folds, seed
        Discriminator cross-validation.
    worst
        Length of the ``worst`` list.

    Returns
    -------
    dict
        ``population``, ``features`` (every :data:`REPORT_FEATURES` name), ``candidate_fields``
        (every numeric candidate field present in both sets), ``history``, ``images`` (per kind
        per statistic, and the noise ratio), ``discriminator`` and ``worst`` (columns by KS;
        neither identifiers and times nor sky positions, see
        :data:`UNRANKED_POSITION_COLUMNS`). Each column entry holds ``ks``, ``p``, ``real``,
        ``sim`` on the matched population and the same under ``all`` for every alert.
    """
    matched = int(real.first.sum()) >= MIN_MATCHED and int(sim.first.sum()) >= MIN_MATCHED
    r_m = real.subset(real.first) if matched else real
    s_m = sim.subset(sim.first) if matched else sim
    cand_names = sorted(set(real.candidate) & set(sim.candidate))

    def section(get: Any, names: Sequence[str]) -> dict[str, Any]:
        return _merge(
            compare_columns(get(r_m), get(s_m), names), compare_columns(get(real), get(sim), names)
        )

    features = section(lambda t: t.features, list(REPORT_FEATURES))
    candidate_fields = section(lambda t: t.candidate, cand_names)
    history = section(lambda t: t.history, list(HISTORY_COLUMNS))
    flat_images = section(lambda t: t.images, list(IMAGE_COLUMNS))
    images: dict[str, Any] = {kind: {} for kind in STAMP_KINDS}
    for kind in STAMP_KINDS:
        for stat in IMAGE_STATS:
            images[kind][stat] = flat_images[f"{kind}_{stat}"]
    images[NOISE_RATIO] = flat_images[NOISE_RATIO]

    ranked = [("features", n, e) for n, e in features.items()]
    ranked += [
        ("candidate_fields", n, e)
        for n, e in candidate_fields.items()
        if n not in features and n not in NON_MEASUREMENT_FIELDS
    ]
    ranked += [("images", n, e) for n, e in flat_images.items()]
    ranked = [
        r for r in ranked if math.isfinite(r[2]["ks"]) and r[1] not in UNRANKED_POSITION_COLUMNS
    ]
    ranked.sort(key=lambda r: -r[2]["ks"])
    worst_list = [
        {
            "section": sec,
            "name": n,
            "ks": e["ks"],
            "p": e["p"],
            "real_median": e["real"]["median"],
            "sim_median": e["sim"]["median"],
            "real_p10_p90": [e["real"]["p10"], e["real"]["p90"]],
            "sim_p10_p90": [e["sim"]["p10"], e["sim"]["p90"]],
        }
        for sec, n, e in ranked[:worst]
    ]
    disc_names = list(REPORT_FEATURES) + list(IMAGE_COLUMNS)
    discriminator = discriminator_report(
        {**r_m.features, **r_m.images},
        {**s_m.features, **s_m.images},
        disc_names,
        folds=folds,
        seed=seed,
    )
    discriminator["population"] = "first" if matched else "all"
    return {
        "population": _population(real, sim, matched),
        "features": features,
        "candidate_fields": candidate_fields,
        "history": history,
        "images": images,
        "discriminator": discriminator,
        "worst": worst_list,
    }


# --- pictures -------------------------------------------------------------------------------------
def plot_histograms(
    real: Mapping[str, np.ndarray],
    sim: Mapping[str, np.ndarray],
    names: Sequence[str],
    path: str | os.PathLike,
    title: str,
    real_all: Mapping[str, np.ndarray] | None = None,
    ncols: int = 6,
) -> Path:
    """Overlaid normalised histograms of real vs simulated columns, KS in each panel title.

    ``-999`` sentinels are left out of the histogram and given as fractions in the panel; the range
    is the pooled 1st-99th percentile. ``real_all`` (every real alert, when the real set was
    matched to a subset) is drawn as a thin dashed line.

    Returns
    -------
    Path
        The PNG written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = [n for n in names if n in real and n in sim]
    nrows = max(1, math.ceil(len(names) / ncols))
    # No constrained layout: with ~50 panels it costs more than drawing them.
    height = 2.1 * nrows + 0.8
    fig = Figure(figsize=(3.0 * ncols, height), dpi=90)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.3 / height, top=1 - 0.75 / height, wspace=0.08, hspace=0.5
    )
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        r, s = _finite(real[name]), _finite(sim[name])
        ra = _finite(real_all[name]) if real_all is not None and name in real_all else None
        d = ks_statistic(r, s)
        pooled = np.concatenate([r[r != SENTINEL], s[s != SENTINEL]])
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(5))  # fewer tick labels: most of the drawing time
        ax.set_yticks([])
        if pooled.size == 0:
            ax.set_title(f"{name}  KS {d:.2f}", fontsize=9)
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
            continue
        lo, hi = np.percentile(pooled, [1, 99])
        # positive, spanning decades and right-skewed (scorr, peak S/N): histogram of log10
        log = bool(lo > 0 and hi / lo > 100 and np.median(pooled) - lo < 0.1 * (hi - lo))
        if log:
            r, s = _log10_keep_sentinel(r), _log10_keep_sentinel(s)
            ra = _log10_keep_sentinel(ra) if ra is not None else None
            lo, hi = np.log10(lo), np.log10(hi)
        ax.set_title(f"{name}{' (log10)' if log else ''}  KS {d:.2f}", fontsize=9)
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, 31)

        def hist(a: np.ndarray, lo: float = lo, hi: float = hi, edges: np.ndarray = edges) -> Any:
            a = np.clip(a[a != SENTINEL], lo, hi)
            h, _ = np.histogram(a, edges)
            return h / max(h.sum(), 1)

        if s.size:
            ax.stairs(hist(s), edges, fill=True, color="tab:orange", alpha=0.45, label="sim")
        if ra is not None and ra.size and ra.size != r.size:
            ax.stairs(hist(ra), edges, color="tab:blue", lw=0.8, ls="--", label="real (all)")
        if r.size:
            ax.stairs(hist(r), edges, color="tab:blue", lw=1.6, label="real")
        sent = [
            f"{lab} {np.mean(a == SENTINEL):.0%}"
            for lab, a in (("real", r), ("sim", s))
            if a.size and np.any(a == SENTINEL)
        ]
        if sent:
            ax.text(
                0.98,
                0.95,
                "-999: " + ", ".join(sent),
                ha="right",
                va="top",
                fontsize=6,
                transform=ax.transAxes,
            )
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", ncols=3, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    out = Path(path)
    fig.savefig(out, format="png")
    return out


def _log10_keep_sentinel(a: np.ndarray) -> np.ndarray:
    """log10 of the positive values; -999 stays -999 (so it is still counted as the sentinel)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(a)
    out[a == SENTINEL] = SENTINEL
    return out[np.isfinite(out)]


def _feature_plot_names(real: AlertTable, sim: AlertTable) -> list[str]:
    names = list(REPORT_FEATURES)
    names += [n for n in KEY_RAW_FIELDS if n in real.candidate and n in sim.candidate]
    names += [n for n in ("chipsf", "elong") if n not in names and n in real.candidate]
    return names + list(HISTORY_COLUMNS)


# --- command line ---------------------------------------------------------------------------------
def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """NaN/inf -> None so report.json is strict JSON."""
    if isinstance(o, float | np.floating):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    return o


def _prepare_out(out: str) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".stampflow-gap-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise GapError(f"cannot write to --out {out}: {e.strerror or e}") from e
    return path


def _fmt(x: Any) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.3g}"


def summary_lines(report: Mapping[str, Any], n_worst: int = 10) -> list[str]:
    """A short text summary: population, worst KS columns, discriminator, reference."""
    lines = [report["population"]["note"]]
    lines.append(f"worst KS ({report['population']['matched_on']}):")
    for w in report["worst"][:n_worst]:
        lines.append(
            f"  {w['name']:<28} KS {w['ks']:.2f}  real median {_fmt(w['real_median'])}  "
            f"sim median {_fmt(w['sim_median'])}"
        )
    d = report["discriminator"]
    tops = ", ".join(f"{t['name']} {t['auc']:.2f}" for t in d["top_features"][:5])
    lines.append(
        f"discriminator AUC {_fmt(d['auc'])} ± {_fmt(d['auc_std'])} "
        f"(without sky position {_fmt(d['auc_without_position'])}; {d['n_real']} real vs "
        f"{d['n_sim']} sim, {d['folds']} folds); alone: {tops}"
    )
    ref = report.get("reference")
    if ref:
        recalls = ", ".join(f"{c} {r:.2f}" for c, r in ref["class_recall"].items())
        lines.append(
            f"reference {ref['model']['name']}: balanced accuracy {_fmt(ref['balanced_accuracy'])}"
            f" on {ref['n']} simulated alerts ({recalls}); "
            + ("meets the goals" if ref["meets_goals"] else f"{len(ref['failing'])} goal(s) missed")
        )
    return lines


def run_gap(
    sim: Sequence[str],
    real: Sequence[str],
    out: str,
    labels: str | None = None,
    reference: str | None = None,
    max_alerts: int | None = None,
    folds: int = 5,
    seed: int = 0,
    plots: bool = True,
) -> dict[str, Any]:
    """Build the gap report, write ``report.json`` and the PNGs to ``out``; return the report.

    Parameters
    ----------
    sim
        Simulated alerts (directories, archives or files).
    real
        Real alerts.
    out
        Output directory (created).
    labels
        The simulation's ``labels.csv`` (default: ``labels.csv`` in the first ``sim`` directory,
        when present); needed by ``reference``.
    reference
        An exported model directory to evaluate on the labelled simulated alerts.
    max_alerts
        Read at most this many alerts from each set.
    folds, seed
        Discriminator cross-validation.
    plots
        Write ``gap_features.png`` and ``gap_images.png``.

    Raises
    ------
    GapError
        For a user mistake (missing input, nothing decoded, unwritable output, no labels).
    """
    for p in sim:
        if not (os.path.exists(p) or any(c in p for c in "*?[") or "://" in p):
            raise GapError(f"--sim {p}: no such file or directory")
    out_dir = _prepare_out(out)
    if labels is None:
        first = Path(sim[0])
        candidate = (first if first.is_dir() else first.parent) / "labels.csv"
        labels = str(candidate) if candidate.is_file() else None
    if reference is not None and labels is None:
        raise GapError("--reference needs the simulation's labels.csv (--labels)")
    label_map = read_sim_labels(labels) if labels else None
    if reference is not None:
        from model.handler import ModelDirError, read_metadata

        try:
            read_metadata(reference)  # fail before the long part
        except ModelDirError as e:
            raise GapError(str(e)) from e
    sim_table = load_alert_table(sim, max_alerts)
    try:
        real_table = load_alert_table(real, max_alerts)
    except GapError as e:
        raise GapError(f"real alerts: {e}") from e
    report = build_report(real_table, sim_table, folds=folds, seed=seed)
    report["inputs"] = {
        "sim": list(map(str, sim)),
        "real": list(map(str, real)),
        "labels": labels,
        "max_alerts": max_alerts,
    }
    if label_map is not None:
        report["sim_labels"] = dict(
            Counter(label_map[c]["class"] for c in sim_table.candid if c in label_map)
        )
    if reference is not None:
        report["reference"] = reference_report(reference, sim, label_map or {}, max_alerts)
    report = _clean(report)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=_json_default))
    if plots:
        matched = report["population"]["matched_on"] == "first"
        r_m = real_table.subset(real_table.first) if matched else real_table
        s_m = sim_table.subset(sim_table.first) if matched else sim_table
        pop = "first detections" if matched else "all alerts"
        plot_histograms(
            r_m.columns(),
            s_m.columns(),
            _feature_plot_names(real_table, sim_table),
            out_dir / "gap_features.png",
            f"features and raw candidate fields: real ({len(r_m)}) vs simulated ({len(s_m)}), "
            f"{pop}",
            real_all=real_table.columns() if matched else None,
        )
        plot_histograms(
            r_m.images,
            s_m.images,
            list(IMAGE_COLUMNS),
            out_dir / "gap_images.png",
            f"image statistics per cutout: real ({len(r_m)}) vs simulated ({len(s_m)}), {pop}",
            real_all=real_table.images if matched else None,
            ncols=5,
        )
    return report


def run(args: argparse.Namespace) -> int:
    """Run ``stampflow gap`` from parsed arguments; returns the exit code."""
    try:
        report = run_gap(
            args.sim,
            args.real,
            args.out,
            labels=args.labels,
            reference=args.reference,
            max_alerts=args.max_alerts,
            folds=args.folds,
            seed=args.seed,
            plots=not args.no_plots,
        )
    except GapError as e:
        print(f"stampflow gap: {e}", file=sys.stderr)
        return 2
    for line in summary_lines(report):
        print(line)
    print(f"wrote {Path(args.out) / 'report.json'}" + ("" if args.no_plots else " and PNGs"))
    return 0


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    """Add the ``gap`` subcommand parser.

    Parameters
    ----------
    subparsers
        The ``stampflow`` sub-parser collection.
    name
        ``"gap"``.
    """
    if name != "gap":
        raise ValueError(f"simulator.gap does not provide {name!r}")
    p = subparsers.add_parser(
        name, help="domain-gap report: simulated vs real alerts (features, images, AUC)"
    )
    p.add_argument(
        "--sim", nargs="+", required=True, help="simulated alerts: directory, archive or files"
    )
    p.add_argument(
        "--real", nargs="+", required=True, help="real alerts: files, directories, archives, globs"
    )
    p.add_argument("--out", required=True, help="output directory (report.json, PNGs)")
    p.add_argument(
        "--labels",
        default=None,
        help="labels.csv of the simulation (default: labels.csv in the --sim directory)",
    )
    p.add_argument(
        "--reference",
        default=None,
        help="exported model to evaluate on the labelled simulated alerts (e.g. ALeRCE's)",
    )
    p.add_argument(
        "--max-alerts", type=positive_int, default=None, help="read at most N alerts per set"
    )
    p.add_argument("--folds", type=positive_int, default=5, help="discriminator CV folds (5)")
    p.add_argument("--seed", type=int, default=0, help="discriminator fold seed (0)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.set_defaults(func=run)
