"""Draw simulated ZTF alerts: plan the night, then build alerts chunk by chunk.

* :func:`plan_night` (cheap, in the parent process) fixes every object's class and number of alerts,
  every alert's exposure time, readout channel, ``pid`` and a unique ``candid``.
* :func:`make_chunk` (in workers) draws each object's sky position and scene, each alert's observing
  conditions, renders the cutouts (:mod:`simulator.physics`) and assembles complete alert records
  whose measured fields (``magpsf``, ``sigmapsf``, ``isdiffpos``, ``scorr``...) are measured on the
  rendered difference image. A chunk's random stream depends only on ``(seed, chunk index)`` and
  chunks are fixed groups of whole objects, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator import metadata as md
from simulator import physics as ph

__all__ = [
    "BOGUS_KINDS",
    "BOGUS_WEIGHTS",
    "CHUNK_ALERTS",
    "DEFAULT_MIX",
    "DEFECTS",
    "DRB_START_JD",
    "EXPOSURE_STEP",
    "EXTRA_NOISE",
    "FIRST_DETECTION_MIX",
    "MASKED_FRACTION",
    "NULLABLE",
    "PSF_ERR_FACTOR",
    "REVISIT",
    "SIGMAPSF_FLOOR",
    "SKY",
    "ZP",
    "ZTF_START_JD",
    "MeasuredChunk",
    "NightPlan",
    "ObjectTruth",
    "make_chunk",
    "parse_mix",
    "plan_night",
    "sample_objects",
]

CLASS_NAMES = md.CLASS_NAMES
DEFAULT_MIX = {"AGN": 0.2, "SN": 0.2, "VS": 0.2, "asteroid": 0.2, "bogus": 0.2}
DEFECTS = ("nan_pixels", "edge_stamp", "null_fields")
#: Nullable candidate fields that the ``null_fields`` defect may blank (SPEC §3).
NULLABLE = ("fwhm", "chinr", "sharpnr", "classtar", "diffmaglim", "drb")
#: The nine kinds of bogus ALeRCE's experts catalogued (Carrasco-Davis et al. 2021, Appendix E),
#: by our names: cosmic ray; bad pixel (``hot_pixel``); bad pixel columns (``bad_column``); region
#: near a saturated star (``saturation``); near bad difference (``dipole``: the candidate is a
#: lobe beside a misregistered star); ghost; bad difference (``bad_difference``: a misaligned and
#: mismatched template, dipoles and rings at every source, the candidate on a bright star);
#: extended dark region (``dark_region``); satellite (``satellite``: a streak, or glints in a line).
#: The order is fixed: a kind's index is its code in labels and tests.
BOGUS_KINDS = ph.ARTEFACTS[1:]  # physics.py draws them; its code 0 is "none"
#: The mixture: half are residuals of stars (saturated, near or at a bad difference), what real
#: first detections ALeRCE calls bogus mostly are (docs/calibration.md).
BOGUS_WEIGHTS = (0.10, 0.07, 0.06, 0.14, 0.16, 0.07, 0.22, 0.07, 0.11)
#: Class mix of a night's first detections (``simulate --first-detections``): ALeRCE estimates
#: ~60% of first detections are bogus (paper, Appendix E); asteroids are the next largest share
#: of new objects on the ecliptic, variable stars in the plane.
FIRST_DETECTION_MIX = {"AGN": 0.04, "SN": 0.06, "VS": 0.14, "asteroid": 0.16, "bogus": 0.60}
#: Target alerts per chunk (a chunk never splits an object).
CHUNK_ALERTS = 128
#: Exposure cadence [day]: 30 s exposure + ~9 s overhead.
EXPOSURE_STEP = 39.0 / 86400.0
#: Gap between an object's alerts in one night [day] (ZTF revisits after 30-90 min).
REVISIT = (30.0 / 1440.0, 90.0 / 1440.0)
ZP = {1: 26.30, 2: 26.20, 3: 25.75}  # median zero points [mag] for 30 s, g/r/i
SKY = {1: 140.0, 2: 230.0, 3: 380.0}  # median sky [DN]
ZTF_START_JD = 2458194.5  # 2018-03-20, start of survey operations
#: ZTF alerts carry the deep real/bogus score ``drb`` from schema 3.3 on (mid-2019; the shared real
#: alerts have none before 2019-11 except a 3.3 re-issue): earlier simulated nights write it null.
DRB_START_JD = 2458665.5  # 2019-07-01, approximate
#: Extra pixel noise of real ZTF science cutouts over sky + read noise (flat-field, unresolved
#: sources): real first detections have median border noise 6.4 DN (science) and 5.85 DN
#: (difference) [ratio].
EXTRA_NOISE = 1.05
#: Real ZTF PSF-fit flux errors exceed the white-noise ideal (correlated noise of the PSF-matched
#: difference, PSF mismatch): with 1.75 the simulated 5-sigma limits ``diffmaglim`` have median
#: 20.7 mag, as the real first detections (20.65; 20.3 over all real alerts) [ratio].
PSF_ERR_FACTOR = 1.75
#: Floor of ``sigmapsf`` [mag]: bright real alerts never go below ~0.015-0.02 mag (calibration).
SIGMAPSF_FLOOR = 0.017


@dataclass
class NightPlan:
    """Objects and alerts of one simulated night (fixed before any image is drawn).

    Attributes
    ----------
    cls
        ``(M,)`` class index per object.
    first_alert
        ``(M + 1,)`` index of each object's first alert (CSR offsets into the alert arrays).
    jd, rcid, pid, candid
        ``(N,)`` per-alert exposure time [day], readout channel, processing id, candidate id.
    chunks
        ``(C + 1,)`` object offsets of the chunks.
    """

    cls: np.ndarray
    first_alert: np.ndarray
    jd: np.ndarray
    rcid: np.ndarray
    pid: np.ndarray
    candid: np.ndarray
    chunks: np.ndarray
    nid: int
    night: str
    seed: int
    defects: float
    first_detections: bool = False

    @property
    def n_alerts(self) -> int:
        return int(self.jd.size)


def parse_mix(mix: str | dict[str, float] | None) -> dict[str, float]:
    """Parse ``AGN=0.2,SN=0.2,...`` (or a dict) into normalised class fractions.

    Raises
    ------
    ValueError
        Unknown class, negative or non-numeric fraction, or all fractions zero.
    """
    if mix is None:
        return dict(DEFAULT_MIX)
    if isinstance(mix, str):
        items = {}
        for part in filter(None, (p.strip() for p in mix.split(","))):
            name, _, value = part.partition("=")
            if name.strip() in items:
                raise ValueError(f"class {name.strip()!r} given twice in the mix")
            try:
                items[name.strip()] = float(value)
            except ValueError as e:
                raise ValueError(f"bad mix entry {part!r}: expected CLASS=FRACTION") from e
        mix = items
    unknown = set(mix) - set(CLASS_NAMES)
    if unknown:
        raise ValueError(f"unknown classes in mix: {sorted(unknown)}; use {CLASS_NAMES}")
    if not all(math.isfinite(v) and v >= 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix fractions must be >= 0 and not all zero: {mix}")
    total = sum(mix.values())
    return {c: mix.get(c, 0.0) / total for c in CLASS_NAMES}


def plan_night(
    n: int,
    seed: int = 0,
    night: str = "20180815",
    mix: str | dict[str, float] | None = None,
    detections_per_object: int = 1,
    defects: float = 0.0,
    first_detections: bool = False,
) -> NightPlan:
    """Decide classes, alert counts, times and ids for ``n`` alerts.

    Parameters
    ----------
    n
        Number of alerts.
    seed
        Random seed.
    night
        ``YYYYMMDD`` UT date of the night.
    mix
        Class fractions (of objects), see :func:`parse_mix`.
    detections_per_object
        Maximum alerts per object in the night (asteroids always get one: they move).
    defects
        Fraction of alerts that get a defect.
    first_detections
        Every object is new tonight (no earlier detection, one alert each; with
        ``detections_per_object`` > 1 a ValueError), in the class mix of
        :data:`FIRST_DETECTION_MIX` unless ``mix`` says otherwise: the night production
        classifies.

    Returns
    -------
    NightPlan
        The plan; alert ``i`` belongs to object ``searchsorted(first_alert, i, 'right') - 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if detections_per_object < 1:
        raise ValueError("detections_per_object must be >= 1")
    if not 0.0 <= defects <= 1.0:
        raise ValueError("defects must be a fraction in [0, 1]")
    if first_detections:
        if detections_per_object > 1:
            raise ValueError(
                "first detections are one alert per object: drop --detections-per-object"
            )
        mix = FIRST_DETECTION_MIX if mix is None else mix
    fractions = parse_mix(mix)
    rng = np.random.default_rng([seed, 1])
    probs = np.array([fractions[c] for c in CLASS_NAMES])
    cls = rng.choice(len(CLASS_NAMES), size=n, p=probs)
    counts = rng.integers(1, detections_per_object + 1, size=n)
    counts[cls == CLASS_NAMES.index("asteroid")] = 1
    total = np.cumsum(counts)
    m = int(np.searchsorted(total, n)) + 1
    cls, counts = cls[:m], counts[:m]
    counts[-1] -= int(total[m - 1] - n)
    first = np.concatenate([[0], np.cumsum(counts)])

    jd_start, jd_end = md.night_window(night)
    n_slots = int((jd_end - jd_start) / EXPOSURE_STEP)
    gaps = rng.uniform(*REVISIT, size=n)
    obj_of = np.repeat(np.arange(m), counts)
    k = np.arange(n) - first[obj_of]
    span = np.zeros(m)
    np.add.at(span, obj_of[k > 0], gaps[k > 0])
    t0 = jd_start + rng.uniform(0, np.maximum(jd_end - jd_start - span, 0.01))
    offs = np.where(k > 0, gaps, 0.0)
    cum = np.cumsum(offs)
    cum -= np.repeat(cum[first[:-1]], counts)
    slot = np.clip(((t0[obj_of] + cum - jd_start) / EXPOSURE_STEP).astype(int), 0, n_slots - 1)
    # Later alerts of one object must be strictly later exposures.
    for _ in range(detections_per_object):
        bump = (k > 0) & (slot <= np.roll(slot, 1))
        if not bump.any():
            break
        slot[bump] = np.roll(slot, 1)[bump] + 1
    jd = jd_start + slot * EXPOSURE_STEP
    rcid = rng.integers(0, 64, size=n)
    nid = md.night_id(night)
    frac = np.rint((jd % 1.0 + 0.5) % 1.0 * 1e5).astype(np.int64)  # fraction of the UT day
    pid = nid * 10**9 + frac * 10**4 + rcid * 100 + 15
    order = np.argsort(pid, kind="stable")
    spid = pid[order]
    start = np.r_[0, np.flatnonzero(np.diff(spid)) + 1]
    rank = np.arange(n) - np.repeat(start, np.diff(np.r_[start, n]))
    tblid = np.empty(n, dtype=np.int64)
    tblid[order] = rank
    candid = pid * 10**6 + 10000 + tblid
    # Chunks: whole objects, ~CHUNK_ALERTS alerts each.
    bounds = np.searchsorted(first, np.arange(CHUNK_ALERTS, n, CHUNK_ALERTS))
    chunks = np.unique(np.concatenate([[0], bounds, [m]]))
    return NightPlan(
        cls, first, jd, rcid, pid, candid, chunks, nid, night, seed, defects, first_detections
    )


