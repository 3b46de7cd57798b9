"""Sinks: where rows, sky density and dead letters go, batch or streaming; nothing lost there.

Batch (:class:`WriteBatchOutputs`, then :func:`write_after_run` once the pipeline is done)::

    rows ──┬─ probabilities/*.parquet            density ─ sky_density/*.parquet ─▶ sky_map.png
           ├─ sn_candidates.{csv,html} (top --top-sn by P(SN))
           └─ BigQuery (optional) ─▶ refused rows ─▶ dead letters (stage bigquery)

Streaming (:class:`PublishOutputs`): rows, windowed density → JSON messages on their topics, and
BigQuery by streaming inserts, refused rows → dead letters the same way.

Dead letters: :class:`CollectDeadLetters` joins every stage's (batch: the bytes of slim alerts
read back, once per file) and :class:`WriteDeadLetters` writes them to ``dead_letters/*.jsonl``
(batch) or the dead-letter topic (streaming). A row BigQuery refuses
(``WriteToBigQuery``'s ``failed_rows_with_errors``: a schema that drifted, a value out of range)
becomes a dead letter with the table, BigQuery's message and the row as JSON in ``raw``; a
refused *dead letter* row goes to the files or topic only (never back to BigQuery).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from pipeline.options import (
    NO_TNS_REPORTER,
    BigQueryTarget,
    ModelInfo,
    StreamingOptions,
    TnsReporter,
)
from transforms.dead_letters import REREAD_PATH, dead_letter, to_json_line
from transforms.density import night_of, nights_label, plot_sky_map
from transforms.light_curve import LightCurve, light_curve
from transforms.schema import (
    PROBABILITY_COLUMN_NAMES,
    PROBABILITY_ROW,
    SKY_DENSITY_ROW,
    STAGE_BIGQUERY,
    TAG_DEAD_LETTERS,
    TAG_DENSITY,
    TAG_ROWS,
)
from transforms.sources import read_containers

__all__ = [
    "CollectDeadLetters",
    "PublishOutputs",
    "WriteBatchOutputs",
    "WriteBigQuery",
    "WriteDeadLetters",
    "WriteSNCandidates",
    "commit_bigquery",
    "density_message",
    "fill_raw",
    "light_curves",
    "prepare_bigquery",
    "refused_row_letter",
    "row_message",
    "write_after_run",
    "write_sn_candidates",
]


# --- Row formats ----------------------------------------------------------------------------------
def project_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with exactly the output columns, in order (drops the SN report's extras)."""
    return {k: row.get(k) for k in PROBABILITY_COLUMN_NAMES}


def _json_safe(value: Any) -> Any:
    # JSON has no NaN; null is what BigQuery and every JSON reader understand.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def row_message(row: Mapping[str, Any]) -> bytes:
    """A probability row → the JSON message body (the batch Parquet columns, in order)."""
    return json.dumps({k: _json_safe(row.get(k)) for k in PROBABILITY_COLUMN_NAMES}).encode()


def density_message(row: Mapping[str, Any]) -> bytes:
    """A sky-density row → JSON message body."""
    return json.dumps(row).encode()


def _arrow_schema(columns: Sequence[tuple[str, str]]) -> Any:
    import pyarrow as pa

    types = {"STRING": pa.string(), "INTEGER": pa.int64(), "FLOAT": pa.float64()}
    return pa.schema([(name, types[kind]) for name, kind in columns])


# --- BigQuery -------------------------------------------------------------------------------------
def _messages(errors: Any) -> list[str]:
    """BigQuery's error messages, from the nested insertAll error structure."""
    if isinstance(errors, Mapping):
        if "message" in errors:
            return [str(errors["message"])]
        return [m for v in errors.values() for m in _messages(v)]
    if isinstance(errors, list | tuple):
        return [m for e in errors for m in _messages(e)]
    return [str(errors)] if errors else []


def refused_row_letter(failed: tuple[str, Mapping[str, Any], Any]) -> dict[str, Any]:
    """A row BigQuery refused (``(destination, row, errors)``) → a ``bigquery`` dead letter.

    Parameters
    ----------
    failed
        An element of ``WriteToBigQuery``'s ``failed_rows_with_errors``: the table, the JSON row
        as sent and BigQuery's errors.

    Returns
    -------
    dict
        Stage ``bigquery``, reason ``rejected: TABLE: message``, source ``bigquery:TABLE``, the
        row as JSON in ``raw``, and its ``objectId`` / ``candid`` when it has them.
    """
    destination, row, errors = failed
    table = str(destination).rsplit(".", 1)[-1]
    why = "; ".join(dict.fromkeys(_messages(errors))) or "no message"
    candid = row.get("candid")
    return dead_letter(
        STAGE_BIGQUERY,
        f"rejected: {table}: {why}",
        f"bigquery:{destination}",
        json.dumps(row, sort_keys=True, default=str).encode(),
        row.get("objectId"),
        int(candid) if isinstance(candid, int | float) and not isinstance(candid, bool) else None,
    )


