"""``stampflow run``'s options: parsed once, validated once, typed, before any work starts.

:func:`parse` (the command line) and :func:`from_namespace` (an ``argparse`` namespace) return a
frozen :class:`RunOptions`; nothing below them sees ``argparse``. A user's mistake raises
:class:`OptionsError` with one line saying what is wrong, which the command line prints before
exiting with status 2:

- an ``--input`` that matches no file, an ``--output`` that cannot be written (tried with a probe
  file, on any Beam filesystem), a ``--model`` that is not an exported model;
- a Pub/Sub subscription or topic that is not ``projects/P/subscriptions/S`` /
  ``projects/P/topics/T`` (Beam's own rules), a BigQuery target that is not ``PROJECT:DATASET``;
- flags that do not go together (``--model-watch-mode side-input`` on a local runner, streaming
  without an output, ``--model-watch`` with ``--runtime onnx``);
- ``--runtime onnx`` with a model directory that has no ``model.onnx``, or one exported from
  another version of the model (run ``stampflow export-onnx MODEL``).

The runner is resolved here, once: ``FnApiRunner`` for batch and ``BundleBasedDirectRunner`` for
streaming unless ``--runner`` names one; so are the model-watch mode and the BigQuery target.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from model.handler import (
    METADATA_FILE,
    ModelDirError,
    model_survey,
    onnx_file_problem,
    read_metadata,
)
from pipeline.argtypes import non_negative_float, positive_float, positive_int, power_of_two
from pipeline.errors import OptionsError
from pipeline.writable import check_output
from transforms.schema import (
    DEFAULT_HOLD_S,
    DEFAULT_STATE_TTL_S,
    EVENT_TIME_ATTRIBUTE,
    SELECT_MODES,
    STAMP_SIZE_POLICIES,
    SURVEY_AUTO,
    SURVEY_NAMES,
)
from transforms.sources import ReadError, expand_pattern

__all__ = [
    "BATCH_RUNNER",
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_LSST",
    "LOCAL_RUNNERS",
    "NO_TNS_REPORTER",
    "STREAMING_RUNNER",
    "WATCH_MODES",
    "BigQueryTarget",
    "ModelInfo",
    "ModelWatch",
    "OptionsError",
    "RunOptions",
    "StreamingOptions",
    "TnsReporter",
    "add_arguments",
    "check_schema_dirs",
    "from_namespace",
    "parse",
]

DEFAULT_MODEL = str(Path(__file__).resolve().parents[1] / "model" / "default")
#: The shipped Rubin model (``stampflow-rubin-sim``), used for LSST alerts when no --model is given.
DEFAULT_MODEL_LSST = str(Path(__file__).resolve().parents[1] / "model" / "default_lsst")
#: The batch runner when ``--runner`` is not given: in-process, nothing downloaded.
BATCH_RUNNER = "FnApiRunner"
#: The streaming runner when ``--runner`` is not given: the Python direct runner, named so it
#: never tries to download Prism; it runs Pub/Sub, state, timers and TestStream.
STREAMING_RUNNER = "BundleBasedDirectRunner"
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
#: Local runners that cannot run WatchFilePattern (a splittable DoFn behind a side input).
NO_WATCH_RUNNERS = frozenset({"FnApiRunner", "BundleBasedDirectRunner", "DirectRunner"})
#: Direct runners whose Pub/Sub reader blocks the whole job while it waits for messages.
DIRECT_RUNNERS = frozenset({"BundleBasedDirectRunner", "DirectRunner"})
#: ``--model-watch-mode`` choices.
WATCH_MODES = ("auto", "side-input", "poll")
#: ``--runtime`` choices.
RUNTIMES = ("tensorflow", "onnx", "null")
#: Prefix of the probe file that proves ``--output`` is writable (deleted at once).
_DATASET = re.compile(r"^[A-Za-z0-9_]{1,1024}$")


# --- The typed options ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """An exported model directory and its ``stampflow_model.json``, read once.

    Attributes
    ----------
    directory
        The model directory (local or any Beam filesystem).
    name, version
        Recorded in every output row.
    features
        The feature order the model was trained on.
    metadata
        The whole metadata document.
    """

    directory: str
    name: str
    version: str
    features: tuple[str, ...]
    metadata: dict[str, Any] = field(repr=False, compare=False)

    @property
    def survey(self) -> str:
        """The survey whose alerts the model classifies (``ztf`` when its metadata is older)."""
        return model_survey(self.metadata)

    @classmethod
    def read(cls, directory: str) -> ModelInfo:
        """Read a model directory's metadata (raises :class:`OptionsError` when it is not one)."""
        try:
            meta = read_metadata(directory)
        except ModelDirError as e:
            raise OptionsError(f"--model: {e}") from None
        return cls.from_metadata(directory, meta)

    @classmethod
    def from_metadata(cls, directory: str, meta: dict[str, Any]) -> ModelInfo:
        """The model in ``directory`` whose ``stampflow_model.json`` is ``meta`` (already read)."""
        return cls(directory, meta["name"], meta["version"], tuple(meta["features"]), meta)

    @property
    def label(self) -> str:
        """``name version``, as the SN page and the summary print it."""
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class ModelWatch:
    """How a streaming job follows new model versions (``--model-watch``).

    Attributes
    ----------
    pattern
        Glob of the version directories' ``stampflow_model.json`` files.
    mode
        ``"side-input"`` (Beam's WatchFilePattern) or ``"poll"`` (the handler looks itself).
    interval_s
        Seconds between looks [s].
    """

    pattern: str
    mode: str
    interval_s: float


