"""Simulated Rubin (LSST) alerts with labels: ``stampflow simulate --survey lsst``.

Alerts of the five classes (subtypes in :data:`SUBTYPES`) are drawn as scenes
(:mod:`simulator.lsst_physics`), rendered to science / template / difference cutouts with their
variance and PSF extensions, measured as Rubin's pipeline measures them (so ``psfFlux``, ``snr``,
shape moments ... agree with the pixels), and written as packets of the official schema
(``lsst.v10_0`` or ``lsst.v11_1``, read from ``--schema-dir`` or the installed
``lsst-alert-packet``): Avro containers, Fink-style Parquet, or Kafka wire-format messages, with
``labels.csv`` (``candid`` = ``diaSourceId``, ``objectId`` as the pipeline names it).

Histories follow the class: a first detection has empty ``prvDiaSources`` and
``prvDiaForcedSources`` (as every real one), later detections of SNe, AGN and variable stars carry
earlier detections and forced photometry from a light curve; solar-system alerts carry none.
Known asteroids have ``ssObjectId`` and an ``ssSource`` record, unknown movers do not.
Every calibrated number, and where it comes from: ``docs/calibration.md`` (Rubin).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import importlib.util
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulator import lsst_physics as ph
from simulator import metadata as md
from simulator.core import LABEL_COLUMNS, SimulationSummary, chunk_results

__all__ = [
    "FORMATS",
    "SCHEMA_VERSIONS",
    "SUBTYPES",
    "default_schema_dir",
    "make_lsst_alerts",
    "simulate_lsst",
]

CLASS_NAMES = md.CLASS_NAMES
#: Output formats: Avro containers (128 alerts each), Parquet files, wire-format messages.
FORMATS = ("avro", "parquet", "wire")
#: Schema versions written (registry id major*100+minor).
SCHEMA_VERSIONS = ("10.0", "11.1")
#: Subtypes per class, with their weights within the class.
SUBTYPES: dict[str, dict[str, float]] = {
    "AGN": {"quasar": 0.5, "seyfert": 0.5},
    "SN": {"on_host": 0.85, "hostless": 0.15},
    "VS": {"pulsating": 0.5, "eclipsing": 0.3, "flare": 0.2},
    "asteroid": {"known": 0.55, "unknown": 0.35, "fast": 0.10},
    "bogus": {
        "dipole": 0.16,
        "psf_mismatch": 0.08,
        "streak": 0.08,
        "glint": 0.05,
        "cosmic_ray": 0.10,
        "ghost": 0.06,
        "crosstalk": 0.05,
        "bright_star": 0.10,
        "edge": 0.07,
        "noise": 0.25,
    },
}
DEFAULT_MIX = {c: 0.2 for c in CLASS_NAMES}
#: Class mix of a night's first detections when ``first_detections`` is asked without a mix.
#: Of the 22 real Rubin first detections, 5 are known asteroids and most of the rest are faint
#: (S/N 5-8) with low reliability: bogus-dominated, as ZTF's (ALeRCE, paper Appendix E).
FIRST_DETECTION_MIX = {"AGN": 0.04, "SN": 0.08, "VS": 0.10, "asteroid": 0.18, "bogus": 0.60}
#: Share of alerts that are their object's first detection, per class (default mode). Asteroids
#: are always (no history); bogus too, except the artefacts that recur at a fixed place on the sky
#: (:data:`PERSISTENT`), first in PERSISTENT_FIRST_SHARE of their alerts.
FIRST_SHARE = {"AGN": 0.1, "SN": 0.35, "VS": 0.1}
PERSISTENT_FIRST_SHARE = 0.7
#: Artefacts that recur at a fixed place on the sky (and so can have a history).
PERSISTENT = ("dipole", "psf_mismatch", "bright_star")
CHUNK = 128

BANDS = ("u", "g", "r", "i", "z", "y")
#: Share of visits per band (LSST baseline cadence, roughly).
BAND_WEIGHTS = (0.07, 0.09, 0.22, 0.22, 0.20, 0.20)
#: Dark-sky brightness per band [mag/arcsec²] (LSST science requirements): the per-pixel sky
#: noise scales as 10^(-0.2 (sky - sky_i)); with i at 43 nJy/px this gives g 19 nJy/px, as
#: measured in the real g-band cutouts (18-21).
SKY_MAG = {"u": 22.9, "g": 22.3, "r": 21.2, "i": 20.5, "z": 19.6, "y": 18.6}
#: Median sky noise of an i-band visit [nJy/px] (real first detections: 40 median; cutouts 40-46).
SIGMA_I = 39.5
#: Effective wavelengths [nm], for the seeing's λ^-0.2 dependence.
WAVELENGTH = {"u": 368.0, "g": 480.0, "r": 622.0, "i": 754.0, "z": 869.0, "y": 971.0}
#: Median visit seeing at 622 nm [arcsec] and its log-normal spread (real PSF moments of the first
#: detections: FWHM 0.89-1.15″, 10th-90th percentile; cutout PSFs 0.96-1.73″ in i/g).
SEEING = (0.91, 0.2)
#: Template PSF FWHM [px]: log-normal median and spread, clipped (real first detections: median
#: 3.78, 10th-90th percentile 3.69-5.61; cutouts 3.4-5.2).
FWHM_TEMPLATE = (3.85, 0.15)
#: Template noise relative to the visit's (real first detections: ratio 0.14-0.41, median 0.21).
TEMPLATE_NOISE = (0.09, 0.28)
#: The constant reliability 6 of the 27 fink-science alerts carry (a degenerate model output),
#: given to the same share of simulated alerts of every class.
RELIABILITY_PLACEHOLDER = 0.4863438308238983
RELIABILITY_PLACEHOLDER_SHARE = 0.22
#: Logit of the reliability score at S/N 5 per class or bogus kind (real: known asteroids 1.0,
#: faint first detections 0.14-0.99).
RELIABILITY_LOGIT = {
    "AGN": 0.6,
    "SN": 0.9,
    "VS": 0.8,
    "asteroid": 1.6,
    "dipole": -0.6,
    "psf_mismatch": -0.8,
    "streak": -0.8,
    "glint": -0.4,
    "cosmic_ray": -0.4,
    "ghost": -1.5,
    "crosstalk": -1.0,
    "bright_star": -1.4,
    "edge": -1.0,
    "noise": -1.2,
}
#: Pareto index of the detection S/N above threshold per class (N(>s) ∝ s^-a): faint detections
#: dominate, bogus most (real first detections: 14 of 17 non-asteroids at S/N < 9).
SNR_INDEX = {"AGN": 2.2, "SN": 2.2, "VS": 1.6, "asteroid": 0.9, "bogus": 4.0}
SNR_MIN, SNR_MAX = 5.0, 800.0
#: Detector size [px] (LSST CCD: 4072 × 4000).
DETECTOR = (4072, 4000)
#: First of the ids this simulator gives (real diaSourceIds are ~1.70e17; simulated ones start
#: at 1.9e17 so they never collide with a real alert).
ID_BASE = 190_000_000_000_000_000
SS_ID_BASE = 30_000_000_000_000_000
#: Ids per alert: the alert's diaSourceId is its block's first, its earlier detections the next
#: ones (up to HISTORY_IDS), its forced sources from FORCED_ID_OFFSET, its diaObjectId the last.
ID_BLOCK = 1024
HISTORY_IDS = 511
FORCED_ID_OFFSET = 512
#: Alerts per run with their own ids (and bits of the alert index in an id).
INDEX_BITS = 24
EXPOSURE = 30.0  # [s]


def default_schema_dir() -> str | None:
    """The schema directory of an installed ``lsst-alert-packet`` (not imported), or None."""
    try:
        spec = importlib.util.find_spec("lsst.alert.packet")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "schema"
    return str(path) if path.is_dir() else None


def _schema(schema_dir: str, version: str) -> Any:
    from transforms import wire

    major, minor = (int(x) for x in version.split("."))
    parsed = wire.schema_in(schema_dir, wire.lsst_schema_id(major, minor))
    if parsed is None:
        raise ValueError(f"no lsst.v{major}_{minor} alert schema under {schema_dir}")
    return parsed


def _record_fields(parsed: Any) -> dict[str, Any]:
    """Field lists of the alert's named records by short name: alert, diaSource, diaObject, ..."""
    from transforms.wire import named_types

    return {
        name.rsplit(".", 1)[-1]: t["fields"]
        for name, t in named_types(parsed).items()
        if t["type"] == "record"
    }


