"""Sky density: classified alerts per HEALPix pixel, class and night, and the sky-map picture.

Pixels are HEALPix NESTED indices of the ICRS (ra, dec) at a chosen ``nside`` (astropy-healpix).
The map (the paper's Fig. 8) shows each class on a Mollweide projection in Galactic coordinates
with the Galactic plane and the ecliptic drawn, so the expected structure is visible at a glance:
VS crowd the plane, asteroids follow the ecliptic, SN and AGN avoid the plane.

:class:`NightlySkyDensity` is the batch stage (one count per night, pixel and class over the
whole input); the streaming job counts per event-time window instead
(:class:`transforms.streaming_state.SkyDensityWindows`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import apache_beam as beam
import numpy as np

from transforms.schema import CLASS_NAMES, NIGHT_OFFSET_HOURS

__all__ = [
    "NightlySkyDensity",
    "density_key",
    "density_rows",
    "healpix_pixels",
    "night_of",
    "nights_label",
    "plot_sky_map",
    "sum_pairs",
]

_MJD0 = datetime(1858, 11, 17, tzinfo=UTC)


def night_of(jd: float, survey: str | None = "ztf") -> str:
    """The night ``YYYYMMDD`` of a Julian date (UTC): ZTF's is the UT date (a Palomar night falls
    within one), Rubin's its ``dayObs``, the date at UTC-12 h (a Chilean night straddles 0h UT)."""
    hours = NIGHT_OFFSET_HOURS.get(survey or "ztf", 0.0)
    return (_MJD0 + timedelta(days=jd - 2400000.5, hours=-hours)).strftime("%Y%m%d")


def healpix_pixels(ra: np.ndarray, dec: np.ndarray, nside: int) -> np.ndarray:
    """HEALPix NESTED pixel of each (ra, dec) [deg], vectorised.

    Parameters
    ----------
    ra, dec
        ICRS coordinates [deg].
    nside
        HEALPix resolution (a power of two).

    Returns
    -------
    numpy.ndarray
        int64 pixel indices.
    """
    import astropy.units as u
    from astropy_healpix import HEALPix

    hp = HEALPix(nside=nside, order="nested")
    return hp.lonlat_to_healpix(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg).astype(np.int64)


def density_key(row: Mapping[str, Any], pixel: int) -> tuple[str, int, str, str]:
    """Grouping key of a probability row: ``(night, pixel, predicted_class, survey)``."""
    survey = row.get("survey") or "ztf"
    return night_of(row["jd"], survey), int(pixel), row["predicted_class"], survey


def sum_pairs(pairs: Iterable[tuple[int, float]]) -> tuple[int, float]:
    """Combine ``(count, sum of p)`` pairs (the CombineFn of every sky-density aggregation)."""
    count, total = 0, 0.0
    for c, t in pairs:
        count += c
        total += t
    return count, total


def density_rows(
    sums: Iterable[tuple[tuple[str, int, str, str], tuple[int, float]]], nside: int
) -> list[dict[str, Any]]:
    """Turn ``((night, pixel, class, survey), (count, sum of p_class))`` into sky-density rows."""
    return [
        {
            "night": night,
            "nside": nside,
            "pixel": pixel,
            "class": cls,
            "count": count,
            "mean_probability": total / count if count else 0.0,
            "survey": survey,
        }
        for (night, pixel, cls, survey), (count, total) in sums
    ]


def nights_label(nights: Iterable[str]) -> str:
    """``night 20180601``, ``nights 20180601, 20180602`` or ``12 nights, 20180601 to 20180615``.

    Short enough for a figure or page title whatever the input spans.
    """
    ordered = sorted(set(nights))
    if not ordered:
        return ""
    if len(ordered) == 1:
        return f"night {ordered[0]}"
    if len(ordered) <= 3:
        return f"nights {', '.join(ordered)}"
    return f"{len(ordered)} nights, {ordered[0]} to {ordered[-1]}"


def _keyed_by_pixel(rows: Sequence[Mapping[str, Any]], nside: int) -> Iterator[Any]:
    pixels = healpix_pixels(
        np.array([r["ra"] for r in rows]), np.array([r["dec"] for r in rows]), nside
    )
    for row, pixel in zip(rows, pixels, strict=True):
        yield density_key(row, pixel), (1, row[f"p_{row['predicted_class']}"])


