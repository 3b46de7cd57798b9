"""The survey adapter interface (see :mod:`transforms.surveys`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Survey"]


class Survey:
    """How one survey's decoded alert records become stampflow's common alert.

    Subclasses are stateless singletons: every method is a pure function of a record (the dict
    ``fastavro`` decodes, or the same shape read from Parquet).

    Attributes
    ----------
    name
        ``--survey`` name and the ``survey`` output column (``"ztf"``, ``"lsst"``).
    signature
        Top-level record fields that identify the survey's packets.
    history_fields
        Top-level fields only first-detection selection reads (dropped from slim alerts).
    """

    name: str = ""
    signature: frozenset[str] = frozenset()
    history_fields: frozenset[str] = frozenset()

    def recognises(self, field_names: frozenset[str] | set[str]) -> bool:
        """True when a record with these top-level fields is one of this survey's packets."""
        return self.signature <= set(field_names)

    def validate(self, record: Any) -> str | None:
        """Why ``record`` cannot be used as an alert of this survey, or None when it can."""
        raise NotImplementedError

    def alert_id(self, record: Mapping[str, Any]) -> int:
        """Unique id of this detection (ZTF ``candid``, Rubin ``diaSourceId``)."""
        raise NotImplementedError

    def object_id(self, record: Mapping[str, Any]) -> str:
        """Id of the object the detection belongs to, as a string."""
        raise NotImplementedError

    def source(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The detection's own measurements (ZTF ``candidate``, Rubin ``diaSource``)."""
        raise NotImplementedError

    def history(self, record: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        """Earlier detections (and, for ZTF, upper limits) the packet carries; empty when none."""
        raise NotImplementedError

    def jd(self, record: Mapping[str, Any]) -> float:
        """Julian date of the exposure midpoint [day] (UTC for both surveys)."""
        raise NotImplementedError

    def band(self, record: Mapping[str, Any]) -> str:
        """Filter name (``g``, ``r``, ``i`` for ZTF; ``u g r i z y`` for Rubin)."""
        raise NotImplementedError

    def ra_dec(self, record: Mapping[str, Any]) -> tuple[float, float]:
        """Position of the detection [deg] (ICRS/J2000)."""
        src = self.source(record)
        return float(src["ra"]), float(src["dec"])

    def earlier_detection(self, record: Mapping[str, Any]) -> bool:
        """True when the packet's history holds a detection earlier than this one."""
        raise NotImplementedError

    def cutout_bytes(self, record: Mapping[str, Any], kind: str) -> bytes | None:
        """The cutout of one kind (``science``, ``template``, ``difference``) as stored, or None."""
        raise NotImplementedError

    def schema_version(self, record: Mapping[str, Any]) -> str:
        """The packet's schema version as the survey names it, ``""`` when unknown."""
        return ""

    def __repr__(self) -> str:
        return f"<survey {self.name}>"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Pickled (Beam ships DoFns) as a lookup, so identity checks survive the round trip.
        from transforms.surveys import get_survey

        return get_survey, (self.name,)
