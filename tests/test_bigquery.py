"""BigQuery sinks: schemas and row conversion (pure), then the real write path against the local
BigQuery emulator (PyPI ``bqemulator``, SPEC §10): tables created with the client, Beam's
``WriteToBigQuery`` (``STREAMING_INSERTS``, ``CREATE_NEVER``, ``RETRY_NEVER``) into per-run staging
tables, :func:`pipeline.bigquery.commit_run`, read back and compared; a second run of the same
night must not duplicate anything. Emulator tests skip with the reason when it cannot start."""

from __future__ import annotations

import base64
import itertools
import math
import pickle
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, is_empty
from google.cloud import bigquery

from bench.emulators import (
    BigQueryEmulator,
    EmulatorUnavailableError,
    bigquery_missing_requirements,
)
from pipeline.bigquery import (
    ADDED_COLUMNS,
    FILE_LOADS,
    REPLACE_KEYS,
    STREAMING_INSERTS,
    TABLE_DEAD_LETTERS,
    TABLE_PROBABILITIES,
    TABLE_SKY_DENSITY,
    TABLES,
    WriteTables,
    beam_schema,
    commit_run,
    commit_sql,
    create_staging_tables,
    ensure_tables,
    make_client,
    new_run_id,
    staging_table_id,
    table_schemas,
    to_bigquery_row,
)
from transforms.dead_letters import dead_letter
from transforms.schema import (
    CLASS_NAMES,
    DEAD_LETTER_FIELDS,
    PROBABILITY_COLUMN_NAMES,
    PROBABILITY_COLUMNS,
    PROBABILITY_ROW,
    RULE_KNOWN_ASTEROID,
    SKY_DENSITY_ROW,
    STAGE_DECODE,
    STAGE_STAMPS,
)

_datasets = itertools.count()


