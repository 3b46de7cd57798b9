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

import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.schema import CLASS_NAMES, RAW_FEATURES_KEY, RAW_STAMPS_KEY, SERVING_OUTPUT_KEY

__all__ = [
    "BATCH_BOUNDS",
    "KNOWN_SSO_KEY",
    "KNOWN_SSO_PROBABILITIES",
    "MAX_BATCH",
    "METADATA_FILE",
    "MIN_BATCH",
    "ONNX_FILE",
    "ModelDirError",
    "NullHandler",
    "OnnxHandler",
    "OnnxModel",
    "PollingHandler",
    "StampClassifierHandler",
    "VersionedHandler",
    "WatchedModel",
    "model_dirs_newest_first",
    "model_survey",
    "onnx_file_problem",
    "onnx_metadata_problem",
    "onnx_providers",
    "read_metadata",
    "serving_function",
    "stamp_shape",
    "visible_gpus",
    "write_metadata",
]

METADATA_FILE = "stampflow_model.json"
#: Batch bounds for ``BatchElements`` in front of the model: large enough to amortise the
#: TensorFlow call, small enough to keep a worker's memory flat (a raw example is ~48 kB).
MIN_BATCH, MAX_BATCH = 64, 256
#: Batch bounds per device (``--device``): a GPU wants larger batches to be worth its launch
#: overhead (48 MB of raw examples at 1,024; the network itself is 0.4 GFLOP per alert).
BATCH_BOUNDS: dict[str, tuple[int, int]] = {"cpu": (MIN_BATCH, MAX_BATCH), "gpu": (256, 1024)}


def visible_gpus() -> list[str]:
    """Names of the GPUs TensorFlow sees (empty without one, or without TensorFlow)."""
    try:
        import tensorflow as tf
    except ImportError:
        return []
    return [d.name for d in tf.config.list_physical_devices("GPU")]


def _grow_gpu_memory() -> None:
    # TensorFlow grabs the whole GPU by default; with growth on, several worker processes (or
    # another framework) can share one card. Must run before the first GPU op; later it raises.
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        # RuntimeError: already initialised in this process, nothing left to change
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)


class ModelDirError(ValueError):
    """A ``--model`` directory that is not an exported stampflow model."""


def model_survey(meta: dict[str, Any]) -> str:
    """The survey a model's metadata declares (models from before surveys were named: ZTF)."""
    return str(meta.get("survey") or "ztf")


