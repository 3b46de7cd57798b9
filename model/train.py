"""``stampflow train``: fit the transform, train the network as in the paper, evaluate, export.

1. Decode the labelled alerts and featurise them (the same pure functions the pipeline uses).
2. Split **by object** (no object in two splits): balanced validation and test sets of
   ``--val-per-class`` / ``--test-per-class`` alerts per class, the rest for training.
3. Fit the tf.Transform graph on the training split with Beam (``AnalyzeAndTransformDataset``)
   and apply it in process to every split: training sees exactly what serving will compute.
4. Train (SPEC §6): class-balanced batches, Adam(lr, β1 0.5, β2 0.9), loss cross-entropy − β
   entropy, validation loss every ``--val-every`` iterations, keep the best weights, stop after
   30k iterations (+10k while the best validation loss keeps improving after 20k) or at the
   ``--max-steps`` / ``--max-minutes`` budget.
5. Export the SavedModel with the transform embedded, reload it, and evaluate it on the test split:
   ``report.json`` and pictures in ``OUT/evaluation``.

    stampflow train --alerts train_night/ --labels train_night/labels.csv --out models/mine \\
        --max-minutes 25
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transforms.schema import CLASS_NAMES, FEATURES_ALERCE_26, FEATURES_PRODUCTION

FEATURE_SETS = {"production": FEATURES_PRODUCTION, "alerce26": FEATURES_ALERCE_26}


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
    val_every: int = 10  # iterations between validation-loss evaluations
    base_steps: int = 30_000
    extend_after: int = 20_000
    extend_by: int = 10_000


@dataclass
class Dataset:
    """Raw examples with labels and object ids."""

    features: np.ndarray  # [N, F] raw
    stamps: np.ndarray  # [N, 63, 63, 3] raw
    labels: np.ndarray  # [N] class index
    candids: np.ndarray  # [N]
    objects: np.ndarray  # [N] objectId

    def take(self, idx: np.ndarray) -> Dataset:
        return Dataset(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def read_labels(path: str) -> dict[int, tuple[str, str]]:
    """``labels.csv`` → ``{candid: (objectId, class)}`` (columns candid, objectId, class)."""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["class"] not in CLASS_NAMES:
                raise ValueError(f"{path}: unknown class {row['class']!r}")
            out[int(row["candid"])] = (row["objectId"], row["class"])
    return out


def load_dataset(
    inputs: Sequence[str], labels: dict[int, tuple[str, str]], feature_names: Sequence[str]
) -> tuple[Dataset, dict[str, int]]:
    """Decode and featurise every labelled alert under ``inputs``.

    Returns
    -------
    (Dataset, counts)
        Examples in input order; counts of alerts seen, unlabelled, and dead (not usable).
    """
    from transforms.alerts import decode_alerts
    from transforms.featurize import featurize_alerts
    from transforms.sources import ReadError, expand_pattern, read_path

    feats, stamps, ys, cands, objs = [], [], [], [], []
    counts = {"alerts": 0, "unlabelled": 0, "dead": 0}
    pending = []

    def flush() -> None:
        result = featurize_alerts(pending, feature_names, "pad")
        counts["dead"] += len(result.dead_letters)
        for candid, ex in result.examples:
            obj, cls = labels[candid]
            feats.append(ex["features"])
            stamps.append(ex["stamps"])
            ys.append(CLASS_NAMES.index(cls))
            cands.append(candid)
            objs.append(obj)
        pending.clear()

    for pattern in inputs:
        for path in expand_pattern(pattern):
            if isinstance(path, ReadError):
                raise FileNotFoundError(path.reason)
            for item in read_path(path):
                if isinstance(item, ReadError):
                    counts["dead"] += 1
                    continue
                alerts, error = decode_alerts(item[1], item[0])
                counts["dead"] += error is not None
                for alert in alerts:
                    counts["alerts"] += 1
                    if alert.candid not in labels:
                        counts["unlabelled"] += 1
                        continue
                    pending.append(alert)
                    if len(pending) >= 512:
                        flush()
    flush()
    if not feats:
        raise ValueError("no labelled alerts found")
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


def train_network(
    train_xf: tuple[np.ndarray, np.ndarray, np.ndarray],
    val_xf: tuple[np.ndarray, np.ndarray, np.ndarray],
    hp: HParams,
    n_features: int,
    seed: int = 0,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    log=print,
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
    """
    import keras
    import tensorflow as tf

    from model.network import NetworkConfig, build_network, entropy_regularized_loss

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    config = NetworkConfig(
        kernel_size=hp.kernel_size,
        crop=hp.crop,
        n_features=0 if hp.images_only else n_features,
        dropout=hp.dropout,
    )
    net = build_network(config)
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
    tf_, ts, ty = train_xf
    batches = _balanced_batches(ty, hp.batch_size, rng)
    limit = hp.base_steps if max_steps is None else min(hp.base_steps, max_steps)
    deadline = time.monotonic() + 60 * max_minutes if max_minutes else math.inf
    best, best_step, best_weights = math.inf, 0, net.get_weights()
    history: list[dict[str, float]] = []
    started = time.monotonic()
    it = 0
    stop_reason = "paper rule"
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
        idx = next(batches)
        train_loss = float(step(tf_[idx], ts[idx], ty[idx]))
        it += 1
        if it % hp.val_every == 0 or it == 1:
            v = float(val_loss(vf, vs, vy))
            history.append({"step": it, "train_loss": train_loss, "val_loss": v})
            if v < best:
                best, best_step, best_weights = v, it, net.get_weights()
        if it % max(hp.val_every * 20, 100) == 0:
            rate = it / (time.monotonic() - started)
            log(
                f"step {it:6d}  train {train_loss:.4f}  val {history[-1]['val_loss']:.4f}  "
                f"best {best:.4f} @ {best_step}  {rate:.1f} steps/s"
            )
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
    }
    log(f"stopped after {it} steps ({stop_reason}); best validation loss {best:.4f} at {best_step}")
    return net, config, {"summary": summary, "curve": history}


