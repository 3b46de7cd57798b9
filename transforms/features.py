"""Metadata features of the stamp classifier, vectorised over a batch of ZTF candidates.

Pure NumPy/astropy: a batch of ``candidate`` records (the dicts fastavro decodes) becomes one
``float32 [N, F]`` matrix in the order of a feature list from :mod:`transforms.schema`
(:data:`~transforms.schema.FEATURES_PRODUCTION`, 23, or
:data:`~transforms.schema.FEATURES_ALERCE_26`).
The values are *raw*: nulls imputed (and counted) but not clipped or standardised, because the
tf.Transform graph (:mod:`transforms.preprocess`) does that identically in training and serving.

- Galactic and ecliptic coordinates come from one astropy ``SkyCoord`` transform per batch (a
  per-alert transform costs ~ms; the batched one is ~µs per alert).
- ``isdiffpos`` is encoded as ALeRCE does: ``'t'``/``'1'`` -> 0, ``'f'``/``'0'`` -> 1.
- ``non_detections = ncovhist - ndethist``.
- A null, NaN or infinite nullable field gets :data:`~transforms.schema.IMPUTE_VALUES` and is
  counted; a missing required field (:data:`~transforms.schema.FEATURE_REQUIRED_FIELDS`) marks the
  row invalid with a reason instead, so no NaN ever reaches the network.

Stamps are assembled here too (:func:`stack_stamps`, :func:`pad_stamp`): the three decoded cutouts
become one raw ``float32 [63, 63, 3]`` cube. Cropping and normalisation are TF ops in the transform
graph (:func:`transforms.preprocess.preprocess_stamps`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transforms.schema import (
    CLIP_BOUNDS,
    DERIVED_FEATURES,
    FEATURE_REQUIRED_FIELDS,
    FEATURES_PRODUCTION,
    IMPUTE_VALUES,
    ISDIFFPOS_CODES,
    STAMP_KINDS,
    STAMP_SIZE,
    STAMP_SIZE_POLICIES,
)
from transforms.stamps import StampError

#: Valid ranges of required fields that would otherwise break the coordinate transform [deg].
_RANGES: dict[str, tuple[float, float]] = {"ra": (0.0, 360.0), "dec": (-90.0, 90.0)}

#: The coordinate features :func:`sky_coordinates` returns [deg].
COORDINATE_FEATURES: tuple[str, ...] = ("ecl_lat", "ecl_long", "gal_lat", "gal_long")


@dataclass(frozen=True)
class FeatureBatch:
    """Features of a batch of candidates.

    Attributes
    ----------
    feature_names
        Column order of ``values``.
    values
        ``float32 [N, F]`` raw (imputed, unclipped) features; all finite. Rows that are not
        ``valid`` are zeros and must not be used.
    valid
        ``bool [N]``: False where a required field is missing or malformed.
    errors
        Per row, None or the reason the row is invalid (for the dead letter).
    null_counts
        Feature -> number of *valid* rows in which it was imputed (features never imputed: 0).
    """

    feature_names: tuple[str, ...]
    values: np.ndarray
    valid: np.ndarray
    errors: tuple[str | None, ...]
    null_counts: dict[str, int]


def validate_feature_names(feature_names: Sequence[str]) -> tuple[str, ...]:
    """Check a feature list against what :func:`extract_features` knows how to compute.

    Parameters
    ----------
    feature_names
        Feature names in model order.

    Returns
    -------
    tuple of str
        The same names as a tuple.

    Raises
    ------
    ValueError
        On duplicates or on a name that is neither derived, required, nor imputable.
    """
    names = tuple(feature_names)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate feature names in {names}")
    known = set(DERIVED_FEATURES) | set(FEATURE_REQUIRED_FIELDS) | set(IMPUTE_VALUES)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown feature(s) {unknown}: add an impute value to transforms.schema.IMPUTE_VALUES"
        )
    return names


def clip_bounds(feature_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper clip bounds per feature, ``-inf``/``+inf`` where a side is open.

    Parameters
    ----------
    feature_names
        Feature names in model order.

    Returns
    -------
    lower, upper
        ``float32 [F]`` arrays (SPEC §4, Table A1).
    """
    lo = np.full(len(feature_names), -np.inf, dtype=np.float32)
    hi = np.full(len(feature_names), np.inf, dtype=np.float32)
    for i, name in enumerate(feature_names):
        low, high = CLIP_BOUNDS.get(name, (None, None))
        if low is not None:
            lo[i] = low
        if high is not None:
            hi[i] = high
    return lo, hi


