"""Human-facing outputs of a run: the SN candidates' ranking, CSV, lookup links and stamps.

Everything here is a pure function of rows the pipeline produced. The candidates page itself
(sorting, filtering, vetting, export) is :mod:`pipeline.sn_page`; it embeds each candidate's
science / reference / difference stamps as PNG data URIs drawn here, so the page is one file an
astronomer can mail around.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Columns of sn_candidates.csv, in order.
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


def lookup_links(object_id: str, ra: float, dec: float) -> dict[str, str]:
    """Where to look an object up: ALeRCE by name; TNS, SIMBAD and NED by position (5″)."""
    return {
        "alerce_url": f"https://alerce.online/object/{object_id}",
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


def candidate_rows(candidates: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rank SN candidates (highest ``p_SN`` first) and add lookup links.

    Parameters
    ----------
    candidates
        Probability rows extended with ``isdiffpos``, ``sgscore1``, ``distpsnr1``, ``ndethist``.

    Returns
    -------
    list of dict
        Rows with :data:`SN_CANDIDATE_COLUMNS`, plus any ``stamps`` the input carried.
    """
    ordered = sorted(candidates, key=lambda r: (-r["p_SN"], r["candid"]))
    out = []
    for rank, row in enumerate(ordered, 1):
        full = {**row, "rank": rank, **lookup_links(row["objectId"], row["ra"], row["dec"])}
        out.append(full)
    return out


def write_csv(rows: Sequence[Mapping[str, Any]], fileobj: io.TextIOBase) -> None:
    """Write SN candidates as CSV (stamps are not part of the CSV)."""
    writer = csv.DictWriter(fileobj, SN_CANDIDATE_COLUMNS, extrasaction="ignore")
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