def _obs(fid: np.ndarray, rng: np.random.Generator) -> tuple[ph.Observation, np.ndarray]:
    """Observing conditions and zero points for alerts in filters ``fid``."""
    n = fid.size
    zp_med = np.select([fid == 1, fid == 2], [ZP[1], ZP[2]], ZP[3])
    clouds = np.where(rng.random(n) < 0.2, rng.exponential(0.15, n), 0.0)
    zp = zp_med + rng.normal(0, 0.05, n) - clouds
    # Median 1.8": the Gaussian-weighted FWHM of real first detections is 1.81 px (science).
    seeing = np.clip(np.exp(rng.normal(np.log(1.8), 0.2, n)), 1.1, 4.5)  # [arcsec]
    seeing_ref = np.clip(np.exp(rng.normal(np.log(1.7), 0.1, n)), 1.1, 2.8)
    sky_med = np.select([fid == 1, fid == 2], [SKY[1], SKY[2]], SKY[3])
    sky = sky_med * np.exp(rng.normal(0, 0.35, n))
    sigma = np.sqrt(sky * ph.GAIN + ph.READ_NOISE**2) / ph.GAIN * EXTRA_NOISE
    nframes = np.where(rng.random(n) < 0.6, 15, rng.integers(15, 45, n)).astype(float)
    obs = ph.Observation(
        fwhm_sci=seeing / ph.PIXEL_SCALE,
        fwhm_ref=seeing_ref / ph.PIXEL_SCALE,
        # Real ZTF cores are close to Gaussian: with beta 2.5-4.5 the Gaussian-weighted moment FWHM
        # of simulated science sources was 2.59 px against 1.81 px in real first detections.
        beta_sci=rng.uniform(4.0, 8.0, n),
        beta_ref=rng.uniform(4.0, 8.0, n),
        sky_sci=sky,
        sky_ref=sky * (1 + rng.normal(0, 0.01, n)),
        sigma_sci=sigma,
        sigma_ref=sigma / np.sqrt(nframes / 1.2),
        nframes_ref=nframes,
    )
    return obs, zp


@dataclass
class ObjectTruth:
    """Object-level properties shared by all alerts of an object (arrays of length ``M``)."""

    cls: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    gal_b: np.ndarray
    kind: np.ndarray  # subtype code: bogus kind index, 1 = trailed asteroid, 1 = AGN with host...
    mag_ref: np.ndarray  # central static source [mag] (inf if none)
    mag_delta: np.ndarray  # SN/asteroid brightness or variability amplitude [mag]
    host_mag: np.ndarray
    host_dx: np.ndarray
    host_dy: np.ndarray
    host_re: np.ndarray
    host_n: np.ndarray
    host_q: np.ndarray
    host_pa: np.ndarray
    trail_len: np.ndarray
    trail_pa: np.ndarray
    star_dx: np.ndarray  # (M, K) offsets from the candidate [pixels]
    star_dy: np.ndarray
    star_mag: np.ndarray  # inf pads
    star_sg: np.ndarray  # PS1 star/galaxy score of each field source
    shift: np.ndarray  # (M, 2) misregistration [pixels]
    art_amp: np.ndarray
    art_size: np.ndarray
    art_angle: np.ndarray
    psf_err: np.ndarray | None = None  # relative FWHM error of the matching kernel
    scale_bias: np.ndarray | None = None  # flux-scale error of the matched template [ratio]


