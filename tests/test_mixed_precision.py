"""``--mixed-precision``: the shipped model computing in bfloat16 (CPU) / float16 (GPU).

The network is rebuilt from the SavedModel's weights under a mixed Keras dtype policy
(:mod:`model.rebuild`); where the machine cannot run it (a CPU without bfloat16 support) the
handler says so once and serves float32. Which of the two happens depends on the CPU, so each
test asserts the branch this machine takes, decided by its ``/proc/cpuinfo`` flags.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.helpers import needs_real

pytestmark = needs_real


@pytest.fixture(scope="module")
def real_inputs():
    from bench.stages import examples_of
    from tests.helpers import REAL, default_model_features
    from transforms.sources import decode_paths

    alerts = [a for item in decode_paths([str(REAL)]) for a in item.alerts]
    return examples_of(alerts, default_model_features())


def _probabilities(features, stamps, **kwargs):
    from bench.serving import load_serving
    from pipeline.options import DEFAULT_MODEL

    return load_serving(DEFAULT_MODEL, **kwargs)(features, stamps)


def _has_bf16() -> bool:
    from bench.cli import cpu_half_precision_flags

    return any(f.endswith("bf16") for f in cpu_half_precision_flags())


def test_network_layers_compute_in_the_policy_and_the_softmax_in_float32():
    import keras

    from model.network import NetworkConfig, build_network

    before = keras.config.dtype_policy().name
    net = build_network(NetworkConfig(), dtype_policy="mixed_bfloat16")
    assert keras.config.dtype_policy().name == before  # the global policy is left alone
    conv = net.get_layer("conv_1_1")
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert net.get_layer("probabilities").compute_dtype == "float32"
    plain = build_network(NetworkConfig())
    assert plain.get_layer("conv_1_1").compute_dtype == "float32"


def test_shipped_model_in_mixed_precision_on_real_alerts(real_inputs, caplog):
    features, stamps = real_inputs
    p32 = _probabilities(features, stamps)
    with caplog.at_level(logging.WARNING, logger="model.handler"):
        mixed = _probabilities(features, stamps, mixed_precision=True)
    assert mixed.dtype == np.float32 and np.all(np.isfinite(mixed))
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-5)
    diff = np.abs(mixed - p32).max()
    if _has_bf16():  # it ran in bfloat16: close to float32, not equal to it
        assert 0 < diff < 2e-2
        assert (mixed.argmax(1) == p32.argmax(1)).mean() >= 0.98
        assert "cannot run here" not in caplog.text
    else:  # said once, and float32 served
        assert diff == 0
        assert "--mixed-precision: mixed_bfloat16 cannot run here" in caplog.text


def test_a_machine_that_cannot_run_it_serves_float32_and_says_so(real_inputs, monkeypatch, caplog):
    import model.rebuild

    def refuse(*args, **kwargs):
        raise RuntimeError("no bfloat16 convolution on this CPU")

    monkeypatch.setattr(model.rebuild, "rebuild_serving_model", refuse)
    features, stamps = real_inputs
    with caplog.at_level(logging.WARNING, logger="model.handler"):
        mixed = _probabilities(features[:8], stamps[:8], mixed_precision=True)
    np.testing.assert_array_equal(mixed, _probabilities(features[:8], stamps[:8]))
    assert "no bfloat16 convolution on this CPU); serving float32" in caplog.text
