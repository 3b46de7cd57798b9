"""Read ALeRCE's published TF1 stamp-classifier checkpoints into our Keras network.

No TF1 graph is executed: variables are read with ``tf.train.load_checkpoint``, the architecture
variant is inferred from their shapes (kernel size from ``conv_2_2``, feature count from
``batchnorm_features``, images-only when that scope is absent) and each variable is copied onto the
layer of the same scope name in :func:`model.network.build_network`. Feature statistics come from
the JSON beside the checkpoint or from ALeRCE's ``feature_norm_stats.pkl``, which is read with an
unpickler that only admits numpy scalars and dtypes (never arbitrary code).
"""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path
from typing import Any, ClassVar

import tensorflow as tf

from model.network import LAYER_NAMES, LAYER_NAMES_IMAGES_ONLY, NetworkConfig, build_network

#: Crop sizes the paper searched (Table 3) [pixels].
CROPS = (21, 41, 63)


class CheckpointError(Exception):
    """A checkpoint whose variables do not match any known stamp-classifier layout."""


def checkpoint_prefix(path: str | Path) -> str:
    """Accept a checkpoint directory or prefix; return the prefix (``.../model``)."""
    p = Path(path)
    if p.is_dir():
        index = sorted(p.glob("*.index"))
        if not index:
            raise CheckpointError(f"no *.index checkpoint in {p}")
        return str(index[0].with_suffix(""))
    return str(p)


