"""Training augmentations for the simulated-to-real gap: what the simulator cannot pin down.

The simulator fixes choices that real ZTF nights vary: seeing and PSF shape, noise and background
level, photometric zero point, saturation level, registration of the reference, and (for a
rotation-invariant network) orientation. Each augmentation here perturbs one of them, per example,
on **raw** inputs, ``stamps`` ``float32 [B, 63, 63, 3]`` (science, reference, difference, in DN,
NaN allowed) and ``features`` ``float32 [B, F]`` (imputed, unclipped), *before* the tf.Transform
graph: :func:`model.train.train_network` draws a batch's raw examples, augments them with
:func:`augment_batch` and runs the fitted transform on them (crop, per-channel min-max
normalisation, NaN -> 0, clip and z-score), so the network sees what serving's transform would
compute from such inputs. The features follow the pixels only where stated below (magnitudes
under a zero-point change, ``fwhm`` under a blurred science); noise, saturation and blur leave
``sigmapsf``, ``diffmaglim``, ``magpsf`` and ``isdiffpos`` as they were. Augmenting the
normalised 21x21 crops instead would hide the interplay with the normalisation (a background
offset vanishes in it, a saturated pixel becomes 0) and the source outside the crop that a shift
or blur brings in.

The difference image is kept consistent with ``D = S - R`` (science minus reference, with the
reference in the science's flux units, as the simulator makes them; for real cutouts this holds
up to the science/reference zero-point ratio, which the zero-point augmentation varies), except by
the background offset, which is drawn per channel and vanishes in the normalisation. In the
order :func:`augment_batch` applies them:

1. PSF / seeing (:func:`smear_psf`): the science *or* the reference convolved with an elliptical
   Gaussian (major sigma 0-0.8 px); ``D += S' - S`` or ``D -= R' - R``, the PSF-mismatch residual
   (a ring at every static source, a blurred transient); a blurred science widens ``fwhm``.
2. Misregistration (:func:`misregister`): the reference shifted by <= 0.5 px (Fourier shift, which
   keeps its noise); ``D += R - R'``, a dipole at every reference source.
3. Zero point (:func:`scale_flux`): science and difference times ``k`` (log-uniform, ±15 %), the
   reference unchanged; ``magpsf`` and ``diffmaglim`` shift by ``-2.5 log10 k``: the science's
   counts change while its zero point is held (a transparency or calibration change that the
   magnitudes record), not a recalibration that would leave ``magpsf`` in place.
4. Noise (:func:`add_noise`): white noise of a random fraction of the channel's robust std added
   to the science (and to ``D``) and to the reference (subtracted from ``D``).
5. Background (:func:`add_background`): a constant per channel, in units of its robust std. The
   per-channel min-max normalisation removes it; it checks the transform rather than perturbs.
6. Saturation (:func:`saturate`): a bright source's pixels above a random level become NaN (ZTF
   masks saturated pixels) or are clipped at it, in science or reference; the difference follows.
7. Dihedral (:func:`dihedral`): one of the 8 rotations/flips, the same for the 3 channels.

Each has a probability and a strength in :class:`AugmentConfig` (``AugmentConfig.none()`` is the
identity; :data:`PRESETS` names the ``--augment`` choices, :data:`PRESET_SURVEYS` the survey each
is made for). NaN pixels stay NaN where they were (moved by the dihedral transform only); only
saturation masking introduces new ones. The ZTF network averages over the four 90° rotations of
its input (cyclic pooling, SPEC §6), so a rotation only changes which dropout mask meets which
orientation; the flips are what is new.

**Rubin (LSST) examples** (``augment_batch(..., survey="lsst")``, preset ``lsst``): stamps are
``[B, 30, 30, 3]`` in nJy (background-subtracted, calibrated), features
:data:`transforms.schema.FEATURES_LSST`. Nothing above assumes ZTF's units or size except what
the features follow and three strengths, so :data:`COUPLINGS` says, per survey, which features
follow the pixels: under a zero-point change ``psf_mag`` and ``science_mag`` (``template_mag``
keeps the reference's scale; the -999 of "no flux" stays), under a blurred science ``fwhm`` and
``fwhm_psf`` (the source's and the PSF model's widths, in arcsec: the kernel's FWHM in pixels
times 0.2"/px). The ``lsst`` preset blurs more in pixels (Rubin's seeing is 5-9 px FWHM, ZTF's
2-3: major sigma up to 2 px, with a 6-pixel filter border) and leaves out two: saturation, since
Rubin's cutouts carry no NaN pixels where ZTF masks (saturated pixels are interpolated and flagged
in ``saturated``, a feature the pixels would then contradict), and the dihedral transforms, which
the D4-invariant Rubin network (``NetworkConfig(flips=True)``) makes redundant: its output is the
same for all 8. PSF mismatch, misregistration, zero point, noise and background apply as for ZTF
(noise and background in units of the channel's robust std, so in any pixel unit).

Every function is pure and vectorised over the batch; the randomness comes from one
``np.random.Generator``, so a seed gives the same batches. Cost with the default config, batch
64 of 63x63x3 on 2 (shared) CPU cores: 27-34 ms per batch, plus 5 ms for the transform graph,
against 300-530 ms per optimiser step (kernel 5, crop 21), i.e. about 10 %; the FFT filters
(PSF, shift) and the noise fields are most of it. Training makes the batches in a background
thread, ahead of the steps, so on a GPU or more cores the cost is hidden.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

import numpy as np

from transforms.schema import LSST_PIXEL_SCALE

__all__ = [
    "AUGMENTATIONS",
    "COUPLINGS",
    "FWHM_FEATURE",
    "MAGNITUDE_FEATURES",
    "PRESETS",
    "PRESET_SURVEYS",
    "AugmentConfig",
    "FeatureCoupling",
    "add_background",
    "add_noise",
    "augment_batch",
    "dihedral",
    "dihedral_inverse",
    "fourier_filter",
    "gaussian_transfer",
    "misregister",
    "robust_background",
    "saturate",
    "scale_flux",
    "shift_transfer",
    "smear_psf",
]

SCIENCE, REFERENCE, DIFFERENCE = 0, 1, 2  # channel order (transforms.schema.STAMP_KINDS)
#: Features in magnitudes of the science/difference flux scale, shifted by a zero-point change.
#: ``magnr`` (the nearest *reference* source) is not: the reference keeps its scale.
MAGNITUDE_FEATURES: Final[tuple[str, ...]] = ("magpsf", "diffmaglim")
#: Feature that measures the science PSF [pixel]; widened when the science is blurred.
FWHM_FEATURE: Final[str] = "fwhm"
_SIGMA_TO_FWHM: Final[float] = 2.0 * math.sqrt(2.0 * math.log(2.0))
_MAD_TO_SIGMA: Final[float] = 1.482602218505602
_PAD: Final[int] = 4  # reflected border [pixel] around Fourier filtering: no wrap-around


@dataclass(frozen=True)
class FeatureCoupling:
    """Which of a survey's features follow the pixels under augmentation, and how.

    Attributes
    ----------
    magnitudes
        Features in magnitudes of the science/difference flux scale: shifted by
        ``-2.5 log10 k`` when those pixels are multiplied by ``k`` (:func:`scale_flux`).
    widths
        Widths of the science PSF and of the source: widened in quadrature by the kernel's FWHM
        when the science is blurred (:func:`smear_psf`), where positive.
    width_per_pixel
        Unit of ``widths`` per pixel (1 for ZTF's ``fwhm`` [pixel], 0.2 for Rubin's [arcsec]).
    no_magnitude
        The "no flux" value of ``magnitudes``, left as it is; None when there is none.
    saturation
        Whether :func:`saturate` models the survey's cutouts (ZTF's NaN-masked saturation).
    """

    magnitudes: tuple[str, ...]
    widths: tuple[str, ...]
    width_per_pixel: float = 1.0
    no_magnitude: float | None = None
    saturation: bool = True


#: Per survey (``--survey``): the features that follow the pixels (see the module docstring).
COUPLINGS: Final[dict[str, FeatureCoupling]] = {
    "ztf": FeatureCoupling(MAGNITUDE_FEATURES, (FWHM_FEATURE,)),
    "lsst": FeatureCoupling(
        ("psf_mag", "science_mag"),
        ("fwhm", "fwhm_psf"),
        width_per_pixel=LSST_PIXEL_SCALE,  # [arcsec / pixel]
        no_magnitude=-999.0,  # transforms.surveys.lsst.NO_MAG: science flux <= 0
        saturation=False,
    ),
}
#: The augmentations in the order :func:`augment_batch` applies them; ``{name}_prob`` of
#: :class:`AugmentConfig` is the probability that one fires on an example.
AUGMENTATIONS: Final[tuple[str, ...]] = (
    "psf",
    "shift",
    "zero_point",
    "noise",
    "background",
    "saturation",
    "dihedral",
)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per example) and strengths of the training augmentations.

    Attributes
    ----------
    dihedral_prob
        Probability of a random element of the dihedral group D4 (the identity is one of its 8,
        so 1.0 draws the 8 uniformly).
    psf_prob, psf_sigma_max, psf_min_axis_ratio
        PSF mismatch: science or reference (even odds) convolved with an elliptical Gaussian of
        major sigma ``U(0, psf_sigma_max)`` [pixel], minor/major ratio
        ``U(psf_min_axis_ratio, 1)`` and a random position angle.
    shift_prob, shift_max
        Misregistration: the reference shifted by a vector of length ``<= shift_max`` [pixel],
        uniform in the disc.
    zero_point_prob, zero_point_max
        Flux scale: science and difference times ``k``, ``ln k ~ U(±ln(1 + zero_point_max))``.
    noise_prob, noise_max_fraction
        Extra noise: std ``U(0, noise_max_fraction)`` times the channel's robust std, drawn
        separately for science and reference.
    background_prob, background_max
        A constant ``U(±background_max)`` times the channel's robust std, per channel.
    saturation_prob, saturation_level, saturation_min_snr, saturation_mask_prob
        Saturation of science or reference (even odds) when its brightest pixel is at least
        ``saturation_min_snr`` robust stds above the background: pixels above
        ``background + u (peak - background)``, ``u ~ U(*saturation_level)``, become NaN with
        probability ``saturation_mask_prob`` (ZTF's mask), else are clipped at that level.
    filter_border
        Reflected border [pixel] around the Fourier filters (PSF, shift): ``shift_max`` and
        three ``psf_sigma_max`` must stay inside it, so nothing wraps around.
    """

    dihedral_prob: float = 1.0
    psf_prob: float = 0.5
    psf_sigma_max: float = 0.8  # [pixel]
    psf_min_axis_ratio: float = 0.6
    shift_prob: float = 0.3
    shift_max: float = 0.5  # [pixel]
    zero_point_prob: float = 0.5
    zero_point_max: float = 0.15  # fractional flux change
    noise_prob: float = 0.5
    noise_max_fraction: float = 0.5  # of the channel's robust std
    background_prob: float = 0.3
    background_max: float = 5.0  # [robust std]
    saturation_prob: float = 0.1
    saturation_level: tuple[float, float] = (0.3, 0.9)  # fraction of (peak - background)
    saturation_min_snr: float = 50.0
    saturation_mask_prob: float = 0.5
    filter_border: int = _PAD  # [pixel]

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.endswith("_prob") and not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"{f.name} must be in [0, 1], got {getattr(self, f.name)}")
        for name in ("psf_sigma_max", "shift_max", "zero_point_max", "noise_max_fraction"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        border = self.filter_border
        if border < 1:
            raise ValueError(f"filter_border must be >= 1, got {border}")
        if self.shift_max > border or self.psf_sigma_max > border / 3:
            raise ValueError(
                f"shift_max (<= {border}) and psf_sigma_max (<= {border / 3:.2f}) must stay "
                f"inside the {border}-pixel border of the Fourier filters (filter_border), got "
                f"{self.shift_max}, {self.psf_sigma_max}"
            )
        if not 0.0 < self.psf_min_axis_ratio <= 1.0:
            raise ValueError(f"psf_min_axis_ratio must be in (0, 1], got {self.psf_min_axis_ratio}")
        lo, hi = self.saturation_level
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"saturation_level must satisfy 0 < lo <= hi <= 1, got {lo, hi}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every augmentation off: :func:`augment_batch` returns its inputs unchanged."""
        return cls(**{f"{name}_prob": 0.0 for name in AUGMENTATIONS})

    @property
    def is_identity(self) -> bool:
        """True when no augmentation can fire (every ``{name}_prob`` of :data:`AUGMENTATIONS`
        is 0)."""
        return all(getattr(self, f"{name}_prob") == 0 for name in AUGMENTATIONS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (recorded in the exported model's metadata)."""
        out = asdict(self)
        out["saturation_level"] = list(self.saturation_level)
        return out


#: ``--augment`` choices.
PRESETS: Final[dict[str, AugmentConfig]] = {
    "none": AugmentConfig.none(),
    "default": AugmentConfig(),
    # Rubin: no saturation (not NaN-masked there), no dihedral (the D4-invariant network's
    # output is the same for all 8), a PSF mismatch on the scale of its 5-9 px seeing.
    "lsst": AugmentConfig(
        dihedral_prob=0.0, psf_sigma_max=2.0, saturation_prob=0.0, filter_border=6
    ),
}
#: The survey each preset is made for (``none``: every survey).
PRESET_SURVEYS: Final[dict[str, str | None]] = {"none": None, "default": "ztf", "lsst": "lsst"}


# --- Geometry -------------------------------------------------------------------------------------
def dihedral(stamps: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Apply an element of the dihedral group D4 to each stamp, the same to every channel.

    Parameters
    ----------
    stamps
        ``[B, H, H, C]`` square stamps (the odd 63 keeps the centre pixel fixed).
    k
        ``[B]`` (or one) element in 0..7: ``k % 4`` counter-clockwise quarter turns, then a
        left-right flip when ``k >= 4``.

    Returns
    -------
    np.ndarray
        A new array, same shape and dtype.

    Examples
    --------
    >>> x = np.arange(4.0).reshape(1, 2, 2, 1)
    >>> dihedral(x, 1)[0, ..., 0].tolist()
    [[1.0, 3.0], [0.0, 2.0]]
    >>> np.array_equal(dihedral(dihedral(x, 3), dihedral_inverse(3)), x)
    True
    """
    k = np.broadcast_to(np.asarray(k, np.int64), (len(stamps),))
    out = np.empty_like(stamps)
    for g in np.unique(k):
        sel = k == g
        y = np.rot90(stamps[sel], int(g) % 4, axes=(1, 2))
        out[sel] = np.flip(y, axis=2) if g >= 4 else y
    return out


def dihedral_inverse(k: np.ndarray | int) -> np.ndarray:
    """The inverse elements of :func:`dihedral`'s ``k``: ``(4 - k) % 4`` for rotations, ``k`` for
    reflections (every reflection is its own inverse).

    Parameters
    ----------
    k
        Elements in 0..7.

    Returns
    -------
    np.ndarray
        Elements in 0..7.
    """
    k = np.asarray(k, np.int64)
    return np.where(k >= 4, k, (4 - k) % 4)


# --- Fourier filtering (PSF, subpixel shift) ------------------------------------------------------
def gaussian_transfer(
    size: int, sigma_major: np.ndarray, sigma_minor: np.ndarray, angle: np.ndarray
) -> np.ndarray:
    """Fourier transfer functions of unit-sum elliptical Gaussian kernels.

    Parameters
    ----------
    size
        Side of the (square) image to filter [pixel].
    sigma_major, sigma_minor
        ``[B]`` standard deviations along the major and minor axes [pixel] (0: identity).
    angle
        ``[B]`` position angle of the major axis [rad] from the column axis.

    Returns
    -------
    np.ndarray
        ``complex128 [B, size, size // 2 + 1]``, for :func:`numpy.fft.rfft2` spectra:
        ``exp(-2 pi^2 q^T Sigma q)`` at frequency ``q`` [cycles/pixel].
    """
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    a2, b2 = (np.asarray(v, np.float64)[:, None, None] ** 2 for v in (sigma_major, sigma_minor))
    # Sigma = R diag(a², b²) R^T with the major axis at `angle` from x (columns) towards y (rows).
    sxx, syy, sxy = a2 * c * c + b2 * s * s, a2 * s * s + b2 * c * c, (a2 - b2) * c * s
    quad = sxx * fx * fx + syy * fy * fy + 2.0 * sxy * fx * fy
    return np.exp(-2.0 * np.pi**2 * quad).astype(np.complex128)


def shift_transfer(size: int, shifts: np.ndarray) -> np.ndarray:
    """Fourier transfer functions of subpixel translations.

    Parameters
    ----------
    size
        Side of the (square) image [pixel].
    shifts
        ``[B, 2]`` displacement (rows, columns) [pixel]: content at ``p`` moves to ``p + shift``.

    Returns
    -------
    np.ndarray
        ``complex128 [B, size, size // 2 + 1]``.
    """
    fy = np.fft.fftfreq(size)[None, :, None]
    fx = np.fft.rfftfreq(size)[None, None, :]
    dy, dx = shifts[:, 0, None, None], shifts[:, 1, None, None]
    transfer = np.exp(-2j * np.pi * (fy * dy + fx * dx))
    if size % 2 == 0:  # the Nyquist terms of a real image: keep them real (no half-pixel ambiguity)
        transfer[:, size // 2, :] = transfer[:, size // 2, :].real
        transfer[:, :, -1] = transfer[:, :, -1].real
    return transfer


def fourier_filter(
    images: np.ndarray, transfer_fn: Callable[[int], np.ndarray], pad: int = _PAD
) -> np.ndarray:
    """Filter images through their spectrum, with a reflected border against wrap-around.

    Parameters
    ----------
    images
        ``[B, H, H]`` finite images (fill NaN first).
    transfer_fn
        ``transfer_fn(size) -> complex [B, size, size // 2 + 1]``, ``size >= H + 2 pad`` (the
        next 5-smooth size, fast for the FFT) (:func:`gaussian_transfer`,
        :func:`shift_transfer` or a product of them).
    pad
        Reflected border [pixel]: a kernel or shift reaching less far does not wrap around.

    Returns
    -------
    np.ndarray
        ``float32 [B, H, H]``.
    """
    h = images.shape[1]
    size = _fft_size(h + 2 * pad)
    after = size - h - pad  # >= pad: the border reaches a size with small prime factors
    x = np.pad(images.astype(np.float64), ((0, 0), (pad, after), (pad, after)), mode="reflect")
    y = np.fft.irfft2(np.fft.rfft2(x) * transfer_fn(size), s=(size, size))
    return y[:, pad : pad + h, pad : pad + h].astype(np.float32)


def _fft_size(n: int) -> int:
    """The smallest ``m >= n`` whose prime factors are 2, 3 and 5 (63 + 8 = 71 is prime: 72)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _filled(images: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``[B, H, H]`` images with non-finite pixels replaced by ``fill[B]`` (their background)."""
    return np.where(np.isfinite(images), images, np.nan_to_num(fill)[:, None, None])


def smear_psf(
    stamps: np.ndarray,
    features: np.ndarray,
    feature_names: Sequence[str],
    target: np.ndarray,
    sigma_major: np.ndarray,
    sigma_minor: np.ndarray,
    angle: np.ndarray,
    background: np.ndarray | None = None,
    coupling: FeatureCoupling = COUPLINGS["ztf"],
    pad: int = _PAD,
) -> tuple[np.ndarray, np.ndarray]:
    """Blur the science or the reference and leave the PSF-mismatch residual in the difference.

    Parameters
    ----------
    stamps
        ``[B, H, H, 3]`` raw stamps, NaN allowed.
    features
        ``[B, F]`` raw features.
    feature_names
        Their names: each of ``coupling.widths`` present (ZTF's ``fwhm``), where positive, widens
        in quadrature by the kernel's FWHM (from the mean of its two variances) where the science
        is blurred.
    target
        ``[B]`` channel to blur: 0 science (``D += S' - S``), 1 reference (``D -= R' - R``).
    sigma_major, sigma_minor, angle
        ``[B]`` kernel shape, see :func:`gaussian_transfer`.
    background
        ``[B, 3]`` channel medians that fill NaN pixels before filtering (default: measured with
        :func:`robust_background`).
    coupling
        The survey's features that follow (:data:`COUPLINGS`; ZTF's by default).
    pad
        Reflected border of the filter [pixel], at least 3 major sigmas.

    Returns
    -------
    (stamps, features)
        New arrays; NaN pixels stay where they were.
    """
    target = np.asarray(target)
    out, feats = stamps.copy(), features.copy()
    if not len(stamps):
        return out, feats
    bkg = robust_background(stamps)[0] if background is None else background
    rows = np.arange(len(stamps))
    img = _filled(stamps[rows, :, :, target], bkg[rows, target])
    blurred = fourier_filter(
        img, lambda n: gaussian_transfer(n, sigma_major, sigma_minor, angle), pad
    )
    sign = np.where(target == SCIENCE, 1.0, -1.0).astype(np.float32)[:, None, None]
    original = stamps[rows, :, :, target]
    out[rows, :, :, target] = np.where(np.isfinite(original), blurred, original)
    out[..., DIFFERENCE] = stamps[..., DIFFERENCE] + sign * (blurred - img)
    var = 0.5 * (np.asarray(sigma_major) ** 2 + np.asarray(sigma_minor) ** 2)
    kernel_fwhm = _SIGMA_TO_FWHM * coupling.width_per_pixel  # feature units per kernel sigma
    for name in coupling.widths:
        if name in feature_names:
            j = list(feature_names).index(name)
            widened = np.sqrt(feats[:, j] ** 2 + kernel_fwhm**2 * var)
            feats[:, j] = np.where((target == SCIENCE) & (feats[:, j] > 0), widened, feats[:, j])
    return out, feats


def misregister(
    stamps: np.ndarray, shifts: np.ndarray, background: np.ndarray | None = None, pad: int = _PAD
) -> np.ndarray:
    """Shift the reference by a subpixel vector; the difference gains ``R - R'`` (dipoles).

    Parameters
    ----------
    stamps
        ``[B, H, H, 3]`` raw stamps, NaN allowed.
    shifts
        ``[B, 2]`` displacement (rows, columns) [pixel] of the reference's content, at most 4
        (the filter's reflected border).
    background
        ``[B, 3]`` channel medians that fill NaN pixels (default: :func:`robust_background`).
    pad
        Reflected border of the filter [pixel], at least the shift.

    Returns
    -------
    np.ndarray
        New stamps: ``S`` unchanged, ``R'`` = shifted ``R`` (Fourier shift: noise is kept, not
        smoothed), ``D' = D + R - R'``, i.e. ``S - R'``; NaN pixels stay where they were.
    """
    out = stamps.copy()
    if not len(stamps):
        return out
    bkg = robust_background(stamps)[0] if background is None else background
    ref = stamps[..., REFERENCE]
    img = _filled(ref, bkg[:, REFERENCE])
    moved = fourier_filter(img, lambda n: shift_transfer(n, np.asarray(shifts, np.float64)), pad)
    out[..., REFERENCE] = np.where(np.isfinite(ref), moved, ref)
    out[..., DIFFERENCE] = stamps[..., DIFFERENCE] + (img - moved)
    return out


# --- Photometry -----------------------------------------------------------------------------------
def robust_background(stamps: np.ndarray, step: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per-image, per-channel median and MAD-based std, on a ``step``-subsampled grid.

    Parameters
    ----------
    stamps
        ``[B, H, W, C]``, NaN and inf ignored.
    step
        Pixel stride of the subsample (2: 1024 of 3969 pixels, a std to ~4 %, 4x cheaper).

    Returns
    -------
    (median, sigma)
        ``float32 [B, C]`` each; NaN for a channel without finite pixels.

    Examples
    --------
    >>> x = np.zeros((1, 9, 9, 1), np.float32); x[0, ::2, ::2] = 1.0; x[0, 0, 0] = np.nan
    >>> [float(v[0, 0]) for v in robust_background(x, step=1)]
    [0.0, 0.0]
    """
    b, c = stamps.shape[0], stamps.shape[-1]
    x = stamps[:, ::step, ::step, :].reshape(b, -1, c).transpose(0, 2, 1).astype(np.float32)
    x = np.where(np.isfinite(x), x, np.nan)
    n = np.isfinite(x).sum(axis=-1, keepdims=True)

    def median(v: np.ndarray) -> np.ndarray:
        s = np.sort(v, axis=-1)  # NaN sort last
        lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0), axis=-1)
        hi = np.take_along_axis(s, np.minimum(n // 2, s.shape[-1] - 1), axis=-1)
        return np.where(n > 0, 0.5 * (lo + hi), np.nan)

    med = median(x)
    mad = median(np.abs(x - med))
    return med[..., 0], (_MAD_TO_SIGMA * mad)[..., 0]


def scale_flux(
    stamps: np.ndarray,
    features: np.ndarray,
    feature_names: Sequence[str],
    factor: np.ndarray,
    coupling: FeatureCoupling = COUPLINGS["ztf"],
) -> tuple[np.ndarray, np.ndarray]:
    """A zero-point change: science and difference times ``factor``, magnitudes brighter.

    Parameters
    ----------
    stamps
        ``[B, H, W, 3]`` raw stamps.
    features
        ``[B, F]`` raw features.
    feature_names
        Their names: each of ``coupling.magnitudes`` present (ZTF's
        :data:`MAGNITUDE_FEATURES`) shifts by ``-2.5 log10(factor)``, except where it holds
        ``coupling.no_magnitude``.
    factor
        ``[B]`` positive flux factors.
    coupling
        The survey's features that follow (:data:`COUPLINGS`; ZTF's by default).

    Returns
    -------
    (stamps, features)
        New arrays; the reference is unchanged (its own calibration).
    """
    factor = np.asarray(factor, np.float64)
    out, feats = stamps.copy(), features.copy()
    k = factor.astype(np.float32)[:, None, None]
    out[..., SCIENCE] *= k
    out[..., DIFFERENCE] *= k
    dmag = (-2.5 * np.log10(factor)).astype(features.dtype)
    for name in coupling.magnitudes:
        if name in feature_names:
            j = list(feature_names).index(name)
            if coupling.no_magnitude is None:
                feats[:, j] += dmag
            else:  # "no flux" has no magnitude to shift
                feats[:, j] = np.where(
                    feats[:, j] == coupling.no_magnitude, feats[:, j], feats[:, j] + dmag
                )
    return out, feats


def add_noise(
    stamps: np.ndarray, science_noise: np.ndarray, reference_noise: np.ndarray, unit: np.ndarray
) -> np.ndarray:
    """Add white Gaussian noise to science and reference and propagate it into ``D = S - R``.

    Parameters
    ----------
    stamps
        ``[B, H, W, 3]`` raw stamps.
    science_noise, reference_noise
        ``[B, H, W]`` standard-normal fields (drawn by the caller, so a seed fixes them).
    unit
        ``[B, 2]`` noise std [DN] for science and reference.

    Returns
    -------
    np.ndarray
        New stamps: ``S + n_S``, ``R + n_R``, ``D + n_S - n_R``. NaN stays NaN.
    """
    out = stamps.copy()
    n_s = (science_noise * np.nan_to_num(unit[:, 0])[:, None, None]).astype(np.float32)
    n_r = (reference_noise * np.nan_to_num(unit[:, 1])[:, None, None]).astype(np.float32)
    out[..., SCIENCE] += n_s
    out[..., REFERENCE] += n_r
    out[..., DIFFERENCE] += n_s - n_r
    return out


def add_background(stamps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Add a constant per image and channel.

    Parameters
    ----------
    stamps
        ``[B, H, W, C]`` raw stamps.
    offsets
        ``[B, C]`` [DN] (non-finite counts as 0).

    Returns
    -------
    np.ndarray
        New stamps.
    """
    return stamps + np.nan_to_num(offsets).astype(np.float32)[:, None, None, :]


def saturate(
    stamps: np.ndarray, target: np.ndarray, level: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Saturate science or reference pixels above a level; the difference follows.

    Parameters
    ----------
    stamps
        ``[B, H, W, 3]`` raw stamps.
    target
        ``[B]`` channel: 0 science, 1 reference.
    level
        ``[B]`` saturation level [DN] (``inf``: nothing saturates).
    mask
        ``[B]`` True: saturated pixels become NaN in the target and the difference (ZTF's
        mask); False: they are clipped at ``level`` and the difference loses (science) or gains
        (reference) what was clipped off.

    Returns
    -------
    np.ndarray
        New stamps.
    """
    out = stamps.copy()
    rows = np.arange(len(stamps))
    img = stamps[rows, :, :, target]
    lvl = np.asarray(level, np.float32)[:, None, None]
    over = np.isfinite(img) & (img > lvl)
    m = np.asarray(mask, bool)[:, None, None]
    clipped = np.where(over, np.where(m, np.nan, lvl), img)
    out[rows, :, :, target] = clipped
    sign = np.where(np.asarray(target) == SCIENCE, -1.0, 1.0).astype(np.float32)[:, None, None]
    excess = np.where(over & ~m, img - lvl, 0.0).astype(np.float32)
    diff = stamps[..., DIFFERENCE] + sign * excess
    out[..., DIFFERENCE] = np.where(over & m, np.nan, diff)
    return out


# --- The batch ----------------------------------------------------------------------------------
def augment_batch(
    features: np.ndarray,
    stamps: np.ndarray,
    feature_names: Sequence[str],
    config: AugmentConfig,
    rng: np.random.Generator,
    survey: str = "ztf",
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one batch of raw examples (in the order of the module's table).

    The parameters of every augmentation are drawn for every example whatever the probabilities
    (the noise fields, the bulk of the draws, only where noise fires), so the same generator state
    gives the same batch; the images are touched only for the examples an augmentation fires on.

    Parameters
    ----------
    features
        ``float32 [B, F]`` raw features (imputed, unclipped).
    stamps
        ``float32 [B, S, S, 3]`` raw science, reference, difference (S 63 ZTF, 30 Rubin); NaN
        allowed.
    feature_names
        Feature order (magnitudes and widths are found by name, see :data:`COUPLINGS`).
    config
        Probabilities and strengths.
    rng
        Source of randomness.
    survey
        Whose examples (``ztf``, ``lsst``): which features follow the pixels.

    Returns
    -------
    (features, stamps)
        New float32 arrays of the same shapes (the inputs are not modified). With
        :meth:`AugmentConfig.none` they equal the inputs.

    Raises
    ------
    ValueError
        For saturation on a survey whose cutouts it does not model (Rubin's), or an unknown
        survey.
    """
    if survey not in COUPLINGS:
        raise ValueError(f"no augmentation coupling for survey {survey!r}: {sorted(COUPLINGS)}")
    coupling = COUPLINGS[survey]
    if config.saturation_prob > 0 and not coupling.saturation:
        raise ValueError(
            f"saturation_prob must be 0 for {survey} examples: its cutouts are not NaN-masked "
            "where saturated (see the lsst preset)"
        )
    features = np.asarray(features, np.float32)
    stamps = np.asarray(stamps, np.float32)
    b, h = len(stamps), stamps.shape[1]
    u = rng.random((len(AUGMENTATIONS), b))  # one "does it fire" draw per augmentation, example
    fires = {name: u[i] < getattr(config, f"{name}_prob") for i, name in enumerate(AUGMENTATIONS)}
    # PSF
    psf_target = rng.integers(0, 2, b)
    sig_major = config.psf_sigma_max * rng.random(b)
    sig_minor = sig_major * rng.uniform(config.psf_min_axis_ratio, 1.0, b)
    psf_angle = rng.uniform(0.0, np.pi, b)
    # Misregistration: uniform in the disc of radius shift_max.
    radius = config.shift_max * np.sqrt(rng.random(b))
    theta = rng.uniform(0.0, 2 * np.pi, b)
    shifts = np.stack([radius * np.sin(theta), radius * np.cos(theta)], axis=1)
    # Zero point
    log_max = math.log1p(config.zero_point_max)
    factor = np.exp(rng.uniform(-log_max, log_max, b))
    # Noise
    noise_frac = config.noise_max_fraction * rng.random((b, 2))
    # Background
    bkg_offset = config.background_max * rng.uniform(-1.0, 1.0, (b, 3))
    # Saturation
    sat_target = rng.integers(0, 2, b)
    sat_frac = rng.uniform(*config.saturation_level, b)
    sat_mask = rng.random(b) < config.saturation_mask_prob
    # Dihedral
    group = rng.integers(0, 8, b)

    x, f = stamps.copy(), features.copy()
    # Background and noise of the inputs, measured once (the filters fill NaN with the median;
    # noise and offsets are in units of the std, the science's scaled with the zero point).
    if any(fires[a].any() for a in ("psf", "shift", "zero_point", "noise", "background")):
        bkg, sigma = robust_background(stamps)
    sel = np.flatnonzero(fires["psf"])
    if len(sel):
        x[sel], f[sel] = smear_psf(
            x[sel], f[sel], feature_names, psf_target[sel], sig_major[sel], sig_minor[sel],
            psf_angle[sel], bkg[sel], coupling, config.filter_border,
        )  # fmt: skip
    sel = np.flatnonzero(fires["shift"])
    if len(sel):
        x[sel] = misregister(x[sel], shifts[sel], bkg[sel], config.filter_border)
    sel = np.flatnonzero(fires["zero_point"])
    if len(sel):
        x[sel], f[sel] = scale_flux(x[sel], f[sel], feature_names, factor[sel], coupling)
        sigma[sel, SCIENCE] *= factor[sel]
        sigma[sel, DIFFERENCE] *= factor[sel]
    sel = np.flatnonzero(fires["noise"])
    if len(sel):
        unit = noise_frac[sel] * sigma[sel][:, [SCIENCE, REFERENCE]]
        fields_ = rng.standard_normal((2, len(sel), h, h), dtype=np.float32)
        x[sel] = add_noise(x[sel], fields_[0], fields_[1], unit)
    sel = np.flatnonzero(fires["background"])
    if len(sel):
        x[sel] = add_background(x[sel], bkg_offset[sel] * sigma[sel])
    sel = np.flatnonzero(fires["saturation"])
    if len(sel):
        rows = np.arange(len(sel))
        img = x[sel][rows, :, :, sat_target[sel]]
        peak = np.where(np.isfinite(img), img, -np.inf).reshape(len(sel), -1).max(axis=1)
        sat_bkg, sat_sigma = robust_background(x[sel])  # as the image is now
        base = sat_bkg[rows, sat_target[sel]]
        noise = sat_sigma[rows, sat_target[sel]]
        bright = (peak - base) >= config.saturation_min_snr * noise
        level = np.where(bright, base + sat_frac[sel] * (peak - base), np.inf)
        x[sel] = saturate(x[sel], sat_target[sel], level, sat_mask[sel])
    sel = np.flatnonzero(fires["dihedral"])
    if len(sel):
        x[sel] = dihedral(x[sel], group[sel])
    return f, x
