"""``stampflow bench``: a tiny run produces every headline number, and the FLOP count is right.

Wall-clock speed is never asserted (a benchmark, not a timed test): only that the numbers exist,
are positive and are consistent with each other.
"""

from __future__ import annotations

import argparse
import json

import pytest

from bench.stages import PRODUCTION, model_flops_per_alert, model_macs
from model.network import NetworkConfig

HEADLINE = (
    "baseline_alerts_per_s",
    "batched_peer_alerts_per_s",
    "ratio_batched_peer",
    "pipeline_alerts_per_s",
    "ratio",
    "peak_rss_mb",
    "inference_gflops",
    "machine_gflops",
    "model_flops_per_alert",
)


def test_flops_equal_a_hand_computation():
    # 21 + 2·3 padding = 27; 4×4 valid conv → 24; pool → 12; pool → 6. Four rotations.
    rotated = (
        24 * 24 * (4 * 4 * 3) * 32  # conv1
        + 24 * 24 * (5 * 5 * 32) * 32  # conv2
        + 12 * 12 * (5 * 5 * 32) * 64  # conv3
        + 2 * 12 * 12 * (5 * 5 * 64) * 64  # conv4, conv5
        + 6 * 6 * 64 * 64  # dense1
    )
    head = (64 + 23) * 64 + 64 * 64 + 64 * 5  # dense2, dense3, logits
    assert model_flops_per_alert(PRODUCTION) == 2 * (4 * rotated + head) == 421_154_304


def test_macs_match_the_keras_network_layer_by_layer():
    import keras

    from model.network import LAYER_NAMES, build_network

    cfg = NetworkConfig(kernel_size=3, crop=21, n_features=23)
    net = build_network(cfg)
    expected = model_macs(cfg)
    for role, name in LAYER_NAMES.items():
        if role == "batchnorm":
            continue
        layer = net.get_layer(name)
        weights = int(layer.kernel.shape.num_elements())
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            per_example = weights * h * w
        else:
            per_example = weights
        rotations = 4 if role in ("conv1", "conv2", "conv3", "conv4", "conv5", "dense1") else 1
        assert expected[role] == rotations * per_example, role


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from bench.cli import register

    work = tmp_path_factory.mktemp("bench")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"), "bench")
    args = parser.parse_args(
        [
            "bench",
            "--alerts",
            "200",
            "--stage-alerts",
            "60",
            "--baseline-alerts",
            "60",
            "--workers",
            "1",
            "--seconds",
            "0.1",
            "--quick",
            "--cache",
            str(work / "cache"),
            "--real",
            str(work / "no-real-alerts"),
            "--json",
            str(work / "bench.json"),
            "--null-model",
        ]
    )
    assert args.func(args) == 0
    return json.loads((work / "bench.json").read_text())


def test_tiny_run_writes_every_headline_number(tiny_run):
    for key in HEADLINE:
        assert tiny_run[key] > 0, key
    assert tiny_run["model_flops_per_alert"] == 421_154_304
    e2e = tiny_run["end_to_end"]
    assert e2e["alerts"] == 200 and e2e["reconciled"] and 0 < e2e["classified"] < 200
    assert tiny_run["ratio"] == pytest.approx(
        tiny_run["pipeline_alerts_per_s"] / tiny_run["baseline_alerts_per_s"]
    )
    assert tiny_run["baseline"]["alerts"] == 60 and tiny_run["baseline"]["classified"] > 0
    # the batched peer reads and classifies the same alerts, only in batches
    peer = tiny_run["batched_peer"]
    assert (peer["alerts"], peer["classified"]) == (60, tiny_run["baseline"]["classified"])
    # --null-model: the same night through everything but the network, in the same run
    null = tiny_run["end_to_end_null"]
    assert null["runtime"] == "null" and null["reconciled"]
    assert (null["alerts"], null["classified"]) == (e2e["alerts"], e2e["classified"])
    assert null["ms_per_alert_read"] == pytest.approx(1000 * null["runtime_s"] / null["alerts"])


def test_tiny_run_per_stage_table(tiny_run):
    rows = {r["stage"]: r for r in tiny_run["stages"]}
    for stage in (
        "container decoding",
        "stamp decoding (3 cutouts)",
        "featurisation",
        "transform (tf.Transform graph)",
        "inference, batch 1",
        "inference, batch 64",
        "inference, batch 256",
        "end to end",
    ):
        assert rows[stage]["stampflow"] > 0, stage
    for stage in ("container decoding", "stamp decoding (3 cutouts)", "featurisation"):
        assert rows[stage]["baseline"] > 0 and rows[stage]["ratio"] > 0, stage
    inference = tiny_run["stages_simulated"]["inference"]
    flops = tiny_run["model_flops_per_alert"]
    for r in inference.values():
        assert r["gflops"] == pytest.approx(r["alerts_per_s"] * flops / 1e9)
        assert r["efficiency"] == pytest.approx(r["gflops"] / tiny_run["machine_gflops"])
    assert "stages_real" not in tiny_run  # the --real directory does not exist


def test_memory_sampling_sees_a_child_and_its_own_peak():
    import subprocess
    import sys

    from bench.end_to_end import tree_memory

    # A child that touches 200 MB, frees it, says so, then idles: its peak stays visible after the
    # free. The parent reads RSS only after the child reports the free (no race with the del).
    code = (
        "import sys, time\n"
        "b = bytearray(200 * 2**20)\n"
        "del b\n"
        "print('freed', flush=True)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "freed"
        rss, peak = tree_memory(child.pid)
        assert peak >= 200 * 2**20
        assert 0 < rss < 150 * 2**20  # the free returned the memory
    finally:
        child.kill()
        child.wait()


def test_decode_bench_reports_every_pass(real):
    """``python -m bench.decode_bench``: full decode, first pass, second pass and stamps."""
    from bench.decode_bench import format_table, measure

    result = measure([data for _, data in real[:10]], repeat=1)
    for key in ("containers_ours", "containers_fastavro", "containers_first_pass"):
        assert result[key] > 0
    assert result["containers_slim"] > 0 and result["slim_ratio"] > 0
    assert result["stamps_ours"] > 0 and result["stamps_astropy"] > 0
    assert "second pass (winners without history)" in format_table(result)
