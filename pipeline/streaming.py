"""Streaming mode (``stampflow run --streaming``): Pub/Sub alerts → classifications within seconds.

The same stages as the batch job (:mod:`pipeline.run_job`), unbounded::

    ReadFromPubSub ─ Decode (DecodeAlerts) ─ EventTime (jd) ─ DropDuplicates (state per candid)
      ─ SelectFirstDetections (state per objectId, hold, TTL) ─ Featurize ─ Classify (RunInference,
      model side input from --model-watch) ─ ApplyRules ─┬─ JSON rows ─▶ --output-topic [+ BigQuery]
                                                          └─ SkyDensity (fixed event-time windows,
                                                             early/on-time/late panes) ─▶ topic/BQ
    every stage ─▶ dead letters (JSON, raw in base64) ─▶ --dead-letter-topic [+ BigQuery]

Event time is the alert's ``jd`` (Unix seconds); inputs that never become an alert keep their
Pub/Sub publish time (or ``--timestamp-attribute``). State and timers are described in
:mod:`transforms.streaming_state`: an object's earliest alert is released after a hold of
``--hold-seconds`` (event time *and* arrival time), so the latency of a first detection is about
the hold plus the pipeline's own few hundred milliseconds.

Model updates without a restart (``--model-watch GLOB``): the glob matches the
``stampflow_model.json`` files of model *version directories* (``models/*/stampflow_model.json``);
the newest (by modification time) is served. Write a new version into a *new* directory and its
metadata file last. Two ways to follow it (``--model-watch-mode``):

* ``side-input`` (default on Dataflow and other portable runners): Beam's
  :class:`~apache_beam.ml.inference.utils.WatchFilePattern` emits the newest file as RunInference's
  model side input; the handler records, on the loaded model itself, the directory it was loaded
  from and returns it as each ``PredictionResult.model_id``.
* ``poll`` (default, and the only choice, on the local direct runners, which cannot run
  WatchFilePattern's splittable DoFns): the loaded model is a :class:`model.handler.WatchedModel`
  that looks at the glob every ``--model-watch-interval`` seconds and swaps itself; each batch
  runs on one version and reports its directory the same way.

Either way the row's ``model_name`` and ``model_version`` are read from the ``stampflow_model.json``
of the directory that computed it, so a row always names its model, even during a swap. The
feature list of a new version must equal the first one's (featurisation is built once); a version
that differs is logged and skipped.

    # local, against the Pub/Sub emulator (gcloud beta emulators pubsub start ...)
    export PUBSUB_EMULATOR_HOST=127.0.0.1:8085
    stampflow run --streaming --input-subscription projects/P/subscriptions/alerts \\
        --output-topic projects/P/topics/classifications --dead-letter-topic projects/P/topics/dead
    stampflow publish --topic projects/P/topics/alerts --rate 50 night/
    # Dataflow
    stampflow run --streaming --input-subscription ... --output-topic ... \\
        --bigquery-dataset P:stampflow --model gs://B/models/v1 --runner DataflowRunner \\
        --project P --region R --temp_location gs://B/tmp --setup_file ./setup.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelMetadata,
    PredictionResult,
    RunInference,
)
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from model.handler import METADATA_FILE, StampClassifierHandler, WatchedModel, read_metadata
from pipeline.publish import EVENT_TIME_ATTRIBUTE, SOURCE_ATTRIBUTE
from pipeline.run_job import _failed_batch_letters, alert_meta, to_row
from transforms.dead_letters import to_json_line
from transforms.featurize import Featurize
from transforms.ingest import ALERTS, DEAD_LETTERS, DecodeAlerts
from transforms.schema import CLASS_NAMES, METRICS_NAMESPACE, PROBABILITY_COLUMN_NAMES
from transforms.selection import SKIPPED
from transforms.streaming_state import (
    DropDuplicateAlerts,
    SelectFirstDetectionsStreaming,
    SkyDensityWindows,
    jd_to_unix,
)

#: The runner used when ``--runner`` is left at the batch default: the Python direct runner, named
#: so it never tries to download Prism; it runs Pub/Sub, state, timers and TestStream.
STREAMING_RUNNER = "BundleBasedDirectRunner"


#: ``--model-watch-mode`` choices.
WATCH_MODES = ("auto", "side-input", "poll")
#: Local runners that cannot run WatchFilePattern (a splittable DoFn behind a side input).
_NO_WATCH_RUNNERS = frozenset({"FnApiRunner", "BundleBasedDirectRunner", "DirectRunner"})


# --- Command line ---------------------------------------------------------------------------------
def add_streaming_arguments(group: Any) -> None:
    """Add the streaming flags to ``stampflow run`` (``--model``, ``--select`` ... are shared)."""
    group.add_argument("--input-subscription", default=None, help="projects/P/subscriptions/S")
    group.add_argument("--output-topic", default=None, help="projects/P/topics/T: JSON rows")
    group.add_argument(
        "--dead-letter-topic", default=None, help="projects/P/topics/T: JSON dead letters"
    )
    group.add_argument(
        "--density-topic", default=None, help="projects/P/topics/T: windowed sky density (JSON)"
    )
    group.add_argument(
        "--window-minutes", type=float, default=10.0, help="sky-density window [min]"
    )
    group.add_argument(
        "--allowed-lateness-minutes",
        type=float,
        default=60.0,
        help="late rows still update their density window this long after it closes [min]",
    )
    group.add_argument(
        "--early-firing-seconds",
        type=float,
        default=5.0,
        help="processing-time delay of early density panes [s]",
    )
    group.add_argument(
        "--hold-seconds",
        type=float,
        default=5.0,
        help="first detection: wait this long (event and arrival time) for earlier alerts [s]",
    )
    group.add_argument(
        "--state-ttl-hours",
        type=float,
        default=24.0,
        help="forget a candid / released object after this much processing time [h]",
    )
    group.add_argument(
        "--timestamp-attribute",
        default=None,
        help=f"Pub/Sub attribute with the event time (e.g. {EVENT_TIME_ATTRIBUTE!r}, set by "
        "stampflow publish) so the source watermark follows jd; default: publish time",
    )
    group.add_argument(
        "--model-watch",
        default=None,
        metavar="GLOB",
        help=f"reload new model versions: glob of their {METADATA_FILE} files",
    )
    group.add_argument(
        "--model-watch-mode",
        choices=WATCH_MODES,
        default="auto",
        help="follow --model-watch as RunInference's side input (WatchFilePattern) or by polling "
        "in the model handler; auto: poll on the local runners, side input elsewhere",
    )
    group.add_argument(
        "--model-watch-interval",
        type=float,
        default=60.0,
        help="how often --model-watch looks for a new version [s]",
    )
    group.add_argument(
        "--max-run-seconds",
        type=float,
        default=None,
        help="cancel the streaming job after this long (local runs, demos); default: run forever",
    )


# --- Pub/Sub in -----------------------------------------------------------------------------------
def message_to_container(message: Any) -> tuple[str, bytes]:
    """A Pub/Sub message → ``(source, container bytes)`` for :class:`DecodeAlerts`.

    The source is the publisher's ``source`` attribute, else ``pubsub:<message id>``.
    """
    attributes = message.attributes or {}
    source = attributes.get(SOURCE_ATTRIBUTE) or f"pubsub:{message.message_id or 'unknown'}"
    return source, message.data


def with_event_time(alert: Any) -> beam.window.TimestampedValue:
    """Timestamp an alert with its ``jd`` (event time) instead of the message's publish time."""
    return beam.window.TimestampedValue(alert, jd_to_unix(alert.jd))


