"""A model directory's serving function with its network rebuilt from the SavedModel's variables.

Two users: the ONNX export (:mod:`model.onnx_export`: a network of plain dataflow, rotations as
transposes and reversals, whatever layer the SavedModel was exported with) and mixed-precision
serving (:class:`model.handler.StampClassifierHandler` with ``mixed_precision``: the same
weights, the convolutions and dense layers computed in float16 on a GPU or bfloat16 on a CPU).
The tf.Transform layer is the SavedModel's own, unchanged, in float32; so are the inputs, the
feature BatchNorm's statistics and the softmax.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MIXED_POLICIES", "mixed_policy", "rebuild_serving_model"]

#: Keras dtype policy of mixed-precision serving, by device: float16 is what GPUs' tensor cores
#: run; CPUs with bfloat16 units (AVX512-BF16, AMX) run bfloat16.
MIXED_POLICIES = {"gpu": "mixed_float16", "cpu": "mixed_bfloat16"}


def mixed_policy(device: str) -> str:
    """The Keras dtype policy for mixed precision on ``device`` (``cpu`` or ``gpu``)."""
    return MIXED_POLICIES[device]


def rebuild_serving_model(
    model_dir: str,
    metadata: dict[str, Any],
    dtype_policy: str | None = None,
    loaded: Any = None,
) -> Any:
    """The model directory's serving function with its network rebuilt from its variables.

    Parameters
    ----------
    model_dir
        A stampflow model directory (local).
    metadata
        Its ``stampflow_model.json`` (:func:`model.handler.read_metadata`).
    dtype_policy
        Keras dtype policy of the network's layers (e.g. ``mixed_float16``); None: float32, the
        network as trained.
    loaded
        The SavedModel, when it is loaded already (``tf.saved_model.load(model_dir)``).

    Returns
    -------
    transforms.preprocess.ServingModel
        ``serve(features, stamps) -> {"probabilities"}``: the SavedModel's own transform layer
        and :func:`model.network.build_network` of its ``architecture`` (flips included, when
        recorded) holding its weights, for stamps of the metadata's ``stamp_size``.

    Raises
    ------
    ValueError
        When a network weight has no variable of the same name in the SavedModel.
    """
    import tensorflow as tf

    from model.network import NetworkConfig, build_network
    from transforms.preprocess import ServingModel

    if loaded is None:
        loaded = tf.saved_model.load(model_dir)
    saved = {
        v.name.split(":")[0]: v for v in loaded.signatures["serving_default"].variables
    }  # layer-scoped names (conv_1_1/kernel, ...), the same in every export
    # Metadata written before NetworkConfig.flips existed lacks it: the 4-rotation network.
    net = build_network(NetworkConfig(**metadata["architecture"]), dtype_policy=dtype_policy)
    missing = [w.path for w in net.weights if w.path not in saved]
    if missing:
        raise ValueError(f"{model_dir}: the SavedModel has no variables {missing}")
    for weight in net.weights:
        weight.assign(saved[weight.path].numpy())
    size = int(metadata.get("stamp_size") or 63)
    return ServingModel(net, loaded.tft_layer, len(metadata["features"]), stamp_size=size)