def sky_coordinates(ra: np.ndarray, dec: np.ndarray) -> dict[str, np.ndarray]:
    """Galactic and barycentric mean ecliptic coordinates of many positions in one transform.

    Parameters
    ----------
    ra, dec
        ICRS (J2000) right ascension and declination [deg], any matching shapes.

    Returns
    -------
    dict
        ``ecl_lat``, ``ecl_long``, ``gal_lat``, ``gal_long`` as float64 arrays [deg]; longitudes
        in [0, 360). ``barycentricmeanecliptic`` (equinox J2000) matches ALeRCE's pyephem values to
        ~1e-4 deg, ``geocentricmeanecliptic`` would be off by up to 0.04 deg (SPEC §4).
    """
    # Imported here so that importing this module (e.g. for the feature lists) stays cheap.
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    if ra.size == 0:
        empty = np.zeros(ra.shape, dtype=np.float64)
        return {name: empty.copy() for name in COORDINATE_FEATURES}
    icrs = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs")
    gal = icrs.galactic
    ecl = icrs.barycentricmeanecliptic
    return {
        "ecl_lat": np.asarray(ecl.lat.deg, dtype=np.float64),
        "ecl_long": np.asarray(ecl.lon.wrap_at(360 * u.deg).deg, dtype=np.float64),
        "gal_lat": np.asarray(gal.b.deg, dtype=np.float64),
        "gal_long": np.asarray(gal.l.wrap_at(360 * u.deg).deg, dtype=np.float64),
    }


def encode_isdiffpos(value: Any) -> float | None:
    """ALeRCE's isdiffpos code: ``'t'``/``'1'`` -> 0.0, ``'f'``/``'0'`` -> 1.0, else None.

    Parameters
    ----------
    value
        The candidate's ``isdiffpos`` (a string in every ZTF schema; bytes and bools tolerated).

    Returns
    -------
    float or None
        The code, or None when the value is missing or unrecognised.
    """
    if isinstance(value, bool):
        return 0.0 if value else 1.0
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    return ISDIFFPOS_CODES.get(value.strip().lower())