class WriteBigQuery(beam.PTransform):
    """``{rows, density, dead_letters}`` → the BigQuery tables; returns refused rows as letters.

    Parameters
    ----------
    target
        Project, dataset, run id and optional emulator endpoint.
    staging
        Batch: write this run's staging tables (committed after the run, so a re-run replaces
        rows); streaming: straight into the tables with streaming inserts.
    """

    def __init__(self, target: BigQueryTarget, staging: bool) -> None:
        super().__init__()
        self.target, self.staging = target, staging

    def _tables(self) -> Any:
        from pipeline.bigquery import STREAMING_INSERTS, WriteTables

        t = self.target
        return WriteTables(
            t.project,
            t.dataset,
            run_id=t.run_id if self.staging else None,
            method=None if self.staging else STREAMING_INSERTS,
            emulator_endpoint=t.endpoint,
        )

    def expand(self, pcolls: Mapping[str, beam.PCollection]) -> beam.PCollection:
        from pipeline.bigquery import TABLE_DEAD_LETTERS, TABLE_PROBABILITIES, TABLE_SKY_DENSITY

        outputs = {
            TABLE_PROBABILITIES: pcolls[TAG_ROWS] | "Project" >> beam.Map(project_row),
            TABLE_SKY_DENSITY: pcolls[TAG_DENSITY],
        } | "WriteTables" >> self._tables()
        refused = [
            outputs[table]
            # Windowed density rows (streaming) join the global-window dead letters.
            | f"Global[{table}]" >> beam.WindowInto(GlobalWindows())
            | f"Refused[{table}]" >> beam.Map(refused_row_letter)
            for table in (TABLE_PROBABILITIES, TABLE_SKY_DENSITY)
        ]
        letters = (pcolls[TAG_DEAD_LETTERS], *refused) | "WithRefused" >> beam.Flatten()
        refused_letters = (
            {TABLE_DEAD_LETTERS: letters} | "WriteDeadLetterTable" >> self._tables()
        )[TABLE_DEAD_LETTERS] | "RefusedLetters" >> beam.Map(refused_row_letter)
        return (*refused, refused_letters) | "AllRefused" >> beam.Flatten()


def prepare_bigquery(target: BigQueryTarget, staging: bool) -> None:
    """Before a run: the dataset and tables (and, batch, this run's staging tables)."""
    from pipeline.bigquery import create_staging_tables, ensure_tables, make_client

    client = make_client(target.project, target.endpoint)
    ensure_tables(client, target.dataset, target.project)
    if staging:
        create_staging_tables(client, target.dataset, target.project, target.run_id)


def commit_bigquery(target: BigQueryTarget) -> dict[str, int]:
    """After a batch run: move its staging rows into the tables, replacing an earlier run's."""
    from pipeline.bigquery import commit_run, make_client

    client = make_client(target.project, target.endpoint)
    return commit_run(client, target.dataset, target.project, target.run_id)


def _no_letters(pipeline: beam.Pipeline) -> beam.PCollection:
    return pipeline | "NoRefusedRows" >> beam.Create([])


