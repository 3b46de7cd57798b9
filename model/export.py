"""Export a trained (or imported) network as a stampflow model directory.

A model directory is a TensorFlow SavedModel whose ``serving_default`` signature takes **raw**
inputs, ``features`` ``float32 [N, F]`` (imputed, unclipped) and ``stamps`` ``float32 [N, 63, 63,
3]``, and returns ``probabilities`` ``[N, 5]``: the tf.Transform graph (clipping, z-scoring,
stamp crop and normalisation) is embedded, so the directory is self-contained. Beside it,
``stampflow_model.json`` describes the model for tools that do not load TensorFlow.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np

from model.handler import write_metadata
from model.network import NetworkConfig
from transforms.schema import CLASS_NAMES, RAW_FEATURES_KEY, RAW_STAMPS_KEY


def fit_transform(
    features: np.ndarray,
    stamps: np.ndarray,
    feature_names: Sequence[str],
    transform_dir: str,
    crop: int,
    stats: Mapping[str, Mapping[str, float]] | None = None,
    shard_size: int = 2048,
) -> str:
    """Fit the tf.Transform graph with Beam (``AnalyzeAndTransformDataset``) and write it.

    The examples go to ``.npy`` shards on disk and the pipeline reads them back, since
    ``beam.Create`` of large arrays is very slow (SPEC §11).

    Parameters
    ----------
    features, stamps
        Raw training examples, ``[N, F]`` and ``[N, S, S, 3]`` (S: the survey's stamp side).
    feature_names
        Feature order.
    transform_dir
        Where the transform output is written.
    crop
        Stamp crop side.
    stats
        Fixed statistics (imported models) instead of fitting them.
    shard_size
        Examples per shard.

    Returns
    -------
    str
        ``transform_dir``.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.preprocess import FitTransform

    scratch = Path(tempfile.mkdtemp(prefix="stampflow-fit-"))
    try:
        shards = []
        for i in range(0, len(features), shard_size):
            path = scratch / f"shard-{i:08d}.npz"
            np.savez(path, features=features[i : i + shard_size], stamps=stamps[i : i + shard_size])
            shards.append(str(path))

        def load(path: str):
            with np.load(path) as data:
                for f, s in zip(data["features"], data["stamps"], strict=True):
                    yield {RAW_FEATURES_KEY: f, RAW_STAMPS_KEY: s}

        options = PipelineOptions([], runner="FnApiRunner")  # not sys.argv: those are ours
        with beam.Pipeline(options=options) as p:
            examples = p | "Shards" >> beam.Create(shards) | "Load" >> beam.FlatMap(load)
            _ = examples | "Fit" >> FitTransform(
                feature_names,
                transform_dir,
                stats=stats,
                crop=crop,
                temp_dir=str(scratch / "tmp"),
                stamp_size=int(stamps.shape[1]),
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return transform_dir


def batch_transform(
    transform_dir: str,
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The fitted tf.Transform graph as a per-batch NumPy function (one load, one trace).

    Parameters
    ----------
    transform_dir
        Output of :func:`fit_transform`.

    Returns
    -------
    callable
        ``(features [B, F], stamps [B, 63, 63, 3]) -> (features_xf, stamps_xf)``, float32, the
        graph the exported model runs (training augments each batch through it, and
        :func:`apply_transform` runs whole sets through it).
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    from transforms.schema import TRANSFORMED_FEATURES_KEY, TRANSFORMED_STAMPS_KEY

    layer = tft.TFTransformOutput(transform_dir).transform_features_layer()

    @tf.function(reduce_retracing=True)
    def run(f, s):
        out = layer({RAW_FEATURES_KEY: f, RAW_STAMPS_KEY: s})
        return out[TRANSFORMED_FEATURES_KEY], out[TRANSFORMED_STAMPS_KEY]

    def transform(f: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f_xf, s_xf = run(tf.constant(f, tf.float32), tf.constant(s, tf.float32))
        return f_xf.numpy(), s_xf.numpy()

    return transform


def apply_transform(
    transform_dir: str | Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    features: np.ndarray,
    stamps: np.ndarray,
    batch: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the fitted transform graph in process, in batches (training and evaluation inputs).

    Parameters
    ----------
    transform_dir
        Output of :func:`fit_transform`, or a :func:`batch_transform` of it already loaded (one
        load and one trace for every set a training run transforms).

    Returns
    -------
    (features_xf, stamps_xf)
        ``[N, F]`` and ``[N, crop, crop, 3]`` float32.
    """
    transform = batch_transform(transform_dir) if isinstance(transform_dir, str) else transform_dir
    outs = [
        transform(features[i : i + batch], stamps[i : i + batch])
        for i in range(0, len(features), batch)
    ]
    return np.concatenate([f for f, _ in outs]), np.concatenate([s for _, s in outs])


def export_model(
    net: Any,
    transform_dir: str,
    out_dir: str,
    config: NetworkConfig,
    feature_names: Sequence[str],
    name: str,
    version: str | None = None,
    description: str = "",
    extra: Mapping[str, Any] | None = None,
    survey: str = "ztf",
) -> dict[str, Any]:
    """Write ``out_dir``: the SavedModel (transform embedded) and ``stampflow_model.json``.

    Parameters
    ----------
    net
        The Keras network (inputs ``stamps`` and, unless images-only, ``features``).
    transform_dir
        Output of :func:`fit_transform`; copied into the SavedModel.
    out_dir
        Model directory to (re)create.
    config
        The network's architecture.
    feature_names
        Raw feature order the signature expects (also for images-only models, whose features are
        accepted and ignored, so every model has the same signature).
    name, version
        Recorded in the metadata and in every output row; version defaults to a UTC timestamp.
    description
        What it was trained on.
    extra
        More metadata (metrics, hyper-parameters).
    survey
        The survey whose alerts it classifies (``ztf``, ``lsst``): its stamp size is the
        signature's, and the pipeline refuses it for another survey's alerts.

    Returns
    -------
    dict
        The metadata written.
    """
    from transforms.preprocess import export_serving_model
    from transforms.surveys import get_survey

    size = get_survey(survey).stamp_size
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    export_serving_model(
        net, transform_dir, str(out), n_features=len(feature_names), stamp_size=size
    )
    metadata = {
        "name": name,
        "version": version or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"),
        "survey": survey,
        "stamp_size": size,
        "class_names": list(CLASS_NAMES),
        "features": list(feature_names),
        "crop": config.crop,
        "architecture": config.to_dict(),
        "images_only": config.n_features == 0,
        "inputs": {
            RAW_FEATURES_KEY: f"float32 [N, {len(feature_names)}] raw (imputed, unclipped)",
            RAW_STAMPS_KEY: f"float32 [N, {size}, {size}, 3] science, template, difference",
        },
        "description": description,
        **(extra or {}),
    }
    write_metadata(str(out), metadata)
    return metadata
