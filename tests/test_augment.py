"""Training augmentations (model/augment.py): each does what it says on synthetic stamps whose
sources and noise are known, keeps ``D = S - R``, touches NaN only where it says, and the batch
function is the identity when switched off and deterministic under a seed."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

from model.augment import (
    AUGMENTATIONS,
    AugmentConfig,
    add_background,
    add_noise,
    augment_batch,
    dihedral,
    dihedral_inverse,
    misregister,
    robust_background,
    saturate,
    scale_flux,
    smear_psf,
)
from transforms.schema import FEATURES_ALERCE_26, FEATURES_PRODUCTION

N = 63
SIGMA_S, SIGMA_R = 5.0, 1.5  # [DN] science and reference noise
STAR = (24.0, 36.0)  # (row, col) of a static star in science and reference
FEATURES = FEATURES_PRODUCTION
MAG, LIM, FWHM = (FEATURES.index(n) for n in ("magpsf", "diffmaglim", "fwhm"))


def _gauss(center: tuple[float, float], sigma: float, flux: float) -> np.ndarray:
    y, x = np.mgrid[:N, :N].astype(np.float64)
    r2 = (y - center[0]) ** 2 + (x - center[1]) ** 2
    return flux * np.exp(-0.5 * r2 / sigma**2) / (2 * np.pi * sigma**2)


def _scene(
    b: int = 4, seed: int = 0, star_flux: float = 2e5, noise: bool = True, transient_flux=5e3
):
    """Raw batch: a static star in S and R, a transient at the centre of S; D = S - R exactly."""
    rng = np.random.default_rng(seed)
    star = _gauss(STAR, 1.2, star_flux)
    transient = _gauss((31.0, 31.0), 1.2, transient_flux)
    s = 200.0 + star + transient + noise * SIGMA_S * rng.standard_normal((b, N, N))
    r = 180.0 + star + noise * SIGMA_R * rng.standard_normal((b, N, N))
    stamps = np.stack([s, r, s - r], axis=-1).astype(np.float32)
    features = rng.normal(size=(b, len(FEATURES))).astype(np.float32)
    features[:, MAG], features[:, LIM], features[:, FWHM] = 19.0, 20.5, 2.5
    return features, stamps


def _only(name: str, **strength) -> AugmentConfig:
    """A config with one augmentation always on and the rest off."""
    base = {f.name: getattr(AugmentConfig.none(), f.name) for f in fields(AugmentConfig)}
    return AugmentConfig(**{**base, f"{name}_prob": 1.0, **strength})


def _centroid(img: np.ndarray, center: tuple[float, float], half: int = 6) -> np.ndarray:
    r0, c0 = round(center[0]), round(center[1])
    box = img[r0 - half : r0 + half + 1, c0 - half : c0 + half + 1].astype(np.float64)
    box = box - np.median(img)
    y, x = np.mgrid[r0 - half : r0 + half + 1, c0 - half : c0 + half + 1]
    return np.array([(box * y).sum(), (box * x).sum()]) / box.sum()


def _second_moments(img: np.ndarray, background: float) -> tuple[float, float]:
    """Variance along rows and along columns of a background-subtracted noiseless image."""
    w = img.astype(np.float64) - background
    y, x = np.mgrid[:N, :N]
    cy, cx = (w * y).sum() / w.sum(), (w * x).sum() / w.sum()
    return float((w * (y - cy) ** 2).sum() / w.sum()), float((w * (x - cx) ** 2).sum() / w.sum())


# --- Dihedral group -------------------------------------------------------------------------------
def test_dihedral_gives_eight_distinct_transforms_that_form_the_group():
    x = np.random.default_rng(1).normal(size=(1, N, N, 3)).astype(np.float32)
    images = [dihedral(x, k) for k in range(8)]
    for i in range(8):
        for j in range(i):
            assert not np.array_equal(images[i], images[j]), (i, j)
    # The same transform for every channel, the centre pixel fixed.
    for k in range(8):
        for c in range(3):
            np.testing.assert_array_equal(images[k][..., c], dihedral(x[..., c : c + 1], k)[..., 0])
        np.testing.assert_array_equal(images[k][0, 31, 31], x[0, 31, 31])
    # Closed under composition, with inverses.
    for a in range(8):
        for b in range(8):
            composed = dihedral(dihedral(x, a), b)
            assert sum(np.array_equal(composed, im) for im in images) == 1, (a, b)
        np.testing.assert_array_equal(dihedral(images[a], dihedral_inverse(a)), x)
    # Vectorised: a different element per example.
    batch = np.repeat(x, 8, axis=0)
    out = dihedral(batch, np.arange(8))
    for k in range(8):
        np.testing.assert_array_equal(out[k : k + 1], images[k])


def test_batch_dihedral_draws_all_eight():
    x = np.random.default_rng(2).normal(size=(1, N, N, 3)).astype(np.float32)
    images = [dihedral(x, k)[0] for k in range(8)]
    f = np.zeros((200, len(FEATURES)), np.float32)
    _, out = augment_batch(f, np.repeat(x, 200, 0), FEATURES, _only("dihedral"), rng(0))
    seen = [next(k for k in range(8) if np.array_equal(o, images[k])) for o in out]
    assert sorted(set(seen)) == list(range(8))


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- Zero point -----------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [FEATURES_PRODUCTION, FEATURES_ALERCE_26])
def test_scale_flux_scales_science_and_difference_and_shifts_magnitudes(names):
    f, x = _scene(3)
    f = np.random.default_rng(3).normal(20, 1, size=(3, len(names))).astype(np.float32)
    k = np.array([0.87, 1.0, 1.15])
    xo, fo = scale_flux(x, f, names, k)
    for c in (0, 2):
        np.testing.assert_allclose(xo[..., c], x[..., c] * k[:, None, None].astype(np.float32))
    np.testing.assert_array_equal(xo[..., 1], x[..., 1])
    shifted = [names.index("magpsf"), names.index("diffmaglim")]
    for j in shifted:  # float32 magnitudes near 20: a few 2e-6 ulps
        np.testing.assert_allclose(fo[:, j] - f[:, j], -2.5 * np.log10(k), atol=5e-6)
    rest = [i for i in range(len(names)) if i not in shifted]  # magnr too: the reference's scale
    np.testing.assert_array_equal(fo[:, rest], f[:, rest])


def test_batch_zero_point_factor_is_bounded_and_matches_the_magnitude_shift():
    f, x = _scene(64, noise=False)
    fo, xo = augment_batch(f, x, FEATURES, _only("zero_point", zero_point_max=0.15), rng(4))
    k = xo[..., 0].sum(axis=(1, 2)) / x[..., 0].sum(axis=(1, 2))
    assert np.all((k >= 1 / 1.15 - 1e-6) & (k <= 1.15 + 1e-6)) and k.std() > 0.03
    np.testing.assert_allclose(fo[:, MAG] - f[:, MAG], -2.5 * np.log10(k), atol=1e-5)
    np.testing.assert_allclose(fo[:, LIM] - f[:, LIM], -2.5 * np.log10(k), atol=1e-5)
    np.testing.assert_array_equal(xo[..., 1], x[..., 1])


# --- Misregistration ------------------------------------------------------------------------------
def test_misregistration_moves_the_reference_and_leaves_a_dipole():
    _, x = _scene(1)
    shift = np.array([[0.3, -0.4]])
    xo = misregister(x, shift)
    np.testing.assert_array_equal(xo[..., 0], x[..., 0])
    moved = _centroid(xo[0, ..., 1], STAR) - _centroid(x[0, ..., 1], STAR)
    np.testing.assert_allclose(moved, shift[0], atol=0.02)
    # D' = S - R' (the difference of the misregistered pair) ...
    np.testing.assert_allclose(xo[..., 2], xo[..., 0] - xo[..., 1], atol=0.05)
    # ... whose residual at the star is a dipole: a positive lobe where the reference left, a
    # negative one where it went, both far above the noise.
    res = (xo[0, ..., 2] - x[0, ..., 2]).astype(np.float64)
    r0, c0 = (round(v) for v in STAR)
    box = res[r0 - 5 : r0 + 6, c0 - 5 : c0 + 6]
    assert box.max() > 30 * SIGMA_S and box.min() < -30 * SIGMA_S
    pos = np.array(np.unravel_index(box.argmax(), box.shape), float)
    neg = np.array(np.unravel_index(box.argmin(), box.shape), float)
    assert np.dot(neg - pos, shift[0]) > 0
    # Away from sources only the reference noise moves: nothing above a few sigma.
    assert np.abs(res[45:, :20]).max() < 6 * SIGMA_R


# --- Noise ----------------------------------------------------------------------------------------
def test_noise_raises_the_std_as_expected_and_propagates_into_the_difference():
    _, x = _scene(2, noise=True)
    g = np.random.default_rng(5)
    n_s, n_r = g.standard_normal((2, 2, N, N)).astype(np.float32)
    unit = np.array([[SIGMA_S * 0.75, SIGMA_R * 1.0], [0.0, 0.0]])
    xo = add_noise(x, n_s, n_r, unit)
    sky = (slice(40, 63), slice(0, 20))  # source-free corner

    def std(a):
        return float(a[0][sky].std())

    assert std(xo[..., 0]) == pytest.approx(SIGMA_S * math.sqrt(1 + 0.75**2), rel=0.1)
    assert std(xo[..., 1]) == pytest.approx(SIGMA_R * math.sqrt(2), rel=0.1)
    expected_d = math.hypot(math.hypot(SIGMA_S, SIGMA_R), math.hypot(0.75 * SIGMA_S, SIGMA_R))
    assert std(xo[..., 2]) == pytest.approx(expected_d, rel=0.1)
    np.testing.assert_allclose(xo[..., 2], xo[..., 0] - xo[..., 1], atol=5e-3)  # float32 at 2e4
    np.testing.assert_array_equal(xo[1], x[1])  # zero std: unchanged


def test_batch_noise_is_a_bounded_fraction_of_the_robust_std():
    f, x = _scene(64)
    _, xo = augment_batch(f, x, FEATURES, _only("noise", noise_max_fraction=0.5), rng(6))
    _, sigma = robust_background(x)
    added = (xo - x)[:, 40:, :20, :2].std(axis=(1, 2)) / sigma[:, :2]
    assert added.max() < 0.5 * 1.15 and added.max() > 0.35 and added.min() < 0.15


def test_robust_background_ignores_sources_and_nan():
    _, x = _scene(8)
    x[:, :5] = np.nan
    med, sigma = robust_background(x)
    np.testing.assert_allclose(med[:, 0], 200.0, atol=1.0)
    np.testing.assert_allclose(med[:, 1], 180.0, atol=0.3)
    for c, expected in ((0, SIGMA_S), (1, SIGMA_R)):  # ~900 pixels: 5 % scatter each
        np.testing.assert_allclose(sigma[:, c], expected, rtol=0.2)
        assert sigma[:, c].mean() == pytest.approx(expected, rel=0.05)
    med, sigma = robust_background(np.full((1, N, N, 3), np.nan, np.float32))
    assert np.isnan(med).all() and np.isnan(sigma).all()


# --- Background -----------------------------------------------------------------------------------
def test_background_offset_moves_the_level_but_not_the_normalised_stamps():
    from transforms.preprocess import preprocess_stamps

    f, x = _scene(4)
    offsets = np.array([[50.0, -20.0, 7.0]] * 4)
    xo = add_background(x, offsets)
    np.testing.assert_allclose(
        xo - x, np.broadcast_to(offsets[:, None, None, :], x.shape), atol=1e-3
    )
    for crop in (21, 63):
        a, b = (preprocess_stamps(v, crop).numpy() for v in (x, xo))
        np.testing.assert_allclose(a, b, atol=1e-5)
    # In the batch: only a constant per image and channel.
    _, xb = augment_batch(f, x, FEATURES, _only("background", background_max=5.0), rng(7))
    d = (xb - x).reshape(4, -1, 3)
    np.testing.assert_allclose(d.max(axis=1), d.min(axis=1), atol=1e-3)
    assert np.abs(d).max() > 1.0


# --- PSF ------------------------------------------------------------------------------------------
def test_blurring_the_science_widens_its_sources_and_leaves_the_mismatch_in_the_difference():
    f, x = _scene(2, noise=False)
    a, b = np.array([0.8, 0.5]), np.array([0.4, 0.5])
    xo, fo = smear_psf(x, f, FEATURES, np.array([0, 1]), a, b, np.zeros(2))
    # Science of example 0: variance grows by a² along columns (angle 0), b² along rows; flux kept.
    vr0, vc0 = _second_moments(x[0, ..., 0], 200.0)
    vr1, vc1 = _second_moments(xo[0, ..., 0], 200.0)
    assert vc1 - vc0 == pytest.approx(0.8**2, abs=0.03)
    assert vr1 - vr0 == pytest.approx(0.4**2, abs=0.03)
    assert xo[0, ..., 0].sum() == pytest.approx(x[0, ..., 0].sum(), rel=1e-5)
    np.testing.assert_array_equal(xo[0, ..., 1], x[0, ..., 1])
    # Example 1 blurs the reference; the science stays. Both keep D = S - R (the mismatch
    # residual: negative core, positive ring at the star for a blurred reference, inverted for a
    # blurred science).
    np.testing.assert_array_equal(xo[1, ..., 0], x[1, ..., 0])
    assert not np.allclose(xo[1, ..., 1], x[1, ..., 1])
    np.testing.assert_allclose(xo[..., 2], xo[..., 0] - xo[..., 1], atol=0.05)
    r0, c0 = (round(v) for v in STAR)
    assert xo[0, r0, c0, 2] < -100 and xo[1, r0, c0, 2] > 100
    # fwhm widens in quadrature where the science was blurred, only there.
    expected = math.sqrt(2.5**2 + 8 * math.log(2) * 0.5 * (0.8**2 + 0.4**2))
    assert fo[0, FWHM] == pytest.approx(expected, rel=1e-5)
    assert fo[1, FWHM] == f[1, FWHM]
    np.testing.assert_array_equal(np.delete(fo, FWHM, 1), np.delete(f, FWHM, 1))


def test_psf_orientation_follows_the_angle():
    f, x = _scene(1, noise=False)
    xo, _ = smear_psf(x, f, FEATURES, np.array([0]), np.array([0.8]), np.array([0.0]), [np.pi / 2])
    vr0, vc0 = _second_moments(x[0, ..., 0], 200.0)
    vr1, vc1 = _second_moments(xo[0, ..., 0], 200.0)
    assert vr1 - vr0 == pytest.approx(0.64, abs=0.03) and abs(vc1 - vc0) < 0.03


# --- Saturation -----------------------------------------------------------------------------------
def test_saturation_masks_or_clips_above_the_level_and_the_difference_follows():
    _, x = _scene(4, noise=False)
    level = np.array([2000.0, 2000.0, 1500.0, np.inf])
    target = np.array([0, 1, 0, 0])
    mask = np.array([True, False, False, True])
    xo = saturate(x, target, level, mask)
    over = x[0, ..., 0] > 2000
    assert 5 < over.sum() < 100
    assert np.array_equal(np.isnan(xo[0, ..., 0]), over)
    assert np.array_equal(np.isnan(xo[0, ..., 2]), over)
    assert not np.isnan(xo[1:]).any() and not np.isnan(xo[0, ..., 1]).any()
    # Clipped: the target stops at the level, D = S - R still holds.
    assert xo[1, ..., 1].max() == pytest.approx(2000.0) and xo[2, ..., 0].max() == 1500.0
    np.testing.assert_allclose(xo[1:3, ..., 2], xo[1:3, ..., 0] - xo[1:3, ..., 1], atol=1e-3)
    np.testing.assert_array_equal(xo[3], x[3])  # infinite level: nothing saturates


def test_batch_saturation_only_hits_bright_sources():
    f, bright = _scene(32, star_flux=2e5)
    _, faint = _scene(32, star_flux=300.0, transient_flux=300.0)  # peaks < 10 sigma
    cfg = _only("saturation", saturation_mask_prob=1.0)
    _, out_bright = augment_batch(f, bright, FEATURES, cfg, rng(8))
    _, out_faint = augment_batch(f, faint, FEATURES, cfg, rng(8))
    np.testing.assert_array_equal(out_faint, faint)
    hit = np.isnan(out_bright).any(axis=(1, 2, 3))
    assert hit.all()
    r0, c0 = (round(v) for v in STAR)
    nan_rows, nan_cols = np.nonzero(np.isnan(out_bright).any(axis=(0, 3)))
    assert np.abs(nan_rows - r0).max() <= 4 and np.abs(nan_cols - c0).max() <= 4


# --- The batch ------------------------------------------------------------------------------------
def test_none_is_the_identity_and_inputs_are_not_modified():
    f, x = _scene(8)
    x[:, 0, :5] = np.nan
    f0, x0 = f.copy(), x.copy()
    assert AugmentConfig.none().is_identity and not AugmentConfig().is_identity
    fo, xo = augment_batch(f, x, FEATURES, AugmentConfig.none(), rng(0))
    np.testing.assert_array_equal(fo, f)
    np.testing.assert_array_equal(xo, x)
    augment_batch(f, x, FEATURES, AugmentConfig(), rng(0))
    np.testing.assert_array_equal(f, f0)
    np.testing.assert_array_equal(x, x0)


def test_deterministic_under_a_seed():
    f, x = _scene(16)
    a = augment_batch(f, x, FEATURES, AugmentConfig(), rng(11))
    b = augment_batch(f, x, FEATURES, AugmentConfig(), rng(11))
    c = augment_batch(f, x, FEATURES, AugmentConfig(), rng(12))
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])


def test_nan_pixels_are_kept_and_only_saturation_adds_any():
    f, x = _scene(32)
    x[:, 2:4, :] = np.nan
    x[::2, 31, 28, 1] = np.nan  # a masked reference pixel near the transient
    no_geometry = {f"{name}_prob": 1.0 for name in AUGMENTATIONS} | {
        "saturation_prob": 0.0,
        "dihedral_prob": 0.0,
    }
    _, xo = augment_batch(f, x, FEATURES, AugmentConfig(**no_geometry), rng(13))
    assert np.isfinite(xo[~np.isnan(x)]).all()
    np.testing.assert_array_equal(np.isnan(xo), np.isnan(x))
    # Dihedral moves them (as many, and the masked rows become rows or columns).
    _, xd = augment_batch(f, x, FEATURES, _only("dihedral"), rng(14))
    assert np.isnan(xd).sum() == np.isnan(x).sum()
    # Saturation masking adds NaN and keeps the old ones.
    _, xs = augment_batch(f, x, FEATURES, _only("saturation", saturation_mask_prob=1.0), rng(15))
    assert np.isnan(xs[np.isnan(x)]).all() and np.isnan(xs).sum() > np.isnan(x).sum()


def test_default_batch_is_finite_and_keeps_the_difference_consistent():
    """PSF, shift, noise and dihedral keep D = S - R on a scene built that way (zero point,
    background and saturation change the science-to-reference relation on purpose)."""
    f, x = _scene(64)
    cfg = AugmentConfig(saturation_prob=0.0, zero_point_prob=0.0, background_prob=0.0)
    fo, xo = augment_batch(f, x, FEATURES, cfg, rng(16))
    assert np.isfinite(fo).all() and np.isfinite(xo).all()
    np.testing.assert_allclose(xo[..., 2], xo[..., 0] - xo[..., 1], atol=0.1)
    assert fo.dtype == xo.dtype == np.float32


@pytest.mark.parametrize(
    "bad",
    [
        {"noise_prob": 1.5},
        {"shift_prob": -0.1},
        {"psf_sigma_max": -1.0},
        {"psf_min_axis_ratio": 0.0},
        {"saturation_level": (0.9, 0.3)},
        {"shift_max": 5.0},
    ],
)
def test_config_refuses_nonsense(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        AugmentConfig(**bad)


def test_config_round_trips_through_json():
    import json

    d = json.loads(json.dumps(AugmentConfig().to_dict()))
    assert AugmentConfig(**{**d, "saturation_level": tuple(d["saturation_level"])}) == (
        AugmentConfig()
    )
