"""Encode simulated alerts exactly as ZTF ships them: FITS cutouts, gzip, Avro containers, tar.gz.

* A cutout is a single-HDU FITS image (BITPIX -32, big-endian float32, 2880-byte blocks), gzipped.
  The header is built by hand (six cards) because ``astropy.io.fits`` costs ~1 ms per stamp; the
  result reads back with ``astropy.io.fits.open``.
* An alert file is an Avro object container with the official ZTF 4.02 writer schema in its header
  (~27 kB, as in real packets) and one record. The schema is parsed once; the container header is
  rendered once with :func:`fastavro.writer` and each record is appended with
  :func:`fastavro.schemaless_writer`, so every file reads back with plain :func:`fastavro.reader`.
* A nightly archive ``ztf_public_YYYYMMDD.tar.gz`` is written as concatenated gzip members (one per
  chunk of alerts, compressed in the worker that made them), which ``tarfile`` and ``tar -xz`` read
  as one stream.
"""

from __future__ import annotations

import functools
import io
import tarfile
import zlib
from importlib import resources
from typing import Any

import fastavro
import numpy as np
from fastavro.schema import load_schema_ordered

from transforms.alerts import encode_long

FITS_BLOCK = 2880
TAR_BLOCK = 512
#: gzip level for cutouts: level 1 gives 13.1 kB stamps vs 13.0 kB at level 6, 25% faster.
STAMP_GZIP_LEVEL = 1
#: gzip level for archive members (the payload is mostly already-compressed stamps).
TAR_GZIP_LEVEL = 1
#: Files in the order ``load_schema_ordered`` needs them (named types before their users).
SCHEMA_FILES = ("cutout", "candidate", "prv_candidate", "fp_hist", "alert")
SCHEMA_VERSION = "4.02"
#: Fixed Avro sync marker, so output bytes depend only on the seed.
SYNC_MARKER = b"stampflow-ztf402"
#: Key order of a record field in the rendered writer schema (that of the ``.avsc`` files); other
#: keys follow in their parsed order.
FIELD_KEY_ORDER = ("name", "type", "default", "doc", "aliases")
_FIELD_KEY_RANK = {key: i for i, key in enumerate(FIELD_KEY_ORDER)}


@functools.lru_cache(maxsize=1)
def load_alert_schema() -> dict[str, Any]:
    """Load and parse the official ZTF 4.02 alert schema shipped in ``simulator/schema``.

    Returns
    -------
    dict
        The parsed schema (``fastavro.parse_schema`` form), cached for the process, with the keys
        of every record field in :data:`FIELD_KEY_ORDER` (see :func:`_order_field_keys`).
    """
    root = resources.files("simulator") / "schema"
    with resources.as_file(root) as path:
        schema = load_schema_ordered([str(path / f"{name}.avsc") for name in SCHEMA_FILES])
    parsed = fastavro.parse_schema(schema)
    _order_field_keys(parsed, set())
    return parsed


def _order_field_keys(node: Any, seen: set[int]) -> None:
    """Put the keys of every record field in ``node`` in :data:`FIELD_KEY_ORDER`, in place.

    :func:`fastavro.writer` renders the container header with ``json.dumps`` of the parsed schema,
    and ``fastavro.parse_schema`` copies a field's optional properties (``doc``, ``default``,
    ``aliases``) by iterating a ``set`` of their names, so their order, hence the header bytes,
    would depend on ``PYTHONHASHSEED``. Dicts are reordered in place so the parsed schema's shared
    references (``__named_schemas``) stay valid.
    """
    if isinstance(node, list):
        for item in node:
            _order_field_keys(item, seen)
        return
    if not isinstance(node, dict) or id(node) in seen:
        return
    seen.add(id(node))
    for value in node.values():
        _order_field_keys(value, seen)
    if node.get("type") == "record" and isinstance(node.get("fields"), list):
        for fld in node["fields"]:
            items = sorted(
                fld.items(), key=lambda kv: _FIELD_KEY_RANK.get(kv[0], len(FIELD_KEY_ORDER))
            )
            fld.clear()
            fld.update(items)


def fits_bytes(image: np.ndarray) -> bytes:
    """Serialise a 2-D image as a single-HDU FITS file like a ZTF cutout (before gzip).

    Parameters
    ----------
    image
        ``(rows, cols)`` array; written as big-endian float32, NaNs kept.

    Returns
    -------
    bytes
        Header (one 2880-byte block) followed by the data padded to a multiple of 2880 bytes.
    """
    rows, cols = image.shape
    cards = [
        f"{'SIMPLE':<8}= {'T':>20}",
        f"{'BITPIX':<8}= {-32:>20}",
        f"{'NAXIS':<8}= {2:>20}",
        f"{'NAXIS1':<8}= {cols:>20}",
        f"{'NAXIS2':<8}= {rows:>20}",
        f"{'BUNIT':<8}= 'DN      '",
        "END",
    ]
    header = "".join(f"{c:<80}" for c in cards).encode("ascii")
    header += b" " * (-len(header) % FITS_BLOCK)
    data = np.ascontiguousarray(image, dtype=">f4").tobytes()
    return header + data + b"\0" * (-len(data) % FITS_BLOCK)


def encode_stamp(image: np.ndarray, level: int = STAMP_GZIP_LEVEL) -> bytes:
    """Gzip the FITS serialisation of ``image`` (``stampData`` of a ZTF cutout).

    Parameters
    ----------
    image
        2-D image [DN].
    level
        zlib compression level.

    Returns
    -------
    bytes
        A gzip stream (mtime 0, so the bytes are reproducible).
    """
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip container
    return comp.compress(fits_bytes(image)) + comp.flush()


class AlertEncoder:
    """Turn alert dicts into single-record Avro container files.

    The schema is parsed and the container header rendered once per encoder (one per process).
    """

    def __init__(self) -> None:
        self.schema = load_alert_schema()
        buf = io.BytesIO()
        fastavro.writer(buf, self.schema, [], sync_marker=SYNC_MARKER)
        self.header = buf.getvalue()

    def encode(self, alert: dict[str, Any]) -> bytes:
        """Encode one alert record as a complete Avro container file.

        Parameters
        ----------
        alert
            A record matching the ZTF 4.02 ``alert`` schema.

        Returns
        -------
        bytes
            The ``.avro`` file content.
        """
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.schema, alert)
        datum = buf.getvalue()
        return b"".join((self.header, encode_long(1), encode_long(len(datum)), datum, SYNC_MARKER))


def tar_member(name: str, payload: bytes, mtime: int) -> bytes:
    """One uncompressed tar member (ustar header + data padded to 512 bytes).

    Parameters
    ----------
    name
        Member file name.
    payload
        File content.
    mtime
        Modification time [unix seconds].

    Returns
    -------
    bytes
        Header and padded data, ready to be concatenated with other members.
    """
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = mtime
    info.mode = 0o644
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    return header + payload + b"\0" * (-len(payload) % TAR_BLOCK)


def gzip_member(data: bytes, level: int = TAR_GZIP_LEVEL) -> bytes:
    """Compress ``data`` as one gzip member (members concatenate into a valid ``.gz``)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    return comp.compress(data) + comp.flush()


#: gzip member closing a tar stream: two zero blocks mark the end of the archive.
TAR_END = bytes(2 * TAR_BLOCK)
