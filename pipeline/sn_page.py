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

Candidates are ZTF's or Rubin's (the row's ``survey``; none means ZTF). A page of ZTF candidates
only reads as it did before Rubin. A Rubin candidate's record adds its fluxes, its stamps'
geometry (:func:`rubin_stamp_geometry`: size, 0.2″ pixels, the visit's rotator angle, as Rubin
cutouts are not north-up) and a light curve in flux (:func:`page_light_curve`); its links are
Fink's Rubin portal and position searches, and its TNS fields leave ZTF's instrument, discovery
data source and filter ids empty for the user to pick Rubin's.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.reports import LINK_COLUMNS
from transforms.density import night_of
from transforms.light_curve import Detection, LightCurve, UpperLimit
from transforms.schema import (
    CLASS_NAMES,
    LSST_PIXEL_SCALE,
    PROBABILITY_COLUMNS,
    STAMP_KINDS,
    STAMP_SIZE,
)
from transforms.stamps import StampError, header_cards

__all__ = [
    "BAND_NAMES",
    "PIXEL_SCALE_ARCSEC",
    "STORAGE_KEY",
    "TNS_DISCOVERY_SOURCE_ZTF",
    "TNS_FILTER_IDS",
    "TNS_INSTRUMENT_ZTF",
    "TNS_RUBIN_NOTE",
    "jd_to_utc",
    "page_light_curve",
    "page_record",
    "page_records",
    "render_page",
    "rubin_stamp_geometry",
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
#: Why a Rubin candidate's TNS fields leave ids empty (shown on the page and kept in its record).
TNS_RUBIN_NOTE = (
    "Rubin candidate: stampflow knows TNS's ids for ZTF only, so the instrument, discovery data "
    "source and filter ids (and the position error and exposure time) are left empty: pick "
    "Rubin's values in TNS before uploading."
)
#: Stamp pixel scale by survey [arcsec / pixel].
PIXEL_SCALE_ARCSEC: dict[str, float] = {"ztf": 1.01, "lsst": LSST_PIXEL_SCALE}

_ASSETS = Path(__file__).with_name("assets")


def jd_to_utc(jd: float) -> str:
    """A Julian date [day] as TNS writes dates: ``YYYY-MM-DD HH:MM:SS.sss`` (UTC)."""
    unix = (jd - 2440587.5) * 86400.0
    stamp = dt.datetime.fromtimestamp(unix, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"


def _finite(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def rubin_stamp_geometry(cutouts: Mapping[str, bytes | None] | None) -> dict[str, Any]:
    """What the page says of a Rubin candidate's stamps, read from a cutout's FITS header.

    Parameters
    ----------
    cutouts
        The row's ``cutouts``: stored bytes by kind (uncompressed FITS; the science cutout is
        read, else the difference or the template: all three share size and orientation).

    Returns
    -------
    dict
        ``nx, ny`` [pixels] (None when no header reads), ``pixel_scale`` [arcsec / pixel],
        ``fov`` ``[width, height]`` [arcsec] (None with the size) and ``rotpa`` [deg], the
        visit's rotator angle (FITS card ``ROTPA``; None when absent: the orientation is
        unknown). Rubin cutouts are in the visit's orientation, not north-up.
    """
    scale = PIXEL_SCALE_ARCSEC["lsst"]
    geometry: dict[str, Any] = {
        "nx": None, "ny": None, "pixel_scale": scale, "fov": None, "rotpa": None,
    }  # fmt: skip
    for kind in ("science", "difference", "template"):
        data = (cutouts or {}).get(kind)
        if not data:
            continue
        try:
            cards = header_cards(data)
            nx, ny = int(cards["NAXIS1"]), int(cards["NAXIS2"])
        except (StampError, KeyError, ValueError):
            continue
        geometry.update(nx=nx, ny=ny, fov=[round(nx * scale, 2), round(ny * scale, 2)])
        try:
            rotpa = float(cards["ROTPA"])  # [deg]
        except (KeyError, ValueError):
            rotpa = float("nan")
        geometry["rotpa"] = rotpa if np.isfinite(rotpa) else None
        break
    return geometry


def _columns(points: Sequence[Detection]) -> dict[str, list[Any]]:
    # Columns, rounded: Rubin histories reach a thousand points and more per alert.
    return {
        "jd": [round(p.jd, 6) for p in points],  # [day] JD (UTC), to 0.1 s
        "flux": [None if p.flux is None else round(p.flux, 2) for p in points],  # [nJy]
        "flux_err": [None if p.flux_err is None else round(p.flux_err, 2) for p in points],
        "band": [p.band for p in points],
    }


def page_light_curve(curve: LightCurve | None) -> dict[str, Any] | None:
    """A light curve as the page's script reads it.

    Parameters
    ----------
    curve
        From :func:`transforms.light_curve.light_curve`, or None.

    Returns
    -------
    dict or None
        A ZTF curve: :meth:`~transforms.light_curve.LightCurve.to_json` (magnitudes). A Rubin
        curve: ``survey`` ``"lsst"``; ``detections`` and ``forced`` as columns ``jd`` [day],
        ``flux``, ``flux_err`` [nJy] and ``band``; ``upper_limits`` as columns ``jd``, ``flux``
        (the limiting flux [nJy]) and ``band``; ``first``, ``alert`` and ``last_non_detection``
        as full points; ``days_since_non_detection`` [day].
    """
    if curve is None:
        return None
    if curve.survey == "ztf":
        return curve.to_json()
    data = curve.to_json()
    limits = curve.upper_limits
    data.update(
        detections=_columns(curve.detections),
        forced=_columns(curve.forced),
        upper_limits={
            "jd": [round(u.jd, 6) for u in limits],
            "flux": [None if u.flux_limit is None else round(u.flux_limit, 2) for u in limits],
            "band": [u.band for u in limits],
        },
    )
    return data


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
        data URIs by kind (and, for a Rubin row, its ``cutouts`` as stored, for their geometry).
    curve
        Its light curve (:func:`transforms.light_curve.light_curve`), or None when the history
        could not be read (the page then says so).
    gal_b
        Its Galactic latitude [deg].

    Returns
    -------
    dict
        JSON-ready: identifiers, position, Galactic latitude [deg], photometry, probabilities,
        rule, PS1 neighbour, night, links, stamps, light curve (:func:`page_light_curve`) and the
        TNS fields. The band is the row's ``band`` (from ``fid`` for rows without one). A Rubin
        row (``survey`` ``"lsst"``) adds ``survey``, ``psfFlux``, ``psfFluxErr`` [nJy], ``snr``,
        ``reliability``, ``ssObjectId`` (a string) and ``stamp_geometry``
        (:func:`rubin_stamp_geometry`); its TNS fields carry empty ``instrument_value``,
        ``discovery_data_source_id`` and filter ids, the filter by name, and
        :data:`TNS_RUBIN_NOTE`.
    """
    rubin = row.get("survey") == "lsst"
    first = curve.first if curve is not None else None
    last = curve.last_non_detection if curve is not None else None
    sg, dist = row.get("sgscore1"), row.get("distpsnr1")
    has_ps1 = sg is not None and sg > -1 and dist is not None and dist >= 0
    band = row.get("band") or BAND_NAMES.get(row.get("fid"), "?")
    record = {
        "rank": row["rank"],
        "objectId": row["objectId"],
        "candid": str(row["candid"]),  # beyond 2**53: JavaScript numbers would round it
        "ra": row["ra"],
        "dec": row["dec"],
        "gal_b": gal_b,
        "jd": row["jd"],
        "night": night_of(row["jd"], row.get("survey")),
        "band": band,
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
        "links": {k: row[k] for k in LINK_COLUMNS if row.get(k)},
        "stamps": {k: row["stamps"][k] for k in STAMP_KINDS if k in (row.get("stamps") or {})},
        "light_curve": page_light_curve(curve),
        "days_since_non_detection": None if curve is None else curve.days_since_non_detection,
        "tns": _rubin_tns(row, first, last, band) if rubin else _ztf_tns(row, first, last),
    }
    if rubin:
        ss = row.get("ssObjectId")
        record.update(
            survey="lsst",
            psfFlux=_finite(row.get("psfFlux")),  # [nJy]
            psfFluxErr=_finite(row.get("psfFluxErr")),  # [nJy]
            snr=_finite(row.get("snr")),
            reliability=_finite(row.get("reliability")),
            ssObjectId=None if not ss else str(ss),  # beyond 2**53 too
            stamp_geometry=rubin_stamp_geometry(row.get("cutouts")),
        )
    return record


def _ztf_tns(
    row: Mapping[str, Any], first: Detection | None, last: UpperLimit | None
) -> dict[str, Any]:
    return {
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
    }


def _rubin_tns(
    row: Mapping[str, Any], first: Detection | None, last: UpperLimit | None, band: str
) -> dict[str, Any]:
    # The discovery magnitude [AB mag] is defined for a positive flux only (the row's magpsf is
    # that of |psfFlux|).
    flux = _finite(row.get("psfFlux"))
    row_mag = _finite(row.get("magpsf")) if flux is not None and flux > 0 else None
    return {
        "discovery_datetime": jd_to_utc(first.jd if first else row["jd"]),
        "discovery_mag": first.magpsf if first else row_mag,
        "discovery_mag_error": None if first is None else first.sigmapsf,
        "discovery_limit": None if first is None else first.diffmaglim,
        "discovery_filter": "",  # TNS's id of a Rubin filter: the user's to pick
        "discovery_filter_name": first.band if first else band,
        "non_detection": None
        if last is None
        else {
            "obsdate": jd_to_utc(last.jd),
            "limiting_flux": last.diffmaglim,
            "filter_value": "",
            "filter_name": last.band,
        },
        "instrument_value": "",
        "discovery_data_source_id": "",
        "position_error_arcsec": None,
        "exptime": "",
        "note": TNS_RUBIN_NOTE,
    }


def _script_json(value: Any) -> str:
    # Inside <script>, "</" would end the element early; "<\/" is the same JSON string.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _stamps_text(surveys: set[str]) -> str:
    """The header's words on stamp scale: ZTF's as before Rubin on a ZTF-only page."""
    if "lsst" not in surveys:
        return "63×63 pixels (1″/pixel)"
    ztf, lsst = PIXEL_SCALE_ARCSEC["ztf"], PIXEL_SCALE_ARCSEC["lsst"]
    parts = []
    if "ztf" in surveys:
        parts.append(
            f"ZTF {STAMP_SIZE}×{STAMP_SIZE} pixels at {ztf}″/pixel ({STAMP_SIZE * ztf:.1f}″ across)"
        )
    parts.append(
        f"Rubin N×N pixels at {lsst}″/pixel (N = 30 to 48, N×{lsst}″ across: each candidate's "
        "under its stamps), in the orientation of the visit (rotated by its rotator angle "
        "ROTPA, given under the stamps), <b>not north-up</b>"
    )
    return "; ".join(parts)


def _rubin_text(surveys: set[str]) -> str:
    """The header's words on Rubin candidates' light curves and TNS fields ('' without any)."""
    if "lsst" not in surveys:
        return ""
    return (
        " Rubin light curves are in flux [nJy] with 1σ error bars (difference fluxes are often "
        "negative): detections as dots, forced photometry as open squares. "
        + html.escape(TNS_RUBIN_NOTE)
    )


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
    surveys = {r.get("survey") or "ztf" for r in records}
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
        f"model {e(model)}. Stamps: {_stamps_text(surveys)}, grey scale clipped at the 1st and "
        "99.5th percentiles, NaN in red; click a stamp to zoom. Judgements are kept in this "
        "browser; export them as <code>labels.csv</code> for <code>stampflow train --labels"
        f"</code> or as a TNS AT report.{_rubin_text(surveys)}</p>"
        '<div id="app"></div>'
        f'<script id="sn-config" type="application/json">{_script_json(config)}</script>'
        f'<script id="sn-data" type="application/json">{_script_json(list(records))}</script>'
        f"<script>{script}</script></body></html>"
    )
