"""Sky positions, times and identifiers of simulated ZTF alerts.

Coordinates use fixed rotation matrices (vectorised, no astropy at generation time): ICRS to
Galactic (Hipparcos definition) and to the mean ecliptic of J2000 (IAU 2006 obliquity), which is
what astropy's ``barycentricmeanecliptic`` gives to ~1e-5 deg for these purposes. Positions are
drawn where Palomar can see them at the alert's time (altitude > 25 deg, dec > -31 deg) and then
thinned per class: variable stars crowd the Galactic plane, SNe and AGN avoid it, asteroids follow
the ecliptic near opposition.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

#: ICRS (J2000) -> Galactic rotation (Hipparcos, ESA 1997).
R_GAL = np.array(
    [
        [-0.0548755604162154, -0.8734370902348850, -0.4838350155487132],
        [0.4941094278755837, -0.4448296299600112, 0.7469822444972189],
        [-0.8676661490190047, -0.1980763734312015, 0.4559837761750669],
    ]
)
#: Mean obliquity of the ecliptic at J2000 (IAU 2006) [deg].
OBLIQUITY = 84381.406 / 3600.0
_EPS = np.radians(OBLIQUITY)
R_ECL = np.array(
    [[1.0, 0.0, 0.0], [0.0, np.cos(_EPS), np.sin(_EPS)], [0.0, -np.sin(_EPS), np.cos(_EPS)]]
)
#: Palomar Observatory longitude (east positive) and latitude [deg].
PALOMAR_LON = -116.8597
PALOMAR_LAT = 33.3563
#: ZTF's southern limit [deg].
DEC_MIN = -31.0
MIN_ALTITUDE = 25.0
#: ZTF night ids count days from this date (nid 541 = 2018-06-26).
NID_EPOCH = dt.date(2017, 1, 1)
JD_UNIX_EPOCH = 2440587.5
CLASS_NAMES = ("AGN", "SN", "VS", "asteroid", "bogus")


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _angles(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lon = np.degrees(np.arctan2(v[1], v[0])) % 360.0
    lat = np.degrees(np.arcsin(np.clip(v[2], -1.0, 1.0)))
    return lon, lat


def galactic(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Galactic longitude and latitude [deg] of J2000 ``ra``, ``dec`` [deg]."""
    return _angles(R_GAL @ _unit(ra, dec))


def ecliptic(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ecliptic longitude and latitude [deg] (mean ecliptic and equinox of J2000)."""
    return _angles(R_ECL @ _unit(ra, dec))


def from_frame(lon: np.ndarray, lat: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`galactic` / :func:`ecliptic` for rotation ``rot``: (ra, dec) [deg]."""
    return _angles(rot.T @ _unit(lon, lat))


def parse_night(night: str) -> dt.date:
    """Parse ``YYYYMMDD`` into a date, with a clear error message."""
    try:
        return dt.datetime.strptime(night, "%Y%m%d").date()
    except ValueError as e:
        raise ValueError(f"night must be YYYYMMDD, got {night!r}") from e


def night_window(night: str) -> tuple[float, float]:
    """Julian dates bounding the Palomar night whose archive is ``ztf_public_<night>``.

    ZTF names nightly archives by the UT date; at Palomar (UTC-8) the night runs from ~03:30 to
    ~12:30 UT of that date.

    Returns
    -------
    tuple of float
        ``(jd_start, jd_end)`` [day].
    """
    d = parse_night(night)
    jd0 = JD_UNIX_EPOCH + (dt.datetime(d.year, d.month, d.day) - dt.datetime(1970, 1, 1)).days
    return jd0 + 3.5 / 24.0, jd0 + 12.5 / 24.0


def night_id(night: str) -> int:
    """ZTF night id ``nid``: days since 2017-01-01."""
    return (parse_night(night) - NID_EPOCH).days


def jd_to_unix(jd: np.ndarray | float) -> np.ndarray | float:
    """Julian date -> unix time [s]."""
    return (np.asarray(jd) - JD_UNIX_EPOCH) * 86400.0


def local_sidereal_deg(jd: np.ndarray) -> np.ndarray:
    """Local mean sidereal time at Palomar [deg]."""
    return (280.46061837 + 360.98564736629 * (jd - 2451545.0) + PALOMAR_LON) % 360.0


def sun_ecliptic_longitude(jd: np.ndarray | float) -> np.ndarray:
    """Apparent ecliptic longitude of the Sun [deg] (low-precision almanac formula, ~0.01 deg)."""
    n = np.asarray(jd) - 2451545.0
    mean_lon = 280.460 + 0.9856474 * n
    g = np.radians(357.528 + 0.9856003 * n)
    return (mean_lon + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g)) % 360.0


def _altitude(ra: np.ndarray, dec: np.ndarray, jd: np.ndarray) -> np.ndarray:
    ha = np.radians(local_sidereal_deg(jd) - ra)
    lat, d = np.radians(PALOMAR_LAT), np.radians(dec)
    return np.degrees(np.arcsin(np.sin(lat) * np.sin(d) + np.cos(lat) * np.cos(d) * np.cos(ha)))


