"""Human-facing outputs of a run: the SN candidates' ranking, CSV, lookup links and stamps.

Everything here is a pure function of rows the pipeline produced. The candidates page itself
(sorting, filtering, vetting, export) is :mod:`pipeline.sn_page`; it embeds each candidate's
science / reference / difference stamps as PNG data URIs drawn here, so the page is one file an
astronomer can mail around.

Rows are ZTF's or Rubin's (their ``survey``, ``"ztf"`` when absent). A run of ZTF candidates only
writes the CSV exactly as before Rubin (:data:`SN_CANDIDATE_COLUMNS`); as soon as one candidate
is Rubin's it gains the survey, the band and Rubin's own fields
(:data:`SN_CANDIDATE_COLUMNS_WITH_RUBIN`).
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from transforms.schema import ZTF_BANDS

__all__ = [
    "FINK_LSST_URL",
    "LINK_COLUMNS",
    "SN_CANDIDATE_COLUMNS",
    "SN_CANDIDATE_COLUMNS_WITH_RUBIN",
    "candidate_columns",
    "candidate_rows",
    "lookup_links",
    "stamp_png",
    "write_csv",
]

#: Columns of sn_candidates.csv, in order (a run of ZTF candidates only).
SN_CANDIDATE_COLUMNS = (
    "rank",
    "objectId",
    "candid",
    "jd",
    "ra",
    "dec",
    "fid",
    "magpsf",
    "p_SN",
    "predicted_class",
    "rule",
    "isdiffpos",
    "sgscore1",
    "distpsnr1",
    "ndethist",
    "night",
    "gal_b",  # [deg] Galactic latitude
    "days_since_non_detection",  # [day] first detection minus the last upper limit before it
    "alerce_url",
    "tns_url",
    "simbad_url",
    "ned_url",
)
#: Rubin's own row fields (:attr:`transforms.surveys.lsst.LSST.extra_fields`).
_RUBIN_COLUMNS = (
    "psfFlux",  # [nJy] PSF flux of the difference image (negative: fainter than the template)
    "psfFluxErr",  # [nJy]
    "snr",  # signal-to-noise of the detection in the difference image
    "reliability",  # Rubin's real/bogus score, 0 to 1
    "ssObjectId",  # the known solar-system object it is associated with, or empty
)
#: Columns of sn_candidates.csv when any candidate is Rubin's: ZTF's, with ``survey`` after
#: ``candid``, ``band`` after ``fid`` (Rubin rows have no ``fid``), Rubin's fields after ZTF's and
#: ``fink_url`` after ``alerce_url`` (Rubin rows have no ALeRCE link, ZTF rows no Fink link).
SN_CANDIDATE_COLUMNS_WITH_RUBIN = tuple(
    extra
    for column in SN_CANDIDATE_COLUMNS
    for extra in {
        "candid": ("candid", "survey"),  # "ztf" or "lsst"
        "fid": ("fid", "band"),  # filter name: g r i (ZTF), u g r i z y (Rubin)
        "ndethist": ("ndethist", *_RUBIN_COLUMNS),
        "alerce_url": ("alerce_url", "fink_url"),
    }.get(column, (column,))
)
#: Lookup links a row may carry, in the page's order (a row has only its survey's).
LINK_COLUMNS = ("alerce_url", "fink_url", "tns_url", "simbad_url", "ned_url")
#: Fink's Rubin object page, by diaObjectId.
FINK_LSST_URL = "https://lsst.fink-portal.org/{}"


def lookup_links(
    object_id: str, ra: float, dec: float, survey: str | None = "ztf"
) -> dict[str, str]:
    """Where to look an object up: TNS, SIMBAD and NED by position (5″), and its broker page.

    Parameters
    ----------
    object_id
        The row's ``objectId`` (ZTF name; Rubin diaObjectId, or ``ss<ssObjectId>``).
    ra, dec
        Position [deg].
    survey
        ``"ztf"`` (or None): ALeRCE by name, as before Rubin. ``"lsst"``: Fink's Rubin portal by
        diaObjectId (``fink_url``), none for a solar-system object (``ss...``), and no ALeRCE
        link (its Rubin explorer documents no object URL).

    Returns
    -------
    dict
        ``alerce_url, tns_url, simbad_url, ned_url`` (ZTF) or ``fink_url, tns_url, simbad_url,
        ned_url`` (Rubin; ``fink_url`` empty for a solar-system object).
    """
    by_position = {
        "tns_url": (
            f"https://www.wis-tns.org/search?ra={ra:.6f}&decl={dec:.6f}&radius=5&coords_unit=arcsec"
        ),
        "simbad_url": (
            f"https://simbad.cds.unistra.fr/simbad/sim-coo?Coord={ra:.6f}%20{dec:+.6f}"
            "&Radius=5&Radius.unit=arcsec"
        ),
        "ned_url": (
            f"https://ned.ipac.caltech.edu/conesearch?coordinates={ra:.6f}d%20{dec:+.6f}d"
            "&radius=0.0833"
        ),
    }
    if survey == "lsst":
        solar_system = str(object_id).startswith("ss")
        return {"fink_url": "" if solar_system else FINK_LSST_URL.format(object_id), **by_position}
    return {"alerce_url": f"https://alerce.online/object/{object_id}", **by_position}


def candidate_rows(candidates: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rank SN candidates (highest ``p_SN`` first) and add lookup links.

    Parameters
    ----------
    candidates
        Probability rows extended with their survey's fields (ZTF: ``isdiffpos``, ``sgscore1``,
        ``distpsnr1``, ``ndethist``; Rubin: ``psfFlux``, ``psfFluxErr``, ``snr``,
        ``reliability``, ``ssObjectId``).

    Returns
    -------
    list of dict
        Rows with :func:`candidate_columns`, plus any ``stamps`` the input carried; ``band``
        from ``fid`` for rows written before rows carried it.
    """
    ordered = sorted(candidates, key=lambda r: (-r["p_SN"], r["candid"]))
    out = []
    for rank, row in enumerate(ordered, 1):
        links = lookup_links(row["objectId"], row["ra"], row["dec"], row.get("survey"))
        full = {**row, "rank": rank, **links}
        if not full.get("band") and full.get("fid") in ZTF_BANDS:
            full["band"] = ZTF_BANDS[full["fid"]]
        out.append(full)
    return out


