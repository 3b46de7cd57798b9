"""Decode ZTF alert packets: Avro container bytes -> :class:`Alert` records.

Every ZTF alert file (and every Pub/Sub / Kafka message) is a complete Avro object container that
repeats its ~27 kB writer schema. ``fastavro.reader`` parses that schema again for every file, which
dominates the cost of single-alert files. Here the container framing (magic, metadata map, sync
marker, blocks) is read directly, each distinct writer schema is parsed once per process (keyed on
its exact bytes) and the records are decoded by fastavro's compiled ``schemaless_reader``. The
decoded dicts are exactly what ``fastavro.reader`` returns.

Nothing here raises anything but :class:`AlertDecodeError`; the Beam adapter turns those into dead
letters. A container that breaks half-way yields the records before the break *and* an error.
"""

from __future__ import annotations

import bz2
import io
import json
import lzma
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fastavro

from transforms.schema import (
    CUTOUT_FIELDS,
    REQUIRED_ALERT_FIELDS,
    REQUIRED_CANDIDATE_FIELDS,
)

AVRO_MAGIC = b"Obj\x01"
SYNC_SIZE = 16
#: Upper bound on one decompressed block [bytes]; a ZTF alert is ~70 kB, a big multi-alert block a
#: few MB. Anything past this is treated as a decompression bomb, not allocated.
MAX_BLOCK_BYTES = 256 * 1024 * 1024


class AlertDecodeError(Exception):
    """A container or record that cannot be decoded.

    Parameters
    ----------
    code
        Short machine-readable reason (``bad_magic``, ``truncated``, ``sync_mismatch``,
        ``bad_schema``, ``not_ztf``, ``bad_record``, ``codec``).
    detail
        Human-readable detail.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        """``"code: detail"``, the text stored in a dead letter."""
        return str(self)


@dataclass(frozen=True, slots=True)
class Alert:
    """One decoded alert packet.

    Attributes
    ----------
    record
        The record exactly as ``fastavro.reader`` returns it (all fields of its schema version).
    source
        Where it came from: a path, ``archive.tar.gz!member.avro``, or a message id.
    raw
        A self-contained single-record Avro container holding this alert (the input bytes
        themselves for single-alert files), for dead letters and replays.
    path
        The file or archive ``source`` lives in, as it was read (``""`` for messages). Kept apart
        from ``source`` because a path may itself contain the ``!`` of ``archive!member``.
    """

    record: dict[str, Any]
    source: str
    raw: bytes = field(repr=False)
    path: str = field(default="", repr=False)

    @property
    def object_id(self) -> str:
        """ZTF object identifier, e.g. ``ZTF18abcdefg``."""
        return self.record["objectId"]

    @property
    def candid(self) -> int:
        """Unique candidate (alert) identifier."""
        return self.record["candid"]

    @property
    def candidate(self) -> dict[str, Any]:
        """The detection's measured fields."""
        return self.record["candidate"]

    @property
    def jd(self) -> float:
        """Julian date of the detection [day]."""
        return self.record["candidate"]["jd"]

    @property
    def prv_candidates(self) -> list[dict[str, Any]]:
        """Previous detections and upper limits (30 days), empty when null."""
        return self.record.get("prv_candidates") or []

    @property
    def schema_version(self) -> str:
        """``schemavsn`` of the packet (``"1.8"`` for the early packets that lack the field)."""
        return self.record.get("schemavsn") or "1.8"

    def slim(self) -> Alert:
        """This alert without its history (``prv_candidates``, ``fp_hists``) and raw bytes.

        What the classification stages need after first-detection selection, at a fifth of the
        memory: batch runs hold the selected alerts of a whole night in a ``GroupByKey``. A dead
        letter of a slim alert is written without its bytes and names the file they are in; the
        batch job's dead-letter sink reads them back, once per file
        (:func:`transforms.sources.read_containers`).
        """
        record = {k: v for k, v in self.record.items() if k not in _HISTORY_FIELDS}
        return Alert(record=record, source=self.source, raw=b"", path=self.path)

    def cutout_bytes(self, kind: str) -> bytes | None:
        """The compressed stamp of one kind (``science``, ``template``, ``difference``), or None."""
        cutout = self.record.get(CUTOUT_FIELDS[kind])
        if cutout is None:
            return None
        return cutout.get("stampData")


@dataclass(frozen=True, slots=True)
class _Writer:
    """A parsed writer schema and what is needed to re-wrap single records."""

    parsed: Any
    header_meta: bytes  # encoded metadata map, reused to build single-record containers
    missing: tuple[str, ...]  # required ZTF fields absent from the schema (non-empty: not ZTF)


#: Record fields only first-detection selection reads; dropped by :meth:`Alert.slim`.
_HISTORY_FIELDS = frozenset({"prv_candidates", "fp_hists"})

_WRITERS: dict[bytes, _Writer] = {}
#: Bound on distinct writer schemas kept per process (ZTF has had ~7 in eight years).
_MAX_WRITERS = 64