def _blank(fields: list[dict]) -> dict[str, Any]:
    """A record with every field at its schema default (null for nullable fields)."""
    rec: dict[str, Any] = {}
    for f in fields:
        t = f["type"]
        if "default" in f:
            rec[f["name"]] = f["default"]
        elif isinstance(t, list) and "null" in t:
            rec[f["name"]] = None
        else:
            base = t if isinstance(t, str) else t.get("type") if isinstance(t, dict) else t
            rec[f["name"]] = {"boolean": False, "string": "", "bytes": b"", "array": []}.get(
                base, 0
            )
    return rec


@dataclass
class LsstPlan:
    """Everything the chunks need, drawn once from the seed (workers only render)."""

    n: int
    seed: int
    night: str
    version: str
    first_detections: bool
    cls: np.ndarray  # class index per alert
    subtype: list[str]
    chunks: list[int] = field(default_factory=list)


def _pick(weights: dict[str, float], n: int, rng: np.random.Generator) -> list[str]:
    names = list(weights)
    p = np.array([weights[k] for k in names], float)
    return [names[i] for i in rng.choice(len(names), n, p=p / p.sum())]


def plan(
    n: int,
    seed: int = 0,
    night: str = "20260305",
    mix: str | dict[str, float] | None = None,
    first_detections: bool = False,
    version: str = "11.1",
) -> LsstPlan:
    """Draw the classes and subtypes of ``n`` alerts (the rest is drawn per chunk).

    Raises
    ------
    ValueError
        A bad mix, night or schema version.
    """
    from simulator.generate import parse_mix

    if n >= 1 << INDEX_BITS:
        raise ValueError(f"at most {(1 << INDEX_BITS) - 1} alerts per run (ids), got {n}")
    if version not in SCHEMA_VERSIONS:
        raise ValueError(f"schema version must be one of {SCHEMA_VERSIONS}, got {version!r}")
    md.parse_night(night)
    fractions = (
        parse_mix(mix)
        if mix is not None
        else (FIRST_DETECTION_MIX if first_detections else DEFAULT_MIX)
    )
    rng = np.random.default_rng([seed, 7])
    cls = rng.choice(5, n, p=np.array([fractions[c] for c in CLASS_NAMES]))
    sub = [""] * n
    for k, name in enumerate(CLASS_NAMES):
        idx = np.flatnonzero(cls == k)
        for i, s in zip(idx, _pick(SUBTYPES[name], idx.size, rng), strict=True):
            sub[i] = s
    return LsstPlan(n, seed, night, version, first_detections, cls, sub, [*range(0, n, CHUNK), n])


def _id_block(p: LsstPlan, i: int) -> int:
    """First id of alert ``i``'s block: unique across alerts, seeds (mod 1000) and nights (mod
    4096 days), so several simulated nights can be classified or trained on together."""
    key = (int(_mjd_of(p.night)) % 4096) * 1000 + p.seed % 1000
    return ID_BASE + ((key << INDEX_BITS) | i) * ID_BLOCK


def _mjd_of(night: str) -> float:
    d = md.parse_night(night)
    return (d - dt.date(1858, 11, 17)).days * 1.0


def _flux(mag: float | np.ndarray) -> float | np.ndarray:
    return 10.0 ** (-0.4 * (np.asarray(mag) - 31.4))


def _sky_position(name: str, sub: str, mjd: float, rng: np.random.Generator):
    """(ra, dec) [deg]: Rubin's sky (dec < +30°), VS toward the Galactic plane, movers near the
    ecliptic at opposition."""
    if name == "asteroid":
        sun = float(md.sun_ecliptic_longitude(mjd + 2400000.5))
        lon = (sun + 180.0 + rng.normal(0, 35)) % 360.0
        lat = rng.normal(0.0, 9.0 if sub != "fast" else 20.0)
        ra, dec = md.from_frame(np.array([lon]), np.array([lat]), md.R_ECL)
        return float(ra[0]) % 360.0, float(np.clip(dec[0], -89.0, 30.0))
    for _ in range(100):
        ra = rng.uniform(0, 360)
        dec = np.degrees(np.arcsin(rng.uniform(-1.0, np.sin(np.radians(30.0)))))
        if name == "VS":
            _, b = md.galactic(np.array([ra]), np.array([dec]))
            if rng.random() > np.exp(-abs(float(b[0])) / 15.0) and rng.random() > 0.2:
                continue
        return float(ra), float(dec)
    return float(ra), float(dec)


