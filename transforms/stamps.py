"""Decode ZTF cutouts: gzip-compressed single-HDU FITS -> ``float32`` arrays.

ZTF stamps are tiny (63x63 float32 + two 2880-byte header blocks), so ``astropy.io.fits`` spends
most of its time building HDU objects. The fast path here validates the header cards it relies on
and reads the data with one ``numpy.frombuffer``; the result equals ``fits.open(...)[0].data`` bit
for bit (NaN payloads and positions included), in native byte order.

Anything that is not such an image (null, JPEG, corrupt gzip, a decompression bomb, a wrong BITPIX,
truncated data) raises :class:`StampError` with a specific reason; nothing here allocates more than
:data:`MAX_STAMP_BYTES`.
"""

from __future__ import annotations

import zlib

import numpy as np

try:  # ISA-L inflates ZTF's cutouts in half zlib's time; zlib stays the reference
    from isal.isal_zlib import decompressobj as _fast_decompressobj
except ImportError:  # pragma: no cover - isal is a pinned dependency
    _fast_decompressobj = None

from transforms.schema import STAMP_KINDS

FITS_BLOCK = 2880
CARD = 80
#: Bound on an inflated stamp [bytes]. A 63x63 float32 FITS is 23,040 B; even a 512x512 one fits.
MAX_STAMP_BYTES = 2 * 1024 * 1024
#: Bound on header blocks, so a header with no END card cannot make us scan forever.
MAX_HEADER_BLOCKS = 36


class StampError(Exception):
    """A cutout that cannot be turned into an image.

    Parameters
    ----------
    code
        Short reason: ``null``, ``jpeg``, ``not_fits``, ``gzip``, ``bomb``, ``bad_header``,
        ``unsupported``, ``truncated``.
    detail
        Human-readable detail.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def inflate(data: bytes, limit: int = MAX_STAMP_BYTES) -> bytes:
    """Gunzip ``data`` without ever holding more than ``limit`` bytes of output.

    Parameters
    ----------
    data
        gzip stream (plain, uncompressed FITS passes through unchanged).
    limit
        Largest output accepted [bytes].

    Returns
    -------
    bytes
        The decompressed payload.

    Raises
    ------
    StampError
        ``jpeg``, ``not_fits``, ``gzip`` (corrupt or truncated stream) or ``bomb``.
    """
    if data[:2] == b"\xff\xd8":
        raise StampError("jpeg", "cutout is a JPEG image, not gzipped FITS (2016 test alerts)")
    if data[:6] == b"SIMPLE":
        if len(data) > limit:
            raise StampError("bomb", f"uncompressed FITS of {len(data)} B exceeds {limit} B")
        return data
    if data[:2] != b"\x1f\x8b":
        raise StampError("not_fits", f"cutout is neither gzip nor FITS, starts with {data[:8]!r}")
    if _fast_decompressobj is not None:
        try:
            d = _fast_decompressobj(wbits=31)
            out = d.decompress(data, limit)
            if not d.unconsumed_tail and d.eof:
                return out
        except Exception:  # zlib below says exactly what is wrong, in its words
            pass
    # The reference path, and every problem's reason (zlib's message), as before ISA-L.
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, limit)
    except zlib.error as e:
        raise StampError("gzip", f"corrupt gzip stream: {e}") from e
    if d.unconsumed_tail:
        raise StampError("bomb", f"cutout inflates past {limit} B")
    if not d.eof:
        raise StampError("gzip", "truncated gzip stream")
    return out


def _parse_header(buf: bytes) -> tuple[dict[str, str], int]:
    """Return the header's keyword -> raw value strings and the data offset."""
    cards: dict[str, str] = {}
    for block in range(MAX_HEADER_BLOCKS):
        start = block * FITS_BLOCK
        chunk = buf[start : start + FITS_BLOCK]
        if len(chunk) < FITS_BLOCK:
            raise StampError("truncated", f"header block {block} is {len(chunk)} B, not 2880")
        for i in range(0, FITS_BLOCK, CARD):
            card = chunk[i : i + CARD].decode("ascii", "replace")
            key = card[:8].rstrip()
            if key == "END":
                return cards, start + FITS_BLOCK
            if card[8:10] == "= " and key not in cards:
                value = card[10:].split("/", 1)[0].strip()
                cards[key] = value
    raise StampError("bad_header", f"no END card in {MAX_HEADER_BLOCKS} header blocks")


