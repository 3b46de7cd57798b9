"""``stampflow label``: a ``labels.csv`` for real alerts, by cross-match with the user's catalogues.

ALeRCE built its labelled set by cross-matching alerts with catalogues (quasars for AGN,
variable-star catalogues for VS, TNS for SNe), known solar-system objects for asteroids, and
visual inspection for bogus (SPEC §11). This command does the same with catalogues **the user
supplies**; it never labels an alert from a classifier's output (ALeRCE's included, which must not
be used as labels: a model trained on them can only learn to copy that model).

1. Read the alerts (files, directories, archives, globs) with the pipeline's readers; unreadable
   inputs are counted as dead letters. Duplicated ``candid``\\ s are kept once.
2. ``--select first`` (the default; what the classifier sees) keeps each object's first detection
   as ``stampflow run`` does; ``--select all`` labels every alert.
3. Read each catalogue (CSV, ECSV, FITS or VOTable, with astropy): positions from ``ra``/``dec``
   (or ``RA``/``DEC``, ``raj2000``/``dej2000``, ``ra_deg``/``dec_deg``, ...; degrees, a column
   unit, or sexagesimal strings as TNS writes them) and a class from ``FILE:CLASS`` (one class for
   every row), ``--class-column`` or a ``class``/``type`` column (aliases such as ``QSO`` → AGN and
   TNS types ``SN Ia``, ``SN II``, ``SLSN-I`` → SN are understood).
4. Cross-match the alerts' ``candidate.ra``/``dec`` with each catalogue in one vectorised
   :meth:`astropy.coordinates.SkyCoord.match_to_catalog_sky` call: the nearest row within
   ``--radius`` arcsec gives that catalogue's class. ``--asteroids`` (on by default) adds the rule
   ``0 ≤ ssdistnr ≤ --ss-radius`` → asteroid (a known solar-system object at the position).
5. An alert matched with one class (by one or several sources) is labelled; one matched with two
   different classes is a conflict, reported and left unlabelled (never guessed).
6. Write ``labels.csv`` (``candid, objectId, class, source, sep_arcsec``, readable by
   ``stampflow train``) and the report (printed; ``--report`` writes it as JSON).

    stampflow label --alerts ztf_public_20240611.tar.gz --catalog milliquas.fits:AGN \\
        --catalog tns.csv --catalog vsx.csv:VS --out labels.csv --radius 1 --report label.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from transforms.schema import CLASS_NAMES, STAGE_DECODE, STAGE_READ

__all__ = [
    "ASTEROID_SOURCE",
    "CLASS_ALIASES",
    "CLASS_COLUMNS",
    "DEC_COLUMNS",
    "LABEL_COLUMNS",
    "RA_COLUMNS",
    "AlertPositions",
    "Catalog",
    "LabelError",
    "Resolution",
    "add_arguments",
    "crossmatch",
    "find_column",
    "format_report",
    "known_asteroids",
    "label",
    "normalize_class",
    "parse_catalog_spec",
    "read_alert_positions",
    "read_catalog",
    "register",
    "resolve_labels",
    "select_first_detections",
    "write_labels",
]

#: Columns of the written ``labels.csv`` (``stampflow train`` reads the first three).
LABEL_COLUMNS: tuple[str, ...] = ("candid", "objectId", "class", "source", "sep_arcsec")
#: ``source`` of labels given by the known-asteroid rule.
ASTEROID_SOURCE = "ssdistnr"
#: Accepted position column names (matched case-insensitively), in order of preference [deg].
RA_COLUMNS: tuple[str, ...] = ("ra", "raj2000", "_raj2000", "ra_deg", "radeg", "ra_icrs")
DEC_COLUMNS: tuple[str, ...] = (
    "dec",
    "dej2000",
    "decj2000",
    "_dej2000",
    "dec_deg",
    "decdeg",
    "de_icrs",
)
#: Class columns looked for when neither ``FILE:CLASS`` nor ``--class-column`` is given.
CLASS_COLUMNS: tuple[str, ...] = (
    "class",
    "type",
    "obj_type",
    "obj. type",
    "objtype",
    "otype",
    "main_type",
    "classification",
    "label",
)
#: Class names other catalogues use, lower-cased and without spaces, dashes or underscores
#: (SN types are recognised by prefix, see :func:`normalize_class`). Variable-star types are too
#: many to list: give a variable-star catalogue as ``FILE:VS``.
CLASS_ALIASES: dict[str, str] = {
    **{c.lower(): c for c in CLASS_NAMES},
    "qso": "AGN",
    "quasar": "AGN",
    "blazar": "AGN",
    "bla": "AGN",
    "bllac": "AGN",
    "bll": "AGN",
    "seyfert": "AGN",
    "sy1": "AGN",
    "sy2": "AGN",
    "syg": "AGN",
    "supernova": "SN",
    "variable": "VS",
    "variablestar": "VS",
    "var": "VS",
    "v*": "VS",
    "sso": "asteroid",
    "minorplanet": "asteroid",
    "solarsystemobject": "asteroid",
    "artifact": "bogus",
    "artefact": "bogus",
}
_SN_PREFIX = re.compile(r"^(sl)?sn(i|$)")  # SN, SN Ia, SN IIn, SN Ic-BL, SLSN-I (not SNR)
_SEPARATORS = re.compile(r"[\s\-_]+")
_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".vot": "votable", ".xml": "votable"}
_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")


class LabelError(ValueError):
    """A user's mistake (missing or malformed catalogue, unknown class, unwritable output)."""


