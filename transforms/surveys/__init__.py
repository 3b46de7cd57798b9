"""Survey adapters: what each survey's alert packets look like, behind one interface.

A :class:`Survey` says how a decoded record of its survey yields the common alert (alert and
object ids, time, band, position), whether it is its object's first detection, which fields are
history, and where its cutout bytes are. :class:`transforms.alerts.Alert` carries the name of its
survey and delegates to the adapter, so selection, deduplication and the sinks read no survey's
field names. A survey is recognised per packet from its writer schema (:func:`survey_of_fields`).

Adding a survey is one module here, an entry in ``_MODULES``, and its names in
:mod:`transforms.schema`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the adapters import their siblings: loaded on first use (PEP 562)
    from transforms.surveys.base import Survey

__all__ = ["LSST", "SURVEYS", "ZTF", "Survey", "get_survey", "survey_of_fields"]

#: Module of each adapter, by survey name (``--survey``); the adapter is its ``NAME.upper()``.
_MODULES: dict[str, str] = {"ztf": "transforms.surveys.ztf", "lsst": "transforms.surveys.lsst"}


def get_survey(name: str) -> Survey:
    """The adapter of survey ``name`` (``"ztf"`` or ``"lsst"``).

    Raises
    ------
    KeyError
        For a name no adapter has.
    """
    return getattr(importlib.import_module(_MODULES[name]), name.upper())


def survey_of_fields(field_names: frozenset[str] | set[str]) -> Survey | None:
    """The survey whose packets have these top-level record fields, or None."""
    for name in _MODULES:
        survey = get_survey(name)
        if survey.recognises(field_names):
            return survey
    return None


def __getattr__(name: str) -> Any:
    if name in ("ZTF", "LSST"):
        return get_survey(name.lower())
    if name == "SURVEYS":  # every survey stampflow reads, by name
        return {n: get_survey(n) for n in _MODULES}
    if name == "Survey":
        from transforms.surveys.base import Survey

        return Survey
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
