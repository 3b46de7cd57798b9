"""Kafka wire-format messages: byte 0, a big-endian int32 schema id, then the schemaless record.

Rubin's alert stream (and Confluent-style producers generally) sends every alert this way; the
writer schema is found by its id. Rubin numbers its schemas ``major * 100 + minor`` (704 = v7.4,
1000 = v10.0, 1101 = v11.1; ``lsst/alert_packet``'s ``syncAllSchemasToRegistry.py``), so a
directory holding the official ``lsst-alert-packet`` schemas (``MAJOR/MINOR/lsst.vMAJOR_MINOR.
alert.avsc``, as in the package, or any tree of such files) answers every id, and so does a
Confluent schema registry (``GET {url}/schemas/ids/{id}``).

Where schemas come from is process-wide configuration (:func:`configure_schemas`): the CLI sets it
from ``--schema-dir`` / ``--schema-registry`` and the Beam decode step sets it again in
``DoFn.setup`` on every worker. An id no source knows is one ``unknown_schema_id`` dead letter.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
import fastavro.schema

__all__ = [
    "WIRE_HEADER",
    "SchemaSources",
    "configure_schemas",
    "conform",
    "decode_wire",
    "encode_wire",
    "is_wire_format",
    "known_schema_ids",
    "lsst_schema_id",
    "named_types",
    "schema_id_of",
    "schema_in",
    "schema_sources",
    "to_wire",
    "writer_schema",
]

#: Bytes before the record: magic byte 0 and the int32 schema id.
WIRE_HEADER = 5
_STRUCT = struct.Struct(">bi")


def lsst_schema_id(major: int, minor: int) -> int:
    """Rubin's registry id of schema ``lsst.v{major}_{minor}`` (``major * 100 + minor``)."""
    return major * 100 + minor


def is_wire_format(data: bytes | memoryview) -> bool:
    """Bytes that start as a wire-format message (magic byte 0 and room for an id)."""
    return len(data) >= WIRE_HEADER and data[0] == 0


def encode_wire(schema_id: int, parsed_schema: Any, record: dict[str, Any]) -> bytes:
    """One wire-format message: header, then ``record`` encoded schemaless with the schema."""
    buf = io.BytesIO()
    buf.write(_STRUCT.pack(0, schema_id))
    fastavro.schemaless_writer(buf, parsed_schema, record)
    return buf.getvalue()


@dataclass(frozen=True)
class SchemaSources:
    """Where writer schemas are looked up: schema directories, then a registry URL.

    Attributes
    ----------
    dirs
        Directories searched recursively for ``lsst.vMAJOR_MINOR.alert.avsc``.
    registry
        A Confluent schema registry base URL, or ``""``.
    """

    dirs: tuple[str, ...] = ()
    registry: str = ""

    def describe(self) -> str:
        """Where we looked, for error messages."""
        where = [f"--schema-dir {d}" for d in self.dirs]
        where += [f"--schema-registry {self.registry}"] if self.registry else []
        return ", ".join(where) or "no --schema-dir or --schema-registry given"


_LOCK = threading.Lock()
_SOURCES = SchemaSources()
_CACHE: dict[int, Any] = {}  # id -> parsed schema, or None when no source has it
_INDEX: dict[str, dict[int, str]] = {}  # dir -> id -> path of its alert schema


def configure_schemas(dirs: Sequence[str] = (), registry: str = "") -> None:
    """Set where wire-format writer schemas are found, for this process.

    Parameters
    ----------
    dirs
        Schema directories (``--schema-dir``), searched in order.
    registry
        Confluent schema registry base URL (``--schema-registry``), asked after the directories.
    """
    global _SOURCES
    new = SchemaSources(tuple(str(d) for d in dirs), registry.rstrip("/"))
    with _LOCK:
        if new != _SOURCES:
            _SOURCES = new
            _CACHE.clear()


def schema_sources() -> SchemaSources:
    """The schema sources this process uses."""
    return _SOURCES


