"""The exported model's serving signature as a plain function, for the benchmarks.

Both the stage benchmark (:func:`bench.stages.inference_rates`) and the one-alert-at-a-time
baseline (:func:`bench.baseline.baseline_rate`) call the same SavedModel this way, so their
inference costs are comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["load_serving"]


def load_serving(model_dir: str | Path) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The SavedModel's ``serving_default`` signature as ``predict(features, stamps) -> probs``.

    The model is loaded the way the pipeline's model handler
    (:class:`model.handler.StampClassifierHandler`) loads it.

    Parameters
    ----------
    model_dir
        An exported model directory.

    Returns
    -------
    callable
        ``predict(features [B, F] float32, stamps [B, 63, 63, 3] float32) -> probabilities
        [B, 5]`` as a numpy array.
    """
    import tensorflow as tf  # only when a model is loaded: importing bench stays cheap

    from model.handler import StampClassifierHandler
    from transforms.schema import RAW_FEATURES_KEY, RAW_STAMPS_KEY, SERVING_OUTPUT_KEY

    signature = StampClassifierHandler(str(model_dir)).load_model().signatures["serving_default"]

    def predict(features: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        out = signature(
            **{RAW_FEATURES_KEY: tf.constant(features), RAW_STAMPS_KEY: tf.constant(stamps)}
        )
        return out[SERVING_OUTPUT_KEY].numpy()

    return predict
