"""Training on a small simulated set: beats chance widely, splits hold out objects, export
reloads to the same predictions, and the CLI evaluation writes its report."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from model.train import add_arguments, load_dataset, read_labels, split_by_object, train
from transforms.schema import FEATURES_PRODUCTION


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from simulator import simulate

    out = tmp_path_factory.mktemp("sim")
    simulate(700, out, seed=3, detections_per_object=2, workers=1)
    return out


def _args(sim, out, *extra):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(
        ["--alerts", str(sim), "--labels", str(sim / "labels.csv"), "--out", str(out),
         "--kernel", "3", "--val-per-class", "15", "--test-per-class", "20", "--max-steps", "120",
         "--val-every", "10", "--name", "unit", "--version", "1", *extra]
    )  # fmt: skip


def test_split_holds_out_whole_objects_and_balances(sim):
    data, _ = load_dataset([str(sim)], read_labels(str(sim / "labels.csv")), FEATURES_PRODUCTION)
    tr, va, te = split_by_object(data, 15, 20, seed=0)
    objects = [set(data.objects[i]) for i in (tr, va, te)]
    assert not (objects[0] & objects[1] or objects[0] & objects[2] or objects[1] & objects[2])
    assert np.bincount(data.labels[te], minlength=5).tolist() == [20] * 5
    assert np.bincount(data.labels[va], minlength=5).tolist() == [15] * 5
    assert len(tr) + len(va) + len(te) <= len(data.labels)


def test_short_training_beats_chance_and_export_reloads(sim, tmp_path):
    import tensorflow as tf

    meta = train(_args(sim, tmp_path / "model"))
    report = json.loads((tmp_path / "model" / "evaluation" / "report.json").read_text())
    assert report["balanced_accuracy"] > 0.6  # chance is 0.2
    assert meta["metrics"]["balanced_accuracy"] == report["balanced_accuracy"]
    on_disk = json.loads((tmp_path / "model" / "stampflow_model.json").read_text())
    assert on_disk["features"] == list(FEATURES_PRODUCTION) and on_disk["crop"] == 21
    assert on_disk["training"]["steps"] == 120
    for png in ("confusion.png", "sn_roc.png", "probability_histograms.png", "reliability.png"):
        assert (tmp_path / "model" / "evaluation" / png).stat().st_size > 5_000
    # The export is hermetic and deterministic: two loads give identical outputs.
    data, _ = load_dataset([str(sim)], read_labels(str(sim / "labels.csv")), FEATURES_PRODUCTION)
    f, s = tf.constant(data.features[:32]), tf.constant(data.stamps[:32])
    a = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"]
    b = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"]
    np.testing.assert_array_equal(
        a(features=f, stamps=s)["probabilities"].numpy(),
        b(features=f, stamps=s)["probabilities"].numpy(),
    )