# --- Classify with a watched model ----------------------------------------------------------------
class VersionedHandler(StampClassifierHandler):
    """:class:`StampClassifierHandler` that follows RunInference's model side input.

    The directory a model was loaded from is stored on the loaded object and returned as every
    prediction's ``model_id``, so each result names the model that computed it.
    """

    def update_model_path(self, model_path: str | None = None) -> None:
        if model_path:
            self.model_dir = model_path

    def load_model(self) -> Any:
        model = super().load_model()
        model.stampflow_model_dir = self.model_dir  # travels with the model, not the handler
        return model

    def run_inference(self, batch, model, inference_args=None):
        model_id = getattr(model, "stampflow_model_dir", self.model_dir)
        return [
            PredictionResult(r.example, r.inference, model_id)
            for r in super().run_inference(batch, model, inference_args)
        ]


class PollingHandler(StampClassifierHandler):
    """:class:`StampClassifierHandler` whose model follows a glob by itself (any runner).

    The loaded "model" is a :class:`model.handler.WatchedModel`; every prediction's ``model_id``
    is the directory of the version that computed it.

    Parameters
    ----------
    model_dir
        The version to serve until ``pattern`` matches one.
    pattern
        Glob of version directories' ``stampflow_model.json``.
    interval_s
        Seconds between looks at the glob.
    """

    def __init__(self, model_dir: str, pattern: str, interval_s: float) -> None:
        super().__init__(model_dir)
        self.pattern, self.interval_s = pattern, interval_s

    def load_model(self) -> WatchedModel:
        return WatchedModel(self.pattern, self.model_dir, self.interval_s)

    def run_inference(self, batch, model, inference_args=None):
        loaded, model_dir = model.current()
        return [
            PredictionResult(r.example, r.inference, model_dir)
            for r in super().run_inference(batch, loaded, inference_args)
        ]


