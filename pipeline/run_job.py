"""``stampflow run``: a night of ZTF alerts → class probabilities, sky density, SN candidates.

The chain, one labelled composite per stage::

    ReadAlerts ─ SelectFirstDetections ─ Featurize ─ Classify (RunInference) ─ ApplyRules ─┐
      ┌───────────────────────────────────────────────────────────────────────────────────┘
      ├─ probabilities/*.parquet
      ├─ sky_density/*.parquet (+ sky_map.png)
      └─ sn_candidates.{csv,html}
    every stage ─▶ dead_letters/*.jsonl;   counts of all ─▶ summary.json

``summary.json`` reconciles: ``records_in == classified + sum(skipped) + sum(dead_letters)``,
where ``records_in`` counts decoded alerts plus inputs that never became alerts; the job checks
that every decoded alert is accounted for and fails loudly otherwise.

    stampflow run --input night/ --output out/          # local, FnApiRunner, shipped model
    stampflow run --input gs://B/ztf_public_20240611.tar.gz --output gs://B/out/20240611 \\
        --model gs://B/models/stampflow --runner DataflowRunner --project P --region R \\
        --temp_location gs://B/tmp --setup_file ./setup.py
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from model.handler import StampClassifierHandler, read_metadata
from transforms.alerts import Alert
from transforms.dead_letters import dead_letter, reason_code, to_json_line
from transforms.density import density_rows, healpix_pixels, night_of, plot_sky_map, sum_pairs
from transforms.featurize import Featurize
from transforms.ingest import ALERTS, DEAD_LETTERS, ReadAlerts
from transforms.rules import apply_rules
from transforms.schema import (
    CLASS_NAMES,
    PROBABILITY_COLUMN_NAMES,
    PROBABILITY_COLUMNS,
    PROBABILITY_ROW,
    SKY_DENSITY_ROW,
    STAGE_DECODE,
    STAGE_INFERENCE,
    STAGE_READ,
    STAMP_KINDS,
    STAMP_SIZE_POLICIES,
)
from transforms.selection import SELECT_MODES, SKIPPED, SelectFirstDetections
from transforms.sources import reread

DEFAULT_MODEL = str(Path(__file__).resolve().parents[1] / "model" / "default")
#: Runners that run in this machine's memory: there the selected alerts are not reshuffled.
LOCAL_RUNNERS = frozenset(
    {
        "FnApiRunner",
        "DirectRunner",
        "BundleBasedDirectRunner",
        "SwitchingDirectRunner",
        "PrismRunner",
    }
)
#: Candidate fields the rules and the SN report need beside the output row.
_EXTRA_FIELDS = ("ssdistnr", "isdiffpos", "sgscore1", "distpsnr1", "ndethist")


# --- Featurise with the row metadata attached -----------------------------------------------------
def alert_meta(alert: Alert) -> dict[str, Any]:
    """What the output row and the rules need from an alert, carried as the RunInference key."""
    c = alert.candidate
    meta = {
        "objectId": alert.object_id,
        "candid": alert.candid,
        "jd": c["jd"],
        "ra": c["ra"],
        "dec": c["dec"],
        "fid": c["fid"],
        "magpsf": c.get("magpsf"),
        "source": alert.source,
        "raw": alert.raw,  # empty for slim alerts: dead letters re-read the source
        "cutouts": {k: alert.cutout_bytes(k) for k in STAMP_KINDS},  # for the SN page
    }
    meta.update({f: c.get(f) for f in _EXTRA_FIELDS})
    return meta


# --- Classify -------------------------------------------------------------------------------------
def _failed_batch_letters(failed: tuple[Sequence[Any], Exception]) -> Iterator[dict[str, Any]]:
    batch, error = failed
    for meta, _ in batch:
        yield dead_letter(
            STAGE_INFERENCE,
            f"model: {type(error).__name__}: {error}",
            meta["source"],
            meta["raw"] or reread(meta["source"], meta["candid"]),
            meta["objectId"],
            meta["candid"],
        )


class Classify(beam.PTransform):
    """Keyed examples → ``(meta, probabilities [5])`` via RunInference; failures → dead letters."""

    def __init__(self, model_dir: str) -> None:
        super().__init__()
        self.model_dir = model_dir

    def expand(self, examples: beam.PCollection) -> dict[str, beam.PCollection]:
        handler = KeyedModelHandler(StampClassifierHandler(self.model_dir))
        main, other = examples | "RunInference" >> RunInference(handler).with_exception_handling()
        probs = main | "Probabilities" >> beam.MapTuple(lambda meta, r: (meta, r.inference))
        dead = other.failed_inferences | "FailedBatches" >> beam.FlatMap(_failed_batch_letters)
        return {"classified": probs, DEAD_LETTERS: dead}


def to_row(
    meta: dict[str, Any], probs: np.ndarray, rules: bool, model_name: str, model_version: str
) -> dict[str, Any]:
    """One output row (plus the extra fields the SN report needs) from a classification.

    Parameters
    ----------
    meta
        From :func:`alert_meta`.
    probs
        The network's probabilities, :data:`CLASS_NAMES` order.
    rules
        Apply ALeRCE's rules (``--rules alerce``) or not.
    model_name, model_version
        Recorded in every row.

    Returns
    -------
    dict
        Every :data:`transforms.schema.PROBABILITY_COLUMN_NAMES` column and the extras.
    """
    predicted, rule = apply_rules(probs, meta, enabled=rules)
    row = {k: meta[k] for k in ("objectId", "candid", "jd", "ra", "dec", "fid", "magpsf")}
    row.update({col: float(p) for col, p in zip(PROBABILITY_COLUMNS, probs, strict=True)})
    row.update(
        predicted_class=predicted, rule=rule, model_name=model_name, model_version=model_version
    )
    row.update({f: meta.get(f) for f in _EXTRA_FIELDS})
    row["cutouts"] = meta["cutouts"]
    return row


@dataclass(frozen=True)
class BigQueryTarget:
    """Where and how a run writes its tables to BigQuery (see :mod:`pipeline.bigquery`)."""

    project: str
    dataset: str
    run_id: str
    endpoint: str | None = None  # the emulator's http://127.0.0.1:PORT; None for GCP

    @classmethod
    def parse(cls, spec: str, endpoint: str | None = None) -> BigQueryTarget:
        """``PROJECT:DATASET`` (or ``PROJECT.DATASET``) → a target with a fresh run id."""
        from pipeline.bigquery import new_run_id

        project, sep, dataset = spec.replace(".", ":", 1).partition(":")
        if not sep or not project or not dataset:
            raise ValueError(f"--bigquery-dataset wants PROJECT:DATASET, got {spec!r}")
        return cls(project, dataset, new_run_id(), endpoint)

    def prepare(self) -> None:
        """Create the dataset, tables and this run's staging tables."""
        from pipeline.bigquery import create_staging_tables, ensure_tables, make_client

        client = make_client(self.project, self.endpoint)
        ensure_tables(client, self.dataset, self.project)
        create_staging_tables(client, self.dataset, self.project, self.run_id)

    def commit(self) -> dict[str, int]:
        """Move this run's rows into the tables, replacing an earlier run's (no duplicates)."""
        from pipeline.bigquery import commit_run, make_client

        return commit_run(
            make_client(self.project, self.endpoint), self.dataset, self.project, self.run_id
        )