def candidate_columns(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The CSV's columns: :data:`SN_CANDIDATE_COLUMNS` when every row is ZTF's (no ``survey``
    counts as ZTF), :data:`SN_CANDIDATE_COLUMNS_WITH_RUBIN` when any is Rubin's."""
    if all((r.get("survey") or "ztf") == "ztf" for r in rows):
        return SN_CANDIDATE_COLUMNS
    return SN_CANDIDATE_COLUMNS_WITH_RUBIN


def write_csv(rows: Sequence[Mapping[str, Any]], fileobj: io.TextIOBase) -> None:
    """Write SN candidates as CSV (stamps are not part of the CSV; columns:
    :func:`candidate_columns`, a field a row lacks left empty)."""
    writer = csv.DictWriter(fileobj, candidate_columns(rows), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)


#: Stamp palette: indices 0-254 grey (black to white), 255 the red of NaN pixels.
_NAN_INDEX = 255
_PALETTE = [round(i * 255 / 254) for i in range(255) for _ in range(3)] + [220, 30, 30]


def stamp_png(image: np.ndarray, size: int | None = None) -> str:
    """A stamp as a PNG data URI: grey scale clipped at the 1st and 99.5th percentiles, NaN red.

    Drawn with Pillow directly (matplotlib took ~80 ms a stamp, most of a run's report time);
    row 0 is at the bottom, as astronomers display FITS images. One palette byte per pixel (254
    greys and red) and, with ``size`` None, one pixel per stamp pixel: the SN page scales stamps
    up in the browser, and 500 candidates stay a page of a few megabytes.
    """
    from PIL import Image

    img = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(img)
    lo, hi = np.percentile(img[finite], [1, 99.5]) if finite.any() else (0.0, 1.0)
    scaled = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    index = np.where(finite, np.rint(scaled * 254.0), _NAN_INDEX).astype(np.uint8)
    picture = Image.fromarray(index[::-1].copy(), "P")
    picture.putpalette(_PALETTE)
    if size is not None:
        picture = picture.resize((size, size), Image.NEAREST)
    buf = io.BytesIO()
    picture.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
