"""An alert's light curve from its own history: detections, upper limits, the rise.

A ZTF alert carries up to 30 days of history in ``prv_candidates``: earlier detections (a
``candid``, ``magpsf ± sigmapsf``) and non-detections (no ``candid``; ``diffmaglim`` is the
5-sigma limiting magnitude of that difference image). What an astronomer vetting a young
supernova wants from it (ALeRCE's SN Hunter workflow) is the first detection, the deepest
recent non-detection before it, and how many days separate the two: a rise from below a limit
a day or two earlier is the signature of an explosion caught young. Pure functions, no Beam.

A Rubin alert (``alert.survey.name == "lsst"``) carries its history in flux: ``prvDiaSources``
(every earlier detection of its diaObject) and ``prvDiaForcedSources`` (forced photometry at the
object's position, the alert's own visit included), each with ``midpointMjdTai`` [MJD, TAI],
``psfFlux ± psfFluxErr`` [nJy] and ``band``; only old packets (v7) also carry non-detections,
``prvDiaNondetectionLimits``. Difference fluxes are often negative (a source fainter than in the
template), so each point keeps its flux and flux error; its magnitude ``31.4 − 2.5 log10(flux)``
is defined for positive fluxes only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from transforms.alerts import Alert
from transforms.features import finite_number
from transforms.schema import ZTF_BANDS
from transforms.surveys.lsst import ab_mag, mjd_tai_to_jd_utc

__all__ = [
    "RUBIN_LIMIT_SIGMA",
    "Detection",
    "LightCurve",
    "UpperLimit",
    "light_curve",
    "rubin_light_curve",
]

#: sigma_m = (2.5 / ln 10) sigma_f / f [mag per relative flux error].
_MAG_PER_RELATIVE_FLUX = 2.5 / math.log(10.0)
#: Significance of a Rubin non-detection limit: ``5 x diaNoise`` (as ZTF's 5-sigma diffmaglim).
RUBIN_LIMIT_SIGMA = 5.0
# What ZTF curves leave out of their JSON (the page's ZTF records stay as they were before Rubin).
_RUBIN_DETECTION_KEYS = frozenset({"flux", "flux_err", "band", "forced"})
_RUBIN_LIMIT_KEYS = frozenset({"band", "flux_limit"})


@dataclass(frozen=True, slots=True)
class Detection:
    """One detection or forced measurement.

    ``jd`` [day] is the Julian date (UTC); ``magpsf`` and ``sigmapsf`` [mag]; ``positive`` is
    ZTF's ``isdiffpos`` true, or a positive Rubin flux. Rubin points also carry ``flux`` and
    ``flux_err`` [nJy] (``psfFlux``, ``psfFluxErr``); their ``fid`` is None and their ``magpsf``
    None when the flux is not positive. ``band`` is the filter name (``g r i``; ``u g r i z y``),
    ``forced`` true for forced photometry (a measurement at the object's position, not a
    detection).
    """

    jd: float
    fid: int | None
    magpsf: float | None
    sigmapsf: float | None
    diffmaglim: float | None
    positive: bool
    flux: float | None = None
    flux_err: float | None = None
    band: str = ""
    forced: bool = False


@dataclass(frozen=True, slots=True)
class UpperLimit:
    """One non-detection: nothing above ``diffmaglim`` [mag] at ``jd`` [day] in band ``fid``.

    ``band`` is the filter name; Rubin limits (v7 packets) have ``fid`` None and carry the
    limiting flux ``flux_limit`` [nJy], ``RUBIN_LIMIT_SIGMA x diaNoise``.
    """

    jd: float
    fid: int | None
    diffmaglim: float
    band: str = ""
    flux_limit: float | None = None


@dataclass(frozen=True)
class LightCurve:
    """What the SN page draws and the TNS report quotes for one alert.

    Attributes
    ----------
    detections
        Every detection, the alert's own included, in time order.
    upper_limits
        Non-detections with a limiting magnitude, in time order.
    first
        The earliest detection (the alert itself for a first detection).
    alert
        The alert's own detection (later than ``first`` for a repeat detection).
    last_non_detection
        The latest upper limit before ``first``, or None (no limit in the history).
    days_since_non_detection
        ``first.jd - last_non_detection.jd`` [day], or None.
    forced
        Forced photometry in time order (Rubin's ``prvDiaForcedSources``; empty for ZTF).
    survey
        ``"ztf"`` (magnitudes) or ``"lsst"`` (fluxes: plot ``flux ± flux_err``).
    """

    detections: tuple[Detection, ...]
    upper_limits: tuple[UpperLimit, ...]
    first: Detection
    alert: Detection
    last_non_detection: UpperLimit | None = None
    days_since_non_detection: float | None = field(default=None)
    forced: tuple[Detection, ...] = ()
    survey: str = "ztf"

    def to_json(self) -> dict[str, Any]:
        """Plain lists and dicts (for the page's embedded JSON).

        A ZTF curve gives exactly the keys it gave before Rubin (no flux, band, forced or survey
        keys); a Rubin curve gives every field.
        """
        if self.survey != "ztf":
            return asdict(self)

        def det(d: Detection) -> dict[str, Any]:
            return {k: v for k, v in asdict(d).items() if k not in _RUBIN_DETECTION_KEYS}

        def lim(u: UpperLimit) -> dict[str, Any]:
            return {k: v for k, v in asdict(u).items() if k not in _RUBIN_LIMIT_KEYS}

        last = self.last_non_detection
        return {
            "detections": [det(d) for d in self.detections],
            "upper_limits": [lim(u) for u in self.upper_limits],
            "first": det(self.first),
            "alert": det(self.alert),
            "last_non_detection": None if last is None else lim(last),
            "days_since_non_detection": self.days_since_non_detection,
        }


def _positive(value: Any) -> bool:
    return value in ("t", "1", 1, True)


def _detection(entry: Mapping[str, Any]) -> Detection | None:
    jd, fid, mag = entry.get("jd"), entry.get("fid"), entry.get("magpsf")
    if jd is None or fid is None or mag is None:
        return None
    return Detection(
        float(jd),
        int(fid),
        float(mag),
        None if entry.get("sigmapsf") is None else float(entry["sigmapsf"]),
        None if entry.get("diffmaglim") is None else float(entry["diffmaglim"]),
        _positive(entry.get("isdiffpos")),
        band=ZTF_BANDS.get(int(fid), ""),
    )


def _split(history: Iterable[Mapping[str, Any]]) -> tuple[list[Detection], list[UpperLimit]]:
    detections, limits = [], []
    for entry in history:
        if entry.get("candid") is not None:
            found = _detection(entry)
            if found is not None:
                detections.append(found)
        elif entry.get("jd") is not None and entry.get("diffmaglim") is not None:
            fid = int(entry.get("fid") or 0)
            limits.append(
                UpperLimit(
                    float(entry["jd"]), fid, float(entry["diffmaglim"]), ZTF_BANDS.get(fid, "")
                )
            )
    return detections, limits


def _rubin_point(entry: Mapping[str, Any], forced: bool) -> Detection | None:
    """A diaSource or diaForcedSource as a point; None without a time or a finite flux."""
    mjd, flux = finite_number(entry.get("midpointMjdTai")), finite_number(entry.get("psfFlux"))
    if mjd is None or flux is None:
        return None
    err = finite_number(entry.get("psfFluxErr"))  # [nJy]
    mag = ab_mag(flux)
    sigma = None if mag is None or err is None else _MAG_PER_RELATIVE_FLUX * err / flux
    band = entry.get("band")
    return Detection(
        mjd_tai_to_jd_utc(mjd),
        None,
        mag,
        sigma,
        None,
        flux > 0,
        flux=flux,
        flux_err=err,
        band="" if band is None else str(band),
        forced=forced,
    )


def _rubin_limit(entry: Mapping[str, Any]) -> UpperLimit | None:
    """A v7 ``diaNondetectionLimit`` as a 5-sigma limit; None without a time or a positive noise.

    ``diaNoise`` is read as the difference image's 1-sigma flux noise at the position [nJy]: the
    v7 schema gives it no unit or description, and the packets stampflow has seen (v10, v11)
    carry no such limits to check it on.
    """
    mjd, noise = finite_number(entry.get("midpointMjdTai")), finite_number(entry.get("diaNoise"))
    if mjd is None or noise is None or noise <= 0:
        return None
    flux_limit = RUBIN_LIMIT_SIGMA * noise  # [nJy]
    band = entry.get("band")
    return UpperLimit(
        mjd_tai_to_jd_utc(mjd),
        None,
        ab_mag(flux_limit),
        "" if band is None else str(band),
        flux_limit,
    )


def _finish(
    own: Detection,
    detections: list[Detection],
    limits: list[UpperLimit],
    forced: list[Detection] | None = None,
    survey: str = "ztf",
) -> LightCurve:
    detections = sorted([*detections, own], key=lambda d: d.jd)
    limits.sort(key=lambda u: u.jd)
    first = detections[0]
    before = [u for u in limits if u.jd < first.jd]
    last = before[-1] if before else None
    days = None if last is None else first.jd - last.jd
    if survey == "ztf":
        return LightCurve(tuple(detections), tuple(limits), first, own, last, days)
    points = tuple(sorted(forced or (), key=lambda d: d.jd))
    return LightCurve(tuple(detections), tuple(limits), first, own, last, days, points, survey)


def rubin_light_curve(alert: Alert) -> LightCurve:
    """The light curve of a Rubin alert from its ``diaSource`` and its packet's history.

    Parameters
    ----------
    alert
        A decoded Rubin alert with its history (a slim alert has none: its light curve is the
        detection alone).

    Returns
    -------
    LightCurve
        ``survey="lsst"``: detections (``prvDiaSources`` and the alert's own ``diaSource``, an
        entry repeating its ``diaSourceId`` counted once), forced photometry
        (``prvDiaForcedSources``, every entry with a time and a flux) and, for v7 packets, upper
        limits (``prvDiaNondetectionLimits``), each in time order; times are JD (UTC) [day],
        fluxes [nJy]. Entries without ``midpointMjdTai`` or a finite ``psfFlux`` are skipped.

    Raises
    ------
    ValueError
        If the alert's own diaSource lacks ``midpointMjdTai`` or a finite ``psfFlux``.
    """
    own = _rubin_point(alert.candidate, forced=False)
    if own is None:
        raise ValueError(f"diaSourceId {alert.candid}: no midpointMjdTai or psfFlux to draw")
    own_id = alert.candidate.get("diaSourceId")
    record = alert.record
    detections = [
        p
        for entry in record.get("prvDiaSources") or []
        if own_id is None or entry.get("diaSourceId") != own_id
        if (p := _rubin_point(entry, forced=False)) is not None
    ]
    forced = [
        p
        for entry in record.get("prvDiaForcedSources") or []
        if (p := _rubin_point(entry, forced=True)) is not None
    ]
    limits = [
        u
        for entry in record.get("prvDiaNondetectionLimits") or []
        if (u := _rubin_limit(entry)) is not None
    ]
    return _finish(own, detections, limits, forced, survey="lsst")


def light_curve(alert: Alert) -> LightCurve:
    """The light curve of ``alert`` from its own detection and the history its packet carries.

    Parameters
    ----------
    alert
        A decoded alert with its history (not :meth:`~transforms.alerts.Alert.slim`: a slim alert
        has none, and its light curve is the detection alone). A Rubin alert
        (``alert.survey.name == "lsst"``) goes to :func:`rubin_light_curve`; a ZTF alert reads
        its candidate and ``prv_candidates``.

    Returns
    -------
    LightCurve
        Detections and upper limits in time order; the first detection, the last non-detection
        before it and the days between them. History entries repeating the alert's own
        ``candid`` are counted once.

    Raises
    ------
    ValueError
        If the alert's own candidate lacks ``jd``, ``fid`` or ``magpsf`` (ZTF), or
        ``midpointMjdTai`` or ``psfFlux`` (Rubin).
    """
    if alert.survey.name == "lsst":
        return rubin_light_curve(alert)
    own = _detection(alert.candidate)
    if own is None:
        raise ValueError(f"candid {alert.candid}: no jd, fid or magpsf to draw")
    history = [p for p in alert.prv_candidates if p.get("candid") != alert.candid]
    detections, limits = _split(history)
    return _finish(own, detections, limits)
