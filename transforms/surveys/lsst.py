"""The Rubin (LSST) adapter: packets of ``lsst.v7_x`` to ``lsst.v11_x`` and brokers' copies of them.

Facts it relies on (``../shared/docs/RUBIN.md``, measured on real alerts):

- the record's ``diaSource`` is the detection; ``prvDiaSources`` every earlier one (absent or
  empty for a first detection and for solar-system alerts); ``diaObject.firstDiaSourceMjdTai``
  is null in real alerts, so first detection is judged from the history;
- "no association" ids are 0, not null (Fink's copies, v7.4): an alert belongs to its
  ``diaObjectId`` when that is non-zero, else to its ``ssObjectId`` (``ss<id>``);
- time is ``midpointMjdTai`` [MJD, TAI]: JD(UTC) = MJD + 2400000.5 − (TAI − UTC), 37 s since 2017;
- cutouts are plain bytes (uncompressed FITS); ZTF wraps them in a record.
Older packets (v7.x) name the alert id ``alertId``; it is read when ``diaSourceId`` is absent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from transforms.features import FeatureBatch, finite_number, sky_coordinates
from transforms.rules import RULE_SN_INDEX, sn_veto
from transforms.schema import (
    CLASS_NAMES,
    CUTOUT_FIELDS,
    FEATURES_LSST,
    LSST_BAND_WAVELENGTH,
    LSST_BANDS,
    LSST_REQUIRED_FIELDS,
    LSST_STAMP_SIZE,
    LSST_ZERO_POINT,
    RULE_KNOWN_ASTEROID,
    RULE_SN_VETO_NEGATIVE,
    STAMP_KINDS,
    STAMP_SIZE_POLICIES,
    TAI_MINUS_UTC,
)
from transforms.stamps import StampError, decode_stamps
from transforms.surveys.base import Survey

__all__ = ["LSST", "ab_mag", "centre_stamp", "flux_to_mag", "lsst_features", "mjd_tai_to_jd_utc"]

#: Largest share of NaN pixels a Rubin stamp window may hold (more: a ``stamps`` dead letter).
MAX_NAN_FRACTION = 0.5
#: Missing-magnitude sentinel (as ZTF's -999 for "no counterpart").
NO_MAG = -999.0
#: sigma(FWHM) of a Gaussian: FWHM = 2 sqrt(2 ln 2) sigma.
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

_MJD_TO_JD = 2400000.5  # [day]


def mjd_tai_to_jd_utc(mjd_tai: float) -> float:
    """Julian date (UTC) [day] of a modified Julian date in TAI [day]."""
    return float(mjd_tai) + _MJD_TO_JD - TAI_MINUS_UTC / 86400.0


#: Largest integer a double holds exactly: ids stored as doubles (some Parquet copies) above it
#: have lost their last bits, and distinct objects may share the rounded value.
_EXACT_DOUBLE = 2**53


def _exact_id(value: Any) -> int | None:
    """An id as an exact integer; None when null, not a number, or a double that lost bits."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer() or abs(value) > _EXACT_DOUBLE:
            return None
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _nonzero(value: Any) -> int | None:
    found = _exact_id(value)
    return None if found == 0 else found


def _alert_id(record: Mapping[str, Any]) -> int | None:
    for value in (record.get("diaSourceId"), record.get("alertId")):
        if value is not None:
            return _exact_id(value)
    return _exact_id(record["diaSource"].get("diaSourceId"))


def _dia_object(record: Mapping[str, Any]) -> int | None:
    # diaSource's own id first; the official sample packets set only diaObject's.
    found = _nonzero(record["diaSource"].get("diaObjectId"))
    if found is None and isinstance(record.get("diaObject"), dict):
        found = _nonzero(record["diaObject"].get("diaObjectId"))
    return found


def _ss_object(record: Mapping[str, Any]) -> int | None:
    found = _nonzero(record["diaSource"].get("ssObjectId"))
    if found is None and isinstance(record.get("ssSource"), dict):
        found = _nonzero(record["ssSource"].get("ssObjectId"))
    return found


def ab_mag(flux: float | None) -> float | None:
    """AB magnitude of a flux [nJy]: ``31.4 - 2.5 log10(flux)``; None when the flux is null, not
    finite or not positive."""
    if flux is None or not math.isfinite(flux) or flux <= 0:
        return None
    return LSST_ZERO_POINT - 2.5 * math.log10(flux)


