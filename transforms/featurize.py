"""Beam adapter: decoded alerts -> raw model inputs keyed by ``candid``, or dead letters.

Flow: ``beam.BatchElements`` groups alerts so the sky-coordinate transform runs once per batch;
:class:`FeaturizeBatchDoFn` has each alert's survey adapter (:mod:`transforms.surveys`) decode its
three cutouts (:mod:`transforms.stamps`) into a raw ``[S, S, 3]`` cube under a size policy
(``drop`` or ``pad``; S = 63 for ZTF, 30 for Rubin), computes the raw feature vector (ZTF:
:mod:`transforms.features`; Rubin: :mod:`transforms.surveys.lsst`) and emits::

    (candid, {"features": float32 [F], "stamps": float32 [S, S, 3]})

One step featurises one survey's alerts for that survey's model; an alert of another survey is a
``features`` dead letter (the pipeline routes each survey to its own step, so none arrive).

Features are imputed but neither clipped nor standardised and stamps are neither cropped nor
normalised: the tf.Transform graph (:mod:`transforms.preprocess`) does both, the same way in
training, batch, streaming and serving. Anything that cannot be featurised becomes a dead letter
on the ``dead_letters`` tagged output (stage ``stamps`` or ``features``) and is counted.

The work is done by the pure :func:`featurize_alerts`; the DoFn only adapts it to Beam.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.alerts import Alert
from transforms.dead_letters import alert_dead_letter
from transforms.features import sky_coordinates
from transforms.schema import (
    FEATURES_PRODUCTION,
    METRICS_NAMESPACE,
    RAW_FEATURES_KEY,
    RAW_STAMPS_KEY,
    STAGE_FEATURES,
    STAGE_STAMPS,
    STAMP_SIZE_POLICIES,
    TAG_DEAD_LETTERS,
    TAG_EXAMPLES,
)
from transforms.stamps import StampError
from transforms.surveys import ZTF, Survey

__all__ = [
    "Featurize",
    "FeaturizeBatchDoFn",
    "FeaturizeResult",
    "RouteBySurvey",
    "featurize_alerts",
    "no_model_reason",
]

#: Metric names (namespace :data:`~transforms.schema.METRICS_NAMESPACE`). Imputations are counted
#: per feature as ``featurize_imputed_<feature>``.
METRIC_IN = "featurize_alerts_in"
METRIC_OUT = "featurize_examples_out"
METRIC_DEAD_STAMPS = "featurize_dead_letters_stamps"
METRIC_DEAD_FEATURES = "featurize_dead_letters_features"
METRIC_PADDED = "featurize_stamps_padded"
METRIC_IMPUTED_PREFIX = "featurize_imputed_"


def no_model_reason(survey: str, served: Sequence[str]) -> str:
    """The dead-letter reason of an alert whose survey no model of the run classifies."""
    return (
        f"no_model: a {survey} alert; this run's models classify {', '.join(served)} alerts "
        f"(give --model with a {survey} model)"
    )


class RouteBySurvey(beam.DoFn):
    """Send each alert to its survey's branch (tagged output named after the survey); alerts of a
    survey no model classifies leave as ``features`` dead letters.

    Parameters
    ----------
    served
        The surveys the run has a model for.
    """

    def __init__(self, served: Sequence[str]) -> None:
        super().__init__()
        self._served = tuple(served)

    def setup(self) -> None:
        self._dead = Metrics.counter(METRICS_NAMESPACE, METRIC_DEAD_FEATURES)

    def process(self, alert: Alert) -> Iterator[Any]:
        name = alert.survey.name
        if name in self._served:
            yield beam.pvalue.TaggedOutput(name, alert)
            return
        self._dead.inc()
        letter = alert_dead_letter(alert, STAGE_FEATURES, no_model_reason(name, self._served))
        yield beam.pvalue.TaggedOutput(TAG_DEAD_LETTERS, letter)


@dataclass
class FeaturizeResult:
    """What :func:`featurize_alerts` made of a batch.

    Attributes
    ----------
    examples
        ``(candid, {"features": float32 [F], "stamps": float32 [63, 63, 3]})`` in input order.
    kept
        For each example, the index of its alert in the input batch (two records may share a
        ``candid``; the index never is).
    dead_letters
        Dead-letter dicts (:data:`~transforms.schema.DEAD_LETTER_FIELDS`).
    padded
        Number of alerts whose stamps were padded to 63x63.
    null_counts
        Feature -> imputations among the emitted examples.
    """

    examples: list[tuple[int, dict[str, np.ndarray]]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    padded: int = 0
    null_counts: dict[str, int] = field(default_factory=dict)


def featurize_alerts(
    alerts: Sequence[Alert],
    feature_names: Sequence[str] = FEATURES_PRODUCTION,
    stamp_policy: str = "drop",
    survey: Survey = ZTF,
) -> FeaturizeResult:
    """Turn decoded alerts into raw model inputs, or dead letters.

    Parameters
    ----------
    alerts
        Decoded alerts (one batch).
    feature_names
        Feature order of the model.
    stamp_policy
        ``"drop"`` (stamps of another size -> dead letters) or ``"pad"`` (NaN-pad them).
    survey
        The survey the model is for; alerts of others become ``features`` dead letters.

    Returns
    -------
    FeaturizeResult
        Examples keyed by candid (input order) with their input index, dead letters (a slim
        alert's without bytes: see :func:`transforms.dead_letters.alert_dead_letter`), pad and
        imputation counts. Nothing is read from disk.

    Raises
    ------
    ValueError
        On an unknown feature name or policy (a configuration error, not a data error).
    """
    if stamp_policy not in STAMP_SIZE_POLICIES:
        raise ValueError(f"stamp size policy {stamp_policy!r} not in {STAMP_SIZE_POLICIES}")
    names = survey.validate_feature_names(feature_names)
    result = FeaturizeResult()
    cubes: list[np.ndarray] = []
    kept: list[int] = []
    for index, alert in enumerate(alerts):
        if alert.survey is not survey:
            reason = no_model_reason(alert.survey.name, (survey.name,))
            result.dead_letters.append(alert_dead_letter(alert, STAGE_FEATURES, reason))
            continue
        try:
            cube, padded = survey.stamp_cube(alert.record, stamp_policy)
        except StampError as e:
            result.dead_letters.append(alert_dead_letter(alert, STAGE_STAMPS, str(e)))
            continue
        result.padded += padded
        cubes.append(cube)
        kept.append(index)
    batch = survey.features([alerts[k].candidate for k in kept], names)
    result.null_counts = batch.null_counts
    for i, index in enumerate(kept):
        alert = alerts[index]
        if not batch.valid[i]:
            result.dead_letters.append(
                alert_dead_letter(alert, STAGE_FEATURES, batch.errors[i] or "")
            )
            continue
        example = {RAW_FEATURES_KEY: batch.values[i].copy(), RAW_STAMPS_KEY: cubes[i]}
        result.examples.append((alert.candid, example))
        result.kept.append(index)
    return result


class FeaturizeBatchDoFn(beam.DoFn):
    """Featurise a batch (list) of :class:`~transforms.alerts.Alert`.

    Main output: ``(key, {"features", "stamps"})``; tagged output ``dead_letters``.

    Parameters
    ----------
    feature_names
        Feature order of the model (e.g. ZTF's 23 production or ALeRCE's 26; Rubin's).
    stamp_policy
        ``"drop"`` or ``"pad"`` for stamps of another size than the survey's.
    key
        What to key each example by, from its alert (the pipeline keys by the row metadata it
        carries through RunInference); None keys by ``candid``.
    survey
        The survey of the model (and of the alerts this step receives).
    """

    def __init__(
        self,
        feature_names: Sequence[str] = FEATURES_PRODUCTION,
        stamp_policy: str = "drop",
        key: Callable[[Alert], Any] | None = None,
        survey: Survey = ZTF,
    ) -> None:
        super().__init__()
        if stamp_policy not in STAMP_SIZE_POLICIES:
            raise ValueError(f"stamp size policy {stamp_policy!r} not in {STAMP_SIZE_POLICIES}")
        self._names = survey.validate_feature_names(feature_names)
        self._policy = stamp_policy
        self._key = key
        self._survey = survey

    def setup(self) -> None:
        # astropy builds its frame-transform graph and loads ERFA/IERS tables on the first
        # transform (~1 s); pay it once per worker, not in the first bundle's latency.
        sky_coordinates(np.zeros(1), np.zeros(1))
        self._in = Metrics.counter(METRICS_NAMESPACE, METRIC_IN)
        self._out = Metrics.counter(METRICS_NAMESPACE, METRIC_OUT)
        self._dead = {
            STAGE_STAMPS: Metrics.counter(METRICS_NAMESPACE, METRIC_DEAD_STAMPS),
            STAGE_FEATURES: Metrics.counter(METRICS_NAMESPACE, METRIC_DEAD_FEATURES),
        }
        self._padded = Metrics.counter(METRICS_NAMESPACE, METRIC_PADDED)
        self._imputed = {
            name: Metrics.counter(METRICS_NAMESPACE, METRIC_IMPUTED_PREFIX + name)
            for name in self._names
        }

    def process(self, batch: Sequence[Alert]) -> Iterator[Any]:
        """Featurise one batch; yields examples and tagged dead letters."""
        result = featurize_alerts(batch, self._names, self._policy, self._survey)
        self._in.inc(len(batch))
        self._out.inc(len(result.examples))
        if result.padded:
            self._padded.inc(result.padded)
        for name, count in result.null_counts.items():
            if count:
                self._imputed[name].inc(count)
        for letter in result.dead_letters:
            self._dead[letter["stage"]].inc()
            yield beam.pvalue.TaggedOutput(TAG_DEAD_LETTERS, letter)
        if self._key is None:
            yield from result.examples
            return
        for index, (_, example) in zip(result.kept, result.examples, strict=True):
            yield self._key(batch[index]), example


class Featurize(beam.PTransform):
    """Alerts -> batched featurisation -> ``examples`` and ``dead_letters`` outputs.

    Parameters
    ----------
    feature_names
        Feature order of the model.
    stamp_policy
        ``"drop"`` or ``"pad"``.
    min_batch_size, max_batch_size
        Bounds for ``beam.BatchElements`` (the coordinate transform is vectorised per batch).
    key, survey
        See :class:`FeaturizeBatchDoFn`.

    Returns
    -------
    dict
        ``{"examples": (key, example), "dead_letters": dict}``.
    """

    def __init__(
        self,
        feature_names: Sequence[str] = FEATURES_PRODUCTION,
        stamp_policy: str = "drop",
        min_batch_size: int = 16,
        max_batch_size: int = 512,
        key: Callable[[Alert], Any] | None = None,
        survey: Survey = ZTF,
    ) -> None:
        super().__init__()
        self._dofn = FeaturizeBatchDoFn(feature_names, stamp_policy, key, survey)
        self._min = min_batch_size
        self._max = max_batch_size

    def expand(self, alerts: beam.PCollection) -> dict[str, beam.PCollection]:
        out = (
            alerts
            | "Batch" >> beam.BatchElements(min_batch_size=self._min, max_batch_size=self._max)
            | "Featurize"
            >> beam.ParDo(self._dofn).with_outputs(TAG_DEAD_LETTERS, main=TAG_EXAMPLES)
        )
        return {TAG_EXAMPLES: out[TAG_EXAMPLES], TAG_DEAD_LETTERS: out[TAG_DEAD_LETTERS]}
