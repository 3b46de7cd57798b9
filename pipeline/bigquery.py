"""BigQuery sinks: table schemas, table creation, Beam writers and an idempotent per-run commit.

Three tables, named and typed from :mod:`transforms.schema` (SPEC §9):

- ``probabilities`` (:data:`~transforms.schema.PROBABILITY_ROW`), one row per classified alert;
- ``sky_density`` (:data:`~transforms.schema.SKY_DENSITY_ROW`), one row per night, pixel and class;
- ``dead_letters`` (:data:`~transforms.schema.DEAD_LETTER_FIELDS`); ``raw`` is a ``BYTES`` column.
  Inside the pipeline it is ``bytes``; :func:`to_bigquery_row` base64-encodes it because
  BigQuery's JSON APIs (load files and ``insertAll``) carry ``BYTES`` as base64 text. Reading the
  table back with google-cloud-bigquery gives ``bytes`` again.

Re-running a night does not duplicate rows
------------------------------------------
Beam writes each run into its own *staging* tables (``<table>__staging_<run_id>``, created by
:func:`create_staging_tables`, expiring after two days so a crashed run leaves nothing behind).
After the pipeline has finished, :func:`commit_run` moves every staging table into its target with
one multi-statement transaction per table::

    BEGIN TRANSACTION;
    DELETE FROM target WHERE EXISTS (staged row with the same replace key);
    INSERT INTO target SELECT ... FROM staging;   -- deduplicated on the key where it is unique
    COMMIT TRANSACTION;

and drops the staging tables. The replace keys (:data:`REPLACE_KEYS`) are ``candid`` for
``probabilities`` (a re-run with another model replaces the row), ``(night, nside, pixel, class)``
for ``sky_density`` and ``source`` for ``dead_letters`` (all dead letters of a re-read source are
replaced; a source that no longer fails keeps its old dead letters). Committing twice, or re-running
the same night, leaves exactly one copy. This works on real BigQuery and on the emulator:

- it relies on plain DML plus ``BEGIN/COMMIT TRANSACTION``, which both support;
- in batch runs the target tables are only ever written by DML, never by streaming inserts, so
  BigQuery's "DML cannot modify rows in the streaming buffer" restriction never bites (staging
  tables are only read, which the streaming buffer allows);
- insertId de-duplication was rejected: BigQuery's is best effort over about a minute, Beam gives
  no way to set the ids (only random ones), and the emulator ignores insertIds altogether.

Streaming pipelines, which never finish, write straight into the target tables with
``STREAMING_INSERTS`` (``run_id=None``); Beam's random insertIds only protect against its own
retries there.

Write methods
-------------
- On GCP, batch: ``FILE_LOADS`` (default): load jobs from files under ``temp_location`` (gs://).
- On GCP, streaming: ``STREAMING_INSERTS`` (the default when the pipeline is streaming).
- Against the emulator (``emulator_endpoint="http://127.0.0.1:PORT"``): ``STREAMING_INSERTS`` only.
  Beam's sink has no endpoint option, but its ``test_client`` argument replaces both of the clients
  it would build; with ``CREATE_NEVER`` the streaming writer only calls
  ``client.insert_rows_json``, which the google-cloud-bigquery client sends to the emulator.
  :func:`make_client` returns a client with anonymous credentials that survives pickling (Beam
  ships it to the workers). ``FILE_LOADS`` needs GCS and ``STORAGE_WRITE_API`` a Java expansion
  service fetched from Maven, so neither can run offline. As SPEC §11 says, tables are created with
  the client (:func:`ensure_tables`), and the sink uses ``CREATE_NEVER`` and ``RETRY_NEVER``.

Typical batch use::

    client = make_client(project)                                 # or make_client(p, endpoint)
    ensure_tables(client, dataset, project)
    run_id = new_run_id()
    create_staging_tables(client, dataset, project, run_id)
    {"probabilities": probs, "sky_density": density, "dead_letters": dead} | WriteTables(
        project, dataset, run_id=run_id)
    pipeline.run().wait_until_finish()
    commit_run(client, dataset, project, run_id)
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import logging
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final

import apache_beam as beam
import numpy as np
from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
from apache_beam.io.gcp.bigquery_tools import RetryStrategy
from apache_beam.options.pipeline_options import StandardOptions
from google.api_core.client_options import ClientOptions
from google.api_core.exceptions import NotFound
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from transforms.schema import DEAD_LETTER_FIELDS, PROBABILITY_ROW, SKY_DENSITY_ROW

TABLE_PROBABILITIES: Final[str] = "probabilities"
TABLE_SKY_DENSITY: Final[str] = "sky_density"
TABLE_DEAD_LETTERS: Final[str] = "dead_letters"
TABLES: Final[tuple[str, ...]] = (TABLE_PROBABILITIES, TABLE_SKY_DENSITY, TABLE_DEAD_LETTERS)

#: BigQuery types of the dead-letter columns (the schema module names them, in this order).
DEAD_LETTER_TYPES: Final[dict[str, str]] = {
    "stage": "STRING",
    "reason": "STRING",
    "source": "STRING",  # file, archive member or message the record came from
    "objectId": "STRING",  # null when the failure came before decoding
    "candid": "INTEGER",  # null when the failure came before decoding
    "raw": "BYTES",  # the bytes that failed; base64 in JSON, bytes when read back
}
#: Columns that are REQUIRED (every other column is NULLABLE).
REQUIRED_COLUMNS: Final[dict[str, frozenset[str]]] = {
    TABLE_PROBABILITIES: frozenset({"objectId", "candid"}),
    TABLE_SKY_DENSITY: frozenset({"night", "nside", "pixel", "class", "count"}),
    TABLE_DEAD_LETTERS: frozenset({"stage", "reason", "source"}),
}
#: Columns identifying the rows a re-run replaces: REQUIRED, or added later (:data:`ADDED_COLUMNS`)
#: and compared through ``COALESCE`` with the value older rows had, so plain ``=`` works.
REPLACE_KEYS: Final[dict[str, tuple[str, ...]]] = {
    TABLE_PROBABILITIES: ("candid",),
    TABLE_SKY_DENSITY: ("night", "nside", "pixel", "class", "survey"),
    TABLE_DEAD_LETTERS: ("source",),
}
#: Columns added after tables were first created (issue 26: surveys), with the value rows written
#: before then hold. :func:`ensure_tables` adds them to an existing table (a NULLABLE column is an
#: additive, compatible schema change) and backfills them, so older rows keep matching the keys.
ADDED_COLUMNS: Final[dict[str, dict[str, str]]] = {
    TABLE_PROBABILITIES: {
        "survey": "'ztf'",
        "band": "CASE fid WHEN 1 THEN 'g' WHEN 2 THEN 'r' WHEN 3 THEN 'i' END",
    },
    TABLE_SKY_DENSITY: {"survey": "'ztf'"},
    TABLE_DEAD_LETTERS: {},
}
#: Whether the replace key is unique in the table (staged rows are then de-duplicated on it).
UNIQUE_KEYS: Final[dict[str, bool]] = {
    TABLE_PROBABILITIES: True,
    TABLE_SKY_DENSITY: True,
    TABLE_DEAD_LETTERS: False,
}
#: How long staging tables live if :func:`commit_run` never drops them.
STAGING_EXPIRATION: Final[dt.timedelta] = dt.timedelta(days=2)
STAGING_INFIX: Final[str] = "__staging_"
#: Write methods accepted by :class:`WriteTables`.
FILE_LOADS: Final[str] = WriteToBigQuery.Method.FILE_LOADS
STREAMING_INSERTS: Final[str] = WriteToBigQuery.Method.STREAMING_INSERTS
METHODS: Final[tuple[str, ...]] = (FILE_LOADS, STREAMING_INSERTS)

_RUN_ID = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def table_columns(table: str) -> tuple[tuple[str, str], ...]:
    """Return ``(column, BigQuery type)`` pairs of a table, in schema-module order.

    Parameters
    ----------
    table
        One of :data:`TABLES`.

    Returns
    -------
    tuple of (str, str)
        Column names and legacy BigQuery type names (``STRING``, ``INTEGER``, ``FLOAT``, ``BYTES``).

    Raises
    ------
    ValueError
        If the table is unknown.
    KeyError
        If the schema module names a dead-letter field this module has no type for.
    """
    if table == TABLE_PROBABILITIES:
        return PROBABILITY_ROW
    if table == TABLE_SKY_DENSITY:
        return SKY_DENSITY_ROW
    if table == TABLE_DEAD_LETTERS:
        missing = [f for f in DEAD_LETTER_FIELDS if f not in DEAD_LETTER_TYPES]
        if missing:
            raise KeyError(f"no BigQuery type for dead-letter field(s) {missing}")
        return tuple((f, DEAD_LETTER_TYPES[f]) for f in DEAD_LETTER_FIELDS)
    raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")


def _mode(table: str, column: str) -> str:
    return "REQUIRED" if column in REQUIRED_COLUMNS[table] else "NULLABLE"


def table_schemas() -> dict[str, list[bigquery.SchemaField]]:
    """Return the google-cloud-bigquery schema of every table.

    Returns
    -------
    dict of str to list of SchemaField
        ``{"probabilities": [...], "sky_density": [...], "dead_letters": [...]}``.
    """
    return {
        table: [
            bigquery.SchemaField(name, kind, mode=_mode(table, name))
            for name, kind in table_columns(table)
        ]
        for table in TABLES
    }


def beam_schema(table: str) -> dict[str, list[dict[str, str]]]:
    """Return a table's schema in the ``{"fields": [...]}`` form ``WriteToBigQuery`` accepts.

    Parameters
    ----------
    table
        One of :data:`TABLES`.

    Returns
    -------
    dict
        ``{"fields": [{"name": ..., "type": ..., "mode": ...}, ...]}``.
    """
    return {
        "fields": [
            {"name": name, "type": kind, "mode": _mode(table, name)}
            for name, kind in table_columns(table)
        ]
    }


def _json_value(kind: str, value: Any) -> Any:
    """Convert one pipeline value to what BigQuery's JSON APIs expect for a column type."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if kind == "BYTES":
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"BYTES column needs bytes, got {type(value).__name__}")
        return base64.b64encode(bytes(value)).decode("ascii")
    if kind == "FLOAT":
        value = float(value)
        return value if math.isfinite(value) else None
    if kind == "INTEGER":
        return int(value)
    if kind == "STRING":
        return str(value)
    return value


