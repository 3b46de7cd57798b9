"""One preprocessing graph (tf.Transform) from training to batch, streaming and serving.

Raw model inputs (from :mod:`transforms.featurize`) are two dense tensors per alert:
``features`` ``float32 [F]`` (imputed, unclipped) and ``stamps`` ``float32 [63, 63, 3]`` (raw
science/template/difference). :func:`make_preprocessing_fn` builds the ``preprocessing_fn`` that
turns them into the network's inputs (SPEC §4, §5):

- ``features_xf``: clipped to Table A1's bounds, then z-scored, either with ``tft.mean``/``tft.var``
  analyzers fitted on a training set, or with fixed constants when a model brings its own
  statistics (imported ALeRCE models: their isdiffpos mean is exactly 0 and stays 0);
- ``stamps_xf``: centre crop (21 by default: rows/cols 21..41 of 63), per image and channel subtract
  the nanmin and divide by the nanmax of the shifted image, NaN (and 0/0) -> 0
  (:func:`preprocess_stamps`).

Where the stamp preprocessing lives, measured here (2 shared cores, 10,000 synthetic alerts,
FnApiRunner, TFXIO input, ``FitTransform`` = AnalyzeAndTransformDataset + WriteTransformFn, same
input record batches in both graphs, best of 2 after a warm-up; generating the 10k examples alone
takes 2.0 s of each):

==============================================================  =========  =========
variant                                                         10k wall   per alert
==============================================================  =========  =========
graph with features only (stamps left for the model to do)      9.7 s      0.97 ms
graph with features + stamps (crop 21): the chosen design       9.4 s      0.94 ms
``preprocess_stamps`` alone, ``tf.function``, batches of 64     0.47 s     0.047 ms
==============================================================  =========  =========

In the transform pass the stamp ops cost nothing measurable (within the ±0.4 s run-to-run noise;
Beam and Arrow plumbing dominate). As first layers of the model the same op costs ~3 ms per
training batch of 64 on CPU, paid on every one of the 30-40k iterations (~1.5-2 min per training
run, again for every hyper-parameter trial), and training must read and hold raw 63x63x3 stamps:
47.6 kB per alert, 4.8 GB per 100k alerts, against 5.3 kB and 0.53 GB for materialised 21x21x3
crops, which fit in memory on our machines. So the stamp preprocessing lives **in**
``preprocessing_fn``: the one transform graph is what training materialises once, what batch and
streaming apply, and what ``transform_features_layer()`` embeds in the exported SavedModel. The
crop is a parameter of :func:`make_preprocessing_fn`, so each crop size (21/41/63 in the search)
has its own transform output directory.

tf.Transform is fed through the TFXIO / ``pyarrow.RecordBatch`` path
(:func:`raw_tensor_adapter_config`, :func:`examples_to_record_batch`): instance-dict input
segfaults at interpreter exit (SPEC §11).

Fit on a training set and export (local, no cloud account)::

    with beam.Pipeline(runner=FnApiRunner()) as p:
        alerts = ...  # PCollection of transforms.alerts.Alert (training set)
        featurized = alerts | Featurize(FEATURES_ALERCE_26, stamp_policy="pad")
        transformed, _ = (
            featurized.examples
            | beam.Values()
            | FitTransform(FEATURES_ALERCE_26, "out/transform")
        )
        # ... write `transformed` (record batches of features_xf, stamps_xf) for training
    export_serving_model(trained_model, "out/transform", "out/saved_model", n_features=26)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.tfxio import tensor_adapter

from transforms.features import clip_bounds, validate_feature_names
from transforms.schema import (
    CROP_SIZES,
    DEFAULT_CROP,
    FEATURES_LSST,
    FEATURES_PRODUCTION,
    RAW_FEATURES_KEY,
    RAW_STAMPS_KEY,
    SERVING_OUTPUT_KEY,
    STAMP_KINDS,
    STAMP_SIZE,
    TRANSFORMED_FEATURES_KEY,
    TRANSFORMED_STAMPS_KEY,
)

#: Shape of one raw ZTF stamp cube (:func:`raw_stamps_shape` for other sizes).
RAW_STAMPS_SHAPE: tuple[int, int, int] = (STAMP_SIZE, STAMP_SIZE, len(STAMP_KINDS))

PreprocessingFn = Callable[[Mapping[str, tf.Tensor]], dict[str, tf.Tensor]]


# --- Stamps ---------------------------------------------------------------------------------------
def crop_bounds(crop: int, size: int = STAMP_SIZE) -> tuple[int, int]:
    """First and one-past-last row (= column) of the centre crop.

    Parameters
    ----------
    crop
        Crop side [pixels], one of :data:`~transforms.schema.CROP_SIZES` (odd, so the source pixel
        31 stays the centre).
    size
        Side of the full stamp.

    Returns
    -------
    start, stop
        ``(21, 42)`` for 21, ``(11, 52)`` for 41, ``(0, 63)`` for 63.

    Raises
    ------
    ValueError
        For a crop that is even, non-positive or larger than ``size``.
    """
    if crop == size:  # the whole stamp (Rubin's even 30 px stamps are fed whole)
        return 0, size
    if crop not in CROP_SIZES and not (0 < crop <= size and crop % 2 == 1):
        raise ValueError(f"crop {crop} must be odd and in 1..{size} (usually {CROP_SIZES})")
    start = (size - 1) // 2 - crop // 2
    return start, start + crop


def preprocess_stamps(
    stamps: tf.Tensor, crop: int = DEFAULT_CROP, stamp_size: int = STAMP_SIZE
) -> tf.Tensor:
    """Centre-crop and normalise raw stamp cubes, in TF ops (SPEC §5, steps 2-4).

    Parameters
    ----------
    stamps
        ``float32 [N, S, S, 3]`` raw science/template/difference pixels, NaN allowed.
    crop
        Centre-crop side [pixels]: 21 (production), 41 or 63 for ZTF; S feeds the whole stamp.
    stamp_size
        S, the side of the raw stamps (63 ZTF, 30 Rubin).

    Returns
    -------
    tf.Tensor
        ``float32 [N, crop, crop, 3]``; per image and channel ``(x - nanmin) / nanmax(x - nanmin)``,
        with NaN pixels, all-NaN channels and constant channels (0/0) set to 0. Values are in
        [0, 1]. Infinite pixels are treated as NaN (bad pixels), so one cannot blank a channel.
    """
    start, stop = crop_bounds(crop, stamp_size)
    x = tf.convert_to_tensor(stamps, dtype=tf.float32)[:, start:stop, start:stop, :]
    finite = tf.math.is_finite(x)
    inf = tf.constant(np.inf, tf.float32)
    lo = tf.reduce_min(tf.where(finite, x, inf), axis=[1, 2], keepdims=True)
    shifted = x - lo
    hi = tf.reduce_max(tf.where(finite, shifted, -inf), axis=[1, 2], keepdims=True)
    scaled = shifted / hi
    # Covers NaN pixels, all-NaN channels (inf - inf) and constant channels (0 / 0).
    return tf.where(finite & tf.math.is_finite(scaled), scaled, tf.zeros_like(scaled))


# --- Features -------------------------------------------------------------------------------------
def stats_arrays(
    feature_names: Sequence[str], stats: Mapping[str, Mapping[str, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std vectors in feature order.

    Parameters
    ----------
    feature_names
        Feature order.
    stats
        ``{feature: {"mean": m, "std": s}}``.

    Returns
    -------
    mean, std
        ``float32 [F]`` each.

    Raises
    ------
    KeyError
        If a feature has no statistics.
    """
    missing = [n for n in feature_names if n not in stats]
    if missing:
        raise KeyError(f"no normalisation statistics for {missing}")
    mean = np.array([stats[n]["mean"] for n in feature_names], dtype=np.float32)
    std = np.array([stats[n]["std"] for n in feature_names], dtype=np.float32)
    return mean, std


