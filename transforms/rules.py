"""What ALeRCE production does around the CNN (SPEC §8), as pure functions.

* **Selection** (before the CNN): only an object's first detection is classified: the earliest alert
  of each object in the input, and only when its ``prv_candidates`` hold no earlier detection.
* **Rules** (after the CNN): a known solar-system object nearby (``ssdistnr >= 0``) is an asteroid;
  an SN prediction is vetoed when the difference is negative or a star sits on top of it. The
  network's probabilities are always kept; a rule changes ``predicted_class`` and names itself in
  the ``rule`` column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from transforms.schema import (
    CLASS_NAMES,
    RULE_KNOWN_ASTEROID,
    RULE_SN_VETO_NEGATIVE,
    RULE_SN_VETO_STAR,
    SKIP_EARLIER_DETECTION,
    SN_VETO_DISTANCE,
    SN_VETO_SGSCORE,
)

_SN = CLASS_NAMES.index("SN")
#: Index of the SN class in the network's output.
RULE_SN_INDEX = _SN


def sn_veto(probabilities: np.ndarray) -> str:
    """The class an SN call falls to when a veto applies: the most probable other class."""
    others = np.array(probabilities, dtype=np.float64)
    others[_SN] = -1.0
    return CLASS_NAMES[int(np.argmax(others))]


def earliest_key(jd: float, candid: int) -> tuple[float, int]:
    """Ordering of an object's alerts: earliest ``jd`` first, ``candid`` breaking ties."""
    return (jd, candid)


def history_skip_reason(
    candidate: Mapping[str, Any], prv_candidates: Sequence[Mapping]
) -> str | None:
    """Why an alert is not a first detection, judged from its own history, or None.

    Parameters
    ----------
    candidate
        The alert's ``candidate`` record (needs ``jd``).
    prv_candidates
        Its ``prv_candidates`` (detections have a non-null ``candid``; upper limits have none).

    Returns
    -------
    str or None
        :data:`transforms.schema.SKIP_EARLIER_DETECTION` when an earlier detection exists.
    """
    jd = candidate["jd"]
    for prv in prv_candidates:
        if prv.get("candid") is not None and prv.get("jd") is not None and prv["jd"] < jd:
            return SKIP_EARLIER_DETECTION
    return None


def is_known_sso(ssdistnr: Any) -> bool:
    """A known solar-system object lies nearby (``ssdistnr >= 0`` [arcsec]; ZTF writes -999 or
    null when none does)."""
    return ssdistnr is not None and ssdistnr >= 0


def is_negative_difference(isdiffpos: Any) -> bool:
    """ZTF's ``isdiffpos`` is ``'t'``/``'1'`` for a positive and ``'f'``/``'0'`` for a negative
    difference (science fainter than reference)."""
    return str(isdiffpos).strip().lower() in ("f", "0", "false")


def apply_rules(
    probabilities: np.ndarray, candidate: Mapping[str, Any], enabled: bool = True
) -> tuple[str, str | None]:
    """Decide the predicted class of one alert.

    Parameters
    ----------
    probabilities
        The network's ``[5]`` probabilities in :data:`CLASS_NAMES` order.
    candidate
        The alert's ``candidate`` record (``ssdistnr``, ``isdiffpos``, ``sgscore1``, ``distpsnr1``).
    enabled
        False reproduces the bare network (``--rules none``).

    Returns
    -------
    (predicted_class, rule)
        The rule is None when the network's top class stands.
    """
    top = int(np.argmax(probabilities))
    if not enabled:
        return CLASS_NAMES[top], None
    if is_known_sso(candidate.get("ssdistnr")):
        return "asteroid", RULE_KNOWN_ASTEROID
    if top == _SN:
        rule = None
        if is_negative_difference(candidate.get("isdiffpos")):
            rule = RULE_SN_VETO_NEGATIVE
        else:
            sgscore1, distpsnr1 = candidate.get("sgscore1"), candidate.get("distpsnr1")
            if (
                sgscore1 is not None
                and distpsnr1 is not None
                and sgscore1 > SN_VETO_SGSCORE
                and 0 <= distpsnr1 < SN_VETO_DISTANCE
            ):
                rule = RULE_SN_VETO_STAR
        if rule is not None:
            return sn_veto(probabilities), rule
    return CLASS_NAMES[top], None