@dataclass(frozen=True)
class BigQueryTarget:
    """Where a run writes its tables in BigQuery (see :mod:`pipeline.bigquery`).

    Attributes
    ----------
    project, dataset
        The target dataset.
    run_id
        This run's staging-table suffix (batch); streaming writes straight into the tables.
    endpoint
        An emulator's ``http://127.0.0.1:PORT``; None for Google Cloud.
    """

    project: str
    dataset: str
    run_id: str
    endpoint: str | None = None

    @classmethod
    def parse(cls, spec: str, endpoint: str | None = None) -> BigQueryTarget:
        """``PROJECT:DATASET`` (or ``PROJECT.DATASET``) → a target with a fresh run id."""
        from pipeline.bigquery import new_run_id

        project, sep, dataset = spec.replace(".", ":", 1).partition(":")
        if not sep or not project or not _DATASET.match(dataset):
            raise OptionsError(
                f"--bigquery-dataset wants PROJECT:DATASET (dataset: letters, digits, _), "
                f"got {spec!r}"
            )
        return cls(project, dataset, new_run_id(), endpoint)


@dataclass(frozen=True)
class TnsReporter:
    """Who reports to TNS: the SN page's defaults for its AT report (editable in the page).

    Attributes
    ----------
    group_id
        TNS ``reporting_group_id`` of the reporting group, or None (filled in the page).
    reporter
        The ``reporter`` line ("A. Name, B. Name (Institute) on behalf of ...").
    """

    group_id: int | None = None
    reporter: str = ""


#: No reporter configured: the page asks for one before exporting a TNS report.
NO_TNS_REPORTER = TnsReporter()


@dataclass(frozen=True)
class StreamingOptions:
    """The Pub/Sub side of ``stampflow run --streaming`` (all durations in seconds).

    Attributes
    ----------
    subscription
        ``projects/P/subscriptions/S`` the alerts arrive on.
    output_topic, dead_letter_topic, density_topic
        ``projects/P/topics/T`` for JSON rows, dead letters and windowed sky density (optional).
    window_s, lateness_s, early_s
        Sky-density window, allowed lateness and early-firing delay [s].
    hold_s, ttl_s
        First-detection hold and state lifetime [s] (:mod:`transforms.streaming_state`).
    timestamp_attribute
        Pub/Sub attribute holding the event time, or None (publish time).
    max_run_s
        Cancel the job after this long [s]; None runs until interrupted.
    sn_page_dir
        Write an SN candidates page per sky-density window here, or None (no pages).
    """

    subscription: str
    output_topic: str | None = None
    dead_letter_topic: str | None = None
    density_topic: str | None = None
    window_s: float = 600.0
    lateness_s: float = 3600.0
    early_s: float = 5.0
    hold_s: float = DEFAULT_HOLD_S
    ttl_s: float = DEFAULT_STATE_TTL_S
    timestamp_attribute: str | None = None
    max_run_s: float | None = None
    sn_page_dir: str | None = None