# --- Batch ----------------------------------------------------------------------------------------
class WriteBatchOutputs(beam.PTransform):
    """``{rows, density, dead_letters}`` → Parquet, the SN page, BigQuery; returns refused rows.

    Parameters
    ----------
    output
        The output directory (validated writable by :mod:`pipeline.options`).
    model
        Named on the SN page.
    top_sn
        SN candidates on the page.
    bigquery
        Also write the tables there (staging tables, committed after the run), or None.
    tns
        The SN page's TNS reporter defaults.
    """

    def __init__(
        self,
        output: str,
        model: ModelInfo,
        top_sn: int,
        bigquery: BigQueryTarget | None,
        tns: TnsReporter = NO_TNS_REPORTER,
    ) -> None:
        super().__init__()
        self.output, self.model, self.top_sn, self.bigquery = output, model, top_sn, bigquery
        self.tns = tns

    def expand(self, pcolls: Mapping[str, beam.PCollection]) -> beam.PCollection:
        join = FileSystems.join
        rows = pcolls[TAG_ROWS]
        _ = (
            rows
            | "Project" >> beam.Map(project_row)
            | "WriteProbabilities"
            >> beam.io.WriteToParquet(
                join(self.output, "probabilities", "part"),
                _arrow_schema(PROBABILITY_ROW),
                file_name_suffix=".parquet",
                num_shards=1,
                shard_name_template="-SSSSS-of-NNNNN",
            )
        )
        _ = pcolls[TAG_DENSITY] | "WriteSkyDensity" >> beam.io.WriteToParquet(
            join(self.output, "sky_density", "part"),
            _arrow_schema(SKY_DENSITY_ROW),
            file_name_suffix=".parquet",
            num_shards=1,
        )
        _ = rows | "SNCandidates" >> WriteSNCandidates(
            self.output, self.model.label, self.top_sn, self.tns
        )
        if self.bigquery is None:
            return _no_letters(rows.pipeline)
        return pcolls | "WriteBigQuery" >> WriteBigQuery(self.bigquery, staging=True)


def light_curves(rows: Sequence[Mapping[str, Any]]) -> list[LightCurve | None]:
    """Each candidate's light curve, from its own bytes or, for a slim alert, its file again.

    Parameters
    ----------
    rows
        Candidate rows with ``candid``, ``source``, ``path`` and ``raw`` (empty after batch
        selection, which drops the history: the file is then read again, once per file, only
        for these few alerts).

    Returns
    -------
    list
        A :class:`~transforms.light_curve.LightCurve` per row, None where the alert can no longer
        be read (the page says so; the row is still written).
    """
    from transforms.alerts import decode_alerts

    wanted: dict[str, list[tuple[str, int]]] = {}
    for r in rows:
        if not r.get("raw") and r.get("path"):
            wanted.setdefault(r["path"], []).append((r["source"], r["candid"]))
    found: dict[tuple, bytes] = {}
    for path, pairs in wanted.items():
        found.update(read_containers(path, pairs))
    curves: list[LightCurve | None] = []
    for r in rows:
        data = r.get("raw") or found.get((r.get("source"), r["candid"]))
        alert = None
        if data:
            alerts, _ = decode_alerts(data, r.get("source", ""), r.get("path", ""))
            alert = next((a for a in alerts if a.candid == r["candid"]), None)
        try:
            curves.append(light_curve(alert) if alert is not None else None)
        except ValueError:
            curves.append(None)
    return curves


def write_sn_candidates(
    top: Sequence[Mapping[str, Any]],
    output: str,
    model: str,
    tns: TnsReporter = NO_TNS_REPORTER,
    name: str = "sn_candidates",
    title: str | None = None,
) -> int:
    """Write ``NAME.csv`` and the candidates page ``NAME.html`` for the top SN rows.

    Parameters
    ----------
    top
        SN rows (any order; ranked here by P(SN)).
    output
        Directory to write into (any Beam filesystem).
    model
        Model label shown on the page.
    tns
        Defaults for the page's TNS report.
    name
        File stem.
    title
        Page heading; None: "SN candidates" and the nights covered.

    Returns
    -------
    int
        Candidates written.
    """
    from pipeline.reports import candidate_rows, stamp_png, write_csv
    from pipeline.sn_page import page_records, render_page
    from transforms.stamps import decode_stamps

    rows = candidate_rows(top)
    curves = light_curves(rows)
    for row, curve in zip(rows, curves, strict=True):
        try:
            stamps = decode_stamps(row["cutouts"])
        except Exception:  # a picture is optional; the row itself is still written
            stamps = {}
        row["stamps"] = {k: stamp_png(v) for k, v in stamps.items()}
        row["days_since_non_detection"] = curve and curve.days_since_non_detection
    records = page_records(rows, curves)
    for row, record in zip(rows, records, strict=True):
        row["gal_b"], row["night"] = record["gal_b"], record["night"]
    text = io.StringIO()
    write_csv(rows, text)
    with FileSystems.create(FileSystems.join(output, f"{name}.csv")) as f:
        f.write(text.getvalue().encode())
    if title is None:
        label = nights_label(night_of(r["jd"], r.get("survey")) for r in rows)
        title = f"SN candidates, {label}" if label else "SN candidates"
    # The models that made these rows (one per survey in a mixed run; two during a hot swap).
    made_by = sorted(
        {f"{r['model_name']} {r['model_version']}" for r in rows if r.get("model_name")}
    )
    page = render_page(records, title, ", ".join(made_by) or model, tns.group_id, tns.reporter)
    with FileSystems.create(FileSystems.join(output, f"{name}.html")) as f:
        f.write(page.encode())
    return len(rows)


