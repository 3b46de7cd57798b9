"""The SN candidates page: one self-contained HTML file to work through a night's candidates.

What an astronomer does with it (ALeRCE's SN Hunter workflow): sort and filter the candidates,
judge each from its stamps and its rise from the last non-detection, mark it *SN*, *not SN*
(saying what it is instead) or *unsure* with a comment, and export the judgements: a
``labels.csv`` that ``stampflow train --labels`` reads (closing the loop from vetting back to
training), and the SN-vetted candidates as a TNS AT bulk-report JSON to upload.

The page is data plus a script: every candidate is one JSON record (:func:`page_record`)
embedded in the page, drawn by ``sn_page.js`` (inlined, with ``sn_page.css``): no server, no
network, no CDN. Judgements live in the browser's ``localStorage`` under one key, by ``candid``,
so they survive reloads and re-runs of the same night.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transforms.density import night_of
from transforms.light_curve import LightCurve
from transforms.schema import CLASS_NAMES, PROBABILITY_COLUMNS, STAMP_KINDS

__all__ = [
    "BAND_NAMES",
    "STORAGE_KEY",
    "TNS_DISCOVERY_SOURCE_ZTF",
    "TNS_FILTER_IDS",
    "TNS_INSTRUMENT_ZTF",
    "jd_to_utc",
    "page_record",
    "page_records",
    "render_page",
]

#: ZTF filter id -> band name.
BAND_NAMES: dict[int, str] = {1: "g", 2: "r", 3: "i"}
#: TNS ids (``https://www.wis-tns.org/api/values``): ZTF-Cam on the P48, and its g, r, i filters.
TNS_INSTRUMENT_ZTF = "196"
TNS_FILTER_IDS: dict[int, str] = {1: "110", 2: "111", 3: "112"}
#: TNS discovery data source: the ZTF survey.
TNS_DISCOVERY_SOURCE_ZTF = "48"
#: ``localStorage`` key holding every judgement, ``{candid: {vet, cls, comment}}``.
STORAGE_KEY = "stampflow.vetting.v1"
#: ZTF positions: 1-sigma error quoted to TNS [arcsec] (Masci et al. 2019 give ~0.085").
POSITION_ERROR_ARCSEC = 0.085

_ASSETS = Path(__file__).with_name("assets")


def jd_to_utc(jd: float) -> str:
    """A Julian date [day] as TNS writes dates: ``YYYY-MM-DD HH:MM:SS.sss`` (UTC)."""
    unix = (jd - 2440587.5) * 86400.0
    stamp = dt.datetime.fromtimestamp(unix, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"


def _finite(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def page_records(
    rows: Sequence[Mapping[str, Any]], curves: Sequence[LightCurve | None]
) -> list[dict[str, Any]]:
    """The candidates as the page's script reads them (see :func:`page_record`)."""
    from transforms.features import sky_coordinates

    if not rows:
        return []
    gal_b = sky_coordinates(np.array([r["ra"] for r in rows]), np.array([r["dec"] for r in rows]))
    return [
        page_record(r, c, float(b)) for r, c, b in zip(rows, curves, gal_b["gal_lat"], strict=True)
    ]