def to_bigquery_row(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """Project a pipeline row dict onto a table's columns, JSON-ready for BigQuery.

    Keys that are not columns are dropped, missing columns become null, numpy scalars become Python
    numbers, non-finite floats become null (JSON cannot carry NaN) and ``BYTES`` become base64.

    Parameters
    ----------
    table
        One of :data:`TABLES`.
    row
        A probability row, sky-density row or dead letter as the pipeline produces it.

    Returns
    -------
    dict
        ``{column: value}`` for every column of the table.

    Raises
    ------
    TypeError
        If a ``BYTES`` column holds something other than bytes.
    """
    return {name: _json_value(kind, row.get(name)) for name, kind in table_columns(table)}


class _EmulatorClient(bigquery.Client):
    """A google-cloud-bigquery client for an emulator endpoint that survives pickling.

    ``bigquery.Client`` refuses to pickle; Beam pickles the sink (and its ``test_client``) to ship
    it to workers, so this one pickles as its constructor arguments and reconnects on unpickling.
    """

    def __init__(self, project: str, api_endpoint: str, location: str | None = None) -> None:
        super().__init__(
            project=project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=api_endpoint),
            location=location,
        )
        self._stampflow_args = (project, api_endpoint, location)

    def __reduce__(self) -> tuple[type[_EmulatorClient], tuple[str, str, str | None]]:
        return (_EmulatorClient, self._stampflow_args)


