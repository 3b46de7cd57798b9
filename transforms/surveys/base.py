"""The survey adapter interface (see :mod:`transforms.surveys`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
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
    #: Side of the square stamps its models see [pixels].
    stamp_size: int = 0
    #: The feature list of its models, unless a model names another.
    default_features: tuple[str, ...] = ()
    #: Every feature list its models may use, by the name ``train --features`` takes.
    feature_sets: Mapping[str, tuple[str, ...]] = MappingProxyType({})
    #: Alert fields the SN page and the rules read beside the output row.
    extra_fields: tuple[str, ...] = ()

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

    def earlier_detection(self, record: Mapping[str, Any]) -> bool:
        """True when the packet's history holds a detection earlier than this one."""
        raise NotImplementedError

    def cutout_bytes(self, record: Mapping[str, Any], kind: str) -> bytes | None:
        """The cutout of one kind (``science``, ``template``, ``difference``) as stored, or None."""
        raise NotImplementedError

    def validate_feature_names(self, names: Sequence[str]) -> tuple[str, ...]:
        """``names`` as a tuple when this adapter computes every one of them.

        Raises
        ------
        ValueError
            On duplicates or a feature it does not compute.
        """
        raise NotImplementedError

    def features(self, sources: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Any:
        """Raw (imputed, unclipped) features of a batch of detections
        (:meth:`source` dicts): a :class:`transforms.features.FeatureBatch`."""
        raise NotImplementedError

    def stamp_cube(self, record: Mapping[str, Any], policy: str) -> tuple[Any, bool]:
        """The ``float32 [S, S, 3]`` science/template/difference cube the model sees, and whether
        it was padded; raises :class:`transforms.stamps.StampError` with a specific code."""
        raise NotImplementedError

    def row_fields(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The alert's fields of an output row: ``jd, ra, dec, fid, band, magpsf``, its
        :attr:`extra_fields`, and ``known_sso`` (for ``--rules alerce``)."""
        raise NotImplementedError

    def apply_rules(
        self, probabilities: Any, fields: Mapping[str, Any], enabled: bool = True
    ) -> tuple[str, str | None]:
        """``(predicted class, rule or None)`` from the network's probabilities and
        :meth:`row_fields`."""
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
