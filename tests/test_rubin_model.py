"""The Rubin (LSST) model: the network with flips is exactly invariant to the 8 rotations and flips
of the stamps (and without them is not, under a mirror); the augmentations follow Rubin's
features; ``stampflow train --survey lsst`` on the 36 real Rubin alerts (made-up labels, two
steps) writes a Rubin model that ``evaluate``, ``compare``, ``export-onnx`` and ``run --runtime
onnx`` take; wrong flags are one clear line. The classes are not under test, the plumbing is."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from model.augment import PRESETS, AugmentConfig, augment_batch, dihedral
from model.network import NetworkConfig, build_network, expected_parameter_count
from tests.helpers import REAL, RUBIN, needs_rubin
from transforms.schema import CLASS_NAMES, FEATURES_LSST, PROBABILITY_COLUMNS
from transforms.surveys import LSST

#: The real alerts: Fink's Avro (7), Fink's transfer Parquet (2 x 2), fink-science's Parquet (25).
REAL_RUBIN = (
    RUBIN / "astrolabsoftware__fink-client" / "datatest" / "lsst" / "part-2-918301.avro",
    RUBIN / "astrolabsoftware__fink-tutorials" / "lsst" / "data_transfer",
    RUBIN / "astrolabsoftware__fink-science" / "fink_science" / "data" / "alerts",
)
#: One ZTF alert given to the Rubin training beside them: unusable there, and counted.
ZTF_ALERT = REAL / "AmpelProject__Ampel-ZTF/alerts/ztf_public_20180601/516171791415015025.avro"
#: ONNX against TensorFlow, as tests/test_onnx.py.
TOLERANCE = 1e-5


def _stamps_and_features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, 30, 30, 3)).astype(np.float32),
        rng.normal(size=(n, len(FEATURES_LSST))).astype(np.float32),
    )


def _probabilities(net, stamps, features) -> np.ndarray:
    inputs = {"stamps": tf.constant(stamps)}
    if len(net.inputs) == 2:
        inputs["features"] = tf.constant(features)
    return net(inputs, training=False).numpy()


# --- the network ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n_features", [23, 0])
def test_flips_make_the_network_exactly_invariant_to_the_8_rotations_and_flips(n_features):
    keras.utils.set_random_seed(1)
    config = NetworkConfig(kernel_size=3, crop=30, n_features=n_features, flips=True)
    net = build_network(config)
    stamps, features = _stamps_and_features(6, seed=2)
    base = _probabilities(net, stamps, features)
    for k in range(1, 8):  # dihedral(x, k): k % 4 quarter turns, then a mirror for k >= 4
        got = _probabilities(net, dihedral(stamps, k), features)
        np.testing.assert_allclose(got, base, atol=1e-6, rtol=0, err_msg=f"element {k}")
    # The 8 views add no weight.
    assert net.count_params() == expected_parameter_count(config)
    assert expected_parameter_count(config) == expected_parameter_count(
        replace(config, flips=False)
    )


def test_without_flips_the_network_is_invariant_to_rotations_only():
    keras.utils.set_random_seed(1)
    net = build_network(NetworkConfig(kernel_size=3, crop=30, n_features=23))
    stamps, features = _stamps_and_features(6, seed=2)
    base = _probabilities(net, stamps, features)
    for k in (1, 2, 3):
        np.testing.assert_allclose(
            _probabilities(net, dihedral(stamps, k), features), base, atol=1e-6
        )
    mirrored = _probabilities(net, dihedral(stamps, 4), features)
    assert np.abs(mirrored - base).max() > 1e-4  # so the test above can fail


def test_metadata_without_flips_builds_the_four_rotation_network():
    from model.handler import read_metadata
    from model.rebuild import rebuild_serving_model
    from pipeline.options import DEFAULT_MODEL

    old = {k: v for k, v in NetworkConfig().to_dict().items() if k != "flips"}
    assert NetworkConfig(**old).flips is False and NetworkConfig(**old).views == 4
    assert NetworkConfig(flips=True).to_dict()["flips"] is True
    # The shipped ZTF model (ONNX export and --mixed-precision rebuild it): four rotations.
    meta = read_metadata(DEFAULT_MODEL)
    rebuilt = rebuild_serving_model(DEFAULT_MODEL, meta).model
    assert rebuilt.get_layer("rotations").flips is False
    assert rebuilt.get_layer("cyclic_pool").views == 4


# --- augmentation of Rubin examples ---------------------------------------------------------------
def _rubin_batch(b: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw Rubin-like examples [nJy]: a transient at the centre of the science, a static star in
    science and template, noise of 40 and 5 nJy; D = S - R; features with half "no science flux"."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:30, :30].astype(np.float64)

    def gauss(r0, c0, sigma, flux):
        r2 = (y - r0) ** 2 + (x - c0) ** 2
        return flux * np.exp(-0.5 * r2 / sigma**2) / (2 * np.pi * sigma**2)

    star = gauss(8.0, 21.0, 2.5, 5e5)
    s = star + gauss(14.5, 14.5, 2.5, 2e4) + 40.0 * rng.standard_normal((b, 30, 30))
    r = star + 5.0 * rng.standard_normal((b, 30, 30))
    stamps = np.stack([s, r, s - r], axis=-1).astype(np.float32)
    features = np.zeros((b, len(FEATURES_LSST)), np.float32)
    col = {n: i for i, n in enumerate(FEATURES_LSST)}
    features[:, col["psf_mag"]] = 22.0
    features[:, col["science_mag"]] = np.where(np.arange(b) % 2, 21.0, -999.0)
    features[:, col["template_mag"]] = 20.0
    features[:, col["fwhm"]], features[:, col["fwhm_psf"]] = 1.3, 1.1  # [arcsec]
    return features, stamps


def _only(name: str, **strength) -> AugmentConfig:
    return replace(AugmentConfig.none(), **{f"{name}_prob": 1.0, **strength})


def test_zero_point_shifts_rubin_magnitudes_but_not_no_flux_or_the_template():
    f, x = _rubin_batch()
    col = {n: i for i, n in enumerate(FEATURES_LSST)}
    fo, xo = augment_batch(
        f, x, FEATURES_LSST, _only("zero_point"), np.random.default_rng(3), "lsst"
    )
    dmag = fo[:, col["psf_mag"]] - f[:, col["psf_mag"]]
    k = xo[:, 14, 14, 0] / x[:, 14, 14, 0]  # the science's flux factor
    np.testing.assert_allclose(dmag, -2.5 * np.log10(k), atol=1e-4)
    assert np.abs(dmag).max() > 0.01
    measured = f[:, col["science_mag"]] != -999.0
    np.testing.assert_allclose(fo[measured, col["science_mag"]] - 21.0, dmag[measured], atol=1e-4)
    assert (fo[~measured, col["science_mag"]] == -999.0).all()
    assert (fo[:, col["template_mag"]] == 20.0).all() and np.array_equal(xo[..., 1], x[..., 1])


def test_a_blurred_rubin_science_widens_both_widths_in_arcsec():
    f, x = _rubin_batch(32)
    col = {n: i for i, n in enumerate(FEATURES_LSST)}
    cfg = _only("psf", psf_sigma_max=2.0, filter_border=6)
    fo, xo = augment_batch(f, x, FEATURES_LSST, cfg, np.random.default_rng(4), "lsst")
    added = [np.sqrt(fo[:, col[n]] ** 2 - f[:, col[n]] ** 2) for n in ("fwhm", "fwhm_psf")]
    np.testing.assert_allclose(added[0], added[1], atol=1e-4)  # the same kernel in both
    blurred = added[0] > 0
    assert 0 < blurred.sum() < len(f)  # science or template, even odds
    # A kernel sigma of at most 2 px is a FWHM of at most 2.3548 * 2 * 0.2" = 0.94".
    assert added[0].max() <= 2.3548 * 2.0 * 0.2 + 1e-4 and added[0].max() > 0.1
    assert np.isfinite(xo).all()


def test_the_lsst_preset_runs_on_rubin_examples_and_saturation_is_refused():
    f, x = _rubin_batch()
    fo, xo = augment_batch(f, x, FEATURES_LSST, PRESETS["lsst"], np.random.default_rng(5), "lsst")
    assert xo.shape == x.shape and fo.shape == f.shape and np.isfinite(xo).all()
    assert not np.array_equal(xo, x)
    with pytest.raises(ValueError, match="saturation_prob must be 0 for lsst"):
        augment_batch(f, x, FEATURES_LSST, AugmentConfig(), np.random.default_rng(5), "lsst")


# --- train, evaluate, compare, export, run on the real Rubin alerts -------------------------------
def _alerts():
    from transforms.sources import decode_paths

    alerts = [a for item in decode_paths([str(p) for p in REAL_RUBIN]) for a in item.alerts]
    assert len(alerts) == 36 and {a.survey for a in alerts} == {LSST}
    return alerts


def _train_args(*argv: str) -> argparse.Namespace:
    from model.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def rubin(tmp_path_factory):
    """The real alerts, a labels.csv cycling the classes over their diaSourceIds, and a model
    trained two steps on them (one ZTF alert among the inputs when the ZTF alerts are here)."""
    from model.train import train

    alerts = _alerts()
    root = tmp_path_factory.mktemp("rubin_model")
    labels = root / "labels.csv"
    lines = ["candid,objectId,class,subtype"]
    lines += [f"{a.candid},{a.object_id},{CLASS_NAMES[i % 5]}," for i, a in enumerate(alerts)]
    labels.write_text("\n".join(lines) + "\n")
    inputs = [str(p) for p in REAL_RUBIN] + ([str(ZTF_ALERT)] if ZTF_ALERT.is_file() else [])
    args = _train_args(
        "--survey", "lsst", "--alerts", *inputs, "--labels", str(labels),
        "--out", str(root / "model"), "--kernel", "3", "--batch-size", "16",
        "--val-per-class", "1", "--test-per-class", "1", "--max-steps", "2",
        "--name", "rubin-unit", "--version", "1",
    )  # fmt: skip
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        meta = train(args)
    return {
        "alerts": alerts,
        "labels": labels,
        "model": root / "model",
        "meta": meta,
        "log": log.getvalue(),
    }


def _raw_inputs(alerts) -> tuple[np.ndarray, np.ndarray]:
    from transforms.featurize import featurize_alerts

    result = featurize_alerts(alerts, FEATURES_LSST, "pad", LSST)
    assert not result.dead_letters
    features = np.stack([e["features"] for _, e in result.examples])
    return features, np.stack([e["stamps"] for _, e in result.examples])


def _serve(model_dir: Path, features: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    return serve(features=tf.constant(features), stamps=tf.constant(stamps))[
        "probabilities"
    ].numpy()


@needs_rubin
def test_train_survey_lsst_writes_a_d4_invariant_rubin_model(rubin):
    meta = json.loads((rubin["model"] / "stampflow_model.json").read_text())
    assert meta["survey"] == "lsst" and meta["stamp_size"] == 30 and meta["crop"] == 30
    assert meta["features"] == list(FEATURES_LSST) and len(meta["features"]) == 23
    assert meta["architecture"]["flips"] is True and meta["hyperparameters"]["flips"] is True
    assert meta["augmentation"]["preset"] == "lsst"
    assert meta["augmentation"]["saturation_prob"] == meta["augmentation"]["dihedral_prob"] == 0
    assert meta["splits"]["val"] == [1] * 5 and meta["splits"]["test"] == [1] * 5
    assert meta["training"]["steps"] == 2
    assert "loaded 36 labelled lsst examples" in rubin["log"]
    if ZTF_ALERT.is_file():  # another survey's alert: unusable, and said so
        assert "0 unlabelled, 1 unusable (1 not lsst)" in rubin["log"]
    # Exactly invariant through the exported signature too: raw stamps in, transform embedded.
    features, stamps = _raw_inputs(rubin["alerts"])
    base = _serve(rubin["model"], features, stamps)
    for k in (1, 4, 6):
        got = _serve(rubin["model"], features, dihedral(stamps, k))
        np.testing.assert_allclose(got, base, atol=1e-6, rtol=0, err_msg=f"element {k}")


@needs_rubin
def test_evaluate_and_compare_take_the_rubin_model(rubin, tmp_path, capsys):
    from pipeline.cli import main

    alerts = [str(p) for p in REAL_RUBIN]
    model, labels = str(rubin["model"]), str(rubin["labels"])
    assert main(["evaluate", "--model", model, "--alerts", *alerts, "--labels", labels,
                 "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert "36 labelled lsst alerts (0 unlabelled, 0 unusable)" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["n"] == 36
    assert main(["compare", "--model", model, "--reference", model, "--alerts", *alerts,
                 "--out", str(tmp_path / "cmp"), "--select", "first"]) == 0  # fmt: skip
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["model"]["survey"] == "lsst" and result["model"]["feature_set"] == "lsst"
    assert result["n"] == 24 and result["agreement"] == 1.0  # the 24 first detections
    assert result["skipped"] == {"earlier_detection_in_history": 12}
    assert set(result["imputed"]["by_feature"]) <= set(FEATURES_LSST)
    # A ZTF reference is another survey's model: one line, exit 2.
    capsys.readouterr()
    default = str(Path(__file__).resolve().parents[1] / "model" / "default")
    assert main(["compare", "--model", model, "--reference", default, "--alerts", *alerts,
                 "--out", str(tmp_path / "cmp2")]) == 2  # fmt: skip
    assert "compare two models of one survey" in capsys.readouterr().err


@needs_rubin
def test_onnx_export_of_the_rubin_model_runs_the_real_alerts(rubin, tmp_path, capsys):
    import onnx

    from model.handler import ONNX_FILE, OnnxModel
    from model.onnx_export import control_flow_nodes
    from pipeline.cli import main
    from pipeline.run_job import run

    model = rubin["model"]
    assert main(["export-onnx", str(model)]) == 0
    assert "no control flow" in capsys.readouterr().out
    proto = onnx.load(str(model / ONNX_FILE))
    assert control_flow_nodes(proto) == []
    props = {p.key: p.value for p in proto.metadata_props}
    assert (props["survey"], props["stamp_size"], props["flips"]) == ("lsst", "30", "true")
    features, stamps = _raw_inputs(rubin["alerts"])
    expected = _serve(model, features, stamps)
    got = OnnxModel(str(model))(features, stamps)
    assert np.abs(got - expected).max() <= TOLERANCE
    # The pipeline on onnxruntime: every first detection classified, the network's rows as TF's.
    out = tmp_path / "run"
    summary = run(["--input", *map(str, REAL_RUBIN), "--output", str(out),
                   "--model", str(model), "--runtime", "onnx"])  # fmt: skip
    assert summary["reconciled"] and summary["records_in"] == 36 and summary["classified"] == 24
    rows = pq.read_table(out / "probabilities").to_pylist()
    assert {r["model_name"] for r in rows} == {"rubin-unit"} and {r["survey"] for r in rows} == {
        "lsst"
    }
    index = {a.candid: i for i, a in enumerate(rubin["alerts"])}
    by_network = [r for r in rows if r["rule"] != "known_solar_system_object"]
    assert len(by_network) == 19  # the 5 known asteroids are answered without the network
    for r in by_network:
        want = expected[index[r["candid"]]]
        got_row = np.array([r[c] for c in PROBABILITY_COLUMNS])
        assert np.abs(got_row - want).max() <= TOLERANCE, r["candid"]


@needs_rubin
def test_init_from_a_rubin_model_keeps_its_survey_and_flips(rubin):
    from model.train import TrainError, _resolve_flips, resolve_architecture, resolve_survey

    meta = rubin["meta"]
    assert resolve_survey(None, meta) == "lsst"
    assert resolve_architecture(None, None, None, None, meta, "lsst") == (
        3, 30, FEATURES_LSST, False,
    )  # fmt: skip
    assert _resolve_flips(None, "lsst", meta) is True
    with pytest.raises(TrainError, match="builds a lsst model; conflicting: --survey ztf"):
        resolve_survey("ztf", meta)


@needs_rubin
def test_rubin_alerts_without_survey_lsst_are_one_line(rubin, tmp_path, capsys):
    from pipeline.cli import main

    argv = ["train", "--alerts", str(REAL_RUBIN[0]), "--labels", str(rubin["labels"]),
            "--out", str(tmp_path / "model")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no labelled ztf alerts found (7 alerts of another survey: lsst); --survey ztf" in err


# --- flags refused with one line ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--survey", "lsst", "--features", "production"],
            "--features production is a ztf feature list; --survey lsst models take lsst",
        ),
        (["--features", "lsst"], "--features lsst is a lsst feature list; --survey ztf models"),
        (["--survey", "lsst", "--crop", "41"], "--crop 41 is larger than the lsst stamps (30x30"),
        (["--crop", "30"], "--crop 30: crop 30 must be odd"),
        (
            ["--survey", "lsst", "--augment", "default"],
            "--augment default is made for ztf stamps; --survey lsst takes lsst or none",
        ),
    ],
)
def test_wrong_training_flags_are_one_line_and_exit_2(flags, message, tmp_path, capsys):
    from pipeline.cli import main

    argv = ["train", "--alerts", str(tmp_path / "none"), "--labels", str(tmp_path / "none.csv"),
            "--out", str(tmp_path / "model"), *flags]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "model").exists()