def _bbox(snr: float, fwhm: float, rng: np.random.Generator) -> int:
    """Footprint side [px] (real: 10-14 at S/N 5, 22-28 at S/N 25-120 in i, 31-34 in g)."""
    return int(
        np.clip(round(fwhm * (1.0 + 1.3 * np.log(max(snr, 2.5) / 2.0)) + rng.normal(3, 2)), 8, 48)
    )


def _scene(name: str, sub: str, band: str, rng: np.random.Generator):
    """A scene of one class and subtype, with what the metadata needs to know about it."""
    seeing = SEEING[0] * np.exp(rng.normal(0, SEEING[1])) * (WAVELENGTH[band] / 622.0) ** -0.2
    fwhm = float(np.clip(seeing, 0.6, 2.2) / ph.PIXEL_SCALE)
    fwhm_tpl = FWHM_TEMPLATE[0] * np.exp(rng.normal(0, FWHM_TEMPLATE[1]))
    fwhm_tpl = float(min(np.clip(fwhm_tpl, 3.3, 5.8), 0.92 * fwhm))
    sigma = SIGMA_I * np.exp(rng.normal(0, 0.06)) * 10 ** (-0.2 * (SKY_MAG[band] - SKY_MAG["i"]))
    sigma_tpl = sigma * rng.uniform(*TEMPLATE_NOISE)
    beta = rng.uniform(2.5, 4.5)
    e = (rng.normal(0, 0.09), rng.normal(0, 0.09))  # real |e| median 0.13
    # Flux error of a PSF fit on white noise: σ / sqrt(Σ P²).
    p = ph.moffat(41, 20, 20, fwhm, beta, e)
    flux_err = sigma / np.sqrt((p * p).sum())
    kind = sub if name == "bogus" else name
    a = SNR_INDEX[name]
    snr = float(min(SNR_MIN * (1.0 - rng.random()) ** (-1.0 / a), SNR_MAX))
    dflux = snr * flux_err
    info: dict[str, Any] = {"kind": kind, "true_snr": snr, "trail_arcsec": 0.0, "moving": False}
    points: list[tuple[float, float, float, float]] = []
    host = None
    trail = None
    shift = (0.0, 0.0)
    kernel_error = 0.0
    artefacts: list[tuple[str, dict]] = []
    edge = None

    def galaxy(mag_lo: float, mag_hi: float, r_lo: float, r_hi: float):
        r_e = float(np.exp(rng.uniform(np.log(r_lo), np.log(r_hi))))
        return (
            _flux(rng.uniform(mag_lo, mag_hi)),
            r_e,
            float(rng.choice([1.0, 1.0, 1.0, 4.0])),
            rng.uniform(0.3, 1.0),
            rng.uniform(0, np.pi),
        )

    if name == "SN":
        points.append((0.0, 0.0, dflux, 0.0))
        if sub == "on_host":
            hf, r_e, ns, q, pa = galaxy(19.0, 24.0, 2.0, 15.0)
            r, th = r_e * abs(rng.normal(0, 0.9)), rng.uniform(0, 2 * np.pi)
            host = (-r * np.cos(th), -r * np.sin(th), hf, r_e, ns, q, pa)
    elif name == "AGN":
        sign = -1.0 if rng.random() < 0.4 else 1.0
        nucleus = max(_flux(rng.uniform(18.0, 23.5)), 1.5 * dflux)
        points.append((0.0, 0.0, nucleus + sign * dflux, nucleus))
        if sub == "quasar":
            host = (
                0.0,
                0.0,
                nucleus * rng.uniform(0.1, 0.8),
                rng.uniform(1.0, 3.0),
                1.0,
                rng.uniform(0.6, 1.0),
                rng.uniform(0, np.pi),
            )
        else:
            hf, r_e, ns, q, pa = galaxy(17.5, 21.5, 3.0, 15.0)
            host = (0.0, 0.0, max(hf, 2 * nucleus), r_e, ns, q, pa)
    elif name == "VS":
        if sub == "flare":
            star = dflux * rng.uniform(0.1, 2.0)
            points.append((0.0, 0.0, star + dflux, star))
        else:
            sign = -1.0 if (sub == "eclipsing" or rng.random() < 0.45) else 1.0
            frac = rng.uniform(0.05, 0.7) if sub == "eclipsing" else rng.uniform(0.02, 0.5)
            star = max(dflux / frac, _flux(rng.uniform(15.0, 22.0)))
            points.append((0.0, 0.0, star + sign * dflux, star))
    elif name == "asteroid":
        info["moving"] = True
        rate = (
            np.exp(rng.normal(np.log(0.25), 0.5)) if sub != "fast" else rng.uniform(1.0, 8.0)
        )  # [deg/day]
        length = rate * EXPOSURE / 86400.0 * 3600.0  # [arcsec]
        info["trail_arcsec"] = length
        trail = (length / ph.PIXEL_SCALE, rng.uniform(0, np.pi))
        if sub == "fast":
            dflux *= max(1.0, length / ph.PIXEL_SCALE / fwhm) ** 0.5  # a trail spreads its flux
        points.append((0.0, 0.0, dflux, 0.0))
    elif kind == "dipole":
        # Artefacts follow the bogus S/N law too: the star's flux is what leaves a residual of
        # about dflux for this misregistration (real dipoles: science flux 16-18 mag, S/N 7-28).
        amp = rng.uniform(0.08, 0.6)
        f0 = float(np.clip(2.0 * dflux * (fwhm / 2.3548) / amp, _flux(21.0), _flux(15.0)))
        th = rng.uniform(0, 2 * np.pi)
        shift = (amp * np.cos(th), amp * np.sin(th))
        points.append((0.0, 0.0, f0 * (1 + rng.normal(0, 0.01)), f0))
        if rng.random() < 0.4:
            hf, r_e, ns, q, pa = galaxy(17.0, 20.0, 3.0, 12.0)
            host = (0.0, 0.0, hf, r_e, ns, q, pa)
    elif kind == "psf_mismatch":
        kernel_error = float(rng.choice([-1, 1]) * rng.uniform(0.03, 0.12))
        f0 = float(np.clip(dflux / (0.6 * abs(kernel_error)), _flux(22.0), _flux(14.0)))
        points.append((0.0, 0.0, f0, f0))
    elif kind == "streak":
        width = fwhm * rng.uniform(0.8, 2.0)
        artefacts.append(
            (
                "streak",
                {
                    "dx": rng.normal(0, 0.5),
                    "dy": rng.normal(0, 0.5),
                    "angle": rng.uniform(0, np.pi),
                    "width": width,
                    "peak": dflux / (width * 2.5),
                },
            )
        )
        info["trail_arcsec"] = 60.0
    elif kind == "glint":
        length = rng.uniform(5, 40)
        width = fwhm * rng.uniform(0.7, 1.2)
        artefacts.append(
            (
                "glint",
                {
                    "dx": rng.normal(0, 0.5),
                    "dy": rng.normal(0, 0.5),
                    "angle": rng.uniform(0, np.pi),
                    "width": width,
                    "length": length,
                    "peak": dflux / (width * 4.0),
                },
            )
        )
        info["trail_arcsec"] = length * ph.PIXEL_SCALE
    elif kind == "cosmic_ray":
        artefacts.append(
            (
                "cosmic_ray",
                {
                    "dx": rng.normal(0, 0.4),
                    "dy": rng.normal(0, 0.4),
                    "angle": rng.uniform(0, np.pi),
                    "width": rng.uniform(0.6, 1.6),
                    "length": rng.uniform(1.0, 10.0),
                    "peak": dflux * rng.uniform(0.5, 1.5),
                },
            )
        )
    elif kind == "ghost":
        radius = rng.uniform(30, 150)
        th = rng.uniform(0, 2 * np.pi)
        artefacts.append(
            (
                "ghost",
                {
                    "dx": radius * np.cos(th),
                    "dy": radius * np.sin(th),
                    "radius": radius + rng.normal(0, 2),
                    "soft": rng.uniform(1, 6),
                    "inner": rng.uniform(0.3, 0.8),
                    "level": sigma * rng.uniform(1.0, 5.0),
                },
            )
        )
        points.append((0.0, 0.0, 0.5 * dflux, 0.0))  # the noise peak the detection sits on
    elif kind == "crosstalk":
        artefacts.append(
            (
                "crosstalk",
                {
                    "dx": rng.normal(0, 0.7),
                    "dy": rng.normal(0, 0.7),
                    "wx": rng.uniform(1.5, 5.0),
                    "wy": rng.uniform(1.5, 5.0),
                    "level": dflux * rng.uniform(0.08, 0.25),
                },
            )
        )
    elif kind == "bright_star":
        r, th = rng.uniform(3.0, 12.0), rng.uniform(0, 2 * np.pi)
        f0 = _flux(rng.uniform(14.0, 17.0))
        points.append((r * np.cos(th), r * np.sin(th), f0, f0))
        kernel_error = float(rng.choice([-1, 1]) * rng.uniform(0.005, 0.03))
        artefacts.append(
            (
                "spikes",
                {
                    "dx": r * np.cos(th),
                    "dy": r * np.sin(th),
                    "angle": rng.uniform(0, np.pi / 2),
                    "peak": sigma * rng.uniform(2, 10),
                    "scale": rng.uniform(8, 30),
                },
            )
        )
    elif kind == "edge":
        edge = (int(rng.integers(4)), int(rng.integers(3, 13)))
        points.append((0.0, 0.0, dflux, 0.0))
    elif kind == "noise":
        # A noise peak: science-only light of about a PSF's width (half of them narrower).
        w = fwhm * rng.uniform(0.45, 1.2)
        artefacts.append(
            (
                "glint",
                {
                    "dx": rng.normal(0, 0.3),
                    "dy": rng.normal(0, 0.3),
                    "angle": rng.uniform(0, np.pi),
                    "width": w,
                    "length": 1e-3 + w,
                    "peak": 0.9 * dflux / (w * w * 1.13),
                },
            )
        )
    else:
        raise ValueError(f"unknown subtype {name}/{sub}")
    info["bbox"] = _bbox(snr, fwhm, rng)
    size = max(ph.MIN_STAMP, info["bbox"])
    scene = ph.Scene(
        size=size,
        offset=(rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)),
        fwhm=fwhm,
        beta=beta,
        psf_e=e,
        fwhm_tpl=fwhm_tpl,
        sigma=sigma,
        sigma_tpl=sigma_tpl,
        points=points,
        host=host,
        trail=trail,
        shift=shift,
        kernel_error=kernel_error,
        artefacts=artefacts,
        edge=edge,
        # Real templates sit a little above zero (median 1.8 nJy/px, 0.2 of their noise).
        tpl_background=float(sigma_tpl * rng.normal(0.2, 0.3)),
    )
    return scene, info