# --- Sinks ----------------------------------------------------------------------------------------
def _arrow_schema(columns: Sequence[tuple[str, str]]):
    import pyarrow as pa

    types = {"STRING": pa.string(), "INTEGER": pa.int64(), "FLOAT": pa.float64()}
    return pa.schema([(name, types[kind]) for name, kind in columns])


def _density_keyed(rows: Sequence[dict[str, Any]], nside: int) -> Iterator[Any]:
    pixels = healpix_pixels(
        np.array([r["ra"] for r in rows]), np.array([r["dec"] for r in rows]), nside
    )
    for row, pixel in zip(rows, pixels, strict=True):
        cls = row["predicted_class"]
        yield (night_of(row["jd"]), int(pixel), cls), (1, row[f"p_{cls}"])


def _summary_keys_rows(row: dict[str, Any]) -> list[str]:
    keys = ["classified", f"class={row['predicted_class']}"]
    if row["rule"]:
        keys.append(f"rule={row['rule']}")
    return keys


def _summary_keys_dead(record: dict[str, Any]) -> list[str]:
    return [f"dead={record['stage']}", f"reason={record['stage']}:{reason_code(record)}"]


def build(
    p: beam.Pipeline,
    inputs: Sequence[str],
    output: str,
    model_dir: str,
    select: str = "first",
    rules: bool = True,
    stamp_policy: str = "drop",
    nside: int = 64,
    top_sn: int = 50,
    bigquery: BigQueryTarget | None = None,
    progress: bool = False,
    spread: bool = False,
) -> None:
    """Add the classification job to pipeline ``p``; see the module docstring for the outputs.

    ``spread`` reshuffles the selected alerts before classification (distributed runners; see
    :class:`transforms.selection.SelectFirstDetections`).
    """
    meta = read_metadata(model_dir)
    name, version = meta["name"], meta["version"]
    join = FileSystems.join

    read = p | "ReadAlerts" >> ReadAlerts(inputs)
    selected = read[ALERTS] | "SelectFirstDetections" >> SelectFirstDetections(
        select, spread=spread
    )
    featurized = selected["alerts"] | "Featurize" >> Featurize(
        meta["features"], stamp_policy, key=alert_meta
    )
    classified = featurized.examples | "Classify" >> Classify(model_dir)
    rows = classified["classified"] | "ApplyRules" >> beam.Map(
        lambda item: to_row(item[0], item[1], rules, name, version)
    )
    dead = (
        read[DEAD_LETTERS],
        selected[DEAD_LETTERS],
        featurized[DEAD_LETTERS],
        classified[DEAD_LETTERS],
    ) | "AllDeadLetters" >> beam.Flatten()

    if progress:
        from pipeline.progress import Tap

        _ = read[ALERTS] | "ProgressRead" >> beam.ParDo(Tap("read"))
        _ = rows | "ProgressClassified" >> beam.ParDo(Tap("classified"))
        _ = dead | "ProgressDead" >> beam.ParDo(Tap("dead"))
    projected = rows | "ProjectRows" >> beam.Map(
        lambda r: {k: r[k] for k in PROBABILITY_COLUMN_NAMES}
    )
    _ = projected | "WriteProbabilities" >> beam.io.WriteToParquet(
        join(output, "probabilities", "part"),
        _arrow_schema(PROBABILITY_ROW),
        file_name_suffix=".parquet",
        num_shards=1,
        shard_name_template="-SSSSS-of-NNNNN",
    )
    density = (
        rows
        | "BatchForPixels" >> beam.BatchElements(min_batch_size=64, max_batch_size=4096)
        | "Pixels" >> beam.FlatMap(_density_keyed, nside=nside)
        | "SumPerPixel" >> beam.CombinePerKey(sum_pairs)
        | "DensityRow" >> beam.MapTuple(lambda key, cs: density_rows([(key, cs)], nside)[0])
    )
    _ = density | "WriteSkyDensity" >> beam.io.WriteToParquet(
        join(output, "sky_density", "part"),
        _arrow_schema(SKY_DENSITY_ROW),
        file_name_suffix=".parquet",
        num_shards=1,
    )
    if bigquery is not None:
        from pipeline.bigquery import WriteTables

        _ = {
            "probabilities": projected,
            "sky_density": density,
            "dead_letters": dead,
        } | "WriteBigQuery" >> WriteTables(
            bigquery.project,
            bigquery.dataset,
            run_id=bigquery.run_id,
            emulator_endpoint=bigquery.endpoint,
        )
    _ = (
        rows
        | "SNOnly" >> beam.Filter(lambda r: r["predicted_class"] == "SN")
        | "TopSN" >> beam.combiners.Top.Of(top_sn, key=lambda r: (r["p_SN"], -r["candid"]))
        | "WriteSNCandidates"
        >> beam.Map(write_sn_candidates, output=output, model=f"{name} {version}")
    )
    _ = (
        dead
        | "DeadToJson" >> beam.Map(to_json_line)
        | "WriteDeadLetters"
        >> beam.io.WriteToText(
            join(output, "dead_letters", "dead_letters"),
            file_name_suffix=".jsonl",
            num_shards=1,
        )
    )
    keys = (
        read[ALERTS] | "DecodedKeys" >> beam.Map(lambda _: "decoded"),
        rows | "RowKeys" >> beam.FlatMap(_summary_keys_rows),
        selected[SKIPPED] | "SkipKeys" >> beam.MapTuple(lambda reason, _: f"skipped={reason}"),
        dead | "DeadKeys" >> beam.FlatMap(_summary_keys_dead),
    ) | "AllKeys" >> beam.Flatten()
    _ = (
        keys
        | "Count" >> beam.combiners.Count.PerElement()
        | "ToDict" >> beam.combiners.ToDict()
        | "ToJson" >> beam.Map(lambda c: json.dumps(c, sort_keys=True))
        | "WriteCounts"
        >> beam.io.WriteToText(
            join(output, "counts"), file_name_suffix=".json", shard_name_template=""
        )
    )


