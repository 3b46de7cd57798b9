"""``stampflow run``: alerts → class probabilities, sky density, SN candidates; batch or streaming.

One chain of labelled composites, the same stages in both modes (:func:`build`)::

    ReadAlerts ─ SelectFirstDetections ─ Featurize ─ Classify ─ ApplyRules ─ SkyDensity ─┐
      ┌──────────────────────────────────────────────────────────────────────────────────┘
      ├─ WriteOutputs: batch   probabilities/*.parquet, sky_density/*.parquet, sn_candidates.*
      │                stream  JSON rows and windowed density on their topics
      │                both    BigQuery (optional); rows it refuses come back as dead letters
      ├─ WriteDeadLetters: every stage's, the sinks' refusals included → dead_letters/ or a topic
      └─ CountOutcomes: one count per record's fate → counts.json / counters → summary.json

Where the modes differ: *ReadAlerts* reads files, directories, globs, tar.gz, ``gs://``
(:mod:`transforms.ingest`) or a subscription with event time = ``jd`` (:mod:`pipeline.pubsub`);
*SelectFirstDetections* keeps each object's earliest alert over the whole input, winners read
again (:mod:`transforms.selection`), or holds each object in state for a while
(:mod:`transforms.streaming_state`), both classifying a duplicated alert once; *SkyDensity*
counts per night (:mod:`transforms.density`) or per event-time window; the outputs are files or
topics (:mod:`pipeline.sinks`). *Featurize* (:mod:`transforms.featurize`), *Classify* and
*ApplyRules* (:mod:`pipeline.classify`) are the same objects in both.

``summary.json`` reconciles (batch): ``records_in == classified + sum(skipped) + sum(dead letters
of the input stages)`` (:mod:`pipeline.summary`); the job fails loudly if an alert went missing.
Options are parsed and validated once, before any work (:mod:`pipeline.options`): a typo'd input,
an unwritable output or a malformed topic is one line and exit status 2.

    stampflow run --input night/ --output out/          # local, FnApiRunner, shipped model
    stampflow run --input gs://B/ztf_public_20240611.tar.gz --output gs://B/out/20240611 \\
        --model gs://B/models/stampflow --runner DataflowRunner --project P --region R \\
        --temp_location gs://B/tmp --setup_file ./setup.py

Streaming
---------
``--streaming`` reads a subscription (one Avro container per message, as ``stampflow publish``
sends) and writes JSON rows, dead letters and windowed sky density to topics. An object's earliest
alert is released after ``--hold-seconds`` (event time *and* arrival time), so the latency of a
first detection is about the hold plus the pipeline's few hundred milliseconds::

    export PUBSUB_EMULATOR_HOST=127.0.0.1:8085       # gcloud beta emulators pubsub start ...
    stampflow run --streaming --input-subscription projects/P/subscriptions/alerts \\
        --output-topic projects/P/topics/classifications --dead-letter-topic projects/P/topics/dead
    stampflow publish --topic projects/P/topics/alerts --rate 50 night/

Model updates without a restart (``--model-watch GLOB``): the glob matches the
``stampflow_model.json`` of model *version directories* (``models/*/stampflow_model.json``); the
newest (by modification time) is served. Write a new version into a *new* directory, its metadata
file last. ``--model-watch-mode side-input`` (the default on Dataflow) follows Beam's
``WatchFilePattern`` as RunInference's model side input; ``poll`` (the default, and the only
choice, on the local direct runners, which cannot run WatchFilePattern's splittable DoFns) lets
the loaded model look at the glob every ``--model-watch-interval`` seconds
(:class:`model.handler.WatchedModel`). Either way each row names the version that computed it.
A version whose feature list differs from the first one's is logged and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline import progress
from pipeline.classify import ApplyRules, Classify, alert_meta
from pipeline.dataflow import is_dry_run, new_pipeline, write_job_request
from pipeline.options import (
    DIRECT_RUNNERS,
    LOCAL_RUNNERS,
    RunOptions,
    add_arguments,
    from_namespace,
    parse,
)
from pipeline.sinks import (
    CollectDeadLetters,
    PublishOutputs,
    WriteBatchOutputs,
    WriteDeadLetters,
    write_after_run,
)
from pipeline.summary import CountOutcomes, counters, format_summary, read_counts, summarise
from transforms.density import NightlySkyDensity
from transforms.featurize import Featurize, RouteBySurvey
from transforms.ingest import ReadAlerts
from transforms.schema import (
    TAG_ALERTS,
    TAG_CLASSIFIED,
    TAG_DEAD_LETTERS,
    TAG_DENSITY,
    TAG_EXAMPLES,
    TAG_ROWS,
    TAG_SKIPPED,
)
from transforms.selection import SelectFirstDetections
from transforms.surveys import get_survey
from transforms.wire import SchemaSources, configure_schemas

__all__ = [
    "build",
    "quiet",
    "register",
    "run",
    "run_batch",
    "run_streaming",
    "runtime_line",
    "start_streaming",
    "streaming_counts",
]


def _mode_stages(opts: RunOptions) -> dict[str, Any]:
    """The composites that differ between batch and streaming (the rest of the chain is shared)."""
    s = opts.streaming
    schemas = SchemaSources(opts.schema_dirs, opts.schema_registry)
    if s is None:
        return {
            # The first pass reads only what selection needs; the winners are decoded in full.
            "read": ReadAlerts(opts.inputs, scan=True, spread=opts.spread_files, schemas=schemas),
            "select": SelectFirstDetections(opts.select, spread=opts.spread, schemas=schemas),
            "density": NightlySkyDensity(opts.nside),
            "outputs": WriteBatchOutputs(
                opts.output, opts.model, opts.top_sn, opts.bigquery, opts.tns
            ),
            "dead": WriteDeadLetters(output=opts.output),
        }
    from pipeline.pubsub import ReadPubSubAlerts
    from transforms.streaming_state import SelectFirstDetectionsStreaming, SkyDensityWindows

    return {
        "read": ReadPubSubAlerts(s, schemas),
        "select": SelectFirstDetectionsStreaming(opts.select, s.hold_s, s.ttl_s),
        "density": SkyDensityWindows(s.window_s, s.lateness_s, s.early_s, opts.nside),
        "outputs": PublishOutputs(s, opts.bigquery, opts.model, opts.top_sn, opts.tns),
        "dead": WriteDeadLetters(topic=s.dead_letter_topic) if s.dead_letter_topic else None,
    }


def build(p: beam.Pipeline, opts: RunOptions) -> dict[str, beam.PCollection]:
    """Add the classification job to pipeline ``p`` (batch or streaming, by ``opts``).

    Returns
    -------
    dict
        ``alerts`` (decoded), ``rows``, ``density``, ``skipped`` and ``dead_letters`` (every
        stage's and the sinks' refusals), for tests.
    """
    stage = _mode_stages(opts)
    progress.reset()
    configure_schemas(opts.schema_dirs, opts.schema_registry)  # this process too (local runners)
    read = p | "ReadAlerts" >> stage["read"]
    selected = read[TAG_ALERTS] | "SelectFirstDetections" >> stage["select"]
    models = opts.models
    dead_parts = [read[TAG_DEAD_LETTERS], selected[TAG_DEAD_LETTERS]]
    if len(models) == 1:
        # One survey served: its Featurize dead-letters other surveys' alerts itself.
        branches = {opts.model.survey: selected[TAG_ALERTS]}
    else:
        routed = selected[TAG_ALERTS] | "RouteBySurvey" >> beam.ParDo(
            RouteBySurvey(list(models))
        ).with_outputs(TAG_DEAD_LETTERS, *models)
        branches = {name: routed[name] for name in models}
        dead_parts.append(routed[TAG_DEAD_LETTERS])
    survey_rows = []
    for i, (name, model) in enumerate(models.items()):
        # The first model's stages keep their labels (Dataflow updates match steps by label).
        suffix = "" if i == 0 else f" {name}"
        featurized = branches[name] | f"Featurize{suffix}" >> Featurize(
            model.features, opts.stamp_policy, key=alert_meta, survey=get_survey(name)
        )
        classified = featurized[TAG_EXAMPLES] | f"Classify{suffix}" >> Classify(
            model,
            opts.watch if i == 0 else None,
            known_sso_around=opts.rules,
            runtime=opts.runtime,
            device=opts.device,
            jit_compile=opts.jit_compile,
            mixed_precision=opts.mixed_precision,
        )
        survey_rows.append(
            classified[TAG_CLASSIFIED] | f"ApplyRules{suffix}" >> ApplyRules(opts.rules, model)
        )
        dead_parts += [featurized[TAG_DEAD_LETTERS], classified[TAG_DEAD_LETTERS]]
    rows = survey_rows[0] if len(survey_rows) == 1 else survey_rows | "Rows" >> beam.Flatten()
    density = rows | "SkyDensity" >> stage["density"]
    dead = tuple(dead_parts) | "DeadLetters" >> CollectDeadLetters(read_back=not opts.is_streaming)
    refused = {
        TAG_ROWS: rows,
        TAG_DENSITY: density,
        TAG_DEAD_LETTERS: dead,
    } | "WriteOutputs" >> stage["outputs"]
    all_dead = (dead, refused) | "WithRefusedRows" >> beam.Flatten()
    if stage["dead"] is not None:
        _ = all_dead | "WriteDeadLetters" >> stage["dead"]
    outcomes = {
        TAG_ALERTS: read[TAG_ALERTS],
        TAG_ROWS: rows,
        TAG_SKIPPED: selected[TAG_SKIPPED],
        TAG_DEAD_LETTERS: all_dead,
    }
    _ = outcomes | "CountOutcomes" >> CountOutcomes(opts.output, opts.progress)
    return {**outcomes, TAG_DENSITY: density}


# --- Batch ----------------------------------------------------------------------------------------
def run_batch(opts: RunOptions, test_pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """Run a batch job to the end; returns the summary (also written to ``summary.json``).

    Raises
    ------
    RuntimeError
        When the counts do not reconcile (an alert went missing: a bug, never a user's mistake).
    """
    from pipeline.sinks import commit_bigquery, prepare_bigquery

    if opts.bigquery is not None:
        prepare_bigquery(opts.bigquery, staging=True)
    started = time.perf_counter()
    p = test_pipeline or new_pipeline(opts)
    build(p, opts)
    p.run().wait_until_finish()
    if opts.bigquery is not None:
        commit_bigquery(opts.bigquery)
    write_after_run(opts.output, opts.model, opts.nside)
    summary = summarise(read_counts(opts.output), opts.model, time.perf_counter() - started)
    with FileSystems.create(FileSystems.join(opts.output, "summary.json")) as f:
        f.write(json.dumps(summary, indent=2).encode())
    if not summary["reconciled"]:
        raise RuntimeError(f"run does not reconcile, alerts went missing: {summary}")
    return summary


# --- Streaming ------------------------------------------------------------------------------------
def start_streaming(
    opts: RunOptions, test_pipeline: beam.Pipeline | None = None
) -> beam.runners.runner.PipelineResult:
    """Build and start a streaming job; returns at once with the running job's result."""
    from pipeline.sinks import prepare_bigquery

    if opts.bigquery is not None:
        prepare_bigquery(opts.bigquery, staging=False)
    if opts.runner in DIRECT_RUNNERS:
        from pipeline.pubsub_pull import shorten_direct_runner_pulls

        shorten_direct_runner_pulls()
    p = test_pipeline or new_pipeline(opts)
    build(p, opts)
    return p.run()


def _terminal(result: Any) -> bool:
    from apache_beam.runners.runner import PipelineState

    return PipelineState.is_terminal(result.state)


def run_streaming(opts: RunOptions, test_pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """Run a streaming job until it ends, is interrupted (Ctrl-C) or ``--max-run-seconds`` pass.

    Returns
    -------
    dict
        The batch summary's keys from the job's counters, plus ``state``; ``reconciled`` is None
        (alerts held or in flight when a stream stops are in no count).
    """
    started = time.perf_counter()
    result = start_streaming(opts, test_pipeline)
    max_run_s = opts.streaming.max_run_s
    try:
        if max_run_s is None:
            result.wait_until_finish()
        else:
            deadline = started + max_run_s
            while time.perf_counter() < deadline and not _terminal(result):
                time.sleep(min(1.0, max(0.0, deadline - time.perf_counter())))
    except KeyboardInterrupt:  # Ctrl-C is how a local streaming job is meant to end
        pass
    finally:
        if not _terminal(result):
            result.cancel()
    return summarise(
        streaming_counts(opts, result),
        opts.model,
        time.perf_counter() - started,
        state=str(result.state),
    )


def streaming_counts(opts: RunOptions, result: Any) -> dict[str, int]:
    """A stream's outcome counts so far: Beam's counters, or this process's tallies locally.

    The Python direct runner reports only the first bundle's update of each counter in
    streaming mode, and it runs in this process, so there the tallies are the true counts.
    """
    if opts.runner in LOCAL_RUNNERS:
        return progress.snapshot()
    return counters(result)


# --- Command line ---------------------------------------------------------------------------------
def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Parse ``stampflow run`` arguments and run the job; returns its summary.

    Raises
    ------
    pipeline.options.OptionsError
        On a user's mistake, before any work.
    """
    opts = parse(argv)
    if not opts.verbose:
        quiet()
    if is_dry_run(opts):  # a Dataflow job request, staged and written, not submitted
        return write_job_request(opts, build)
    _announce(opts)
    if opts.is_streaming:
        return run_streaming(opts, test_pipeline)
    return run_batch(opts, test_pipeline)


def quiet() -> None:
    """Silence library start-up chatter (TensorFlow, absl, Beam info logs) for normal runs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("apache_beam", "absl", "tensorflow", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Ours stay at WARNING: e.g. the ONNX handler's line when a GPU was asked for and not used.
    logging.getLogger("model").setLevel(logging.WARNING)


def runtime_line(opts: RunOptions) -> str | None:
    """What runs the model, for the first line of a run; None for the default (TensorFlow).

    For ``--runtime onnx``: the onnxruntime version, file and execution provider asked for
    (workers log the one that actually runs, and warn when it is not the GPU asked for).
    """
    if opts.runtime != "onnx":
        return None
    import onnxruntime

    from model.handler import ONNX_FILE, onnx_providers

    path = FileSystems.join(opts.model.directory, ONNX_FILE)
    provider = onnx_providers(opts.device)[0]
    return f"onnxruntime {onnxruntime.__version__} runs {path} on {provider}"


def _announce(opts: RunOptions) -> None:
    line = runtime_line(opts)
    if line:
        print(f"stampflow run: {line}", file=sys.stderr, flush=True)


def register(subparsers: Any, name: str) -> None:
    """Add ``stampflow run`` to the command line."""
    parser = subparsers.add_parser(
        name,
        help="classify alerts: probabilities, sky density, SN candidates",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(parser)
    parser.set_defaults(func=_main, beam_args_ok=True)


def _main(args: Any) -> int:
    opts = from_namespace(args, args.beam_args)
    if not opts.verbose:
        quiet()
    if is_dry_run(opts):
        request = write_job_request(opts, build)
        print(f"Dataflow job {request['job_name']} staged, not submitted: {request['dry_run']}")
        return 0
    _announce(opts)
    summary = run_streaming(opts) if opts.is_streaming else run_batch(opts)
    print(format_summary(summary, opts.output))
    return 0
