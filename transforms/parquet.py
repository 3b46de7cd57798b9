"""Alerts in Parquet files, as brokers redistribute them (Fink's Rubin layout: one row per alert).

Each row becomes the record ``fastavro`` would decode from the packet: nested structs as dicts,
lists as lists, cutouts as bytes. Fink's copies make every field nullable, turn absent records into
all-null structs and add their own columns; the survey adapters read them as they are.

Every alert keeps raw bytes like any other (dead letters, replays, ``stampflow publish``): a
single-record Avro container written with an Avro schema derived from the file's Arrow schema
(every field nullable, as in the file), which :func:`transforms.alerts.iter_alerts` reads back to
the same record.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["PARQUET_MAGIC", "arrow_to_avro", "iter_parquet_records"]

PARQUET_MAGIC = b"PAR1"


def _avro_type(t: pa.DataType, name: str, names: set[str]) -> Any:
    if pa.types.is_struct(t):
        rec = name
        while rec in names:  # Avro record names must be unique within a schema
            rec += "_"
        names.add(rec)
        return {
            "type": "record",
            "name": rec,
            "fields": [
                {"name": f.name, "type": ["null", _avro_type(f.type, f"{rec}_{f.name}", names)]}
                for f in t
            ],
        }
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        item = _avro_type(t.value_type, f"{name}_item", names)
        return {"type": "array", "items": ["null", item]}
    if pa.types.is_map(t):
        return {"type": "map", "values": ["null", _avro_type(t.item_type, f"{name}_v", names)]}
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "int" if t.bit_width <= 32 and pa.types.is_signed_integer(t) else "long"
    if pa.types.is_float32(t) or pa.types.is_float16(t):
        return "float"
    if pa.types.is_floating(t):
        return "double"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "bytes"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
        return "long"  # as integers: no alert field the adapters read is a timestamp
    if pa.types.is_null(t):
        return "null"
    raise TypeError(f"Arrow type {t} has no Avro counterpart here")


def arrow_to_avro(schema: pa.Schema, name: str = "alert") -> dict[str, Any]:
    """An Avro record schema for rows of ``schema``, every field nullable.

    Parameters
    ----------
    schema
        The Parquet file's Arrow schema.
    name
        The top-level record's name.

    Returns
    -------
    dict
        An Avro schema (``fastavro.parse_schema`` accepts it).
    """
    names: set[str] = {name}
    return {
        "type": "record",
        "name": name,
        "fields": [
            {"name": f.name, "type": ["null", _avro_type(f.type, f.name, names)]} for f in schema
        ],
    }


def _plain(value: Any, t: pa.DataType) -> Any:
    """A ``to_pylist`` value as fastavro takes it under :func:`_avro_type`'s schema: maps (pairs
    in Arrow's Python form) as dicts, timestamps as integers."""
    if value is None:
        return None
    if pa.types.is_struct(t):
        return {f.name: _plain(value.get(f.name), f.type) for f in t}
    if pa.types.is_map(t):
        return {k: _plain(v, t.item_type) for k, v in value}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [_plain(v, t.value_type) for v in value]
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
        return int(pa.scalar(value, type=t).cast(pa.int64()).as_py())
    return value


def iter_parquet_records(data: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Rows of a Parquet file as ``(record, single-record Avro container)``.

    Parameters
    ----------
    data
        The whole file.

    Yields
    ------
    (record, raw)
        One per row, in file order.

    Raises
    ------
    ValueError
        ``bad_parquet: ...`` when the file does not read, or a row does not convert.
    """
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
        parsed = fastavro.parse_schema(arrow_to_avro(pf.schema_arrow))
    except Exception as e:
        raise ValueError(f"bad_parquet: {type(e).__name__}: {e}") from e
    arrow = pa.struct(list(pf.schema_arrow))
    for i in range(pf.num_row_groups):
        try:
            rows = pf.read_row_group(i).to_pylist()
        except Exception as e:
            raise ValueError(f"bad_parquet: row group {i}: {type(e).__name__}: {e}") from e
        for row in rows:
            record = _plain(row, arrow)
            buf = io.BytesIO()
            try:
                fastavro.writer(buf, parsed, [record], codec="null")
            except Exception as e:
                raise ValueError(f"bad_parquet: a row does not convert: {e}") from e
            yield record, buf.getvalue()
