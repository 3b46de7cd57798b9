"""Stamp decoding: bit-exact with astropy on every real cutout; specific errors for bad ones."""

from __future__ import annotations

import gzip
import io
import warnings

import numpy as np
import pytest
from astropy.io import fits

from tests.helpers import fits_stamp
from transforms.alerts import iter_alerts
from transforms.schema import STAMP_KINDS
from transforms.stamps import MAX_STAMP_BYTES, StampError, decode_stamp, decode_stamps


def _astropy(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        # Some 2018 ZTF cutouts have a non-standard SIMPLE card; astropy warns and reads them.
        warnings.simplefilter("ignore")
        with fits.open(io.BytesIO(gzip.decompress(data))) as hdul:
            return np.array(hdul[0].data)


def _bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_every_real_stamp_equals_astropy(real):
    n = nan_stamps = 0
    shapes = set()
    for source, data in real:
        for alert in iter_alerts(data, source):
            for kind in STAMP_KINDS:
                raw = alert.cutout_bytes(kind)
                ours = decode_stamp(raw)
                assert ours.dtype == np.float32 and ours.dtype.isnative
                assert _bit_equal(ours, _astropy(raw)), (source, kind)
                nan_stamps += bool(np.isnan(ours).any())
                shapes.add(ours.shape)
                n += 1
    assert n == 225 * 3
    assert nan_stamps > 0  # the real data has NaN patches: make sure they survive
    assert (63, 63) in shapes and len(shapes) > 1


def test_synthetic_roundtrip_with_nans_and_odd_shape():
    img = np.random.default_rng(1).normal(size=(58, 63)).astype(np.float32)
    img[5:9, 10:12] = np.nan
    got = decode_stamp(fits_stamp(img))
    assert got.shape == (58, 63) and _bit_equal(got, img)


def test_bscale_bzero_applied_like_astropy():
    img = np.arange(9, dtype=np.float32).reshape(3, 3)
    hdu = fits.PrimaryHDU(img.astype(">f4"))
    hdu.header["BSCALE"] = 2.0
    hdu.header["BZERO"] = 1.0
    buf = io.BytesIO()
    hdu.writeto(buf)
    raw = gzip.compress(buf.getvalue(), mtime=0)
    assert np.array_equal(decode_stamp(raw), _astropy(raw))


def _fits_bytes(**cards) -> bytes:
    img = np.zeros((4, 4), np.float32)
    buf = io.BytesIO()
    fits.PrimaryHDU(img.astype(">f4")).writeto(buf)
    data = bytearray(buf.getvalue())
    for key, value in cards.items():
        i = data.find(key.encode().ljust(8) + b"= ")
        data[i + 10 : i + 30] = value.rjust(20).encode()
    return bytes(data)


BAD_STAMPS = [
    (None, "null"),
    (b"", "null"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"),
    (b"hello world", "not_fits"),
    (gzip.compress(b"x" * 100, mtime=0)[:-10], "gzip"),
    (b"\x1f\x8b" + b"\x00" * 20, "gzip"),
    (gzip.compress(b"NOTFITS" * 10, mtime=0), "not_fits"),
    (gzip.compress(_fits_bytes(BITPIX="16"), mtime=0), "unsupported"),
    (gzip.compress(_fits_bytes(NAXIS="3"), mtime=0), "bad_header"),
    (gzip.compress(_fits_bytes(NAXIS1="1000"), mtime=0), "truncated"),
    (gzip.compress(_fits_bytes(NAXIS1="-4"), mtime=0), "bad_header"),
    (gzip.compress(_fits_bytes(SIMPLE="F"), mtime=0), "bad_header"),
    (gzip.compress(_fits_bytes()[:2000], mtime=0), "truncated"),
    (
        gzip.compress(b"SIMPLE  =                    T" + b" " * 50 + b" " * 2800, mtime=0),
        "truncated",
    ),
]


@pytest.mark.parametrize(
    ("raw", "code"),
    BAD_STAMPS,
    ids=[f"{i}-{code}" for i, (_, code) in enumerate(BAD_STAMPS)],  # stable across workers
)
def test_bad_stamps_have_specific_reasons(raw, code):
    with pytest.raises(StampError) as info:
        decode_stamp(raw)
    assert info.value.code == code, info.value


def test_decompression_bomb_is_refused_without_inflating():
    bomb = gzip.compress(b"SIMPLE" + b"\x00" * (64 * MAX_STAMP_BYTES), mtime=0)
    assert len(bomb) < 200_000
    with pytest.raises(StampError) as info:
        decode_stamp(bomb)
    assert info.value.code == "bomb"


def test_no_end_card_is_bounded():
    header = b"SIMPLE  =                    T".ljust(80) + b"COMMENT".ljust(80) * 2000
    with pytest.raises(StampError) as info:
        decode_stamp(gzip.compress(header, mtime=0))
    assert info.value.code == "bad_header"


def test_decode_stamps_names_the_failing_kind():
    good = fits_stamp(np.ones((63, 63), np.float32))
    images = decode_stamps({"science": good, "template": good, "difference": good})
    assert set(images) == set(STAMP_KINDS)
    with pytest.raises(StampError) as info:
        decode_stamps({"science": good, "template": None, "difference": good})
    assert info.value.code == "null" and info.value.detail.startswith("template")


def _zlib_only(data: bytes) -> tuple[str, object]:
    """``inflate`` with ISA-L switched off: the zlib reference, outcome as (kind, value)."""
    import transforms.stamps as stamps

    fast, stamps._fast_decompressobj = stamps._fast_decompressobj, None
    try:
        return _outcome(data)
    finally:
        stamps._fast_decompressobj = fast


def _outcome(data: bytes) -> tuple[str, object]:
    from transforms.stamps import inflate

    try:
        return "ok", inflate(data)
    except StampError as e:
        return "error", str(e)


def test_isal_inflate_equals_zlib_on_real_and_broken_streams(real):
    """ISA-L (the fast path) and zlib give the same bytes, and the same reasons when broken."""
    import random

    import transforms.stamps as stamps

    assert stamps._fast_decompressobj is not None, "isal is a pinned dependency"
    rng = random.Random(15)
    cutouts = [
        alert.cutout_bytes(kind)
        for source, data in real[:40]
        for alert in iter_alerts(data, source)
        for kind in STAMP_KINDS
    ]
    checked = broken = 0
    for raw in filter(None, cutouts):
        mutants = [raw, raw[: len(raw) // 2], raw[:-1], raw[:-4], raw + b"junk", raw + raw]
        for lo in (0, len(raw) - 8):  # anywhere, and the CRC-32 / size trailer
            for _ in range(4):
                b = bytearray(raw)
                b[rng.randrange(lo, len(b))] ^= 1 << rng.randrange(8)
                mutants.append(bytes(b))
        for m in mutants:
            ours, reference = _outcome(m), _zlib_only(m)
            assert ours == reference, (ours[0], reference)
            checked += 1
            broken += reference[0] == "error"
    assert checked > 1000 and broken > checked // 4  # both paths really exercised
