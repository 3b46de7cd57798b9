"""The exported model's serving signature as a plain function, for the benchmarks.

Both the stage benchmark (:func:`bench.stages.inference_rates`) and the one-alert-at-a-time
baseline (:func:`bench.baseline.baseline_rate`) call the same SavedModel this way, so their
inference costs are comparable; the ONNX export is called the same way for the onnxruntime rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["load_serving"]


def load_serving(
    model_dir: str | Path,
    jit_compile: bool = False,
    runtime: str = "tensorflow",
    mixed_precision: bool = False,
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The SavedModel's ``serving_default`` signature as ``predict(features, stamps) -> probs``.

    The model is loaded the way the pipeline's model handler
    (:class:`model.handler.StampClassifierHandler`) loads it.

    Parameters
    ----------
    model_dir
        An exported model directory.
    jit_compile
        Compile the serving function with XLA, as ``stampflow run --jit-compile`` does.
    runtime
        ``"tensorflow"`` (the SavedModel) or ``"onnx"`` (its ``model.onnx`` on the CPU, loaded as
        ``stampflow run --runtime onnx`` loads it: :class:`model.handler.OnnxModel`).
    mixed_precision
        The network computing in bfloat16 (CPU) or float16 (GPU), as ``stampflow run
        --mixed-precision`` serves it.

    Returns
    -------
    callable
        ``predict(features [B, F] float32, stamps [B, 63, 63, 3] float32) -> probabilities
        [B, 5]`` as a numpy array.
    """
    if runtime == "onnx":
        from model.handler import OnnxModel

        return OnnxModel(str(model_dir))
    import tensorflow as tf  # only when a model is loaded: importing bench stays cheap

    from model.handler import StampClassifierHandler, serving_function, visible_gpus
    from transforms.schema import RAW_FEATURES_KEY, RAW_STAMPS_KEY, SERVING_OUTPUT_KEY

    # Keep the loaded object: the serving function refers to the variables it owns.
    model = StampClassifierHandler(
        str(model_dir),
        device="gpu" if visible_gpus() else "cpu",
        jit_compile=jit_compile,
        mixed_precision=mixed_precision,
    ).load_model()
    signature = serving_function(model)

    def predict(features: np.ndarray, stamps: np.ndarray, _model=model) -> np.ndarray:
        out = signature(
            **{RAW_FEATURES_KEY: tf.constant(features), RAW_STAMPS_KEY: tf.constant(stamps)}
        )
        return out[SERVING_OUTPUT_KEY].numpy()

    return predict
