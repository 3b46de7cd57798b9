"""Per-stage throughput of the classifier, and the machine it runs on, measured in one process.

Stages, each in alerts/s on the same alerts:

* container decoding and stamp decoding, ours against ``fastavro.reader`` per file and against
  astropy (:func:`bench.decode_bench.measure`);
* featurisation (:func:`transforms.featurize.featurize_alerts` on batches of 1,000);
* the fitted tf.Transform graph alone (:func:`model.export.apply_transform`);
* inference through the exported SavedModel's ``serving_default`` signature (transform embedded)
  at batch 1, 64 and 256, in the production layout (kernel 5, crop 21, 23 features);
* the same through its ONNX export with onnxruntime, TensorFlow measured again beside it
  (:func:`measure_onnx`, ``stampflow bench --onnx``).

Inference efficiency is the achieved GFLOP/s (alerts/s × :func:`model_flops_per_alert`) over
the machine's fp32 matrix-multiply GFLOP/s (:func:`machine_gflops`, TensorFlow, same process,
same thread settings as the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.serving import load_serving
from bench.timing import best_rate
from model.network import NetworkConfig
from transforms.alerts import Alert
from transforms.schema import CLASS_NAMES, FEATURES_PRODUCTION

__all__ = [
    "FEATURIZE_BATCH",
    "INFERENCE_BATCHES",
    "PRODUCTION",
    "build_bench_model",
    "ensure_onnx",
    "examples_of",
    "featurize_rate",
    "inference_rates",
    "machine_gflops",
    "measure_onnx",
    "measure_stages",
    "model_flops_per_alert",
    "model_macs",
    "transform_rate",
]

#: The production layout the benchmark model is built with (SPEC §6).
PRODUCTION = NetworkConfig(kernel_size=5, crop=21, n_features=len(FEATURES_PRODUCTION))
#: Batch sizes at which inference is measured.
INFERENCE_BATCHES = (1, 64, 256)
#: Alerts per featurisation call (what a Beam bundle of that size would see).
FEATURIZE_BATCH = 1000


def model_macs(config: NetworkConfig = PRODUCTION) -> dict[str, int]:
    """Multiply-accumulates per alert of :func:`model.network.build_network`, by layer.

    Convolutions and the first dense layer run on the four 90° rotations of the stamps (batch
    ×4; ×8 with their mirror images for a ``flips`` network); the metadata head (dense 2, dense 3,
    logits) runs once per alert. Biases, ReLU, pooling, batch norm, softmax and the tf.Transform
    graph are not counted (they are < 0.1%).

    Parameters
    ----------
    config
        Architecture (kernel size, crop, padding, number of features).

    Returns
    -------
    dict
        ``{layer: MACs per alert}``; rotated layers already include the factor of the views.
    """
    k, rotations = config.kernel_size, config.views  # 4 rotations, or 8 with flips
    side = config.crop + 2 * config.padding - 4 + 1  # 4×4 valid convolution
    half, quarter = side // 2, side // 2 // 2
    macs = {
        "conv1": side * side * 4 * 4 * 3 * 32,
        "conv2": side * side * k * k * 32 * 32,
        "conv3": half * half * k * k * 32 * 64,
        "conv4": half * half * k * k * 64 * 64,
        "conv5": half * half * k * k * 64 * 64,
        "dense1": quarter * quarter * 64 * 64,
    }
    macs = {name: rotations * m for name, m in macs.items()}
    if config.n_features:
        macs["dense2"] = (64 + config.n_features) * 64
        macs["dense3"] = 64 * 64
    else:
        macs["dense2"] = rotations * 64 * 64  # images-only: dense 2 before the cyclic pool
    macs["logits"] = 64 * len(CLASS_NAMES)
    return macs


def model_flops_per_alert(config: NetworkConfig = PRODUCTION) -> int:
    """Floating-point operations per alert: 2 × :func:`model_macs` (a MAC is a mul and an add).

    Parameters
    ----------
    config
        Architecture.

    Returns
    -------
    int
        FLOPs for one alert (production layout: 421,154,304, i.e. 0.42 GFLOP).
    """
    return 2 * sum(model_macs(config).values())


def machine_gflops(size: int = 2048, seconds: float = 2.0) -> dict[str, float]:
    """The machine's fp32 matrix-multiply rate, TensorFlow and numpy, in this process.

    TensorFlow's rate (Eigen/oneDNN, the same kernels and thread pool the model's convolutions
    use) is the reference for inference efficiency. numpy's OpenBLAS rate is reported beside it;
    on processors where ``OPENBLAS_CORETYPE`` is forced to an older kernel it is lower.

    Parameters
    ----------
    size
        Side of the square float32 matrices.
    seconds
        Minimum time per measurement (best of three).

    Returns
    -------
    dict
        ``tensorflow`` and ``numpy`` GFLOP/s.
    """
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2 * size**3
    ta, tb = tf.constant(a), tf.constant(b)
    matmul = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    matmul(ta, tb).numpy()  # trace and warm up

    def tf_pass() -> int:
        matmul(ta, tb).numpy()
        return 1

    def np_pass() -> int:
        np.matmul(a, b)
        return 1

    np_pass()
    return {
        "tensorflow": best_rate(tf_pass, 3, seconds / 3) * flops / 1e9,
        "numpy": best_rate(np_pass, 3, seconds / 3) * flops / 1e9,
    }


def examples_of(
    alerts: Sequence[Alert], feature_names: Sequence[str] = FEATURES_PRODUCTION
) -> tuple[np.ndarray, np.ndarray]:
    """Raw model inputs of ``alerts`` (NaN-padded stamps): features ``[N, F]`` in the order of
    ``feature_names`` (a model's own list), stamps ``[N, 63, 63, 3]``."""
    from transforms.featurize import featurize_alerts

    result = featurize_alerts(alerts, feature_names, "pad")
    if not result.examples:
        raise ValueError("no alert could be featurised")
    features = np.stack([e["features"] for _, e in result.examples])
    stamps = np.stack([e["stamps"] for _, e in result.examples])
    return features, stamps


def build_bench_model(alerts: Sequence[Alert], out_dir: str | Path, seed: int = 0) -> Path:
    """Export a random-weight production-layout model, its transform fitted on ``alerts``.

    Throughput does not depend on the weights, so the benchmark does not need the shipped model
    (``model/default``); the layout, transform and signature are the production ones. A model
    already exported at ``out_dir`` is reused.

    Parameters
    ----------
    alerts
        Alerts to fit the transform's statistics on (a few hundred suffice).
    out_dir
        Work directory; the model is ``out_dir/model``.
    seed
        Keras seed for the random weights.

    Returns
    -------
    pathlib.Path
        The exported model directory.
    """
    import keras

    from model.export import export_model, fit_transform
    from model.handler import METADATA_FILE
    from model.network import build_network

    out = Path(out_dir)
    model_dir = out / "model"
    if (model_dir / METADATA_FILE).is_file():
        return model_dir
    features, stamps = examples_of(alerts)
    transform = fit_transform(
        features, stamps, FEATURES_PRODUCTION, str(out / "tft"), PRODUCTION.crop
    )
    keras.utils.set_random_seed(seed)
    net = build_network(PRODUCTION)
    export_model(
        net,
        transform,
        str(model_dir),
        PRODUCTION,
        FEATURES_PRODUCTION,
        "bench-random",
        "0",
        description="random weights, production layout (benchmark only)",
    )
    return model_dir


def featurize_rate(alerts: Sequence[Alert], repeat: int = 3, batch: int = FEATURIZE_BATCH) -> float:
    """alerts/s of :func:`transforms.featurize.featurize_alerts` on batches of ``batch``."""
    from transforms.features import sky_coordinates
    from transforms.featurize import featurize_alerts

    sky_coordinates(np.zeros(1), np.zeros(1))  # astropy's one-off set-up, as in DoFn.setup

    def once() -> int:
        for i in range(0, len(alerts), batch):
            featurize_alerts(alerts[i : i + batch], FEATURES_PRODUCTION, "drop")
        return len(alerts)

    return best_rate(once, repeat)


def transform_rate(
    transform_dir: str | Path, features: np.ndarray, stamps: np.ndarray, repeat: int = 3
) -> float:
    """alerts/s of :func:`model.export.apply_transform` (the tf.Transform graph alone)."""
    from model.export import apply_transform

    apply_transform(str(transform_dir), features[:8], stamps[:8])  # load the graph once

    def once() -> int:
        apply_transform(str(transform_dir), features, stamps)
        return len(features)

    return best_rate(once, repeat)


def inference_rates(
    model_dir: str | Path,
    features: np.ndarray,
    stamps: np.ndarray,
    batches: Sequence[int] = INFERENCE_BATCHES,
    seconds: float = 2.0,
    jit_compile: bool = False,
    runtime: str = "tensorflow",
    mixed_precision: bool = False,
) -> dict[int, float]:
    """alerts/s through the serving signature at each batch size (best of three passes).

    Parameters
    ----------
    model_dir
        Exported model.
    features, stamps
        Raw examples; tiled when fewer than the largest batch.
    batches
        Batch sizes.
    seconds
        Minimum time per pass.
    jit_compile
        Measure the XLA-compiled serving function instead.
    runtime
        ``"tensorflow"`` or ``"onnx"`` (the model's ``model.onnx`` with onnxruntime).
    mixed_precision
        Measure the mixed-precision network (``stampflow run --mixed-precision``) instead.

    Returns
    -------
    dict
        ``{batch size: alerts/s}``.
    """
    predict = load_serving(model_dir, jit_compile, runtime, mixed_precision)
    reps = -(-max(batches) // len(features))
    features = np.tile(features, (reps, 1))
    stamps = np.tile(stamps, (reps, 1, 1, 1))
    rates = {}
    for b in batches:
        f, s = features[:b], stamps[:b]
        predict(f, s)  # warm up this shape

        def once(f=f, s=s) -> int:
            predict(f, s)
            return len(f)

        rates[b] = best_rate(once, 3, seconds / 3)
    return rates


def measure_stages(
    containers: Sequence[bytes],
    model_dir: str | Path,
    machine: float,
    repeat: int = 3,
    inference_seconds: float = 2.0,
    inference: bool = True,
) -> dict[str, Any]:
    """Every per-stage rate on ``containers``.

    Parameters
    ----------
    containers
        Alert container bytes.
    model_dir
        Model from :func:`build_bench_model` (its ``../tft`` is the transform measured alone).
    machine
        The machine's fp32 GFLOP/s, for the inference efficiency.
    repeat
        Passes per measurement (best kept).
    inference_seconds
        Minimum time per inference pass.
    inference
        Measure inference too (it does not depend on the alerts).

    Returns
    -------
    dict
        ``decoding`` (:func:`bench.decode_bench.measure`), ``featurize``,
        ``featurize_per_alert`` (:func:`bench.baseline.per_alert_features_rate`), ``transform``,
        ``inference`` (``{batch: {"alerts_per_s", "gflops", "efficiency"}}``).
    """
    from bench.baseline import per_alert_features_rate
    from bench.decode_bench import measure
    from transforms.alerts import decode_alerts

    decoding = measure(list(containers), repeat)
    alerts = [a for c in containers for a in decode_alerts(c, "bench")[0]]
    features, stamps = examples_of(alerts)
    rates = {}
    if inference:
        rates = inference_rates(model_dir, features, stamps, seconds=inference_seconds)
    return {
        "alerts": len(alerts),
        "decoding": decoding,
        "featurize": featurize_rate(alerts, repeat),
        # the peer way: one SkyCoord transform per alert (on at most 200 alerts: it is slow)
        "featurize_per_alert": per_alert_features_rate([a.candidate for a in alerts[:200]], repeat),
        "transform": transform_rate(Path(model_dir).parent / "tft", features, stamps, repeat),
        "inference": _with_gflops(rates, machine),
    }


def _with_gflops(rates: dict[int, float], machine: float) -> dict[int, dict[str, float]]:
    """``{batch: alerts/s}`` → ``{batch: {"alerts_per_s", "gflops", "efficiency"}}``."""
    flops = model_flops_per_alert(PRODUCTION)
    return {
        b: {
            "alerts_per_s": rate,
            "gflops": rate * flops / 1e9,
            "efficiency": rate * flops / 1e9 / machine,
        }
        for b, rate in rates.items()
    }


def ensure_onnx(model_dir: str | Path) -> Path:
    """The model's ``model.onnx``, exported by :func:`model.onnx_export.export_onnx` if missing."""
    from model.handler import ONNX_FILE
    from model.onnx_export import export_onnx

    path = Path(model_dir) / ONNX_FILE
    if not path.is_file():
        export_onnx(str(model_dir))
    return path


def measure_onnx(
    model_dir: str | Path,
    alerts: Sequence[Alert],
    machine: float,
    seconds: float = 2.0,
    batches: Sequence[int] = INFERENCE_BATCHES,
) -> dict[str, Any]:
    """onnxruntime against TensorFlow on the same model and alerts, back to back per batch size.

    Both run on the CPU in this process (the same threads and load), so the ratio is fair even on
    a machine others share.

    Parameters
    ----------
    model_dir
        Model from :func:`build_bench_model`; its ONNX export is written if missing.
    alerts
        Alerts whose raw examples are fed to both.
    machine
        The machine's fp32 GFLOP/s.
    seconds
        Minimum time per pass.
    batches
        Batch sizes.

    Returns
    -------
    dict
        ``onnxruntime`` and ``tensorflow`` (``{batch: {"alerts_per_s", "gflops",
        "efficiency"}}``), ``max_abs_diff`` (largest probability difference on ``alerts``),
        ``provider`` and ``alerts``.
    """
    from model.handler import OnnxModel

    ensure_onnx(model_dir)
    features, stamps = examples_of(alerts)
    ours, theirs = {}, {}
    for b in batches:
        theirs.update(inference_rates(model_dir, features, stamps, (b,), seconds))
        ours.update(inference_rates(model_dir, features, stamps, (b,), seconds, runtime="onnx"))
    onnx_model = OnnxModel(str(model_dir))
    diff = np.abs(onnx_model(features, stamps) - load_serving(model_dir)(features, stamps))
    return {
        "onnxruntime": _with_gflops(ours, machine),
        "tensorflow": _with_gflops(theirs, machine),
        "max_abs_diff": float(diff.max()),
        "provider": onnx_model.provider,
        "alerts": len(features),
    }
