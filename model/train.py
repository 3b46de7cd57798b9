"""``stampflow train``: fit the transform, train the network as in the paper, evaluate, export.

1. Decode the labelled alerts and featurise them (the same pure functions the pipeline uses).
2. Split **by object** (no object in two splits): balanced validation and test sets of
   ``--val-per-class`` / ``--test-per-class`` alerts per class, the rest for training.
3. Fit the tf.Transform graph on the training split with Beam (``AnalyzeAndTransformDataset``)
   and apply it in process to every split: training sees exactly what serving will compute.
4. Train (SPEC §6): class-balanced batches, Adam(lr, β1 0.5, β2 0.9), loss cross-entropy − β
   entropy, validation loss every ``--val-every`` iterations, keep the best weights, stop after
   30k iterations (+10k while the best validation loss keeps improving after 20k) or at the
   ``--max-steps`` / ``--max-minutes`` budget. With ``--augment default`` (ZTF's default) each
   training batch is drawn from the *raw* examples, augmented (:mod:`model.augment`: rotations
   and flips, PSF mismatch, misregistration, zero point, noise, background, saturation: what the
   simulator cannot pin down) and run through the fitted transform, so the network sees what
   serving would compute for such an alert; validation and test inputs are never augmented.
   ``--augment none`` trains on the transformed examples as before, batch for batch.
5. Export the SavedModel with the transform embedded, reload it, and evaluate it on the test split:
   ``report.json`` and pictures in ``OUT/evaluation``; ``OUT/training_curve.json`` holds the
   learning curve (training and validation loss against the step) and the metadata records the
   augmentation.

``--survey lsst`` trains the Rubin model: alerts decoded by the LSST adapter (labels keyed by
``diaSourceId`` in the ``candid`` column), its 23 features (``--features lsst``, the only list it
takes), 30x30 stamps fed whole (``--crop 30``), the network averaged over the 8 rotations and
flips (``--flips``, exact D4 invariance) and the ``lsst`` augmentation preset (no saturation, no
dihedral: see :mod:`model.augment`); the model's metadata says ``survey: lsst``. Alerts of the
other survey are counted as unusable.

``--init-from MODEL`` fine-tunes an exported model (e.g. a small labelled real set on top of the
simulated default or an imported ALeRCE model): the network is built with MODEL's architecture
(survey, kernel, crop, features, images-only; conflicting flags are refused; flips too unless
``--flips``/``--no-flips`` says, as they add no weight), starts from MODEL's weights
(copied by layer and variable name, the scope names of :data:`model.network.LAYER_NAMES` that the
ALeRCE import also maps onto), and keeps MODEL's preprocessing: the z-score statistics are MODEL's
own, as fixed transform constants (the path ``import-alerce`` uses), not refitted on the small set
(``--init-stats refit`` refits them). The validation loss is also measured before the first step,
so the starting weights are kept when no step improves on them.

    stampflow train --alerts train_night/ --labels train_night/labels.csv --out models/mine \\
        --max-minutes 25
    stampflow train --alerts real/ --labels real/labels.csv --out models/tuned \\
        --init-from model/default --lr 1e-4 --val-per-class 10 --test-per-class 10 --max-steps 500
    stampflow train --survey lsst --alerts rubin/ --labels rubin/labels.csv --out models/rubin
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems

from model.augment import PRESET_SURVEYS, AugmentConfig, augment_batch
from model.augment import PRESETS as AUGMENT_PRESETS
from pipeline.argtypes import non_negative_int, positive_int
from transforms.schema import CLASS_NAMES
from transforms.surveys import LSST, ZTF, get_survey

__all__ = [
    "FEATURE_SETS",
    "SURVEY_DEFAULTS",
    "Augmentation",
    "Dataset",
    "HParams",
    "InitModel",
    "TrainError",
    "add_arguments",
    "assign_weights",
    "evaluate_command",
    "evaluate_model",
    "load_dataset",
    "load_init_model",
    "probe_feature_stats",
    "read_labels",
    "register",
    "resolve_architecture",
    "resolve_survey",
    "split_by_object",
    "train",
    "train_network",
    "training_batches",
]

#: ZTF's ``--features`` names: the ZTF adapter's feature lists.
FEATURE_SETS = dict(ZTF.feature_sets)
#: Every survey's ``--features`` names, by survey (each adapter's ``feature_sets``).
SURVEY_FEATURE_SETS = {"ztf": FEATURE_SETS, "lsst": dict(LSST.feature_sets)}
#: Architecture flags when neither given nor taken from ``--init-from`` (ZTF's).
DEFAULT_KERNEL, DEFAULT_CROP, DEFAULT_FEATURES = 5, 21, "production"
#: ``--augment`` when not given: new models are trained for the simulated-to-real transfer.
DEFAULT_AUGMENT = "default"
#: ``--survey`` when neither given nor taken from ``--init-from``.
DEFAULT_SURVEY = "ztf"


@dataclass(frozen=True)
class SurveyDefaults:
    """What a survey's models get when a flag is not given (and no ``--init-from`` model).

    Attributes
    ----------
    crop
        ``--crop`` [pixels]: ZTF's 21 of 63; Rubin's whole 30 px stamp (6", about ZTF's 21").
    features
        ``--features``: the name of a feature list of the survey's adapter.
    augment
        ``--augment`` preset (:data:`model.augment.PRESETS`).
    flips
        ``--flips``: average over the 8 rotations and flips (D4) rather than the 4 rotations.
    """

    crop: int
    features: str
    augment: str
    flips: bool


#: Per ``--survey``.
SURVEY_DEFAULTS = {
    "ztf": SurveyDefaults(DEFAULT_CROP, DEFAULT_FEATURES, DEFAULT_AUGMENT, flips=False),
    "lsst": SurveyDefaults(LSST.stamp_size, "lsst", "lsst", flips=True),
}
#: Learning curve written beside the exported model.
CURVE_FILE = "training_curve.json"


class TrainError(ValueError):
    """A user's mistake in the training flags (refused with one line, exit code 2)."""