def stamp_shape(meta: dict[str, Any]) -> tuple[int, int, int]:
    """``(S, S, 3)``: the raw stamp cube a model's signature takes (63 when not recorded)."""
    size = int(meta.get("stamp_size") or 63)
    return (size, size, 3)


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

    Raises
    ------
    ModelDirError
        When the directory has no readable metadata (the message says where one is, if a
        sub-directory holds it) or its class order differs from :data:`CLASS_NAMES`.
    """
    path = FileSystems.join(model_dir, METADATA_FILE)
    try:
        with FileSystems.open(path) as f:
            meta = json.load(f)
    # OSError, ValueError: a local path or bad JSON; gs:// raises google.api_core's NotFound or
    # Forbidden, which derive from neither: all are the same user mistake here.
    except Exception as e:
        hint = ""
        for sub in ("model", "export"):
            if FileSystems.exists(FileSystems.join(model_dir, sub, METADATA_FILE)):
                hint = f"; did you mean {FileSystems.join(model_dir, sub)}?"
        raise ModelDirError(
            f"{model_dir} is not an exported stampflow model (cannot read {METADATA_FILE}: "
            f"{type(e).__name__}: {e}){hint} Export one with `stampflow train` or "
            "`stampflow import-alerce`."
        ) from e
    if tuple(meta.get("class_names", CLASS_NAMES)) != CLASS_NAMES:
        raise ModelDirError(f"{model_dir}: class order {meta.get('class_names')} != {CLASS_NAMES}")
    return meta


def model_dirs_newest_first(pattern: str) -> list[str]:
    """Directories of the ``stampflow_model.json`` files matching ``pattern``, newest first.

    Parameters
    ----------
    pattern
        Glob of model *version directories'* metadata files, e.g.
        ``gs://B/models/*/stampflow_model.json`` (any Beam filesystem).

    Returns
    -------
    list of str
        By the metadata file's modification time, then path, newest first; empty when nothing
        matches or the location cannot be listed (logged). Export a new version into a new
        directory and write its metadata file last: the version then appears complete. (A copy
        that keeps the original's modification times, ``cp -a``, counts as old.)
    """
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # an unreadable bucket; a glob without a match yet lands here too
        logging.getLogger(__name__).warning("model watch: cannot list %s: %s", pattern, e)
        return []
    matches = sorted(matches, key=lambda m: (m.last_updated_in_seconds, m.path), reverse=True)
    return [os.path.dirname(m.path) for m in matches]


class WatchedModel:
    """A loaded SavedModel that swaps itself for the newest version matching a glob.

    RunInference shares one loaded model per worker process between its threads; this object is
    that model. :meth:`current` looks for a new version at most every ``interval_s`` (one thread
    checks, the others go on with the old one), loads it, and swaps ``(model, directory)`` in one
    assignment, so a batch always runs on one complete version and knows which. A version whose
    feature list differs from the first one's, or that fails to load, is logged and never tried
    again; the newest version that loads is served.

    Parameters
    ----------
    pattern
        As for :func:`model_dirs_newest_first`.
    model_dir
        The version to serve until the glob matches something.
    interval_s
        Seconds between looks at the glob.
    load
        Loads one version (the handler's options: XLA, mixed precision); the plain SavedModel
        by default.
    """

    def __init__(
        self,
        pattern: str,
        model_dir: str,
        interval_s: float,
        load: Callable[[str], Any] | None = None,
    ) -> None:
        self.pattern, self.interval_s = pattern, interval_s
        self._load = load or _load
        self.features = read_metadata(model_dir)["features"]
        self._rejected: set[str] = set()
        self._lock = threading.Lock()
        self._current: tuple[Any, str] | None = None
        self._swap()
        if self._current is None:  # no usable version matches yet: serve --model
            self._current = (self._load(model_dir), model_dir)
        self._next_check = time.monotonic() + interval_s

    def _swap(self) -> None:
        """Serve the newest matching version that loads, unless it is the one running."""
        running = self._current[1] if self._current else None
        for candidate in model_dirs_newest_first(self.pattern):
            if candidate == running:
                return
            if candidate not in self._rejected:
                loaded = self._try(candidate)
                if loaded is not None:
                    self._current = loaded
                    return

    def _try(self, model_dir: str) -> tuple[Any, str] | None:
        """Load a candidate version, or log why not and never try that directory again."""
        log = logging.getLogger(__name__)
        try:
            if read_metadata(model_dir)["features"] != self.features:
                raise ModelDirError("its features differ from the running model's")
            loaded = (self._load(model_dir), model_dir)
        except Exception as e:  # a bad or half-copied version: keep serving the old one
            log.warning("model watch: skipping %s: %s", model_dir, e)
            self._rejected.add(model_dir)
            return None
        log.info("model watch: now serving %s", model_dir)
        return loaded

    def current(self) -> tuple[Any, str]:
        """``(loaded model, its directory)``, after swapping in a newer version if one is due."""
        if time.monotonic() >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = time.monotonic() + self.interval_s
                self._swap()
            finally:
                self._lock.release()
        return self._current


def _load(
    model_dir: str, jit_compile: bool = False, mixed_precision: bool = False, device: str = "cpu"
) -> Any:
    import tensorflow as tf

    from model.remote import local_copy

    _grow_gpu_memory()
    # A gs:// model is copied down through Beam's FileSystems first: TensorFlow's own GCS reader
    # is a second code path to authenticate on a worker and ignores STORAGE_EMULATOR_HOST.
    local = local_copy(model_dir)
    model = tf.saved_model.load(local)
    serve = model.signatures["serving_default"]
    if mixed_precision:
        serve = _mixed_serve(model, local, device) or serve
    if jit_compile:
        # XLA over the whole serving function (transform + four rotations + softmax).
        serve = tf.function(serve, jit_compile=True)
    if jit_compile or mixed_precision:
        model.stampflow_serve = serve
    return model


def _mixed_serve(model: Any, local: str, device: str) -> Any:
    """The mixed-precision serving function, or None (logged) where this machine cannot run it.

    The same weights in a network computing in float16 (GPU) or bfloat16 (CPU); the module is
    kept on the model, its serving function refers to the variables it owns. A CPU without
    bfloat16 support (oneDNN on AVX2 refuses bfloat16 convolutions) would fail every batch: one
    probe example decides before any alert is served, and float32 is served instead.
    """
    import tensorflow as tf

    from model.rebuild import mixed_policy, rebuild_serving_model

    meta = read_metadata(local)
    policy = mixed_policy(device)
    try:
        model.stampflow_mixed = rebuild_serving_model(local, meta, policy, loaded=model)
        serve = model.stampflow_mixed.serve
        probe = serve(
            **{
                RAW_FEATURES_KEY: tf.zeros([1, len(meta["features"])], tf.float32),
                RAW_STAMPS_KEY: tf.zeros([1, *stamp_shape(meta)], tf.float32),
            }
        )[SERVING_OUTPUT_KEY].numpy()
        if not np.all(np.isfinite(probe)):
            raise ValueError("non-finite probabilities on the probe example")
    except Exception as e:
        logging.getLogger(__name__).warning(
            "--mixed-precision: %s cannot run here (%s: %s); serving float32",
            policy,
            type(e).__name__,
            str(e).strip().splitlines()[0] if str(e).strip() else "",
        )
        return None
    return serve


def serving_function(model: Any) -> Any:
    """The loaded model's serving function (XLA-compiled with ``jit_compile``, the mixed-precision
    network with ``mixed_precision``)."""
    serve = getattr(model, "stampflow_serve", None)
    return serve if serve is not None else model.signatures["serving_default"]


def write_metadata(model_dir: str, metadata: dict[str, Any]) -> None:
    """Write ``stampflow_model.json`` beside a SavedModel."""
    Path(model_dir, METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=False))


#: ``{"features": raw [F], "stamps": raw [63, 63, 3]}``, as :mod:`transforms.featurize` emits.
Example = dict[str, np.ndarray]
#: Example key marking a known solar-system object (``--rules alerce``): never sent to the network.
KNOWN_SSO_KEY = "known_sso"
#: Probabilities answered for such an example: asteroid 1, the rest 0.
KNOWN_SSO_PROBABILITIES = np.array([float(c == "asteroid") for c in CLASS_NAMES], np.float32)


class StampClassifierHandler(ModelHandler[Example, PredictionResult, Any]):
    """Serve a stampflow SavedModel to ``RunInference``.

    Parameters
    ----------
    model_dir
        Directory with the SavedModel and ``stampflow_model.json``.
    min_batch_size, max_batch_size
        Bounds passed to ``BatchElements``; None: :data:`BATCH_BOUNDS` of ``device``.
    device
        ``"cpu"`` or ``"gpu"``: the batch bounds. TensorFlow places the graph on a GPU by itself
        when it sees one; GPU memory grows as needed instead of being taken whole.
    jit_compile
        Compile the serving function with XLA (``--jit-compile``).
    mixed_precision
        Serve the network rebuilt with a mixed dtype policy (``--mixed-precision``): float16
        compute on a GPU, bfloat16 on a CPU (fast only where the CPU has bfloat16 units,
        AVX512-BF16 / AMX), float32 weights, transform and softmax. Probabilities move by up to
        a few 1e-3 (``stampflow bench --device`` reports it); off by default.

    Notes
    -----
    One loaded model per worker process, shared by its threads (RunInference's shared handle);
    on a GPU machine on Dataflow, run one SDK process per VM
    (``--experiments=no_use_multiple_sdk_containers``) so one model holds the card.
    """

    def __init__(
        self,
        model_dir: str,
        min_batch_size: int | None = None,
        max_batch_size: int | None = None,
        device: str = "cpu",
        jit_compile: bool = False,
        mixed_precision: bool = False,
    ) -> None:
        super().__init__()
        self.model_dir = model_dir
        self.mixed_precision = mixed_precision
        low, high = BATCH_BOUNDS[device]
        self._batch = {
            "min_batch_size": min_batch_size or low,
            "max_batch_size": max_batch_size or high,
        }
        self.device, self.jit_compile = device, jit_compile

    def load_model(self) -> Any:
        return self.open_model()

    def open_model(self) -> Any:
        """Load the model this handler runs (subclasses change the runtime here)."""
        return _load(self.model_dir, self.jit_compile, self.mixed_precision, self.device)

    def predict(self, model: Any, features: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, 5]`` for raw ``features`` ``[N, F]``, ``stamps`` ``[N, 63, 63, 3]``.

        The one call into the runtime; subclasses running another runtime override it.
        """
        import tensorflow as tf

        out = serving_function(model)(
            **{RAW_FEATURES_KEY: tf.constant(features), RAW_STAMPS_KEY: tf.constant(stamps)}
        )
        return out[SERVING_OUTPUT_KEY].numpy()

    def run_inference(
        self, batch: Sequence[Example], model: Any, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        # Known solar-system objects (flagged by pipeline.classify) are asteroids by rule: the
        # network runs on the others only.
        ask = [i for i, e in enumerate(batch) if not e.get(KNOWN_SSO_KEY)]
        probs = np.tile(KNOWN_SSO_PROBABILITIES, (len(batch), 1))
        if ask:
            asked = [batch[i] for i in ask]
            features = np.stack([e[RAW_FEATURES_KEY] for e in asked]).astype(np.float32, copy=False)
            stamps = np.stack([e[RAW_STAMPS_KEY] for e in asked]).astype(np.float32, copy=False)
            probs[ask] = self.predict(model, features, stamps)
        return [PredictionResult(example, p) for example, p in zip(batch, probs, strict=True)]

    def batch_elements_kwargs(self) -> dict[str, int]:
        return self._batch

    def get_num_bytes(self, batch: Sequence[Example]) -> int:
        return sum(e[RAW_FEATURES_KEY].nbytes + e[RAW_STAMPS_KEY].nbytes for e in batch)

    def get_metrics_namespace(self) -> str:
        return "stampflow_inference"

    def share_model_across_processes(self) -> bool:
        return False


class VersionedHandler(StampClassifierHandler):
    """:class:`StampClassifierHandler` that follows RunInference's model side input.

    The directory a model was loaded from is stored on the loaded object and returned as every
    prediction's ``model_id``, so each result names the model that computed it. Without a side
    input (batch) every ``model_id`` is ``model_dir``.
    """

    def update_model_path(self, model_path: str | None = None) -> None:
        if model_path:
            self.model_dir = model_path

    def load_model(self) -> Any:
        model = super().load_model()
        model.stampflow_model_dir = self.model_dir  # travels with the model, not the handler
        return model

    def run_inference(
        self, batch: Sequence[Example], model: Any, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        model_id = getattr(model, "stampflow_model_dir", self.model_dir)
        return [
            PredictionResult(r.example, r.inference, model_id)
            for r in super().run_inference(batch, model, inference_args)
        ]


class PollingHandler(StampClassifierHandler):
    """:class:`StampClassifierHandler` whose model follows a glob by itself (any runner).

    The loaded "model" is a :class:`WatchedModel`; every prediction's ``model_id`` is the
    directory of the version that computed it.

    Parameters
    ----------
    model_dir
        The version to serve until ``pattern`` matches one.
    pattern
        Glob of version directories' ``stampflow_model.json``.
    interval_s
        Seconds between looks at the glob.
    """

    def __init__(self, model_dir: str, pattern: str, interval_s: float, **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        self.pattern, self.interval_s = pattern, interval_s

    def load_model(self) -> WatchedModel:
        load = functools.partial(
            _load,
            jit_compile=self.jit_compile,
            mixed_precision=self.mixed_precision,
            device=self.device,
        )
        return WatchedModel(self.pattern, self.model_dir, self.interval_s, load)

    def run_inference(
        self, batch: Sequence[Example], model: Any, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        loaded, model_dir = model.current()
        return [
            PredictionResult(r.example, r.inference, model_dir)
            for r in super().run_inference(batch, loaded, inference_args)
        ]


#: The ONNX file beside the SavedModel in a model directory (``stampflow export-onnx`` writes it).
ONNX_FILE = "model.onnx"
#: ``onnxruntime``'s name for its CUDA execution provider (``onnxruntime-gpu`` only).
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
#: ONNX metadata keys that must equal ``stampflow_model.json``'s for the file to serve the model.
ONNX_CHECKED_KEYS = ("name", "version", "features", "class_names")


def onnx_metadata_problem(metadata: dict[str, Any], onnx_props: dict[str, str]) -> str | None:
    """Why an ONNX file's metadata does not belong to a model directory, or None when it does.

    Parameters
    ----------
    metadata
        The directory's ``stampflow_model.json``.
    onnx_props
        The ONNX file's metadata properties (strings; lists are JSON), as written by
        :func:`model.onnx_export.export_onnx`.

    Returns
    -------
    str or None
        One line naming the first key that differs (name, version, feature or class order).
    """
    for key in ONNX_CHECKED_KEYS:
        if key not in onnx_props:
            return f"its metadata has no {key!r} (not written by stampflow export-onnx)"
        got = onnx_props[key]
        want = metadata.get(key, list(CLASS_NAMES) if key == "class_names" else None)
        if (json.loads(got) if isinstance(want, list) else got) != want:
            return f"it was exported from another model ({key} {got} != {want})"
    return None


def _no_onnx_file(model_dir: str) -> str:
    return f"{model_dir} has no {ONNX_FILE}; write it with `stampflow export-onnx {model_dir}`"


def onnx_file_problem(model_dir: str, metadata: dict[str, Any]) -> str | None:
    """Why a model directory cannot serve ``--runtime onnx``, or None when it can.

    Parameters
    ----------
    model_dir
        Model directory (any Beam filesystem).
    metadata
        Its ``stampflow_model.json``.

    Returns
    -------
    str or None
        One line: no :data:`ONNX_FILE` (with the command that writes it), or one whose metadata
        names another model (:func:`onnx_metadata_problem`).
    """
    import onnx

    path = FileSystems.join(model_dir, ONNX_FILE)
    if not FileSystems.exists(path):
        return _no_onnx_file(model_dir)
    with FileSystems.open(path) as f:
        proto = onnx.load_model_from_string(f.read())
    problem = onnx_metadata_problem(metadata, {p.key: p.value for p in proto.metadata_props})
    if problem:
        return f"{path}: {problem}; re-run `stampflow export-onnx {model_dir}`"
    return None


def onnx_providers(device: str) -> list[str]:
    """Execution providers to ask ``onnxruntime`` for, best first.

    Parameters
    ----------
    device
        ``"gpu"``: CUDA first when this ``onnxruntime`` has it (``onnxruntime-gpu``), then the
        CPU; ``"cpu"``: the CPU only.

    Returns
    -------
    list of str
        Provider names for ``InferenceSession(providers=...)``.
    """
    import onnxruntime as ort

    if device == "gpu" and CUDA_PROVIDER in ort.get_available_providers():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


class OnnxModel:
    """A loaded ``model.onnx``: one ``onnxruntime.InferenceSession``, thread-safe to run.

    Parameters
    ----------
    model_dir
        Model directory (any Beam filesystem) holding :data:`ONNX_FILE` and
        ``stampflow_model.json``.
    device
        ``"cpu"`` or ``"gpu"`` (see :func:`onnx_providers`).

    Raises
    ------
    ModelDirError
        When the directory has no ONNX file, or one exported from another model version.

    Attributes
    ----------
    provider
        The execution provider that runs the graph (what ``onnxruntime`` chose, not what was asked).
    description
        One line: onnxruntime version, file, provider (logged when the model loads).
    """

    def __init__(self, model_dir: str, device: str = "cpu") -> None:
        import onnxruntime as ort

        metadata = read_metadata(model_dir)
        path = FileSystems.join(model_dir, ONNX_FILE)
        try:
            with FileSystems.open(path) as f:
                data = f.read()
        except OSError:
            raise ModelDirError(_no_onnx_file(model_dir)) from None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # onnxruntime's own warnings go to stderr unformatted
        wanted = onnx_providers(device)
        self.session = ort.InferenceSession(data, options, providers=wanted)
        problem = onnx_metadata_problem(metadata, self.session.get_modelmeta().custom_metadata_map)
        if problem:
            raise ModelDirError(
                f"{path}: {problem}; re-run `stampflow export-onnx {model_dir}`"
            ) from None
        self.provider = self.session.get_providers()[0]
        self.description = f"onnxruntime {ort.__version__}: {path} on {self.provider}"
        log = logging.getLogger(__name__)
        if device == "gpu" and self.provider != CUDA_PROVIDER:
            # Never a silent CPU fallback: say why the GPU is not used.
            why = (
                "CUDA provider did not start (no GPU or driver?)"
                if CUDA_PROVIDER in wanted
                else "this onnxruntime has no CUDA provider (install onnxruntime-gpu)"
            )
            log.warning("%s, not on the GPU: %s", self.description, why)
        else:
            log.info("%s", self.description)

    def __call__(self, features: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, 5]`` for raw inputs (see :class:`StampClassifierHandler`)."""
        feeds = {RAW_FEATURES_KEY: features, RAW_STAMPS_KEY: stamps}
        return self.session.run([SERVING_OUTPUT_KEY], feeds)[0]


class OnnxHandler(VersionedHandler):
    """:class:`VersionedHandler` running the model's ONNX export with ``onnxruntime``.

    ``--runtime onnx``. The model directory must carry :data:`ONNX_FILE`, exported from its
    SavedModel (the model of record) by ``stampflow export-onnx``; its metadata must name the same
    model version. Batching, known solar-system objects, ``model_id`` and dead letters are those
    of the TensorFlow handler; only the call into the runtime differs. ``device="gpu"`` asks for
    the CUDA execution provider (``onnxruntime-gpu``); the provider that runs is logged, with a
    warning when the GPU was asked for and is not used. ``jit_compile`` does not apply.
    """

    def open_model(self) -> OnnxModel:
        return OnnxModel(self.model_dir, self.device)

    def predict(self, model: OnnxModel, features: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        return model(features, stamps)


class NullHandler(StampClassifierHandler):
    """Fixed probabilities, no TensorFlow: ``--runtime null``, to measure everything but the model.

    Every example gets :data:`NULL_PROBABILITIES` (uniform) and ``model_dir`` as its model id; the
    batching, keying and dead-letter paths around RunInference are exactly those of a real run.
    """

    def load_model(self) -> None:
        return None

    def run_inference(
        self, batch: Sequence[Example], model: Any, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        return [
            PredictionResult(
                e,
                KNOWN_SSO_PROBABILITIES if e.get(KNOWN_SSO_KEY) else NULL_PROBABILITIES,
                self.model_dir,
            )
            for e in batch
        ]


#: What :class:`NullHandler` answers for every alert.
NULL_PROBABILITIES = np.full(len(CLASS_NAMES), 1.0 / len(CLASS_NAMES), dtype=np.float32)