def make_client(
    project: str, emulator_endpoint: str | None = None, location: str | None = None
) -> bigquery.Client:
    """Build a BigQuery client for GCP (application-default credentials) or for the emulator.

    Parameters
    ----------
    project
        GCP project id (any id for the emulator).
    emulator_endpoint
        ``http://127.0.0.1:PORT`` of a BigQuery emulator; ``None`` for real BigQuery.
    location
        Default location for jobs and datasets (e.g. ``"US"``); ``None`` lets BigQuery choose.

    Returns
    -------
    google.cloud.bigquery.Client
        For the emulator: anonymous credentials and picklable, so it can be Beam's ``test_client``.
    """
    if emulator_endpoint:
        return _EmulatorClient(project, emulator_endpoint, location)
    return bigquery.Client(project=project, location=location)


def ensure_tables(
    client: bigquery.Client,
    dataset: str,
    project: str,
    *,
    location: str | None = None,
) -> dict[str, bigquery.Table]:
    """Create the dataset and the three tables if absent (idempotent).

    Existing tables keep their rows; columns added since they were created
    (:data:`ADDED_COLUMNS`) are appended to their schema and backfilled, and any other missing
    column is an error.

    Parameters
    ----------
    client
        A google-cloud-bigquery client (GCP or emulator).
    dataset
        Dataset id.
    project
        Project id.
    location
        Location of a dataset created here (e.g. ``"US"``); ``None`` for BigQuery's default.

    Returns
    -------
    dict of str to Table
        The tables, by name.

    Raises
    ------
    ValueError
        If an existing table lacks columns this module writes and cannot add.
    """
    ds = bigquery.Dataset(f"{project}.{dataset}")
    if location:
        ds.location = location
    client.create_dataset(ds, exists_ok=True)
    tables = {}
    for name, schema in table_schemas().items():
        table = client.create_table(
            bigquery.Table(f"{project}.{dataset}.{name}", schema=schema), exists_ok=True
        )
        have = {field.name for field in table.schema}
        missing = [field for field in schema if field.name not in have]
        unknown = [f.name for f in missing if f.name not in ADDED_COLUMNS[name]]
        if unknown:
            raise ValueError(f"existing table {table.full_table_id} lacks columns {unknown}")
        if missing:
            table = _add_columns(client, table, name, missing)
        tables[name] = table
    return tables


