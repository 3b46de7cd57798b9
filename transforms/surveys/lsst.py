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

from collections.abc import Mapping, Sequence
from typing import Any

from transforms.schema import CUTOUT_FIELDS, LSST_BANDS, TAI_MINUS_UTC
from transforms.surveys.base import Survey

__all__ = ["LSST", "mjd_tai_to_jd_utc"]

_MJD_TO_JD = 2400000.5  # [day]


def mjd_tai_to_jd_utc(mjd_tai: float) -> float:
    """Julian date (UTC) [day] of a modified Julian date in TAI [day]."""
    return float(mjd_tai) + _MJD_TO_JD - TAI_MINUS_UTC / 86400.0


def _nonzero(value: Any) -> int | None:
    return None if value is None or int(value) == 0 else int(value)


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


class _LSST(Survey):
    name = "lsst"
    signature = frozenset({"diaSource", "prvDiaSources", "cutoutDifference"})
    history_fields = frozenset({"prvDiaSources", "prvDiaForcedSources", "prvDiaNondetectionLimits"})

    def validate(self, record: Any) -> str | None:
        if not isinstance(record, dict):
            return f"record is a {type(record).__name__}"
        src = record.get("diaSource")
        if not isinstance(src, dict):
            return "no diaSource"
        ids = (record.get("diaSourceId"), record.get("alertId"), src.get("diaSourceId"))
        if all(i is None for i in ids):
            return "no diaSourceId"
        missing = [f for f in ("midpointMjdTai", "ra", "dec", "band") if src.get(f) is None]
        if missing:
            return f"diaSource lacks {', '.join(missing)}"
        if _dia_object(record) is None and _ss_object(record) is None:
            return "neither a diaObjectId nor an ssObjectId"
        return None

    def alert_id(self, record: Mapping[str, Any]) -> int:
        value = record.get("diaSourceId")
        if value is None:
            value = record.get("alertId")
        if value is None:
            value = record["diaSource"]["diaSourceId"]
        return int(value)

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
        band = record["diaSource"]["band"]
        return band if band in LSST_BANDS else str(band)

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


#: The Rubin (LSST) adapter.
LSST: Survey = _LSST()
