"""Pub/Sub messages → alerts, data and attributes, as Pitt-Google's public streams publish them.

The Pitt-Google broker republishes ZTF's and Rubin's alert streams on public Pub/Sub topics
(``ztf-alerts`` in project ``ardent-cycling-243415``; ``lsst-alerts`` and ``lsst-alerts-json`` in
``pitt-alert-broker``). What its client library, ``pittgoogle-client`` 0.3.23, says of each
(``pittgoogle/schema.py``, ``alert.py``, ``registry_manifests/schemas.yml``):

- **ztf-alerts**: ZTF's own message, an Avro object container with its writer schema in the header
  (``ZtfSchema``: deserializer ``avro`` = ``fastavro.reader``); attributes ``kafka.topic``
  (``ztf_YYYYMMDD_programid1``), ``kafka.partition``, ``kafka.offset``, ``kafka.timestamp`` [ms],
  set by the Kafka → Pub/Sub connector; copies made through the library add ``objectId`` and
  ``candid``;
- **lsst-alerts**: Confluent wire format, byte 0, a big-endian int32 schema id, the schemaless
  record (``LsstSchema.serialize``: id ``major * 100 + minor``, e.g. 1000 for ``v10_0``); the
  Kafka attributes plus ``diaObject_diaObjectId`` (or ``ssSource_ssObjectId``),
  ``diaSource_diaSourceId``, ``schema_version`` (``v10_0``), ``healpix9|19|29`` and
  ``n_previous_detections`` (``Alert._add_attributes``);
- **lsst-alerts-json**: the same record as JSON (``Serializers.serialize_json``): NaN and ±inf
  written as null, bytes (the cutouts) as base64 text, datetimes as Unix seconds; the same
  attributes. Only ``schema_version`` says which schema the record follows.

Containers and wire-format messages go to :func:`transforms.alerts.decode_alerts` unchanged. A
JSON record is revived with the schema its ``schema_version`` names (found like a wire-format
message's, :mod:`transforms.wire`: ``--schema-dir`` / ``--schema-registry``): base64 text back
to bytes, null back to NaN where the schema has no null, seconds back to microseconds; then it is
encoded as the wire-format message it was and decoded as one, so it becomes exactly the alert the
``lsst-alerts`` copy gives (a NaN in a *nullable* float stays null: JSON kept no difference).

Attributes are checked against the data where they describe it: the id attributes against the
one alert a message holds, ``schema_version`` against a wire-format header. A disagreement makes
the message a dead letter (``attribute_mismatch``), as does a JSON record that fits no schema
(``bad_json``) or a JSON message without a usable ``schema_version`` (``bad_attribute``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.alerts import Alert, AlertDecodeError, decode_alerts
from transforms.ingest import decoded_outputs
from transforms.schema import (
    METRICS_NAMESPACE,
    SOURCE_ATTRIBUTE,
    STAGE_DECODE,
)
from transforms.wire import (
    WIRE_HEADER,
    SchemaSources,
    configure_schemas,
    encode_wire,
    is_wire_format,
    lsst_schema_id,
    named_types,
    schema_sources,
    writer_schema,
)

__all__ = [
    "ID_ATTRIBUTES",
    "KAFKA_OFFSET",
    "KAFKA_PARTITION",
    "KAFKA_TIMESTAMP",
    "KAFKA_TOPIC",
    "SCHEMA_VERSION",
    "DecodeMessages",
    "check_attributes",
    "decode_message",
    "is_json",
    "json_to_wire",
    "message_source",
    "schema_version_id",
]

# --- attribute names (pittgoogle-client 0.3.23; the Kafka ones are Kafka Connect's) ---------------
KAFKA_TOPIC = "kafka.topic"
KAFKA_PARTITION = "kafka.partition"
KAFKA_OFFSET = "kafka.offset"
KAFKA_TIMESTAMP = "kafka.timestamp"  # Kafka's message time [ms since the Unix epoch]
SCHEMA_VERSION = "schema_version"  # Rubin: "v10_0"; ZTF copies made by the library: "None"
#: Id attributes → the record field each copies (``Alert._add_attributes``: a nested field's
#: path joined with ``_``; the schema maps ``ztf.yml`` and ``lsst.yml``).
ID_ATTRIBUTES: Mapping[str, tuple[str, ...]] = {
    "objectId": ("objectId",),
    "candid": ("candid",),
    "diaObject_diaObjectId": ("diaObject", "diaObjectId"),
    "ssSource_ssObjectId": ("ssSource", "ssObjectId"),
    "diaSource_diaSourceId": ("diaSource", "diaSourceId"),
}

_VERSION = re.compile(r"v(\d+)_(\d+)")
_DETAIL_CHARS = 300  # longest piece of a library's error text quoted in a reason


def message_source(attributes: Mapping[str, str], message_id: str | None = None) -> str:
    """Where a message came from, for its alerts and dead letters.

    Parameters
    ----------
    attributes
        The message's attributes.
    message_id
        Pub/Sub's message id, if known.

    Returns
    -------
    str
        The ``source`` attribute (``stampflow publish``), else the survey's Kafka coordinates
        (``kafka:ztf_20210818_programid1/3/1234``: the same on every redelivery), else
        ``pubsub:<message id>``.
    """
    if attributes.get(SOURCE_ATTRIBUTE):
        return attributes[SOURCE_ATTRIBUTE]
    if attributes.get(KAFKA_TOPIC):
        where = [attributes[KAFKA_TOPIC]]
        where += [attributes[k] for k in (KAFKA_PARTITION, KAFKA_OFFSET) if attributes.get(k)]
        return "kafka:" + "/".join(where)
    return f"pubsub:{message_id or 'unknown'}"


def schema_version_id(text: str) -> int:
    """Rubin's registry id of a ``schema_version`` attribute (``"v10_0"`` → 1000).

    Raises
    ------
    AlertDecodeError
        ``bad_attribute`` when the text is not ``vMAJOR_MINOR``.
    """
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        raise AlertDecodeError(
            "bad_attribute", f"{SCHEMA_VERSION}={text!r} is not vMAJOR_MINOR (e.g. v10_0)"
        )
    return lsst_schema_id(int(match[1]), int(match[2]))


def is_json(data: bytes) -> bool:
    """Bytes that start as JSON text, an object or an array (no container, wire-format message
    or Parquet file does)."""
    return bytes(data[:64]).lstrip()[:1] in (b"{", b"[")


class _Misfit(Exception):
    """A JSON value that does not fit its schema type (the message is a ``bad_json`` letter)."""


def _b64(value: Any, where: str) -> Any:
    if not isinstance(value, str):
        return value  # bytes already, or left for the encoder to refuse
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _Misfit(f"{where}: not base64 text ({e})") from e


def _revive(value: Any, schema: Any, named: dict[str, Any], where: str) -> Any:
    """A value from ``Serializers.serialize_json`` back as fastavro wrote it, by its schema."""
    if isinstance(schema, str):
        if schema in named:
            return _revive(value, named[schema], named, where)
        if schema in ("float", "double"):
            if value is None:
                return math.nan  # the library writes NaN and +-inf as null
            return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if schema == "bytes":
            return _b64(value, where)
        return value
    if isinstance(schema, list):  # a union
        if value is None and "null" in schema:
            return None
        branches = [b for b in schema if b != "null"]
        return _revive(value, branches[0], named, where) if len(branches) == 1 else value
    kind = schema.get("type")
    if kind == "record":
        if not isinstance(value, dict):
            raise _Misfit(f"{where}: expected an object for record {schema.get('name')}")
        # The library writes every field of the decoded record, so a field more or less means
        # another schema (a wrong schema_version), not a null.
        names = [f["name"] for f in schema["fields"]]
        missing, extra = [n for n in names if n not in value], sorted(set(value) - set(names))
        if missing or extra:
            found = [f"lacks {', '.join(missing[:4])}"] if missing else []
            found += [f"has {', '.join(extra[:4])}"] if extra else []
            raise _Misfit(
                f"{where or 'the record'} {' and '.join(found)} (record {schema.get('name')})"
            )
        return {
            f["name"]: _revive(
                value[f["name"]], f["type"], named, f"{where}.{f['name']}" if where else f["name"]
            )
            for f in schema["fields"]
        }
    if kind == "array":
        if not isinstance(value, list):
            return value
        return [_revive(v, schema["items"], named, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            return value
        return {k: _revive(v, schema["values"], named, f"{where}.{k}") for k, v in value.items()}
    if kind == "fixed":
        return _b64(value, where)
    logical = schema.get("logicalType", "")
    if logical.startswith("timestamp-") and isinstance(value, float | int):
        # datetime.timestamp() seconds back to the stored integer
        scale = {"timestamp-millis": 1_000, "timestamp-micros": 1_000_000}.get(logical)
        return round(value * scale) if scale else value
    if kind == "enum":
        return value
    return _revive(value, kind, named, where)


def json_to_wire(data: bytes, attributes: Mapping[str, str]) -> bytes:
    """A Pitt-Google JSON alert (``lsst-alerts-json``) as the wire-format message it was.

    Parameters
    ----------
    data
        The message data: one alert record as JSON.
    attributes
        The message attributes; ``schema_version`` names the record's schema.

    Returns
    -------
    bytes
        Byte 0, the schema id, the record encoded schemaless with that schema.

    Raises
    ------
    AlertDecodeError
        ``bad_attribute`` (no usable ``schema_version``), ``unknown_schema_id`` (no schema source
        has it) or ``bad_json`` (not a JSON object, or a record that does not fit the schema).
    """
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise AlertDecodeError("bad_json", f"does not parse: {e}") from e
    if not isinstance(record, dict):
        raise AlertDecodeError("bad_json", f"a JSON {type(record).__name__}, not an alert object")
    version = attributes.get(SCHEMA_VERSION)
    if not version:
        raise AlertDecodeError(
            "bad_attribute",
            f"a JSON alert without the {SCHEMA_VERSION} attribute that names its schema "
            f"(has {', '.join(sorted(record)[:6])}: a lite or value-added topic's message?)",
        )
    schema_id = schema_version_id(version)
    parsed = writer_schema(schema_id)
    if parsed is None:
        raise AlertDecodeError(
            "unknown_schema_id",
            f"{SCHEMA_VERSION}={version} (schema id {schema_id}) not found "
            f"({schema_sources().describe()})",
        )
    fields = {f["name"] for f in parsed.get("fields", [])} if isinstance(parsed, dict) else set()
    extra = sorted(set(record) - fields)
    if extra:
        raise AlertDecodeError(
            "bad_json",
            f"fields {', '.join(extra[:6])} are not in schema {version} (a lite or "
            "value-added topic's message?)",
        )
    try:
        revived = _revive(record, parsed, named_types(parsed), "")
        return encode_wire(schema_id, parsed, revived)
    except _Misfit as e:
        raise AlertDecodeError("bad_json", f"does not fit schema {version}: {e}") from e
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:  # fastavro's
        text = f"{type(e).__name__}: {e}"[:_DETAIL_CHARS]
        raise AlertDecodeError("bad_json", f"does not fit schema {version}: {text}") from e


def _field(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for name in path:
        value = value.get(name) if isinstance(value, Mapping) else None
    return value


def check_attributes(
    alerts: list[Alert], attributes: Mapping[str, str], data: bytes
) -> AlertDecodeError | None:
    """The first attribute that contradicts the message's data, as an error; None when none does.

    Parameters
    ----------
    alerts
        The alerts decoded from the message. Id attributes describe one alert, so they are
        checked only when the message holds exactly one.
    attributes
        The message attributes (:data:`ID_ATTRIBUTES`, :data:`SCHEMA_VERSION`).
    data
        The message data: ``schema_version`` is checked against a wire-format header (a ZTF
        container's copy made by the library says ``"None"``, and is not checked).

    Returns
    -------
    AlertDecodeError or None
        ``attribute_mismatch`` naming the attribute, its value and the data's.
    """
    if len(alerts) == 1:
        record = alerts[0].record
        for name, path in ID_ATTRIBUTES.items():
            if name not in attributes:
                continue
            value = _field(record, path)
            if value is None or str(value) != attributes[name]:
                return AlertDecodeError(
                    "attribute_mismatch",
                    f"attribute {name}={attributes[name]!r} but the alert's {'.'.join(path)} "
                    f"is {value!r}",
                )
    version = attributes.get(SCHEMA_VERSION)
    if version and is_wire_format(data):
        header_id = int.from_bytes(data[1:WIRE_HEADER], "big", signed=True)
        try:
            named_id = schema_version_id(version)
        except AlertDecodeError as e:
            return e
        if named_id != header_id:
            return AlertDecodeError(
                "attribute_mismatch",
                f"attribute {SCHEMA_VERSION}={version} (schema id {named_id}) but the message "
                f"header says schema id {header_id}",
            )
    return None


def decode_message(
    data: bytes, attributes: Mapping[str, str], source: str
) -> tuple[list[Alert], AlertDecodeError | None]:
    """Decode one Pub/Sub message, data and attributes, keeping what decodes and the first error.

    Parameters
    ----------
    data
        An Avro container (ZTF, ``stampflow publish``), a wire-format message (Rubin,
        ``lsst-alerts``), a Parquet file, or a Pitt-Google JSON alert (``lsst-alerts-json``).
    attributes
        The message attributes (checked by :func:`check_attributes`; a JSON alert's schema is
        the one its ``schema_version`` names).
    source
        A label for the message (:func:`message_source`), kept on each alert and in errors.

    Returns
    -------
    alerts, error
        The alerts decoded before any problem and the problem (None when the message is clean).
        A message whose attributes contradict its data gives no alerts, only the error.
    """
    if is_json(data):
        try:
            data = json_to_wire(data, attributes)
        except AlertDecodeError as e:
            return [], e
    alerts, error = decode_alerts(data, source)
    if error is not None:
        return alerts, error
    mismatch = check_attributes(alerts, attributes, data)
    return ([], mismatch) if mismatch is not None else (alerts, None)


class DecodeMessages(beam.DoFn):
    """Pub/Sub messages (``beam.io.PubsubMessage``) → alerts; the remainder → one dead letter.

    Counted like :class:`transforms.ingest.DecodeAlerts` (``alerts_decoded``,
    ``dead_letters_decode``); a dead letter keeps the message data as received and the source of
    :func:`message_source`.

    Parameters
    ----------
    schemas
        Where wire-format and JSON messages' writer schemas are found (:mod:`transforms.wire`),
        set on every worker in ``setup``; None keeps the process's own setting.
    """

    def __init__(self, schemas: SchemaSources | None = None) -> None:
        self.schemas = schemas
        self.alerts = Metrics.counter(METRICS_NAMESPACE, "alerts_decoded")
        self.dead = Metrics.counter(METRICS_NAMESPACE, f"dead_letters_{STAGE_DECODE}")

    def setup(self) -> None:
        if self.schemas is not None:
            configure_schemas(self.schemas.dirs, self.schemas.registry)

    def process(self, message: Any) -> Iterator[Any]:
        attributes = dict(message.attributes or {})
        source = message_source(attributes, message.message_id)
        data = message.data if message.data is not None else b""
        try:
            alerts, error = decode_message(data, attributes, source)
        except Exception as e:  # a bug, not bad data; still never lose the input
            alerts, error = [], e
        yield from decoded_outputs(alerts, error, source, data, self.alerts, self.dead)