def _local_copy(directory: str) -> str:
    """A local directory holding the ``.avsc`` files of ``directory`` (any Beam filesystem, e.g.
    ``gs://``), copied once per process with their relative paths: ``load_schema`` reads the named
    types beside each file from the local disk."""
    from apache_beam.io.filesystems import FileSystems

    local = tempfile.mkdtemp(prefix="stampflow-schemas-")
    base = directory.rstrip("/")
    for match in FileSystems.match([f"{base}/**.avsc"])[0].metadata_list:
        rel = match.path[len(base) :].lstrip("/")
        target = os.path.join(local, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with FileSystems.open(match.path) as src, open(target, "wb") as dst:
            dst.write(src.read())
    return local


def _index(directory: str) -> dict[int, str]:
    found = _INDEX.get(directory)
    if found is None:
        found = {}
        local = _local_copy(directory) if "://" in directory else directory
        for root, _dirs, files in os.walk(local):
            for name in files:
                # lsst.v11_1.alert.avsc -> 1101
                if name.startswith("lsst.v") and name.endswith(".alert.avsc"):
                    version = name[len("lsst.v") : -len(".alert.avsc")]
                    major, _, minor = version.partition("_")
                    if major.isdigit() and minor.isdigit():
                        found.setdefault(
                            lsst_schema_id(int(major), int(minor)), os.path.join(root, name)
                        )
        _INDEX[directory] = found
    return found


class _Unreachable(Exception):
    """The registry did not answer (a network error or a server error): ask again later."""


def _from_registry(url: str, schema_id: int) -> Any:
    try:
        with urllib.request.urlopen(f"{url}/schemas/ids/{schema_id}", timeout=30) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None  # it does not have this id
        raise _Unreachable(str(e)) from e
    except Exception as e:  # timeouts, refused connections, bad JSON
        raise _Unreachable(str(e)) from e
    return fastavro.parse_schema(json.loads(body["schema"]))


def schema_in(directory: str, schema_id: int) -> Any:
    """The parsed schema of registry id ``schema_id`` from one schema directory, or None; the
    process's configured sources (:func:`configure_schemas`) are left as they are."""
    path = _index(directory).get(schema_id)
    return None if path is None else fastavro.schema.load_schema(path)


def writer_schema(schema_id: int) -> Any:
    """The parsed writer schema of registry id ``schema_id``, or None when no source has it."""
    if schema_id in _CACHE:
        return _CACHE[schema_id]
    sources = _SOURCES
    parsed = None
    for directory in sources.dirs:
        # load_schema resolves the named types (diaSource, ...) from the files beside it.
        parsed = schema_in(directory, schema_id)
        if parsed is not None:
            break
    if parsed is None and sources.registry:
        try:
            parsed = _from_registry(sources.registry, schema_id)
        except _Unreachable:
            return None  # not cached: the next message asks again
    with _LOCK:
        _CACHE[schema_id] = parsed
    return parsed


def decode_wire(data: bytes | memoryview) -> Iterator[tuple[int, Any, dict[str, Any]]]:
    """Decode one wire-format message.

    Parameters
    ----------
    data
        The message bytes.

    Yields
    ------
    (schema_id, parsed_schema, record)
        Exactly once.

    Raises
    ------
    ValueError
        With ``code: detail`` text: ``truncated``, ``unknown_schema_id`` or ``bad_record``
        (:class:`transforms.alerts.AlertDecodeError` codes; the caller wraps them).
    """
    if len(data) < WIRE_HEADER:
        raise ValueError(f"truncated: {len(data)} bytes, too short for a wire-format message")
    _magic, schema_id = _STRUCT.unpack(bytes(data[:WIRE_HEADER]))
    if schema_id < 100:  # no registry numbers a schema so (Rubin's start at 100 x major)
        raise ValueError(
            f"bad_magic: starts with byte 0 but is neither an Avro container nor a wire-format "
            f"message (schema id {schema_id})"
        )
    parsed = writer_schema(schema_id)
    if parsed is None:
        major, minor = divmod(schema_id, 100)
        raise ValueError(
            f"unknown_schema_id: schema id {schema_id} (lsst.v{major}_{minor}) not found "
            f"({schema_sources().describe()})"
        )
    bio = io.BytesIO(bytes(data[WIRE_HEADER:]))
    try:
        record = fastavro.schemaless_reader(bio, parsed, None)
    except EOFError as e:
        raise ValueError(f"truncated: the record ends early (schema id {schema_id})") from e
    except Exception as e:  # fastavro raises IndexError/ValueError/... on junk
        raise ValueError(
            f"bad_record: does not decode with schema id {schema_id}: {type(e).__name__}: {e}"
        ) from e
    left = len(data) - WIRE_HEADER - bio.tell()
    if left:
        raise ValueError(f"bad_record: {left} stray bytes after the record (schema id {schema_id})")
    yield schema_id, parsed, record


def _conform(value: Any, schema: Any, named: dict[str, Any]) -> Any:
    if isinstance(schema, str):
        schema = named.get(schema, schema)
    if isinstance(schema, list):  # a union
        empty = value is None or (
            isinstance(value, dict) and all(v is None for v in value.values())
        )
        if empty and "null" in schema:
            return None
        branches = [b for b in schema if b != "null"]
        return _conform(value, branches[0], named) if len(branches) == 1 else value
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record" and isinstance(value, dict):
            return {
                f["name"]: _conform(value.get(f["name"]), f["type"], named)
                for f in schema["fields"]
            }
        if kind == "array" and isinstance(value, list):
            return [_conform(v, schema["items"], named) for v in value]
        if kind in ("record", "array", "map", "enum", "fixed"):
            return value
        return _conform(value, kind, named)
    if schema in ("long", "int") and isinstance(value, float) and value.is_integer():
        return int(value)  # some Parquet copies store ids as doubles
    return value


def conform(record: dict[str, Any], parsed_schema: Any) -> dict[str, Any]:
    """``record`` shaped to a writer schema, for re-encoding a broker's copy of a packet.

    Brokers' copies (Fink's) make every field nullable and write an absent record as a struct of
    nulls, and add their own fields: here such all-null structs become null where the schema
    allows it, and fields the schema lacks are dropped. Anything else is left for the encoder to
    accept or refuse.
    """
    return _conform(record, parsed_schema, named_types(parsed_schema))


def named_types(parsed_schema: Any) -> dict[str, Any]:
    """Every named type (record, enum, fixed) of a parsed schema, by its full name."""
    named: dict[str, Any] = {}

    def collect(s: Any) -> None:
        if isinstance(s, dict):
            if s.get("type") in ("record", "enum", "fixed") and "name" in s:
                named[s["name"]] = s
            for f in s.get("fields", []):
                collect(f["type"])
            collect(s.get("items"))
            collect(s.get("values"))
        elif isinstance(s, list):
            for b in s:
                collect(b)

    collect(parsed_schema)
    return named


def schema_id_of(record: dict[str, Any], schema_name: str = "") -> int | None:
    """The registry id of a packet's version: the one a broker's copy names (Fink's
    ``lsst_schema_version``, e.g. ``"lsst.v10_0"`` -> 1000), else the one of its container's
    writer schema (``lsst.v10_0.alert``); None when neither says."""
    for text in (str(record.get("lsst_schema_version") or ""), schema_name):
        major, _, rest = text.removeprefix("lsst.v").partition("_")
        minor = rest.split(".", 1)[0]
        if text.startswith("lsst.v") and major.isdigit() and minor.isdigit():
            return lsst_schema_id(int(major), int(minor))
    return None


def known_schema_ids() -> list[int]:
    """Every schema id the configured directories hold, ascending."""
    ids: set[int] = set()
    for directory in _SOURCES.dirs:
        ids |= set(_index(directory))
    return sorted(ids)


def to_wire(record: dict[str, Any], schema_id: int | None = None, schema_name: str = "") -> bytes:
    """Encode a Rubin alert record as a wire-format message.

    Parameters
    ----------
    record
        A decoded packet, or a broker's copy of one (shaped to the schema by :func:`conform`).
    schema_id
        The writer schema's id; None: the version the record or ``schema_name`` names
        (:func:`schema_id_of`), else the newest the schema directories hold.
    schema_name
        The full name of the schema the record was read with, if any (``lsst.v10_0.alert``).

    Raises
    ------
    ValueError
        When no schema is known for the id, or the record does not fit it.
    """
    if schema_id is None:
        schema_id = schema_id_of(record, schema_name)
    if schema_id is None:
        ids = known_schema_ids()
        if not ids:
            raise ValueError(f"no Rubin schema to encode with ({schema_sources().describe()})")
        schema_id = ids[-1]
    parsed = writer_schema(schema_id)
    if parsed is None:
        raise ValueError(f"schema id {schema_id} not found ({schema_sources().describe()})")
    try:
        return encode_wire(schema_id, parsed, conform(record, parsed))
    except (TypeError, ValueError, KeyError, AttributeError) as e:  # fastavro's refusals
        raise ValueError(f"does not fit schema id {schema_id}: {type(e).__name__}: {e}") from e
