"""``stampflow gap``: how far simulated alerts are from real ones (the domain-gap report).

Flow: real and simulated alert files are read and decoded as the pipeline does
(:mod:`transforms.sources`, :mod:`transforms.alerts`, :mod:`transforms.stamps`) into an
:class:`AlertTable` of one survey (:class:`GapProfile`; ``--survey ztf|lsst``, by default the
real alerts' survey; a set that mixes surveys, or a simulation of another survey, is refused):

- ZTF: every numeric ``candidate`` field, the model features exactly as
  :func:`transforms.features.extract_features` computes them (the 26 of ALeRCE's
  ``best_model_so_far``, which hold the 23 production ones), the length of the history in
  ``prv_candidates``, and image statistics per 63x63 cutout [DN] (:func:`image_statistics`);
- Rubin (LSST): every numeric or boolean (0/1) ``diaSource`` field, the 23
  :data:`~transforms.schema.FEATURES_LSST` as :func:`transforms.surveys.lsst.lsst_features`
  computes them, the lengths of ``prvDiaSources`` and ``prvDiaForcedSources``, and image
  statistics [nJy] of the 30x30 cube the model sees (:meth:`LSST.stamp_cube
  <transforms.surveys.base.Survey.stamp_cube>`), with the noise checked against the cutouts'
  variance plane and the FWHM of their PSF image (``image_statistics(..., survey="lsst")``).

The stamps themselves are not kept. Then:

- real vs simulated distributions per column (:func:`compare_columns`: two-sample KS statistic and
  its asymptotic p-value, medians, 10th/90th percentiles, null and ``-999`` fractions), on the
  matched population (see below) and on everything;
- a cross-validated real-vs-simulated discriminator on features plus image statistics
  (:func:`discriminator_report`: L2 logistic regression on quantile-binned one-hot columns, with the
  AUC of each column alone to show which ones give the simulation away);
- with ``--reference MODEL``, that model (of the same survey) on the simulator's labelled alerts
  (:func:`reference_report`): balanced accuracy, recall per class and per subtype, against the
  goals (>= 0.85 balanced, >= 0.75 for every class and subtype);
- ``OUT/report.json``, ``OUT/gap_features.png`` and ``OUT/gap_images.png``.

Population matching: ``stampflow run`` classifies first detections; the simulator writes alerts
across each class's history (about half are first detections) and most real alerts at hand are
repeat detections with long histories. An alert is a
*first detection* here by the production rule (:func:`transforms.rules.history_skip_reason` for
ZTF, :meth:`Alert.earlier_detection <transforms.alerts.Alert.earlier_detection>` for Rubin): no
earlier detection in its ``prv_candidates`` / ``prvDiaSources``. The comparison and the
discriminator use the first detections of both sets when each holds at least the survey's
:attr:`GapProfile.min_matched` of them (:data:`MIN_MATCHED` for ZTF, :data:`MIN_MATCHED_LSST` for
Rubin; else everything, and the report says so); the report also gives the all-alerts comparison
and the population counts (``population``).

Files found in a ``sample_data`` directory while walking a ``--real`` directory are skipped (and
counted): lsst-alert-packet ships made-up packets there. Name such a file or directory itself to
read it.

Run::

    stampflow simulate --n 3000 --out sim --seed 5
    stampflow gap --sim sim --real ../shared/data/ztf_alerts --out gap/ [--reference models/alerce]
    stampflow simulate --survey lsst --n 3000 --first-detections --out sim_lsst \\
        --schema-dir ../shared/data/rubin_alerts/lsst-alert-packet-30.2026.2700_pypi
    stampflow gap --sim sim_lsst --real ../shared/data/rubin_alerts --out gap_lsst/
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
    FEATURES_LSST,
    LSST_STAMP_SIZE,
    STAMP_KINDS,
    STAMP_SIZE,
)

__all__ = [
    "IMAGE_COLUMNS",
    "IMAGE_STATS",
    "LSST_IMAGE_COLUMNS",
    "LSST_IMAGE_STATS",
    "MIN_MATCHED",
    "MIN_MATCHED_LSST",
    "POSITION_COLUMNS",
    "PROFILES",
    "SURVEY_CHOICES",
    "AlertTable",
    "GapError",
    "GapProfile",
    "SurveyMismatchError",
    "auc",
    "build_report",
    "compare_columns",
    "compared_populations",
    "discriminator_auc",
    "discriminator_report",
    "fits_images",
    "image_statistics",
    "ks_pvalue",
    "ks_statistic",
    "load_alert_table",
    "plot_histograms",
    "psf_image_fwhm",
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
#: Difference of null fractions (real - simulated) listed in the report's ``null_gaps``.
NULL_GAP: Final[float] = 0.1
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


class SurveyMismatchError(GapError):
    """An alert of another survey than the one being compared (sets are one survey each).

    Parameters
    ----------
    source
        Where the alert came from.
    found
        Its survey.
    expected
        The survey of the table being read.
    """

    def __init__(self, source: str, found: str, expected: str) -> None:
        super().__init__(f"{source} is a {found} alert, not {expected}")
        self.source = source
        self.found = found
        self.expected = expected


# --- Rubin (LSST) ---------------------------------------------------------------------------------
#: Image statistics per Rubin cutout kind, on the 30x30 cube the model sees
#: (``image_statistics(..., survey="lsst")``).
LSST_IMAGE_STATS: Final[tuple[str, ...]] = (
    "background",  # [nJy] median of the border pixels (the cutouts are background-subtracted)
    "noise",  # [nJy] 1.4826 * MAD of the border pixels
    "noise_to_variance",  # noise / sqrt(median variance plane over the border); 1 when consistent
    "peak_snr",  # (max of the central 5x5 - background) / noise
    "centre_fraction",  # sum(central 5x5 - background) / sum(|pixel - background|), in [-1, 1]
    "negative_fraction",  # fraction of the pixels below background - 3 noise
    "fwhm",  # [pixel] adaptive second-moment FWHM of the central source (0.2"/px)
    "psf_fwhm",  # [pixel] the same of the cutout's PSF image (its third HDU)
    "nan_fraction",  # fraction of NaN pixels of the cutout as sent
)
#: Every Rubin image-statistic column, ``{kind}_{stat}`` then :data:`NOISE_RATIO`.
LSST_IMAGE_COLUMNS: Final[tuple[str, ...]] = (
    *(f"{kind}_{stat}" for kind in STAMP_KINDS for stat in LSST_IMAGE_STATS),
    NOISE_RATIO,
)
#: History columns of a Rubin alert: ``len(prvDiaSources)``, ``len(prvDiaForcedSources)``.
LSST_HISTORY_COLUMNS: Final[tuple[str, ...]] = ("n_prv_dia_sources", "n_prv_dia_forced_sources")
#: Fewest first detections (on each side) for a Rubin comparison on the matched population. Lower
#: than ZTF's: the real Rubin alerts at hand hold 24 first detections, and their 12 repeat
#: detections (bright AGN and variables with 140-1,067 earlier detections, g and i) are a
#: population the first-detection simulation does not attempt, so comparing on everything would
#: measure that; with 10 real values only gross shifts are significant (KS > ~0.43 at 5%).
MIN_MATCHED_LSST: Final[int] = 10
#: Border frame of a Rubin cube [pixel]: its pixels are >= 10 px (2.7 sigma of the broadest PSF
#: seen, FWHM 8.7 px) from the centre of the 30x30 cube.
LSST_BORDER: Final[int] = 5
#: Rubin fields that are positions on the sky or the detector (compared, not ranked).
LSST_UNRANKED_COLUMNS: Final[frozenset[str]] = frozenset(
    {*POSITION_COLUMNS, "x", "y", "trailRa", "trailDec"}
)
#: ``diaSource`` fields that are identifiers, times or bookkeeping.
LSST_NON_MEASUREMENT_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "diaSourceId",
        "diaObjectId",
        "ssObjectId",
        "parentDiaSourceId",
        "visit",
        "detector",
        "midpointMjdTai",
        "timeProcessedMjdTai",
        "timeWithdrawnMjdTai",
    }
)
#: Raw ``diaSource`` fields drawn in ``gap_features.png`` after the features (when present).
LSST_KEY_RAW_FIELDS: Final[tuple[str, ...]] = (
    "psfFlux",
    "psfFluxErr",
    "apFlux",
    "apFluxErr",
    "scienceFlux",
    "scienceFluxErr",
    "templateFlux",
    "templateFluxErr",
    "psfChi2",
    "psfNdata",
    "bboxSize",
    "ixx",
    "iyy",
    "ixy",
    "ixxPSF",
    "iyyPSF",
    "trailLength",
    "trailFlux",
    "dipoleChi2",
    "raErr",
    "decErr",
)
#: ``--survey`` values: ``auto`` is the real alerts' survey.
SURVEY_CHOICES: Final[tuple[str, ...]] = ("auto", "ztf", "lsst")
#: Directory name whose files a walk of a ``--real`` directory skips (lsst-alert-packet's
#: made-up sample packets live in ``schema/M/m/sample_data/``).
SAMPLE_DATA_DIR: Final[str] = "sample_data"


@dataclass(frozen=True)
class GapProfile:
    """What the gap report compares for one survey.

    Attributes
    ----------
    survey
        ``ztf`` or ``lsst``.
    features
        Feature columns (model features as the pipeline computes them).
    image_stats, image_columns
        Statistics per cutout kind and every image column (``{kind}_{stat}``, then
        :data:`NOISE_RATIO`).
    history_columns
        History-length columns; the first counts earlier detections.
    border
        Width of the border frame giving background and noise [pixel].
    min_matched
        Fewest first detections on each side for the matched comparison.
    unranked
        Compared columns left out of ``worst`` (positions).
    non_measurement
        Detection fields that are ids, times or bookkeeping (not ranked, not plotted).
    key_raw_fields
        Detection fields drawn after the features.
    source_name, history_name, ndet_name
        How the survey names the detection record, its history and its detection count (for
        the notes).
    pixel_unit
        Unit of the cutout pixels.
    min_ranked
        Fewest finite values on each side for a column to be ranked in ``worst`` (Rubin's
        dipole-fit fields are null in most alerts: a KS of 4 values says little).
    band_column
        A feature naming the band: when set, the simulated alerts compared are those in the
        bands of the real ones (see :func:`compared_populations`); None: no band matching.
    """

    survey: str
    features: tuple[str, ...]
    image_stats: tuple[str, ...]
    image_columns: tuple[str, ...]
    history_columns: tuple[str, ...]
    border: int
    min_matched: int
    unranked: frozenset[str]
    non_measurement: frozenset[str]
    key_raw_fields: tuple[str, ...]
    source_name: str
    history_name: str
    ndet_name: str
    pixel_unit: str
    min_ranked: int = 1
    band_column: str | None = None


#: The profile of each survey.
PROFILES: Final[dict[str, GapProfile]] = {
    "ztf": GapProfile(
        survey="ztf",
        features=REPORT_FEATURES,
        image_stats=IMAGE_STATS,
        image_columns=IMAGE_COLUMNS,
        history_columns=HISTORY_COLUMNS,
        border=BORDER,
        min_matched=MIN_MATCHED,
        unranked=UNRANKED_POSITION_COLUMNS,
        non_measurement=NON_MEASUREMENT_FIELDS,
        key_raw_fields=KEY_RAW_FIELDS,
        source_name="candidate",
        history_name="prv_candidates",
        ndet_name="ndethist",
        pixel_unit="DN",
    ),
    "lsst": GapProfile(
        survey="lsst",
        features=FEATURES_LSST,
        image_stats=LSST_IMAGE_STATS,
        image_columns=LSST_IMAGE_COLUMNS,
        history_columns=LSST_HISTORY_COLUMNS,
        border=LSST_BORDER,
        min_matched=MIN_MATCHED_LSST,
        unranked=LSST_UNRANKED_COLUMNS,
        non_measurement=LSST_NON_MEASUREMENT_FIELDS,
        key_raw_fields=LSST_KEY_RAW_FIELDS,
        source_name="diaSource",
        history_name="prvDiaSources",
        ndet_name="nDiaSources",
        pixel_unit="nJy",
        min_ranked=MIN_MATCHED_LSST,
        band_column="band_wavelength",
    ),
}


@dataclass
class AlertTable:
    """Columns of a set of alerts (one row per decoded alert).

    Attributes
    ----------
    candid, object_id
        Identifiers, ``int64 [N]`` and ``object [N]``.
    candidate
        Every numeric field of the detection (ZTF ``candidate``; Rubin ``diaSource``, booleans
        as 0/1), ``float64 [N]`` (None, absent or non-finite -> NaN).
    features
        The profile's features (:data:`REPORT_FEATURES`, :data:`~transforms.schema.FEATURES_LSST`)
        as the pipeline computes them (imputed, unclipped); rows whose required fields are
        missing are NaN.
    history
        ZTF :data:`HISTORY_COLUMNS`: detections (entries with a ``candid``) and upper limits in
        ``prv_candidates`` before this alert; Rubin :data:`LSST_HISTORY_COLUMNS`.
    images
        The profile's image columns; NaN for alerts whose stamps do not decode.
    first
        ``bool [N]``: a first detection (no earlier detection in its history).
    schema_versions
        ``schemavsn`` (Rubin: Fink's ``lsst_schema_version``, ``""`` for raw packets) -> count.
    counts
        ``alerts``, ``read_errors``, ``decode_errors``, ``stamp_errors``, ``padded_stamps``,
        ``feature_errors``; ``skipped_sample_data`` for a real set; Rubin also
        ``plane_errors`` (a variance or PSF HDU that could not be read).
    survey
        ``ztf`` or ``lsst`` (:data:`PROFILES`).
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
    survey: str = "ztf"

    @property
    def profile(self) -> GapProfile:
        """The survey's :class:`GapProfile`."""
        return PROFILES[self.survey]

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
            survey=self.survey,
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


def image_statistics(
    stamps: np.ndarray,
    survey: str = "ztf",
    variance: np.ndarray | None = None,
    psf_fwhm: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Statistics of each cutout kind, vectorised over alerts.

    Parameters
    ----------
    stamps
        ``[N, H, W, 3]`` raw stamps in :data:`~transforms.schema.STAMP_KINDS` channel order
        (science, template, difference): ZTF's normally 63x63 [DN], Rubin's the 30x30 cube the
        model sees [nJy]; NaN allowed.
    survey
        ``"ztf"`` (:data:`IMAGE_COLUMNS`) or ``"lsst"`` (:data:`LSST_IMAGE_COLUMNS`).
    variance
        Rubin only: ``[N, H, W, 3]`` the cutouts' variance planes [nJy^2], cropped as ``stamps``
        (None or NaN: ``noise_to_variance`` is NaN).
    psf_fwhm
        Rubin only: ``[N, 3]`` FWHM of each cutout's PSF image [pixel]
        (:func:`psf_image_fwhm`; None: NaN).

    Returns
    -------
    dict
        Image column -> ``float64 [N]``. ZTF, per kind: ``background`` (median of the pixels in
        the outer :data:`BORDER`-pixel frame), ``noise`` (1.4826 * MAD of those pixels),
        ``peak_snr`` ((max of the central 5x5 - background) / noise), ``fwhm`` (adaptive
        second-moment FWHM of the central source, see :func:`_adaptive_fwhm`) and
        ``nan_fraction``; and ``template_to_science_noise``. Rubin: the same on a
        :data:`LSST_BORDER`-pixel frame, plus ``noise_to_variance``, ``centre_fraction``,
        ``negative_fraction`` and ``psf_fwhm`` (see :data:`LSST_IMAGE_STATS`). A statistic that
        cannot be computed (all-NaN border, zero noise) is NaN.

    Raises
    ------
    ValueError
        If ``stamps`` is not ``[N, H, W, 3]``, ``variance`` not its shape, ``psf_fwhm`` not
        ``[N, 3]`` or ``survey`` unknown.
    """
    stamps = np.asarray(stamps, dtype=np.float32)
    if stamps.ndim != 4 or stamps.shape[-1] != len(STAMP_KINDS):
        raise ValueError(f"stamps must be [N, H, W, {len(STAMP_KINDS)}], got {stamps.shape}")
    if survey == "lsst":
        return _lsst_image_statistics(stamps, variance, psf_fwhm)
    if survey != "ztf":
        raise ValueError(f"survey must be ztf or lsst, got {survey!r}")
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


def _lsst_image_statistics(
    stamps: np.ndarray, variance: np.ndarray | None, psf_fwhm: np.ndarray | None
) -> dict[str, np.ndarray]:
    """:func:`image_statistics` of Rubin cubes (``stamps`` already checked)."""
    n, rows, cols, k = stamps.shape
    if variance is not None:
        variance = np.asarray(variance, dtype=np.float64)
        if variance.shape != stamps.shape:
            raise ValueError(f"variance must be {stamps.shape}, got {variance.shape}")
    if psf_fwhm is not None:
        psf_fwhm = np.asarray(psf_fwhm, dtype=np.float64)
        if psf_fwhm.shape != (n, k):
            raise ValueError(f"psf_fwhm must be [{n}, {k}], got {psf_fwhm.shape}")
    border = _border_mask(rows, cols, PROFILES["lsst"].border)
    cy, cx = rows // 2, cols // 2
    out: dict[str, np.ndarray] = {}
    if n == 0:
        return {name: np.zeros(0) for name in LSST_IMAGE_COLUMNS}
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN stamps: NaN statistics
        for c, kind in enumerate(STAMP_KINDS):
            img = stamps[..., c].astype(np.float64)
            ring = img[:, border]
            bkg = np.nanmedian(ring, axis=1)
            noise = _MAD_TO_SIGMA * np.nanmedian(np.abs(ring - bkg[:, None]), axis=1)
            noise = np.where(noise > 0, noise, np.nan)
            if variance is not None:
                var = np.nanmedian(variance[..., c][:, border], axis=1)
                ratio = noise / np.sqrt(np.where(var > 0, var, np.nan))
            else:
                ratio = np.full(n, np.nan)
            resid = img - bkg[:, None, None]
            core = resid[:, cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(n, -1)
            total = np.nansum(np.abs(resid).reshape(n, -1), axis=1)
            finite = np.isfinite(img).reshape(n, -1).sum(axis=1)
            below = (resid < -3.0 * noise[:, None, None]).reshape(n, -1).sum(axis=1)
            out[f"{kind}_background"] = bkg
            out[f"{kind}_noise"] = noise
            out[f"{kind}_noise_to_variance"] = ratio
            out[f"{kind}_peak_snr"] = np.nanmax(core, axis=1) / noise
            out[f"{kind}_centre_fraction"] = np.where(
                total > 0, np.nansum(core, axis=1) / np.where(total > 0, total, 1.0), np.nan
            )
            out[f"{kind}_negative_fraction"] = np.where(
                np.isfinite(noise) & (finite > 0), below / np.maximum(finite, 1), np.nan
            )
            out[f"{kind}_fwhm"] = np.where(
                np.isfinite(bkg),
                _adaptive_fwhm(img, np.nan_to_num(bkg), half=10, max_sigma=8.0),
                np.nan,
            )
            out[f"{kind}_psf_fwhm"] = psf_fwhm[:, c] if psf_fwhm is not None else np.full(n, np.nan)
            out[f"{kind}_nan_fraction"] = np.isnan(img).reshape(n, -1).mean(axis=1)
        out[NOISE_RATIO] = out["template_noise"] / out["science_noise"]
    return {name: out[name] for name in LSST_IMAGE_COLUMNS}


def psf_image_fwhm(psfs: Sequence[np.ndarray | None]) -> np.ndarray:
    """Adaptive second-moment FWHM of PSF images (Rubin's third cutout HDU) [pixel].

    Parameters
    ----------
    psfs
        PSF images of any (odd or even) sizes, the PSF centred; None for a missing one.

    Returns
    -------
    numpy.ndarray
        ``float64 [len(psfs)]``; NaN for a missing or empty image. Images of one shape are
        measured together (:func:`_adaptive_fwhm` with no background: the PSF is a noiseless
        model).

    Examples
    --------
    >>> y, x = np.mgrid[:41, :41] - 20.0
    >>> g = np.exp(-(x**2 + y**2) / (2 * 2.0**2))
    >>> [round(float(v), 2) for v in psf_image_fwhm([g / g.sum(), None])]
    [4.71, nan]
    """
    out = np.full(len(psfs), np.nan)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(psfs):
        if p is not None and p.ndim == 2 and p.size:
            by_shape.setdefault(p.shape, []).append(i)
    for shape, idx in by_shape.items():
        images = np.stack([psfs[i] for i in idx]).astype(np.float64)
        half = min(shape) // 2
        out[idx] = _adaptive_fwhm(images, np.zeros(len(idx)), half=half, max_sigma=10.0)
    return out


# --- Rubin cutout planes --------------------------------------------------------------------------
_FITS_BLOCK: Final[int] = 2880
_FITS_CARD: Final[int] = 80
_FITS_DTYPES: Final[dict[int, str]] = {
    8: ">u1",
    16: ">i2",
    32: ">i4",
    64: ">i8",
    -32: ">f4",
    -64: ">f8",
}


def fits_images(buf: bytes, max_hdus: int = 8) -> list[np.ndarray | None]:
    """The 2-D images of every HDU of an uncompressed FITS file (Rubin cutouts), in order.

    Parameters
    ----------
    buf
        The FITS bytes (primary HDU, then ``XTENSION = 'IMAGE'`` HDUs).
    max_hdus
        Stop after this many HDUs.

    Returns
    -------
    list
        ``float64 (NAXIS2, NAXIS1)`` per HDU (BSCALE/BZERO applied), None for one without a
        2-D image. Reading stops silently at the end of the data.

    Raises
    ------
    ValueError
        On a header without END, an unknown BITPIX, missing or bad axis lengths, or data
        shorter than the header says.
    """
    out: list[np.ndarray | None] = []
    pos = 0
    while pos + _FITS_BLOCK <= len(buf) and len(out) < max_hdus:
        cards: dict[str, str] = {}
        start = None
        for card_pos in range(pos, len(buf) - _FITS_CARD + 1, _FITS_CARD):
            card = buf[card_pos : card_pos + _FITS_CARD].decode("ascii", "replace")
            key = card[:8].rstrip()
            if key == "END":
                start = pos + -(-(card_pos + _FITS_CARD - pos) // _FITS_BLOCK) * _FITS_BLOCK
                break
            if card[8:10] == "= " and key not in cards:
                cards[key] = card[10:].split("/", 1)[0].strip()
        if start is None:
            raise ValueError(f"FITS header at byte {pos} has no END card")
        bitpix = int(cards.get("BITPIX", "0"))
        if bitpix not in _FITS_DTYPES:
            raise ValueError(f"FITS BITPIX {bitpix} at byte {pos}")
        naxis = int(cards.get("NAXIS", "0"))
        try:
            dims = [int(cards[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
        except KeyError as e:
            raise ValueError(f"FITS header at byte {pos} lacks {e.args[0]}") from e
        if any(d < 0 for d in dims):
            raise ValueError(f"FITS header at byte {pos}: negative axis length {dims}")
        count = math.prod(dims) if naxis else 0
        nbytes = count * abs(bitpix) // 8
        if start + nbytes > len(buf):
            raise ValueError(f"FITS data at byte {start} needs {nbytes} B, {len(buf) - start} left")
        image = None
        if naxis == 2 and count:
            data = np.frombuffer(buf, _FITS_DTYPES[bitpix], count=count, offset=start)
            image = data.reshape(dims[1], dims[0]).astype(np.float64)
            bscale = float(cards.get("BSCALE", "1") or 1)
            bzero = float(cards.get("BZERO", "0") or 0)
            if bscale != 1.0 or bzero != 0.0:
                image = image * bscale + bzero
        out.append(image)
        pos = start + -(-nbytes // _FITS_BLOCK) * _FITS_BLOCK
    return out


# --- reading alerts -------------------------------------------------------------------------------
def _in_sample_data(path: str, root: str) -> bool:
    """True when ``path`` lies in a :data:`SAMPLE_DATA_DIR` directory below ``root``."""
    return SAMPLE_DATA_DIR in Path(os.path.relpath(path, root)).parts[:-1]


def _iter_alerts(
    paths: Sequence[str], counts: dict[str, int], skip_sample_data: bool = False
) -> Iterator[Any]:
    """Decoded alerts under ``paths``; read/decode problems are counted, unmatched paths raise.

    With ``skip_sample_data``, alerts of files in a :data:`SAMPLE_DATA_DIR` directory below a
    local directory given in ``paths`` are left out and counted as ``skipped_sample_data``.
    """
    from transforms.sources import NoInputError, decode_paths

    try:
        for pattern in map(str, paths):
            walk = skip_sample_data and "://" not in pattern and os.path.isdir(pattern)
            for item in decode_paths([pattern]):
                if walk and _in_sample_data(item.path, pattern):
                    counts["skipped_sample_data"] += len(item.alerts)
                    continue
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


def _column_dict(rows: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Rows of ``name -> value`` as columns, NaN where absent or not finite."""
    names = sorted({k for row in rows for k in row})
    columns = {k: np.array([row.get(k, np.nan) for row in rows], dtype=np.float64) for k in names}
    for col in columns.values():
        col[~np.isfinite(col)] = np.nan
    return columns


def _feature_columns(batch: Any, counts: dict[str, int]) -> dict[str, np.ndarray]:
    """A :class:`~transforms.features.FeatureBatch` as columns, invalid rows NaN."""
    counts["feature_errors"] = int((~batch.valid).sum())
    values = batch.values.astype(np.float64)
    values[~batch.valid] = np.nan
    return {name: values[:, j].copy() for j, name in enumerate(batch.feature_names)}


class _ZtfRows:
    """Columns of ZTF alerts, one :meth:`add` per alert (image statistics in batches)."""

    survey = "ztf"

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.cand_rows: list[dict[str, float]] = []
        self.candidates: list[dict[str, Any]] = []
        self.hist: list[tuple[int, int, bool]] = []
        self.image_cols: dict[str, list[np.ndarray]] = {c: [] for c in IMAGE_COLUMNS}
        self.cubes: list[np.ndarray] = []
        self.nan_fracs: list[list[float]] = []

    def add(self, alert: Any) -> None:
        from transforms.features import stack_stamps
        from transforms.stamps import StampError, decode_stamps

        cand = alert.candidate
        self.candidates.append(cand)
        self.cand_rows.append({k: float(v) for k, v in cand.items() if _is_number(v)})
        self.hist.append(_history_counts(alert))
        try:
            images = decode_stamps({kind: alert.cutout_bytes(kind) for kind in STAMP_KINDS})
            cube, padded = stack_stamps(images, "pad", xpos=cand.get("xpos"), ypos=cand.get("ypos"))
        except StampError:
            self.counts["stamp_errors"] += 1
            cube = np.full((STAMP_SIZE, STAMP_SIZE, len(STAMP_KINDS)), np.nan, np.float32)
            padded, images = False, {}
        self.counts["padded_stamps"] += padded
        self.cubes.append(cube)
        self.nan_fracs.append(
            [float(np.isnan(images[k]).mean()) if k in images else np.nan for k in STAMP_KINDS]
        )
        if len(self.cubes) >= 512:
            self.flush()

    def flush(self) -> None:
        if not self.cubes:
            return
        stats = image_statistics(np.stack(self.cubes))
        nan = np.asarray(self.nan_fracs, dtype=np.float64)
        for c, kind in enumerate(STAMP_KINDS):
            stats[f"{kind}_nan_fraction"] = nan[:, c]
        for name in IMAGE_COLUMNS:
            self.image_cols[name].append(stats[name])
        self.cubes.clear()
        self.nan_fracs.clear()

    def columns(self) -> dict[str, Any]:
        """``candidate``, ``features``, ``history``, ``images`` and ``first`` of the rows."""
        from transforms.features import extract_features

        self.flush()
        n = len(self.cand_rows)
        h = np.asarray(self.hist, dtype=np.int64).reshape(n, 3)
        return {
            "candidate": _column_dict(self.cand_rows),
            "features": _feature_columns(
                extract_features(self.candidates, REPORT_FEATURES), self.counts
            ),
            "history": {
                "n_prev_detections": h[:, 0].astype(np.float64),
                "n_prev_nondetections": h[:, 1].astype(np.float64),
            },
            "images": {k: np.concatenate(v) for k, v in self.image_cols.items()},
            "first": h[:, 2].astype(bool),
        }


class _LsstRows:
    """Columns of Rubin alerts: ``diaSource`` fields (booleans 0/1), the LSST features, history
    lengths, and image statistics of the model's cube with the cutouts' variance and PSF HDUs."""

    survey = "lsst"

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        counts.setdefault("plane_errors", 0)
        self.src_rows: list[dict[str, float]] = []
        self.sources: list[dict[str, Any]] = []
        self.hist: list[tuple[int, int, bool]] = []
        self.image_cols: dict[str, list[np.ndarray]] = {c: [] for c in LSST_IMAGE_COLUMNS}
        self.cubes: list[np.ndarray] = []
        self.variances: list[np.ndarray] = []
        self.psfs: list[list[np.ndarray | None]] = []
        self.nan_fracs: list[list[float]] = []

    def _planes(self, alert: Any) -> tuple[np.ndarray, list[np.ndarray | None], list[float]]:
        """Variance cube (cropped as the model's cube), PSF images and NaN fractions per kind."""
        from transforms.stamps import StampError, inflate
        from transforms.surveys.lsst import centre_stamp

        size = LSST_STAMP_SIZE
        var = np.full((size, size, len(STAMP_KINDS)), np.nan, np.float32)
        psfs: list[np.ndarray | None] = []
        nan: list[float] = []
        failed = False
        for c, kind in enumerate(STAMP_KINDS):
            data = alert.cutout_bytes(kind)
            try:
                hdus = fits_images(inflate(data)) if data else []
            except (StampError, ValueError):
                hdus = []
            image = hdus[0] if hdus else None
            nan.append(float(np.isnan(image).mean()) if image is not None else np.nan)
            # Rubin's cutout HDUs: image [nJy], variance [nJy^2], PSF (unit sum).
            if len(hdus) > 1 and hdus[1] is not None:
                try:
                    var[:, :, c] = centre_stamp(hdus[1], size, "pad", kind)[0]
                except StampError:
                    failed = True
            else:
                failed = True
            psf = hdus[2] if len(hdus) > 2 else None
            failed |= psf is None
            psfs.append(psf)
        self.counts["plane_errors"] += failed
        return var, psfs, nan

    def add(self, alert: Any) -> None:
        from transforms.stamps import StampError

        record = alert.record
        src = alert.candidate
        self.sources.append(src)
        self.src_rows.append({k: float(v) for k, v in src.items() if isinstance(v, int | float)})
        self.hist.append(
            (
                len(record.get("prvDiaSources") or ()),
                len(record.get("prvDiaForcedSources") or ()),
                not alert.earlier_detection,
            )
        )
        try:
            cube, padded = alert.survey.stamp_cube(record, "pad")
        except StampError:
            self.counts["stamp_errors"] += 1
            size = LSST_STAMP_SIZE
            cube, padded = np.full((size, size, len(STAMP_KINDS)), np.nan, np.float32), False
        self.counts["padded_stamps"] += padded
        var, psfs, nan = self._planes(alert)
        self.cubes.append(cube)
        self.variances.append(var)
        self.psfs.append(psfs)
        self.nan_fracs.append(nan)
        if len(self.cubes) >= 512:
            self.flush()

    def flush(self) -> None:
        if not self.cubes:
            return
        n, k = len(self.cubes), len(STAMP_KINDS)
        fwhm = psf_image_fwhm([p for row in self.psfs for p in row]).reshape(n, k)
        stats = image_statistics(
            np.stack(self.cubes), "lsst", variance=np.stack(self.variances), psf_fwhm=fwhm
        )
        nan = np.asarray(self.nan_fracs, dtype=np.float64)
        for c, kind in enumerate(STAMP_KINDS):
            stats[f"{kind}_nan_fraction"] = nan[:, c]
        for name in LSST_IMAGE_COLUMNS:
            self.image_cols[name].append(stats[name])
        for buffer in (self.cubes, self.variances, self.psfs, self.nan_fracs):
            buffer.clear()

    def columns(self) -> dict[str, Any]:
        """``candidate``, ``features``, ``history``, ``images`` and ``first`` of the rows."""
        from transforms.surveys.lsst import lsst_features

        self.flush()
        n = len(self.src_rows)
        h = np.asarray(self.hist, dtype=np.int64).reshape(n, 3)
        return {
            "candidate": _column_dict(self.src_rows),
            "features": _feature_columns(lsst_features(self.sources, FEATURES_LSST), self.counts),
            "history": {
                name: h[:, j].astype(np.float64) for j, name in enumerate(LSST_HISTORY_COLUMNS)
            },
            "images": {k: np.concatenate(v) for k, v in self.image_cols.items()},
            "first": h[:, 2].astype(bool),
        }


_ROWS: Final[dict[str, type[_ZtfRows] | type[_LsstRows]]] = {"ztf": _ZtfRows, "lsst": _LsstRows}


def load_alert_table(
    paths: Sequence[str],
    max_alerts: int | None = None,
    survey: str | None = None,
    skip_sample_data: bool = False,
) -> AlertTable:
    """Read, decode and tabulate every alert under ``paths``.

    Parameters
    ----------
    paths
        Files, directories, archives or globs (anything ``stampflow run`` reads).
    max_alerts
        Stop after this many decoded alerts (None: all).
    survey
        ``ztf`` or ``lsst``: every alert must be of it; None: the first alert's survey, which
        every other must share.
    skip_sample_data
        Leave out files in a :data:`SAMPLE_DATA_DIR` directory below a directory of ``paths``
        (for the real set: lsst-alert-packet's made-up packets).

    Returns
    -------
    AlertTable
        One row per decoded alert, in input order. ZTF stamps that are not 63x63 are NaN-padded
        (``pad`` policy) for the statistics; Rubin's are the 30x30 cube of the adapter's
        ``pad`` policy; ``nan_fraction`` is that of the cutout as sent. Alerts whose stamps do
        not decode get NaN image statistics.

    Raises
    ------
    SurveyMismatchError
        At the first alert of another survey.
    GapError
        When a path matches nothing or no alert decodes.
    """
    if survey is not None and survey not in _ROWS:
        raise GapError(f"--survey {survey}: not one of {', '.join(_ROWS)}")
    counts = dict.fromkeys(
        (
            "alerts",
            "read_errors",
            "decode_errors",
            "stamp_errors",
            "padded_stamps",
            "feature_errors",
            "skipped_sample_data",
        ),
        0,
    )
    candids: list[int] = []
    objects: list[str] = []
    versions: Counter[str] = Counter()
    rows: _ZtfRows | _LsstRows | None = None
    for alert in _iter_alerts(paths, counts, skip_sample_data):
        if max_alerts is not None and counts["alerts"] >= max_alerts:
            break
        if rows is None:
            rows = _ROWS[survey or alert.survey.name](counts)
        if alert.survey.name != rows.survey:
            raise SurveyMismatchError(alert.source, alert.survey.name, rows.survey)
        counts["alerts"] += 1
        candids.append(int(alert.candid))
        objects.append(str(alert.object_id))
        versions[alert.schema_version] += 1
        rows.add(alert)
    if rows is None or counts["alerts"] == 0:
        skipped = counts["skipped_sample_data"]
        why = f" ({skipped} in {SAMPLE_DATA_DIR}/ directories skipped)" if skipped else ""
        raise GapError(f"no alerts decoded from {', '.join(map(str, paths))}{why}")
    return AlertTable(
        candid=np.asarray(candids, dtype=np.int64),
        object_id=np.asarray(objects, dtype=object),
        **rows.columns(),
        schema_versions=dict(sorted(versions.items())),
        counts=counts,
        survey=rows.survey,
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

    The alerts are featurised as ``stampflow run`` does for that model (its survey's adapter, its
    own feature list, ``drop`` policy: ZTF stamps that are not 63x63 and Rubin ones smaller than
    30x30 are dropped) and classified through the exported SavedModel
    (:func:`model.train.evaluate_model`). Alerts of another survey than the model's are dropped
    (``n_dropped``); :func:`run_gap` refuses such a model before.

    Parameters
    ----------
    model_dir
        Exported stampflow model (e.g. ``stampflow import-alerce best_model_so_far``, or a
        ``stampflow train --survey lsst`` model).
    sim_paths
        Simulated alert files.
    labels
        :func:`read_sim_labels`.
    max_alerts
        Stop after this many decoded alerts.

    Returns
    -------
    dict
        :func:`reference_accuracy` plus ``model`` (name, version, survey, features), ``n_dropped``
        (dead letters), ``n_unlabelled`` and ``per_defect`` recall when alerts carry defects.

    Raises
    ------
    GapError
        When the model directory is not an exported model or no labelled alert is usable.
    """
    from model.handler import ModelDirError, model_survey, read_metadata
    from model.train import evaluate_model
    from transforms.featurize import featurize_alerts
    from transforms.surveys import get_survey

    try:
        meta = read_metadata(model_dir)
    except ModelDirError as e:
        raise GapError(str(e)) from e
    survey = get_survey(model_survey(meta))
    names = list(meta["features"])
    counts = {"read_errors": 0, "decode_errors": 0}
    feats, stamps, kept, pending = [], [], [], []
    unlabelled = dropped = seen = 0

    def flush() -> None:
        nonlocal dropped
        result = featurize_alerts(pending, names, "drop", survey)
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
        "survey": survey.name,
        "features": names,
    }
    out["n_dropped"] = dropped
    out["n_unlabelled"] = unlabelled
    out["rules"] = "none (bare network)"
    return out


# --- the report -----------------------------------------------------------------------------------
def _n_detections(t: AlertTable) -> np.ndarray:
    """Detections of each alert's object so far: ZTF ``ndethist``; Rubin ``nDiaSources`` as
    ``len(prvDiaSources) + 1`` (``diaObject.nDiaSources`` is not filled in every copy)."""
    if t.survey == "lsst":
        return t.history["n_prv_dia_sources"] + 1.0
    return t.candidate.get("ndethist", np.full(len(t), np.nan))


def _population(real: AlertTable, sim: AlertTable, matched: bool) -> dict[str, Any]:
    profile = real.profile

    def describe(t: AlertTable) -> dict[str, Any]:
        nd = _n_detections(t)
        first = t.first
        return {
            "n": len(t),
            "n_first": int(first.sum()),
            "median_ndethist": summarize(nd)["median"],
            "median_ndethist_first": summarize(nd[first])["median"],
            "median_n_prev_detections": summarize(t.history[profile.history_columns[0]])["median"],
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
            f"(no earlier detection in {profile.history_name}, the rule `stampflow run --select "
            "first` uses)"
        )
    else:
        fewest = min(r["n_first"], s["n_first"])
        side = "real" if r["n_first"] <= s["n_first"] else "simulated"
        used = (
            f"only {fewest} {side} first detections (< {profile.min_matched}): compared on all "
            "alerts"
        )
    nd = profile.ndet_name
    note = (
        f"real: {r['n']} alerts, {r['n_first']} first detections, median {nd} "
        f"{r['median_ndethist']:g}; simulated: {s['n']} alerts, {s['n_first']} first detections, "
        f"median {nd} {s['median_ndethist']:g}. "
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


def _band_names(values: np.ndarray) -> list[str]:
    """Rubin band letters of ``band_wavelength`` values (the value itself when unknown)."""
    from transforms.schema import LSST_BAND_WAVELENGTH

    by_wavelength = {float(w): b for b, w in LSST_BAND_WAVELENGTH.items()}
    return [by_wavelength.get(float(v), f"{v:g}") for v in values]


def compared_populations(
    real: AlertTable, sim: AlertTable
) -> tuple[AlertTable, AlertTable, dict[str, Any]]:
    """The real and simulated alerts the report compares (its ``matched`` population).

    First detections of both sets when each holds at least :attr:`GapProfile.min_matched` of
    them, else every alert. For a survey with a :attr:`GapProfile.band_column` (Rubin), the
    simulated alerts are then restricted to the bands of the real ones compared, when at least
    ``min_matched`` remain: the real alerts at hand come from a few nights in one or two bands,
    and noise, depth and seeing depend on the band.

    Returns
    -------
    real, sim, info
        The two subsets and ``{"matched": bool, "bands": [..] or None, "sim_before_bands": n}``
        (``bands`` None: no band restriction).
    """
    profile = real.profile
    least = profile.min_matched
    matched = int(real.first.sum()) >= least and int(sim.first.sum()) >= least
    r_m = real.subset(real.first) if matched else real
    s_m = sim.subset(sim.first) if matched else sim
    info: dict[str, Any] = {"matched": matched, "bands": None, "sim_before_bands": len(s_m)}
    col = profile.band_column
    if col is not None and col in r_m.features and col in s_m.features:
        bands = np.unique(_finite(r_m.features[col]))
        keep = np.isin(s_m.features[col], bands)
        if bands.size and int(keep.sum()) >= least and not keep.all():
            s_m = s_m.subset(keep)
            info["bands"] = _band_names(bands)
    return r_m, s_m, info


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
        :func:`load_alert_table` of each set (one survey).
    folds, seed
        Discriminator cross-validation.
    worst
        Length of the ``worst`` list.

    Returns
    -------
    dict
        ``survey``, ``population``, ``features`` (every feature of the survey's
        :class:`GapProfile`), ``candidate_fields`` (every numeric field of the detection present
        in both sets: ZTF ``candidate``, Rubin ``diaSource``), ``history``, ``images`` (per kind
        per statistic, and the noise ratio), ``discriminator`` and ``worst`` (columns by KS;
        neither identifiers and times nor sky positions, see :attr:`GapProfile.unranked`). Each
        column entry holds ``ks``, ``p``, ``real``, ``sim`` on the matched population and the
        same under ``all`` for every alert; ``null_gaps`` lists the features and fields whose
        null fraction differs by at least :data:`NULL_GAP` on the compared population.

    Raises
    ------
    GapError
        When the two tables are of different surveys.
    """
    if real.survey != sim.survey:
        raise GapError(f"real alerts are {real.survey}, simulated ones {sim.survey}")
    profile = real.profile
    r_m, s_m, compared = compared_populations(real, sim)
    matched = compared["matched"]
    cand_names = sorted(set(real.candidate) & set(sim.candidate))

    def section(get: Any, names: Sequence[str]) -> dict[str, Any]:
        return _merge(
            compare_columns(get(r_m), get(s_m), names), compare_columns(get(real), get(sim), names)
        )

    features = section(lambda t: t.features, list(profile.features))
    candidate_fields = section(lambda t: t.candidate, cand_names)
    history = section(lambda t: t.history, list(profile.history_columns))
    flat_images = section(lambda t: t.images, list(profile.image_columns))
    images: dict[str, Any] = {kind: {} for kind in STAMP_KINDS}
    for kind in STAMP_KINDS:
        for stat in profile.image_stats:
            images[kind][stat] = flat_images[f"{kind}_{stat}"]
    images[NOISE_RATIO] = flat_images[NOISE_RATIO]

    ranked = [("features", n, e) for n, e in features.items()]
    ranked += [
        ("candidate_fields", n, e)
        for n, e in candidate_fields.items()
        if n not in features and n not in profile.non_measurement
    ]
    ranked += [("images", n, e) for n, e in flat_images.items()]
    ranked = [
        r
        for r in ranked
        if math.isfinite(r[2]["ks"])
        and r[1] not in profile.unranked
        and min(r[2]["real"]["n"], r[2]["sim"]["n"]) >= profile.min_ranked
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
    disc_names = list(profile.features) + list(profile.image_columns)
    discriminator = discriminator_report(
        {**r_m.features, **r_m.images},
        {**s_m.features, **s_m.images},
        disc_names,
        folds=folds,
        seed=seed,
    )
    discriminator["population"] = "first" if matched else "all"
    null_gaps = sorted(
        (
            {
                "section": sec,
                "name": n,
                "real_null_frac": e["real"]["null_frac"],
                "sim_null_frac": e["sim"]["null_frac"],
            }
            for sec, entries in (("features", features), ("candidate_fields", candidate_fields))
            for n, e in entries.items()
            if (sec == "features" or n not in features)
            and abs(e["real"]["null_frac"] - e["sim"]["null_frac"]) >= NULL_GAP
        ),
        key=lambda g: -abs(g["real_null_frac"] - g["sim_null_frac"]),
    )
    population = _population(real, sim, matched)
    population["sim_before_bands"] = compared["sim_before_bands"]
    population["bands"] = compared["bands"]
    if compared["bands"] is not None:
        bands = ", ".join(compared["bands"])
        population["note"] += (
            f" Simulated alerts restricted to the real ones' band(s) {bands}: {len(s_m)} of "
            f"{compared['sim_before_bands']}."
        )
    return {
        "survey": profile.survey,
        "population": population,
        "features": features,
        "candidate_fields": candidate_fields,
        "history": history,
        "images": images,
        "discriminator": discriminator,
        "worst": worst_list,
        "null_gaps": null_gaps,
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
    profile = real.profile
    names = list(profile.features)
    names += [n for n in profile.key_raw_fields if n in real.candidate and n in sim.candidate]
    if profile.survey == "ztf":
        names += [n for n in ("chipsf", "elong") if n not in names and n in real.candidate]
    return names + list(profile.history_columns)


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
    lines = [f"survey {report.get('survey', 'ztf')}: {report['population']['note']}"]
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


def _load_sets(
    sim: Sequence[str], real: Sequence[str], survey: str, max_alerts: int | None
) -> tuple[AlertTable, AlertTable]:
    """The real then the simulated table, of one survey (``survey`` or the real alerts')."""
    wanted = None if survey == "auto" else survey
    try:
        real_table = load_alert_table(real, max_alerts, survey=wanted, skip_sample_data=True)
    except SurveyMismatchError as e:
        if wanted is None:
            raise GapError(
                f"real alerts mix surveys ({e.source} is {e.found}, earlier ones {e.expected}): "
                "compare one survey at a time"
            ) from e
        raise GapError(f"real alerts: {e} (--survey {wanted})") from e
    except GapError as e:
        raise GapError(f"real alerts: {e}") from e
    try:
        sim_table = load_alert_table(sim, max_alerts, survey=real_table.survey)
    except SurveyMismatchError as e:
        why = f"--survey {wanted}" if wanted else "the real alerts' survey"
        raise GapError(f"--sim: {e} ({why}): simulate with --survey {e.expected}") from e
    return real_table, sim_table


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
    survey: str = "auto",
) -> dict[str, Any]:
    """Build the gap report, write ``report.json`` and the PNGs to ``out``; return the report.

    Parameters
    ----------
    sim
        Simulated alerts (directories, archives or files).
    real
        Real alerts; files in ``sample_data`` directories found while walking a directory are
        skipped (counted in ``population.real.counts.skipped_sample_data``).
    out
        Output directory (created).
    labels
        The simulation's ``labels.csv`` (default: ``labels.csv`` in the first ``sim`` directory,
        when present); needed by ``reference``.
    reference
        An exported model directory of the compared survey to evaluate on the labelled
        simulated alerts.
    max_alerts
        Read at most this many alerts from each set.
    folds, seed
        Discriminator cross-validation.
    plots
        Write ``gap_features.png`` and ``gap_images.png``.
    survey
        ``ztf``, ``lsst``, or ``auto`` (the survey of the real alerts). Every real and simulated
        alert must be of that survey.

    Raises
    ------
    GapError
        For a user mistake (missing input, nothing decoded, unwritable output, no labels, mixed
        surveys, a reference model of another survey).
    """
    if survey not in SURVEY_CHOICES:
        raise GapError(f"--survey {survey}: not one of {', '.join(SURVEY_CHOICES)}")
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
    reference_survey = None
    if reference is not None:
        from model.handler import ModelDirError, model_survey, read_metadata

        try:
            reference_survey = model_survey(read_metadata(reference))  # fail before the long part
        except ModelDirError as e:
            raise GapError(str(e)) from e
        if survey not in ("auto", reference_survey):
            raise GapError(
                f"--reference {reference} classifies {reference_survey} alerts, not {survey}"
            )
    real_table, sim_table = _load_sets(sim, real, survey, max_alerts)
    if reference_survey is not None and reference_survey != real_table.survey:
        raise GapError(
            f"--reference {reference} classifies {reference_survey} alerts; these are "
            f"{real_table.survey} alerts: give a {real_table.survey} model"
        )
    report = build_report(real_table, sim_table, folds=folds, seed=seed)
    report["inputs"] = {
        "survey": survey,
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
        _plot_report(real_table, sim_table, report, out_dir)
    return report


def _plot_report(
    real_table: AlertTable, sim_table: AlertTable, report: Mapping[str, Any], out_dir: Path
) -> None:
    """``gap_features.png`` and ``gap_images.png`` of the report's population."""
    profile = real_table.profile
    r_m, s_m, compared = compared_populations(real_table, sim_table)
    matched = compared["matched"]
    pop = "first detections" if matched else "all alerts"
    if compared["bands"] is not None:
        pop += f", simulated in band {'/'.join(compared['bands'])}"
    survey = {"ztf": "ZTF", "lsst": "Rubin"}[profile.survey]
    plot_histograms(
        r_m.columns(),
        s_m.columns(),
        _feature_plot_names(real_table, sim_table),
        out_dir / "gap_features.png",
        f"{survey} features and raw {profile.source_name} fields: real ({len(r_m)}) vs "
        f"simulated ({len(s_m)}), {pop}",
        real_all=real_table.columns() if matched else None,
    )
    plot_histograms(
        r_m.images,
        s_m.images,
        list(profile.image_columns),
        out_dir / "gap_images.png",
        f"{survey} image statistics per cutout [{profile.pixel_unit}, pixel]: real ({len(r_m)}) "
        f"vs simulated ({len(s_m)}), {pop}",
        real_all=real_table.images if matched else None,
        ncols=len(profile.image_stats),
    )


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
            survey=args.survey,
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
        "--real",
        nargs="+",
        required=True,
        help="real alerts: files, directories, archives, globs (files in sample_data/ "
        "directories are skipped when walking a directory)",
    )
    p.add_argument("--out", required=True, help="output directory (report.json, PNGs)")
    p.add_argument(
        "--survey",
        type=str,
        choices=SURVEY_CHOICES,
        default="auto",
        help="survey compared: ztf, lsst, or auto (the real alerts'; default); every alert of "
        "both sets must be of it",
    )
    p.add_argument(
        "--labels",
        default=None,
        help="labels.csv of the simulation (default: labels.csv in the --sim directory)",
    )
    p.add_argument(
        "--reference",
        default=None,
        help="exported model of the same survey to evaluate on the labelled simulated alerts "
        "(e.g. ALeRCE's; a --survey lsst model for Rubin)",
    )
    p.add_argument(
        "--max-alerts", type=positive_int, default=None, help="read at most N alerts per set"
    )
    p.add_argument("--folds", type=positive_int, default=5, help="discriminator CV folds (5)")
    p.add_argument("--seed", type=int, default=0, help="discriminator fold seed (0)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.set_defaults(func=run)