def flux_to_mag(flux: float | None) -> float:
    """:func:`ab_mag`, with :data:`NO_MAG` for no magnitude (a feature value)."""
    mag = ab_mag(flux)
    return NO_MAG if mag is None else mag


def _fwhm(src: Mapping[str, Any], xx: str, yy: str) -> float | None:
    # Adaptive second moments [arcsec^2] (the schema doc says nJy.arcsec**2; the values are the
    # normalised moments, ~0.1-0.5 arcsec^2 for the 0.7-1.7" seeing of the real alerts).
    ixx, iyy = finite_number(src.get(xx)), finite_number(src.get(yy))
    if ixx is None or iyy is None or ixx + iyy <= 0:
        return None
    return _FWHM_PER_SIGMA * math.sqrt((ixx + iyy) / 2.0)


def _flag(src: Mapping[str, Any], name: str) -> float:
    return 1.0 if src.get(name) else 0.0


def _one(src: Mapping[str, Any], name: str) -> tuple[float, bool]:
    """One feature of one diaSource: (value, imputed)."""
    if name == "psf_mag":
        return ab_mag(abs(src["psfFlux"])), False
    if name == "psf_mag_err":
        return 1.0857 * abs(src["psfFluxErr"]) / abs(src["psfFlux"]), False
    if name == "is_negative":
        return (1.0 if src["psfFlux"] < 0 else 0.0), False
    if name in ("snr", "reliability", "extendedness"):
        x = finite_number(src.get(name))
        default = {"snr": abs(src["psfFlux"]) / src["psfFluxErr"], "reliability": 0.5}
        return (x, False) if x is not None else (default.get(name, 0.5), True)
    if name == "fwhm":
        x = _fwhm(src, "ixx", "iyy")
        return (x, False) if x is not None else (_fwhm(src, "ixxPSF", "iyyPSF") or 1.0, True)
    if name == "fwhm_psf":
        x = _fwhm(src, "ixxPSF", "iyyPSF")
        return (x, False) if x is not None else (1.0, True)
    if name == "trail_length":
        x = finite_number(src.get("trailLength"))
        return (x, False) if x is not None else (0.0, True)
    if name == "is_dipole":
        return _flag(src, "isDipole"), False
    if name == "science_mag":
        return flux_to_mag(finite_number(src.get("scienceFlux"))), False
    if name == "template_mag":
        return flux_to_mag(finite_number(src.get("templateFlux"))), False
    if name == "saturated":
        return _flag(src, "pixelFlags_saturatedCenter"), False
    if name == "cosmic_ray":
        return _flag(src, "pixelFlags_crCenter"), False
    if name == "streak":
        return _flag(src, "pixelFlags_streakCenter"), False
    if name == "edge":
        return _flag(src, "pixelFlags_edge"), False
    if name == "band_wavelength":
        return LSST_BAND_WAVELENGTH[src["band"]], False
    if name in ("ra", "dec"):
        return float(src[name]), False
    raise KeyError(name)


_COORDINATES = ("ecl_lat", "ecl_long", "gal_lat", "gal_long")


def _invalid(src: Mapping[str, Any]) -> str | None:
    bad = []
    for field in LSST_REQUIRED_FIELDS:
        raw = src.get(field)
        ok = raw in LSST_BAND_WAVELENGTH if field == "band" else finite_number(raw) is not None
        if ok and field == "psfFlux":
            ok = raw != 0
        if ok and field == "psfFluxErr":
            ok = raw > 0
        if ok and field == "ra":
            ok = 0.0 <= raw <= 360.0
        if ok and field == "dec":
            ok = -90.0 <= raw <= 90.0
        if not ok:
            bad.append(f"{field}={raw!r}")
    return "missing or invalid required field(s): " + ", ".join(bad) if bad else None