@dataclass(frozen=True)
class InitModel:
    """What fine-tuning takes from an exported model (``--init-from``).

    Attributes
    ----------
    path
        The model directory.
    metadata
        Its ``stampflow_model.json``.
    weights
        ``{"layer/variable": array}`` of its network (e.g. ``"conv_1_1/kernel"``).
    feature_stats
        ``{feature: {"mean", "std"}}``: the z-score statistics its transform applies.
    """

    path: str
    metadata: dict[str, Any]
    weights: dict[str, np.ndarray]
    feature_stats: dict[str, dict[str, float]]


@dataclass(frozen=True)
class HParams:
    """Training hyper-parameters (paper's production values as defaults; Table 3 ranges)."""

    learning_rate: float = 1e-3
    beta: float = 0.5  # weight of the entropy regulariser
    batch_size: int = 64
    dropout: float = 0.5
    kernel_size: int = 5
    crop: int = 21
    images_only: bool = False
    flips: bool = False  # average over the 8 rotations and flips (D4), not the 4 rotations
    val_every: int = 10  # iterations between validation-loss evaluations
    base_steps: int = 30_000
    extend_after: int = 20_000
    extend_by: int = 10_000


def resolve_survey(survey: str | None, metadata: dict[str, Any] | None = None) -> str:
    """The survey to train for: ``--survey``, or the ``--init-from`` model's (which it must match).

    Parameters
    ----------
    survey
        ``--survey`` (``ztf``, ``lsst``), None when not given.
    metadata
        The ``--init-from`` model's ``stampflow_model.json``, or None.

    Returns
    -------
    str
        The survey name (:data:`DEFAULT_SURVEY` when neither says).

    Raises
    ------
    TrainError
        When ``--survey`` differs from the model's survey.

    Examples
    --------
    >>> resolve_survey(None), resolve_survey("lsst"), resolve_survey(None, {"survey": "lsst"})
    ('ztf', 'lsst', 'lsst')
    """
    if metadata is None:
        return survey or DEFAULT_SURVEY
    from model.handler import model_survey

    own = model_survey(metadata)
    if survey is not None and survey != own:
        raise TrainError(f"--init-from builds a {own} model; conflicting: --survey {survey}")
    return own


def _check_crop(crop: int, survey: str) -> None:
    """Refuse a crop the survey's stamps cannot give (larger, or even and not the whole stamp)."""
    from transforms.preprocess import crop_bounds

    size = get_survey(survey).stamp_size
    if crop > size:
        raise TrainError(f"--crop {crop} is larger than the {survey} stamps ({size}x{size} px)")
    try:
        crop_bounds(crop, size)
    except ValueError as e:
        raise TrainError(f"--crop {crop}: {e}") from e


def resolve_architecture(
    kernel: int | None,
    crop: int | None,
    features: str | None,
    images_only: bool | None,
    metadata: dict[str, Any] | None = None,
    survey: str = DEFAULT_SURVEY,
) -> tuple[int, int, tuple[str, ...], bool]:
    """The architecture to train: the flags, or an ``--init-from`` model's (which they must match).

    Parameters
    ----------
    kernel, crop, features, images_only
        ``--kernel``, ``--crop``, ``--features`` (a name in the survey's
        :data:`SURVEY_FEATURE_SETS`) and ``--images-only``; None when not given.
    metadata
        The ``--init-from`` model's ``stampflow_model.json``, or None to train from scratch.
    survey
        The survey trained for (:func:`resolve_survey`): its defaults (:data:`SURVEY_DEFAULTS`),
        feature lists and stamp size.

    Returns
    -------
    (kernel, crop, feature_names, images_only)

    Raises
    ------
    TrainError
        When a given flag differs from the model's architecture, ``--features`` names another
        survey's list, or the crop is larger than the survey's stamps (or even and not all of it).

    Examples
    --------
    >>> resolve_architecture(None, None, None, None)[:2]
    (5, 21)
    >>> meta = {"architecture": {"kernel_size": 3}, "crop": 21, "features": ["fwhm"],
    ...         "images_only": False}
    >>> resolve_architecture(None, 21, None, None, meta)
    (3, 21, ('fwhm',), False)
    >>> resolve_architecture(None, None, None, None, survey="lsst")[1]
    30
    """
    sets = SURVEY_FEATURE_SETS[survey]
    if features is not None and features not in sets:
        owner = next((n for n, named in SURVEY_FEATURE_SETS.items() if features in named), None)
        raise TrainError(
            f"--features {features} is a {owner} feature list; --survey {survey} models take "
            f"{', '.join(sorted(sets))}"
        )
    if metadata is None:
        defaults = SURVEY_DEFAULTS[survey]
        crop = defaults.crop if crop is None else crop
        _check_crop(crop, survey)
        return (
            DEFAULT_KERNEL if kernel is None else kernel,
            crop,
            tuple(sets[features or defaults.features]),
            bool(images_only),
        )
    model = (
        int(metadata["architecture"]["kernel_size"]),
        int(metadata["crop"]),
        tuple(metadata["features"]),
        bool(metadata["images_only"]),
    )
    named = next((n for n, f in sets.items() if tuple(f) == model[2]), "its own list")
    conflicts = []
    if kernel is not None and kernel != model[0]:
        conflicts.append(f"--kernel {kernel} (the model's is {model[0]})")
    if crop is not None and crop != model[1]:
        conflicts.append(f"--crop {crop} (the model's is {model[1]})")
    if features is not None and tuple(sets[features]) != model[2]:
        conflicts.append(f"--features {features} (the model's are {named})")
    if images_only and not model[3]:
        conflicts.append("--images-only (the model uses the metadata features)")
    if conflicts:
        raise TrainError(
            f"--init-from builds the model's own architecture; conflicting: {'; '.join(conflicts)}"
        )
    return model


