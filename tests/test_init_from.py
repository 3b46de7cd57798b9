"""``stampflow train --init-from``: the network starts from the model's weights and keeps its
preprocessing (z-score statistics), a fine-tune differs from training from scratch with the same
seed, and flags that would change the model's architecture are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.train import (
    HParams,
    TrainError,
    assign_weights,
    evaluate_model,
    load_dataset,
    load_init_model,
    read_labels,
    resolve_architecture,
    train_network,
)
from pipeline.cli import main
from tests.helpers import DATA, export_random_model
from transforms.features import clip_bounds
from transforms.schema import FEATURES_PRODUCTION


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """A random-weight kernel-3 source model fitted on one small night, and another night to
    fine-tune on (different seed, so its own statistics differ from the model's)."""
    from simulator import simulate

    root = tmp_path_factory.mktemp("init")
    simulate(60, root / "src", seed=5, workers=1)
    simulate(60, root / "ft", seed=6, workers=1)
    model = export_random_model(root / "src", root / "srcmodel")
    return root, model


def train_args(root, out, *extra):
    ft = root / "ft"
    return ["train", "--alerts", str(ft), "--labels", str(ft / "labels.csv"), "--out", str(out),
            "--val-per-class", "2", "--test-per-class", "2", "--batch-size", "16",
            "--val-every", "1", "--seed", "7", "--name", "tuned", "--version", "1",
            *extra]  # fmt: skip


def weights_of(model_dir):
    return load_init_model(str(model_dir)).weights


def fitted_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the tf.Transform analyzers fit: mean and population std of the clipped features."""
    lo, hi = clip_bounds(FEATURES_PRODUCTION)
    x = np.clip(features.astype(np.float64), lo, hi)
    return x.mean(axis=0), x.std(axis=0)


def test_resolve_architecture_takes_the_model_and_refuses_conflicts():
    meta = {
        "architecture": {"kernel_size": 3},
        "crop": 41,
        "features": list(FEATURES_PRODUCTION),
        "images_only": False,
    }
    assert resolve_architecture(None, None, None, None) == (5, 21, FEATURES_PRODUCTION, False)
    assert resolve_architecture(3, None, "production", None, meta) == (
        3,
        41,
        FEATURES_PRODUCTION,
        False,
    )
    with pytest.raises(TrainError, match=r"--kernel 5 \(the model's is 3\); --crop 21"):
        resolve_architecture(5, 21, None, None, meta)
    with pytest.raises(TrainError, match=r"--features alerce26 .*production"):
        resolve_architecture(None, None, "alerce26", None, meta)
    with pytest.raises(TrainError, match="--images-only"):
        resolve_architecture(None, None, None, True, meta)


def test_load_init_model_reads_weights_and_the_fitted_statistics(nights):
    root, model = nights
    init = load_init_model(str(model))
    assert len(init.weights) == 22 and init.weights["conv_2_2/kernel"].shape == (3, 3, 32, 32)
    # No feature_stats in this model's metadata: they are read back from its transform graph and
    # equal what the analyzers fitted on the source night.
    assert "feature_stats" not in init.metadata
    data, _ = load_dataset(
        [str(root / "src")], read_labels(str(root / "src" / "labels.csv")), FEATURES_PRODUCTION
    )
    mean, std = fitted_stats(data.features)
    got_mean = np.array([init.feature_stats[f]["mean"] for f in FEATURES_PRODUCTION])
    got_std = np.array([init.feature_stats[f]["std"] for f in FEATURES_PRODUCTION])
    np.testing.assert_allclose(got_mean, mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_std[std > 0], std[std > 0], rtol=1e-6)


def test_init_from_starts_from_the_model_weights_and_preprocessing(nights, tmp_path):
    """Zero steps: the exported model *is* the source model (same weights, same statistics, same
    probabilities), although the fine-tuning night's own statistics differ."""
    root, model = nights
    out = tmp_path / "tuned0"
    assert main(train_args(root, out, "--init-from", str(model), "--max-steps", "0")) == 0
    src, tuned = weights_of(model), weights_of(out)
    assert src.keys() == tuned.keys()
    for k in src:
        np.testing.assert_array_equal(tuned[k], src[k], err_msg=k)
    data, _ = load_dataset(
        [str(root / "ft")], read_labels(str(root / "ft" / "labels.csv")), FEATURES_PRODUCTION
    )
    np.testing.assert_allclose(
        evaluate_model(str(out), data.features, data.stamps),
        evaluate_model(str(model), data.features, data.stamps),
        atol=1e-5,
    )
    meta = json.loads((out / "stampflow_model.json").read_text())
    assert meta["architecture"]["kernel_size"] == 3  # the model's, without --kernel
    assert meta["training"]["steps"] == 0
    assert meta["training"]["init_from"] == {
        "name": "test-model",
        "version": "0.0.1",
        "path": str(model),
        "feature_stats": "model",
    }
    assert meta["description"].startswith(f"fine-tuned from test-model 0.0.1 ({model}), trained")
    src_stats = load_init_model(str(model)).feature_stats
    own_mean, _ = fitted_stats(data.features)
    for f in FEATURES_PRODUCTION:
        assert meta["feature_stats"][f]["mean"] == pytest.approx(src_stats[f]["mean"], abs=1e-6)
    assert (
        np.abs(np.array([src_stats[f]["mean"] for f in FEATURES_PRODUCTION]) - own_mean).max() > 0.1
    )


def test_init_from_differs_from_training_from_scratch(nights):
    """Same seed, data and steps: only the starting point differs. The fine-tune stays next to
    its source (two Adam steps of 1e-3), the run from scratch is far from both."""
    _, model = nights
    init = load_init_model(str(model))
    rng = np.random.default_rng(0)
    n = 40
    xf = (
        rng.normal(size=(n, len(FEATURES_PRODUCTION))).astype(np.float32),
        rng.uniform(size=(n, 21, 21, 3)).astype(np.float32),
        np.arange(n) % 5,
    )
    hp = HParams(kernel_size=3, batch_size=8, val_every=1)

    def run(max_steps, weights):
        net, _, history = train_network(
            xf, xf, hp, len(FEATURES_PRODUCTION), 7, max_steps, None, lambda *_: None, weights
        )
        return {w.path: np.asarray(w) for w in net.weights}, history["summary"]

    start, summary = run(0, init.weights)
    assert summary["steps"] == 0
    for k, v in init.weights.items():
        np.testing.assert_array_equal(start[k], v, err_msg=k)
    tuned, summary = run(2, init.weights)
    scratch, _ = run(2, None)
    assert summary["steps"] == 2 and tuned.keys() == scratch.keys() == init.weights.keys()

    def distance(x, y):
        return float(np.mean([np.abs(x[k] - y[k]).mean() for k in x]))

    src = init.weights
    assert distance(tuned, src) < 3e-3
    assert distance(scratch, src) > 10 * max(distance(tuned, src), 1e-3)
    assert distance(tuned, scratch) > 10 * max(distance(tuned, src), 1e-3)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kernel", "5"], "conflicting: --kernel 5 (the model's is 3)"),
        (["--crop", "41"], "conflicting: --crop 41 (the model's is 21)"),
        (["--features", "alerce26"], "conflicting: --features alerce26"),
        (["--images-only"], "conflicting: --images-only"),
    ],
)
def test_init_from_refuses_conflicting_architecture_flags(nights, tmp_path, capsys, flags, message):
    root, model = nights
    rc = main(train_args(root, tmp_path / "m", "--init-from", str(model), *flags))
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("stampflow train: --init-from builds the model's own architecture")
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_init_from_a_directory_without_a_model_is_one_line(nights, tmp_path, capsys):
    root, _ = nights
    assert main(train_args(root, tmp_path / "m", "--init-from", str(tmp_path))) == 2
    err = capsys.readouterr().err
    assert err.startswith("stampflow train: ") and err.count("\n") == 1