# --- rows -----------------------------------------------------------------------------------------
def probability_rows(n: int = 20, model_version: str = "1.0") -> list[dict[str, Any]]:
    """``n`` probability rows with every column set (rule null except for asteroids)."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(n):
        p = rng.dirichlet(np.ones(len(CLASS_NAMES)))
        cls = CLASS_NAMES[int(np.argmax(p))]
        rows.append(
            {
                "objectId": f"ZTF24aaa{i:05d}",
                "candid": 2_700_000_000_000_000_000 + i,  # real candids need 62 bits
                "jd": 2460472.5 + i / 97,
                "ra": float(rng.uniform(0, 360)),
                "dec": float(rng.uniform(-30, 90)),
                "fid": 1 + i % 2,
                "magpsf": float(rng.uniform(15, 21)),
                "survey": "ztf",
                "band": "gr"[i % 2],
                **{c: float(v) for c, v in zip(PROBABILITY_COLUMNS, p, strict=True)},
                "predicted_class": cls,
                "rule": RULE_KNOWN_ASTEROID if cls == "asteroid" else None,
                "model_name": "stampflow",
                "model_version": model_version,
            }
        )
    return rows


def density_rows() -> list[dict[str, Any]]:
    return [
        {
            "night": "20240611",
            "nside": 16,
            "pixel": pixel,
            "class": cls,
            "count": 1 + pixel % 3,
            "mean_probability": 0.5 + pixel / 10_000,
            "survey": "ztf",
        }
        for pixel, cls in [(10, "SN"), (10, "AGN"), (2047, "VS"), (3071, "bogus")]
    ]


def dead_letters() -> list[dict[str, Any]]:
    return [
        dead_letter(
            STAGE_DECODE, "bad_magic: not an Avro container", "night.tar!a.avro", b"\0\xff"
        ),
        dead_letter(STAGE_DECODE, "truncated: 3 bytes", "night.tar!b.avro", b""),
        dead_letter(
            STAGE_STAMPS,
            "jpeg: cutoutScience is a JPEG",
            "night.tar!c.avro",
            bytes(range(256)),
            object_id="ZTF24aaazzzzz",
            candid=2_700_000_000_000_000_999,
        ),
        # Two identical dead letters from one source are both kept (the key is not unique).
        dead_letter(STAGE_DECODE, "bad_magic: twice", "night.tar!d.avro", b"x"),
        dead_letter(STAGE_DECODE, "bad_magic: twice", "night.tar!d.avro", b"x"),
    ]


def read_table(client: bigquery.Client, table_id: str) -> list[dict[str, Any]]:
    return [dict(row) for row in client.list_rows(table_id)]


def canonical(rows: list[dict[str, Any]], table: str) -> list[tuple[Any, ...]]:
    """Rows as sorted tuples in column order (``None`` sorts first), for order-free comparison."""
    names = [f["name"] for f in beam_schema(table)["fields"]]
    tuples = [tuple(row.get(n) for n in names) for row in rows]
    return sorted(tuples, key=lambda t: [(v is not None, v) for v in t])


# --- pure -----------------------------------------------------------------------------------------
def test_schemas_follow_the_schema_module() -> None:
    schemas = table_schemas()
    assert tuple(schemas) == TABLES
    for table, spec in [
        (TABLE_PROBABILITIES, PROBABILITY_ROW),
        (TABLE_SKY_DENSITY, SKY_DENSITY_ROW),
    ]:
        assert [(f.name, f.field_type) for f in schemas[table]] == list(spec)
    dead = schemas[TABLE_DEAD_LETTERS]
    assert tuple(f.name for f in dead) == DEAD_LETTER_FIELDS
    assert {f.name: f.field_type for f in dead}["raw"] == "BYTES"
    assert {f.name: f.field_type for f in dead}["candid"] == "INTEGER"
    modes = {t: {f.name: f.mode for f in fields} for t, fields in schemas.items()}
    assert modes[TABLE_PROBABILITIES]["candid"] == "REQUIRED"
    assert modes[TABLE_PROBABILITIES]["rule"] == "NULLABLE"
    assert modes[TABLE_DEAD_LETTERS]["candid"] == "NULLABLE"  # decode failures have no candid
    for table, keys in REPLACE_KEYS.items():
        # Never null: REQUIRED, or added later and backfilled (ADDED_COLUMNS).
        assert all(modes[table][k] == "REQUIRED" or k in ADDED_COLUMNS[table] for k in keys), table
    for table in TABLES:
        assert beam_schema(table) == {
            "fields": [
                {"name": f.name, "type": f.field_type, "mode": f.mode} for f in schemas[table]
            ]
        }


def test_to_bigquery_row_is_json_ready() -> None:
    row = probability_rows(1)[0] | {"ra": np.float32(12.5), "fid": np.int64(2), "extra": 1}
    row["p_SN"] = float("nan")
    out = to_bigquery_row(TABLE_PROBABILITIES, row)
    assert list(out) == list(PROBABILITY_COLUMN_NAMES)  # extra key dropped, schema order
    assert out["ra"] == 12.5 and type(out["ra"]) is float
    assert out["fid"] == 2 and type(out["fid"]) is int
    assert out["p_SN"] is None  # JSON cannot carry NaN
    dead = to_bigquery_row(TABLE_DEAD_LETTERS, dead_letters()[2])
    assert base64.b64decode(dead["raw"]) == bytes(range(256))
    assert to_bigquery_row(TABLE_DEAD_LETTERS, {"stage": "read"})["raw"] is None
    with pytest.raises(TypeError, match="BYTES"):
        to_bigquery_row(TABLE_DEAD_LETTERS, {"raw": "not bytes"})


def test_names_and_arguments_are_checked() -> None:
    run_id = new_run_id()
    assert staging_table_id(TABLE_SKY_DENSITY, run_id) == f"sky_density__staging_{run_id}"
    with pytest.raises(ValueError, match="run id"):
        staging_table_id(TABLE_SKY_DENSITY, "night-1")
    with pytest.raises(ValueError, match="unknown table"):
        staging_table_id("probability", run_id)
    with pytest.raises(ValueError, match="STREAMING_INSERTS only"):
        WriteTables("p", "d", method=FILE_LOADS, emulator_endpoint="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="unknown method"):
        WriteTables("p", "d", method="STORAGE_WRITE_API")
    sql = commit_sql(TABLE_SKY_DENSITY, "p.d.sky_density", "p.d.sky_density__staging_x")
    assert "S.`class` = T.`class`" in sql and "PARTITION BY `night`, `nside`, `pixel`" in sql
    assert "PARTITION BY" not in commit_sql(TABLE_DEAD_LETTERS, "p.d.t", "p.d.s")


def test_default_method_is_file_loads_for_batch_and_streaming_inserts_otherwise() -> None:
    write = WriteTables("p", "d")
    batch = BeamTestPipeline(runner="FnApiRunner")
    streaming = BeamTestPipeline(runner="FnApiRunner", options=PipelineOptions(streaming=True))
    assert write._method(batch) == FILE_LOADS
    assert write._method(streaming) == STREAMING_INSERTS
    assert WriteTables("p", "d", emulator_endpoint="http://x")._method(batch) == STREAMING_INSERTS
    assert WriteTables("p", "d", run_id="r1").destination(TABLE_PROBABILITIES) == (
        "p:d.probabilities__staging_r1"
    )


def test_file_loads_graph_builds_offline() -> None:
    """The GCP batch path (FILE_LOADS into staging tables) is built without credentials."""
    p = BeamTestPipeline(runner="FnApiRunner")
    pcolls = {
        t: p | f"Create[{t}]" >> beam.Create([]) for t in (TABLE_PROBABILITIES, TABLE_DEAD_LETTERS)
    }
    write = WriteTables("my-project", "ds", run_id="r1", custom_gcs_temp_location="gs://b/tmp")
    failed = pcolls | write
    assert sorted(failed) == sorted(pcolls)
    assert "WriteTables/Write[probabilities]" in p.applied_labels


# --- emulator -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryEmulator]:
    reason = bigquery_missing_requirements()
    if reason:
        pytest.skip(reason)
    try:
        emu = BigQueryEmulator.start(tmp_path_factory.mktemp("bqemulator"))
    except EmulatorUnavailableError as e:
        pytest.skip(f"BigQuery emulator cannot be started: {e}")
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def dataset(emulator: BigQueryEmulator) -> str:
    """A fresh dataset with the three tables."""
    name = f"stampflow_{next(_datasets)}"
    ensure_tables(emulator.client(), name, emulator.project)
    return name


def test_ensure_tables_is_idempotent(emulator: BigQueryEmulator, dataset: str) -> None:
    client = emulator.client()
    again = ensure_tables(client, dataset, emulator.project)  # tables exist: no error, no change
    assert sorted(again) == sorted(TABLES)
    for table, schema in table_schemas().items():
        got = client.get_table(f"{emulator.project}.{dataset}.{table}").schema
        assert [(f.name, f.mode) for f in got] == [(f.name, f.mode) for f in schema]
        assert client.list_rows(f"{emulator.project}.{dataset}.{table}").total_rows == 0


def test_tables_from_before_surveys_gain_the_columns_backfilled(
    emulator: BigQueryEmulator,
) -> None:
    """Issue 26: ``survey`` and ``band`` are added to tables created without them (an additive
    change) and old rows are backfilled, so a re-run replaces them rather than doubling them."""
    client = emulator.client()
    dataset = f"old_{next(_datasets)}"
    client.create_dataset(f"{emulator.project}.{dataset}")
    old = {}
    for table, schema in table_schemas().items():
        fields = [f for f in schema if f.name not in ADDED_COLUMNS[table]]
        table_id = f"{emulator.project}.{dataset}.{table}"
        client.create_table(bigquery.Table(table_id, schema=fields))
        rows = {TABLE_PROBABILITIES: probability_rows(4), TABLE_SKY_DENSITY: density_rows()}
        old[table] = [
            {k: v for k, v in r.items() if k not in ADDED_COLUMNS[table]}
            for r in rows.get(table, [])
        ]
        if old[table]:
            errors = client.insert_rows_json(
                table_id, [to_bigquery_row(table, r) for r in old[table]]
            )
            assert not errors
    ensure_tables(client, dataset, emulator.project)
    for table, schema in table_schemas().items():
        got = client.get_table(f"{emulator.project}.{dataset}.{table}").schema
        # Added columns come last: every write names its columns, so order does not matter.
        assert sorted(f.name for f in got) == sorted(f.name for f in schema)
    probs = read_table(client, f"{emulator.project}.{dataset}.{TABLE_PROBABILITIES}")
    assert {(r["survey"], r["band"], r["fid"]) for r in probs} == {("ztf", "g", 1), ("ztf", "r", 2)}
    # The same night again, as the new code writes it: replaced, not doubled.
    run_night(emulator, dataset, {TABLE_SKY_DENSITY: density_rows()}, new_run_id())
    got = read_table(client, f"{emulator.project}.{dataset}.{TABLE_SKY_DENSITY}")
    assert canonical(got, TABLE_SKY_DENSITY) == canonical(density_rows(), TABLE_SKY_DENSITY)


def test_emulator_client_survives_pickling(emulator: BigQueryEmulator, dataset: str) -> None:
    client = pickle.loads(pickle.dumps(make_client(emulator.project, emulator.url)))
    tables = {t.table_id for t in client.list_tables(f"{emulator.project}.{dataset}")}
    assert tables == set(TABLES)


def run_night(
    emulator: BigQueryEmulator,
    dataset: str,
    rows: dict[str, list[dict[str, Any]]],
    run_id: str | None,
) -> None:
    """Write ``rows`` with Beam's sink (staging tables of ``run_id`` when given) and commit."""
    client = emulator.client()
    if run_id is not None:
        create_staging_tables(client, dataset, emulator.project, run_id)
    with BeamTestPipeline(runner="FnApiRunner") as p:
        pcolls = {t: p | f"Create[{t}]" >> beam.Create(r) for t, r in rows.items()}
        failed = pcolls | WriteTables(
            emulator.project, dataset, run_id=run_id, emulator_endpoint=emulator.url
        )
        for table, bad in failed.items():
            assert_that(bad, is_empty(), label=f"NoFailedRows[{table}]")
    if run_id is not None:
        counts = commit_run(client, dataset, emulator.project, run_id)
        assert counts == {t: len(rows.get(t, [])) for t in TABLES}
        leftovers = [t.table_id for t in client.list_tables(f"{emulator.project}.{dataset}")]
        assert sorted(leftovers) == sorted(TABLES)  # staging tables dropped