def finite_number(value: Any) -> float | None:
    """``float(value)`` if it is a finite real number (not a string), else None."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def extract_features(
    candidates: Sequence[Mapping[str, Any]],
    feature_names: Sequence[str] = FEATURES_PRODUCTION,
) -> FeatureBatch:
    """Compute the raw metadata features of a batch of ZTF candidates.

    Parameters
    ----------
    candidates
        ``alert.record["candidate"]`` dicts (any ZTF schema 1.8 to 4.02).
    feature_names
        Feature list in model order, e.g. :data:`~transforms.schema.FEATURES_PRODUCTION` (23) or
        :data:`~transforms.schema.FEATURES_ALERCE_26`.

    Returns
    -------
    FeatureBatch
        ``float32 [N, F]`` raw features (imputed, not clipped), validity, reasons and null counts.

    Raises
    ------
    ValueError
        If ``feature_names`` holds a feature this module cannot compute.
    """
    names = validate_feature_names(feature_names)
    n = len(candidates)
    required = {f: np.zeros(n, dtype=np.float64) for f in FEATURE_REQUIRED_FIELDS}
    errors: list[str | None] = [None] * n
    for i, cand in enumerate(candidates):
        missing = []
        for field in FEATURE_REQUIRED_FIELDS:
            raw = cand.get(field)
            x = encode_isdiffpos(raw) if field == "isdiffpos" else finite_number(raw)
            if x is None or (field in _RANGES and not _RANGES[field][0] <= x <= _RANGES[field][1]):
                missing.append(f"{field}={raw!r}")
            else:
                required[field][i] = x
        if missing:
            errors[i] = "missing or invalid required field(s): " + ", ".join(missing)
    valid = np.array([e is None for e in errors], dtype=bool)

    # Nullable measured fields: one pass per feature; imputation counted on valid rows only, so
    # the counts describe what actually reaches the model.
    columns: dict[str, np.ndarray] = {}
    null_counts: dict[str, int] = {name: 0 for name in names}
    for name in names:
        if name in DERIVED_FEATURES or name in required:
            continue
        col = np.empty(n, dtype=np.float64)
        imputed = np.zeros(n, dtype=bool)
        for i, cand in enumerate(candidates):
            x = finite_number(cand.get(name))
            if x is None:
                col[i] = IMPUTE_VALUES[name]
                imputed[i] = True
            else:
                col[i] = x
        columns[name] = col
        null_counts[name] = int(np.count_nonzero(imputed & valid))
    columns.update(required)
    columns["non_detections"] = required["ncovhist"] - required["ndethist"]
    if any(name in COORDINATE_FEATURES for name in names):
        # Invalid rows carry ra = dec = 0 here, which transforms harmlessly.
        columns.update(sky_coordinates(required["ra"], required["dec"]))

    values = np.zeros((n, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        values[:, j] = columns[name]
    values[~valid] = 0.0
    return FeatureBatch(
        feature_names=names,
        values=values,
        valid=valid,
        errors=tuple(errors),
        null_counts=null_counts,
    )


def pad_stamp(
    image: np.ndarray,
    size: int = STAMP_SIZE,
    xpos: float | None = None,
    ypos: float | None = None,
) -> np.ndarray:
    """Pad a cutout cut short by the detector edge back to ``size x size`` with NaN.

    ZTF cuts a 63x63 window centred on the source from the quadrant image and truncates it at the
    image edge, so the missing rows/columns are on the side of the edge the source is close to. A
    source at ``ypos`` = 20 [pixel] lost its bottom (low row index) rows; one at ``xpos`` = 3049 of
    3072 lost its right (high column index) columns. Restoring them on that side puts the source
    back at the centre pixel (31, 31), which the centre crop relies on. Without a position the
    padding is split evenly (extra pixel after).

    Parameters
    ----------
    image
        ``(rows, cols)`` stamp, each side ``<= size``. Rows follow ``ypos``, columns ``xpos``
        (FITS NAXIS2, NAXIS1).
    size
        Target side [pixels].
    xpos, ypos
        The candidate's position in the quadrant image [pixel] (``candidate["xpos"]``/``["ypos"]``).

    Returns
    -------
    numpy.ndarray
        ``float32 (size, size)``, the image unchanged where it was, NaN elsewhere.

    Raises
    ------
    ValueError
        If the image is not 2-D or a side exceeds ``size``.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or image.shape[0] > size or image.shape[1] > size:
        raise ValueError(f"cannot pad a {image.shape} stamp to {size}x{size}")
    pads = []
    for extent, pos in ((image.shape[0], ypos), (image.shape[1], xpos)):
        missing = size - extent
        if pos is None or not math.isfinite(pos):
            before = missing // 2
        else:
            # Near the low edge (position within a stamp's width of pixel 0) the low side is gone.
            before = missing if pos < size else 0
        pads.append((before, missing - before))
    return np.pad(image, pads, mode="constant", constant_values=np.nan)


def stack_stamps(
    images: Mapping[str, np.ndarray],
    policy: str = "drop",
    xpos: float | None = None,
    ypos: float | None = None,
) -> tuple[np.ndarray, bool]:
    """Stack science, template and difference stamps as channels of one ``[63, 63, 3]`` cube.

    Parameters
    ----------
    images
        ``{kind: float32 image}`` as returned by :func:`transforms.stamps.decode_stamps`.
    policy
        What to do with a stamp that is not 63x63: ``"drop"`` raises (ALeRCE drops them),
        ``"pad"`` pads it with NaN on the side the detector edge cut (see :func:`pad_stamp`); NaN
        becomes 0 after normalisation.
    xpos, ypos
        Candidate position in the quadrant image [pixel], used by ``"pad"``.

    Returns
    -------
    cube, padded
        ``float32 [63, 63, 3]`` raw stamps in :data:`~transforms.schema.STAMP_KINDS` order, and
        whether any stamp was padded.

    Raises
    ------
    StampError
        Code ``size``: a stamp is not 63x63 under ``"drop"``, or larger than 63 or not 2-D.
    ValueError
        On an unknown ``policy``.
    """
    if policy not in STAMP_SIZE_POLICIES:
        raise ValueError(f"stamp size policy {policy!r} not in {STAMP_SIZE_POLICIES}")
    cube = np.empty((STAMP_SIZE, STAMP_SIZE, len(STAMP_KINDS)), dtype=np.float32)
    padded = False
    for c, kind in enumerate(STAMP_KINDS):
        image = images[kind]
        if image.shape != (STAMP_SIZE, STAMP_SIZE):
            if policy == "drop":
                raise StampError("size", f"{kind} stamp is {image.shape}, not 63x63 (policy drop)")
            try:
                image = pad_stamp(image, STAMP_SIZE, xpos=xpos, ypos=ypos)
            except ValueError as e:
                raise StampError("size", f"{kind}: {e}") from e
            padded = True
        cube[:, :, c] = image
    return cube, padded