def write_sn_candidates(top: list[dict[str, Any]], output: str, model: str) -> int:
    """Write ``sn_candidates.csv`` and ``sn_candidates.html`` for the top SN rows."""
    from pipeline.reports import candidate_rows, render_html, write_csv
    from transforms.stamps import decode_stamps

    rows = candidate_rows(top)
    for row in rows:
        try:
            row["stamps"] = decode_stamps(row["cutouts"])
        except Exception:  # a picture is optional; the row itself is still written
            row["stamps"] = {}
    text = io.StringIO()
    write_csv(rows, text)
    with FileSystems.create(FileSystems.join(output, "sn_candidates.csv")) as f:
        f.write(text.getvalue().encode())
    nights = sorted({night_of(r["jd"]) for r in rows})
    title = f"SN candidates, night {', '.join(nights)}" if nights else "SN candidates"
    with FileSystems.create(FileSystems.join(output, "sn_candidates.html")) as f:
        f.write(render_html(rows, title, model).encode())
    return len(rows)


# --- Summary --------------------------------------------------------------------------------------
def summarise(counts: dict[str, int], model: dict[str, Any], runtime_s: float) -> dict[str, Any]:
    """The run summary from the pipeline's key counts; checks that nothing went missing.

    Parameters
    ----------
    counts
        ``decoded``, ``classified``, ``class=C``, ``rule=R``, ``skipped=REASON``, ``dead=STAGE``,
        ``reason=STAGE:CODE`` counts.
    model
        The model's metadata.
    runtime_s
        Wall time of the run [s].

    Returns
    -------
    dict
        The summary; ``reconciled`` is True when every decoded alert was classified, skipped or
        dead-lettered.
    """

    def group(prefix: str) -> dict[str, int]:
        return {k[len(prefix) :]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}

    dead = group("dead=")
    skipped = group("skipped=")
    classified = counts.get("classified", 0)
    decoded = counts.get("decoded", 0)
    before_alert = dead.get(STAGE_READ, 0) + dead.get(STAGE_DECODE, 0)
    after_alert = sum(dead.values()) - before_alert
    records_in = decoded + before_alert
    return {
        "records_in": records_in,
        "classified": classified,
        "skipped": skipped,
        "dead_letters": dead,
        "dead_letter_reasons": group("reason="),
        "per_class": {c: counts.get(f"class={c}", 0) for c in CLASS_NAMES},
        "rules_fired": group("rule="),
        "model_name": model["name"],
        "model_version": model["version"],
        "runtime_s": round(runtime_s, 3),
        "alerts_per_s": round(records_in / runtime_s, 1) if runtime_s > 0 else None,
        "reconciled": decoded == classified + sum(skipped.values()) + after_alert,
    }


