"""The ZTF adapter: packets of schemas 1.8 to 4.02 (``objectId``, ``candid``, ``candidate``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transforms.schema import (
    CUTOUT_FIELDS,
    REQUIRED_ALERT_FIELDS,
    REQUIRED_CANDIDATE_FIELDS,
    ZTF_BANDS,
)
from transforms.surveys.base import Survey

__all__ = ["ZTF"]


class _ZTF(Survey):
    name = "ztf"
    signature = frozenset(REQUIRED_ALERT_FIELDS)
    history_fields = frozenset({"prv_candidates", "fp_hists"})

    def validate(self, record: Any) -> str | None:
        if not isinstance(record, dict):
            return f"record is a {type(record).__name__}"
        for name in REQUIRED_ALERT_FIELDS:
            if record.get(name) is None:
                return f"no {name}"
        cand = record["candidate"]
        missing = [f for f in REQUIRED_CANDIDATE_FIELDS if cand.get(f) is None]
        if missing:
            return f"candidate lacks {', '.join(missing)}"
        return None

    def alert_id(self, record: Mapping[str, Any]) -> int:
        return record["candid"]

    def object_id(self, record: Mapping[str, Any]) -> str:
        return record["objectId"]

    def source(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return record["candidate"]

    def history(self, record: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        return record.get("prv_candidates") or []

    def jd(self, record: Mapping[str, Any]) -> float:
        return record["candidate"]["jd"]

    def band(self, record: Mapping[str, Any]) -> str:
        return ZTF_BANDS.get(record["candidate"]["fid"], "")

    def earlier_detection(self, record: Mapping[str, Any]) -> bool:
        # Detections have a candid; upper limits have none.
        jd = record["candidate"]["jd"]
        return any(
            p.get("candid") is not None and p.get("jd") is not None and p["jd"] < jd
            for p in self.history(record)
        )

    def cutout_bytes(self, record: Mapping[str, Any], kind: str) -> bytes | None:
        cutout = record.get(CUTOUT_FIELDS[kind])
        return None if cutout is None else cutout.get("stampData")

    def schema_version(self, record: Mapping[str, Any]) -> str:
        return record.get("schemavsn") or "1.8"


#: The ZTF adapter.
ZTF: Survey = _ZTF()