@dataclass(frozen=True)
class RunOptions:
    """Everything ``stampflow run`` needs, validated (see the module docstring).

    Attributes
    ----------
    model
        The model to serve.
    inputs
        Batch: alert files, directories, globs, archives (each matches something).
    output
        Batch: output directory (writable); streaming: None (outputs are topics and tables).
    streaming
        The Pub/Sub options; None for a batch run.
    select, rules, stamp_policy
        ``--select``, ``--rules alerce`` (True) or ``none``, ``--stamp-policy``.
    nside, top_sn
        Sky-density HEALPix resolution and SN candidates reported.
    tns
        The SN page's TNS reporter defaults.
    bigquery
        BigQuery target, or None.
    watch
        Streaming: how new model versions are followed, or None.
    runner
        The Beam runner, resolved.
    beam_args
        Other Beam pipeline options, passed through.
    progress, verbose
        Print progress lines; show library logs.
    runtime
        ``tensorflow`` (the SavedModel), ``onnx`` (its ``model.onnx`` with onnxruntime) or
        ``null`` (fixed probabilities, no TensorFlow: for measuring everything but inference).
    device
        ``cpu`` or ``gpu``, resolved from ``--device auto``: picks the inference batch sizes
        (:data:`model.handler.BATCH_BOUNDS`).
    jit_compile
        Compile the serving function with XLA.
    mixed_precision
        Half-precision compute in the network (``--runtime tensorflow`` only).
    other_models
        Models for other surveys' alerts (``--model`` given once per survey); ``model`` is the
        first given.
    survey
        ``--survey``: ``ztf``, ``lsst``, or ``auto`` (each packet by its schema).
    schema_dirs, schema_registry
        Where wire-format messages' writer schemas are found (``--schema-dir``,
        ``--schema-registry``; :mod:`transforms.wire`).
    """

    model: ModelInfo
    inputs: tuple[str, ...] = ()
    output: str | None = None
    streaming: StreamingOptions | None = None
    select: str = "first"
    rules: bool = True
    stamp_policy: str = "drop"
    nside: int = 64
    top_sn: int = 50
    tns: TnsReporter = NO_TNS_REPORTER
    bigquery: BigQueryTarget | None = None
    watch: ModelWatch | None = None
    runner: str = BATCH_RUNNER
    beam_args: tuple[str, ...] = ()
    progress: bool = True
    verbose: bool = False
    runtime: str = "tensorflow"
    device: str = "cpu"
    jit_compile: bool = False
    mixed_precision: bool = False
    other_models: tuple[ModelInfo, ...] = ()
    survey: str = SURVEY_AUTO
    schema_dirs: tuple[str, ...] = ()
    schema_registry: str = ""

    @property
    def models(self) -> dict[str, ModelInfo]:
        """The model of each survey this run classifies, the first given first."""
        return {m.survey: m for m in (self.model, *self.other_models)}

    @property
    def is_streaming(self) -> bool:
        """True for ``--streaming``."""
        return self.streaming is not None

    @property
    def spread(self) -> bool:
        """Reshuffle selected alerts over workers (distributed runners only)."""
        return self.runner not in LOCAL_RUNNERS

    @property
    def spread_files(self) -> bool:
        """Reshuffle input files over workers: distributed runners, or local worker processes.

        One local process gains nothing from it and pays a shuffle of every file name.
        """
        from apache_beam.options.pipeline_options import DirectOptions

        workers = PipelineOptions(list(self.beam_args)).view_as(DirectOptions).direct_num_workers
        return self.spread or (workers or 1) > 1

    def pipeline_options(self) -> PipelineOptions:
        """Beam's options for this run (the runner, streaming on or off, the pass-through flags)."""
        options = PipelineOptions(list(self.beam_args), runner=self.runner)
        options.view_as(StandardOptions).streaming = self.is_streaming
        return options


