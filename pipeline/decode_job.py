"""``stampflow decode``: read → decode → stamps, then a reconciled summary (no model).

The first stages of the classification pipeline on their own: useful to check an archive before a
run, and the job ``./run_local.sh`` falls back to. Outputs under ``--output``:
``summary.json`` (counts by schema version, stamp shape, dead-letter stage and reason) and
``dead_letters/dead_letters.jsonl``. The invariant ``containers_in == alerts + dead letters`` is
checked at the end.

    stampflow decode ../shared/data/ztf_alerts --output out/decode
    stampflow decode gs://bucket/ztf_public_20240101.tar.gz --output gs://bucket/out \\
        --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp \\
        --setup_file ./setup.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import BATCH_RUNNER, check_inputs, check_output, check_schema_dirs
from pipeline.summary import dead_keys, group
from transforms.cutouts import DecodeCutouts
from transforms.dead_letters import to_json_line
from transforms.ingest import ReadAlerts
from transforms.schema import (
    COUNT_DEAD_PREFIX,
    COUNT_DECODED,
    COUNT_REASON_PREFIX,
    TAG_ALERTS,
    TAG_DEAD_LETTERS,
)
from transforms.wire import SchemaSources, configure_schemas


def _alert_keys(item: tuple[Any, dict[str, Any]]) -> list[str]:
    alert, images = item
    shape = "x".join(str(n) for n in images["science"].shape)
    return [f"schema={alert.schema_version}", f"shape={shape}", COUNT_DECODED]


def summarise(counts: dict[str, int]) -> dict[str, Any]:
    """Turn flat ``key=value`` counts into the summary document.

    Parameters
    ----------
    counts
        Counts keyed ``decoded``, ``schema=V``, ``shape=RxC``, ``dead=STAGE``,
        ``reason=STAGE:CODE``.

    Returns
    -------
    dict
        ``records_in``, ``alerts_ok``, ``dead_letters`` by stage, reasons, schema versions and stamp
        shapes; ``records_in == alerts_ok + sum(dead_letters)`` by construction of the counts.
    """

    dead = group(counts, COUNT_DEAD_PREFIX)
    ok = counts.get(COUNT_DECODED, 0)
    return {
        "records_in": ok + sum(dead.values()),
        "alerts_ok": ok,
        "dead_letters": dead,
        "dead_letter_reasons": group(counts, COUNT_REASON_PREFIX),
        "schema_versions": group(counts, "schema="),
        "stamp_shapes": group(counts, "shape="),
    }


class CountKeys(beam.PTransform):
    """Flat string keys → one ``{key: count}`` dict (empty dict for an empty input)."""

    def expand(self, keys: beam.PCollection) -> beam.PCollection:
        return (
            keys
            | "Count" >> beam.combiners.Count.PerElement()
            | "ToDict" >> beam.combiners.ToDict()
        )


def build(
    pipeline: beam.Pipeline,
    inputs: list[str],
    output: str,
    schemas: SchemaSources | None = None,
) -> None:
    """Add the decode job to ``pipeline``.

    Parameters
    ----------
    pipeline
        The pipeline to extend.
    inputs
        Files, directories, globs or archives.
    output
        Output directory (local or any Beam filesystem).
    schemas
        Where wire-format messages' writer schemas are found (``--schema-dir``).
    """
    read = pipeline | "ReadAlerts" >> ReadAlerts(inputs, schemas=schemas)
    stamps = read[TAG_ALERTS] | "DecodeCutouts" >> beam.ParDo(DecodeCutouts()).with_outputs(
        TAG_DEAD_LETTERS, main="ok"
    )
    dead = (read[TAG_DEAD_LETTERS], stamps[TAG_DEAD_LETTERS]) | "AllDeadLetters" >> beam.Flatten()
    keys = (
        stamps.ok | "AlertKeys" >> beam.FlatMap(_alert_keys),
        dead | "DeadKeys" >> beam.FlatMap(dead_keys),
    ) | "AllKeys" >> beam.Flatten()
    (
        keys
        | "Summarise" >> CountKeys()
        | "ToJson" >> beam.Map(lambda c: json.dumps(summarise(c), indent=2))
        | "WriteSummary"
        >> beam.io.WriteToText(
            FileSystems.join(output, "summary"), file_name_suffix=".json", shard_name_template=""
        )
    )
    (
        dead
        | "DeadToJson" >> beam.Map(to_json_line)
        | "WriteDeadLetters"
        >> beam.io.WriteToText(
            FileSystems.join(output, "dead_letters", "dead_letters"),
            file_name_suffix=".jsonl",
            shard_name_template="",
        )
    )


def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the decode job and return its summary.

    Parameters
    ----------
    argv
        ``INPUT... --output DIR`` plus any Beam pipeline options.
    test_pipeline
        A pipeline to build into instead of creating one (tests).

    Returns
    -------
    dict
        The summary written to ``summary.json``.
    """
    parser = argparse.ArgumentParser(prog="stampflow decode")
    _add_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    return _run(args, beam_args, test_pipeline)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="alert files, directories, globs or archives")
    parser.add_argument(
        "--output",
        type=str,
        default="output/decode",
        help="output directory (default: %(default)s)",
    )
    parser.add_argument(
        "--runner",
        type=str,
        default=BATCH_RUNNER,
        help="Beam runner (default: %(default)s, local and in-process)",
    )
    parser.add_argument(
        "--schema-dir",
        action="append",
        default=None,
        help="Rubin alert schemas (lsst.vMAJOR_MINOR.alert.avsc) for wire-format messages",
    )


def _run(
    args: argparse.Namespace, beam_args: list[str], test_pipeline: beam.Pipeline | None = None
) -> dict:
    # The same up-front checks as ``stampflow run``: a typo'd input or an unwritable output is
    # one line and exit status 2, not an empty "successful" run or a traceback at the end.
    check_inputs(args.inputs, flag="input")
    check_output(args.output)
    schemas = SchemaSources(check_schema_dirs(args.schema_dir or ()))
    configure_schemas(schemas.dirs)
    options = PipelineOptions(beam_args, runner=args.runner)
    started = time.perf_counter()
    if test_pipeline is not None:
        build(test_pipeline, args.inputs, args.output, schemas)
        test_pipeline.run().wait_until_finish()
    else:
        with beam.Pipeline(options=options) as p:
            build(p, args.inputs, args.output, schemas)
    with FileSystems.open(FileSystems.join(args.output, "summary.json")) as f:
        summary = json.load(f)
    summary["runtime_s"] = round(time.perf_counter() - started, 3)
    return summary


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    """Add ``stampflow decode`` to the command line."""
    parser = subparsers.add_parser(
        name,
        help="decode alert files/archives and summarise them (no model)",
        description=__doc__.split("\n\n")[0],
    )
    _add_arguments(parser)
    parser.set_defaults(func=_main, beam_args_ok=True)


def _main(args: argparse.Namespace) -> int:
    summary = _run(args, args.beam_args)
    print(json.dumps(summary, indent=2))
    print(format_summary(summary, args.output))
    return 0


def format_summary(summary: dict[str, Any], output: str) -> str:
    """One human paragraph for the end of a run."""
    dead = Counter(summary["dead_letters"])
    lines = [
        f"{summary['records_in']} records in: {summary['alerts_ok']} alerts decoded with stamps, "
        f"{sum(dead.values())} dead letters"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(dead.items()))})" if dead else ""),
        f"outputs in {os.path.abspath(output) if '://' not in output else output}",
    ]
    return "\n".join(lines)