def test_rerunning_a_night_does_not_duplicate_rows(
    emulator: BigQueryEmulator, dataset: str
) -> None:
    client = emulator.client()
    night = {
        TABLE_PROBABILITIES: probability_rows(20),
        TABLE_SKY_DENSITY: density_rows(),
        TABLE_DEAD_LETTERS: dead_letters(),
    }

    def assert_tables_hold(expected: dict[str, list[dict[str, Any]]]) -> None:
        for table, want in expected.items():
            got = read_table(client, f"{emulator.project}.{dataset}.{table}")
            assert canonical(got, table) == canonical(want, table), table

    run_night(emulator, dataset, night, new_run_id())
    assert_tables_hold(night)
    got = read_table(client, f"{emulator.project}.{dataset}.{TABLE_DEAD_LETTERS}")
    assert {r["source"]: r["raw"] for r in got}["night.tar!c.avro"] == bytes(range(256))
    assert all(math.isfinite(r["p_SN"]) for r in night[TABLE_PROBABILITIES])

    # The same night again (e.g. after a crash): same content, nothing doubled.
    run_night(emulator, dataset, night, new_run_id())
    assert_tables_hold(night)

    # A re-run with a new model replaces rows by candid / cell / source; new rows are added.
    rerun = {
        TABLE_PROBABILITIES: probability_rows(25, model_version="2.0"),
        TABLE_SKY_DENSITY: [r | {"count": 9} for r in density_rows()[:2]],
        TABLE_DEAD_LETTERS: [dead_letters()[0] | {"reason": "bad_magic: again", "raw": b"\1"}],
    }
    run_night(emulator, dataset, rerun, new_run_id())
    assert_tables_hold(
        {
            TABLE_PROBABILITIES: rerun[TABLE_PROBABILITIES],
            TABLE_SKY_DENSITY: rerun[TABLE_SKY_DENSITY] + density_rows()[2:],
            TABLE_DEAD_LETTERS: rerun[TABLE_DEAD_LETTERS] + dead_letters()[1:],
        }
    )


def test_duplicate_candids_in_one_run_are_committed_once(
    emulator: BigQueryEmulator, dataset: str
) -> None:
    rows = probability_rows(3)
    run_night(emulator, dataset, {TABLE_PROBABILITIES: rows + rows[:1]}, "dupes")
    got = read_table(emulator.client(), f"{emulator.project}.{dataset}.{TABLE_PROBABILITIES}")
    assert canonical(got, TABLE_PROBABILITIES) == canonical(rows, TABLE_PROBABILITIES)


def test_direct_write_without_staging(emulator: BigQueryEmulator, dataset: str) -> None:
    """``run_id=None`` (streaming) appends straight into the target table."""
    run_night(emulator, dataset, {TABLE_SKY_DENSITY: density_rows()}, run_id=None)
    got = read_table(emulator.client(), f"{emulator.project}.{dataset}.{TABLE_SKY_DENSITY}")
    assert canonical(got, TABLE_SKY_DENSITY) == canonical(density_rows(), TABLE_SKY_DENSITY)