def sample_objects(cls: np.ndarray, jd: np.ndarray, rng: np.random.Generator) -> ObjectTruth:
    """Draw positions, scenes and artefacts for objects of classes ``cls`` (SPEC §2).

    Parameters
    ----------
    cls
        ``(M,)`` class indices.
    jd
        ``(M,)`` time of each object's first alert [day].
    rng
        Random generator.

    Returns
    -------
    ObjectTruth
        Everything about the objects that does not change between their alerts.
    """
    m = cls.size
    is_ = {c: cls == i for i, c in enumerate(CLASS_NAMES)}
    ra, dec = md.sample_positions(cls, jd, rng)
    _, b = md.galactic(ra, dec)
    inf = np.full(m, np.inf)

    # Field stars: density [per 63x63 stamp, to ~22 mag] rising steeply into the plane.
    lam = (1.5 + 70.0 * np.exp(-np.abs(b) / 7.0)) * (ph.PAD / ph.STAMP) ** 2
    nstar = np.minimum(rng.poisson(lam), 250)
    k = max(int(nstar.max(initial=0)), 1)
    live = np.arange(k)[None, :] < nstar[:, None]
    half = ph.PAD / 2
    sdx = rng.uniform(-half, half, (m, k))
    sdy = rng.uniform(-half, half, (m, k))
    # Luminosity function N(<m) ~ 10^(0.3 m) between 12 and 22 mag.
    smag = 22.0 + np.log10(rng.uniform(10 ** (0.3 * (12 - 22)), 1.0, (m, k))) / 0.3
    # Keep the candidate position clear where the class needs "no source in the reference".
    needs_clear = (is_["SN"] | is_["asteroid"] | is_["bogus"])[:, None]
    clear = needs_clear & (np.hypot(sdx, sdy) < 5.0)
    smag = np.where(live & ~clear, smag, np.inf)
    ssg = np.where(
        rng.random((m, k)) < 0.9, rng.uniform(0.85, 1.0, (m, k)), rng.uniform(0, 0.3, (m, k))
    )

    kind = np.zeros(m, dtype=int)
    mag_ref, mag_delta = inf.copy(), np.zeros(m)
    host_mag = inf.copy()
    host_dx, host_dy = np.zeros(m), np.zeros(m)
    host_re = rng.uniform(1.5, 6.0, m)
    host_n = rng.uniform(0.8, 4.0, m)
    host_q = rng.uniform(0.35, 1.0, m)
    host_pa = rng.uniform(0, np.pi, m)
    trail_len, trail_pa = np.zeros(m), rng.uniform(0, np.pi, m)
    shift = rng.normal(0, 0.04, (m, 2))
    art_amp, art_size, art_angle = np.zeros(m), np.zeros(m), rng.uniform(0, 2 * np.pi, m)

    # AGN: a nucleus in both images, usually at the centre of a visible host galaxy.
    a = is_["AGN"]
    # Two thirds are quasars without a visible host (point-like in PS1: ALeRCE's AGN class is built
    # from quasar catalogues, and its real AGN have sgscore1 ~ 1 and chinr ~ 0.6).
    with_host = a & (rng.random(m) < 0.35)
    kind[with_host] = 1
    host_mag[with_host] = rng.uniform(16.5, 20.0, int(with_host.sum()))
    mag_ref[a] = rng.uniform(17.0, 20.5, int(a.sum()))
    mag_delta[a] = rng.normal(0, 0.3, int(a.sum()))
    host_dx[a] = rng.normal(0, 0.1, int(a.sum()))
    host_dy[a] = rng.normal(0, 0.1, int(a.sum()))
    # SN: new point source, offset from its host (85% have a visible host).
    s = is_["SN"]
    sn_host = s & (rng.random(m) < 0.85)
    kind[sn_host] = 1
    ns = int(sn_host.sum())
    host_mag[sn_host] = rng.uniform(15.5, 20.5, ns)
    host_re[sn_host] = rng.uniform(2.0, 8.0, ns)
    off = host_re[sn_host] * np.abs(rng.normal(0, 0.8, ns)) + 0.5
    ang = rng.uniform(0, 2 * np.pi, ns)
    host_dx[sn_host], host_dy[sn_host] = off * np.cos(ang), off * np.sin(ang)
    mag_delta[s] = _faint_weighted(16.5, 20.5, int(s.sum()), rng)
    # VS: a star in both images, in a field whose crowding follows |b|.
    v = is_["VS"]
    mag_ref[v] = rng.uniform(13.5, 20.0, int(v.sum()))
    amp = rng.normal(0, 0.35, int(v.sum()))
    mag_delta[v] = np.sign(amp) * np.maximum(np.abs(amp), 0.05)
    # Asteroids: science-only, 15% trailed (fast movers).
    t = is_["asteroid"]
    mag_delta[t] = _faint_weighted(17.0, 20.8, int(t.sum()), rng)
    trailed = t & (rng.random(m) < 0.15)
    kind[trailed] = 1
    trail_len[trailed] = rng.uniform(3.0, 12.0, int(trailed.sum()))
    # Bogus: one artefact per object.
    g = np.flatnonzero(is_["bogus"])
    bk = rng.choice(len(BOGUS_KINDS), size=g.size, p=BOGUS_WEIGHTS)
    kind[g] = bk

    def sel(name: str) -> np.ndarray:
        return g[bk == BOGUS_KINDS.index(name)]

    cr, hp, bc = sel("cosmic_ray"), sel("hot_pixel"), sel("bad_column")
    # Amplitudes [DN] start near the 5-sigma PSF-fit threshold (~100 DN for one pixel): real
    # bogus are faint (sigmapsf median 0.145 mag among the real alerts ALeRCE calls bogus).
    art_amp[cr], art_size[cr] = _loguniform(100, 1500, cr.size, rng), rng.integers(0, 4, cr.size)
    art_amp[hp] = _loguniform(100, 3000, hp.size, rng)
    art_amp[bc] = rng.uniform(40, 300, bc.size)
    sat, dip, gh = sel("saturation"), sel("dipole"), sel("ghost")
    mag_ref[sat], art_size[sat] = rng.uniform(9.0, 12.0, sat.size), rng.uniform(2.0, 5.0, sat.size)
    # A misaligned subtraction leaves its lobes beside the star, and the candidate is the
    # positive lobe 1-3 px from the star's centre (real bogus near stars have distpsnr1 ~ 3.8").
    dr, dphi = rng.uniform(1.0, 3.0, dip.size), rng.uniform(0, 2 * np.pi, dip.size)
    sdx[dip, 0], sdy[dip, 0] = dr * np.cos(dphi), dr * np.sin(dphi)
    smag[dip, 0] = rng.uniform(14.5, 18.5, dip.size)
    ssg[dip, 0] = rng.uniform(0.85, 1.0, dip.size)
    dshift = rng.uniform(0.2, 0.7, dip.size)
    # A reference shifted this way (physics.py draws it at -shift) puts the candidate on the
    # positive lobe for 60%, else on the negative lobe (isdiffpos 'f', as many star residuals).
    dang = dphi + np.where(rng.random(dip.size) < 0.6, np.pi, 0.0)
    shift[dip] = np.stack([dshift * np.cos(dang), dshift * np.sin(dang)], axis=1)
    art_amp[gh], art_size[gh] = rng.uniform(15, 80, gh.size), rng.uniform(5, 12, gh.size)
    psf_err, scale_bias = np.zeros(m), np.zeros(m)
    # Bad difference: the candidate sits on a bright star (PS1 mag 13-16.5, the real ones ALeRCE
    # calls bogus: sgscore1 ~ 1, distpsnr1 < 0.5") in a crowded field, and the template is both
    # mis-scaled, slightly misaligned and PSF-mismatched: residuals at every star.
    bd, dark, sat_trail = sel("bad_difference"), sel("dark_region"), sel("satellite")
    mag_ref[bd] = rng.uniform(13.0, 16.5, bd.size)
    # Crowding: Poisson(40) more field stars than the latitude gives, each object on its own
    # (the slots beyond its own stars; more slots when the chunk has too few).
    n_extra = rng.poisson(40.0, bd.size)
    need = int((nstar[bd] + n_extra).max(initial=0))
    if need > k:
        more = need - k
        sdx = np.concatenate([sdx, rng.uniform(-half, half, (m, more))], axis=1)
        sdy = np.concatenate([sdy, rng.uniform(-half, half, (m, more))], axis=1)
        smag = np.concatenate([smag, np.full((m, more), np.inf)], axis=1)
        ssg = np.concatenate([ssg, rng.uniform(0.85, 1.0, (m, more))], axis=1)
        clear = np.concatenate([clear, needs_clear & (np.hypot(sdx[:, k:], sdy[:, k:]) < 5.0)], 1)
        k = need
    slot = np.arange(k)[None, :]
    fill = (slot >= nstar[bd][:, None]) & (slot < (nstar[bd] + n_extra)[:, None]) & ~clear[bd]
    smag[bd] = np.where(
        fill,
        22.0 + np.log10(rng.uniform(10 ** (0.3 * (12 - 22)), 1.0, (bd.size, k))) / 0.3,
        smag[bd],
    )
    # Small errors on a bright star: the residual is a few per cent of its flux. Real ones are
    # ~3 mag fainter than the star, PSF-like and mostly negative (isdiffpos 'f' for 13 of 15 in
    # ../shared/data): a flux-scale error of the template (2-8%, 75% too bright) dominates, with
    # a little misregistration (<= 0.15 px) and PSF mismatch (2-6%) on top.
    bshift, bang = rng.uniform(0.0, 0.15, bd.size), rng.uniform(0, 2 * np.pi, bd.size)
    shift[bd] = np.stack([bshift * np.cos(bang), bshift * np.sin(bang)], axis=1)
    sign = np.where(rng.random(bd.size) < 0.75, 1.0, -1.0)
    scale_bias[bd] = sign * rng.uniform(0.02, 0.08, bd.size)
    psf_err[bd] = rng.choice([-1.0, 1.0], bd.size) * rng.uniform(0.02, 0.06, bd.size)
    # Extended dark region: diffuse reference-only light, 20-150 DN peak, sigma 4-10 px, its
    # centre 2.5-6 px from the candidate (physics.render_triplet).
    art_amp[dark], art_size[dark] = rng.uniform(20, 150, dark.size), rng.uniform(4, 10, dark.size)
    # Satellite: a streak of 50-500 DN/px, or (art_size >= 2, 40%) glints in a line.
    art_amp[sat_trail] = _loguniform(50, 500, sat_trail.size, rng)
    art_size[sat_trail] = np.where(rng.random(sat_trail.size) < 0.4, 3.0, 0.0)
    return ObjectTruth(
        cls,
        ra,
        dec,
        b,
        kind,
        mag_ref,
        mag_delta,
        host_mag,
        host_dx,
        host_dy,
        host_re,
        host_n,
        host_q,
        host_pa,
        trail_len,
        trail_pa,
        sdx,
        sdy,
        smag,
        ssg,
        shift,
        art_amp,
        art_size,
        art_angle,
        psf_err,
        scale_bias,
    )