def probe_feature_stats(
    transform: Any, feature_names: Sequence[str], stamp_size: int = 63
) -> dict[str, dict[str, float]]:
    """The z-score statistics a fitted transform applies, read back by feeding it two points.

    The transform computes ``(clip(x) - mean) / std`` per feature, so two raw values ``a ≠ b``
    inside the clipping bounds give ``std = (b - a) / (xf(b) - xf(a))`` and
    ``mean = a - xf(a) · std``. A first probe at 0 and 1 gives rough values; a second one at
    ``a ≈ mean`` and ``b ≈ mean ± std`` (``xf`` near 0 and 1, where float32 loses nothing to
    cancellation) gives them to float32 precision. A constant training feature (std 0) is only
    centred by the transform and comes back as std 1, which fixed statistics treat the same way.

    Parameters
    ----------
    transform
        ``transform(features [2, F], stamps [2, S, S, 3]) -> features_xf [2, F]`` (numpy).
    feature_names
        Feature order.
    stamp_size
        S, the side of the raw stamps the transform takes (63 ZTF, 30 Rubin).

    Returns
    -------
    dict
        ``{feature: {"mean": m, "std": s}}``.
    """
    from transforms.features import clip_bounds

    lo, hi = (np.asarray(b, np.float64) for b in clip_bounds(tuple(feature_names)))
    stamps = np.zeros((2, stamp_size, stamp_size, 3), np.float32)
    a = np.clip(0.0, lo, hi)
    b = np.where(a + 1 <= hi, a + 1, a - 1)
    for _ in range(2):
        points = np.stack([a, b]).astype(np.float32)
        xf = np.asarray(transform(points, stamps), np.float64)
        a, b = points.astype(np.float64)  # the values the transform saw
        std = (b - a) / (xf[1] - xf[0])
        mean = a - xf[0] * std
        a = np.clip(mean, lo, hi)
        up, down = a + std, a - std
        b = np.where(up <= hi, up, np.where(down >= lo, down, np.where(hi - a >= a - lo, hi, lo)))
    return {
        n: {"mean": float(m), "std": float(s)}
        for n, m, s in zip(feature_names, mean, std, strict=True)
    }


def load_init_model(model_dir: str) -> InitModel:
    """Read an exported model for fine-tuning: metadata, network weights, z-score statistics.

    The weights are the variables its serving signature captures, named by the Keras layer and
    variable (``conv_1_1/kernel``, ``batchnorm_features/moving_mean``). The statistics are the
    metadata's ``feature_stats`` when recorded (imported ALeRCE models, models trained since it is
    recorded), else read back from the embedded transform with :func:`probe_feature_stats`.

    Parameters
    ----------
    model_dir
        An exported stampflow model directory.

    Returns
    -------
    InitModel

    Raises
    ------
    model.handler.ModelDirError
        When the directory holds no stampflow model.
    TrainError
        When its transform statistics cannot be read back.
    """
    import tensorflow as tf

    from model.handler import read_metadata, stamp_shape
    from model.remote import local_copy

    meta = read_metadata(model_dir)
    loaded = tf.saved_model.load(local_copy(model_dir))
    variables = loaded.signatures["serving_default"].variables
    weights = {v.name.rsplit(":", 1)[0]: v.numpy() for v in variables}
    features = list(meta["features"])
    stats = meta.get("feature_stats")
    if not stats or any(f not in stats for f in features):
        layer = getattr(loaded, "tft_layer", None)
        call = getattr(layer, "call_and_return_all_conditional_losses", None)
        if call is None:
            raise TrainError(
                f"cannot read the transform statistics of {model_dir}; pass --init-stats refit"
            )

        def transform(f: np.ndarray, s: np.ndarray) -> np.ndarray:
            out = call({"features": tf.constant(f), "stamps": tf.constant(s)})[0]
            return out["features_xf"].numpy()

        stats = probe_feature_stats(transform, features, stamp_shape(meta)[0])
    stats = {f: {"mean": float(stats[f]["mean"]), "std": float(stats[f]["std"])} for f in features}
    return InitModel(model_dir, meta, weights, stats)


def assign_weights(net: Any, weights: dict[str, np.ndarray], images_only: bool) -> int:
    """Copy ``{"layer/variable": array}`` onto the network, layer by layer.

    Walks the roles of :data:`model.network.LAYER_NAMES` (as :func:`model.alerce.
    load_checkpoint_into` does for ALeRCE's TF1 scopes), so every trainable layer and the
    BatchNorm statistics are set, and every source variable is used.

    Parameters
    ----------
    net
        A network from :func:`model.network.build_network`.
    weights
        Source variables by ``layer/variable`` name.
    images_only
        Whether ``net`` is the images-only variant (no ``dense3``, no feature BatchNorm).

    Returns
    -------
    int
        Variables copied.

    Raises
    ------
    TrainError
        On a missing, unused or differently shaped variable.
    """
    from model.network import LAYER_NAMES, LAYER_NAMES_IMAGES_ONLY

    names = LAYER_NAMES_IMAGES_ONLY if images_only else LAYER_NAMES
    used: set[str] = set()
    for role, layer_name in names.items():
        if images_only and role in ("dense3", "batchnorm"):
            continue
        layer = net.get_layer(layer_name)
        values = []
        for w in layer.weights:
            key = f"{layer_name}/{w.name}"
            if key not in weights:
                raise TrainError(f"--init-from model has no variable {key}")
            if tuple(weights[key].shape) != tuple(w.shape):
                raise TrainError(
                    f"--init-from variable {key} has shape {tuple(weights[key].shape)}, "
                    f"the network needs {tuple(w.shape)}"
                )
            values.append(weights[key])
            used.add(key)
        layer.set_weights(values)
    unused = sorted(set(weights) - used)
    if unused:
        raise TrainError(f"--init-from model has variables the network lacks: {unused[:5]}")
    return len(used)


