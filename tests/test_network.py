"""The network: shapes, Table 2 parameter arithmetic, rotation invariance, the entropy loss."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model.network import (
    NetworkConfig,
    build_network,
    entropy_regularized_loss,
    expected_parameter_count,
)


@pytest.mark.parametrize(
    "cfg",
    [
        NetworkConfig(),  # production: kernel 5, crop 21, 23 features
        NetworkConfig(kernel_size=3, n_features=26),  # ALeRCE best_model_so_far
        NetworkConfig(kernel_size=3, n_features=0),  # images only
        NetworkConfig(kernel_size=7, crop=41, n_features=23),
    ],
)
def test_shapes_and_parameter_count(cfg):
    net = build_network(cfg)
    assert net.count_params() == expected_parameter_count(cfg)
    n = 3
    rng = np.random.default_rng(1)
    inputs = {"stamps": rng.random((n, cfg.crop, cfg.crop, 3), dtype=np.float32)}
    if cfg.n_features:
        inputs["features"] = rng.random((n, cfg.n_features), dtype=np.float32)
    probs = net(inputs, training=False).numpy()
    assert probs.shape == (n, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_production_parameter_count_by_hand():
    # Table 2 with k = 5, 23 features: convs 1,568 + 25,632 + 51,264 + 2 x 102,464; dense 147,520;
    # batchnorm 92; dense 5,632 + 4,160; logits 325.
    assert expected_parameter_count(NetworkConfig()) == 441_121
    # ALeRCE's best_model_so_far (k = 3, 26 features) has ~261k parameters.
    assert expected_parameter_count(NetworkConfig(kernel_size=3, n_features=26)) == 261_101


def test_rotation_invariance():
    net = build_network(NetworkConfig(kernel_size=3, n_features=23))
    rng = np.random.default_rng(0)
    stamps = rng.random((4, 21, 21, 3), dtype=np.float32)
    features = rng.normal(size=(4, 23)).astype("float32")
    base = net({"stamps": stamps, "features": features}, training=False).numpy()
    for k in (1, 2, 3):
        rotated = np.rot90(stamps, k, axes=(1, 2)).copy()
        out = net({"stamps": rotated, "features": features}, training=False).numpy()
        np.testing.assert_allclose(out, base, atol=1e-5)
    # ... and not invariant to a flip, so the test above can fail.
    flipped = stamps[:, ::-1].copy()
    out = net({"stamps": flipped, "features": features}, training=False).numpy()
    assert np.abs(out - base).max() > 1e-5


def test_entropy_loss_by_hand():
    y = np.array([[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]], "float32")
    p = np.array([[0.1, 0.6, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]], "float32")
    # Row 1: CE = -ln 0.6 = 0.5108; sum p ln p = 0.6 ln 0.6 + 4 (0.1 ln 0.1) = -1.2275.
    # Row 2: CE = ln 5 = 1.6094; sum p ln p = -ln 5.
    expected_b05 = [0.5108256 + 0.5 * -1.2275294, 1.6094379 + 0.5 * -1.6094379]
    got = entropy_regularized_loss(0.5)(tf.constant(y), tf.constant(p)).numpy()
    np.testing.assert_allclose(got, expected_b05, rtol=1e-5)
    ce = entropy_regularized_loss(0.0)(tf.constant(y), tf.constant(p)).numpy()
    np.testing.assert_allclose(ce, [0.5108256, 1.6094379], rtol=1e-5)