def _fits(image: np.ndarray, var: np.ndarray, psf: np.ndarray, cards: list[tuple]) -> bytes:
    """An uncompressed three-HDU FITS cutout as Rubin writes it (image, variance, PSF)."""

    def card(key: str, value: Any) -> str:
        if isinstance(value, bool):
            v = f"{'T' if value else 'F':>20}"
        elif isinstance(value, str):
            v = f"'{value:<8}'"
        elif isinstance(value, int):
            v = f"{value:>20}"
        else:
            v = f"{value:>20.13G}"
        return f"{key:<8}= {v}"[:80].ljust(80)

    def hdu(head: list[tuple], data: np.ndarray, bitpix: int, first: bool) -> bytes:
        top = [("SIMPLE", True)] if first else [("XTENSION", "IMAGE")]
        rows, cols = data.shape
        head = (
            [*top, ("BITPIX", bitpix), ("NAXIS", 2), ("NAXIS1", cols), ("NAXIS2", rows)]
            + ([("EXTEND", True)] if first else [("PCOUNT", 0), ("GCOUNT", 1)])
            + head
        )
        text = "".join(card(k, v) for k, v in head) + "END".ljust(80)
        text += " " * (-len(text) % 2880)
        raw = np.ascontiguousarray(data, dtype=">f4" if bitpix == -32 else ">f8").tobytes()
        return text.encode("ascii") + raw + b"\0" * (-len(raw) % 2880)

    return b"".join(
        (
            hdu([*cards, ("BUNIT", "nJy")], image, -32, True),
            hdu([("UTYPE", "VarianceUncertainty"), ("EXTNAME", "UNCERT")], var, -32, False),
            hdu([("EXTNAME", "PSFIMAGE")], psf, -64, False),
        )
    )