def watch_mode(args: argparse.Namespace) -> str | None:
    """``"side-input"``, ``"poll"`` or None (no ``--model-watch``) for these flags."""
    if not args.model_watch:
        return None
    if args.model_watch_mode != "auto":
        return args.model_watch_mode
    return "poll" if streaming_runner(args) in _NO_WATCH_RUNNERS else "side-input"


def _metadata_to_model_dir(meta: ModelMetadata) -> ModelMetadata:
    model_dir = os.path.dirname(meta.model_id)
    return ModelMetadata(model_id=model_dir, model_name=os.path.basename(model_dir))


class WatchModel(beam.PTransform):
    """The newest ``stampflow_model.json`` matching a glob → RunInference's model side input."""

    def __init__(self, pattern: str, interval_s: float) -> None:
        super().__init__()
        self.pattern, self.interval_s = pattern, interval_s

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        from apache_beam.ml.inference.utils import WatchFilePattern

        return (
            pbegin
            | "WatchFilePattern" >> WatchFilePattern(self.pattern, interval=self.interval_s)
            | "ModelDir" >> beam.Map(_metadata_to_model_dir)
        )


class ClassifyStreaming(beam.PTransform):
    """Keyed examples → ``(meta, probabilities, model_dir)``; failed batches → dead letters.

    Parameters
    ----------
    model_dir
        The model to start with.
    model_updates
        Optional :class:`WatchModel` output (a side input of RunInference).
    poll
        Optional ``(glob, interval [s])``: follow new versions with :class:`PollingHandler`.
    """

    def __init__(
        self,
        model_dir: str,
        model_updates: beam.PCollection | None = None,
        poll: tuple[str, float] | None = None,
    ) -> None:
        super().__init__()
        if model_updates is not None and poll is not None:
            raise ValueError("follow new model versions by side input or by polling, not both")
        self.model_dir = model_dir
        self.model_updates = model_updates
        self.poll = poll

    def expand(self, examples: beam.PCollection) -> dict[str, beam.PCollection]:
        if self.poll is not None:
            handler = KeyedModelHandler(PollingHandler(self.model_dir, *self.poll))
        else:
            handler = KeyedModelHandler(VersionedHandler(self.model_dir))
        inference = RunInference(handler, model_metadata_pcoll=self.model_updates)
        main, other = examples | "RunInference" >> inference.with_exception_handling()
        out = main | "Probabilities" >> beam.MapTuple(
            lambda meta, r: (meta, r.inference, r.model_id)
        )
        dead = other.failed_inferences | "FailedBatches" >> beam.FlatMap(_failed_batch_letters)
        return {"classified": out, DEAD_LETTERS: dead}


class ToRow(beam.DoFn):
    """``(meta, probabilities, model_dir)`` → a probability row naming its model's version."""

    def __init__(self, rules: bool, default_model_dir: str) -> None:
        self.rules = rules
        self.default_model_dir = default_model_dir

    def setup(self) -> None:
        self._models: dict[str, tuple[str, str]] = {}
        self._counters: dict[str, Any] = {}

    def _count(self, name: str) -> None:
        if name not in self._counters:
            self._counters[name] = Metrics.counter(METRICS_NAMESPACE, name)
        self._counters[name].inc()

    def _model(self, model_dir: str | None) -> tuple[str, str]:
        model_dir = model_dir or self.default_model_dir
        if model_dir not in self._models:  # a handful of versions per job; read once each
            meta = read_metadata(model_dir)
            self._models[model_dir] = (meta["name"], meta["version"])
        return self._models[model_dir]

    def process(self, element: tuple[dict, Any, str | None]) -> Iterator[dict[str, Any]]:
        meta, probs, model_dir = element
        name, version = self._model(model_dir)
        row = to_row(meta, probs, self.rules, name, version)
        self._count(f"class={row['predicted_class']}")
        if row["rule"]:
            self._count(f"rule={row['rule']}")
        yield row


