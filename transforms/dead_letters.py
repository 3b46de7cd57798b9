"""Dead-letter records: every input that could not be classified, with why and where.

A dead letter is a plain dict with the fields of :data:`transforms.schema.DEAD_LETTER_FIELDS`, so it
pickles cheaply between Beam stages and maps one-to-one onto the JSONL files and the BigQuery table.
``raw`` stays ``bytes`` inside the pipeline and becomes base64 only when written.

A letter of a *slim* alert (one whose bytes were dropped after selection to save memory) carries
``raw=b""`` and one extra key, :data:`REREAD_PATH`, naming the file the bytes are in; the batch
job's dead-letter sink fills ``raw`` from there, one read per file, and drops the key. Stages stay
pure: none of them opens a file to build a dead letter.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from transforms.schema import DEAD_LETTER_FIELDS, STAGES

__all__ = [
    "REREAD_PATH",
    "alert_dead_letter",
    "dead_letter",
    "from_json_line",
    "reason_code",
    "to_json_line",
]

#: Key of a letter whose ``raw`` is still to be read back from this file (not an output column).
REREAD_PATH = "_reread_path"


def dead_letter(
    stage: str,
    reason: str,
    source: str,
    raw: bytes | None,
    object_id: str | None = None,
    candid: int | None = None,
) -> dict[str, Any]:
    """Build a dead-letter record.

    Parameters
    ----------
    stage
        One of :data:`transforms.schema.STAGES`.
    reason
        ``"code: detail"`` text naming what went wrong.
    source
        The file, archive member or message the record came from.
    raw
        The bytes that failed (a whole file, an archive member, or a single-alert container).
    object_id, candid
        Identifiers when they were decoded before the failure.

    Returns
    -------
    dict
        ``{stage, reason, source, objectId, candid, raw}``.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    return {
        "stage": stage,
        "reason": reason,
        "source": source,
        "objectId": object_id,
        "candid": candid,
        "raw": raw if raw is not None else b"",
    }


def alert_dead_letter(alert: Any, stage: str, reason: str) -> dict[str, Any]:
    """The dead letter of a decoded alert that failed at ``stage`` (ids and raw container kept).

    Parameters
    ----------
    alert
        A :class:`transforms.alerts.Alert`. For a slim one (no bytes) the letter names the file
        to read them back from (:data:`REREAD_PATH`) instead of reading it here.
    stage, reason
        As in :func:`dead_letter`.
    """
    letter = dead_letter(stage, reason, alert.source, alert.raw, alert.object_id, alert.candid)
    if not alert.raw and alert.path:
        letter[REREAD_PATH] = alert.path
    return letter


def reason_code(record: dict[str, Any]) -> str:
    """The short code of a dead letter's reason (the text before the first colon)."""
    return record["reason"].split(":", 1)[0]


def to_json_line(record: dict[str, Any]) -> str:
    """Serialise a dead letter as one JSON line, ``raw`` in base64."""
    out = {k: record.get(k) for k in DEAD_LETTER_FIELDS}
    out["raw"] = base64.b64encode(record.get("raw") or b"").decode("ascii")
    return json.dumps(out, sort_keys=False)


def from_json_line(line: str) -> dict[str, Any]:
    """Inverse of :func:`to_json_line` (``raw`` back to bytes), for replays and tests."""
    rec = json.loads(line)
    rec["raw"] = base64.b64decode(rec["raw"])
    return rec
