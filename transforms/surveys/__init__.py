"""Survey adapters: what each survey's alert packets look like, behind one interface.

A :class:`Survey` says how a decoded record of its survey yields the common alert (alert and
object ids, time, band, position), whether it is its object's first detection, which fields are
history, and where its cutout bytes are. :class:`transforms.alerts.Alert` carries the name of its
survey and delegates to the adapter, so selection, deduplication and the sinks read no survey's
field names. A survey is recognised per packet from its writer schema (:func:`survey_of_fields`).

Adding a survey is one module here, an entry in :data:`SURVEYS`, and its names in
:mod:`transforms.schema`.
"""

from __future__ import annotations

from transforms.surveys.base import Survey
from transforms.surveys.lsst import LSST
from transforms.surveys.ztf import ZTF

__all__ = ["LSST", "SURVEYS", "ZTF", "Survey", "get_survey", "survey_of_fields"]

#: Every survey stampflow reads, by name (``--survey``).
SURVEYS: dict[str, Survey] = {ZTF.name: ZTF, LSST.name: LSST}


def get_survey(name: str) -> Survey:
    """The adapter of survey ``name`` (``"ztf"`` or ``"lsst"``).

    Raises
    ------
    KeyError
        For a name no adapter has.
    """
    return SURVEYS[name]


def survey_of_fields(field_names: frozenset[str] | set[str]) -> Survey | None:
    """The survey whose packets have these top-level record fields, or None."""
    for survey in SURVEYS.values():
        if survey.recognises(field_names):
            return survey
    return None