def _is_sn(row: Mapping[str, Any]) -> bool:
    return row["predicted_class"] == "SN"


def _sn_rank(row: Mapping[str, Any]) -> tuple[float, int]:
    return row["p_SN"], -row["candid"]


class _WriteWindowPage(beam.DoFn):
    """One window's top SN rows → ``sn_candidates_<window start>.{html,csv}``."""

    def __init__(self, output: str, model: str, tns: TnsReporter) -> None:
        self.output, self.model, self.tns = output, model, tns

    def process(
        self, top: Sequence[Mapping[str, Any]], window=beam.DoFn.WindowParam
    ) -> Iterator[int]:
        start, end = window.start.to_utc_datetime(), window.end.to_utc_datetime()
        title = f"SN candidates, {start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC"
        name = f"sn_candidates_{start:%Y%m%dT%H%M%SZ}"
        yield write_sn_candidates(top, self.output, self.model, self.tns, name, title)


class WriteSNCandidates(beam.PTransform):
    """Rows → the top SN candidates page and CSV (batch: one; streaming: one per window).

    Parameters
    ----------
    output
        Directory for the files.
    model
        Model label shown on the page.
    top
        Candidates per page, highest P(SN) first.
    tns
        The page's TNS reporter defaults.
    window_s, lateness_s
        Streaming: fixed windows of this length [s]; a window's page is written when the
        watermark passes its end and rewritten (with everything so far) for each late row within
        ``lateness_s``. None: batch, one page for the whole run.
    """

    def __init__(
        self,
        output: str,
        model: str,
        top: int,
        tns: TnsReporter = NO_TNS_REPORTER,
        window_s: float | None = None,
        lateness_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.output, self.model, self.top, self.tns = output, model, top, tns
        self.window_s, self.lateness_s = window_s, lateness_s

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        sn = rows | "SNOnly" >> beam.Filter(_is_sn)
        if self.window_s is None:
            top = sn | "TopSN" >> beam.combiners.Top.Of(self.top, key=_sn_rank)
            return top | "WriteSNCandidates" >> beam.Map(
                write_sn_candidates, output=self.output, model=self.model, tns=self.tns
            )
        from apache_beam.transforms import trigger, window

        windows = sn | "PageWindows" >> beam.WindowInto(
            window.FixedWindows(self.window_s),
            trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
            allowed_lateness=self.lateness_s,
        )
        top = windows | "TopSN" >> beam.combiners.Top.Of(self.top, key=_sn_rank).without_defaults()
        return top | "WritePages" >> beam.ParDo(_WriteWindowPage(self.output, self.model, self.tns))


def _read_parquet_rows(pattern: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for m in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(m.path) as f:
            rows += pq.read_table(io.BytesIO(f.read())).to_pylist()
    return rows


def write_after_run(output: str, model: ModelInfo, nside: int) -> None:
    """After a batch run: ``sky_map.png`` from the density, and an empty SN page if none."""
    join = FileSystems.join
    density = _read_parquet_rows(join(output, "sky_density", "*.parquet"))
    label = nights_label(r["night"] for r in density)
    buf = io.BytesIO()
    plot_sky_map(density, nside, buf, title=f"Predicted classes, {label}" if label else "")
    with FileSystems.create(join(output, "sky_map.png")) as f:
        f.write(buf.getvalue())
    if not FileSystems.exists(join(output, "sn_candidates.html")):
        write_sn_candidates([], output, model.label)


# --- Streaming ------------------------------------------------------------------------------------
class PublishOutputs(beam.PTransform):
    """``{rows, density, dead_letters}`` → JSON on the topics, BigQuery; returns refused rows.

    Parameters
    ----------
    streaming
        The topics (each optional), and the directory for SN pages per window (optional).
    bigquery
        Also stream the rows into these tables, or None.
    model, top_sn, tns
        For the SN pages: the model label, candidates per page, TNS reporter defaults.
    """

    def __init__(
        self,
        streaming: StreamingOptions,
        bigquery: BigQueryTarget | None,
        model: ModelInfo | None = None,
        top_sn: int = 50,
        tns: TnsReporter = NO_TNS_REPORTER,
    ) -> None:
        super().__init__()
        self.streaming, self.bigquery = streaming, bigquery
        self.model, self.top_sn, self.tns = model, top_sn, tns

    def expand(self, pcolls: Mapping[str, beam.PCollection]) -> beam.PCollection:
        s = self.streaming
        if s.output_topic:
            _ = (
                pcolls[TAG_ROWS]
                | "RowToJson" >> beam.Map(row_message)
                | "PublishRows" >> beam.io.WriteToPubSub(s.output_topic)
            )
        if s.density_topic:
            _ = (
                pcolls[TAG_DENSITY]
                | "DensityToJson" >> beam.Map(density_message)
                | "PublishDensity" >> beam.io.WriteToPubSub(s.density_topic)
            )
        if s.sn_page_dir:
            label = self.model.label if self.model else ""
            _ = pcolls[TAG_ROWS] | "SNCandidates" >> WriteSNCandidates(
                s.sn_page_dir, label, self.top_sn, self.tns, s.window_s, s.lateness_s
            )
        if self.bigquery is None:
            return _no_letters(pcolls[TAG_ROWS].pipeline)
        return pcolls | "WriteBigQuery" >> WriteBigQuery(self.bigquery, staging=False)


# --- Dead letters ---------------------------------------------------------------------------------
def fill_raw(item: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Letters of slim alerts in one file → the same letters with their bytes (one read).

    Parameters
    ----------
    item
        ``(path, letters)``, the letters carrying :data:`~transforms.dead_letters.REREAD_PATH`.

    Yields
    ------
    dict
        Each letter without the path key, ``raw`` filled where the file still holds it.
    """
    path, letters = item
    letters = list(letters)
    found = read_containers(path, [(d["source"], d["candid"]) for d in letters])
    for letter in letters:
        out = {k: v for k, v in letter.items() if k != REREAD_PATH}
        out["raw"] = found.get((letter["source"], letter["candid"]), b"")
        yield out


def _needs_bytes(letter: dict[str, Any]) -> bool:
    return not letter.get("raw") and bool(letter.get(REREAD_PATH))


class CollectDeadLetters(beam.PTransform):
    """Every stage's dead letters → one PCollection, the bytes of slim alerts' letters read back.

    Apply to a tuple of PCollections. Batch letters of slim alerts (selected alerts drop their
    bytes to save memory) name their file; here they are grouped by file and each file is read
    once (:func:`fill_raw`), so the JSONL files and the BigQuery table both get the bytes.

    Parameters
    ----------
    read_back
        Batch: True. Streaming: False (alerts keep their message's bytes, and a ``GroupByKey``
        in the global window would never fire on an unbounded input).
    """

    def __init__(self, read_back: bool) -> None:
        super().__init__()
        self.read_back = read_back

    def expand(self, pcolls: Sequence[beam.PCollection]) -> beam.PCollection:
        letters = tuple(pcolls) | "Flatten" >> beam.Flatten()
        if not self.read_back:
            return letters
        parts = letters | "NeedBytes" >> beam.Partition(lambda d, _: int(_needs_bytes(d)), 2)
        filled = (
            parts[1]
            | "ByFile" >> beam.Map(lambda d: (d[REREAD_PATH], d))
            | "GroupFiles" >> beam.GroupByKey()
            | "ReadBytesBack" >> beam.FlatMap(fill_raw)
        )
        return (parts[0], filled) | "WithBytes" >> beam.Flatten()


class WriteDeadLetters(beam.PTransform):
    """Dead letters → ``output/dead_letters/*.jsonl`` (batch) or a topic (streaming).

    Parameters
    ----------
    output
        Batch output directory.
    topic
        Streaming dead-letter topic.
    """

    def __init__(self, output: str | None = None, topic: str | None = None) -> None:
        super().__init__()
        if (output is None) == (topic is None):
            raise ValueError("write dead letters to an output directory or a topic")
        self.output, self.topic = output, topic

    def expand(self, letters: beam.PCollection) -> Any:
        if self.topic is not None:
            return (
                letters
                | "DeadToJson" >> beam.Map(lambda r: to_json_line(r).encode())
                | "PublishDeadLetters" >> beam.io.WriteToPubSub(self.topic)
            )
        return (
            letters
            | "DeadToJson" >> beam.Map(to_json_line)
            | "WriteDeadLetters"
            >> beam.io.WriteToText(
                FileSystems.join(self.output, "dead_letters", "dead_letters"),
                file_name_suffix=".jsonl",
                num_shards=1,
            )
        )