def evaluate_model(model_dir: str, features: np.ndarray, stamps: np.ndarray, batch: int = 256):
    """Probabilities from an exported model directory (the real serving path)."""
    import tensorflow as tf

    model = tf.saved_model.load(model_dir)
    serve = model.signatures["serving_default"]
    out = []
    for i in range(0, len(features), batch):
        r = serve(
            features=tf.constant(features[i : i + batch]), stamps=tf.constant(stamps[i : i + batch])
        )
        out.append(r["probabilities"].numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The whole ``stampflow train`` job; returns the metadata of the exported model."""
    from model.evaluate import write_report
    from model.export import apply_transform, export_model, fit_transform

    log = print
    hp = HParams(
        learning_rate=args.lr,
        beta=args.beta,
        batch_size=args.batch_size,
        dropout=args.dropout,
        kernel_size=args.kernel,
        crop=args.crop,
        images_only=args.images_only,
        val_every=args.val_every,
    )
    feature_names = FEATURE_SETS[args.features]
    labels = read_labels(args.labels)
    t0 = time.monotonic()
    data, counts = load_dataset(args.alerts, labels, feature_names)
    log(
        f"loaded {len(data.labels)} labelled examples from {counts['alerts']} alerts "
        f"({counts['unlabelled']} unlabelled, {counts['dead']} unusable) "
        f"in {time.monotonic() - t0:.0f} s"
    )
    tr, va, te = split_by_object(data, args.val_per_class, args.test_per_class, args.seed)
    per_class = {
        s: np.bincount(data.labels[i], minlength=5).tolist()
        for s, i in (("train", tr), ("val", va), ("test", te))
    }
    log(f"split by object: {per_class} (classes {', '.join(CLASS_NAMES)})")
    out = Path(args.out)
    scratch = Path(tempfile.mkdtemp(prefix="stampflow-train-"))
    try:
        transform_dir = str(scratch / "transform")
        t0 = time.monotonic()
        fit_transform(data.features[tr], data.stamps[tr], feature_names, transform_dir, hp.crop)
        log(f"fitted the tf.Transform graph on {len(tr)} examples in {time.monotonic() - t0:.0f} s")
        xf = {}
        for name, idx in (("train", tr), ("val", va)):
            f, s = apply_transform(transform_dir, data.features[idx], data.stamps[idx])
            xf[name] = (f, s, data.labels[idx])
        net, config, history = train_network(
            xf["train"],
            xf["val"],
            hp,
            len(feature_names),
            args.seed,
            args.max_steps,
            args.max_minutes,
            log,
        )
        description = args.description or (
            f"trained on {len(tr)} alerts from {', '.join(args.alerts)} "
            f"(labels {os.path.basename(args.labels)})"
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
            {"hyperparameters": asdict(hp), "training": history["summary"], "splits": per_class},
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (out / "training_curve.json").write_text(json.dumps(history["curve"]))
    probs = evaluate_model(str(out), data.features[te], data.stamps[te])
    report = write_report(data.labels[te], probs, str(out / "evaluation"), name=args.name)
    meta["metrics"] = {k: report[k] for k in ("accuracy", "balanced_accuracy", "top2_accuracy")}
    from model.handler import write_metadata

    write_metadata(str(out), meta)
    log(
        f"test set ({len(te)} alerts): accuracy {report['accuracy']:.3f}, balanced "
        f"{report['balanced_accuracy']:.3f}, top-2 {report['top2_accuracy']:.3f}"
    )
    log(f"model written to {out}")
    return meta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Typed flags of ``stampflow train``."""
    parser.add_argument("--alerts", nargs="+", required=True, help="alert files/dirs/archives")
    parser.add_argument("--labels", required=True, help="CSV with candid, objectId, class")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--features", choices=sorted(FEATURE_SETS), default="production")
    parser.add_argument("--images-only", action="store_true", help="no metadata branch")
    parser.add_argument("--kernel", type=int, choices=(3, 5, 7), default=5)
    parser.add_argument("--crop", type=int, choices=(21, 41, 63), default=21)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.5, help="entropy regulariser weight")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--val-every", type=int, default=10)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=None, help="iteration budget")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-time budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="stampflow", help="model name recorded in outputs")
    parser.add_argument("--version", default=None, help="model version (default: timestamp)")
    parser.add_argument("--description", default="", help="training data description")


def evaluate_command(args: argparse.Namespace) -> dict[str, Any]:
    """``stampflow evaluate``: an exported model on labelled alerts → report.json and pictures."""
    from model.evaluate import format_report, write_report
    from model.handler import read_metadata

    meta = read_metadata(args.model)
    data, counts = load_dataset(args.alerts, read_labels(args.labels), meta["features"])
    probs = evaluate_model(args.model, data.features, data.stamps)
    report = write_report(data.labels, probs, args.out, name=f"{meta['name']} {meta['version']}")
    print(
        f"{len(data.labels)} labelled alerts ({counts['unlabelled']} unlabelled, "
        f"{counts['dead']} unusable)"
    )
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
        parser.add_argument("--labels", required=True, help="CSV with candid, objectId, class")
        parser.add_argument("--out", required=True, help="directory for report.json and PNGs")
        parser.set_defaults(func=lambda a: evaluate_command(a) and 0)
        return
    parser = subparsers.add_parser(
        name, help="train, evaluate and export a model", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    parser.set_defaults(func=lambda a: train(a) and 0)
