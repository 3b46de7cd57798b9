"""Export a stampflow model directory's serving function as one ONNX graph (``export-onnx``).

The SavedModel stays the model of record; ``model.onnx`` beside it is derived from it::

    SavedModel ─ tf.saved_model.load ─ tft_layer (the tf.Transform graph, as exported)
               └ variables ─▶ build_network(architecture) (rotations as transposes/reversals)
    serve(features, stamps) = network(tft_layer(features, stamps))
      ─ freeze (variables and captured statistics → constants) ─ tf2onnx ─▶ model.onnx

The network is rebuilt from the SavedModel's variables rather than converted from its saved
graph because SavedModels exported before the rotation layer was rewritten carry
``tf.image.rot90``, whose tensor ``k`` converts to three ONNX ``If`` nodes (onnx2torch and
TensorRT refuse control flow); the rebuilt network computes the same pixels with ``Transpose``
and ``Slice`` only, so every existing model directory exports to plain dataflow. The transform
is the SavedModel's own, unchanged. Its feature mean and standard deviation are captured
tensors of the restored function, which ``tf2onnx.convert.from_function`` leaves as extra graph
inputs; freezing the concrete function first turns them into constants.

The ONNX graph has inputs ``features`` ``float32 [N, F]`` and ``stamps`` ``float32 [N, S, S, 3]``
(raw, as the SavedModel's signature; S = 63 for ZTF, 30 for Rubin), output ``probabilities``
``[N, 5]``, and carries the model's ``name``, ``version``, ``features`` and ``class_names`` (JSON
lists) in its metadata, which :class:`model.handler.OnnxModel` checks against
``stampflow_model.json``, and, for the reader, its ``survey``, ``stamp_size`` and whether the
network averages over flips too (``flips``: the Rubin model's 8 views, mirrors as ``Slice``).

Command line::

    stampflow export-onnx model/default             # writes model/default/model.onnx
    stampflow export-onnx MODEL_DIR --out other.onnx
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model.handler import METADATA_FILE, ONNX_FILE, model_survey, read_metadata, stamp_shape
from model.rebuild import rebuild_serving_model
from transforms.schema import CLASS_NAMES, RAW_FEATURES_KEY, RAW_STAMPS_KEY, SERVING_OUTPUT_KEY

__all__ = [
    "CONTROL_FLOW_OPS",
    "DEFAULT_OPSET",
    "control_flow_nodes",
    "export_onnx",
    "register",
]

#: ONNX opset written (onnxruntime ≥ 1.13 and TensorRT 8.6+ run it).
DEFAULT_OPSET = 17
#: ONNX operators that are control flow, not plain dataflow.
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})


def control_flow_nodes(model: Any) -> list[str]:
    """Names of the control-flow nodes (:data:`CONTROL_FLOW_OPS`) in an ONNX model's graph.

    Parameters
    ----------
    model
        An ``onnx.ModelProto``.

    Returns
    -------
    list of str
        ``op_type:name`` of each, empty for plain dataflow.
    """
    return [f"{n.op_type}:{n.name}" for n in model.graph.node if n.op_type in CONTROL_FLOW_OPS]


def _select_as_where(ctx: Any, node: Any, name: str, args: list) -> None:
    """Convert TensorFlow's ``SelectV2`` to ONNX ``Where``, always (a tf2onnx custom handler).

    tf2onnx 1.17 writes a float select whose condition it does not recognise as a NaN test as
    ``cast(c) * x + cast(!c) * y``, faster in onnxruntime but wrong when the branch not taken
    holds NaN or Inf (``NaN * 0`` is NaN). The stamp transform's last select is exactly that
    case, ``where(finite & isfinite(scaled), scaled, 0)`` (NaN pixels, 0/0 channels), so real
    alerts with NaN pixels came out with NaN probabilities. ``SelectV2`` broadcasts as ``Where``
    does, so renaming the node is the whole conversion.
    """
    node.type = "Where"


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """Mute tf2onnx's progress logs and TensorFlow's TF1-API deprecation notices it triggers."""
    names = ("tf2onnx", "tensorflow")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def export_onnx(model_dir: str, out: str | None = None, opset: int = DEFAULT_OPSET) -> dict:
    """Write the model directory's whole serving function as one ONNX file.

    Parameters
    ----------
    model_dir
        A stampflow model directory (local).
    out
        The ONNX file to write; default ``model_dir/model.onnx`` (where ``--runtime onnx`` looks).
    opset
        ONNX opset.

    Returns
    -------
    dict
        ``path``, ``opset``, ``nodes`` (count), ``ops`` (sorted operator types) and the metadata
        written (``name``, ``version``, ``features``, ``class_names``, ...).

    Raises
    ------
    ValueError
        When the converted graph still holds control flow (:data:`CONTROL_FLOW_OPS`).
    """
    import onnx
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    meta = read_metadata(model_dir)
    serving = rebuild_serving_model(model_dir, meta)
    concrete = serving.serve.get_concrete_function()
    # Variables and the transform's captured statistics become constants (see module docstring).
    frozen = convert_variables_to_constants_v2(concrete)
    inputs = [t.name for t in frozen.inputs]
    outputs = [t.name for t in frozen.outputs]
    with _quiet_converter():
        proto, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(),
            input_names=inputs,
            output_names=outputs,
            opset=opset,
            custom_op_handlers={"SelectV2": (_select_as_where, [])},
            tensors_to_rename={
                inputs[0]: RAW_FEATURES_KEY,
                inputs[1]: RAW_STAMPS_KEY,
                outputs[0]: SERVING_OUTPUT_KEY,
            },
        )
    flow = control_flow_nodes(proto)
    if flow:
        raise ValueError(f"{model_dir}: the ONNX graph has control flow: {flow}")
    props = {
        "name": meta["name"],
        "version": meta["version"],
        "features": json.dumps(list(meta["features"])),
        "class_names": json.dumps(list(meta.get("class_names", CLASS_NAMES))),
        "crop": str(meta["crop"]),
        "images_only": json.dumps(bool(meta.get("images_only", False))),
        "survey": model_survey(meta),
        "stamp_size": str(stamp_shape(meta)[0]),
        "flips": json.dumps(bool(meta.get("architecture", {}).get("flips", False))),
        "inputs": json.dumps(meta.get("inputs", {})),
        "outputs": json.dumps({SERVING_OUTPUT_KEY: "float32 [N, 5] softmax, class_names order"}),
        "derived_from": f"SavedModel and {METADATA_FILE} of {Path(model_dir).name}",
        "converter": f"tf2onnx {tf2onnx.__version__}, TensorFlow {tf.__version__}",
    }
    onnx.helper.set_model_props(proto, props)
    proto.producer_name, proto.producer_version = "stampflow export-onnx", tf2onnx.__version__
    proto.graph.name = meta["name"]
    proto.doc_string = meta.get("description", "")
    onnx.checker.check_model(proto)
    path = out or os.path.join(model_dir, ONNX_FILE)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, path)
    ops = sorted({n.op_type for n in proto.graph.node})
    return {"path": path, "opset": opset, "nodes": len(proto.graph.node), "ops": ops, **props}


def register(subparsers: Any, name: str) -> None:
    """Add ``stampflow export-onnx``."""
    parser = subparsers.add_parser(
        name,
        help="export a model's serving function (transform included) as one ONNX graph",
        description=export_onnx.__doc__.split("\n\n")[0],
    )
    parser.add_argument("model", help="stampflow model directory")
    parser.add_argument(
        "--out", default=None, help=f"ONNX file to write (default: MODEL/{ONNX_FILE})"
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")

    def _main(args: Any) -> int:
        info = export_onnx(args.model, args.out, args.opset)
        print(
            f"wrote {info['path']}: {info['name']} {info['version']}, opset {info['opset']}, "
            f"{info['nodes']} nodes, no control flow",
            file=sys.stdout,
        )
        return 0

    parser.set_defaults(func=_main)