def format_summary(s: dict[str, Any], output: str) -> str:
    """A short human summary for the end of a run."""
    skipped = sum(s["skipped"].values())
    dead = sum(s["dead_letters"].values())
    classes = ", ".join(f"{c} {n}" for c, n in s["per_class"].items())
    lines = [
        f"{s['records_in']} records in → {s['classified']} classified, {skipped} skipped, "
        f"{dead} dead letters ({s['runtime_s']:.1f} s, {s['alerts_per_s']} alerts/s)",
        f"classes: {classes}",
    ]
    if s["rules_fired"]:
        lines.append("rules: " + ", ".join(f"{k} {v}" for k, v in s["rules_fired"].items()))
    if s["skipped"]:
        lines.append("skipped: " + ", ".join(f"{k} {v}" for k, v in s["skipped"].items()))
    if s["dead_letters"]:
        lines.append("dead letters: " + ", ".join(f"{k} {v}" for k, v in s["dead_letters"].items()))
    lines.append(f"model: {s['model_name']} {s['model_version']}")
    out = output if "://" in output else os.path.abspath(output)
    lines.append(
        f"outputs: {out}/ (probabilities/, sky_density/, sky_map.png, sn_candidates.html, "
        "dead_letters/, summary.json)"
    )
    return "\n".join(lines)


