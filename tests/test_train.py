"""Training on a small simulated set: beats chance widely, splits hold out objects, export
reloads to the same predictions, and the CLI evaluation writes its report."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from model.augment import AugmentConfig
from model.train import (
    Augmentation,
    _balanced_batches,
    add_arguments,
    load_dataset,
    read_labels,
    split_by_object,
    train,
    training_batches,
)
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
    # Trained with the default augmentation, recorded; the learning curve is saved beside it.
    assert on_disk["augmentation"] == {"preset": "default", **AugmentConfig().to_dict()}
    assert on_disk["training"]["batch_ms"] > 0 and on_disk["training"]["step_ms"] > 0
    curve = json.loads((tmp_path / "model" / on_disk["training"]["curve_file"]).read_text())
    assert [p["step"] for p in curve] == [0, 1, *range(10, 121, 10)]
    assert all(np.isfinite([p["val_loss"], p["train_loss_mean"]]).all() for p in curve[1:])
    pictures = ("confusion.png", "sn_roc.png", "probability_histograms.png", "reliability.png")
    for png in (*pictures, "training_curve.png"):
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


def test_augment_none_draws_the_unaugmented_batches_and_default_the_same_examples():
    """``--augment none`` yields the batches training always drew (the same generator draws);
    the augmented batches hold the same examples, transformed from augmented raw inputs."""
    g = np.random.default_rng(0)
    n = 30
    raw_f = g.normal(20, 1, size=(n, len(FEATURES_PRODUCTION))).astype(np.float32)
    raw_s = (100 + 5 * g.standard_normal((n, 63, 63, 3))).astype(np.float32)

    def transform(f, s):  # a stand-in for the fitted graph: crop, no normalisation
        return f - 20, s[:, 21:42, 21:42]

    rows = g.permutation(n)[: n - 5]  # the training rows of a larger raw set
    xf = (*transform(raw_f[rows], raw_s[rows]), rows % 5)

    def first(augmentation, k=4, seed=3):
        it = training_batches(xf, 8, seed, augmentation)
        return [next(it) for _ in range(k)]

    old = _balanced_batches(xf[2], 8, np.random.default_rng(3))
    expected = [tuple(a[idx] for a in xf) for idx in (next(old) for _ in range(4))]
    for augmentation in (
        None,
        Augmentation(AugmentConfig.none(), raw_f, raw_s, rows, FEATURES_PRODUCTION, transform),
    ):
        for got, want in zip(first(augmentation), expected, strict=True):
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)
    augmented = Augmentation(AugmentConfig(), raw_f, raw_s, rows, FEATURES_PRODUCTION, transform)
    batches = first(augmented)
    for (f, s, y), (f0, s0, y0) in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(y, y0)
        assert f.shape == f0.shape and s.shape == s0.shape and not np.array_equal(s, s0)
        # The same rows: features other than magnitudes and fwhm are untouched.
        kept = [
            i
            for i, n in enumerate(FEATURES_PRODUCTION)
            if n not in ("magpsf", "diffmaglim", "fwhm")
        ]
        np.testing.assert_array_equal(f[:, kept], f0[:, kept])
    for a, b in zip(batches[0], first(augmented)[0], strict=True):  # deterministic
        np.testing.assert_array_equal(a, b)


def test_labels_from_several_files_are_merged_and_conflicts_refused(tmp_path):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    a.write_text("candid,objectId,class\n1,ZTF1,SN\n2,ZTF2,bogus\n")
    b.write_text("candid,objectId,class\n3,ZTF3,VS\n2,ZTF2,bogus\n")
    c.write_text("candid,objectId,class\n1,ZTF1,AGN\n")
    assert read_labels([str(a), str(b)]) == {
        1: ("ZTF1", "SN"),
        2: ("ZTF2", "bogus"),
        3: ("ZTF3", "VS"),
    }
    assert read_labels(str(b)) == {3: ("ZTF3", "VS"), 2: ("ZTF2", "bogus")}
    with pytest.raises(ValueError, match="candid 1 labelled"):
        read_labels([str(a), str(c)])