def header_cards(data: bytes) -> dict[str, str]:
    """The primary header of a cutout (gzip-compressed or not): keyword -> raw value string.

    Raises
    ------
    StampError
        As :func:`inflate` and on a header without an END card.
    """
    return _parse_header(inflate(data))[0]


def _int_card(cards: dict[str, str], key: str) -> int:
    try:
        return int(cards[key])
    except KeyError as e:
        raise StampError("bad_header", f"missing {key}") from e
    except ValueError as e:
        raise StampError("bad_header", f"{key} = {cards[key]!r} is not an integer") from e


def parse_fits_image(buf: bytes) -> np.ndarray:
    """Read the primary image of an uncompressed FITS file.

    Parameters
    ----------
    buf
        The FITS bytes.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(NAXIS2, NAXIS1)`` in native byte order, NaNs preserved.

    Raises
    ------
    StampError
        ``bad_header`` (no SIMPLE = T, NAXIS != 2, bad sizes), ``unsupported`` (BITPIX other than
        -32) or ``truncated`` (fewer data bytes than NAXIS1 x NAXIS2 x 4).
    """
    if buf[:6] != b"SIMPLE":
        raise StampError("not_fits", f"does not start with SIMPLE: {buf[:8]!r}")
    cards, offset = _parse_header(buf)
    if cards.get("SIMPLE") != "T":
        raise StampError("bad_header", f"SIMPLE = {cards.get('SIMPLE')!r}, not T")
    bitpix = _int_card(cards, "BITPIX")
    if bitpix != -32:
        raise StampError("unsupported", f"BITPIX = {bitpix}, expected -32 (float32)")
    naxis = _int_card(cards, "NAXIS")
    if naxis != 2:
        raise StampError("bad_header", f"NAXIS = {naxis}, expected 2")
    nx, ny = _int_card(cards, "NAXIS1"), _int_card(cards, "NAXIS2")
    if not (0 < nx <= 4096 and 0 < ny <= 4096):
        raise StampError("bad_header", f"image size {nx}x{ny} out of range")
    nbytes = nx * ny * 4
    if len(buf) - offset < nbytes:
        raise StampError(
            "truncated", f"{nx}x{ny} image needs {nbytes} B of data, file has {len(buf) - offset}"
        )
    data = np.frombuffer(buf, dtype=">f4", count=nx * ny, offset=offset).reshape(ny, nx)
    image = data.astype(np.float32)  # byte swap to native, payloads untouched
    bscale = float(cards.get("BSCALE", "1") or 1)
    bzero = float(cards.get("BZERO", "0") or 0)
    if bscale != 1.0 or bzero != 0.0:
        # astropy applies the linear scaling on access, in float32 for BITPIX -32.
        image = (image * np.float32(bscale) + np.float32(bzero)).astype(np.float32)
    return image


def decode_stamp(data: bytes | None) -> np.ndarray:
    """Decode one cutout's ``stampData`` (gzip-compressed FITS) into a float32 image.

    Parameters
    ----------
    data
        The compressed stamp, or None for a null cutout.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` float32, normally 63x63 (edge sources give smaller stamps).

    Raises
    ------
    StampError
        With a specific code; see :func:`inflate` and :func:`parse_fits_image`.
    """
    if data is None:
        raise StampError("null", "cutout is null")
    if len(data) == 0:
        raise StampError("null", "cutout is empty")
    return parse_fits_image(inflate(data))


def decode_stamps(cutouts: dict[str, bytes | None]) -> dict[str, np.ndarray]:
    """Decode the science, template and difference stamps of one alert.

    Parameters
    ----------
    cutouts
        ``{kind: stampData}`` for each kind in :data:`transforms.schema.STAMP_KINDS`.

    Returns
    -------
    dict
        ``{kind: float32 image}``.

    Raises
    ------
    StampError
        For the first stamp that fails, its detail prefixed with the kind.
    """
    images = {}
    for kind in STAMP_KINDS:
        try:
            images[kind] = decode_stamp(cutouts.get(kind))
        except StampError as e:
            raise StampError(e.code, f"{kind}: {e.detail}") from e
    return images