def lsst_features(
    sources: Sequence[Mapping[str, Any]], feature_names: Sequence[str] = FEATURES_LSST
) -> FeatureBatch:
    """Raw metadata features of a batch of Rubin detections (formulas in
    :data:`transforms.schema.FEATURES_LSST`).

    Parameters
    ----------
    sources
        ``diaSource`` dicts (Rubin packets v7 to v11, or brokers' copies).
    feature_names
        Feature list in model order (a subset or reordering of ``FEATURES_LSST``).

    Returns
    -------
    FeatureBatch
        ``float32 [N, F]``, validity (a required field missing or invalid: the row's reason),
        and per-feature imputation counts over the valid rows.
    """
    names = LSST.validate_feature_names(feature_names)
    n = len(sources)
    errors = tuple(_invalid(src) for src in sources)
    valid = np.array([e is None for e in errors], dtype=bool)
    values = np.zeros((n, len(names)), dtype=np.float32)
    null_counts = {name: 0 for name in names}
    own = [(j, name) for j, name in enumerate(names) if name not in _COORDINATES]
    for i, src in enumerate(sources):
        if not valid[i]:
            continue
        for j, name in own:
            values[i, j], imputed = _one(src, name)
            null_counts[name] += imputed
    coords = [(j, name) for j, name in enumerate(names) if name in _COORDINATES]
    if coords:
        ra = np.array([float(s["ra"]) if v else 0.0 for s, v in zip(sources, valid, strict=True)])
        dec = np.array([float(s["dec"]) if v else 0.0 for s, v in zip(sources, valid, strict=True)])
        sky = sky_coordinates(ra, dec)
        for j, name in coords:
            values[:, j] = np.where(valid, sky[name], 0.0)
    return FeatureBatch(names, values, valid, errors, null_counts)