# --- Sinks ----------------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    # JSON has no NaN; null is what BigQuery and every JSON reader understand.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def row_message(row: dict[str, Any]) -> bytes:
    """A probability row → the JSON message body (the batch Parquet columns, in order)."""
    return json.dumps({k: _json_safe(row.get(k)) for k in PROBABILITY_COLUMN_NAMES}).encode()


def density_message(row: dict[str, Any]) -> bytes:
    """A sky-density row → JSON message body."""
    return json.dumps(row).encode()


def build_streaming(p: beam.Pipeline, args: argparse.Namespace) -> dict[str, beam.PCollection]:
    """Add the streaming job to ``p``.

    Parameters
    ----------
    p
        A streaming pipeline.
    args
        Parsed ``stampflow run --streaming`` flags.

    Returns
    -------
    dict
        ``rows``, ``dead_letters``, ``density`` and ``skipped`` PCollections (for tests).
    """
    meta = read_metadata(args.model)
    rules = args.rules == "alerce"
    ttl_s = args.state_ttl_hours * 3600.0

    messages = p | "ReadFromPubSub" >> beam.io.ReadFromPubSub(
        subscription=args.input_subscription,
        with_attributes=True,
        timestamp_attribute=args.timestamp_attribute,
    )
    decoded = (
        messages
        | "ToContainer" >> beam.Map(message_to_container)
        | "Decode" >> beam.ParDo(DecodeAlerts()).with_outputs(DEAD_LETTERS, main=ALERTS)
    )
    model_updates, poll = None, None
    mode = watch_mode(args)
    if mode == "side-input":
        model_updates = p | "WatchModel" >> WatchModel(args.model_watch, args.model_watch_interval)
    elif mode == "poll":
        poll = (args.model_watch, args.model_watch_interval)
    out = classify_alerts(
        decoded[ALERTS],
        model_dir=args.model,
        features=meta["features"],
        select=args.select,
        rules=rules,
        stamp_policy=args.stamp_policy,
        hold_s=args.hold_seconds,
        ttl_s=ttl_s,
        window_s=args.window_minutes * 60.0,
        lateness_s=args.allowed_lateness_minutes * 60.0,
        early_s=args.early_firing_seconds,
        nside=args.healpix_nside,
        model_updates=model_updates,
        poll=poll,
    )
    dead = (decoded[DEAD_LETTERS], out[DEAD_LETTERS]) | "AllDeadLetters" >> beam.Flatten()
    out[DEAD_LETTERS] = dead

    if args.output_topic:
        _ = (
            out["rows"]
            | "RowToJson" >> beam.Map(row_message)
            | "PublishRows" >> beam.io.WriteToPubSub(args.output_topic)
        )
    if args.dead_letter_topic:
        _ = (
            dead
            | "DeadToJson" >> beam.Map(lambda r: to_json_line(r).encode())
            | "PublishDeadLetters" >> beam.io.WriteToPubSub(args.dead_letter_topic)
        )
    if args.density_topic:
        _ = (
            out["density"]
            | "DensityToJson" >> beam.Map(density_message)
            | "PublishDensity" >> beam.io.WriteToPubSub(args.density_topic)
        )
    if args.bigquery_dataset:
        from pipeline.bigquery import STREAMING_INSERTS, WriteTables
        from pipeline.run_job import BigQueryTarget

        target = BigQueryTarget.parse(args.bigquery_dataset, args.bigquery_emulator)
        _ = {
            "probabilities": out["rows"],
            "sky_density": out["density"],
            "dead_letters": dead,
        } | "WriteBigQuery" >> WriteTables(
            target.project,
            target.dataset,
            run_id=None,  # streaming writes straight into the tables (pipeline.bigquery)
            method=STREAMING_INSERTS,
            emulator_endpoint=target.endpoint,
        )
    return out