def infer_config(prefix: str) -> NetworkConfig:
    """Infer the architecture variant from the checkpoint's variable shapes.

    Parameters
    ----------
    prefix
        Checkpoint prefix (``dir/model``).

    Returns
    -------
    NetworkConfig
        Kernel size, crop (from the flattened size) and feature count (0: images only).

    Raises
    ------
    CheckpointError
        When the expected scopes are missing.
    """
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    try:
        kernel = shapes["network/conv_2_2/conv2d/kernel"][0]
    except KeyError as e:
        raise CheckpointError(f"{prefix} has no network/conv_2_2 (not a stamp classifier)") from e
    n_features = shapes.get("network/batchnorm_features/gamma", [0])[0]
    names = LAYER_NAMES if n_features else LAYER_NAMES_IMAGES_ONLY
    dense1 = shapes.get(f"network/{names['dense1']}/{names['dense1']}/kernel")
    if dense1 is None:
        raise CheckpointError(f"{prefix} has no {names['dense1']} layer")
    side = math.isqrt(dense1[0] // 64)  # 6 for crop 21: (21 + 2*3 - 3) // 2 // 2
    crops = [c for c in CROPS if (c + 2 * 3 - 3) // 4 == side]
    if not crops:
        raise CheckpointError(f"{prefix}: flattened size {dense1[0]} fits no crop in {CROPS}")
    return NetworkConfig(kernel_size=kernel, crop=crops[0], n_features=n_features)


def _tensor_names(layer_name: str, kind: str) -> list[str]:
    base = f"network/{layer_name}"
    if kind == "conv":
        return [f"{base}/conv2d/kernel", f"{base}/conv2d/bias"]
    if kind == "dense":
        return [f"{base}/{layer_name}/kernel", f"{base}/{layer_name}/bias"]
    if kind == "logits":
        return [f"{base}/kernel", f"{base}/bias"]
    return [f"{base}/{v}" for v in ("gamma", "beta", "moving_mean", "moving_variance")]


def load_checkpoint_into(net: Any, prefix: str, config: NetworkConfig) -> int:
    """Copy every ALeRCE variable onto the layer of the same scope name.

    Parameters
    ----------
    net
        A model from :func:`model.network.build_network` with ``config``.
    prefix
        Checkpoint prefix.
    config
        The checkpoint's architecture (see :func:`infer_config`).

    Returns
    -------
    int
        Number of tensors copied.
    """
    reader = tf.train.load_checkpoint(prefix)
    names = LAYER_NAMES if config.n_features else LAYER_NAMES_IMAGES_ONLY
    kinds = {"conv1": "conv", "conv2": "conv", "conv3": "conv", "conv4": "conv", "conv5": "conv"}
    kinds |= {"dense1": "dense", "dense2": "dense", "dense3": "dense", "logits": "logits"}
    kinds |= {"batchnorm": "bn"}
    if not config.n_features:
        kinds.pop("dense3")
        kinds.pop("batchnorm")
    copied = 0
    for role, kind in kinds.items():
        layer = net.get_layer(names[role])
        tensors = [reader.get_tensor(n) for n in _tensor_names(names[role], kind)]
        layer.set_weights(tensors)
        copied += len(tensors)
    return copied


def load_alerce_network(path: str | Path):
    """Build our network with an ALeRCE checkpoint's weights.

    Parameters
    ----------
    path
        Checkpoint directory or prefix.

    Returns
    -------
    (keras.Model, NetworkConfig)
    """
    prefix = checkpoint_prefix(path)
    config = infer_config(prefix)
    net = build_network(config)
    load_checkpoint_into(net, prefix, config)
    return net, config


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admit numpy scalars and dtypes only: ALeRCE's stats pickle needs nothing else."""

    _ALLOWED: ClassVar[dict[tuple[str, str], str]] = {
        ("numpy.core.multiarray", "scalar"): "numpy._core.multiarray",
        ("numpy._core.multiarray", "scalar"): "numpy._core.multiarray",
        ("numpy", "dtype"): "numpy",
    }

    def find_class(self, module: str, name: str):
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a stats pickle")
        return getattr(__import__(target, fromlist=[name]), name)


def read_feature_stats(path: str | Path, model: str | None = None) -> dict[str, dict[str, float]]:
    """Read ``{feature: {"mean": m, "std": s}}`` from ALeRCE's pickle or a JSON file.

    Parameters
    ----------
    path
        A ``.pkl`` (ALeRCE) or ``.json`` file. A JSON may hold several models' statistics keyed
        by model (checkpoint directory) name; then ``model`` picks one.
    model
        Which model's statistics, for multi-model JSON files.

    Returns
    -------
    dict
        Plain floats, in the file's feature order.

    Raises
    ------
    KeyError
        When a multi-model file has no entry for ``model``.
    """
    p = Path(path)
    raw = p.read_bytes()
    data = json.loads(raw) if p.suffix == ".json" else _NumpyOnlyUnpickler(io.BytesIO(raw)).load()
    first = next(iter(data.values()), {})
    if "mean" not in first:  # {model: {feature: {mean, std}}}
        if model not in data:
            raise KeyError(f"{p} has statistics for {sorted(data)}, not {model!r}")
        data = data[model]
    return {k: {"mean": float(v["mean"]), "std": float(v["std"])} for k, v in data.items()}


def find_feature_stats(checkpoint_dir: str | Path) -> dict[str, dict[str, float]] | None:
    """The statistics of a checkpoint: ``feature_norm_stats.{json,pkl}`` in its directory, or a
    multi-model ``feature_norm_stats.json`` one level up keyed by the directory's name."""
    d = Path(checkpoint_dir)
    d = d if d.is_dir() else d.parent
    for name in ("feature_norm_stats.json", "feature_norm_stats.pkl"):
        if (d / name).is_file():
            return read_feature_stats(d / name, d.name)
    shared = d.parent / "feature_norm_stats.json"
    if shared.is_file():
        try:
            return read_feature_stats(shared, d.name)
        except KeyError:
            return None
    return None


def import_alerce(
    checkpoint: str | Path,
    out_dir: str | Path,
    stats_path: str | Path | None = None,
    name: str | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Turn an ALeRCE TF1 checkpoint into a stampflow model directory.

    Parameters
    ----------
    checkpoint
        Checkpoint directory or prefix.
    out_dir
        Model directory to write (any Beam filesystem: a ``gs://`` one is written locally and
        uploaded, metadata last).
    stats_path
        Feature statistics (``.json`` or ALeRCE ``.pkl``); default: found beside the checkpoint.
    name, version
        Recorded in the metadata and every output row (default ``alerce-<dir name>``, ``tf1``).

    Returns
    -------
    dict
        The model metadata written.
    """
    import tempfile

    import numpy as np

    from model.export import export_model, fit_transform
    from model.handler import METADATA_FILE
    from model.remote import local_output
    from transforms.schema import FEATURES_ALERCE_26, FEATURES_PRODUCTION

    prefix = checkpoint_prefix(checkpoint)
    net, config = load_alerce_network(prefix)
    if config.n_features == 26:
        features = FEATURES_ALERCE_26
    elif config.n_features in (0, 23):
        features = FEATURES_PRODUCTION
    else:
        raise CheckpointError(f"{prefix}: {config.n_features} features fit no known feature list")
    if config.n_features == 0:
        # Images only: the signature still takes features (one serving interface); unused.
        stats = {f: {"mean": 0.0, "std": 1.0} for f in features}
    elif stats_path is not None:
        stats = read_feature_stats(stats_path, Path(prefix).parent.name)
    else:
        stats = find_feature_stats(Path(prefix).parent)
        if stats is None:
            raise CheckpointError(f"no feature statistics beside {prefix}; pass --stats")
    missing = [f for f in features if f not in stats]
    if missing:
        raise CheckpointError(f"statistics lack {missing}")
    label = Path(prefix).parent.name
    with (
        local_output(str(out_dir), last=(METADATA_FILE,)) as staged,  # gs://: written, uploaded
        tempfile.TemporaryDirectory(prefix="stampflow-import-") as tmp,
    ):
        # Fixed statistics: the Beam fit runs no analyzer, two dummy rows suffice.
        transform = fit_transform(
            np.zeros((2, len(features)), np.float32),
            np.zeros((2, 63, 63, 3), np.float32),
            features,
            f"{tmp}/transform",
            config.crop,
            stats={f: stats[f] for f in features},
        )
        return export_model(
            net,
            transform,
            staged,
            config,
            features,
            name or f"alerce-{label}",
            version or "tf1",
            description=f"ALeRCE stamp classifier imported from {prefix}",
            extra={"source_checkpoint": str(prefix), "feature_stats": stats},
        )


def register(subparsers: Any, name: str) -> None:
    """Add ``stampflow import-alerce``."""
    parser = subparsers.add_parser(
        name,
        help="import an ALeRCE TF1 checkpoint as a stampflow model",
        description=import_alerce.__doc__.split("\n\n")[0],
    )
    parser.add_argument("checkpoint", help="checkpoint directory or prefix (dir/model)")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--stats", default=None, help="feature_norm_stats .json or .pkl")
    parser.add_argument("--name", default=None, help="model name (default alerce-<dir>)")
    parser.add_argument("--version", default=None, help="model version (default tf1)")

    def _main(args: Any) -> int:
        from model.remote import check_remote_output

        check_remote_output(args.out, "--out")  # a typo'd bucket fails before the import runs
        meta = import_alerce(args.checkpoint, args.out, args.stats, args.name, args.version)
        print(
            f"imported {meta['name']} ({meta['architecture']['kernel_size']}x"
            f"{meta['architecture']['kernel_size']} kernels, {len(meta['features'])} features"
            f"{', images only' if meta['images_only'] else ''}) to {args.out}"
        )
        return 0

    parser.set_defaults(func=_main)