def _safe_divide(x: tf.Tensor, std: tf.Tensor) -> tf.Tensor:
    # A constant training feature has std 0: centre it, do not divide (as tft.scale_to_z_score).
    return x / tf.where(std > 0, std, tf.ones_like(std))


def make_preprocessing_fn(
    feature_names: Sequence[str] = FEATURES_PRODUCTION,
    stats: Mapping[str, Mapping[str, float]] | None = None,
    crop: int = DEFAULT_CROP,
    stamp_size: int = STAMP_SIZE,
) -> PreprocessingFn:
    """Build a ``preprocessing_fn`` for a feature list, optional fixed statistics and a crop.

    Parameters
    ----------
    feature_names
        Order of the raw ``features`` vector (23 production or 26 ALeRCE).
    stats
        ``{feature: {"mean", "std"}}`` to standardise with fixed constants (a model that arrives
        with its own statistics, e.g. ALeRCE's). None: fit ``tft.mean``/``tft.var`` (population
        variance) on the clipped training features.
    crop
        Stamp centre-crop side (21, 41 or 63; ``stamp_size`` for the whole stamp).
    stamp_size
        Side of the raw stamps (63 ZTF, 30 Rubin).

    Returns
    -------
    callable
        ``preprocessing_fn(inputs) -> {features_xf: [N, F], stamps_xf: [N, crop, crop, 3]}``.

    Raises
    ------
    ValueError, KeyError
        On an unknown feature, a feature without statistics, or a bad crop.
    """
    names = known_feature_names(feature_names)
    crop_bounds(crop, stamp_size)  # fail at construction, not inside a Beam worker
    lo, hi = clip_bounds(names)
    fixed = stats_arrays(names, stats) if stats is not None else None

    def preprocessing_fn(inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        x = tf.convert_to_tensor(inputs[RAW_FEATURES_KEY], dtype=tf.float32)
        x = tf.clip_by_value(x, tf.constant(lo), tf.constant(hi))
        if fixed is None:
            mean = tft.mean(x, reduce_instance_dims=False)
            std = tf.sqrt(tft.var(x, reduce_instance_dims=False))
        else:
            mean, std = tf.constant(fixed[0]), tf.constant(fixed[1])
        return {
            TRANSFORMED_FEATURES_KEY: _safe_divide(x - mean, std),
            TRANSFORMED_STAMPS_KEY: preprocess_stamps(inputs[RAW_STAMPS_KEY], crop, stamp_size),
        }

    return preprocessing_fn


def preprocessing_fn(inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Default transform: 23 production features fitted with analyzers, 21x21 stamps.

    Parameters
    ----------
    inputs
        ``{"features": float32 [N, 23], "stamps": float32 [N, 63, 63, 3]}``.

    Returns
    -------
    dict
        ``{"features_xf": float32 [N, 23], "stamps_xf": float32 [N, 21, 21, 3]}``.
    """
    return make_preprocessing_fn()(inputs)


# --- TFXIO input ----------------------------------------------------------------------------------
def _dense_representation(column: str, shape: Sequence[int]) -> schema_pb2.TensorRepresentation:
    rep = schema_pb2.TensorRepresentation()
    rep.dense_tensor.column_name = column
    for dim in shape:
        rep.dense_tensor.shape.dim.add().size = dim
    return rep


def raw_arrow_schema() -> pa.Schema:
    """Arrow schema of raw model-input record batches: two ``large_list<float32>`` columns."""
    return pa.schema(
        [
            (RAW_FEATURES_KEY, pa.large_list(pa.float32())),
            (RAW_STAMPS_KEY, pa.large_list(pa.float32())),
        ]
    )


def raw_stamps_shape(stamp_size: int = STAMP_SIZE) -> tuple[int, int, int]:
    """Shape of one raw stamp cube of side ``stamp_size``."""
    return (stamp_size, stamp_size, len(STAMP_KINDS))


def known_feature_names(feature_names: Sequence[str]) -> tuple[str, ...]:
    """``feature_names`` as a tuple when some survey computes every one of them.

    Raises
    ------
    ValueError
        On duplicates or an unknown name.
    """
    names = tuple(feature_names)
    if names and all(n in FEATURES_LSST for n in names):
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature names in {names}")
        return names
    return validate_feature_names(names)


def raw_tensor_adapter_config(
    n_features: int, stamp_size: int = STAMP_SIZE
) -> tensor_adapter.TensorAdapterConfig:
    """TFXIO metadata telling tf.Transform how to read raw record batches as dense tensors.

    Parameters
    ----------
    n_features
        Length of the feature vector.
    stamp_size
        Side of the raw stamps.

    Returns
    -------
    tfx_bsl.tfxio.tensor_adapter.TensorAdapterConfig
        ``features`` -> ``float32 [N, F]``, ``stamps`` -> ``float32 [N, 63, 63, 3]``.
    """
    return tensor_adapter.TensorAdapterConfig(
        raw_arrow_schema(),
        {
            RAW_FEATURES_KEY: _dense_representation(RAW_FEATURES_KEY, [n_features]),
            RAW_STAMPS_KEY: _dense_representation(RAW_STAMPS_KEY, raw_stamps_shape(stamp_size)),
        },
    )


def _large_list(values: np.ndarray) -> pa.LargeListArray:
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(len(values), -1)
    width = flat.shape[1]
    offsets = np.arange(0, (len(flat) + 1) * width, width, dtype=np.int64)
    return pa.LargeListArray.from_arrays(offsets, flat.reshape(-1))


def examples_to_record_batch(
    examples: Iterable[Mapping[str, np.ndarray]], n_features: int, stamp_size: int = STAMP_SIZE
) -> pa.RecordBatch:
    """Pack raw model-input dicts into one record batch for tf.Transform.

    Parameters
    ----------
    examples
        ``{"features": float32 [F], "stamps": float32 [63, 63, 3]}`` per alert.
    n_features
        Expected ``F``.
    stamp_size
        Expected stamp side.

    Returns
    -------
    pyarrow.RecordBatch
        With :func:`raw_arrow_schema`.

    Raises
    ------
    ValueError
        If an example has the wrong shape.
    """
    examples = list(examples)
    features = np.stack([np.asarray(e[RAW_FEATURES_KEY], np.float32) for e in examples])
    stamps = np.stack([np.asarray(e[RAW_STAMPS_KEY], np.float32) for e in examples])
    shape = raw_stamps_shape(stamp_size)
    if features.shape[1:] != (n_features,) or stamps.shape[1:] != shape:
        raise ValueError(
            f"examples have features {features.shape[1:]} and stamps {stamps.shape[1:]}, "
            f"expected ({n_features},) and {shape}"
        )
    return pa.RecordBatch.from_arrays(
        [_large_list(features), _large_list(stamps)], schema=raw_arrow_schema()
    )


# --- Fit (Beam) -----------------------------------------------------------------------------------
class FitTransform(beam.PTransform):
    """Fit the transform on training examples, write it, and transform the training set.

    Input: a PCollection of raw model-input dicts (the values of :class:`transforms.featurize.
    Featurize`'s main output). Output: ``(transformed, transform_fn)``, where ``transformed`` is a
    PCollection of ``pyarrow.RecordBatch`` with ``features_xf`` and ``stamps_xf`` (flattened
    ``large_list<float32>`` columns), and the transform output (``transform_fn/`` and
    ``transformed_metadata/``) is written to ``output_dir`` for :class:`tft.TFTransformOutput`.

    Parameters
    ----------
    feature_names
        Raw feature order.
    output_dir
        Where ``WriteTransformFn`` writes (local path or ``gs://``).
    stats
        Fixed statistics (no analyzers) or None to fit them; see :func:`make_preprocessing_fn`.
    crop
        Stamp crop side.
    stamp_size
        Side of the raw stamps (63 ZTF, 30 Rubin).
    temp_dir
        tf.Transform's scratch directory; None makes a fresh local temporary directory (pass a
        ``gs://`` path on Dataflow, where workers cannot see the launcher's disk).
    batch_size
        Examples per record batch.
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        output_dir: str,
        stats: Mapping[str, Mapping[str, float]] | None = None,
        crop: int = DEFAULT_CROP,
        temp_dir: str | None = None,
        batch_size: int = 256,
        stamp_size: int = STAMP_SIZE,
    ) -> None:
        super().__init__()
        self._names = known_feature_names(feature_names)
        self._preprocessing_fn = make_preprocessing_fn(self._names, stats, crop, stamp_size)
        self._stamp_size = stamp_size
        self._output_dir = output_dir
        self._temp_dir = temp_dir
        self._batch_size = batch_size

    def expand(self, examples: beam.PCollection) -> tuple[beam.PCollection, Any]:
        n = len(self._names)
        temp_dir = self._temp_dir or tempfile.mkdtemp(prefix="stampflow-tft-")
        batches = (
            examples
            | "Batch"
            >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
            | "ToRecordBatch" >> beam.Map(examples_to_record_batch, n, self._stamp_size)
        )
        with tft_beam.Context(temp_dir=temp_dir):
            (transformed, _), transform_fn = (
                batches,
                raw_tensor_adapter_config(n, self._stamp_size),
            ) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
                self._preprocessing_fn, output_record_batches=True
            )
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(self._output_dir)
        # output_record_batches yields (record batch, pass-through features): keep the batch.
        return transformed | "DropPassthrough" >> beam.Map(lambda rb_and_extra: rb_and_extra[0]), (
            transform_fn
        )


# --- Serving --------------------------------------------------------------------------------------
#: Transformed key for each model-input name we know: the network names its inputs after the raw
#: keys (``stamps``, ``features``); a model may also use the transformed keys themselves.
_MODEL_INPUT_ALIASES: dict[str, str] = {
    RAW_FEATURES_KEY: TRANSFORMED_FEATURES_KEY,
    RAW_STAMPS_KEY: TRANSFORMED_STAMPS_KEY,
    TRANSFORMED_FEATURES_KEY: TRANSFORMED_FEATURES_KEY,
    TRANSFORMED_STAMPS_KEY: TRANSFORMED_STAMPS_KEY,
}


def model_input_map(model: Any) -> dict[str, str]:
    """Which transformed tensor feeds each named input of a Keras functional model.

    Parameters
    ----------
    model
        A Keras model whose inputs are named ``stamps``/``features`` (as
        ``model.network.build_network`` names them) or ``stamps_xf``/``features_xf``; an
        images-only model has just ``stamps``.

    Returns
    -------
    dict
        ``{model input name: transformed key}``.

    Raises
    ------
    ValueError
        If the model has no named inputs or an input name is not one of those.
    """
    names = [getattr(t, "name", None) for t in getattr(model, "inputs", None) or []]
    unknown = [n for n in names if n not in _MODEL_INPUT_ALIASES]
    if not names or unknown:
        raise ValueError(
            f"cannot map model inputs {names} to {sorted(_MODEL_INPUT_ALIASES)}; pass input_map"
        )
    return {name: _MODEL_INPUT_ALIASES[name] for name in names}


class ServingModel(tf.Module):
    """A model with the fitted transform embedded: raw features + raw 63x63 stamps in.

    Signature ``serve(features: float32 [N, F], stamps: float32 [N, 63, 63, 3])`` ->
    ``{"probabilities": float32 [N, 5]}`` in :data:`~transforms.schema.CLASS_NAMES` order. The
    transform output's ``transform_features_layer()`` turns the raw inputs into ``features_xf`` and
    ``stamps_xf``, which are handed to the network as a dict keyed by its input names.

    Parameters
    ----------
    model
        The trained network (a Keras 3 functional model, or any callable taking a dict).
    transform_output_dir
        Directory written by :class:`FitTransform`; its graph and assets are copied into the
        SavedModel on export, so the directory is not needed afterwards. Or a transform layer
        itself, e.g. the ``tft_layer`` of a loaded serving model (:mod:`model.onnx_export`
        rebuilds a model around it).
    n_features
        Length of the raw feature vector.
    input_map
        ``{model input name: transformed key}``; None infers it with :func:`model_input_map`.
    stamp_size
        Side of the raw stamps the signature takes (63 ZTF, 30 Rubin).
    """

    def __init__(
        self,
        model: Any,
        transform_output_dir: str | Any,
        n_features: int,
        input_map: Mapping[str, str] | None = None,
        stamp_size: int = STAMP_SIZE,
    ) -> None:
        super().__init__()
        self.model = model
        self._input_map = dict(input_map) if input_map is not None else model_input_map(model)
        if isinstance(transform_output_dir, str):
            transform = tft.TFTransformOutput(transform_output_dir).transform_features_layer()
        else:
            transform = transform_output_dir
        self.tft_layer = transform
        self.serve = tf.function(
            self._serve,
            input_signature=[
                tf.TensorSpec([None, n_features], tf.float32, name=RAW_FEATURES_KEY),
                tf.TensorSpec(
                    [None, *raw_stamps_shape(stamp_size)], tf.float32, name=RAW_STAMPS_KEY
                ),
            ],
        )

    def _serve(self, features: tf.Tensor, stamps: tf.Tensor) -> dict[str, tf.Tensor]:
        transformed = self.tft_layer({RAW_FEATURES_KEY: features, RAW_STAMPS_KEY: stamps})
        inputs = {name: transformed[key] for name, key in self._input_map.items()}
        return {SERVING_OUTPUT_KEY: self.model(inputs)}


def export_serving_model(
    model: Any,
    transform_output_dir: str,
    export_dir: str,
    n_features: int,
    input_map: Mapping[str, str] | None = None,
    stamp_size: int = STAMP_SIZE,
) -> ServingModel:
    """Export ``model`` with the transform embedded as a self-contained SavedModel.

    Parameters
    ----------
    model
        The trained network; see :class:`ServingModel`.
    transform_output_dir
        Output of :class:`FitTransform`.
    export_dir
        SavedModel directory to write. Load it with ``tf.saved_model.load`` (Keras 3 cannot
        ``load_model`` a SavedModel, SPEC §11) and call ``serve(features=..., stamps=...)`` or the
        ``serving_default`` signature.
    n_features
        Length of the raw feature vector.
    input_map
        ``{model input name: transformed key}``; None infers it (:func:`model_input_map`).
    stamp_size
        Side of the raw stamps.

    Returns
    -------
    ServingModel
        The exported module (callable in process too).
    """
    module = ServingModel(model, transform_output_dir, n_features, input_map, stamp_size)
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    return module
