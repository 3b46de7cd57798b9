"""The ZTF adapter: packets of schemas 1.8 to 4.02 (``objectId``, ``candid``, ``candidate``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from transforms.features import (
    FeatureBatch,
    extract_features,
    stack_stamps,
    validate_feature_names,
)
from transforms.rules import apply_rules, history_skip_reason, is_known_sso
from transforms.schema import (
    CUTOUT_FIELDS,
    FEATURES_ALERCE_26,
    FEATURES_DRB_27,
    FEATURES_PRODUCTION,
    REQUIRED_ALERT_FIELDS,
    REQUIRED_CANDIDATE_FIELDS,
    STAMP_KINDS,
    STAMP_SIZE,
    ZTF_BANDS,
)
from transforms.stamps import decode_stamps
from transforms.surveys.base import Survey

__all__ = ["ZTF"]


class _ZTF(Survey):
    name = "ztf"
    signature = frozenset(REQUIRED_ALERT_FIELDS)
    history_fields = frozenset({"prv_candidates", "fp_hists"})
    stamp_size = STAMP_SIZE
    default_features = FEATURES_PRODUCTION
    feature_sets = MappingProxyType(
        {
            "production": FEATURES_PRODUCTION,
            "alerce26": FEATURES_ALERCE_26,
            "drb27": FEATURES_DRB_27,
        }
    )
    # The rules read the first four; the SN page ndethist.
    extra_fields = ("ssdistnr", "isdiffpos", "sgscore1", "distpsnr1", "ndethist")

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
        # Entries that are not records hold no candid (history_skip_reason would fail on them).
        entries = [p for p in self.history(record) if isinstance(p, dict)]
        return history_skip_reason(record["candidate"], entries) is not None

    def cutout_bytes(self, record: Mapping[str, Any], kind: str) -> bytes | None:
        cutout = record.get(CUTOUT_FIELDS[kind])
        return None if cutout is None else cutout.get("stampData")

    def schema_version(self, record: Mapping[str, Any]) -> str:
        return record.get("schemavsn") or "1.8"

    def validate_feature_names(self, names: Sequence[str]) -> tuple[str, ...]:
        return validate_feature_names(names)

    def features(self, sources: Sequence[Mapping[str, Any]], names: Sequence[str]) -> FeatureBatch:
        return extract_features(sources, names)

    def stamp_cube(self, record: Mapping[str, Any], policy: str) -> tuple[Any, bool]:
        cand = record["candidate"]
        images = decode_stamps({kind: self.cutout_bytes(record, kind) for kind in STAMP_KINDS})
        return stack_stamps(images, policy, xpos=cand.get("xpos"), ypos=cand.get("ypos"))

    def row_fields(self, record: Mapping[str, Any]) -> dict[str, Any]:
        c = record["candidate"]
        fields = {
            "jd": c["jd"],
            "ra": c["ra"],
            "dec": c["dec"],
            "fid": c["fid"],
            "band": ZTF_BANDS.get(c["fid"], ""),
            "magpsf": c.get("magpsf"),
        }
        fields.update({f: c.get(f) for f in self.extra_fields})
        fields["known_sso"] = is_known_sso(c.get("ssdistnr"))
        return fields

    def apply_rules(
        self, probabilities: Any, fields: Mapping[str, Any], enabled: bool = True
    ) -> tuple[str, str | None]:
        return apply_rules(probabilities, fields, enabled)


#: The ZTF adapter.
ZTF: Survey = _ZTF()