def _add_columns(
    client: bigquery.Client, table: bigquery.Table, name: str, fields: list[bigquery.SchemaField]
) -> bigquery.Table:
    """Append NULLABLE ``fields`` to an existing table and backfill them (:data:`ADDED_COLUMNS`)."""
    target = f"{table.project}.{table.dataset_id}.{table.table_id}"
    # DDL rather than a tables.patch of the schema: the same on BigQuery, and the emulator
    # applies it to its storage too.
    for f in fields:  # one column per statement: the emulator takes no more
        add = f"ADD COLUMN IF NOT EXISTS {_quote(f.name)} {f.field_type}"
        client.query(f"ALTER TABLE {_quote(target)} {add}").result()
    table = client.get_table(target)
    have = {f.name for f in table.schema}
    if any(f.name not in have for f in fields):  # the emulator keeps its metadata apart
        table.schema = [*table.schema, *(f for f in fields if f.name not in have)]
        table = client.update_table(table, ["schema"])
    for f in fields:
        sql = (
            f"UPDATE {_quote(target)} SET {_quote(f.name)} = {ADDED_COLUMNS[name][f.name]} "
            f"WHERE {_quote(f.name)} IS NULL"
        )
        try:
            client.query(sql).result()
        except Exception as e:  # e.g. rows still in a streaming buffer: the keys COALESCE
            logging.getLogger(__name__).warning(
                "%s: old rows keep %s null for now (%s: %s); re-runs still match them",
                target,
                f.name,
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
    return table


def new_run_id() -> str:
    """Return a fresh run id for staging-table names (UTC time plus a random suffix)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{now}_{uuid.uuid4().hex[:8]}"


def staging_table_id(table: str, run_id: str) -> str:
    """Return the staging table name of a table for one run.

    Parameters
    ----------
    table
        One of :data:`TABLES`.
    run_id
        1–64 characters from ``[A-Za-z0-9_]`` (see :func:`new_run_id`).

    Returns
    -------
    str
        ``<table>__staging_<run_id>``.

    Raises
    ------
    ValueError
        If the table or run id is invalid.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run id {run_id!r} must be 1-64 characters of [A-Za-z0-9_]")
    return f"{table}{STAGING_INFIX}{run_id}"


def create_staging_tables(
    client: bigquery.Client,
    dataset: str,
    project: str,
    run_id: str,
    *,
    tables: Iterable[str] = TABLES,
    expiration: dt.timedelta = STAGING_EXPIRATION,
) -> dict[str, str]:
    """Create empty staging tables for one run, replacing leftovers of a run with the same id.

    On real BigQuery, streaming inserts into a table deleted and re-created under the same name can
    be lost for a few minutes, so use a fresh :func:`new_run_id` with ``STREAMING_INSERTS``.

    Parameters
    ----------
    client
        A google-cloud-bigquery client.
    dataset, project
        Where the target tables live (see :func:`ensure_tables`).
    run_id
        Identifies the run (see :func:`staging_table_id`).
    tables
        Which tables to stage.
    expiration
        Lifetime after which BigQuery drops a staging table that was never committed.

    Returns
    -------
    dict of str to str
        Staging table ids (``project.dataset.table``) by target table name.
    """
    schemas = table_schemas()
    expires = dt.datetime.now(dt.UTC) + expiration
    out = {}
    for name in tables:
        table_id = f"{project}.{dataset}.{staging_table_id(name, run_id)}"
        client.delete_table(table_id, not_found_ok=True)
        table = bigquery.Table(table_id, schema=schemas[name])
        table.expires = expires
        client.create_table(table)
        out[name] = table_id
    return out


def _quote(identifier: str) -> str:
    return f"`{identifier}`"


def commit_sql(table: str, target: str, staging: str) -> str:
    """Return the transaction that replaces a target table's rows by a staging table's rows.

    Parameters
    ----------
    table
        One of :data:`TABLES` (gives the columns and the replace key).
    target, staging
        Fully qualified ``project.dataset.table`` ids.

    Returns
    -------
    str
        ``BEGIN TRANSACTION; DELETE ...; INSERT ...; COMMIT TRANSACTION;`` in GoogleSQL.
    """
    columns = ", ".join(_quote(name) for name, _ in table_columns(table))
    keys = REPLACE_KEYS[table]
    added = ADDED_COLUMNS[table]

    def side(alias: str, k: str) -> str:
        # A column added later may still be null in rows from before (the backfill is best
        # effort: BigQuery refuses DML on rows in a streaming buffer): compare their old value.
        col = f"{alias}.{_quote(k)}"
        return f"COALESCE({col}, {added[k]})" if k in added else col

    match = " AND ".join(f"{side('S', k)} = {side('T', k)}" for k in keys)
    if UNIQUE_KEYS[table]:
        partition = ", ".join(_quote(k) for k in keys)
        source = (
            f"SELECT {columns} FROM (SELECT {columns}, ROW_NUMBER() OVER (PARTITION BY {partition})"
            f" AS _stampflow_rank FROM {_quote(staging)}) WHERE _stampflow_rank = 1"
        )
    else:
        source = f"SELECT {columns} FROM {_quote(staging)}"
    return (
        "BEGIN TRANSACTION;\n"
        f"DELETE FROM {_quote(target)} AS T WHERE EXISTS "
        f"(SELECT 1 FROM {_quote(staging)} AS S WHERE {match});\n"
        f"INSERT INTO {_quote(target)} ({columns}) {source};\n"
        "COMMIT TRANSACTION;"
    )


def commit_run(
    client: bigquery.Client,
    dataset: str,
    project: str,
    run_id: str,
    *,
    tables: Iterable[str] = TABLES,
    drop_staging: bool = True,
) -> dict[str, int]:
    """Move one run's staging tables into the target tables without duplicating rows.

    Call it after the pipeline has finished. Committing again (or a later run of the same night)
    replaces rows by :data:`REPLACE_KEYS` instead of appending them.

    Parameters
    ----------
    client
        A google-cloud-bigquery client.
    dataset, project
        Where the target tables live.
    run_id
        The run whose staging tables to commit.
    tables
        Which tables to commit; a missing staging table is skipped (count ``0``).
    drop_staging
        Drop each staging table once committed.

    Returns
    -------
    dict of str to int
        Number of staged rows per table (before de-duplication on unique keys).
    """
    counts = {}
    for name in tables:
        target = f"{project}.{dataset}.{name}"
        staging = f"{project}.{dataset}.{staging_table_id(name, run_id)}"
        try:
            client.get_table(staging)
        except NotFound:
            counts[name] = 0
            continue
        rows = client.query(f"SELECT COUNT(*) AS n FROM {_quote(staging)}").result()
        counts[name] = int(next(iter(rows))["n"])
        client.query(commit_sql(name, target, staging)).result()
        if drop_staging:
            client.delete_table(staging, not_found_ok=True)
    return counts


class WriteTables(beam.PTransform):
    """Write row dicts to the BigQuery tables (or to one run's staging tables).

    Apply it to a dict ``{table name: PCollection of row dicts}`` holding any of :data:`TABLES`.
    Tables must exist (:func:`ensure_tables`, :func:`create_staging_tables`): the sink never creates
    them. The output is ``{table name: PCollection of failed rows}``: with ``STREAMING_INSERTS``,
    Beam's ``(destination, row, errors)`` for rows BigQuery rejected; with ``FILE_LOADS`` always
    empty, since a failed load job fails the pipeline.

    Parameters
    ----------
    project
        GCP project id (any id for the emulator).
    dataset
        Dataset id.
    run_id
        Write to the staging tables of this run (then call :func:`commit_run`); ``None`` writes
        straight into the target tables (streaming, or when duplicates do not matter).
    method
        ``"FILE_LOADS"`` or ``"STREAMING_INSERTS"``; ``None`` picks ``STREAMING_INSERTS`` for the
        emulator or a streaming pipeline and ``FILE_LOADS`` otherwise.
    emulator_endpoint
        ``http://127.0.0.1:PORT`` of a BigQuery emulator; the sink then uses a client for it,
        ``STREAMING_INSERTS`` and ``RETRY_NEVER``.
    custom_gcs_temp_location
        gs:// folder for ``FILE_LOADS`` files; ``None`` uses the pipeline's ``temp_location``.
    batch_size
        Rows per ``insertAll`` request with ``STREAMING_INSERTS``; ``None`` for Beam's default.

    Raises
    ------
    ValueError
        On an unknown method, ``FILE_LOADS`` with the emulator, or an unknown table name.
    """

    def __init__(
        self,
        project: str,
        dataset: str,
        *,
        run_id: str | None = None,
        method: str | None = None,
        emulator_endpoint: str | None = None,
        custom_gcs_temp_location: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if method is not None and method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if emulator_endpoint and method == FILE_LOADS:
            raise ValueError("the BigQuery emulator supports STREAMING_INSERTS only (no GCS)")
        if run_id is not None:
            staging_table_id(TABLES[0], run_id)  # validates the id early
        self.project = project
        self.dataset = dataset
        self.run_id = run_id
        self.method = method
        self.emulator_endpoint = emulator_endpoint
        self.custom_gcs_temp_location = custom_gcs_temp_location
        self.batch_size = batch_size

    def _method(self, pipeline: beam.Pipeline) -> str:
        if self.method is not None:
            return self.method
        if self.emulator_endpoint or pipeline.options.view_as(StandardOptions).streaming:
            return STREAMING_INSERTS
        return FILE_LOADS

    def destination(self, table: str) -> str:
        """Return the ``project:dataset.table`` this transform writes a table's rows to."""
        name = staging_table_id(table, self.run_id) if self.run_id else table
        return f"{self.project}:{self.dataset}.{name}"

    def expand(self, pcolls: Mapping[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        unknown = sorted(set(pcolls) - set(TABLES))
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; expected some of {TABLES}")
        if not pcolls:
            return {}
        pipeline = next(iter(pcolls.values())).pipeline
        method = self._method(pipeline)
        emulator = self.emulator_endpoint is not None
        retry = RetryStrategy.RETRY_NEVER if emulator else RetryStrategy.RETRY_ON_TRANSIENT_ERROR
        client = make_client(self.project, self.emulator_endpoint) if emulator else None
        failed = {}
        for table in (t for t in TABLES if t in pcolls):
            rows = pcolls[table] | f"ToRows[{table}]" >> beam.Map(
                functools.partial(to_bigquery_row, table)
            )
            result = rows | f"Write[{table}]" >> WriteToBigQuery(
                self.destination(table),
                schema=beam_schema(table),
                method=method,
                create_disposition=BigQueryDisposition.CREATE_NEVER,
                write_disposition=BigQueryDisposition.WRITE_APPEND,
                insert_retry_strategy=retry,
                test_client=client,
                ignore_insert_ids=emulator,  # the emulator ignores them; Beam's test ids collide
                custom_gcs_temp_location=self.custom_gcs_temp_location,
                batch_size=self.batch_size,
            )
            if method == STREAMING_INSERTS:
                failed[table] = result.failed_rows_with_errors
            else:
                failed[table] = pipeline | f"NoFailedRows[{table}]" >> beam.Create([])
        return failed