def _faint_weighted(lo: float, hi: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Magnitudes in ``[lo, hi]`` with counts rising as ``10^(0.25 m)`` (more faint transients).

    Real first detections have median magpsf 19.5 (10th-90th percentile 17.4-20.1 [mag]).
    """
    return hi + np.log10(rng.uniform(10 ** (0.25 * (lo - hi)), 1.0, n)) / 0.25


def _flux(mag: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """Total flux [DN] of magnitude ``mag`` for zero point ``zp`` (inf mag -> 0)."""
    return np.where(np.isfinite(mag), 10 ** (-0.4 * (np.where(np.isfinite(mag), mag, 0) - zp)), 0)


def _psf_fit(diff: np.ndarray, p: np.ndarray, sigma_bkg: np.ndarray):
    """PSF-fit flux and its 1-sigma error on the difference image [DN], for unit PSFs ``p``."""
    p2 = (p * p).sum(axis=(1, 2))
    flux = (np.nan_to_num(diff) * p).sum(axis=(1, 2)) / p2
    return flux, sigma_bkg / np.sqrt(p2)


def _redrawn(_superseded: np.ndarray, value: np.ndarray) -> list:
    """``value`` as a list; the superseded draw from the main stream is discarded.

    Keeping the old draw kept every later field, image and history of a seed unchanged while the
    field itself was recalibrated. (Issue 24's bogus kinds and coverage changed the draws of every
    class: a model's training set is reproduced at the commit its documentation names.)
    """
    return value.tolist()


def _f32(x) -> list:
    """Round through float32 so values equal what an Avro float stores."""
    return np.asarray(x, dtype=np.float32).astype(float).tolist()


@dataclass(frozen=True)
class MeasuredChunk:
    """One chunk's alerts as :func:`make_chunk` drew, rendered and measured them.

    Everything :func:`_assemble` turns into alert records and label rows, besides the plan and the
    random stream. Per-alert arrays have length ``N`` (the chunk's alerts, in plan order); the
    chunk's objects number ``M``.

    Attributes
    ----------
    truth
        Object-level truth of the chunk's ``M`` objects.
    obj
        ``(N,)`` int: each alert's object, index into ``truth``'s arrays.
    kidx
        ``(N,)`` int: rank of the alert among its object's alerts tonight (0 = the first).
    cls
        ``(N,)`` int: class per alert, index into :data:`CLASS_NAMES` (``truth.cls[obj]``).
    fid
        ``(N,)`` int: filter of the exposure (1 = g, 2 = r, 3 = i).
    zp
        ``(N,)`` photometric zero point of the science exposure [mag].
    obs
        Observing conditions per alert (seeing [pixels], sky and noise [DN], reference depth).
    trail_len
        ``(N,)`` length of the science-only trail [pixels] (0 unless a trailed asteroid).
    sci, ref, diff
        ``(N, 63, 63)`` float32 science, PSF-matched reference and difference (science minus
        reference) cutouts [DN]; NaN where saturated.
    positive
        ``(N,)`` bool: the PSF-fit flux on the difference is >= 0 (``isdiffpos`` "t").
    magpsf
        ``(N,)`` PSF-fit magnitude of the detection [mag].
    sigmapsf
        ``(N,)`` its 1-sigma error [mag], floored at :data:`SIGMAPSF_FLOOR`.
    diffmaglim
        ``(N,)`` 5-sigma limiting magnitude of the difference image [mag].
    snr
        ``(N,)`` signal-to-noise ratio of the reported flux (at least 5: alerts are detections).
    """

    truth: ObjectTruth
    obj: np.ndarray
    kidx: np.ndarray
    cls: np.ndarray
    fid: np.ndarray
    zp: np.ndarray
    obs: ph.Observation
    trail_len: np.ndarray
    sci: np.ndarray
    ref: np.ndarray
    diff: np.ndarray
    positive: np.ndarray
    magpsf: np.ndarray
    sigmapsf: np.ndarray
    diffmaglim: np.ndarray
    snr: np.ndarray


def make_chunk(plan: NightPlan, chunk: int) -> list[tuple[dict, dict]]:
    """Build the alerts of one chunk of the plan.

    Parameters
    ----------
    plan
        The night plan.
    chunk
        Chunk index (``0 <= chunk < len(plan.chunks) - 1``).

    Returns
    -------
    list of (dict, dict)
        ``(alert record, label row)`` per alert, in plan order. Label rows carry ``candid``,
        ``objectId``, ``class``, ``subtype`` and ``defect``.
    """
    rng = np.random.default_rng([plan.seed, 2, chunk])
    o0, o1 = int(plan.chunks[chunk]), int(plan.chunks[chunk + 1])
    a0, a1 = int(plan.first_alert[o0]), int(plan.first_alert[o1])
    counts = np.diff(plan.first_alert[o0 : o1 + 1])
    obj = np.repeat(np.arange(o1 - o0), counts)  # local object index per alert
    kidx = np.arange(a1 - a0) - (plan.first_alert[o0:o1] - a0)[obj]
    jd = plan.jd[a0:a1]
    truth = sample_objects(plan.cls[o0:o1], jd[kidx == 0], rng)
    n = a1 - a0
    cls = truth.cls[obj]
    fid = rng.choice([1, 2, 3], size=n, p=[0.45, 0.52, 0.03])
    obs, zp = _obs(fid, rng)

    # Per-alert scene: object truth converted to fluxes with this exposure's zero point.
    x0, y0 = 31.0 + rng.uniform(-0.5, 0.5, n), 31.0 + rng.uniform(-0.5, 0.5, n)
    ref_mag = truth.mag_ref[obj]
    cref = _flux(ref_mag, zp)
    is_var = (cls == CLASS_NAMES.index("AGN")) | (cls == CLASS_NAMES.index("VS"))
    dm = truth.mag_delta[obj] + rng.normal(0, 0.03, n)  # a little change between alerts
    delta = np.where(is_var, cref * (10 ** (-0.4 * dm) - 1.0), _flux(dm, zp))
    delta = np.where(cls == CLASS_NAMES.index("bogus"), 0.0, delta)
    # Real detections pass the 5-sigma threshold: keep the change above ~6 sigma.
    sig_bkg = np.sqrt(obs.sigma_sci**2 + obs.sigma_ref**2 * 0.5)
    sig_psf = sig_bkg * np.sqrt(4 * np.pi) * obs.fwhm_sci / 2.3548 * 1.15 * PSF_ERR_FACTOR
    real = cls != CLASS_NAMES.index("bogus")
    delta = np.where(real, np.sign(delta + 1e-9) * np.maximum(np.abs(delta), 6 * sig_psf), delta)
    kind_bogus = np.where(cls == CLASS_NAMES.index("bogus"), truth.kind[obj], -1)
    artefact = np.zeros(n, dtype=int)
    for i, name in enumerate(BOGUS_KINDS):
        artefact[kind_bogus == i] = ph.ART_CODE[name]
    unstable = np.isin(
        artefact,
        [ph.ART_CODE[k] for k in ("saturation", "dipole", "ghost")],
    )
    scale_err = rng.normal(0, np.where(unstable, 0.04, 0.005))
    if truth.scale_bias is not None:
        scale_err = scale_err + truth.scale_bias[obj]
    scene = ph.Scene(
        x0=x0,
        y0=y0,
        central_ref_flux=cref,
        delta_flux=delta,
        trail_len=truth.trail_len[obj],
        trail_pa=truth.trail_pa[obj],
        host_flux=_flux(truth.host_mag[obj], zp),
        host_x=x0 + truth.host_dx[obj],
        host_y=y0 + truth.host_dy[obj],
        host_re=truth.host_re[obj],
        host_n=truth.host_n[obj],
        host_q=truth.host_q[obj],
        host_pa=truth.host_pa[obj],
        star_x=x0[:, None] + truth.star_dx[obj],
        star_y=y0[:, None] + truth.star_dy[obj],
        star_flux=_flux(truth.star_mag[obj], zp[:, None]),
        shift_x=truth.shift[obj, 0],
        shift_y=truth.shift[obj, 1],
        scale_err=scale_err,
        artefact=artefact,
        art_amp=truth.art_amp[obj],
        art_size=truth.art_size[obj],
        art_angle=truth.art_angle[obj],
        psf_err=None if truth.psf_err is None else truth.psf_err[obj],
    )
    sci, ref, diff, psf = ph.render_triplet(scene, obs, rng, return_psf=True)
    sig_diff = np.sqrt(obs.sigma_sci**2 + (obs.sigma_ref * 0.6) ** 2)
    flux, eflux = _psf_fit(diff, psf, sig_diff)
    eflux = eflux * PSF_ERR_FACTOR
    # Alerts are, by construction, detections: floor the measured S/N at 5.
    snr = np.abs(flux) / eflux
    positive = flux >= 0
    aflux = np.where(snr >= 5, np.abs(flux), eflux * rng.uniform(5, 8, n))
    magpsf = zp - 2.5 * np.log10(aflux)
    # Real sigmapsf track 1/SNR with a calibration floor (real alerts: SNR from sigmapsf is
    # 0.6-0.9 of the SNR implied by diffmaglim for faint ones, and saturates near 50 when bright).
    sigmapsf = np.hypot(1.0857 * eflux / aflux * rng.uniform(1.0, 1.3, n), SIGMAPSF_FLOOR)
    diffmaglim = zp - 2.5 * np.log10(5 * eflux)
    measured = MeasuredChunk(
        truth=truth,
        obj=obj,
        kidx=kidx,
        cls=cls,
        fid=fid,
        zp=zp,
        obs=obs,
        trail_len=scene.trail_len,
        sci=sci,
        ref=ref,
        diff=diff,
        positive=positive,
        magpsf=magpsf,
        sigmapsf=sigmapsf,
        diffmaglim=diffmaglim,
        snr=aflux / eflux,
    )
    return _assemble(plan, chunk, rng, measured)


def _neighbours(truth: ObjectTruth, rng: np.random.Generator):
    """PS1 / reference-catalogue sources around each object, nearest first.

    Returns
    -------
    tuple
        PS1's three nearest within 30": distance [arcsec], magnitude and star/galaxy score, each
        ``(M, 3)`` (-999 pad); the PS1 count within 30"; the
        nearest source of ZTF's own reference-image catalogue (sources brighter than 22.8 mag):
        distance [arcsec], magnitude, extended flag, each ``(M,)`` (-999 when none); and the
        nearest Gaia source (brighter than 20.5 mag): distance [arcsec] and magnitude.
    """
    m = truth.cls.size
    cand_d = [np.hypot(truth.star_dx, truth.star_dy) * ph.PIXEL_SCALE]
    cand_m, cand_s = [truth.star_mag], [truth.star_sg]
    cand_e = [truth.star_sg < 0.5]
    host = np.isfinite(truth.host_mag)
    # An AGN's host is catalogued beside its nucleus, which stays the nearest source.
    agn = truth.cls == CLASS_NAMES.index("AGN")
    host_d = np.hypot(truth.host_dx, truth.host_dy) * ph.PIXEL_SCALE + np.where(agn, 0.4, 0.0)
    cand_d.append(np.where(host, host_d, np.inf)[:, None])
    cand_m.append(truth.host_mag[:, None])
    cand_s.append(rng.uniform(0.0, 0.15, (m, 1)))
    cand_e.append(np.ones((m, 1), bool))
    central = np.isfinite(truth.mag_ref)
    quasar = (truth.cls == CLASS_NAMES.index("AGN")) & ~host
    cand_d.append(np.where(central, np.abs(rng.normal(0, 0.15, m)) + 0.02, np.inf)[:, None])
    cand_m.append(truth.mag_ref[:, None])
    cand_s.append(
        np.where(
            quasar,
            1.0 - rng.beta(1.0, 6.0, m),  # quasars are point sources in PS1
            np.where(host, rng.uniform(0.1, 0.7, m), rng.uniform(0.9, 1.0, m)),
        )[:, None]
    )
    cand_e.append(np.zeros((m, 1), bool))  # a nucleus or star: point-like in the reference
    # Catalogue-only sources: PS1 reaches ~23 mag, far below a 30 s ZTF image, so most of the
    # sources ZTF lists within 30" are not in the cutouts. Real alerts have nmtchps median 5 at
    # first detection (15 over all, crowded fields included).
    lam = 2.5 + 40.0 * np.exp(-np.abs(truth.gal_b) / 8.0)
    nfaint = np.minimum(rng.poisson(lam), 60)
    kf = max(int(nfaint.max(initial=0)), 1)
    live = np.arange(kf)[None, :] < nfaint[:, None]
    cand_d.append(np.where(live, 30.0 * np.sqrt(rng.random((m, kf))) + 0.3, np.inf))
    # Below the reference coadd's depth (~22 mag), so absent from the rendered template.
    cand_m.append(np.where(live, rng.uniform(22.0, 23.3, (m, kf)), np.inf))
    cand_s.append(
        np.where(
            rng.random((m, kf)) < 0.5,
            rng.uniform(0.0, 0.3, (m, kf)),
            rng.uniform(0.6, 1.0, (m, kf)),
        )
    )
    cand_e.append(np.zeros((m, kf), bool))  # too faint for the reference to resolve
    d, mg, sg, ext = (np.concatenate(c, axis=1) for c in (cand_d, cand_m, cand_s, cand_e))
    # PS1-PSC has no score for many (mostly faint) sources and ZTF then writes exactly 0.5: 30%,
    # 40% and 39% of sgscore1/2/3 in the real alerts are 0.5.
    p_placeholder = np.clip(0.12 + 0.2 * (np.where(np.isfinite(mg), mg, 22.0) - 18.0), 0.12, 0.8)
    sg = np.where(rng.random(sg.shape) < p_placeholder, 0.5, sg)
    d = np.where(np.isfinite(mg) & (mg < 23.3), d + np.abs(rng.normal(0, 0.05, d.shape)), np.inf)
    nmatch = (d <= 30.0).sum(axis=1)
    # ZTF's reference coadds reach ~22.8 mag: their catalogue holds the rendered sources and the
    # brightest catalogue-only ones (real first detections have magnr median 22.2).
    d_r = np.where(mg < 22.8, d, np.inf)
    i_nr = np.argmin(d_r, axis=1)
    rows = np.arange(m)
    has_nr = d_r[rows, i_nr] <= 30.0
    d_gaia = np.where(mg < 20.5, d, np.inf)
    i_g = np.argmin(d_gaia, axis=1)
    has_g = np.isfinite(d_gaia[rows, i_g])
    order = np.argsort(d, axis=1)[:, :3]
    take = np.take_along_axis
    d3, m3, s3 = (take(a, order, axis=1) for a in (d, mg, sg))
    found = d3 <= 30.0
    return (
        np.where(found, d3, -999.0),
        np.where(found, m3, -999.0),
        np.where(found, s3, -999.0),
        nmatch,
        np.where(has_nr, d_r[rows, i_nr], -999.0),
        np.where(has_nr, mg[rows, i_nr], -999.0),
        ext[rows, i_nr] & has_nr,
        np.where(has_g, d_gaia[rows, i_g], -999.0),
        np.where(has_g, mg[rows, i_g], -999.0),
    )


def _loguniform(lo: float, hi: float, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _history(
    truth: ObjectTruth, jd0: np.ndarray, rng: np.random.Generator, first_detections: bool = False
):
    """Detections before tonight: count, first-detection jd, and how many fall within 30 days.

    Alerts are drawn across each class's history, not only at first detection, because real
    streams (and any real test set) are mostly later detections: SNe alert over their whole light
    curve (40% first detections here, else 1-150 earlier detections at 0.5-2 per day), variable
    stars and AGN have been detected for years (15% first detections, else 1-800 earlier ones),
    asteroids never repeat at one position, and 35% of bogus recur (artefacts at bright stars).
    Coverage before the alert (``ncovhist - ndethist``) grows with the survey: log-normal around
    ``0.7 * age * (1 - exp(-(age / 120)^3))`` epochs at ``age`` days since the survey began
    (sigma 0.8 in ln), which gives ~14 in early June 2018, ~90 in mid-August 2018, ~410 in late
    2019 and ~2,050 in 2026, as the real alerts show (ncovhist 3-34 in June 2018, 122-642 in
    2019-20, 450-1,540 in 2021, 1,600-4,500 in 2026). A variable star's or AGN's first detection
    comes within its first 2-40 covered epochs. ``first_detections``: no detection before tonight.
    """
    m = truth.cls.size
    c = truth.cls
    n_hist = np.zeros(m, dtype=int)
    age = np.zeros(m)
    span = np.maximum(jd0 - ZTF_START_JD, 31.0)
    if not first_detections:
        sn = c == CLASS_NAMES.index("SN")
        later = sn & (rng.random(m) >= 0.4)
        n_hist[later] = _loguniform(1, 150, int(later.sum()), rng).astype(int)
        rate = rng.uniform(0.5, 2.0, m)  # detections per day while an SN is bright
        age[later] = np.clip(n_hist[later] / rate[later], 0.5, 200.0)  # SNe fade within months
        var = (c == CLASS_NAMES.index("AGN")) | (c == CLASS_NAMES.index("VS"))
        old = var & (rng.random(m) >= 0.15)
        n_hist[old] = _loguniform(1, 800, int(old.sum()), rng).astype(int)
        age[old] = rng.uniform(np.minimum(30.0, span[old]), span[old])
        bog = c == CLASS_NAMES.index("bogus")
        recur = bog & (rng.random(m) < 0.35)
        n_hist[recur] = _loguniform(1, 60, int(recur.sum()), rng).astype(int)
        age[recur] = rng.uniform(1.0, np.minimum(300.0, span[recur]))
    in30 = np.where(
        age <= 30, n_hist, np.round(n_hist * 30 / np.maximum(age, 1) * rng.uniform(0.5, 1.5, m))
    )
    in30 = np.minimum(np.minimum(in30, n_hist), 25).astype(int)
    n_nondet = rng.integers(0, 10, m)
    survey_age = np.maximum(jd0 - ZTF_START_JD, 1.0)
    typical = 0.7 * survey_age * (1.0 - np.exp(-((survey_age / 120.0) ** 3)))
    ncov_extra = np.clip(np.exp(rng.normal(np.log(np.maximum(typical, 2.0)), 0.8, m)), 2, 6000)
    # A variable star or AGN bright enough to alert is detected within its first few epochs: its
    # first detection comes when the survey starts covering it (its first months, or a new field),
    # not after thousands of quiet epochs as a static star's subtraction residual can.
    var = (c == CLASS_NAMES.index("AGN")) | (c == CLASS_NAMES.index("VS"))
    new_var = var & (n_hist == 0)
    ncov_extra[new_var] = np.minimum(
        ncov_extra[new_var], _loguniform(2, 40, int(new_var.sum()), rng)
    )
    ncov_extra = ncov_extra.astype(int)
    return n_hist, jd0 - age, in30, n_nondet, ncov_extra


_PRV_FIELDS = (
    "jd",
    "fid",
    "pid",
    "diffmaglim",
    "pdiffimfilename",
    "programpi",
    "programid",
    "candid",
    "isdiffpos",
    "tblid",
    "nid",
    "rcid",
    "field",
    "xpos",
    "ypos",
    "ra",
    "dec",
    "magpsf",
    "sigmapsf",
    "chipsf",
    "magap",
    "sigmagap",
    "distnr",
    "magnr",
    "sigmagnr",
    "chinr",
    "sharpnr",
    "sky",
    "magdiff",
    "fwhm",
    "classtar",
    "mindtoedge",
    "magfromlim",
    "seeratio",
    "aimage",
    "bimage",
    "aimagerat",
    "bimagerat",
    "elong",
    "nneg",
    "nbad",
    "rb",
    "ssdistnr",
    "ssmagnr",
    "ssnamenr",
    "sumrat",
    "magapbig",
    "sigmagapbig",
    "ranr",
    "decnr",
    "scorr",
    "magzpsci",
    "magzpsciunc",
    "magzpscirms",
    "clrcoeff",
    "clrcounc",
    "rbversion",
)
_BAND = {1: "g", 2: "r", 3: "i"}


def _subtype(cls: int, kind: int) -> str:
    name = CLASS_NAMES[cls]
    if name == "bogus":
        return BOGUS_KINDS[kind]
    return {
        "SN": ("hostless", "hosted"),
        "AGN": ("nuclear", "hosted"),
        "asteroid": ("", "trailed"),
        "VS": ("", ""),
    }[name][kind]


def _filename(date: str, jd: float, field: int, fid: int, rcid: int) -> str:
    frac = round((jd + 0.5) % 1.0 * 1e6)
    return (
        f"ztf_{date}{frac:06d}_{field:06d}_z{_BAND[fid]}_c{rcid // 4 + 1:02d}_o_q{rcid % 4 + 1}"
        "_scimrefdiffimg.fits"
    )


def _assemble(
    plan: NightPlan, chunk: int, rng: np.random.Generator, measured: MeasuredChunk
) -> list[tuple[dict, dict]]:
    """Candidate fields, histories, defects and cutouts -> alert records and label rows.

    Parameters
    ----------
    plan
        The night plan.
    chunk
        Chunk index.
    rng
        The chunk's random stream, as :func:`make_chunk` left it (the draws here continue it, so
        their order fixes the output of a seed).
    measured
        The chunk's alerts as drawn, rendered and measured.

    Returns
    -------
    list of (dict, dict)
        ``(alert record, label row)`` per alert, in plan order (see :func:`make_chunk`).
    """
    from simulator.writer import encode_stamp

    # Short local names: the candidate table below reads them dozens of times.
    truth, obj, kidx, cls = measured.truth, measured.obj, measured.kidx, measured.cls
    fid, zp, obs = measured.fid, measured.zp, measured.obs
    sci, ref, diff = measured.sci, measured.ref, measured.diff
    positive, magpsf, sigmapsf = measured.positive, measured.magpsf, measured.sigmapsf
    diffmaglim, snr = measured.diffmaglim, measured.snr
    n = cls.size
    o0 = int(plan.chunks[chunk])
    a0 = int(plan.first_alert[o0])
    # Raw fields outside the model's inputs draw from their own stream, so recalibrating them
    # leaves the images and features of a given seed unchanged.
    aux = np.random.default_rng([plan.seed, 3, chunk])
    sl = slice(a0, a0 + n)
    jd, rcid, pid, candid = plan.jd[sl], plan.rcid[sl], plan.pid[sl], plan.candid[sl]
    m = truth.cls.size
    jd0 = jd[kidx == 0]
    n_hist, jdstart, in30, n_nondet, ncov_extra = _history(truth, jd0, rng, plan.first_detections)
    dist3, mag3, sg3, nmatch, d_nr, m_nr, e_nr, d_gaia, m_gaia = _neighbours(truth, rng)
    year = np.array([int(plan.night[:4])] * m) - np.floor((jd0 - jdstart) / 365.25).astype(int)
    names = md.object_ids(year, (plan.seed * 7919 + o0 + np.arange(m)) % 26**6 + 26**5)
    field = md.ztf_field(truth.ra, truth.dec)
    name = CLASS_NAMES
    c_ast, c_bog = name.index("asteroid"), name.index("bogus")
    is_bog = cls == c_bog
    point = np.isin(cls, [name.index("VS"), c_ast]) | (truth.kind[obj] == 0) & (cls != c_bog)
    kind = truth.kind[obj]
    bkind = np.where(is_bog, kind, -1)
    sharp_art = np.isin(bkind, [0, 1])
    broad_art = np.isin(bkind, [2, 3, 5, 7])
    bad_diff, satellite = bkind == 6, bkind == 8
    # SExtractor's FWHM on the noisy difference runs above the PSF core (real median 2.14 px).
    fw = obs.fwhm_sci * rng.uniform(1.05, 1.3, n)
    fw = np.where(point, fw, fw * rng.uniform(1.0, 1.3, n))
    fw = np.where(sharp_art, rng.uniform(0.7, 1.4, n), fw)
    fw = np.where(broad_art, rng.uniform(4.0, 10.0, n), fw)
    fw = np.where((bkind == 4) | bad_diff, fw * rng.uniform(1.0, 1.6, n), fw)
    fw = np.where(satellite, fw * rng.uniform(1.2, 2.5, n), fw)
    tl = measured.trail_len
    elong = np.where(tl > 0, 1 + tl / obs.fwhm_sci, 1 + np.abs(rng.normal(0, 0.07, n)))
    elong = np.where(is_bog, elong * rng.uniform(1.0, 1.8, n), elong)
    elong = np.where(satellite, rng.uniform(2.0, 8.0, n), elong)
    aimage = fw * 0.3 * np.sqrt(elong)
    bimage = aimage / elong
    # SExtractor CLASS_STAR of real alerts: median 0.98, 10th percentile 0.64 (first detections).
    # CLASS_STAR is measured on the difference image, where every real transient is point-like.
    classtar = 1.0 - rng.beta(1.0, 30.0, n)
    classtar = np.where(sharp_art, rng.uniform(0.3, 1.0, n), classtar)
    classtar = np.where(broad_art | satellite, rng.uniform(0.0, 0.6, n), classtar)
    # The 2018 RealBogus scores are soft (ALeRCE training mean 0.61 +- 0.22; real first detections
    # median 0.49); deep-learning drb is near 1 for real sources and near 0 for most bogus.
    rb = np.where(is_bog, rng.beta(2.5, 3.5, n), rng.beta(6.0, 2.0, n))
    drb = np.where(is_bog, rng.beta(0.4, 2.0, n), 1 - rng.beta(0.5, 15.0, n))
    # Bright-star residuals fool the 2018 RealBogus (real ones ALeRCE calls bogus: rb 0.47-0.81,
    # median ~0.65); the deep drb catches about half (real: 0.09 and 0.22 beside many > 0.97).
    rb = np.where(bad_diff, rng.beta(6.0, 3.5, n), rb)
    drb = np.where(
        bad_diff,
        np.where(rng.random(n) < 0.5, rng.beta(0.6, 5.0, n), 1 - rng.beta(0.5, 15.0, n)),
        drb,
    )
    # Nearest reference-catalogue source: the PS1 nearest stands in for it.
    # Nearest source in ZTF's reference-image catalogue (brighter than its 22.8 mag depth).
    dnr = d_nr[obj]
    has_nr = dnr >= 0
    ext_nr = e_nr[obj]
    # Point-like nearest sources: real first detections have chinr median 0.75, sharpnr -0.04.
    chinr = np.where(ext_nr, rng.uniform(2.0, 15.0, n), np.exp(rng.normal(np.log(0.75), 0.4, n)))
    sharpnr = np.where(ext_nr, rng.uniform(0.1, 0.9, n), rng.normal(-0.03, 0.1, n))
    ndethist = n_hist[obj] + kidx + 1
    ncovhist = ndethist + n_nondet[obj] + ncov_extra[obj]
    known = (cls == c_ast) & (rng.random(n) < 0.6)
    numbered = rng.random(n) < 0.7
    ssname = np.where(
        numbered,
        rng.integers(1, 600000, n).astype(str),
        [
            f"{int(y)} {a}{b}{int(k)}"
            for y, a, b, k in zip(
                rng.integers(1995, 2018, n),
                rng.choice(list("ABCDEFGHJKLMNOPQRSTUVWXY"), n),
                rng.choice(list("ABCDEFGHJKLMNOPQRSTUVWXYZ"), n),
                rng.integers(1, 300, n),
                strict=True,
            )
        ],
    )
    ssdist = np.where(known, np.abs(rng.normal(0, 1.5, n)), -999.0)
    ssmag = np.where(known, magpsf + rng.normal(0.3, 0.3, n), -999.0)
    date = plan.night
    skysub = rng.normal(0, 1.5, n)
    xpos = rng.uniform(10, 3070, n)
    ypos = rng.uniform(10, 3070, n)
    magap = magpsf + rng.normal(0, 0.05, n) + np.where(point, 0, -0.2)
    cand_rows = {
        "jd": jd.tolist(),
        "fid": fid.tolist(),
        "pid": pid.tolist(),
        "diffmaglim": _f32(diffmaglim),
        "pdiffimfilename": [
            _filename(date, j, f, b_, r)
            for j, f, b_, r in zip(
                jd.tolist(), field[obj].tolist(), fid.tolist(), rcid.tolist(), strict=True
            )
        ],
        "programpi": ["Kulkarni"] * n,
        "programid": [1] * n,
        "candid": candid.tolist(),
        "isdiffpos": np.where(positive, "t", "f").tolist(),
        "tblid": (candid % 1000).tolist(),
        "nid": [plan.nid] * n,
        "rcid": rcid.tolist(),
        "field": field[obj].tolist(),
        "xpos": _f32(xpos),
        "ypos": _f32(ypos),
        "ra": (
            truth.ra[obj] + rng.normal(0, 0.06, n) / 3600 / np.cos(np.radians(truth.dec[obj]))
        ).tolist(),
        "dec": (truth.dec[obj] + rng.normal(0, 0.06, n) / 3600).tolist(),
        "magpsf": _f32(magpsf),
        "sigmapsf": _f32(sigmapsf),
        "chipsf": _f32(np.where(is_bog, rng.uniform(2, 80, n), np.exp(rng.normal(0, 0.6, n)))),
        "magap": _f32(magap),
        "sigmagap": _f32(sigmapsf * rng.uniform(1.0, 1.5, n)),
        "distnr": _f32(np.where(has_nr, dnr / ph.PIXEL_SCALE, -999.0)),
        "magnr": _f32(np.where(has_nr, m_nr[obj] + rng.normal(0, 0.05, n), -999.0)),
        # Reference-catalogue photometric error of the nearest source (real median 0.18 mag at
        # first detection, when the nearest source is usually faint).
        "sigmagnr": _f32(
            np.where(
                has_nr,
                np.hypot(rng.uniform(0.01, 0.03, n), 0.2 * 10 ** (0.4 * (m_nr[obj] - 21.5))).clip(
                    None, 0.5
                ),
                -999.0,
            )
        ),
        "chinr": _f32(np.where(has_nr, chinr, -999.0)),
        "sharpnr": _f32(np.where(has_nr, sharpnr, -999.0)),
        "sky": _f32(skysub),
        "magdiff": _f32(magap - magpsf),
        "fwhm": _f32(fw),
        "classtar": _f32(classtar),
        "mindtoedge": _f32(np.minimum.reduce([xpos, ypos, 3080 - xpos, 3080 - ypos])),
        "magfromlim": _f32(diffmaglim - magap),
        "seeratio": _f32(rng.uniform(0.5, 2.0, n)),
        "aimage": _f32(aimage),
        "bimage": _f32(bimage),
        "aimagerat": _f32(aimage / fw),
        "bimagerat": _f32(bimage / fw),
        "elong": _f32(elong),
        # Negative pixels in the 5x5 box: real median 5 at first detection, 3 overall (noisy
        # ZOGY differences). From the auxiliary stream: raw-only fields never move model inputs.
        "nneg": _redrawn(
            rng.integers(0, 4, n), np.minimum(aux.poisson(np.where(is_bog, 6, 4)), 25)
        ),
        "nbad": np.where(is_bog & (bkind == 3), rng.integers(1, 10, n), 0).tolist(),
        "rb": _f32(rb),
        "ssdistnr": _f32(ssdist),
        "ssmagnr": _f32(ssmag),
        "ssnamenr": np.where(known, ssname, "null").tolist(),
        "sumrat": _f32(np.where(is_bog, rng.uniform(0.3, 1.0, n), rng.uniform(0.85, 1.0, n))),
        "magapbig": _f32(magap + rng.normal(0, 0.03, n)),
        "sigmagapbig": _f32(sigmapsf * 1.3),
        "ranr": truth.ra[obj].tolist(),
        "decnr": truth.dec[obj].tolist(),
        "sgmag1": _f32(
            np.where((mag3[obj, 0] > 0) & (mag3[obj, 0] < 21.5), mag3[obj, 0] + 0.4, -999.0)
        ),
        "srmag1": _f32(mag3[obj, 0]),
        "simag1": _f32(np.where(mag3[obj, 0] > 0, mag3[obj, 0] - 0.2, -999.0)),
        "szmag1": _f32(np.where(mag3[obj, 0] > 0, mag3[obj, 0] - 0.3, -999.0)),
        "sgscore1": _f32(sg3[obj, 0]),
        "distpsnr1": _f32(dist3[obj, 0]),
        "ndethist": ndethist.tolist(),
        "ncovhist": ncovhist.tolist(),
        "jdstarthist": np.where(n_hist[obj] > 0, jdstart[obj], jd[kidx == 0][obj]).tolist(),
        "jdendhist": jd.tolist(),
        # Real scorr / (1.0857 / sigmapsf): median 1.2, 10th-90th percentile 0.5-2.2.
        "scorr": (1.0857 / sigmapsf * np.exp(rng.normal(np.log(1.2), 0.45, n))).tolist(),
        "tooflag": [0] * n,
        "objectidps1": np.where(
            dist3[obj, 0] >= 0, rng.integers(10**16, 2 * 10**17, n), -999
        ).tolist(),
        "objectidps2": np.where(
            dist3[obj, 1] >= 0, rng.integers(10**16, 2 * 10**17, n), -999
        ).tolist(),
        "sgmag2": _f32(
            np.where((mag3[obj, 1] > 0) & (mag3[obj, 1] < 21.5), mag3[obj, 1] + 0.4, -999.0)
        ),
        "srmag2": _f32(mag3[obj, 1]),
        "simag2": _f32(np.where(mag3[obj, 1] > 0, mag3[obj, 1] - 0.2, -999.0)),
        "szmag2": _f32(np.where(mag3[obj, 1] > 0, mag3[obj, 1] - 0.3, -999.0)),
        "sgscore2": _f32(sg3[obj, 1]),
        "distpsnr2": _f32(dist3[obj, 1]),
        "objectidps3": np.where(
            dist3[obj, 2] >= 0, rng.integers(10**16, 2 * 10**17, n), -999
        ).tolist(),
        "sgmag3": _f32(
            np.where((mag3[obj, 2] > 0) & (mag3[obj, 2] < 21.5), mag3[obj, 2] + 0.4, -999.0)
        ),
        "srmag3": _f32(mag3[obj, 2]),
        "simag3": _f32(np.where(mag3[obj, 2] > 0, mag3[obj, 2] - 0.2, -999.0)),
        "szmag3": _f32(np.where(mag3[obj, 2] > 0, mag3[obj, 2] - 0.3, -999.0)),
        "sgscore3": _f32(sg3[obj, 2]),
        "distpsnr3": _f32(dist3[obj, 2]),
        "nmtchps": nmatch[obj].tolist(),
        "rfid": (field[obj] * 10**6 + 120000 + fid * 100 + rcid).tolist(),
        "jdstartref": (ZTF_START_JD + rng.uniform(0, 60, n)).tolist(),
        "jdendref": (ZTF_START_JD + rng.uniform(60, 150, n)).tolist(),
        "nframesref": obs.nframes_ref.astype(int).tolist(),
        "rbversion": ["t17_f5_c3"] * n,
        "dsnrms": _f32(snr * 0.8),
        "ssnrms": _f32(snr),
        "dsdiff": _f32(snr * -0.2),
        "magzpsci": _f32(zp),
        "magzpsciunc": _f32(rng.uniform(5e-6, 3e-5, n)),  # real median 1.2e-5 [mag]
        "magzpscirms": _f32(rng.uniform(0.015, 0.06, n)),
        "nmatches": _redrawn(rng.integers(300, 3000, n), aux.integers(100, 1500, n)),  # real: 506
        "clrcoeff": _f32(rng.normal(0, 0.08, n)),
        "clrcounc": _f32(rng.uniform(5e-6, 4e-5, n)),  # real median 1.7e-5
        "zpclrcov": _f32(-rng.uniform(0, 3e-5, n)),  # real median -1.3e-5
        "zpmed": _f32(zp + rng.normal(0, 0.02, n)),
        "clrmed": _f32(rng.uniform(0.4, 1.2, n)),
        "clrrms": _f32(rng.uniform(0.12, 0.35, n)),
        # Gaia reaches ~20.5 mag: the nearest source that bright (real median maggaia 16.4).
        "neargaia": _f32(np.where(d_gaia[obj] >= 0, d_gaia[obj] + 0.05, -999.0)),
        "neargaiabright": _f32(np.where(rng.random(n) < 0.3, rng.uniform(20, 90, n), -999.0)),
        "maggaia": _f32(np.where(d_gaia[obj] >= 0, m_gaia[obj] - 0.1, -999.0)),
        "maggaiabright": _f32(np.where(rng.random(n) < 0.3, rng.uniform(11, 14, n), -999.0)),
        "exptime": [30.0] * n,
        "drb": [v if t >= DRB_START_JD else None for v, t in zip(_f32(drb), jd, strict=True)],
        "drbversion": ["" if t < DRB_START_JD else "d6_m7" for t in jd],  # non-null in 4.02
    }
    keys = list(cand_rows)
    cands = [dict(zip(keys, vals, strict=True)) for vals in zip(*cand_rows.values(), strict=True)]

    # Defects.
    defect = np.full(n, "", dtype=object)
    hit = rng.random(n) < plan.defects
    defect[hit] = rng.choice(DEFECTS, size=int(hit.sum()))
    stamps = [[sci[i], ref[i], diff[i] if positive[i] else -diff[i]] for i in range(n)]
    for i in np.flatnonzero(hit):
        if defect[i] == "nan_pixels":
            for j in rng.choice(3, size=int(rng.integers(1, 4)), replace=False):
                img = stamps[i][j].copy()
                img.ravel()[rng.choice(img.size, int(img.size * rng.uniform(0.005, 0.05)))] = np.nan
                r0, c0 = rng.integers(0, 55, 2)
                img[r0 : r0 + rng.integers(2, 8), c0 : c0 + rng.integers(2, 8)] = np.nan
                stamps[i][j] = img
        elif defect[i] == "edge_stamp":
            keep = int(rng.integers(40, 63))
            side = int(rng.integers(4))
            cut = [slice(None), slice(None)]
            cut[side % 2] = slice(63 - keep, None) if side < 2 else slice(0, keep)
            stamps[i] = [s_[tuple(cut)] for s_ in stamps[i]]
            cands[i]["mindtoedge"] = float(np.float32(keep - 31.5))
        else:
            for f in rng.choice(
                NULLABLE, size=int(rng.integers(1, len(NULLABLE) + 1)), replace=False
            ):
                cands[i][f] = None

    _mask_regions(stamps, rng)
    alerts, labels = [], []
    first_local = np.flatnonzero(kidx == 0)
    for i in range(n):
        c = cands[i]
        o = obj[i]
        prv = _prv_entries(
            c,
            int(in30[o]),
            int(n_nondet[o]),
            float(jdstart[o]),
            rng,
            cls[i] == CLASS_NAMES.index("SN"),
        )
        for j in range(first_local[o], i):  # tonight's earlier alerts of this object
            prv.append({k: cands[j][k] for k in _PRV_FIELDS})
        diff_name = "scimref" if c["isdiffpos"] == "t" else "refmsci"
        cid, p = c["candid"], c["pid"]
        alerts.append(
            {
                "schemavsn": "4.02",
                "publisher": "ZTF (www.ztf.caltech.edu)",
                "objectId": names[o],
                "candid": cid,
                "candidate": c,
                "prv_candidates": prv or None,
                "fp_hists": None,
                "cutoutScience": {
                    "fileName": f"candid{cid}_pid{p}_targ_sci.fits.gz",
                    "stampData": encode_stamp(stamps[i][0]),
                },
                "cutoutTemplate": {
                    "fileName": f"candid{cid}_ref.fits.gz",
                    "stampData": encode_stamp(stamps[i][1]),
                },
                "cutoutDifference": {
                    "fileName": f"candid{cid}_pid{p}_targ_{diff_name}.fits.gz",
                    "stampData": encode_stamp(stamps[i][2]),
                },
            }
        )
        labels.append(
            {
                "candid": cid,
                "objectId": names[o],
                "class": CLASS_NAMES[cls[i]],
                "subtype": _subtype(int(cls[i]), int(truth.kind[o])),
                "defect": defect[i],
            }
        )
    return list(zip(alerts, labels, strict=True))


#: Fraction of alerts with a masked (NaN) region in their cutouts, whatever the class: 13% of the
#: real alerts in shared/data (3.4% of the pixels when any; 1.3% reach the central 21x21 crop).
MASKED_FRACTION = 0.13


def _mask_regions(stamps: list[list[np.ndarray]], rng: np.random.Generator) -> None:
    """Blank a rectangle from a stamp edge in all three cutouts of some alerts (in place).

    Real cutouts carry NaN where the pipeline masked pixels: chip edges, bad amplifier regions,
    bright-star halos. The same pixels are masked in science, template and difference.
    """
    for i in np.flatnonzero(rng.random(len(stamps)) < MASKED_FRACTION):
        h, w = stamps[i][0].shape
        side = int(rng.integers(4))
        along = w if side in (0, 2) else h  # extent of the chosen edge
        # One mask in ten reaches the central 21x21 crop (21 px deep), as 1.3% of real alerts.
        depth = int(rng.integers(22, 30)) if rng.random() < 0.1 else int(rng.integers(2, 14))
        length = int(rng.integers(4, max(along, 5)))
        start = int(rng.integers(0, max(along - length, 1)))
        rows, cols = (slice(0, depth), slice(start, start + length))
        if side in (1, 3):
            rows, cols = slice(start, start + length), slice(0, depth)
        if side >= 2:
            rows = slice(h - depth, h) if side == 2 else rows
            cols = slice(w - depth, w) if side == 3 else cols
        for img in stamps[i]:
            img[rows, cols] = np.nan


def _prv_entries(
    c: dict, n_det: int, n_nondet: int, jdstart: float, rng, explosive: bool = False
) -> list[dict]:
    """Earlier detections (within 30 days) and upper limits, oldest first, as prv_candidates.

    For an explosive transient (SN) first detected within the 30 days, the upper limits fall
    before its first detection, the rise from non-detections that SN hunters look for; older ones
    (and other classes) have limits spread over the 30 days. A first detection inside the window
    is in the history at ``jdstart`` (``jdstarthist``).
    """
    jd = c["jd"]
    lo = max(jd - 30.0, jdstart)
    out = []
    det_jd = np.sort(rng.uniform(lo, jd - 0.5, n_det)) if n_det and jd - 0.5 > lo else []
    if len(det_jd) and jdstart >= jd - 30.0:
        det_jd[0] = jdstart
    rising = explosive and jdstart - 0.5 > jd - 30.0
    lim_jd = rng.uniform(jd - 30.0, jdstart - 0.5 if rising else jd - 0.5, n_nondet)
    for t, is_det in sorted(
        [(float(t), True) for t in det_jd] + [(float(t), False) for t in lim_jd]
    ):
        e = dict.fromkeys(_PRV_FIELDS)
        fid = int(rng.integers(1, 3))
        nid = c["nid"] - round(jd - t)
        frac = round((t + 0.5) % 1.0 * 1e5)
        pid = nid * 10**9 + frac * 10**4 + c["rcid"] * 100 + 15
        e.update(
            jd=t,
            fid=fid,
            pid=pid,
            nid=nid,
            rcid=c["rcid"],
            field=c["field"],
            programid=1,
            programpi="Kulkarni",
            rbversion="t17_f5_c3",
            diffmaglim=float(np.float32(20.4 + rng.normal(0, 0.4))),
            magzpsci=float(np.float32(ZP[fid] + rng.normal(0, 0.05))),
        )
        if is_det:
            mag = float(np.float32(c["magpsf"] + rng.normal(0, 0.2)))
            e.update(
                candid=pid * 10**6 + 10000 + int(rng.integers(0, 999)),
                isdiffpos=c["isdiffpos"],
                ra=c["ra"] + rng.normal(0, 2e-5),
                dec=c["dec"] + rng.normal(0, 2e-5),
                magpsf=mag,
                sigmapsf=c["sigmapsf"],
                fwhm=c["fwhm"],
                classtar=c["classtar"],
                distnr=c["distnr"],
                magnr=c["magnr"],
                sigmagnr=c["sigmagnr"],
                chinr=c["chinr"],
                sharpnr=c["sharpnr"],
                rb=c["rb"],
                ssdistnr=-999.0,
                ssmagnr=-999.0,
                ssnamenr="null",
                ranr=c["ranr"],
                decnr=c["decnr"],
                tblid=0,
            )
        out.append(e)
    return out
