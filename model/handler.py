"""The RunInference model handler for exported stamp-classifier SavedModels.

Beam's TensorFlow handlers load with Keras, which cannot read a SavedModel under Keras 3, and feed
one tensor; ours loads with ``tf.saved_model.load`` and calls the two-input serving signature
(``features`` ``[N, F]`` raw, ``stamps`` ``[N, 63, 63, 3]`` raw; the transform is inside). Wrap it
in ``KeyedModelHandler`` to keep ``candid`` with each example. TensorFlow places the graph on a GPU
by itself when one is visible.

A model directory holds the SavedModel and ``stampflow_model.json`` (name, version, feature list,
class order, crop, training description, metrics), readable without TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.schema import CLASS_NAMES, RAW_FEATURES_KEY, RAW_STAMPS_KEY, SERVING_OUTPUT_KEY

METADATA_FILE = "stampflow_model.json"
#: Batch bounds for ``BatchElements`` in front of the model: large enough to amortise the
#: TensorFlow call, small enough to keep a worker's memory flat (a raw example is ~48 kB).
MIN_BATCH, MAX_BATCH = 64, 256


def read_metadata(model_dir: str) -> dict[str, Any]:
    """Read a model directory's ``stampflow_model.json`` (any Beam filesystem).

    Parameters
    ----------
    model_dir
        Exported model directory.

    Returns
    -------
    dict
        At least ``name``, ``version``, ``features``, ``class_names``, ``crop``.
    """
    with FileSystems.open(FileSystems.join(model_dir, METADATA_FILE)) as f:
        meta = json.load(f)
    if tuple(meta.get("class_names", CLASS_NAMES)) != CLASS_NAMES:
        raise ValueError(f"{model_dir}: class order {meta.get('class_names')} != {CLASS_NAMES}")
    return meta


def write_metadata(model_dir: str, metadata: dict[str, Any]) -> None:
    """Write ``stampflow_model.json`` beside a SavedModel."""
    Path(model_dir, METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=False))


#: ``{"features": raw [F], "stamps": raw [63, 63, 3]}``, as :mod:`transforms.featurize` emits.
Example = dict[str, np.ndarray]


class StampClassifierHandler(ModelHandler[Example, PredictionResult, Any]):
    """Serve a stampflow SavedModel to ``RunInference``.

    Parameters
    ----------
    model_dir
        Directory with the SavedModel and ``stampflow_model.json``.
    min_batch_size, max_batch_size
        Bounds passed to ``BatchElements``.
    """

    def __init__(
        self, model_dir: str, min_batch_size: int = MIN_BATCH, max_batch_size: int = MAX_BATCH
    ) -> None:
        super().__init__()
        self.model_dir = model_dir
        self._batch = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self) -> Any:
        import tensorflow as tf

        return tf.saved_model.load(self.model_dir)

    def run_inference(
        self, batch: Sequence[Example], model: Any, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        import tensorflow as tf

        features = np.stack([e[RAW_FEATURES_KEY] for e in batch]).astype(np.float32, copy=False)
        stamps = np.stack([e[RAW_STAMPS_KEY] for e in batch]).astype(np.float32, copy=False)
        out = model.signatures["serving_default"](
            **{RAW_FEATURES_KEY: tf.constant(features), RAW_STAMPS_KEY: tf.constant(stamps)}
        )
        probs = out[SERVING_OUTPUT_KEY].numpy()
        return [PredictionResult(example, p) for example, p in zip(batch, probs, strict=True)]

    def batch_elements_kwargs(self) -> dict[str, int]:
        return self._batch

    def get_num_bytes(self, batch: Sequence[Example]) -> int:
        return sum(e[RAW_FEATURES_KEY].nbytes + e[RAW_STAMPS_KEY].nbytes for e in batch)

    def get_metrics_namespace(self) -> str:
        return "stampflow_inference"

    def share_model_across_processes(self) -> bool:
        return False