# --- Catalogues -----------------------------------------------------------------------------------
def normalize_class(value: Any) -> str | None:
    """One of :data:`~transforms.schema.CLASS_NAMES` for a catalogue's class value, or None.

    Parameters
    ----------
    value
        A class name as a catalogue writes it: ``AGN``, ``qso``, ``SN Ia``, ``SLSN-I``, ``VS``, ...

    Returns
    -------
    str or None
        The stampflow class, or None when the value is not recognised (``SNR``, ``TDE``, ``CV``).

    Examples
    --------
    >>> [normalize_class(v) for v in ("QSO", "SN Ia-91T-like", "SLSN-II", "SNR", " vs ", "")]
    ['AGN', 'SN', 'SN', None, 'VS', None]
    """
    if value is None or np.ma.is_masked(value):
        return None
    key = _SEPARATORS.sub("", str(value).strip().lower())
    if key in CLASS_ALIASES:
        return CLASS_ALIASES[key]
    return "SN" if _SN_PREFIX.match(key) else None


def parse_catalog_spec(spec: str) -> tuple[str, str | None]:
    """Split ``FILE[:CLASS]`` into the file and the class given to all its rows.

    Parameters
    ----------
    spec
        A catalogue path, optionally followed by ``:CLASS`` (a class name or alias).

    Returns
    -------
    (path, class or None)

    Raises
    ------
    LabelError
        When the file does not exist or the suffix is not a class.
    """
    if os.path.isfile(spec):
        return spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and os.path.isfile(head):
        cls = normalize_class(tail)
        if cls is None:
            raise LabelError(f"{spec}: unknown class {tail!r} (classes: {', '.join(CLASS_NAMES)})")
        return head, cls
    raise LabelError(f"no such catalogue file: {head if sep and tail else spec}")


