"""ALeRCE checkpoints: variant inference, safe stats reading, and exact parity of our network
with ALeRCE's own TF1 graph (published weights, and random weights for the production layout)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from model.alerce import (
    checkpoint_prefix,
    find_feature_stats,
    infer_config,
    load_alerce_network,
    read_feature_stats,
)
from model.alerce_reference import AlerceGraph
from tests.helpers import ALERCE, needs_alerce
from transforms.schema import FEATURES_ALERCE_26, FEATURES_PRODUCTION


@needs_alerce
@pytest.mark.parametrize(
    ("name", "kernel", "n_features"),
    [
        ("best_model_so_far", 3, 26),
        ("image_only_model", 3, 0),
        ("production_model_graph_only", 5, 23),
    ],
)
def test_variant_inferred_from_shapes(name, kernel, n_features):
    cfg = infer_config(checkpoint_prefix(ALERCE / name))
    assert (cfg.kernel_size, cfg.crop, cfg.n_features) == (kernel, 21, n_features)


@needs_alerce
def test_feature_stats_pickle_equals_json_and_orders():
    pkl = read_feature_stats(ALERCE / "best_model_so_far" / "feature_norm_stats.pkl")
    assert pkl == read_feature_stats(ALERCE / "feature_norm_stats.json", "best_model_so_far")
    assert tuple(pkl) == FEATURES_ALERCE_26
    assert pkl["isdiffpos"]["mean"] == 0.0  # ALeRCE's quirk, kept on purpose
    prod = find_feature_stats(ALERCE / "production_model_graph_only")
    assert tuple(prod) == FEATURES_PRODUCTION


def test_stats_pickle_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "feature_norm_stats.pkl"
    path.write_bytes(pickle.dumps({"x": {"mean": Evil(), "std": 1.0}}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_feature_stats(path)


def _inputs(n, n_features, seed=0):
    rng = np.random.default_rng(seed)
    stamps = rng.random((n, 21, 21, 3), dtype=np.float32)
    stamps[0] = 0.0  # an all-zero stamp (all-NaN input after preprocessing)
    features = rng.normal(size=(n, n_features)).astype(np.float32) if n_features else None
    return stamps, features


def _ours(net, stamps, features):
    inputs = {"stamps": stamps}
    if features is not None:
        inputs["features"] = features
    return net(inputs, training=False).numpy()


@needs_alerce
@pytest.mark.parametrize("name", ["best_model_so_far", "image_only_model"])
def test_published_weights_match_tf1_graph(name):
    prefix = checkpoint_prefix(ALERCE / name)
    net, cfg = load_alerce_network(ALERCE / name)
    stamps, features = _inputs(64, cfg.n_features)
    ref = AlerceGraph(prefix + ".meta", prefix)
    try:
        expected = ref.predict(stamps, features)
    finally:
        ref.close()
    got = _ours(net, stamps, features)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert len(set(expected.argmax(1))) > 1  # inputs exercise more than one class


@needs_alerce
def test_production_layout_with_random_weights(tmp_path):
    # ALeRCE's production weights are not published: restore its graph, give it random weights,
    # save them as a checkpoint, import that, and compare.
    meta = ALERCE / "production_model_graph_only" / "model.meta"
    ref = AlerceGraph(meta, None, seed=7)
    try:
        prefix = ref.save(tmp_path / "model")
        net, cfg = load_alerce_network(prefix)
        assert (cfg.kernel_size, cfg.n_features) == (5, 23)
        stamps, features = _inputs(32, 23, seed=3)
        np.testing.assert_allclose(
            _ours(net, stamps, features), ref.predict(stamps, features), atol=1e-5
        )
    finally:
        ref.close()