def class_weight(cls: np.ndarray, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Relative acceptance of a position for each class (rejection sampling).

    VS: ``exp(-|b| / 6 deg)`` plus a floor of 0.015; SN and AGN: zero below ``|b|`` = 7 deg,
    ramping to 1 at 22 deg (extinction and crowding hide them); bogus: mild excess in the plane
    (bright stars).
    Asteroids are drawn directly in ecliptic coordinates and always accepted here.
    """
    _, b = galactic(ra, dec)
    ab = np.abs(b)
    w = np.ones_like(ab)
    w = np.where(cls == CLASS_NAMES.index("VS"), 0.015 + np.exp(-ab / 6.0), w)
    extragal = (cls == CLASS_NAMES.index("SN")) | (cls == CLASS_NAMES.index("AGN"))
    w = np.where(extragal, np.clip((ab - 7.0) / 15.0, 0.0, 1.0), w)
    w = np.where(cls == CLASS_NAMES.index("bogus"), 0.5 + 0.5 * np.exp(-ab / 10.0), w)
    return w / np.where(cls == CLASS_NAMES.index("VS"), 1.015, 1.0)


def sample_positions(
    cls: np.ndarray, jd: np.ndarray, rng: np.random.Generator, max_rounds: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """Draw sky positions for objects of classes ``cls`` observed at ``jd``.

    Parameters
    ----------
    cls
        ``(N,)`` class indices (order of :data:`CLASS_NAMES`).
    jd
        ``(N,)`` Julian dates of the first alert (sets what is above the horizon).
    rng
        Random generator.
    max_rounds
        Rejection rounds before accepting whatever was drawn last (never reached in practice).

    Returns
    -------
    tuple of numpy.ndarray
        ``(ra, dec)`` [deg], J2000.
    """
    n = cls.size
    ra, dec = np.zeros(n), np.zeros(n)
    todo = np.arange(n)
    ast = CLASS_NAMES.index("asteroid")
    for rnd in range(max_rounds):
        if todo.size == 0:
            break
        m = todo.size
        c, t = cls[todo], jd[todo]
        # Uniform over the visible sky: hour angle within +-5 h, uniform in sin(dec).
        r = (local_sidereal_deg(t) + rng.uniform(-75.0, 75.0, m)) % 360.0
        d = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(DEC_MIN)), 1.0, m)))
        # Asteroids: near opposition, in a band around the ecliptic as wide as main-belt
        # inclinations (70% within a sigma of 8 deg, 30% of 18 deg; the real known asteroids in
        # shared/data sit at ecliptic latitudes of 1-25 deg).
        is_ast = c == ast
        if is_ast.any():
            k = int(is_ast.sum())
            lam = sun_ecliptic_longitude(t[is_ast]) + 180.0 + rng.normal(0.0, 30.0, k)
            width = np.where(rng.random(k) < 0.7, 8.0, 18.0)
            beta = np.clip(rng.normal(0.0, 1.0, k) * width, -40.0, 40.0)
            r[is_ast], d[is_ast] = from_frame(lam % 360.0, beta, R_ECL)
        ok = (d > DEC_MIN) & (rng.random(m) < class_weight(c, r, d))
        ok &= is_ast | (_altitude(r, d, t) > MIN_ALTITUDE)
        if rnd == max_rounds - 1:
            ok[:] = True
        ra[todo[ok]], dec[todo[ok]] = r[ok], d[ok]
        todo = todo[~ok]
    return ra, dec


_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def object_ids(year: np.ndarray, codes: np.ndarray) -> list[str]:
    """ZTF-style object names ``ZTF<yy><7 letters>``; distinct ``codes`` give distinct names.

    Parameters
    ----------
    year
        ``(N,)`` year of the object's first detection.
    codes
        ``(N,)`` non-negative integers < 26**7, unique per object.

    Returns
    -------
    list of str
        Names like ``ZTF18abcdefg``.
    """
    digits = np.stack([(codes // 26**p) % 26 for p in range(6, -1, -1)], axis=1)
    letters = _LETTERS[digits]
    return [
        f"ZTF{y % 100:02d}{''.join(row)}" for y, row in zip(year.tolist(), letters, strict=True)
    ]


def ztf_field(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Approximate ZTF primary-grid field number (245..~880) for a position.

    The real grid has dec bands ~7 deg tall with fields ~7 deg wide; this reproduces its numbering
    scheme (increasing with dec, then ra) closely enough for plausible values.
    """
    band = np.clip(((dec - DEC_MIN) // 7.0).astype(int), 0, 17)
    centre = DEC_MIN + 7.0 * band + 3.5
    per_band = np.maximum(1, np.floor(360.0 * np.cos(np.radians(centre)) / 7.4)).astype(int)
    widths = np.maximum(
        1, np.floor(360.0 * np.cos(np.radians(DEC_MIN + 7.0 * np.arange(18) + 3.5)) / 7.4)
    ).astype(int)
    offsets = 245 + np.concatenate([[0], np.cumsum(widths)[:-1]])
    return offsets[band] + np.minimum((ra / 360.0 * per_band).astype(int), per_band - 1)
