"""Human-facing outputs of a run: SN candidates (CSV + self-contained HTML) and the sky map.

Everything here is a pure function of rows the pipeline produced; the HTML embeds each
candidate's science / reference / difference stamps as PNG data URIs, so the page is one file
an astronomer can mail around, with links to look each object up by name or coordinates.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from transforms.schema import CLASS_NAMES, PROBABILITY_COLUMNS, STAMP_KINDS

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
    "alerce_url",
    "tns_url",
    "simbad_url",
    "ned_url",
)
_FILTERS = {1: "g", 2: "r", 3: "i"}


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


def stamp_png(image: np.ndarray, size: int = 126) -> str:
    """A stamp as a PNG data URI: grey scale clipped at the 1st and 99.5th percentiles, NaN red.

    Drawn with Pillow directly (matplotlib took ~80 ms a stamp, most of a run's report time);
    row 0 is at the bottom, as astronomers display FITS images.
    """
    from PIL import Image

    img = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(img)
    lo, hi = np.percentile(img[finite], [1, 99.5]) if finite.any() else (0.0, 1.0)
    scaled = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    grey = np.where(finite, scaled * 255.0, 0.0).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    rgb[~finite] = (220, 30, 30)
    picture = Image.fromarray(rgb[::-1].copy(), "RGB").resize((size, size), Image.NEAREST)
    buf = io.BytesIO()
    picture.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse}
td,th{border-bottom:1px solid #ddd;padding:6px 8px;vertical-align:middle}
th{background:#f4f4f4;text-align:left}.num{text-align:right;font-variant-numeric:tabular-nums}
.stamps{white-space:nowrap}
.stamps img{width:96px;height:96px;margin-right:4px;image-rendering:pixelated}
.bar{display:inline-block;height:10px;background:#2a7ae2;margin-right:6px}.small{color:#666;font-size:90%}
.rule{color:#b35;font-size:90%}
"""


def render_html(rows: Sequence[Mapping[str, Any]], title: str, model: str) -> str:
    """A self-contained HTML page of SN candidates with stamps, metadata and lookup links.

    Parameters
    ----------
    rows
        Output of :func:`candidate_rows`; each may carry ``stamps`` ``{kind: 2-D array}``.
    title
        Page heading (e.g. the night).
    model
        Model name and version shown under the heading.

    Returns
    -------
    str
        The HTML document.
    """
    e = html.escape
    head = (
        "<tr><th>#</th><th>object</th><th>science · reference · difference</th>"
        "<th>P(SN)</th><th>class</th><th>mag</th><th>position [deg]</th><th>PS1 nearest</th>"
        "<th>look up</th></tr>"
    )
    body = []
    for r in rows:
        stamps = r.get("stamps") or {}
        imgs = "".join(
            f'<img alt="{k}" title="{k}" src="{stamp_png(stamps[k])}">'
            for k in STAMP_KINDS
            if k in stamps
        )
        probs = " ".join(
            f"{c}={r[p]:.2f}" for c, p in zip(CLASS_NAMES, PROBABILITY_COLUMNS, strict=True)
        )
        band = _FILTERS.get(r.get("fid"), "?")
        rule = f'<div class="rule">rule: {e(str(r["rule"]))}</div>' if r.get("rule") else ""
        links = " · ".join(
            f'<a href="{e(r[k])}" target="_blank" rel="noopener">{name}</a>'
            for k, name in (
                ("alerce_url", "ALeRCE"),
                ("tns_url", "TNS"),
                ("simbad_url", "SIMBAD"),
                ("ned_url", "NED"),
            )
        )
        sg = r.get("sgscore1")
        dist = r.get("distpsnr1")
        ps1 = "none" if sg is None or sg < -1 else f"sg={sg:.2f} at {dist:.1f}″"
        body.append(
            f"<tr><td class=num>{r['rank']}</td>"
            f"<td><b>{e(r['objectId'])}</b><div class=small>candid {r['candid']}</div></td>"
            f'<td class="stamps">{imgs}</td>'
            f'<td class=num><span class="bar" style="width:{60 * r["p_SN"]:.0f}px"></span>'
            f"{r['p_SN']:.3f}<div class=small>{probs}</div></td>"
            f"<td>{e(r['predicted_class'])}{rule}</td>"
            f"<td class=num>{r['magpsf']:.2f} ({band})</td>"
            f"<td class=num>{r['ra']:.5f}<br>{r['dec']:+.5f}<div class=small>JD {r['jd']:.5f}"
            f"</div></td><td>{e(ps1)}</td><td>{links}</td></tr>"
        )
    empty = "<p>No SN candidates in this run.</p>" if not rows else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{e(title)}</h1><p class=small>Ranked by the SN probability after ALeRCE's rules; "
        f"model {e(model)}. Stamps: 63×63 pixels (1″/pixel), grey scale clipped at the 1st and "
        f"99.5th percentiles, NaN in red.</p>{empty}"
        f"<table>{head}{''.join(body)}</table></body></html>"
    )