def classify_alerts(
    alerts: beam.PCollection,
    *,
    model_dir: str,
    features: list[str],
    select: str = "first",
    rules: bool = True,
    stamp_policy: str = "drop",
    hold_s: float = 5.0,
    ttl_s: float = 86400.0,
    window_s: float = 600.0,
    lateness_s: float = 3600.0,
    early_s: float = 5.0,
    nside: int = 64,
    model_updates: beam.PCollection | None = None,
    poll: tuple[str, float] | None = None,
) -> dict[str, beam.PCollection]:
    """Decoded alerts → rows, density, skipped and dead letters (the part TestStream tests drive).

    ``model_updates`` / ``poll`` follow new model versions (see :class:`ClassifyStreaming`).

    Returns
    -------
    dict
        ``rows`` (probability rows with extras), ``density`` (:class:`SkyDensityWindows`),
        ``skipped`` ``(reason, candid)`` and ``dead_letters`` (featurize and inference stages).
    """
    timed = alerts | "EventTime" >> beam.Map(with_event_time)
    unique = timed | "DropDuplicates" >> DropDuplicateAlerts(ttl_s)
    selected = unique["alerts"] | "SelectFirstDetections" >> SelectFirstDetectionsStreaming(
        select, hold_s, ttl_s
    )
    featurized = selected["alerts"] | "Featurize" >> Featurize(
        features, stamp_policy, key=alert_meta
    )
    classified = featurized.examples | "Classify" >> ClassifyStreaming(
        model_dir, model_updates, poll
    )
    rows = classified["classified"] | "ApplyRules" >> beam.ParDo(ToRow(rules, model_dir))
    density = rows | "SkyDensity" >> SkyDensityWindows(window_s, lateness_s, early_s, nside)
    dead = (featurized[DEAD_LETTERS], classified[DEAD_LETTERS]) | "ClassifyDead" >> beam.Flatten()
    skipped = (unique[SKIPPED], selected[SKIPPED]) | "AllSkipped" >> beam.Flatten()
    return {"rows": rows, "density": density, SKIPPED: skipped, DEAD_LETTERS: dead}


# --- Running --------------------------------------------------------------------------------------
def streaming_runner(args: argparse.Namespace) -> str:
    """The runner a streaming run uses (batch's default FnApiRunner becomes the direct runner)."""
    return STREAMING_RUNNER if args.runner == "FnApiRunner" else args.runner


def streaming_options(args: argparse.Namespace, beam_args: list[str]) -> PipelineOptions:
    """Pipeline options for a streaming run (streaming on; batch's default runner swapped)."""
    options = PipelineOptions(beam_args, runner=streaming_runner(args))
    options.view_as(StandardOptions).streaming = True
    return options


def _check(args: argparse.Namespace) -> None:
    if watch_mode(args) == "side-input" and streaming_runner(args) in _NO_WATCH_RUNNERS:
        # Beam's Python direct runners cannot expand WatchFilePattern's Watch/PeriodicImpulse
        # (splittable DoFns), and their side inputs ignore the discarding trigger it relies on.
        raise SystemExit(
            "stampflow run --streaming: --model-watch-mode side-input needs a runner with "
            "splittable DoFns and slowly-updating side inputs (DataflowRunner); on the local "
            "direct runners use --model-watch-mode poll (the default there)"
        )
    if not args.input_subscription:
        raise SystemExit("stampflow run --streaming: --input-subscription is required")
    if not (args.output_topic or args.bigquery_dataset):
        raise SystemExit("stampflow run --streaming: give --output-topic and/or --bigquery-dataset")


#: Direct runners whose Pub/Sub reader blocks the whole job while it waits for messages.
_DIRECT_RUNNERS = frozenset({"BundleBasedDirectRunner", "DirectRunner"})
#: Pub/Sub pull deadline on those runners [s]; the emulator answers an empty pull ~1 s before it.
LOCAL_PULL_TIMEOUT_S = 2.0


class _ShortPull:
    """A SubscriberClient whose ``pull`` waits at most ``timeout_s`` (everything else delegated).

    The emulator answers an idle pull with no messages just before the deadline; real Pub/Sub may
    instead raise ``DeadlineExceeded``, which is answered here as an empty pull too (the direct
    runner would otherwise fail the job).
    """

    def __init__(self, client: Any, timeout_s: float) -> None:
        self._client, self._timeout_s = client, timeout_s

    def pull(self, *args: Any, **kwargs: Any) -> Any:
        from google.api_core.exceptions import DeadlineExceeded
        from google.cloud.pubsub_v1.types import PullResponse

        kwargs["timeout"] = min(kwargs.get("timeout") or self._timeout_s, self._timeout_s)
        try:
            return self._client.pull(*args, **kwargs)
        except DeadlineExceeded:
            return PullResponse()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def shorten_direct_runner_pulls(timeout_s: float = LOCAL_PULL_TIMEOUT_S) -> bool:
    """Make the Python direct runner's Pub/Sub reader pull with a short deadline.

    The direct runner reads Pub/Sub in its single scheduling loop with a 30 s pull deadline and
    fires no processing-time timers while a pull waits. When the subscription goes quiet (the
    end of a night, a lull), the last first detections then wait up to 30 s past their hold:
    measured p99 33 s at any publish rate. With a 2 s deadline the loop comes round every ~1 s.
    Only the local runner is affected; Dataflow reads Pub/Sub its own way.

    Returns
    -------
    bool
        True when the runner's reader was found and wrapped (idempotent).
    """
    try:
        from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator
    except ImportError:  # a Beam without the Python direct runner's evaluator
        return False
    if getattr(_PubSubReadEvaluator, "_stampflow_short_pull", False):
        return True
    original = getattr(_PubSubReadEvaluator, "_get_subscriber_client", None)
    if original is None:
        return False

    def short(cls: Any, transform: Any) -> _ShortPull:
        return _ShortPull(original.__func__(cls, transform), timeout_s)

    _PubSubReadEvaluator._get_subscriber_client = classmethod(short)
    _PubSubReadEvaluator._stampflow_short_pull = True
    return True