# --- Command line ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``stampflow run``'s flags; anything else is passed to Beam as pipeline options."""
    parser.add_argument(
        "--input", nargs="+", default=None, help="alert files, directories, globs, archives"
    )
    parser.add_argument("--output", type=str, default="output", help="output directory")
    parser.add_argument(
        "--model",
        type=str,
        action="append",
        default=None,
        help="exported model dir (default: the shipped models, ZTF's and Rubin's, each for its "
        "survey's alerts); give it once per survey when alerts of several arrive (each model's "
        "metadata names its survey)",
    )
    parser.add_argument(
        "--survey",
        choices=(*SURVEY_NAMES, SURVEY_AUTO),
        default=SURVEY_AUTO,
        help="whose alerts to classify: ztf, lsst (Rubin), or auto (default): each packet by its "
        "schema, alerts of a survey without a --model become dead letters",
    )
    parser.add_argument(
        "--schema-dir",
        action="append",
        default=None,
        help="directory of Rubin alert schemas (lsst.vMAJOR_MINOR.alert.avsc, e.g. the "
        "lsst-alert-packet package's schema/): how wire-format messages and Pitt-Google's "
        "JSON copies are decoded",
    )
    parser.add_argument(
        "--schema-registry",
        type=str,
        default="",
        help="Confluent schema registry URL for wire-format messages (after --schema-dir)",
    )
    parser.add_argument(
        "--select",
        choices=SELECT_MODES,
        default="first",
        help="classify first detections only (default) or every alert (each once)",
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
    parser.add_argument(
        "--healpix-nside", type=power_of_two, default=64, help="sky-density resolution (power of 2)"
    )
    parser.add_argument("--top-sn", type=positive_int, default=50, help="SN candidates to report")
    parser.add_argument(
        "--tns-group-id",
        type=positive_int,
        default=None,
        help="TNS reporting_group_id the SN page's TNS report is filled with (editable there)",
    )
    parser.add_argument(
        "--tns-reporter",
        default="",
        help="the reporter line of the SN page's TNS report "
        '("A. Name (Institute) on behalf of ...")',
    )
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
        default=None,
        help=f"Beam runner (default: {BATCH_RUNNER}, or {STREAMING_RUNNER} with --streaming; "
        "both local, nothing downloaded)",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="tensorflow",
        help="run the model with TensorFlow (default); 'onnx': its ONNX export with onnxruntime "
        "(MODEL/model.onnx, written by stampflow export-onnx; CUDA with onnxruntime-gpu); or "
        "'null': fixed probabilities without TensorFlow, to measure everything around the model "
        "(stampflow bench --null-model)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="inference batch sizes for this device; auto: gpu when the Dataflow options ask "
        "for a worker_accelerator or, on a local runner, when TensorFlow sees a GPU",
    )
    parser.add_argument(
        "--jit-compile",
        action="store_true",
        help="compile the model with XLA (measure it first: stampflow bench --device)",
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="compute the network in float16 (GPU) or bfloat16 (CPU) with float32 weights; "
        "probabilities move by up to a few 1e-3 (measure speed and parity first: stampflow "
        "bench --device; fast on GPUs and on CPUs with bfloat16 units, AVX512-BF16 or AMX)",
    )
    parser.add_argument("--verbose", action="store_true", help="show library logs")
    parser.add_argument(
        "--quiet-progress", action="store_true", help="no progress lines while running"
    )
    parser.add_argument(
        "--streaming", action="store_true", help="read Pub/Sub instead of files (see below)"
    )
    _add_streaming_arguments(parser.add_argument_group("streaming (with --streaming)"))


