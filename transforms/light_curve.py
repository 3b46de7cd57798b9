"""An alert's light curve from its own history: detections, upper limits, the rise.

A ZTF alert carries up to 30 days of history in ``prv_candidates``: earlier detections (a
``candid``, ``magpsf ± sigmapsf``) and non-detections (no ``candid``; ``diffmaglim`` is the
5-sigma limiting magnitude of that difference image). What an astronomer vetting a young
supernova wants from it (ALeRCE's SN Hunter workflow) is the first detection, the deepest
recent non-detection before it, and how many days separate the two: a rise from below a limit
a day or two earlier is the signature of an explosion caught young. Pure functions, no Beam.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from transforms.alerts import Alert

__all__ = ["Detection", "LightCurve", "UpperLimit", "light_curve"]


@dataclass(frozen=True, slots=True)
class Detection:
    """One detection [jd: day, magpsf and sigmapsf: mag]; ``positive`` is ``isdiffpos`` true."""

    jd: float
    fid: int
    magpsf: float
    sigmapsf: float | None
    diffmaglim: float | None
    positive: bool


@dataclass(frozen=True, slots=True)
class UpperLimit:
    """One non-detection: nothing above ``diffmaglim`` [mag] at ``jd`` [day] in band ``fid``."""

    jd: float
    fid: int
    diffmaglim: float


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
        The latest upper limit before ``first``, or None (no limit in the 30-day history).
    days_since_non_detection
        ``first.jd - last_non_detection.jd`` [day], or None.
    """

    detections: tuple[Detection, ...]
    upper_limits: tuple[UpperLimit, ...]
    first: Detection
    alert: Detection
    last_non_detection: UpperLimit | None = None
    days_since_non_detection: float | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        """Plain lists and dicts (for the page's embedded JSON)."""
        return asdict(self)


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
    )


def _split(history: Iterable[Mapping[str, Any]]) -> tuple[list[Detection], list[UpperLimit]]:
    detections, limits = [], []
    for entry in history:
        if entry.get("candid") is not None:
            found = _detection(entry)
            if found is not None:
                detections.append(found)
        elif entry.get("jd") is not None and entry.get("diffmaglim") is not None:
            fid = entry.get("fid")
            limits.append(UpperLimit(float(entry["jd"]), int(fid or 0), float(entry["diffmaglim"])))
    return detections, limits


def light_curve(alert: Alert) -> LightCurve:
    """The light curve of ``alert`` from its candidate and ``prv_candidates``.

    Parameters
    ----------
    alert
        A decoded alert with its history (not :meth:`~transforms.alerts.Alert.slim`: a slim alert
        has none, and its light curve is the detection alone).

    Returns
    -------
    LightCurve
        Detections and upper limits in time order; the first detection, the last non-detection
        before it and the days between them. History entries repeating the alert's own
        ``candid`` are counted once.

    Raises
    ------
    ValueError
        If the alert's own candidate lacks ``jd``, ``fid`` or ``magpsf``.
    """
    own = _detection(alert.candidate)
    if own is None:
        raise ValueError(f"candid {alert.candid}: no jd, fid or magpsf to draw")
    history = [p for p in alert.prv_candidates if p.get("candid") != alert.candid]
    detections, limits = _split(history)
    detections = sorted([*detections, own], key=lambda d: d.jd)
    limits.sort(key=lambda u: u.jd)
    first = detections[0]
    before = [u for u in limits if u.jd < first.jd]
    last = before[-1] if before else None
    days = None if last is None else first.jd - last.jd
    return LightCurve(tuple(detections), tuple(limits), first, own, last, days)