def _wcs_cards(
    size: int, centre: tuple[float, float], ra: float, dec: float, rotpa: float, x: float, y: float
) -> list[tuple]:
    th = np.radians(rotpa)
    s = ph.PIXEL_SCALE / 3600.0
    # East to the left of north (no parity flip), north at -ROTPA from +y.
    pc = (-s * np.cos(th), s * np.sin(th), s * np.sin(th), s * np.cos(th))
    return [
        ("CUTMINX", int(x) - size // 2),
        ("CUTMINY", int(y) - size // 2),
        ("ROTPA", rotpa),
        ("WCSAXES", 2),
        ("CRPIX1", centre[0] + 1.0),
        ("CRPIX2", centre[1] + 1.0),
        ("PC1_1", pc[0]),
        ("PC1_2", pc[1]),
        ("PC2_1", pc[2]),
        ("PC2_2", pc[3]),
        ("CDELT1", 1.0),
        ("CDELT2", 1.0),
        ("CRVAL1", ra),
        ("CRVAL2", dec),
        ("LATPOLE", 90.0),
        ("MJDREF", 0.0),
    ]


def _logistic(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def _history_times(name: str, mjd: float, rng: np.random.Generator) -> np.ndarray:
    if name == "SN":
        n, span = int(rng.integers(1, 20)), rng.uniform(2, 40)
    elif name in ("AGN", "VS"):
        n = int(min(np.exp(rng.normal(np.log(60), 1.2)), 400)) + 1
        span = rng.uniform(20, 300)
    else:
        n, span = int(rng.integers(1, 40)), rng.uniform(5, 200)
    return np.sort(mjd - rng.uniform(0.02, span, n))


def _light_curve(name: str, t: np.ndarray, mjd: float, now: float, rng: np.random.Generator):
    """Difference fluxes [nJy] of earlier visits, ending at ``now`` at ``mjd``."""
    if name == "SN":
        t0 = t.min() - rng.uniform(1, 10)
        return now * np.clip((t - t0) / (mjd - t0), 0, None) ** 2
    if name == "VS":
        period = np.exp(rng.uniform(np.log(0.1), np.log(100)))
        return now * np.cos(2 * np.pi * (t - mjd) / period)
    walk = np.cumsum(rng.normal(0, abs(now) * 0.15, t.size)[::-1])[::-1]
    return now + walk


def make_chunk(p: LsstPlan, chunk: int, fields: dict[str, Any]) -> list[tuple[dict, dict]]:
    """Build the alerts of one chunk: ``[(packet record, label row), ...]``.

    Parameters
    ----------
    p
        The plan.
    chunk
        Chunk index (``p.chunks[chunk]`` to ``p.chunks[chunk + 1]``).
    fields
        The schema's record field lists (:func:`_record_fields`).
    """
    rng = np.random.default_rng([p.seed, 11, chunk])
    mjd0 = _mjd_of(p.night)
    out = []
    for i in range(p.chunks[chunk], p.chunks[chunk + 1]):
        name, sub = CLASS_NAMES[int(p.cls[i])], p.subtype[i]
        band = BANDS[int(rng.choice(6, p=BAND_WEIGHTS))]
        # A Chilean night: 23:00-09:30 UT of dayObs + 1 (dayObs is the date at UTC-12 h).
        mjd = mjd0 + rng.uniform(0.96, 1.40)
        scene, info = _scene(name, sub, band, rng)
        st = ph.render(scene, rng)
        m = ph.measure(st, scene)
        out.append(_packet(p, i, name, sub, band, mjd, scene, info, st, m, fields, rng))
    return out


def _packet(p, i, name, sub, band, mjd, scene, info, st, m, fields, rng):
    kind = info["kind"]
    ra, dec = _sky_position(name, sub, mjd, rng)
    visit = int(p.night) * 100000 + int(rng.integers(1, 1200))
    detector = int(rng.integers(0, 189))
    base = _id_block(p, i)
    dia_source_id = base
    if p.first_detections or name == "asteroid":
        first = True
    elif name == "bogus":
        first = kind not in PERSISTENT or rng.random() < PERSISTENT_FIRST_SHARE
    else:
        first = rng.random() < FIRST_SHARE[name]
    known = name == "asteroid" and sub == "known"
    # An unknown mover is a new diaObject at every visit (no history); a known one has none.
    dia_object_id = 0 if known else base + ID_BLOCK - 1
    ss_object_id = SS_ID_BASE + (base - ID_BASE) // ID_BLOCK if known else 0
    if scene.edge is not None:
        side, width = scene.edge
        x = (
            rng.uniform(0, width),
            rng.uniform(DETECTOR[0] - width, DETECTOR[0]),
            rng.uniform(0, DETECTOR[0]),
            rng.uniform(0, DETECTOR[0]),
        )[side]
        y = (
            rng.uniform(0, DETECTOR[1]),
            rng.uniform(0, DETECTOR[1]),
            rng.uniform(0, width),
            rng.uniform(DETECTOR[1] - width, DETECTOR[1]),
        )[side]
    else:
        x, y = rng.uniform(15, DETECTOR[0] - 15), rng.uniform(15, DETECTOR[1] - 15)

    src = _blank(fields["diaSource"])
    snr = m.snr
    pos_err = 0.6 * scene.fwhm / max(snr, 1.0)
    # x/y (and RA/Dec) errors differ (real raErr/decErr 0.65-1.13) and correlate a little.
    x_err, y_err = pos_err * np.exp(rng.normal(-0.1, 0.2)), pos_err * np.exp(rng.normal(0.0, 0.2))
    ra_err, dec_err = x_err * ph.PIXEL_SCALE / 3600.0, y_err * ph.PIXEL_SCALE / 3600.0
    if m.moments is not None:
        ratio = (m.moments[0] + m.moments[1]) / (m.psf_moments[0] + m.psf_moments[1])
        # Rubin's extendedness is a model output: faint detections spread over 0-1 (median 0.5 at
        # S/N 5), bright point sources near 0 (known asteroids 0.00-0.08); wider than the PSF
        # pushes it up.
        z = -3.0 + 15.0 / max(snr, 1.0) + 6.0 * max(ratio - 1.2, 0.0) + rng.normal(0, 1.5)
        ext = _logistic(z)
        trail = float(np.hypot(info["trail_arcsec"], np.exp(rng.normal(0.0, 0.4))))
    else:
        ext, trail = None, None
    rel_logit = RELIABILITY_LOGIT[kind if name == "bogus" else name]
    reliability = _logistic(rel_logit + 1.2 * np.log(max(snr, 1.0) / 5.0) + rng.normal(0, 1.5))
    if rng.random() < RELIABILITY_PLACEHOLDER_SHARE:
        reliability = RELIABILITY_PLACEHOLDER
    cen = (
        slice(int(st.centre[1]) - 1, int(st.centre[1]) + 2),
        slice(int(st.centre[0]) - 1, int(st.centre[0]) + 2),
    )
    sat_any, sat_centre = bool(st.saturated.any()), bool(st.saturated[cen].any())
    cr = kind == "cosmic_ray" and rng.random() < 0.3
    streak = kind == "streak" and rng.random() < 0.6
    edge = scene.edge is not None
    # Any footprint with two strong lobes of opposite sign may be fit as a dipole.
    lobes = min(m.pos_lobe, -m.neg_lobe) > 0.4 * max(m.pos_lobe, -m.neg_lobe)
    is_dipole = (kind == "dipole" and rng.random() < 0.8) or (
        m.pos_lobe > 0 > m.neg_lobe and lobes and rng.random() < 0.5
    )
    values: dict[str, Any] = {
        "diaSourceId": dia_source_id,
        "visit": visit,
        "detector": detector,
        "diaObjectId": dia_object_id,
        "ssObjectId": ss_object_id,
        "parentDiaSourceId": 0,
        "midpointMjdTai": mjd,
        "ra": ra,
        "dec": dec,
        "raErr": ra_err,
        "decErr": dec_err,
        "ra_dec_Cov": rng.uniform(-0.4, 0.4) * ra_err * dec_err,
        "x": float(x),
        "xErr": x_err,
        "y": float(y),
        "yErr": y_err,
        "centroid_flag": False,
        "apFlux": m.ap_flux,
        "apFluxErr": m.ap_flux_err,
        "apFlux_flag": False,
        "apFlux_flag_apertureTruncated": False,
        "isNegative": m.psf_flux < 0,
        "snr": snr,
        "psfFlux": m.psf_flux,
        "psfFluxErr": m.psf_flux_err,
        "psfChi2": m.chi2,
        "psfNdata": ph.PSF_SIDE**2,
        "psfFlux_flag": False,
        "psfFlux_flag_edge": edge,
        "psfFlux_flag_noGoodPixels": False,
        "trailFlux": m.psf_flux * rng.uniform(0.95, 1.1),
        "trailFluxErr": m.psf_flux_err * float(np.exp(rng.normal(np.log(0.08), 0.8))),
        "trailRa": ra,
        "trailDec": dec,
        "trailLength": trail,
        "trailAngle": rng.uniform(-90, 90),
        "trailNdata": 0,
        "trail_flag_edge": edge,
        "dipoleNdata": 0,
        "scienceFlux": m.science_flux,
        "scienceFluxErr": m.science_flux_err,
        "forced_PsfFlux_flag": False,
        "forced_PsfFlux_flag_edge": edge,
        "forced_PsfFlux_flag_noGoodPixels": False,
        "templateFlux": m.template_flux,
        "templateFluxErr": m.template_flux_err,
        "ixxPSF": m.psf_moments[0],
        "iyyPSF": m.psf_moments[1],
        "ixyPSF": m.psf_moments[2],
        "shape_flag": m.moments is None,
        "shape_flag_no_pixels": False,
        "shape_flag_not_contained": False,
        "shape_flag_parent_source": False,
        "extendedness": ext,
        "reliability": reliability,
        "band": band,
        "isDipole": bool(is_dipole),
        "dipoleFitAttempted": bool(is_dipole or rng.random() < 0.1),
        "timeProcessedMjdTai": mjd + rng.uniform(0.0014, 0.003),
        "timeWithdrawnMjdTai": None,
        "bboxSize": int(info["bbox"]),
        "pixelFlags": bool(sat_any or cr or streak or edge),
        "pixelFlags_bad": False,
        "pixelFlags_cr": cr,
        "pixelFlags_crCenter": cr,
        "pixelFlags_edge": edge,
        "pixelFlags_nodata": edge,
        "pixelFlags_nodataCenter": False,
        "pixelFlags_interpolated": sat_any or cr,
        "pixelFlags_interpolatedCenter": sat_centre or cr,
        "pixelFlags_offimage": False,
        "pixelFlags_saturated": sat_any,
        "pixelFlags_saturatedCenter": sat_centre,
        "pixelFlags_suspect": sat_any,
        "pixelFlags_suspectCenter": sat_centre,
        "pixelFlags_streak": streak,
        "pixelFlags_streakCenter": streak,
        "pixelFlags_injected": False,
        "pixelFlags_injectedCenter": False,
        "pixelFlags_injected_template": False,
        "pixelFlags_injected_templateCenter": False,
        "glint_trail": kind == "glint" and rng.random() < 0.5,
        "exposureTime": EXPOSURE,
        "trail_flag": False,
    }
    if m.moments is not None:
        values.update(ixx=m.moments[0], iyy=m.moments[1], ixy=m.moments[2])
    if is_dipole:
        values.update(
            dipoleMeanFlux=(m.pos_lobe - m.neg_lobe) / 2.0,
            dipoleMeanFluxErr=m.psf_flux_err,
            dipoleFluxDiff=m.pos_lobe + m.neg_lobe,
            dipoleFluxDiffErr=m.psf_flux_err * 1.4,
            dipoleLength=m.lobe_separation,
            dipoleAngle=rng.uniform(-180, 180),
            dipoleChi2=m.chi2 * rng.uniform(0.5, 1.0),
            dipoleNdata=ph.PSF_SIDE**2,
        )
    src.update({k: v for k, v in values.items() if k in src})
    src = _py(src)

    prv: list[dict] = []
    forced: list[dict] = []
    if not first:
        t = _history_times(name, mjd, rng)
        lc = _light_curve(name, t, mjd, m.psf_flux, rng)
        for j, (tj, fj) in enumerate(zip(t, lc, strict=True)):
            err = m.psf_flux_err * np.exp(rng.normal(0, 0.15))
            obs = fj + rng.normal(0, err)
            bj = BANDS[int(rng.choice(6, p=BAND_WEIGHTS))]
            vj = int(_night_of(tj)) * 100000 + int(rng.integers(1, 1200))
            fs = _blank(fields["diaForcedSource"])
            fs.update(
                {
                    k: v
                    for k, v in {
                        "diaForcedSourceId": base + FORCED_ID_OFFSET + j,
                        "diaObjectId": dia_object_id,
                        "ra": ra,
                        "dec": dec,
                        "visit": vj,
                        "detector": detector,
                        "psfFlux": obs,
                        "psfFluxErr": err,
                        "midpointMjdTai": tj,
                        "scienceFlux": m.template_flux + obs,
                        "scienceFluxErr": err,
                        "band": bj,
                        "timeProcessedMjdTai": tj + 0.002,
                    }.items()
                    if k in fs
                }
            )
            forced.append(fs)
            if abs(obs) >= 5 * err:
                d = dict(src)
                d.update(
                    {
                        "diaSourceId": base + 1 + len(prv),
                        "visit": vj,
                        "midpointMjdTai": tj,
                        "psfFlux": obs,
                        "psfFluxErr": err,
                        "band": bj,
                        "snr": abs(obs) / err,
                        "isNegative": obs < 0,
                        "apFlux": obs,
                        "timeProcessedMjdTai": tj + 0.002,
                        "ra": ra + rng.normal(0, 1e-5),
                        "dec": dec + rng.normal(0, 1e-5),
                    }
                )
                prv.append(d)
        if not prv:  # a later detection has at least one earlier one
            d = dict(src)
            d.update(
                {
                    "diaSourceId": base + 1,
                    "midpointMjdTai": float(t[-1]),
                    "visit": int(_night_of(t[-1])) * 100000 + 7,
                }
            )
            prv.append(d)
    obj = None
    if dia_object_id:
        obj = _blank(fields["diaObject"])
        obj.update(
            {
                k: v
                for k, v in {
                    "diaObjectId": dia_object_id,
                    "validityStartMjdTai": mjd + 0.002,
                    "ra": ra,
                    "dec": dec,
                    "raErr": values["raErr"],
                    "decErr": values["decErr"],
                    "ra_dec_Cov": 0.0,
                    "nDiaSources": len(prv) + 1,
                    **{
                        f"{b}_psfFluxNdata": sum(s["band"] == b for s in prv) + (b == band)
                        for b in BANDS
                    },
                }.items()
                if k in obj
            }
        )
    ss = None
    if known:
        ss = _blank(fields["ssSource"])
        lon, lat = md.ecliptic(np.array([ra]), np.array([dec]))
        glon, glat = md.galactic(np.array([ra]), np.array([dec]))
        ss.update(
            {
                k: v
                for k, v in {
                    "diaSourceId": dia_source_id,
                    "ssObjectId": ss_object_id,
                    "designation": _designation(rng),
                    "eclLambda": float(lon[0]),
                    "eclBeta": float(lat[0]),
                    "galLon": float(glon[0]),
                    "galLat": float(glat[0]),
                    "elongation": rng.uniform(100, 180),
                    "phaseAngle": rng.uniform(0, 25),
                    "ephRa": ra + rng.normal(0, 1e-5),
                    "ephDec": dec + rng.normal(0, 1e-5),
                    "ephOffset": abs(rng.normal(0, 0.03)),
                    "diaDistanceRank": 1,
                }.items()
                if k in ss
            }
        )
    rotpa = float(rng.uniform(0, 360))
    cards = _wcs_cards(scene.size, st.centre, ra, dec, rotpa, x, y)
    record = _blank(fields["alert"])
    record.update(
        {
            "diaSourceId": dia_source_id,
            "observation_reason": "",
            "target_name": "",
            "diaSource": src,
            "prvDiaSources": [_py(d) for d in prv],
            "prvDiaForcedSources": [_py(d) for d in forced],
            "diaObject": _py(obj),
            "ssSource": _py(ss),
            "cutoutDifference": _fits(st.difference, st.var_difference, st.psf, cards),
            "cutoutScience": _fits(st.science, st.var_science, st.psf, cards),
            "cutoutTemplate": _fits(st.template, st.var_template, st.psf_template, cards),
        }
    )
    if "observation_reason" in record and fields["alert"]:
        types = {f["name"]: f["type"] for f in fields["alert"]}
        for k in ("observation_reason", "target_name"):
            if isinstance(types.get(k), list) and "null" in types[k]:
                record[k] = None
    object_id = str(dia_object_id) if dia_object_id else f"ss{ss_object_id}"
    label = {
        "candid": dia_source_id,
        "objectId": object_id,
        "class": name,
        "subtype": sub,
        "defect": "",
    }
    return record, label


def _designation(rng: np.random.Generator) -> str:
    """A provisional designation as the MPC writes them (``2019 AB123``)."""
    a, b = (chr(65 + int(x)) for x in rng.integers(0, 25, 2))
    return f"{int(rng.integers(1990, 2026))} {a}{b}{int(rng.integers(1, 300))}"


def _py(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    """numpy scalars → Python ones (fastavro's unions match Python types only)."""
    if rec is None:
        return None
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in rec.items()}


def _night_of(mjd: float) -> str:
    d = dt.date(1858, 11, 17) + dt.timedelta(days=float(mjd) - 0.5)
    return d.strftime("%Y%m%d")


_STATE: dict[str, Any] = {}


def _setup(schema_dir: str, version: str) -> tuple[Any, dict[str, Any]]:
    key = f"{schema_dir}|{version}"
    if key not in _STATE:
        parsed = _schema(schema_dir, version)
        _STATE[key] = (parsed, _record_fields(parsed))
    return _STATE[key]


def _arrow_type(t: Any, named: dict[str, Any]):
    import pyarrow as pa

    if isinstance(t, list):
        rest = [x for x in t if x != "null"]
        return _arrow_type(rest[0], named)
    if isinstance(t, str):
        if t in named:
            return _arrow_type(named[t], named)
        return {
            "long": pa.int64(),
            "int": pa.int32(),
            "double": pa.float64(),
            "float": pa.float32(),
            "boolean": pa.bool_(),
            "string": pa.string(),
            "bytes": pa.binary(),
        }[t]
    if t["type"] == "record":
        return pa.struct([pa.field(f["name"], _arrow_type(f["type"], named)) for f in t["fields"]])
    if t["type"] == "array":
        return pa.list_(_arrow_type(t["items"], named))
    return _arrow_type(t["type"], named)


def _parquet_bytes(records: list[dict], parsed: Any) -> bytes:
    """Records as one Parquet file (one column per alert field, as Fink's copies)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transforms.wire import named_types

    named = named_types(parsed)
    named.update({k.rsplit(".", 1)[-1]: v for k, v in list(named.items())})
    schema = pa.schema(
        [pa.field(f["name"], _arrow_type(f["type"], named)) for f in parsed["fields"]]
    )
    table = pa.Table.from_pylist(records, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _run_chunk(args: tuple[LsstPlan, int, str, str, str]) -> list[dict]:
    p, chunk, fmt, out_dir, schema_dir = args
    import fastavro

    from transforms import wire

    parsed, fields = _setup(schema_dir, p.version)
    items = make_chunk(p, chunk, fields)
    records = [r for r, _ in items]
    name = f"alerts-{p.night}-{chunk:05d}"
    if fmt == "avro":
        with open(Path(out_dir, f"{name}.avro"), "wb") as fh:
            # A sync marker from the arguments (fastavro draws a random one): same bytes each run.
            marker = hashlib.md5(f"{p.seed}/{p.night}/{chunk}".encode()).digest()
            fastavro.writer(fh, parsed, records, codec="deflate", sync_marker=marker)
    elif fmt == "parquet":
        Path(out_dir, f"{name}.parquet").write_bytes(_parquet_bytes(records, parsed))
    else:
        major, minor = (int(x) for x in p.version.split("."))
        sid = wire.lsst_schema_id(major, minor)
        for r in records:
            Path(out_dir, f"{r['diaSourceId']}.wire").write_bytes(wire.encode_wire(sid, parsed, r))
    return [label for _, label in items]


def _check_schema_dir(schema_dir: str | None) -> str:
    found = schema_dir or default_schema_dir()
    if not found:
        raise ValueError(
            "no Rubin schemas: give --schema-dir (a copy of lsst-alert-packet's schema/ tree) "
            "or pip install lsst-alert-packet"
        )
    if not Path(found).is_dir():
        raise ValueError(f"--schema-dir {found}: not a directory")
    return found


def simulate_lsst(
    n: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    night: str = "20260305",
    mix: str | dict[str, float] | None = None,
    fmt: str = "avro",
    first_detections: bool = False,
    workers: int | None = None,
    schema_dir: str | None = None,
    version: str = "11.1",
) -> SimulationSummary:
    """Write ``n`` simulated Rubin alerts and ``labels.csv`` to ``out_dir``.

    Parameters
    ----------
    n
        Number of alerts.
    out_dir
        Output directory (created).
    seed
        Random seed; the output depends only on the arguments, not on ``workers``.
    night
        ``YYYYMMDD``: Rubin's ``dayObs`` (the date at UTC−12 h) of the night.
    mix
        Class fractions (``AGN=0.2,SN=0.2,...``); default equal, or the first-detection mix.
    fmt
        ``avro`` (containers of 128 alerts), ``parquet`` or ``wire`` (one message per file).
    first_detections
        Only first detections (empty histories), in :data:`FIRST_DETECTION_MIX` unless ``mix``.
    workers
        Worker processes (default CPU count).
    schema_dir
        Directory of the official schemas (default: the installed ``lsst-alert-packet``'s).
    version
        Schema version written: ``10.0`` or ``11.1``.

    Returns
    -------
    SimulationSummary
        Counts, paths and throughput.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} for --survey lsst, got {fmt!r}")
    schemas = _check_schema_dir(schema_dir)
    pl = plan(n, seed, night, mix, first_detections, version)
    _setup(schemas, version)  # a missing version fails here, before any worker starts
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(pl, c, fmt, str(out), schemas) for c in range(len(pl.chunks) - 1)]
    workers = max(1, workers or os.cpu_count() or 1)
    classes: dict[str, int] = {}
    objects: set[str] = set()
    labels_path = out / "labels.csv"
    with labels_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        with chunk_results(_run_chunk, jobs, workers) as results:
            for labels in results:
                writer.writerows(labels)
                for row in labels:
                    classes[row["class"]] = classes.get(row["class"], 0) + 1
                    objects.add(row["objectId"])
    seconds = time.perf_counter() - t0
    return SimulationSummary(
        n_alerts=n,
        n_objects=len(objects),
        out_dir=out,
        labels_path=labels_path,
        archive_path=None,
        class_counts=classes,
        defect_counts={},
        seconds=seconds,
        alerts_per_second=n / seconds if seconds > 0 else 0.0,
    )


def make_lsst_alerts(
    n: int,
    seed: int = 0,
    night: str = "20260305",
    mix: str | dict[str, float] | None = None,
    first_detections: bool = False,
    schema_dir: str | None = None,
    version: str = "11.1",
) -> list[tuple[dict, dict]]:
    """The alerts of :func:`simulate_lsst` as in-memory ``(record, label)`` pairs (for tests)."""
    schemas = _check_schema_dir(schema_dir)
    pl = plan(n, seed, night, mix, first_detections, version)
    _, fields = _setup(schemas, version)
    rows: list[tuple[dict, dict]] = []
    for c in range(len(pl.chunks) - 1):
        rows.extend(make_chunk(pl, c, fields))
    return rows