def _add_streaming_arguments(group: Any) -> None:
    group.add_argument("--input-subscription", default=None, help="projects/P/subscriptions/S")
    group.add_argument("--output-topic", default=None, help="projects/P/topics/T: JSON rows")
    group.add_argument(
        "--dead-letter-topic", default=None, help="projects/P/topics/T: JSON dead letters"
    )
    group.add_argument(
        "--density-topic", default=None, help="projects/P/topics/T: windowed sky density (JSON)"
    )
    group.add_argument(
        "--window-minutes", type=positive_float, default=10.0, help="sky-density window [min]"
    )
    group.add_argument(
        "--allowed-lateness-minutes",
        type=non_negative_float,
        default=60.0,
        help="late rows still update their density window this long after it closes [min]",
    )
    group.add_argument(
        "--early-firing-seconds",
        type=positive_float,
        default=5.0,
        help="processing-time delay of early density panes [s]",
    )
    group.add_argument(
        "--hold-seconds",
        type=non_negative_float,
        default=DEFAULT_HOLD_S,
        help="first detection: wait this long (event and arrival time) for earlier alerts [s]",
    )
    group.add_argument(
        "--state-ttl-hours",
        type=positive_float,
        default=DEFAULT_STATE_TTL_S / 3600.0,
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
        help=f"reload new model versions: glob of their {METADATA_FILE} files (one model: the "
        "--model given, else the survey's shipped one, ZTF's for --survey auto)",
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
        type=positive_float,
        default=60.0,
        help="how often --model-watch looks for a new version [s]",
    )
    group.add_argument(
        "--sn-page-dir",
        default=None,
        metavar="DIR",
        help="also write an SN candidates page (sn_candidates_<window start>.html/.csv, top "
        "--top-sn) per sky-density window into DIR (local or gs://)",
    )
    group.add_argument(
        "--max-run-seconds",
        type=positive_float,
        default=None,
        help="cancel the streaming job after this long (local runs, demos); default: run forever",
    )


def parse(argv: Sequence[str] | None = None) -> RunOptions:
    """Parse and validate ``stampflow run`` arguments (plus Beam options) into :class:`RunOptions`.

    Raises
    ------
    OptionsError
        On a user's mistake (see the module docstring).
    """
    parser = argparse.ArgumentParser(prog="stampflow run")
    add_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    return from_namespace(args, beam_args)


# --- Validation -----------------------------------------------------------------------------------
def check_inputs(patterns: Sequence[str], flag: str = "--input") -> tuple[str, ...]:
    """Every input pattern must match at least one file (a typo is refused, not dead-lettered).

    ``flag`` names the argument in the message.

    Raises
    ------
    OptionsError
        Naming the first pattern that matches nothing.
    """
    for pattern in patterns:
        first = next(iter(expand_pattern(pattern)), None)
        if first is None or isinstance(first, ReadError):
            why = first.reason.split(": ", 1)[-1] if first is not None else "nothing there"
            raise OptionsError(f"{flag}: {why}")
    return tuple(patterns)


def check_pubsub(flag: str, name: str | None, kind: str) -> str | None:
    """A Pub/Sub ``subscription`` or ``topic`` path, validated with Beam's own rules."""
    if name is None:
        return None
    from apache_beam.io.gcp.pubsub import parse_subscription, parse_topic

    try:
        (parse_subscription if kind == "subscription" else parse_topic)(name)
    except ValueError as e:
        raise OptionsError(f"{flag} {name!r}: {e}") from None
    return name


def _watch(args: argparse.Namespace, runner: str) -> ModelWatch | None:
    if not args.model_watch:
        return None
    mode = args.model_watch_mode
    if mode == "auto":
        mode = "poll" if runner in NO_WATCH_RUNNERS else "side-input"
    if mode == "side-input" and runner in NO_WATCH_RUNNERS:
        # Beam's Python direct runners cannot expand WatchFilePattern's Watch/PeriodicImpulse
        # (splittable DoFns), and their side inputs ignore the discarding trigger it relies on.
        raise OptionsError(
            "--model-watch-mode side-input needs a runner with splittable DoFns and "
            "slowly-updating side inputs (DataflowRunner); on the local runners use "
            "--model-watch-mode poll (the default there)"
        )
    return ModelWatch(args.model_watch, mode, args.model_watch_interval)