class _Reader:
    """Cursor over container bytes with Avro's zig-zag varint longs."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def long(self) -> int:
        shift = 0
        acc = 0
        buf = self.buf
        while True:
            if self.pos >= len(buf):
                raise AlertDecodeError("truncated", f"varint runs past end at byte {self.pos}")
            b = buf[self.pos]
            self.pos += 1
            acc |= (b & 0x7F) << shift
            if not b & 0x80:
                return (acc >> 1) ^ -(acc & 1)
            shift += 7
            if shift > 63:
                raise AlertDecodeError("bad_container", f"varint too long at byte {self.pos}")

    def take(self, n: int, what: str) -> bytes | memoryview:
        if n < 0:
            raise AlertDecodeError("bad_container", f"negative {what} length {n}")
        end = self.pos + n
        if end > len(self.buf):
            raise AlertDecodeError(
                "truncated",
                f"{what} needs {n} bytes at byte {self.pos}, file has {len(self.buf)}",
            )
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk


def encode_long(n: int) -> bytes:
    """Avro ``long`` encoding: zig-zag, then base-128 varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _read_header(r: _Reader) -> tuple[dict[str, bytes], bytes, bytes]:
    """Parse magic, metadata map and sync marker; return (meta, raw meta bytes, sync)."""
    if len(r.buf) < len(AVRO_MAGIC):
        raise AlertDecodeError("truncated", f"{len(r.buf)} bytes, too short for an Avro container")
    if bytes(r.buf[:4]) != AVRO_MAGIC:
        head = bytes(r.buf[:4])
        hint = " (looks like JPEG)" if head[:2] == b"\xff\xd8" else ""
        hint = " (gzip: a compressed file, not a container)" if head[:2] == b"\x1f\x8b" else hint
        hint = " (zip archive)" if head[:2] == b"PK" else hint
        raise AlertDecodeError("bad_magic", f"not an Avro container, starts with {head!r}{hint}")
    r.pos = 4
    meta: dict[str, bytes] = {}
    while True:
        count = r.long()
        if count == 0:
            break
        if count < 0:
            count = -count
            r.long()  # block size in bytes, not needed
        for _ in range(count):
            key = bytes(r.take(r.long(), "metadata key")).decode("utf-8", "replace")
            meta[key] = bytes(r.take(r.long(), "metadata value"))
    meta_bytes = bytes(r.buf[4 : r.pos])
    sync = bytes(r.take(SYNC_SIZE, "sync marker"))
    return meta, meta_bytes, sync


def _writer_for(schema_bytes: bytes, meta_bytes: bytes) -> _Writer:
    """The parsed writer schema for these exact schema bytes, parsed once per process."""
    writer = _WRITERS.get(schema_bytes)
    if writer is not None:
        return writer
    try:
        schema = json.loads(schema_bytes)
        parsed = fastavro.parse_schema(schema)
    except Exception as e:  # malformed JSON or an invalid Avro schema
        raise AlertDecodeError("bad_schema", f"writer schema does not parse: {e}") from e
    names = {f["name"] for f in schema.get("fields", [])} if isinstance(schema, dict) else set()
    missing = tuple(n for n in REQUIRED_ALERT_FIELDS if n not in names)
    if not missing:
        missing = tuple(f for f in CUTOUT_FIELDS.values() if f not in names)
    writer = _Writer(parsed=parsed, header_meta=meta_bytes, missing=missing)
    if len(_WRITERS) >= _MAX_WRITERS:
        _WRITERS.clear()
    _WRITERS[schema_bytes] = writer
    return writer


def _decompress(codec: str, data: bytes | memoryview) -> bytes | memoryview:
    try:
        if codec == "null":
            return data
        if codec == "deflate":
            d = zlib.decompressobj(-15)
            out = d.decompress(data, MAX_BLOCK_BYTES)
            if d.unconsumed_tail:
                raise AlertDecodeError("codec", f"deflate block inflates past {MAX_BLOCK_BYTES} B")
            return out
        if codec == "bzip2":
            return bz2.decompress(data)
        if codec == "xz":
            return lzma.decompress(data)
        if codec == "zstandard":
            import zstandard

            return zstandard.ZstdDecompressor().decompress(bytes(data), MAX_BLOCK_BYTES)
        if codec == "snappy":
            import snappy  # optional; not a ZTF codec

            return snappy.decompress(bytes(data[:-4]))
    except AlertDecodeError:
        raise
    except ImportError as e:
        raise AlertDecodeError("codec", f"codec {codec!r} needs a package: {e}") from e
    except Exception as e:
        raise AlertDecodeError("codec", f"{codec} block does not decompress: {e}") from e
    raise AlertDecodeError("codec", f"unsupported codec {codec!r}")