@dataclass
class Dataset:
    """Raw examples with labels and object ids."""

    features: np.ndarray  # [N, F] raw
    stamps: np.ndarray  # [N, S, S, 3] raw (S: the survey's stamp side, 63 ZTF, 30 Rubin)
    labels: np.ndarray  # [N] class index
    candids: np.ndarray  # [N]
    objects: np.ndarray  # [N] objectId

    def take(self, idx: np.ndarray) -> Dataset:
        return Dataset(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def _paths(paths: str | Sequence[str]) -> list[str]:
    return [paths] if isinstance(paths, str) else list(paths)


def read_labels(paths: str | Sequence[str]) -> dict[int, tuple[str, str]]:
    """``labels.csv`` files → ``{candid: (objectId, class)}`` (columns candid, objectId, class).

    ``candid`` is the alert id: ZTF's ``candid``, Rubin's ``diaSourceId``. Several files (e.g.
    one per simulated night) are merged; a ``candid`` labelled twice with different objects or
    classes is refused.
    """
    out: dict[int, tuple[str, str]] = {}
    for path in _paths(paths):
        with io.TextIOWrapper(FileSystems.open(path), encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                if row["class"] not in CLASS_NAMES:
                    raise ValueError(f"{path}: unknown class {row['class']!r}")
                candid, label = int(row["candid"]), (row["objectId"], row["class"])
                if out.setdefault(candid, label) != label:
                    before = out[candid]
                    raise ValueError(f"{path}: candid {candid} labelled {label}, before {before}")
    return out


def load_dataset(
    inputs: Sequence[str],
    labels: dict[int, tuple[str, str]],
    feature_names: Sequence[str],
    survey: str = DEFAULT_SURVEY,
) -> tuple[Dataset, dict[str, int]]:
    """Decode and featurise every labelled alert of ``survey`` under ``inputs``.

    Parameters
    ----------
    inputs
        Alert files, directories, archives or globs.
    labels
        ``{alert id: (objectId, class)}`` (:func:`read_labels`).
    feature_names
        Feature order (one of the survey's lists).
    survey
        Whose alerts (``ztf``, ``lsst``): its adapter cuts the stamps (NaN-padded to its size
        when smaller) and computes the features. Alerts of another survey are unusable.

    Returns
    -------
    (Dataset, counts)
        Examples in input order; counts of alerts seen, ``unlabelled``, ``dead`` (not usable,
        those of another survey included) and ``other_survey`` (alerts of another survey,
        labelled or not).

    Raises
    ------
    FileNotFoundError
        When an input matches nothing.
    ValueError
        When no labelled alert of the survey is usable.
    """
    from transforms.featurize import featurize_alerts
    from transforms.sources import NoInputError, decode_paths

    adapter = get_survey(survey)
    feats, stamps, ys, cands, objs = [], [], [], [], []
    counts = {"alerts": 0, "unlabelled": 0, "dead": 0, "other_survey": 0}
    others: set[str] = set()  # names of the other surveys seen, for the error message
    pending = []

    def flush() -> None:
        result = featurize_alerts(pending, feature_names, "pad", adapter)
        counts["dead"] += len(result.dead_letters)
        for candid, ex in result.examples:
            obj, cls = labels[candid]
            feats.append(ex["features"])
            stamps.append(ex["stamps"])
            ys.append(CLASS_NAMES.index(cls))
            cands.append(candid)
            objs.append(obj)
        pending.clear()

    try:
        for item in decode_paths(inputs):
            counts["dead"] += item.read_error is not None or item.decode_error is not None
            for alert in item.alerts:
                counts["alerts"] += 1
                if alert.survey is not adapter:
                    # Another survey's alert ids are not this survey's: unusable, not "unlabelled".
                    counts["other_survey"] += 1
                    counts["dead"] += 1
                    others.add(alert.survey.name)
                    continue
                if alert.candid not in labels:
                    counts["unlabelled"] += 1
                    continue
                pending.append(alert)
                if len(pending) >= 512:
                    flush()
    except NoInputError as e:
        raise FileNotFoundError(e.reason) from e
    flush()
    if not feats:
        other = (
            f" ({counts['other_survey']} alerts of another survey: {', '.join(sorted(others))})"
            if others
            else ""
        )
        raise ValueError(f"no labelled {survey} alerts found{other}")
    data = Dataset(
        np.stack(feats).astype(np.float32),
        np.stack(stamps).astype(np.float32),
        np.array(ys, np.int64),
        np.array(cands, np.int64),
        np.array(objs),
    )
    return data, counts


def split_by_object(
    data: Dataset, val_per_class: int, test_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train / validation / test, balanced per class in val and test, no object shared.

    Each object's alerts go to one split. Objects are shuffled per class and assigned to test,
    then validation, until each holds the requested number of alerts of that class (one alert per
    object is used there: the earliest, as the classifier sees first detections).
    """
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for c in range(len(CLASS_NAMES)):
        by_object: dict[str, list[int]] = {}
        for i in np.flatnonzero(data.labels == c):
            by_object.setdefault(str(data.objects[i]), []).append(int(i))
        objects = sorted(by_object)
        rng.shuffle(objects)
        n_test = n_val = 0
        for obj in objects:
            members = sorted(by_object[obj], key=lambda i: data.candids[i])
            if n_test < test_per_class:
                test.append(members[0])
                n_test += 1
            elif n_val < val_per_class:
                val.append(members[0])
                n_val += 1
            else:
                train.extend(members)
    return np.array(train), np.array(val), np.array(test)


def _balanced_batches(labels: np.ndarray, batch: int, rng: np.random.Generator) -> Iterable:
    """Endless index batches with each class equally likely (the paper's balanced sampling)."""
    by_class = [np.flatnonzero(labels == c) for c in range(len(CLASS_NAMES))]
    present = [c for c, idx in enumerate(by_class) if len(idx)]
    while True:
        classes = rng.choice(present, size=batch)
        yield np.array([by_class[c][rng.integers(len(by_class[c]))] for c in classes])


@dataclass(frozen=True)
class Augmentation:
    """What per-batch augmentation needs beside the transformed training set (``--augment``).

    Attributes
    ----------
    config
        Probabilities and strengths (:class:`model.augment.AugmentConfig`).
    features, stamps
        Raw examples, ``float32 [M, F]`` and ``[M, S, S, 3]`` (the whole data set: not copied).
    rows
        ``int [N]``: training example ``i`` (of ``train_xf``) is raw row ``rows[i]``.
    feature_names
        Feature order (the augmentations find magnitudes and ``fwhm`` by name).
    transform
        ``transform(features, stamps) -> (features_xf, stamps_xf)``: the fitted tf.Transform
        graph, applied to each augmented batch.
    survey
        Whose examples (which features follow the pixels, :data:`model.augment.COUPLINGS`).
    """

    config: AugmentConfig
    features: np.ndarray
    stamps: np.ndarray
    rows: np.ndarray
    feature_names: tuple[str, ...]
    transform: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    survey: str = DEFAULT_SURVEY


def training_batches(
    train_xf: tuple[np.ndarray, np.ndarray, np.ndarray],
    batch_size: int,
    seed: int,
    augmentation: Augmentation | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless class-balanced training batches ``(features_xf, stamps_xf, labels)``.

    The example indices come from ``default_rng(seed)`` whether or not the batches are augmented
    (the augmentation draws from an independent child stream of ``seed``), so ``--augment none``
    and ``--augment default`` see the same examples in the same order, and ``--augment none``
    the very batches of the unaugmented training.

    Parameters
    ----------
    train_xf
        ``(features_xf, stamps_xf, labels)`` of the training split.
    batch_size
        Examples per batch.
    seed
        Seeds the sampling and the augmentation.
    augmentation
        None (or an identity config): slices of ``train_xf``. Else each batch's raw examples are
        augmented with :func:`model.augment.augment_batch` and transformed.

    Yields
    ------
    (features_xf, stamps_xf, labels)
    """
    features_xf, stamps_xf, labels = train_xf
    batches = _balanced_batches(labels, batch_size, np.random.default_rng(seed))
    if augmentation is None or augmentation.config.is_identity:
        for idx in batches:
            yield features_xf[idx], stamps_xf[idx], labels[idx]
        return
    aug = augmentation
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    for idx in batches:
        raw = aug.rows[idx]
        f, s = augment_batch(
            aug.features[raw], aug.stamps[raw], aug.feature_names, aug.config, rng, aug.survey
        )
        f_xf, s_xf = aug.transform(f, s)
        yield f_xf, s_xf, labels[idx]


class _Prefetch:
    """Run an endless batch iterator in a background thread, ``depth`` batches ahead.

    Augmenting and transforming a batch is NumPy and TF work that leaves the GIL for most of its
    time, so it overlaps the optimiser step (fully on a GPU, partly on a few CPU cores). The
    batches come in the iterator's order: prefetching changes no result. An exception in the
    producer is raised by :meth:`__next__`; :meth:`close` stops the thread.
    """

    def __init__(self, source: Iterator[Any], depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.busy_seconds = 0.0  # producer time spent making batches
        self.produced = 0
        self._thread = threading.Thread(
            target=self._run, args=(source,), name="stampflow-augment", daemon=True
        )
        self._thread.start()

    def _put(self, item: tuple[Any, BaseException | None]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator[Any]) -> None:
        try:
            while True:
                t0 = time.perf_counter()
                item = next(source)
                self.busy_seconds += time.perf_counter() - t0
                self.produced += 1
                if not self._put((item, None)):
                    return
        except Exception as e:  # handed to the training loop, raised there
            self._put((None, e))

    def __iter__(self) -> _Prefetch:
        return self

    def __next__(self) -> Any:
        item, error = self._queue.get()
        if error is not None:
            raise error
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def train_network(
    train_xf: tuple[np.ndarray, np.ndarray, np.ndarray],
    val_xf: tuple[np.ndarray, np.ndarray, np.ndarray],
    hp: HParams,
    n_features: int,
    seed: int = 0,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    log=print,
    initial_weights: dict[str, np.ndarray] | None = None,
    augmentation: Augmentation | None = None,
):
    """Train the network on transformed inputs; return (network, config, history).

    Parameters
    ----------
    train_xf, val_xf
        ``(features_xf, stamps_xf, labels)`` for training and validation.
    hp
        Hyper-parameters.
    n_features
        Feature count (ignored for images-only).
    seed
        Seeds NumPy, TensorFlow and Keras: the same seed gives the same run on the same machine.
    max_steps, max_minutes
        Budgets that stop training early (the best weights so far are kept).
    log
        Progress printer.
    initial_weights
        ``{"layer/variable": array}`` to start from (``--init-from``, see :func:`assign_weights`)
        instead of the seeded random initialisation.
    augmentation
        Augment each training batch from the raw examples (see :func:`training_batches`);
        None trains on ``train_xf`` itself.

    Returns
    -------
    (network, config, history)
        ``history["summary"]``: steps, best step and validation loss, rates, what stopped it, and
        mean wall times per batch: ``step_ms``, the optimiser step (the first, tracing step
        excluded); ``batch_ms``, the wait for the batch; with augmentation, ``augment_ms``, the
        time a background thread takes to make one (sampling, augmentation and transform: it
        runs ahead, overlapping the steps, so ``batch_ms`` is what it costs the training).
        ``history["curve"]``: one point per validation (step 0, 1 and every ``val_every``):
        ``step``, ``val_loss``, ``train_loss`` (the loss of that step's batch) and
        ``train_loss_mean`` (the mean over every step since the previous point, so the training
        curve does not hang on the batches that happen to land on validation steps).
    """
    import keras
    import tensorflow as tf

    from model.network import NetworkConfig, build_network, entropy_regularized_loss

    keras.utils.set_random_seed(seed)
    config = NetworkConfig(
        kernel_size=hp.kernel_size,
        crop=hp.crop,
        n_features=0 if hp.images_only else n_features,
        dropout=hp.dropout,
        flips=hp.flips,
    )
    net = build_network(config)
    if initial_weights is not None:
        assign_weights(net, initial_weights, images_only=config.n_features == 0)
    optimizer = keras.optimizers.Adam(hp.learning_rate, beta_1=0.5, beta_2=0.9)
    loss_fn = entropy_regularized_loss(hp.beta)
    n_classes = len(CLASS_NAMES)

    def inputs(f, s):
        return {"stamps": s} if config.n_features == 0 else {"stamps": s, "features": f}

    @tf.function(reduce_retracing=True)
    def step(f, s, y):
        with tf.GradientTape() as tape:
            probs = net(inputs(f, s), training=True)
            loss = tf.reduce_mean(loss_fn(tf.one_hot(y, n_classes), probs))
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables, strict=True))
        return loss

    @tf.function(reduce_retracing=True)
    def val_loss(f, s, y):
        probs = net(inputs(f, s), training=False)
        return tf.reduce_mean(loss_fn(tf.one_hot(y, n_classes), probs))

    vf, vs, vy = (tf.constant(a) for a in val_xf)
    batches = training_batches(train_xf, hp.batch_size, seed, augmentation)
    prefetch = None
    if augmentation is not None and not augmentation.config.is_identity:
        batches = prefetch = _Prefetch(batches)
    limit = hp.base_steps if max_steps is None else min(hp.base_steps, max_steps)
    deadline = time.monotonic() + 60 * max_minutes if max_minutes else math.inf
    # The starting weights are a candidate too: a fine-tune that never improves keeps them.
    best, best_step, best_weights = float(val_loss(vf, vs, vy)), 0, net.get_weights()
    history: list[dict[str, float | None]] = [
        {"step": 0, "train_loss": None, "train_loss_mean": None, "val_loss": best}
    ]
    started = time.monotonic()
    it = 0
    since_point: list[float] = []  # training losses since the last curve point
    batch_seconds = step_seconds = 0.0
    stop_reason = "paper rule"
    try:
        while True:
            if it >= limit:
                # The paper's rule: extend while the best validation loss keeps improving after 20k.
                if max_steps is None and best_step > hp.extend_after and it < 10 * hp.base_steps:
                    limit += hp.extend_by
                else:
                    stop_reason = (
                        "max steps" if max_steps is not None and it >= max_steps else stop_reason
                    )
                    break
            if time.monotonic() > deadline:
                stop_reason = "time budget"
                break
            t0 = time.perf_counter()
            f, s, y = next(batches)
            t1 = time.perf_counter()
            train_loss = float(step(f, s, y))
            batch_seconds += t1 - t0
            step_seconds += (time.perf_counter() - t1) if it else 0.0  # the first step traces
            it += 1
            since_point.append(train_loss)
            if it % hp.val_every == 0 or it == 1:
                v = float(val_loss(vf, vs, vy))
                history.append(
                    {
                        "step": it,
                        "train_loss": train_loss,
                        "train_loss_mean": float(np.mean(since_point)),
                        "val_loss": v,
                    }
                )
                since_point.clear()
                if v < best:
                    best, best_step, best_weights = v, it, net.get_weights()
            if it % max(hp.val_every * 20, 100) == 0:
                rate = it / (time.monotonic() - started)
                log(
                    f"step {it:6d}  train {train_loss:.4f}  val {history[-1]['val_loss']:.4f}  "
                    f"best {best:.4f} @ {best_step}  {rate:.1f} steps/s"
                )
    finally:
        if prefetch is not None:
            prefetch.close()
    net.set_weights(best_weights)
    seconds = time.monotonic() - started
    summary = {
        "steps": it,
        "best_step": best_step,
        "best_val_loss": best,
        "seconds": round(seconds, 1),
        "steps_per_s": round(it / seconds, 2) if seconds else None,
        "alerts_per_s": round(it * hp.batch_size / seconds, 1) if seconds else None,
        "stopped_by": stop_reason,
        "batch_ms": round(1e3 * batch_seconds / it, 2) if it else None,
        "step_ms": round(1e3 * step_seconds / (it - 1), 2) if it > 1 else None,
    }
    if prefetch is not None and prefetch.produced:
        summary["augment_ms"] = round(1e3 * prefetch.busy_seconds / prefetch.produced, 2)
    log(f"stopped after {it} steps ({stop_reason}); best validation loss {best:.4f} at {best_step}")
    return net, config, {"summary": summary, "curve": history}


def evaluate_model(model_dir: str, features: np.ndarray, stamps: np.ndarray, batch: int = 256):
    """Probabilities from an exported model directory (the real serving path)."""
    import tensorflow as tf

    from model.remote import local_copy

    model = tf.saved_model.load(local_copy(model_dir))
    serve = model.signatures["serving_default"]
    out = []
    for i in range(0, len(features), batch):
        r = serve(
            features=tf.constant(features[i : i + batch]), stamps=tf.constant(stamps[i : i + batch])
        )
        out.append(r["probabilities"].numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def _resolve_flips(flips: bool | None, survey: str, metadata: dict[str, Any] | None) -> bool:
    """``--flips``/``--no-flips``, else the ``--init-from`` model's, else the survey's default.

    Flips add no weight, so a model may be fine-tuned with or without them."""
    if flips is not None:
        return flips
    if metadata is not None:
        return bool(metadata.get("architecture", {}).get("flips", False))
    return SURVEY_DEFAULTS[survey].flips


def _resolve_augment(preset: str | None, survey: str) -> str:
    """``--augment``, else the survey's preset; a preset made for another survey is refused."""
    preset = preset or SURVEY_DEFAULTS[survey].augment
    made_for = PRESET_SURVEYS[preset]
    if made_for not in (None, survey):
        fits = sorted(n for n, s in PRESET_SURVEYS.items() if s in (None, survey))
        raise TrainError(
            f"--augment {preset} is made for {made_for} stamps; --survey {survey} takes "
            f"{' or '.join(fits)}"
        )
    return preset


def _count_line(counts: dict[str, int], survey: str) -> str:
    """``"3 unlabelled, 2 unusable (1 not lsst)"`` from :func:`load_dataset`'s counts."""
    other = f" ({counts['other_survey']} not {survey})" if counts.get("other_survey") else ""
    return f"{counts['unlabelled']} unlabelled, {counts['dead']} unusable{other}"


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The whole ``stampflow train`` job; returns the metadata of the exported model.

    ``--out`` may be on any Beam filesystem (``gs://``): the model is written locally, then
    uploaded with its metadata file last; an unwritable remote ``--out`` is refused first.
    """
    from model.handler import METADATA_FILE
    from model.remote import check_remote_output, local_output

    check_remote_output(args.out, "--out")  # a typo'd bucket fails now, not after training
    with local_output(args.out, last=(METADATA_FILE,)) as out_dir:
        return _train(args, out_dir)


def _train(args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    """:func:`train`, writing the model to the local ``out_dir``."""
    from model.export import apply_transform, batch_transform, export_model, fit_transform
    from model.plots import TRAINING_CURVE_FILE, plot_training_curve, write_report

    log = print
    init_meta = None
    if args.init_from:
        from model.handler import read_metadata

        init_meta = read_metadata(args.init_from)  # cheap: refuse conflicts before any work
    survey = resolve_survey(args.survey, init_meta)
    kernel, crop, feature_names, images_only = resolve_architecture(
        args.kernel, args.crop, args.features, args.images_only, init_meta, survey
    )
    flips = _resolve_flips(args.flips, survey, init_meta)
    augment = _resolve_augment(args.augment, survey)
    stamp_size = get_survey(survey).stamp_size
    hp = HParams(
        learning_rate=args.lr,
        beta=args.beta,
        batch_size=args.batch_size,
        dropout=args.dropout,
        kernel_size=kernel,
        crop=crop,
        images_only=images_only,
        flips=flips,
        val_every=args.val_every,
    )
    labels = read_labels(args.labels)
    t0 = time.monotonic()
    try:
        data, counts = load_dataset(args.alerts, labels, feature_names, survey)
    except ValueError as e:  # nothing to train on (e.g. Rubin alerts without --survey lsst)
        raise TrainError(f"{e}; --survey {survey}") from e
    log(
        f"loaded {len(data.labels)} labelled {survey} examples from {counts['alerts']} alerts "
        f"({_count_line(counts, survey)}) in {time.monotonic() - t0:.0f} s"
    )
    tr, va, te = split_by_object(data, args.val_per_class, args.test_per_class, args.seed)
    per_class = {
        s: np.bincount(data.labels[i], minlength=5).tolist()
        for s, i in (("train", tr), ("val", va), ("test", te))
    }
    log(f"split by object: {per_class} (classes {', '.join(CLASS_NAMES)})")
    if not len(tr) or not len(va):
        raise TrainError(
            f"{'no training' if not len(tr) else 'no validation'} examples after the split "
            f"{per_class}; lower --val-per-class / --test-per-class"
        )
    init = load_init_model(args.init_from) if args.init_from else None
    fixed_stats = init.feature_stats if init is not None and args.init_stats == "model" else None
    out = Path(out_dir)
    scratch = Path(tempfile.mkdtemp(prefix="stampflow-train-"))
    try:
        transform_dir = str(scratch / "transform")
        t0 = time.monotonic()
        if fixed_stats is not None:
            # The model's own statistics as fixed constants (as import-alerce): no analyzer runs,
            # two dummy rows suffice.
            fit_transform(
                np.zeros((2, len(feature_names)), np.float32),
                np.zeros((2, stamp_size, stamp_size, 3), np.float32),
                feature_names,
                transform_dir,
                hp.crop,
                stats=fixed_stats,
            )
            log(f"transform with the z-score statistics of {args.init_from}")
        else:
            fit_transform(data.features[tr], data.stamps[tr], feature_names, transform_dir, hp.crop)
            seconds = time.monotonic() - t0
            log(f"fitted the tf.Transform graph on {len(tr)} examples in {seconds:.0f} s")
        # One loaded transform for every set: each load traces its own tf.function.
        run_transform = batch_transform(transform_dir)
        feature_stats = fixed_stats or probe_feature_stats(
            lambda f, s: run_transform(f, s)[0], feature_names, stamp_size
        )
        xf = {}
        for name, idx in (("train", tr), ("val", va)):
            f, s = apply_transform(run_transform, data.features[idx], data.stamps[idx])
            xf[name] = (f, s, data.labels[idx])
        augment_config = AUGMENT_PRESETS[augment]
        augmentation = None
        if not augment_config.is_identity:
            augmentation = Augmentation(
                augment_config,
                data.features,
                data.stamps,
                tr,
                tuple(feature_names),
                run_transform,
                survey,
            )
            log(f"augmenting every training batch ({augment}: {augment_config})")
        net, config, history = train_network(
            xf["train"],
            xf["val"],
            hp,
            len(feature_names),
            args.seed,
            args.max_steps,
            args.max_minutes,
            log,
            initial_weights=init.weights if init is not None else None,
            augmentation=augmentation,
        )
        training = dict(history["summary"])
        training["curve_file"] = CURVE_FILE
        started_from = ""
        if init is not None:
            training["init_from"] = {
                "name": init.metadata["name"],
                "version": init.metadata["version"],
                "path": str(init.path),
                "feature_stats": args.init_stats,
            }
            started_from = (
                f"fine-tuned from {init.metadata['name']} {init.metadata['version']} "
                f"({init.path}), "
            )
        description = args.description or (
            f"{started_from}trained on {len(tr)} alerts from {', '.join(args.alerts)} "
            f"(labels {', '.join(os.path.basename(p) for p in _paths(args.labels))})"
        )
        meta = export_model(
            net,
            transform_dir,
            str(out),
            config,
            feature_names,
            args.name,
            args.version,
            description,
            {
                "hyperparameters": asdict(hp),
                "training": training,
                "augmentation": {"preset": augment, **augment_config.to_dict()},
                "splits": per_class,
                "feature_stats": feature_stats,
            },
            survey=survey,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (out / CURVE_FILE).write_text(json.dumps(history["curve"]))
    probs = evaluate_model(str(out), data.features[te], data.stamps[te])
    report = write_report(data.labels[te], probs, str(out / "evaluation"), name=args.name)
    plot_training_curve(
        history["curve"],
        out / "evaluation" / TRAINING_CURVE_FILE,
        title=f"{args.name} {meta['version']}: learning curve",
    )
    meta["metrics"] = {k: report[k] for k in ("accuracy", "balanced_accuracy", "top2_accuracy")}
    from model.handler import write_metadata

    write_metadata(str(out), meta)
    log(
        f"test set ({len(te)} alerts): accuracy {report['accuracy']:.3f}, balanced "
        f"{report['balanced_accuracy']:.3f}, top-2 {report['top2_accuracy']:.3f}"
    )
    log(f"model written to {args.out}")
    return meta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Typed flags of ``stampflow train``."""
    parser.add_argument("--alerts", nargs="+", required=True, help="alert files/dirs/archives")
    parser.add_argument(
        "--labels", nargs="+", required=True, help="CSVs with candid, objectId, class (merged)"
    )
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument(
        "--survey",
        choices=sorted(SURVEY_DEFAULTS),
        default=None,
        help=(
            f"whose alerts the model classifies (default {DEFAULT_SURVEY}, or the --init-from "
            "model's); lsst: Rubin alerts, labels keyed by diaSourceId in the candid column"
        ),
    )
    parser.add_argument(
        "--features",
        choices=sorted({n for sets in SURVEY_FEATURE_SETS.values() for n in sets}),
        default=None,
        help=(
            f"feature list of the survey (default {DEFAULT_FEATURES} for ztf, lsst for lsst, or "
            "the --init-from model's); lsst takes only lsst"
        ),
    )
    parser.add_argument(
        "--images-only", action="store_true", default=None, help="no metadata branch"
    )
    parser.add_argument(
        "--kernel",
        type=int,
        choices=(3, 5, 7),
        default=None,
        help=f"k of the k×k convolutions (default {DEFAULT_KERNEL}, or the --init-from model's)",
    )
    parser.add_argument(
        "--crop",
        type=positive_int,
        default=None,
        help=(
            f"stamp centre crop [px]: odd, or the whole stamp; at most the survey's stamp (ztf "
            f"21|41|63, default {DEFAULT_CROP}; lsst 30, the default; or the --init-from model's)"
        ),
    )
    parser.add_argument(
        "--flips",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "average the network over the 8 rotations and flips of the stamps (exact D4 "
            "invariance) instead of the 4 rotations; no new weights (default: on for lsst, off "
            "for ztf, or the --init-from model's)"
        ),
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="MODEL",
        help="fine-tune an exported model: its architecture, weights and preprocessing",
    )
    parser.add_argument(
        "--init-stats",
        choices=("model", "refit"),
        default="model",
        help="with --init-from: keep the model's z-score statistics (default) or refit them",
    )
    parser.add_argument(
        "--augment",
        choices=sorted(AUGMENT_PRESETS),
        default=None,
        help=(
            "per-batch augmentation of the raw training examples, see model/augment.py: "
            f"{DEFAULT_AUGMENT} (ztf's default: rotations/flips, PSF mismatch, misregistration, "
            "zero point, noise, background, saturation), lsst (lsst's default: the same without "
            "saturation and rotations/flips), none (the unaugmented training)"
        ),
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.5, help="entropy regulariser weight")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--val-every", type=positive_int, default=10)
    parser.add_argument("--val-per-class", type=positive_int, default=100)
    parser.add_argument("--test-per-class", type=positive_int, default=100)
    parser.add_argument(
        "--max-steps", type=non_negative_int, default=None, help="iteration budget (0: export only)"
    )
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-time budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="stampflow", help="model name recorded in outputs")
    parser.add_argument("--version", default=None, help="model version (default: timestamp)")
    parser.add_argument("--description", default="", help="training data description")


def evaluate_command(args: argparse.Namespace) -> dict[str, Any]:
    """``stampflow evaluate``: an exported model on labelled alerts → report.json and pictures.

    The alerts are featurised for the model's survey (its metadata's ``survey``: ZTF for models
    that predate it); another survey's alerts are counted as unusable."""
    from model.handler import model_survey, read_metadata
    from model.metrics import format_report
    from model.plots import write_report
    from model.remote import check_remote_output, local_output

    check_remote_output(args.out, "--out")
    meta = read_metadata(args.model)
    survey = model_survey(meta)
    data, counts = load_dataset(args.alerts, read_labels(args.labels), meta["features"], survey)
    probs = evaluate_model(args.model, data.features, data.stamps)
    with local_output(args.out) as out:  # a gs:// --out: written here, then uploaded
        report = write_report(data.labels, probs, out, name=f"{meta['name']} {meta['version']}")
    print(f"{len(data.labels)} labelled {survey} alerts ({_count_line(counts, survey)})")
    print(format_report(report))
    print(f"report and pictures in {args.out}")
    return report


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    """Add ``stampflow train`` or ``stampflow evaluate``."""
    if name == "evaluate":
        parser = subparsers.add_parser(
            name,
            help="evaluate an exported model on labelled alerts",
            description=evaluate_command.__doc__,
        )
        parser.add_argument("--model", required=True, help="exported model directory")
        parser.add_argument("--alerts", nargs="+", required=True, help="alert files/dirs")
        parser.add_argument(
            "--labels", nargs="+", required=True, help="CSVs with candid, objectId, class (merged)"
        )
        parser.add_argument("--out", required=True, help="directory for report.json and PNGs")
        parser.set_defaults(func=lambda a: evaluate_command(a) and 0)
        return
    parser = subparsers.add_parser(
        name, help="train, evaluate and export a model", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)

    def _main(args: argparse.Namespace) -> int:
        try:
            train(args)
        except TrainError as e:
            print(f"stampflow {name}: {e}", file=sys.stderr)
            return 2
        return 0

    parser.set_defaults(func=_main)