def _streaming(args: argparse.Namespace) -> StreamingOptions:
    if not args.input_subscription:
        raise OptionsError("--streaming needs --input-subscription projects/P/subscriptions/S")
    if not (args.output_topic or args.bigquery_dataset):
        raise OptionsError("--streaming needs --output-topic and/or --bigquery-dataset")
    return StreamingOptions(
        subscription=check_pubsub("--input-subscription", args.input_subscription, "subscription"),
        output_topic=check_pubsub("--output-topic", args.output_topic, "topic"),
        dead_letter_topic=check_pubsub("--dead-letter-topic", args.dead_letter_topic, "topic"),
        density_topic=check_pubsub("--density-topic", args.density_topic, "topic"),
        window_s=args.window_minutes * 60.0,
        lateness_s=args.allowed_lateness_minutes * 60.0,
        early_s=args.early_firing_seconds,
        hold_s=args.hold_seconds,
        ttl_s=args.state_ttl_hours * 3600.0,
        timestamp_attribute=args.timestamp_attribute,
        max_run_s=args.max_run_seconds,
        sn_page_dir=check_output(args.sn_page_dir, "--sn-page-dir") if args.sn_page_dir else None,
    )


def resolve_device(choice: str, runner: str, beam_args: Sequence[str], runtime: str) -> str:
    """``--device auto`` → ``gpu`` or ``cpu``, decided once where the job is launched.

    Dataflow workers get a GPU when the job asks for one (``worker_accelerator`` in its service
    options); a local run has one when TensorFlow sees it here.
    """
    if choice != "auto":
        return choice
    if any("worker_accelerator" in a for a in beam_args):
        return "gpu"
    if runtime == "tensorflow" and runner in LOCAL_RUNNERS:
        from model.handler import visible_gpus

        return "gpu" if visible_gpus() else "cpu"
    if runtime == "onnx" and runner in LOCAL_RUNNERS:
        from model.handler import CUDA_PROVIDER

        # onnxruntime-gpu lists CUDA even without a card; the handler then logs a warning.
        return "gpu" if CUDA_PROVIDER in _onnx_available_providers() else "cpu"
    return "cpu"


def _onnx_available_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def check_schema_dirs(dirs: Sequence[str]) -> tuple[str, ...]:
    """``--schema-dir`` values, each a directory holding ``.avsc`` files, local or on any Beam
    filesystem (else :class:`OptionsError`). On Dataflow give a ``gs://`` one: workers cannot
    see the launcher's disk."""
    for d in dirs:
        if "://" not in d:
            if not Path(d).is_dir():
                why = "is not a directory" if Path(d).exists() else "does not exist"
                raise OptionsError(f"--schema-dir: {d} {why}")
            continue
        try:
            found = FileSystems.match([f"{d.rstrip('/')}/**.avsc"])[0].metadata_list
        except Exception as e:  # unreachable bucket, no credentials
            raise OptionsError(f"--schema-dir: cannot list {d}: {type(e).__name__}") from None
        if not found:
            raise OptionsError(f"--schema-dir: {d} holds no .avsc files")
    return tuple(dirs)