def start_streaming(
    args: argparse.Namespace, beam_args: list[str], test_pipeline: beam.Pipeline | None = None
) -> beam.runners.runner.PipelineResult:
    """Build and start the streaming job; returns at once with the running job's result."""
    _check(args)
    if args.bigquery_dataset:
        from pipeline.bigquery import ensure_tables, make_client
        from pipeline.run_job import BigQueryTarget

        target = BigQueryTarget.parse(args.bigquery_dataset, args.bigquery_emulator)
        ensure_tables(make_client(target.project, target.endpoint), target.dataset, target.project)
    if streaming_runner(args) in _DIRECT_RUNNERS:
        shorten_direct_runner_pulls()
    p = test_pipeline or beam.Pipeline(options=streaming_options(args, beam_args))
    build_streaming(p, args)
    return p.run()


def counters(result: Any) -> dict[str, int]:
    """The job's ``stampflow`` counters (committed, else attempted) by name."""
    out: dict[str, int] = {}
    try:
        for c in result.metrics().query()["counters"]:
            value = c.committed if c.committed is not None else c.attempted
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    except Exception:  # metrics are a courtesy after cancel; the outputs are the product
        pass
    return out


def streaming_summary(
    counts: dict[str, int], model: dict[str, Any], runtime_s: float, state: str
) -> dict[str, Any]:
    """The batch summary's keys (so ``stampflow run`` prints it the same way) from the counters.

    A stream never reconciles: alerts still held, batched or in flight when the job stops are in
    no count, so ``reconciled`` is None.
    """
    dead = {
        k[len("dead_letters_") :]: v for k, v in counts.items() if k.startswith("dead_letters_")
    }
    skipped = {k[len("skipped_") :]: v for k, v in counts.items() if k.startswith("skipped_")}
    per_class = {c: counts.get(f"class={c}", 0) for c in CLASS_NAMES}
    records_in = counts.get("alerts_decoded", 0) + dead.get("decode", 0)
    return {
        "state": state,
        "records_in": records_in,
        "classified": sum(per_class.values()),
        "skipped": skipped,
        "dead_letters": dead,
        "per_class": per_class,
        "rules_fired": {k[5:]: v for k, v in sorted(counts.items()) if k.startswith("rule=")},
        "model_name": model["name"],
        "model_version": model["version"],
        "runtime_s": round(runtime_s, 3),
        "alerts_per_s": round(records_in / runtime_s, 1) if runtime_s > 0 else None,
        "reconciled": None,
        "counters": counts,
    }


def run_streaming(args: argparse.Namespace, beam_args: list[str], test_pipeline=None) -> dict:
    """Run the streaming job until it ends, is interrupted or ``--max-run-seconds`` pass.

    Returns
    -------
    dict
        :func:`streaming_summary` of the job (the batch summary's keys plus ``state``).
    """
    started = time.perf_counter()
    result = start_streaming(args, beam_args, test_pipeline)
    try:
        if args.max_run_seconds is None:
            result.wait_until_finish()
        else:
            deadline = started + args.max_run_seconds
            while time.perf_counter() < deadline and not _terminal(result):
                time.sleep(min(1.0, max(0.0, deadline - time.perf_counter())))
    except KeyboardInterrupt:  # Ctrl-C is how a local streaming job is meant to end
        pass
    finally:
        if not _terminal(result):
            result.cancel()
    return streaming_summary(
        counters(result),
        read_metadata(args.model),
        time.perf_counter() - started,
        str(result.state),
    )


def _terminal(result: Any) -> bool:
    from apache_beam.runners.runner import PipelineState

    return PipelineState.is_terminal(result.state)