def _read_parquet_rows(pattern: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for m in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(m.path) as f:
            rows += pq.read_table(io.BytesIO(f.read())).to_pylist()
    return rows


def finish(output: str, model: dict[str, Any], runtime_s: float, nside: int) -> dict[str, Any]:
    """Post-run: summary.json (checked), sky_map.png, and an empty SN page if none was written."""
    join = FileSystems.join
    with FileSystems.open(join(output, "counts.json")) as f:
        counts = json.load(f)
    summary = summarise(counts, model, runtime_s)
    with FileSystems.create(join(output, "summary.json")) as f:
        f.write(json.dumps(summary, indent=2).encode())
    density = _read_parquet_rows(join(output, "sky_density", "*.parquet"))
    buf = io.BytesIO()
    nights = sorted({r["night"] for r in density})
    plot_sky_map(density, nside, buf, title=f"Predicted classes, night {', '.join(nights)}")
    with FileSystems.create(join(output, "sky_map.png")) as f:
        f.write(buf.getvalue())
    if not FileSystems.exists(join(output, "sn_candidates.html")):
        write_sn_candidates([], output, f"{model['name']} {model['version']}")
    if not summary["reconciled"]:
        raise RuntimeError(f"run does not reconcile, alerts went missing: {summary}")
    return summary


# --- Command line ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's own typed flags; anything else is passed to Beam as pipeline options."""
    parser.add_argument(
        "--input", nargs="+", default=None, help="alert files, directories, globs, archives"
    )
    parser.add_argument("--output", type=str, default="output", help="output directory")
    parser.add_argument(
        "--model", type=str, default=DEFAULT_MODEL, help="exported model dir (default: shipped)"
    )
    parser.add_argument(
        "--select",
        choices=SELECT_MODES,
        default="first",
        help="classify first detections only (default) or every alert",
    )
    parser.add_argument(
        "--rules",
        choices=("alerce", "none"),
        default="alerce",
        help="apply ALeRCE's rules around the CNN (default) or not",
    )
    parser.add_argument(
        "--stamp-policy",
        choices=STAMP_SIZE_POLICIES,
        default="drop",
        help="non-63x63 stamps: dead letter (ALeRCE) or NaN-pad",
    )
    parser.add_argument("--healpix-nside", type=int, default=64, help="sky-density resolution")
    parser.add_argument("--top-sn", type=int, default=50, help="SN candidates to report")
    parser.add_argument(
        "--bigquery-dataset",
        default=None,
        metavar="PROJECT:DATASET",
        help="also write the tables to BigQuery (re-running a night replaces, never duplicates)",
    )
    parser.add_argument(
        "--bigquery-emulator",
        default=None,
        metavar="URL",
        help="BigQuery API endpoint of a local emulator (http://127.0.0.1:PORT), for tests",
    )
    parser.add_argument(
        "--runner",
        type=str,
        default="FnApiRunner",
        help="Beam runner (default: %(default)s, local, no download)",
    )
    parser.add_argument("--verbose", action="store_true", help="show library logs")
    parser.add_argument(
        "--quiet-progress", action="store_true", help="no progress lines while running"
    )
    parser.add_argument(
        "--streaming", action="store_true", help="read Pub/Sub instead of files (see below)"
    )
    from pipeline.streaming import add_streaming_arguments

    add_streaming_arguments(parser.add_argument_group("streaming (with --streaming)"))


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the classification job; returns the summary (also written to ``summary.json``).

    Parameters
    ----------
    argv
        Command-line arguments (see :func:`add_arguments`) plus Beam options.
    test_pipeline
        Build into this pipeline instead of creating one (tests).
    """
    parser = argparse.ArgumentParser(prog="stampflow run")
    add_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    return _run(args, beam_args, test_pipeline)


def _run(args: argparse.Namespace, beam_args: list[str], test_pipeline=None) -> dict:
    if not args.verbose:
        quiet()
    if args.streaming:
        from pipeline.streaming import run_streaming

        return run_streaming(args, beam_args, test_pipeline)
    if not args.input:
        raise SystemExit("stampflow run: --input is required (or --streaming)")
    model = read_metadata(args.model)
    options = PipelineOptions(beam_args, runner=args.runner)
    started = time.perf_counter()
    kwargs = dict(
        inputs=args.input,
        output=args.output,
        model_dir=args.model,
        select=args.select,
        rules=args.rules == "alerce",
        stamp_policy=args.stamp_policy,
        nside=args.healpix_nside,
        top_sn=args.top_sn,
        bigquery=None,
        progress=not args.quiet_progress,
        spread=args.runner not in LOCAL_RUNNERS,
    )
    if args.bigquery_dataset:
        kwargs["bigquery"] = BigQueryTarget.parse(args.bigquery_dataset, args.bigquery_emulator)
        kwargs["bigquery"].prepare()
    if test_pipeline is not None:
        build(test_pipeline, **kwargs)
        test_pipeline.run().wait_until_finish()
    else:
        with beam.Pipeline(options=options) as p:
            build(p, **kwargs)
    if kwargs["bigquery"] is not None:
        kwargs["bigquery"].commit()
    return finish(args.output, model, time.perf_counter() - started, args.healpix_nside)


def quiet() -> None:
    """Silence library start-up chatter (TensorFlow, absl, Beam info logs) for normal runs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("apache_beam", "absl", "tensorflow", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    """Add ``stampflow run`` to the command line."""
    parser = subparsers.add_parser(
        name,
        help="classify alerts: probabilities, sky density, SN candidates",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(parser)
    parser.set_defaults(func=_main, beam_args_ok=True)


def _main(args: argparse.Namespace) -> int:
    summary = _run(args, args.beam_args)
    if args.streaming:  # no files to point at: the outputs are topics and tables
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(format_summary(summary, args.output))
    return 0