ALERCE = DATA / "alerce"


@pytest.mark.skipif(not ALERCE.is_dir(), reason=f"ALeRCE checkpoints not found at {ALERCE}")
@pytest.mark.parametrize("name", ["best_model_so_far", "image_only_model"])
def test_init_from_an_imported_alerce_model(tmp_path, name):
    """An imported ALeRCE model maps back onto a fresh network variable for variable (also the
    images-only layout), with its statistics from the metadata; without them, the probe of the
    embedded transform recovers them."""
    from model.alerce import import_alerce, load_alerce_network
    from model.network import NetworkConfig, build_network

    meta = import_alerce(ALERCE / name, tmp_path / "m")
    init = load_init_model(str(tmp_path / "m"))
    assert init.feature_stats == {f: meta["feature_stats"][f] for f in meta["features"]}
    ref, config = load_alerce_network(ALERCE / name)
    net = build_network(NetworkConfig(config.kernel_size, config.crop, config.n_features))
    assert assign_weights(net, init.weights, images_only=config.n_features == 0) == len(ref.weights)
    for w, r in zip(net.weights, ref.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(w), np.asarray(r), err_msg=w.path)
    if config.n_features:
        path = tmp_path / "m" / "stampflow_model.json"
        path.write_text(json.dumps({k: v for k, v in meta.items() if k != "feature_stats"}))
        probed = load_init_model(str(tmp_path / "m")).feature_stats
        for f, want in init.feature_stats.items():
            assert probed[f]["mean"] == pytest.approx(want["mean"], rel=1e-6, abs=1e-7), f
            assert probed[f]["std"] == pytest.approx(want["std"], rel=1e-6), f