class NightlySkyDensity(beam.PTransform):
    """Probability rows → sky-density rows (:data:`~transforms.schema.SKY_DENSITY_ROW`).

    Parameters
    ----------
    nside
        HEALPix resolution. Pixels are computed per batch of rows (one vectorised call).
    """

    def __init__(self, nside: int) -> None:
        super().__init__()
        self.nside = nside

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        nside = self.nside
        return (
            rows
            | "BatchForPixels" >> beam.BatchElements(min_batch_size=64, max_batch_size=4096)
            | "Pixels" >> beam.FlatMap(_keyed_by_pixel, nside=nside)
            | "SumPerPixel" >> beam.CombinePerKey(sum_pairs)
            | "DensityRow" >> beam.MapTuple(lambda key, cs: density_rows([(key, cs)], nside)[0])
        )


def plot_sky_map(rows: list[Mapping[str, Any]], nside: int, path: str, title: str = "") -> None:
    """Draw per-class Mollweide density maps in Galactic coordinates.

    Parameters
    ----------
    rows
        Sky-density rows (any nights; counts are summed).
    nside
        Their HEALPix resolution.
    path
        PNG to write.
    title
        Figure title.
    """
    import astropy.units as u
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.coordinates import SkyCoord
    from astropy_healpix import HEALPix

    hp = HEALPix(nside=nside, order="nested")
    counts = {c: np.zeros(hp.npix) for c in CLASS_NAMES}
    for r in rows:
        counts[r["class"]][r["pixel"]] += r["count"]
    lon_c, lat_c = hp.healpix_to_lonlat(np.arange(hp.npix))
    gal = SkyCoord(ra=lon_c, dec=lat_c, frame="icrs").galactic
    # Matplotlib's Mollweide wants radians in [-pi, pi], east to the left as astronomers draw it.
    x = -np.radians(((gal.l.deg + 180) % 360) - 180)
    y = gal.b.radian
    ecl = SkyCoord(
        lon=np.linspace(0, 360, 721) * u.deg,
        lat=np.zeros(721) * u.deg,
        frame="barycentricmeanecliptic",
    ).galactic
    ex = -np.radians(((ecl.l.deg + 180) % 360) - 180)
    order = np.argsort(ex)
    fig = plt.figure(figsize=(15, 8.5))
    for i, cls in enumerate(CLASS_NAMES):
        ax = fig.add_subplot(2, 3, i + 1, projection="mollweide")
        c = counts[cls]
        sel = c > 0
        sc = ax.scatter(x[sel], y[sel], c=c[sel], s=6, cmap="viridis", marker="s")
        ax.plot([-np.pi, np.pi], [0, 0], color="crimson", lw=1.2, label="Galactic plane")
        ax.plot(
            ex[order],
            np.radians(ecl.b.deg)[order],
            color="orange",
            lw=1.2,
            ls="--",
            label="ecliptic",
        )
        ax.set_title(f"{cls}: {int(c.sum())} alerts", fontsize=11)
        ax.set_xticklabels([])
        ax.grid(alpha=0.3)
        fig.colorbar(
            sc, ax=ax, orientation="horizontal", pad=0.05, shrink=0.6, label="alerts/pixel"
        )
    ax = fig.add_subplot(2, 3, 6)
    ax.axis("off")
    ax.plot([], [], color="crimson", label="Galactic plane (b = 0)")
    ax.plot([], [], color="orange", ls="--", label="ecliptic")
    ax.legend(loc="center", fontsize=12, frameon=False)
    ax.text(
        0.5,
        0.2,
        f"Galactic coordinates, Mollweide\nHEALPix nside {nside}",
        ha="center",
        transform=ax.transAxes,
    )
    fig.suptitle(title or "Predicted classes on the sky", fontsize=14)
    # Fixed margins: tight_layout would draw the five Mollweide panels once more to measure
    # them (~0.4 s of every run).
    fig.subplots_adjust(left=0.035, right=0.985, top=0.93, bottom=0.02, wspace=0.15, hspace=0.12)
    fig.savefig(path, dpi=90)
    plt.close(fig)
