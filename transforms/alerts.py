"""Decode alert packets (ZTF, Rubin): Avro containers, wire-format messages, Parquet -> Alert.

Every ZTF alert file (and every Pub/Sub / Kafka message) is a complete Avro object container that
repeats its ~27 kB writer schema. ``fastavro.reader`` parses that schema again for every file, which
dominates the cost of single-alert files. Here the container framing (magic, metadata map, sync
marker, blocks) is read directly, each distinct writer schema is parsed once per process (keyed on
its exact bytes) and the records are decoded by fastavro's compiled ``schemaless_reader``. The
decoded dicts are exactly what ``fastavro.reader`` returns.

Which survey a packet belongs to is read from its writer schema (:mod:`transforms.surveys`); each
:class:`Alert` carries its survey's adapter and reads its ids, time and cutouts through it. Rubin
packets also arrive as Kafka *wire-format* messages (byte 0, a big-endian int32 schema id, the
schemaless record), decoded with writer schemas found by id (:mod:`transforms.wire`), and as
brokers' Parquet files (:mod:`transforms.parquet`); :func:`decode_alerts` dispatches on the first
bytes.

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

from transforms.parquet import PARQUET_MAGIC, iter_parquet_records
from transforms.schema import CUTOUT_FIELDS
from transforms.surveys import ZTF, Survey, survey_of_fields
from transforms.wire import decode_wire, is_wire_format

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
        ``bad_schema``, ``unknown_survey``, ``bad_alert``, ``bad_record``, ``codec``,
        ``unknown_schema_id``, ``bad_parquet``).
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
    survey
        The adapter of the packet's survey (:mod:`transforms.surveys`); every property below
        reads through it.
    """

    record: dict[str, Any]
    source: str
    raw: bytes = field(repr=False)
    path: str = field(default="", repr=False)
    survey: Survey = field(default=ZTF, repr=False)

    @property
    def object_id(self) -> str:
        """Object identifier: ZTF ``objectId`` (``ZTF18abcdefg``); Rubin ``diaObjectId`` as a
        string, ``ss<ssObjectId>`` for a solar-system alert."""
        return self.survey.object_id(self.record)

    @property
    def candid(self) -> int:
        """Unique alert identifier: ZTF ``candid``, Rubin ``diaSourceId``."""
        return self.survey.alert_id(self.record)

    @property
    def candidate(self) -> dict[str, Any]:
        """The detection's measured fields: ZTF ``candidate``, Rubin ``diaSource``."""
        return self.survey.source(self.record)

    @property
    def jd(self) -> float:
        """Julian date (UTC) of the detection [day]."""
        return self.survey.jd(self.record)

    @property
    def band(self) -> str:
        """Filter of the detection (``g``, ``r``, ``i``; Rubin ``u g r i z y``)."""
        return self.survey.band(self.record)

    @property
    def prv_candidates(self) -> list[dict[str, Any]]:
        """Earlier detections (and ZTF upper limits) the packet carries, empty when null."""
        return list(self.survey.history(self.record))

    @property
    def earlier_detection(self) -> bool:
        """The packet's history holds a detection earlier than this one."""
        return self.survey.earlier_detection(self.record)

    @property
    def schema_version(self) -> str:
        """The packet's schema version (ZTF ``schemavsn``, ``"1.8"`` for packets without it)."""
        return self.survey.schema_version(self.record)

    def slim(self) -> Alert:
        """This alert without its history (``prv_candidates``, ``fp_hists``) and raw bytes.

        What the classification stages need after first-detection selection, at a fifth of the
        memory: batch runs hold the selected alerts of a whole night in a ``GroupByKey``. A dead
        letter of a slim alert is written without its bytes and names the file they are in; the
        batch job's dead-letter sink reads them back, once per file
        (:func:`transforms.sources.read_containers`).
        """
        history = self.survey.history_fields
        record = {k: v for k, v in self.record.items() if k not in history}
        return Alert(record=record, source=self.source, raw=b"", path=self.path, survey=self.survey)

    def cutout_bytes(self, kind: str) -> bytes | None:
        """The stamp of one kind (``science``, ``template``, ``difference``) as stored, or None."""
        return self.survey.cutout_bytes(self.record, kind)


@dataclass(frozen=True, slots=True)
class _Writer:
    """A parsed writer schema and what is needed to re-wrap single records."""

    parsed: Any
    header_meta: bytes  # encoded metadata map, reused to build single-record containers
    survey: Survey | None  # the survey whose packets the schema describes; None: no survey's
    fields: tuple[str, ...] = ()  # top-level record fields, for the error naming them

    @property
    def missing(self) -> tuple[str, ...]:
        """ZTF fields this schema lacks when it is no survey's (empty when it is some survey's):
        its record fields, else its cutouts (a ZTF-like alert without them, e.g. DECam's)."""
        if self.survey is not None:
            return ()
        lacking = tuple(f for f in sorted(ZTF.signature) if f not in self.fields)
        return lacking or tuple(f for f in CUTOUT_FIELDS.values() if f not in self.fields)

    def unknown_survey(self) -> AlertDecodeError:
        """The error for a schema that is no survey's."""
        shown = ", ".join(self.fields[:6]) + (", ..." if len(self.fields) > 6 else "")
        return AlertDecodeError(
            "unknown_survey",
            f"writer schema is neither a ZTF nor a Rubin alert (lacks ZTF field(s) "
            f"{', '.join(self.missing)}; has {shown})",
        )


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