def page_record(row: Mapping[str, Any], curve: LightCurve | None, gal_b: float) -> dict[str, Any]:
    """One candidate as the page's script reads it.

    Parameters
    ----------
    row
        A ranked candidate row (:func:`pipeline.reports.candidate_rows`), with ``stamps`` as PNG
        data URIs by kind.
    curve
        Its light curve (:func:`transforms.light_curve.light_curve`), or None when the history
        could not be read (the page then says so).
    gal_b
        Its Galactic latitude [deg].

    Returns
    -------
    dict
        JSON-ready: identifiers, position, Galactic latitude [deg], photometry, probabilities,
        rule, PS1 neighbour, night, links, stamps, light curve and the TNS fields.
    """
    lc = curve.to_json() if curve is not None else None
    first = curve.first if curve is not None else None
    last = curve.last_non_detection if curve is not None else None
    sg, dist = row.get("sgscore1"), row.get("distpsnr1")
    has_ps1 = sg is not None and sg > -1 and dist is not None and dist >= 0
    return {
        "rank": row["rank"],
        "objectId": row["objectId"],
        "candid": str(row["candid"]),  # beyond 2**53: JavaScript numbers would round it
        "ra": row["ra"],
        "dec": row["dec"],
        "gal_b": gal_b,
        "jd": row["jd"],
        "night": night_of(row["jd"]),
        "band": BAND_NAMES.get(row.get("fid"), "?"),
        "fid": row.get("fid"),
        "magpsf": _finite(row.get("magpsf")),
        "sigmapsf": None if first is None else first.sigmapsf,
        "p_SN": row["p_SN"],
        "probabilities": {c: row[p] for c, p in zip(CLASS_NAMES, PROBABILITY_COLUMNS, strict=True)},
        "predicted_class": row["predicted_class"],
        "rule": row.get("rule") or "",
        "isdiffpos": row.get("isdiffpos"),
        "sgscore1": _finite(sg) if has_ps1 else None,
        "distpsnr1": _finite(dist) if has_ps1 else None,
        "ndethist": row.get("ndethist"),
        "links": {k: row[k] for k in ("alerce_url", "tns_url", "simbad_url", "ned_url")},
        "stamps": {k: row["stamps"][k] for k in STAMP_KINDS if k in (row.get("stamps") or {})},
        "light_curve": lc,
        "days_since_non_detection": None if curve is None else curve.days_since_non_detection,
        "tns": {
            "discovery_datetime": jd_to_utc(first.jd if first else row["jd"]),
            "discovery_mag": first.magpsf if first else _finite(row.get("magpsf")),
            "discovery_mag_error": None if first is None else first.sigmapsf,
            "discovery_limit": None if first is None else first.diffmaglim,
            "discovery_filter": TNS_FILTER_IDS.get((first.fid if first else row.get("fid")), ""),
            "non_detection": None
            if last is None
            else {
                "obsdate": jd_to_utc(last.jd),
                "limiting_flux": last.diffmaglim,
                "filter_value": TNS_FILTER_IDS.get(last.fid, ""),
            },
        },
    }


def _script_json(value: Any) -> str:
    # Inside <script>, "</" would end the element early; "<\/" is the same JSON string.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def render_page(
    records: Sequence[Mapping[str, Any]],
    title: str,
    model: str,
    tns_group_id: int | None = None,
    tns_reporter: str = "",
) -> str:
    """The self-contained HTML page.

    Parameters
    ----------
    records
        From :func:`page_record`, ranked.
    title
        Page heading (e.g. "SN candidates, night 20180601").
    model
        Model name and version shown under the heading.
    tns_group_id, tns_reporter
        Defaults of the TNS report's ``reporting_group_id`` and ``reporter`` (editable in the
        page, remembered in the browser).

    Returns
    -------
    str
        The HTML document.
    """
    e = html.escape
    config = {
        "storageKey": STORAGE_KEY,
        "classes": list(CLASS_NAMES),
        "tns": {
            "reporting_group_id": "" if tns_group_id is None else str(tns_group_id),
            "reporter": tns_reporter,
            "discovery_data_source_id": TNS_DISCOVERY_SOURCE_ZTF,
            "instrument_value": TNS_INSTRUMENT_ZTF,
            "position_error_arcsec": POSITION_ERROR_ARCSEC,
        },
    }
    css = (_ASSETS / "sn_page.css").read_text(encoding="utf-8")
    script = (_ASSETS / "sn_page.js").read_text(encoding="utf-8")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{e(title)}</title><style>{css}</style></head><body>"
        f"<h1>{e(title)}</h1><p class=small>Ranked by the SN probability after ALeRCE's rules; "
        f"model {e(model)}. Stamps: 63×63 pixels (1″/pixel), grey scale clipped at the 1st and "
        "99.5th percentiles, NaN in red; click a stamp to zoom. Judgements are kept in this "
        "browser; export them as <code>labels.csv</code> for <code>stampflow train --labels"
        "</code> or as a TNS AT report.</p>"
        '<div id="app"></div>'
        f'<script id="sn-config" type="application/json">{_script_json(config)}</script>'
        f'<script id="sn-data" type="application/json">{_script_json(list(records))}</script>'
        f"<script>{script}</script></body></html>"
    )