def find_column(names: Iterable[str], candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` present in ``names``, compared case-insensitively.

    Parameters
    ----------
    names
        A table's column names.
    candidates
        Lower-case names in order of preference.

    Returns
    -------
    str or None
        The column's name as the table spells it.

    Examples
    --------
    >>> find_column(["ID", "RAJ2000", "DEJ2000"], ("ra", "raj2000"))
    'RAJ2000'
    """
    by_lower: dict[str, str] = {}
    for n in names:
        by_lower.setdefault(n.strip().lower(), n)
    return next((by_lower[c] for c in candidates if c in by_lower), None)


def _table_format(path: str) -> str | None:
    lower = path.lower()
    if lower.endswith(_FITS_SUFFIXES):
        return "fits"
    return _FORMATS.get(Path(lower).suffix)


def _positions(table: Any, ra_name: str, dec_name: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec [deg] (NaN where absent) from numeric, unit-carrying or sexagesimal columns."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    ra_col, dec_col = table[ra_name], table[dec_name]
    if ra_col.dtype.kind in "iuf" and dec_col.dtype.kind in "iuf":
        out = []
        for col in (ra_col, dec_col):
            values = np.ma.filled(np.ma.asarray(col, dtype=np.float64), np.nan)
            if col.unit is not None:
                try:
                    values = (values * col.unit).to_value(u.deg)
                except u.UnitConversionError as e:
                    raise LabelError(f"{path}: column {col.name} has unit {col.unit}") from e
            out.append(np.asarray(values, np.float64))
        return out[0], out[1]
    # Text: decimal degrees, or sexagesimal "hh:mm:ss.s" / "±dd:mm:ss" (TNS, SIMBAD exports).
    ra_text = [str(v).strip() for v in np.ma.filled(np.ma.asarray(ra_col).astype(str), "")]
    dec_text = [str(v).strip() for v in np.ma.filled(np.ma.asarray(dec_col).astype(str), "")]
    ra = np.full(len(ra_text), np.nan)
    dec = np.full(len(dec_text), np.nan)
    present = np.array([bool(r and d) for r, d in zip(ra_text, dec_text, strict=True)], bool)
    if not present.any():
        return ra, dec
    r = [t for t, p in zip(ra_text, present, strict=True) if p]
    d = [t for t, p in zip(dec_text, present, strict=True) if p]
    sexagesimal = any(":" in t or " " in t for t in r)
    try:
        if sexagesimal:
            c = SkyCoord(r, d, unit=(u.hourangle, u.deg))
        else:
            c = SkyCoord(np.array(r, float), np.array(d, float), unit=u.deg)
    except ValueError as e:
        raise LabelError(
            f"{path}: cannot read positions from {ra_name}/{dec_name} "
            f"(degrees or hh:mm:ss ±dd:mm:ss): {e}"
        ) from e
    ra[present], dec[present] = c.ra.deg, c.dec.deg
    return ra, dec


@dataclass(frozen=True)
class Catalog:
    """One catalogue's usable rows.

    Attributes
    ----------
    source
        Its name in ``labels.csv`` and the report (the file name).
    path
        The file read.
    ra, dec
        ``float64 [M]`` ICRS/J2000 positions of the usable rows [deg].
    classes
        ``[M]`` stampflow class of each row.
    rows
        Rows in the file.
    fixed_class
        The class given as ``FILE:CLASS``, or None.
    class_column
        The column the classes came from, or None.
    skipped
        Rows not used: ``{"no_position": n, "unknown_class": {value: n}}``.
    """

    source: str
    path: str
    ra: np.ndarray
    dec: np.ndarray
    classes: np.ndarray
    rows: int
    fixed_class: str | None = None
    class_column: str | None = None
    skipped: dict[str, Any] = field(default_factory=dict)


def read_catalog(spec: str, class_column: str | None = None, skip_unknown: bool = False) -> Catalog:
    """Read a catalogue file (CSV, ECSV, FITS, VOTable) with astropy.

    Parameters
    ----------
    spec
        ``FILE`` or ``FILE:CLASS`` (see :func:`parse_catalog_spec`).
    class_column
        Column holding the class (when no ``:CLASS`` is given); default: the first of
        :data:`CLASS_COLUMNS` present.
    skip_unknown
        Drop rows whose class is not recognised (counted per value) instead of refusing the file.

    Returns
    -------
    Catalog
        Rows with a position and a class.

    Raises
    ------
    LabelError
        Missing or unreadable file, no ra/dec or class column, unknown class values.
    """
    from astropy.table import Table

    path, fixed = parse_catalog_spec(spec)
    try:
        table = Table.read(path, format=_table_format(path))
    except Exception as e:  # astropy raises many types for a file it cannot parse
        raise LabelError(f"{path}: cannot read as a CSV/FITS/VOTable table: {e}") from e
    names = list(table.colnames)
    ra_name, dec_name = find_column(names, RA_COLUMNS), find_column(names, DEC_COLUMNS)
    if ra_name is None or dec_name is None:
        raise LabelError(
            f"{path}: no ra/dec columns (looked for {'/'.join(RA_COLUMNS)} and "
            f"{'/'.join(DEC_COLUMNS)}; it has {', '.join(names) or 'none'})"
        )
    ra, dec = _positions(table, ra_name, dec_name, path)
    column = None
    if fixed is not None:
        classes = np.full(len(table), fixed, dtype=object)
        known = np.ones(len(table), bool)
        unknown: dict[str, int] = {}
    else:
        column = find_column(names, (class_column.lower(),)) if class_column else None
        if class_column and column is None:
            raise LabelError(f"{path}: no column {class_column!r} (it has {', '.join(names)})")
        column = column or find_column(names, CLASS_COLUMNS)
        if column is None:
            raise LabelError(
                f"{path}: no class column (looked for {', '.join(CLASS_COLUMNS)}); give the file "
                f"as {path}:CLASS or name the column with --class-column"
            )
        raw = [None if np.ma.is_masked(v) else v for v in table[column]]
        classes = np.array([normalize_class(v) for v in raw], dtype=object)
        known = np.array([c is not None for c in classes], bool)
        unknown = {}
        for v, ok in zip(raw, known, strict=True):
            if not ok:
                unknown[str(v)] = unknown.get(str(v), 0) + 1
        if unknown and not skip_unknown:
            shown = ", ".join(repr(v) for v in sorted(unknown)[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise LabelError(
                f"{path}: unknown class value(s) {shown}{more} in column {column!r} "
                f"(classes: {', '.join(CLASS_NAMES)}); fix the file, give it as {path}:CLASS, "
                "or pass --skip-unknown-classes"
            )
    has_position = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
    keep = has_position & known
    return Catalog(
        source=os.path.basename(path),
        path=path,
        ra=ra[keep],
        dec=dec[keep],
        classes=classes[keep],
        rows=len(table),
        fixed_class=fixed,
        class_column=column,
        skipped={"no_position": int((~has_position).sum()), "unknown_class": unknown},
    )


# --- Cross-match and rules ------------------------------------------------------------------------
def crossmatch(
    ra: np.ndarray,
    dec: np.ndarray,
    cat_ra: np.ndarray,
    cat_dec: np.ndarray,
    radius_arcsec: float,
    max_pairs: int = 4_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest catalogue row within a radius for every alert, vectorised.

    The result is that of ``SkyCoord.match_to_catalog_sky`` followed by a radius cut, which needs
    SciPy's k-d tree (not a stampflow dependency). Instead the catalogue is sorted by declination,
    each alert's candidates are the rows within ``±radius`` in Dec (``searchsorted``; every row
    within the radius is among them, since ``|ΔDec| ≤`` separation) and their exact separations
    come from :func:`astropy.coordinates.angular_separation` (Vincenty), over all candidate pairs
    at once, ``max_pairs`` at a time. For a catalogue of M rows spread over the sky an alert has
    about ``M × 4.8e-6 × radius [″]`` candidates (5 for a million-row quasar catalogue at 1″).

    Parameters
    ----------
    ra, dec
        Alert positions ``[N]`` [deg].
    cat_ra, cat_dec
        Catalogue positions ``[M]`` [deg], finite.
    radius_arcsec
        Match radius [arcsec]; a separation equal to it matches.
    max_pairs
        Candidate pairs evaluated per chunk (bounds memory).

    Returns
    -------
    (index, sep_arcsec)
        ``int64 [N]`` row of the nearest catalogue entry (the lowest row among equally near ones),
        −1 when none is within the radius, and ``float64 [N]`` its separation [arcsec] (NaN when
        unmatched).

    Examples
    --------
    >>> idx, sep = crossmatch(np.array([10.0, 50.0]), np.array([20.0, 0.0]),
    ...                       np.array([50.0, 10.0]), np.array([0.0, 20.0 + 0.5 / 3600]), 1.0)
    >>> idx.tolist(), np.round(sep, 3).tolist()
    ([1, 0], [0.5, 0.0])
    """
    from astropy.coordinates import angular_separation

    ra = np.radians(np.asarray(ra, np.float64))
    dec = np.radians(np.asarray(dec, np.float64))
    n = len(ra)
    index = np.full(n, -1, np.int64)
    sep = np.full(n, np.nan)
    if n == 0 or len(cat_ra) == 0:
        return index, sep
    order = np.argsort(np.asarray(cat_dec, np.float64), kind="stable")
    c_ra = np.radians(np.asarray(cat_ra, np.float64)[order])
    c_dec = np.radians(np.asarray(cat_dec, np.float64)[order])
    to_arcsec = 180 / np.pi * 3600
    band = radius_arcsec / to_arcsec * (1 + 1e-9) + 1e-15  # a hair wider: rounding at the edge
    lo = np.searchsorted(c_dec, dec - band, "left")  # NaN positions get an empty range
    hi = np.searchsorted(c_dec, dec + band, "right")
    counts = np.maximum(hi - lo, 0)
    total = np.cumsum(counts)
    start = 0
    while start < n:
        done = total[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(total, done + max_pairs, "right")))
        c = counts[start:end]
        if c.sum():
            alert = np.repeat(np.arange(start, end), c)
            offset = np.arange(len(alert)) - np.repeat(np.cumsum(c) - c, c)
            row = lo[alert] + offset  # in declination order
            d = angular_separation(ra[alert], dec[alert], c_ra[row], c_dec[row]) * to_arcsec
            hit = d <= radius_arcsec
            alert, row, d = alert[hit], order[row[hit]], d[hit]
            best = np.lexsort((row, d, alert))  # per alert: nearest, then lowest row
            alert, row, d = alert[best], row[best], d[best]
            first = np.unique(alert, return_index=True)[1]
            index[alert[first]] = row[first]
            sep[alert[first]] = d[first]
        start = end
    return index, sep


def known_asteroids(ssdistnr: np.ndarray, ss_radius_arcsec: float) -> np.ndarray:
    """ZTF's known solar-system object rule: ``0 ≤ ssdistnr ≤ ss_radius``.

    Parameters
    ----------
    ssdistnr
        ``float [N]`` distance to the nearest known solar-system object [arcsec]; −999 when none,
        NaN when the field is null.
    ss_radius_arcsec
        Largest distance accepted [arcsec].

    Returns
    -------
    np.ndarray
        ``bool [N]``.

    Examples
    --------
    >>> known_asteroids(np.array([-999.0, 0.0, 5.0, 6.0, np.nan]), 5.0).tolist()
    [False, True, True, False, False]
    """
    d = np.asarray(ssdistnr, np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(d) & (d >= 0) & (d <= ss_radius_arcsec)


@dataclass(frozen=True)
class Resolution:
    """Per-alert outcome of combining every source's matches.

    Attributes
    ----------
    classes
        ``[N]`` the label, ``""`` when unmatched or in conflict.
    sources
        ``[N]`` the agreeing sources joined by ``+`` (``""`` when unlabelled).
    sep_arcsec
        ``[N]`` the nearest agreeing match's separation [arcsec] (NaN when unlabelled).
    conflicts
        ``{alert index: {source: class}}`` for alerts matched with two or more classes.
    """

    classes: np.ndarray
    sources: np.ndarray
    sep_arcsec: np.ndarray
    conflicts: dict[int, dict[str, str]]


def resolve_labels(n: int, votes: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> Resolution:
    """Combine the matches of every source into one label per alert; conflicts stay unlabelled.

    Parameters
    ----------
    n
        Number of alerts.
    votes
        ``(source, classes [N], sep_arcsec [N])`` per source, with ``""`` (or None) in
        ``classes`` where that source did not match.

    Returns
    -------
    Resolution

    Examples
    --------
    >>> nan = np.nan
    >>> q = ("q", np.array(["AGN", "", "AGN"], object), np.array([0.2, nan, 0.1]))
    >>> t = ("t", np.array(["AGN", "", "SN"], object), np.array([0.1, nan, 0.3]))
    >>> r = resolve_labels(3, [q, t])
    >>> r.classes.tolist(), r.sources.tolist(), r.conflicts
    (['AGN', '', ''], ['q+t', '', ''], {2: {'q': 'AGN', 't': 'SN'}})
    """
    classes = np.full(n, "", dtype=object)
    sources = np.full(n, "", dtype=object)
    seps = np.full(n, np.nan)
    conflicts: dict[int, dict[str, str]] = {}
    for i in range(n):
        hits = [(s, c[i], float(d[i])) for s, c, d in votes if c[i]]
        if not hits:
            continue
        distinct = {c for _, c, _ in hits}
        if len(distinct) > 1:
            conflicts[i] = {s: c for s, c, _ in hits}
            continue
        classes[i] = hits[0][1]
        sources[i] = "+".join(s for s, _, _ in hits)
        seps[i] = min(d for _, _, d in hits)
    return Resolution(classes, sources, seps, conflicts)


# --- Alerts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlertPositions:
    """What labelling needs of each alert (no stamps, no history kept).

    Attributes
    ----------
    candid, object_id
        ``int64 [N]`` and ``[N]`` identifiers.
    ra, dec
        ``float64 [N]`` ``candidate.ra``/``dec`` [deg].
    jd
        ``float64 [N]`` Julian date of the detection [day].
    ssdistnr
        ``float64 [N]`` distance to the nearest known solar-system object [arcsec] (NaN if null).
    no_earlier_detection
        ``bool [N]``: the alert's ``prv_candidates`` hold no earlier detection.
    """

    candid: np.ndarray
    object_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    jd: np.ndarray
    ssdistnr: np.ndarray
    no_earlier_detection: np.ndarray

    def take(self, idx: np.ndarray) -> AlertPositions:
        """The alerts at ``idx``."""
        return AlertPositions(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def read_alert_positions(inputs: Sequence[str]) -> tuple[AlertPositions, dict[str, Any]]:
    """Read and decode every alert under ``inputs``; keep one row per ``candid``.

    Parameters
    ----------
    inputs
        Alert files, directories, archives or globs (local or any Beam filesystem).

    Returns
    -------
    (AlertPositions, counts)
        Alerts in input order and ``{"alerts_read", "duplicates", "dead_letters": [{stage,
        reason, source}]}``.

    Raises
    ------
    LabelError
        When an input matches no file.
    """
    from transforms.rules import history_skip_reason
    from transforms.sources import NoInputError, decode_paths

    rows: list[tuple] = []
    seen: set[int] = set()
    dead: list[dict[str, str]] = []
    read = duplicates = 0
    try:
        for item in decode_paths(inputs):
            if item.read_error is not None:
                dead.append(
                    {"stage": STAGE_READ, "reason": item.read_error.reason, "source": item.source}
                )
                continue
            if item.decode_error is not None:
                dead.append(
                    {
                        "stage": STAGE_DECODE,
                        "reason": item.decode_error.reason,
                        "source": item.source,
                    }
                )
            for alert in item.alerts:
                read += 1
                if alert.candid in seen:
                    duplicates += 1
                    continue
                seen.add(alert.candid)
                c = alert.candidate
                ss = c.get("ssdistnr")
                rows.append(
                    (
                        alert.candid,
                        alert.object_id,
                        c["ra"],
                        c["dec"],
                        c["jd"],
                        np.nan if ss is None else ss,
                        history_skip_reason(c, alert.prv_candidates) is None,
                    )
                )
    except NoInputError as e:
        raise LabelError(e.reason) from e
    cols = list(zip(*rows, strict=True)) if rows else [()] * 7
    positions = AlertPositions(
        np.array(cols[0], np.int64),
        np.array(cols[1], dtype=object),
        np.array(cols[2], np.float64),
        np.array(cols[3], np.float64),
        np.array(cols[4], np.float64),
        np.array(cols[5], np.float64),
        np.array(cols[6], bool),
    )
    return positions, {"alerts_read": read, "duplicates": duplicates, "dead_letters": dead}


def select_first_detections(alerts: AlertPositions) -> np.ndarray:
    """``stampflow run``'s first-detection rule, as a mask.

    An alert is kept when its history holds no earlier detection and it is its object's earliest
    alert (by ``jd``, then ``candid``) in the input.

    Parameters
    ----------
    alerts
        The alerts read.

    Returns
    -------
    np.ndarray
        ``bool [N]``.
    """
    from transforms.rules import earliest_key

    earliest: dict[str, tuple[tuple[float, int], int]] = {}
    for i, (obj, jd, candid) in enumerate(
        zip(alerts.object_id, alerts.jd, alerts.candid, strict=True)
    ):
        key = earliest_key(float(jd), int(candid))
        if obj not in earliest or key < earliest[obj][0]:
            earliest[obj] = (key, i)
    keep = np.zeros(len(alerts.candid), bool)
    keep[[i for _, i in earliest.values()]] = True
    return keep & alerts.no_earlier_detection


# --- The job --------------------------------------------------------------------------------------
def _check_writable(path: str, what: str) -> None:
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise LabelError(f"{what} {path} is a directory")
    if not parent.is_dir():
        raise LabelError(f"cannot write {what} {path}: no directory {parent}")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise LabelError(f"cannot write {what} {path}: permission denied")


def write_labels(path: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write ``labels.csv`` with :data:`LABEL_COLUMNS`.

    Parameters
    ----------
    path
        File to (over)write.
    rows
        Dicts with the label columns.

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    LabelError
        When the file cannot be written.
    """
    n = 0
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                n += 1
    except OSError as e:
        raise LabelError(f"cannot write {path}: {e.strerror or e}") from e
    return n


def label(
    alerts: Sequence[str],
    catalogs: Sequence[str],
    out: str,
    radius_arcsec: float = 1.0,
    asteroids: bool = True,
    ss_radius_arcsec: float = 5.0,
    select: str = "first",
    class_column: str | None = None,
    skip_unknown: bool = False,
    report_path: str | None = None,
) -> dict[str, Any]:
    """The whole ``stampflow label`` job: read, select, cross-match, resolve, write.

    Parameters
    ----------
    alerts
        Alert inputs.
    catalogs
        ``FILE[:CLASS]`` catalogue specs.
    out
        ``labels.csv`` to write.
    radius_arcsec
        Catalogue match radius [arcsec].
    asteroids
        Apply the known-asteroid rule.
    ss_radius_arcsec
        Largest ``ssdistnr`` of the rule [arcsec].
    select
        ``first`` (first detections) or ``all``.
    class_column
        Class column of catalogues given without ``:CLASS``.
    skip_unknown
        Drop catalogue rows with unrecognised classes instead of refusing the file.
    report_path
        Where to write the report as JSON (None: not written).

    Returns
    -------
    dict
        The report.

    Raises
    ------
    LabelError
        On any user mistake, before the alerts are read when it can be seen then.
    """
    if not catalogs and not asteroids:
        raise LabelError("nothing to label with: give --catalog FILE[:CLASS] or --asteroids")
    if not radius_arcsec > 0:
        raise LabelError(f"--radius must be positive, not {radius_arcsec}")
    if not ss_radius_arcsec >= 0:
        raise LabelError(f"--ss-radius must be non-negative, not {ss_radius_arcsec}")
    if select not in ("first", "all"):
        raise LabelError(f"--select must be first or all, not {select!r}")
    _check_writable(out, "labels")
    if report_path:
        _check_writable(report_path, "report")
    cats = [read_catalog(spec, class_column, skip_unknown) for spec in catalogs]
    names = [c.source for c in cats]
    if len(set(names)) < len(names):  # same file name in two folders: use the paths
        cats = [replace(c, source=c.path) for c in cats]

    everything, counts = read_alert_positions(alerts)
    keep = (
        select_first_detections(everything)
        if select == "first"
        else np.ones(len(everything.candid), bool)
    )
    pos = everything.take(np.flatnonzero(keep))
    n = len(pos.candid)

    votes: list[tuple[str, np.ndarray, np.ndarray]] = []
    matched: dict[str, int] = {}
    for cat in cats:
        index, sep = crossmatch(pos.ra, pos.dec, cat.ra, cat.dec, radius_arcsec)
        classes = np.full(n, "", dtype=object)
        classes[index >= 0] = cat.classes[index[index >= 0]]
        votes.append((cat.source, classes, sep))
        matched[cat.source] = int((index >= 0).sum())
    if asteroids:
        hit = known_asteroids(pos.ssdistnr, ss_radius_arcsec)
        votes.append(
            (
                ASTEROID_SOURCE,
                np.where(hit, "asteroid", "").astype(object),
                np.where(hit, pos.ssdistnr, np.nan),
            )
        )
        matched[ASTEROID_SOURCE] = int(hit.sum())
    res = resolve_labels(n, votes)

    labelled = np.flatnonzero(res.classes != "")
    rows = (
        {
            "candid": int(pos.candid[i]),
            "objectId": pos.object_id[i],
            "class": res.classes[i],
            "source": res.sources[i],
            "sep_arcsec": f"{res.sep_arcsec[i]:.3f}",
        }
        for i in labelled
    )
    write_labels(out, rows)
    per_class = {c: int((res.classes == c).sum()) for c in CLASS_NAMES}
    dead_reasons: dict[str, int] = {}
    for d in counts["dead_letters"]:
        key = f"{d['stage']}: {d['reason'].split(':', 1)[0]}"
        dead_reasons[key] = dead_reasons.get(key, 0) + 1
    report = {
        "alerts_read": counts["alerts_read"],
        "duplicates": counts["duplicates"],
        "select": select,
        "skipped_not_first_detection": int((~keep).sum()),
        "considered": n,
        "labelled": len(labelled),
        "labelled_per_class": per_class,
        "conflicts": len(res.conflicts),
        "unmatched": n - len(labelled) - len(res.conflicts),
        "radius_arcsec": radius_arcsec,
        "asteroid_rule": (
            {"ss_radius_arcsec": ss_radius_arcsec, "matched": matched[ASTEROID_SOURCE]}
            if asteroids
            else None
        ),
        "catalogs": [
            {
                "source": c.source,
                "path": c.path,
                "class": c.fixed_class,
                "class_column": c.class_column,
                "rows": c.rows,
                "rows_used": len(c.ra),
                "rows_skipped": c.skipped,
                "rows_per_class": {k: int((c.classes == k).sum()) for k in CLASS_NAMES},
                "matched": matched[c.source],
            }
            for c in cats
        ],
        "conflict_alerts": [
            {"candid": int(pos.candid[i]), "objectId": pos.object_id[i], "matches": m}
            for i, m in sorted(res.conflicts.items())
        ],
        "dead_letters": len(counts["dead_letters"]),
        "dead_letters_by_reason": dead_reasons,
        "dead_letter_sources": counts["dead_letters"],
        "out": out,
    }
    if report_path:
        try:
            Path(report_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise LabelError(f"cannot write {report_path}: {e.strerror or e}") from e
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a few lines for the terminal.

    Parameters
    ----------
    report
        What :func:`label` returns.

    Returns
    -------
    str
    """
    lines = [
        f"{report['alerts_read']} alerts read ({report['duplicates']} duplicates) · "
        f"{report['considered']} considered (--select {report['select']}, "
        f"{report['skipped_not_first_detection']} not first detections) · "
        f"{report['dead_letters']} dead letters",
        f"labelled {report['labelled']}: "
        + ", ".join(f"{c} {n}" for c, n in report["labelled_per_class"].items())
        + f" · {report['conflicts']} conflicts · {report['unmatched']} unmatched",
    ]
    for c in report["catalogs"]:
        given = c["class"] or f"column {c['class_column']}"
        skipped = c["rows"] - c["rows_used"]
        lines.append(
            f"  {c['source']} ({given}): {c['rows_used']} of {c['rows']} rows used"
            f"{f' ({skipped} skipped)' if skipped else ''}, {c['matched']} alerts within "
            f'{report["radius_arcsec"]:g}"'
        )
    if report["asteroid_rule"] is not None:
        rule = report["asteroid_rule"]
        lines.append(
            f'  {ASTEROID_SOURCE} (0 ≤ ssdistnr ≤ {rule["ss_radius_arcsec"]:g}"): '
            f"{rule['matched']} alerts"
        )
    for conflict in report["conflict_alerts"][:10]:
        m = ", ".join(f"{s} {c}" for s, c in conflict["matches"].items())
        lines.append(f"  conflict {conflict['candid']} {conflict['objectId']}: {m} (unlabelled)")
    if report["dead_letters"]:
        lines.append(
            "  dead letters: "
            + ", ".join(f"{r} {n}" for r, n in report["dead_letters_by_reason"].items())
        )
    lines.append(f"labels written to {report['out']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Typed flags of ``stampflow label``."""
    parser.add_argument("--alerts", nargs="+", required=True, help="alert files/dirs/archives")
    parser.add_argument(
        "--catalog",
        action="append",
        default=[],
        metavar="FILE[:CLASS]",
        help="catalogue (CSV/FITS/VOTable with ra, dec and a class column, or :CLASS for all "
        "rows); repeat for several",
    )
    parser.add_argument("--out", required=True, help="labels.csv to write")
    parser.add_argument(
        "--radius", type=float, default=1.0, help="catalogue match radius [arcsec] (default 1)"
    )
    parser.add_argument(
        "--asteroids",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="label known solar-system objects (0 <= ssdistnr <= --ss-radius) as asteroid",
    )
    parser.add_argument(
        "--ss-radius", type=float, default=5.0, help="largest ssdistnr for --asteroids [arcsec]"
    )
    parser.add_argument(
        "--select",
        choices=("first", "all"),
        default="first",
        help="label first detections only (what the classifier sees; default) or every alert",
    )
    parser.add_argument(
        "--class-column", default=None, help="class column of catalogues given without :CLASS"
    )
    parser.add_argument(
        "--skip-unknown-classes",
        action="store_true",
        help="drop catalogue rows whose class is not recognised instead of refusing the file",
    )
    parser.add_argument("--report", default=None, help="write the report as JSON here")


def _main(args: argparse.Namespace) -> int:
    try:
        report = label(
            args.alerts,
            args.catalog,
            args.out,
            radius_arcsec=args.radius,
            asteroids=args.asteroids,
            ss_radius_arcsec=args.ss_radius,
            select=args.select,
            class_column=args.class_column,
            skip_unknown=args.skip_unknown_classes,
            report_path=args.report,
        )
    except LabelError as e:
        print(f"stampflow label: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    """Add ``stampflow label``."""
    parser = subparsers.add_parser(
        name,
        help="labels.csv for real alerts by catalogue cross-match (as ALeRCE did)",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(parser)
    parser.set_defaults(func=_main)