def _check_record(record: Any, index: int) -> None:
    if not isinstance(record, dict):
        raise AlertDecodeError("not_ztf", f"record {index} is a {type(record).__name__}")
    for name in REQUIRED_ALERT_FIELDS:
        if record.get(name) is None:
            raise AlertDecodeError("not_ztf", f"record {index} has no {name}")
    cand = record["candidate"]
    missing = [f for f in REQUIRED_CANDIDATE_FIELDS if cand.get(f) is None]
    if missing:
        raise AlertDecodeError("not_ztf", f"record {index} candidate lacks {', '.join(missing)}")


def single_record_container(meta_bytes: bytes, datum: bytes) -> bytes:
    """Wrap one encoded record in a complete, uncompressed Avro container.

    Parameters
    ----------
    meta_bytes
        The encoded metadata map of the original container (its codec entry must be ``null``).
    datum
        The record's binary encoding.

    Returns
    -------
    bytes
        A file that ``fastavro.reader`` reads back as exactly that one record.
    """
    sync = b"stampflow-sync16"  # any 16 bytes: markers only need to agree within one file
    return b"".join(
        (AVRO_MAGIC, meta_bytes, sync, encode_long(1), encode_long(len(datum)), datum, sync)
    )


def iter_alerts(data: bytes, source: str, path: str = "") -> Iterator[Alert]:
    """Decode every record of an Avro container into :class:`Alert` objects.

    Parameters
    ----------
    data
        The bytes of one Avro object container file (one or many records, ZTF schema 1.8 to 4.02).
    source
        A label for where the bytes came from, kept on each alert and in errors.
    path
        The file the bytes were read from, kept on each alert (see :class:`Alert`).

    Yields
    ------
    Alert
        The records in file order, as soon as each is decoded.

    Raises
    ------
    AlertDecodeError
        On the first problem: bad magic, truncation, sync mismatch, unknown codec, a schema that is
        not a ZTF alert, or a record that does not decode. Records before it have been yielded.
    """
    r = _Reader(memoryview(data))
    meta, meta_bytes, sync = _read_header(r)
    schema_bytes = meta.get("avro.schema")
    if schema_bytes is None:
        raise AlertDecodeError("bad_schema", "container metadata has no avro.schema")
    codec = meta.get("avro.codec", b"null").decode("ascii", "replace") or "null"
    writer = _writer_for(schema_bytes, meta_bytes)
    if writer.missing:
        raise AlertDecodeError(
            "not_ztf", f"writer schema lacks ZTF field(s) {', '.join(writer.missing)}"
        )
    if codec != "null":
        # Single-record containers we build for dead letters are uncompressed: rewrite the codec.
        meta_bytes = _null_codec_meta(meta)
    index = 0
    block_no = 0
    while r.pos < len(r.buf):
        count = r.long()
        size = r.long()
        if count < 0 or size < 0:
            raise AlertDecodeError("bad_container", f"block {block_no} has negative count/size")
        payload = r.take(size, f"block {block_no}")
        marker = bytes(r.take(SYNC_SIZE, "block sync marker"))
        if marker != sync:
            raise AlertDecodeError("sync_mismatch", f"block {block_no} sync marker differs")
        # The file itself is the single-record container: no need to build one.
        single = block_no == 0 and count == 1 and codec == "null" and r.pos == len(r.buf)
        block = _decompress(codec, payload)
        bio = io.BytesIO(block)
        for _ in range(count):
            start = bio.tell()
            try:
                record = fastavro.schemaless_reader(bio, writer.parsed, None)
            except Exception as e:  # fastavro raises IndexError/EOFError/ValueError/... on junk
                raise AlertDecodeError(
                    "bad_record", f"record {index} does not decode: {type(e).__name__}: {e}"
                ) from e
            _check_record(record, index)
            raw = data if single else single_record_container(meta_bytes, block[start : bio.tell()])
            yield Alert(record=record, source=source, raw=bytes(raw), path=path)
            index += 1
        if bio.tell() != len(block):
            raise AlertDecodeError(
                "bad_container", f"{len(block) - bio.tell()} stray bytes after record {index - 1}"
            )
        block_no += 1


def _null_codec_meta(meta: Mapping[str, bytes]) -> bytes:
    items = {**meta, "avro.codec": b"null"}
    out = [encode_long(len(items))]
    for k, v in items.items():
        kb = k.encode()
        out += [encode_long(len(kb)), kb, encode_long(len(v)), v]
    out.append(encode_long(0))
    return b"".join(out)


def decode_alerts(
    data: bytes, source: str, path: str = ""
) -> tuple[list[Alert], AlertDecodeError | None]:
    """Decode a container completely, keeping what decodes and the first error.

    Parameters
    ----------
    data
        Avro container bytes.
    source
        Label for where they came from.
    path
        The file they were read from (kept on each alert).

    Returns
    -------
    alerts, error
        The alerts decoded before any problem, and the problem (None when the file is clean).
    """
    alerts: list[Alert] = []
    try:
        for alert in iter_alerts(data, source, path):
            alerts.append(alert)
    except AlertDecodeError as e:
        return alerts, e
    return alerts, None
