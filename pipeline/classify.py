"""Stages *Classify* and *ApplyRules*, the same in batch and streaming.

``Featurize`` keys every example by :func:`alert_meta` (what the row, the rules and a dead letter
need of the alert), so nothing has to be joined back after RunInference::

    (meta, example) ─ Classify: RunInference(VersionedHandler | PollingHandler | OnnxHandler)
        ─▶ (meta, probabilities [5], model directory) ─ ApplyRules ─▶ probability rows
        ─▶ dead letters (stage inference: a batch the model could not run)

The model directory travels with each result, so a row names the version that computed it even
while a streaming job swaps versions (``--model-watch``, :mod:`model.handler`); batch runs always
name ``--model``.

Known solar-system objects go around the network. With ``--rules alerce`` an alert its survey's
adapter calls a known one (ZTF ``ssdistnr >= 0``, Rubin an ``ssObjectId``; ``known_sso`` in the
row fields) is an asteroid whatever the CNN says (SPEC §8: "without asking the CNN"), so it
is flagged in its example and the model handler answers it without calling the network: its
probabilities are :data:`model.handler.KNOWN_SSO_PROBABILITIES` (asteroid 1, the rest 0) and its
``rule`` column is ``known_solar_system_object``, as before. It has been featurised like every
alert, so the same stamps and features dead letters arise, and it names the model version being
served, like every row. ``--rules none``
classifies everything with the network.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelMetadata, RunInference

from model.handler import (
    KNOWN_SSO_KEY,
    NullHandler,
    OnnxHandler,
    PollingHandler,
    VersionedHandler,
    read_metadata,
)
from pipeline.options import ModelInfo, ModelWatch
from transforms.alerts import Alert
from transforms.dead_letters import REREAD_PATH, dead_letter
from transforms.schema import (
    PROBABILITY_COLUMNS,
    STAGE_INFERENCE,
    STAMP_KINDS,
    TAG_CLASSIFIED,
    TAG_DEAD_LETTERS,
)
from transforms.surveys import get_survey

__all__ = [
    "ApplyRules",
    "Classify",
    "ExceptionInfo",
    "WatchModel",
    "alert_meta",
    "failed_batch_letters",
    "failure_reason",
    "to_row",
]


#: Row fields copied from the alert.
_ALERT_FIELDS = ("objectId", "candid", "jd", "ra", "dec", "fid", "magpsf", "survey", "band")


def alert_meta(alert: Alert) -> dict[str, Any]:
    """What the output row, the rules and a dead letter need from an alert (RunInference's key).

    Parameters
    ----------
    alert
        A featurised alert (slim in batch: ``raw`` empty, ``path`` names its file).

    Returns
    -------
    dict
        ``objectId, candid, survey``, the survey's row fields (``jd, ra, dec, fid, band,
        magpsf``, its rule fields and ``known_sso``: :meth:`transforms.surveys.Survey.row_fields`),
        ``source``, ``path``, ``raw`` and the cutouts as stored (for the SN page).
    """
    meta = {
        "objectId": alert.object_id,
        "candid": alert.candid,
        "survey": alert.survey.name,
        **alert.survey.row_fields(alert.record),
        "source": alert.source,
        "path": alert.path,
        "raw": alert.raw,
        "cutouts": {k: alert.cutout_bytes(k) for k in STAMP_KINDS},
    }
    return meta


#: What ``with_exception_handling`` puts beside a failed element: the exception's class, its
#: ``repr`` and the formatted traceback lines (Beam's ``core.ExceptionInfo``).
ExceptionInfo = tuple[type, str, list[str]]


def failure_reason(info: ExceptionInfo) -> str:
    """``"ExceptionClass: message"`` from Beam's exception triple.

    Parameters
    ----------
    info
        ``(exception class, repr, formatted traceback lines)`` as ``with_exception_handling``
        emits it.

    Returns
    -------
    str
        The class name and the exception's ``str``, read from the traceback line that starts
        with the class (``module.Class: message``; notes added with ``add_note`` follow it); the
        ``repr`` when no line does.
    """
    exc_class, exc_repr, traceback_lines = info
    heads = (f"{exc_class.__module__}.{exc_class.__qualname__}", exc_class.__qualname__)
    for line in reversed(traceback_lines):
        for head in heads:
            if line.startswith(head + ":"):
                return f"{exc_class.__name__}: {line[len(head) + 1 :].strip()}"
    return f"{exc_class.__name__}: {exc_repr}"


def failed_batch_letters(
    failed: tuple[list[tuple[dict[str, Any], dict[str, Any]]], ExceptionInfo],
) -> Iterator[dict[str, Any]]:
    """One ``inference`` dead letter per example of a batch the model failed on.

    ``failed`` is an element of RunInference's ``failed_inferences``: the keyed batch and Beam's
    exception triple (the class, not an exception object: Beam's dead-letter format; Beam 2.78
    declares it, and an ``Exception`` hint no longer type-checks). Slim alerts' letters name their
    file (:data:`transforms.dead_letters.REREAD_PATH`); the batch dead-letter sink reads their
    bytes back.
    """
    batch, info = failed
    reason = f"model: {failure_reason(info)}"
    for meta, _ in batch:
        letter = dead_letter(
            STAGE_INFERENCE, reason, meta["source"], meta["raw"], meta["objectId"], meta["candid"]
        )
        if not meta["raw"] and meta.get("path"):
            letter[REREAD_PATH] = meta["path"]
        yield letter


def _flag_known_sso(item: tuple[dict[str, Any], dict[str, Any]]) -> tuple[dict, dict]:
    meta, example = item
    if meta.get("known_sso"):
        example = {**example, KNOWN_SSO_KEY: True}
    return meta, example


class _KeyedHandler(KeyedModelHandler):
    """``KeyedModelHandler`` whose byte metric counts the model inputs only.

    Beam's counts the keys too by pickling them, once per batch: here the keys are the rows'
    metadata with their compressed cutouts, so that pickling cost ~2% of a night's CPU for a
    metric (``RunInference`` ``num_bytes``) about the model's inputs.
    """

    def get_num_bytes(self, batch: Sequence[tuple[Any, Any]]) -> int:
        return self._unkeyed.get_num_bytes([example for _, example in batch])


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


class Classify(beam.PTransform):
    """Keyed examples → ``classified`` ``(meta, probabilities, model_dir)`` and ``dead_letters``.

    Parameters
    ----------
    model
        The model to serve (from the start, in streaming).
    watch
        Follow new versions (streaming): by RunInference's side input (:class:`WatchModel`) or by
        polling in the handler; None serves ``model`` only.
    known_sso_around
        Send known solar-system objects around the network (``--rules alerce``; see the module
        docstring).
    runtime
        ``tensorflow``, ``onnx`` (:class:`model.handler.OnnxHandler`: the model's ONNX export
        with onnxruntime) or ``null`` (:class:`model.handler.NullHandler`: fixed probabilities).
    device, jit_compile, mixed_precision
        Batch sizes for ``cpu`` or ``gpu``; XLA; half-precision compute (see
        :class:`model.handler.StampClassifierHandler`).
    """

    def __init__(
        self,
        model: ModelInfo,
        watch: ModelWatch | None = None,
        known_sso_around: bool = False,
        runtime: str = "tensorflow",
        device: str = "cpu",
        jit_compile: bool = False,
        mixed_precision: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.watch, self.known_sso_around = model, watch, known_sso_around
        self.runtime = runtime
        self.handler_args = {"device": device, "jit_compile": jit_compile}
        if mixed_precision:
            self.handler_args["mixed_precision"] = True

    def expand(self, examples: beam.PCollection) -> dict[str, beam.PCollection]:
        if self.known_sso_around:
            # Flag them in the example; the handler answers them without the network. (Split
            # into two branches and flattened again, the FnApiRunner materialised every example
            # between stages: 1.3 -> 3.1 GB peak on a 50k night.)
            examples = examples | "FlagKnownSSO" >> beam.Map(_flag_known_sso)
        updates = None
        if self.runtime == "null":
            handler = NullHandler(self.model.directory, **self.handler_args)
        elif self.runtime == "onnx":  # --model-watch is refused with it (pipeline.options)
            handler = OnnxHandler(self.model.directory, **self.handler_args)
        elif self.watch is not None and self.watch.mode == "poll":
            handler = PollingHandler(
                self.model.directory,
                self.watch.pattern,
                self.watch.interval_s,
                **self.handler_args,
            )
        else:
            handler = VersionedHandler(self.model.directory, **self.handler_args)
            if self.watch is not None:
                updates = examples.pipeline | "WatchModel" >> WatchModel(
                    self.watch.pattern, self.watch.interval_s
                )
        inference = RunInference(_KeyedHandler(handler), model_metadata_pcoll=updates)
        main, other = examples | "RunInference" >> inference.with_exception_handling()
        classified = main | "Probabilities" >> beam.MapTuple(
            lambda meta, r: (meta, r.inference, r.model_id)
        )
        dead = other.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch_letters)
        return {TAG_CLASSIFIED: classified, TAG_DEAD_LETTERS: dead}


def to_row(meta: dict[str, Any], probs: Any, rules: bool, model: ModelInfo) -> dict[str, Any]:
    """One output row (plus the extra fields the SN report needs) from a classification.

    Parameters
    ----------
    meta
        From :func:`alert_meta`.
    probs
        The network's probabilities, :data:`~transforms.schema.CLASS_NAMES` order.
    rules
        Apply ALeRCE's rules (``--rules alerce``) or not.
    model
        The model that computed ``probs`` (its name and version go into the row).

    Returns
    -------
    dict
        Every :data:`transforms.schema.PROBABILITY_COLUMN_NAMES` column, the rule fields, the
        compressed cutouts and the alert's ``source``, ``path`` and ``raw`` bytes.
    """
    survey = get_survey(meta.get("survey") or "ztf")
    predicted, rule = survey.apply_rules(probs, meta, enabled=rules)
    row = {k: meta.get(k) for k in _ALERT_FIELDS}
    row.update({col: float(p) for col, p in zip(PROBABILITY_COLUMNS, probs, strict=True)})
    row.update(
        predicted_class=predicted, rule=rule, model_name=model.name, model_version=model.version
    )
    row.update({f: meta.get(f) for f in survey.extra_fields})
    # For the SN page: the stamps, and where the alert's history can be read (its own bytes in
    # streaming; its file again in batch, where selection dropped it).
    row.update(cutouts=meta["cutouts"], source=meta["source"], path=meta["path"], raw=meta["raw"])
    return row


class _ToRow(beam.DoFn):
    """``(meta, probabilities, model_dir)`` → a row naming the version that computed it."""

    def __init__(self, rules: bool, model: ModelInfo) -> None:
        self.rules, self.model = rules, model

    def setup(self) -> None:
        # A handful of versions per job: each directory's metadata is read once per worker.
        self._models: dict[str, ModelInfo] = {self.model.directory: self.model}

    def _model(self, model_dir: str | None) -> ModelInfo:
        model_dir = model_dir or self.model.directory
        if model_dir not in self._models:
            self._models[model_dir] = ModelInfo.from_metadata(model_dir, read_metadata(model_dir))
        return self._models[model_dir]

    def process(self, element: tuple[dict, Any, str | None]) -> Iterator[dict[str, Any]]:
        meta, probs, model_dir = element
        yield to_row(meta, probs, self.rules, self._model(model_dir))


class ApplyRules(beam.PTransform):
    """``(meta, probabilities, model_dir)`` → probability rows with ALeRCE's rules applied.

    Parameters
    ----------
    rules
        ``--rules alerce`` (True) or ``none``.
    model
        The model served from the start; other versions' metadata is read when they appear.
    """

    def __init__(self, rules: bool, model: ModelInfo) -> None:
        super().__init__()
        self.rules, self.model = rules, model

    def expand(self, classified: beam.PCollection) -> beam.PCollection:
        return classified | "ToRow" >> beam.ParDo(_ToRow(self.rules, self.model))