def centre_stamp(image: np.ndarray, size: int, policy: str, kind: str) -> tuple[np.ndarray, bool]:
    """A Rubin cutout as the ``size x size`` window around its centre.

    Rubin cuts ``max(bboxSize, 30)`` px squares with the source within half a pixel of the
    centre, so a larger cutout is cropped about its centre (same orientation: the visit's, see
    the module docstring). A smaller or non-square one is a ``size`` error under ``drop`` and is
    NaN-padded evenly under ``pad``. A window more than :data:`MAX_NAN_FRACTION` NaN is a ``nan``
    error.

    Returns
    -------
    image, padded
        ``float32 (size, size)``.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise StampError("size", f"{kind} stamp is not 2-D: {image.shape}")
    rows, cols = image.shape
    if (rows < size or cols < size or rows != cols) and policy == "drop":
        raise StampError(
            "size", f"{kind} stamp is {rows}x{cols}, not square and >= {size} px (policy drop)"
        )
    r0, c0 = max((rows - size) // 2, 0), max((cols - size) // 2, 0)
    image = image[r0 : r0 + size, c0 : c0 + size]
    bad = 1.0 - float(np.isfinite(image).mean()) if image.size else 1.0
    if bad > MAX_NAN_FRACTION:
        # A few masked pixels normalise to 0; a mostly blank window shows nothing to classify.
        raise StampError("nan", f"{kind} stamp: {bad:.0%} of its central pixels are NaN")
    padded = image.shape != (size, size)
    if padded:
        pr, pc = size - image.shape[0], size - image.shape[1]
        pads = ((pr // 2, pr - pr // 2), (pc // 2, pc - pc // 2))
        image = np.pad(image, pads, mode="constant", constant_values=np.nan)
    return image, padded


class _LSST(Survey):
    name = "lsst"
    signature = frozenset({"diaSource", "prvDiaSources", "cutoutDifference"})
    history_fields = frozenset({"prvDiaSources", "prvDiaForcedSources", "prvDiaNondetectionLimits"})
    stamp_size = LSST_STAMP_SIZE
    default_features = FEATURES_LSST
    feature_sets = MappingProxyType({"lsst": FEATURES_LSST})
    extra_fields = ("psfFlux", "psfFluxErr", "snr", "reliability", "ssObjectId")

    def validate(self, record: Any) -> str | None:
        if not isinstance(record, dict):
            return f"record is a {type(record).__name__}"
        src = record.get("diaSource")
        if not isinstance(src, dict):
            return "no diaSource"
        if _alert_id(record) is None:
            return "no exact diaSourceId"
        # Only what identifies and places the alert in time is checked here; a missing band,
        # position or flux is the features stage's dead letter, per alert.
        if finite_number(src.get("midpointMjdTai")) is None:
            return f"diaSource midpointMjdTai is {src.get('midpointMjdTai')!r}"
        if _dia_object(record) is None and _ss_object(record) is None:
            return "neither an exact diaObjectId nor an ssObjectId"
        return None

    def alert_id(self, record: Mapping[str, Any]) -> int:
        found = _alert_id(record)
        if found is None:
            raise ValueError("no exact diaSourceId (validate() says so)")
        return found

    def object_id(self, record: Mapping[str, Any]) -> str:
        dia = _dia_object(record)
        return str(dia) if dia is not None else f"ss{_ss_object(record)}"

    def source(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return record["diaSource"]

    def history(self, record: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        return record.get("prvDiaSources") or []

    def jd(self, record: Mapping[str, Any]) -> float:
        return mjd_tai_to_jd_utc(record["diaSource"]["midpointMjdTai"])

    def band(self, record: Mapping[str, Any]) -> str:
        band = record["diaSource"].get("band")
        return band if band in LSST_BANDS else str(band or "")

    def earlier_detection(self, record: Mapping[str, Any]) -> bool:
        t = record["diaSource"]["midpointMjdTai"]
        return any(
            p.get("midpointMjdTai") is not None and p["midpointMjdTai"] < t
            for p in self.history(record)
        )

    def cutout_bytes(self, record: Mapping[str, Any], kind: str) -> bytes | None:
        return record.get(CUTOUT_FIELDS[kind])

    def known_sso(self, record: Mapping[str, Any]) -> bool:
        """The detection is associated with a known solar-system object (``ssObjectId`` set)."""
        return _ss_object(record) is not None

    def schema_version(self, record: Mapping[str, Any]) -> str:
        # Fink's copies say which packet version they carry; raw packets do not.
        return str(record.get("lsst_schema_version") or "")

    def validate_feature_names(self, names: Sequence[str]) -> tuple[str, ...]:
        names = tuple(names)
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature names in {names}")
        unknown = [n for n in names if n not in FEATURES_LSST]
        if unknown:
            raise ValueError(f"unknown LSST feature(s) {unknown}: see FEATURES_LSST")
        return names

    def features(self, sources: Sequence[Mapping[str, Any]], names: Sequence[str]) -> FeatureBatch:
        return lsst_features(sources, names)

    def stamp_cube(self, record: Mapping[str, Any], policy: str) -> tuple[Any, bool]:
        if policy not in STAMP_SIZE_POLICIES:
            raise ValueError(f"stamp size policy {policy!r} not in {STAMP_SIZE_POLICIES}")
        images = decode_stamps({kind: self.cutout_bytes(record, kind) for kind in STAMP_KINDS})
        size = self.stamp_size
        cube = np.empty((size, size, len(STAMP_KINDS)), dtype=np.float32)
        padded = False
        for c, kind in enumerate(STAMP_KINDS):
            cube[:, :, c], was = centre_stamp(images[kind], size, policy, kind)
            padded |= was
        return cube, padded

    def row_fields(self, record: Mapping[str, Any]) -> dict[str, Any]:
        src = record["diaSource"]
        flux = finite_number(src.get("psfFlux"))
        fields = {
            "jd": self.jd(record),
            "ra": src["ra"],
            "dec": src["dec"],
            "fid": None,
            "band": self.band(record),
            "magpsf": None if flux is None else ab_mag(abs(flux)),
        }
        fields.update({f: src.get(f) for f in self.extra_fields})
        fields["ssObjectId"] = _ss_object(record)
        fields["known_sso"] = self.known_sso(record)
        return fields

    def apply_rules(
        self, probabilities: Any, fields: Mapping[str, Any], enabled: bool = True
    ) -> tuple[str, str | None]:
        """ALeRCE's rules as Rubin's packets allow: a known solar-system object (``ssObjectId``)
        is an asteroid; an SN call on a negative difference falls to the next class. No star
        veto: Rubin alerts carry no PS1 star-galaxy score."""
        top = int(np.argmax(probabilities))
        if not enabled:
            return CLASS_NAMES[top], None
        if fields.get("known_sso"):
            return "asteroid", RULE_KNOWN_ASTEROID
        flux = fields.get("psfFlux")
        if top == RULE_SN_INDEX and flux is not None and flux < 0:
            return sn_veto(probabilities), RULE_SN_VETO_NEGATIVE
        return CLASS_NAMES[top], None


#: The Rubin (LSST) adapter.
LSST: Survey = _LSST()