def _usable_survey(field_names: set[str]) -> Survey | None:
    """The survey of a record with these top-level fields; None when it is no survey's, or a
    ZTF-like record without the cutouts (e.g. a DECam alert), which cannot be classified."""
    survey = survey_of_fields(field_names)
    if survey is ZTF and any(f not in field_names for f in CUTOUT_FIELDS.values()):
        return None
    return survey


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
    names = [f["name"] for f in schema.get("fields", [])] if isinstance(schema, dict) else []
    survey = _usable_survey(set(names))
    writer = _Writer(parsed=parsed, header_meta=meta_bytes, survey=survey, fields=tuple(names))
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


def _check_record(record: Any, index: int, survey: Survey = ZTF) -> None:
    why = survey.validate(record)
    if why is not None:
        raise AlertDecodeError("bad_alert", f"record {index}: {survey.name} alert with {why}")


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
    """Decode every alert in one file or message into :class:`Alert` objects.

    Parameters
    ----------
    data
        An Avro object container (one or many records: ZTF schemas 1.8 to 4.02, Rubin packets or
        brokers' copies of them), a Kafka wire-format message (:mod:`transforms.wire`) or a
        Parquet file (:mod:`transforms.parquet`), told apart by their first bytes.
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
        no survey's alert, an unknown wire-format schema id, or a record that does not decode.
        Records before it have been yielded.
    """
    if data[:4] == PARQUET_MAGIC:
        yield from _iter_parquet(data, source, path)
    elif is_wire_format(data) and data[:4] != AVRO_MAGIC:
        yield from _iter_wire(data, source, path)
    else:
        yield from _iter_container(data, source, path)


def _error_of(e: ValueError) -> AlertDecodeError:
    code, _, detail = str(e).partition(": ")
    return AlertDecodeError(code, detail)


def _survey_for(record: Any, index: int) -> Survey:
    survey = _usable_survey(set(record)) if isinstance(record, dict) else None
    if survey is None:
        fields = ", ".join(list(record)[:6]) if isinstance(record, dict) else type(record).__name__
        raise AlertDecodeError(
            "unknown_survey", f"record {index} is neither a ZTF nor a Rubin alert (has {fields})"
        )
    _check_record(record, index, survey)
    return survey


def _iter_wire(data: bytes, source: str, path: str) -> Iterator[Alert]:
    try:
        for _schema_id, _parsed, record in decode_wire(data):
            survey = _survey_for(record, 0)
            yield Alert(record=record, source=source, raw=bytes(data), path=path, survey=survey)
    except ValueError as e:
        raise _error_of(e) from e


def _iter_parquet(data: bytes, source: str, path: str) -> Iterator[Alert]:
    rows = iter_parquet_records(bytes(data))
    index = 0
    while True:
        try:
            item = next(rows, None)
        except ValueError as e:
            raise _error_of(e) from e
        if item is None:
            return
        record, raw = item
        survey = _survey_for(record, index)
        yield Alert(record=record, source=source, raw=raw, path=path, survey=survey)
        index += 1


def _iter_container(data: bytes, source: str, path: str) -> Iterator[Alert]:
    r = _Reader(memoryview(data))
    meta, meta_bytes, sync = _read_header(r)
    schema_bytes = meta.get("avro.schema")
    if schema_bytes is None:
        raise AlertDecodeError("bad_schema", "container metadata has no avro.schema")
    codec = meta.get("avro.codec", b"null").decode("ascii", "replace") or "null"
    writer = _writer_for(schema_bytes, meta_bytes)
    if writer.survey is None:
        raise writer.unknown_survey()
    survey = writer.survey
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
            _check_record(record, index, survey)
            raw = data if single else single_record_container(meta_bytes, block[start : bio.tell()])
            yield Alert(record=record, source=source, raw=bytes(raw), path=path, survey=survey)
            index += 1
        if bio.tell() != len(block):
            raise AlertDecodeError(
                "bad_container", f"{len(block) - bio.tell()} stray bytes after record {index - 1}"
            )
        block_no += 1


def container_survey(data: bytes) -> tuple[Survey | None, str]:
    """The survey of an Avro container's writer schema and the schema's full name (e.g.
    ``lsst.v10_0.alert``), from its header alone; ``(None, "")`` when the bytes are not a
    container with a readable schema, and a None survey when the schema is no survey's."""
    try:
        meta, meta_bytes, _ = _read_header(_Reader(memoryview(data)))
        schema_bytes = meta.get("avro.schema")
        if schema_bytes is None:
            return None, ""
        writer = _writer_for(schema_bytes, meta_bytes)
    except AlertDecodeError:
        return None, ""
    name = writer.parsed.get("name", "") if isinstance(writer.parsed, dict) else ""
    return writer.survey, str(name)


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