def check_registry(url: str) -> str:
    """``--schema-registry``: an ``http(s)://`` URL, without its trailing slash."""
    if url and not url.startswith(("http://", "https://")):
        raise OptionsError(f"--schema-registry: {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


def default_models(survey: str) -> list[str]:
    """The shipped models a run uses without ``--model``: the survey's, or both for ``auto``
    (each alert then goes to its survey's model)."""
    shipped = {"ztf": DEFAULT_MODEL, "lsst": DEFAULT_MODEL_LSST}
    if survey in shipped:
        return [shipped[survey]]
    return [d for d in shipped.values() if Path(d, "stampflow_model.json").is_file()]


def _models(dirs: Sequence[str], survey: str, given: bool) -> list[ModelInfo]:
    """Read the ``--model`` directories and check them against ``--survey``."""
    models = [ModelInfo.read(d) for d in dirs]
    seen: dict[str, str] = {}
    for m in models:
        if m.survey not in SURVEY_NAMES:
            raise OptionsError(f"--model {m.directory}: unknown survey {m.survey!r} in metadata")
        if m.survey in seen:
            raise OptionsError(
                f"--model: {seen[m.survey]} and {m.directory} both classify {m.survey} alerts"
            )
        seen[m.survey] = m.directory
    if survey != SURVEY_AUTO:
        if survey not in seen:
            hint = "" if given else " (add --model with one)"
            raise OptionsError(
                f"--survey {survey}: no --model classifies {survey} alerts "
                f"({', '.join(f'{d} is for {s}' for s, d in seen.items())}){hint}"
            )
        others = [d for s, d in seen.items() if s != survey]
        if others:
            raise OptionsError(f"--survey {survey}: --model {others[0]} is not a {survey} model")
    return models


def from_namespace(args: argparse.Namespace, beam_args: Sequence[str] = ()) -> RunOptions:
    """Validate parsed flags (see :func:`add_arguments`) into :class:`RunOptions`.

    Checks run cheapest first; the model is read once and the output probed last.

    Raises
    ------
    OptionsError
        On a user's mistake (see the module docstring).
    """
    streaming = _streaming(args) if args.streaming else None
    runner = args.runner or (STREAMING_RUNNER if streaming else BATCH_RUNNER)
    watch = _watch(args, runner) if streaming else None
    if args.runtime == "null" and args.model_watch:
        raise OptionsError("--model-watch follows real models; --runtime null serves none")
    if args.runtime == "onnx" and args.model_watch:
        raise OptionsError(
            "--model-watch is not supported with --runtime onnx yet; use --runtime tensorflow"
        )
    if args.mixed_precision and args.runtime != "tensorflow":
        raise OptionsError(f"--mixed-precision applies to --runtime tensorflow, not {args.runtime}")
    if not streaming and args.model_watch:
        raise OptionsError("--model-watch follows new versions in a --streaming run only")
    bigquery = None
    if args.bigquery_dataset:
        bigquery = BigQueryTarget.parse(args.bigquery_dataset, args.bigquery_emulator)
    inputs: tuple[str, ...] = ()
    if not streaming:
        if not args.input:
            raise OptionsError("--input is required (or --streaming)")
        inputs = check_inputs(args.input)
    schema_dirs = check_schema_dirs(args.schema_dir or ())
    # --model-watch follows one model: without --model it starts from the survey's shipped one
    # (ZTF's for auto, as before a Rubin model shipped).
    defaults = default_models(args.survey)[:1] if args.model_watch else default_models(args.survey)
    models = _models(args.model or defaults, args.survey, bool(args.model))
    if len(models) > 1 and args.model_watch:
        raise OptionsError("--model-watch follows one model; give a single --model with it")
    if args.runtime == "onnx":
        for model in models:
            problem = onnx_file_problem(model.directory, model.metadata)
            if problem:
                raise OptionsError(f"--runtime onnx: {problem}")
    output = None if streaming else check_output(args.output)
    return RunOptions(
        model=models[0],
        other_models=tuple(models[1:]),
        survey=args.survey,
        schema_dirs=schema_dirs,
        schema_registry=check_registry(args.schema_registry),
        inputs=inputs,
        output=output,
        streaming=streaming,
        select=args.select,
        rules=args.rules == "alerce",
        stamp_policy=args.stamp_policy,
        nside=args.healpix_nside,
        top_sn=args.top_sn,
        tns=TnsReporter(args.tns_group_id, args.tns_reporter),
        bigquery=bigquery,
        watch=watch,
        runner=runner,
        beam_args=tuple(beam_args),
        progress=not args.quiet_progress,
        verbose=args.verbose,
        runtime=args.runtime,
        device=resolve_device(args.device, runner, beam_args, args.runtime),
        jit_compile=args.jit_compile,
        mixed_precision=args.mixed_precision,
    )
