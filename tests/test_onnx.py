"""The ONNX export and ``--runtime onnx`` (issue 18): the graph is plain dataflow and carries the
model's metadata; onnxruntime's probabilities equal TensorFlow's to 1e-5 on every real alert and a
simulated night, for the shipped model and an imported ALeRCE one (imported the old way, with
``tf.image.rot90`` baked into its SavedModel); the handler answers known solar-system objects
and fails bad batches like the TensorFlow one; ``stampflow run --runtime onnx`` writes the rows of
the default runtime, batch and streaming; a missing or stale ``model.onnx`` is one clear line."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from model.handler import (
    KNOWN_SSO_KEY,
    KNOWN_SSO_PROBABILITIES,
    METADATA_FILE,
    ONNX_FILE,
    ModelDirError,
    OnnxHandler,
    OnnxModel,
    VersionedHandler,
    onnx_file_problem,
    read_metadata,
)
from model.network import rotate90
from model.onnx_export import CONTROL_FLOW_OPS, control_flow_nodes, export_onnx
from pipeline.options import DEFAULT_MODEL, OptionsError, parse
from pipeline.run_job import run
from tests.helpers import (
    ALERCE,
    REAL,
    decoded_alerts,
    default_model_features,
    load_real_alerts,
    needs_real,
)
from transforms.featurize import featurize_alerts
from transforms.schema import CLASS_NAMES, PROBABILITY_COLUMN_NAMES

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    from simulator import simulate

    out = tmp_path_factory.mktemp("onnx_night")
    simulate(60, out, seed=18, detections_per_object=2, defects=0.05, workers=1)
    return out


def _inputs(alerts, features):
    result = featurize_alerts(alerts, features, "pad")
    feats = np.stack([e["features"] for _, e in result.examples])
    stamps = np.stack([e["stamps"] for _, e in result.examples])
    return feats, stamps


def _tensorflow(model_dir, feats, stamps):
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    out = serve(features=tf.constant(feats), stamps=tf.constant(stamps))
    return out["probabilities"].numpy()


def _assert_parity(model_dir, alerts, features):
    feats, stamps = _inputs(alerts, features)
    expected = _tensorflow(model_dir, feats, stamps)
    got = OnnxModel(str(model_dir))(feats, stamps)
    assert np.isfinite(got).all()  # NaN pixels must not reach the output (see _select_as_where)
    assert np.abs(got - expected).max() <= TOLERANCE
    assert (got.argmax(1) == expected.argmax(1)).all()
    return len(feats)


def _graph_ops(model_dir) -> set[str]:
    """Operator types in a SavedModel's serving function (its nested functions included)."""
    graph = tf.saved_model.load(str(model_dir)).signatures["serving_default"].graph
    library = graph.as_graph_def().library.function
    return {n.op for f in library for n in f.node_def} | {o.type for o in graph.get_operations()}


# --- The rotation layer ---------------------------------------------------------------------------
def test_rotations_are_np_rot90_without_control_flow():
    x = np.random.default_rng(0).normal(size=(2, 27, 27, 3)).astype(np.float32)
    for k in range(-1, 6):
        got = rotate90(tf.constant(x), k).numpy()
        assert np.array_equal(got, np.rot90(x, k, axes=(1, 2))), k
        assert np.array_equal(got, tf.image.rot90(x, k % 4).numpy()), k


def test_shipped_savedmodel_has_no_rot90_control_flow():
    assert not _graph_ops(DEFAULT_MODEL) & {"If", "StatelessIf"}


# --- The shipped model's export -------------------------------------------------------------------
def test_shipped_onnx_is_plain_dataflow_and_names_the_model():
    proto = onnx.load(str(Path(DEFAULT_MODEL) / ONNX_FILE))
    assert control_flow_nodes(proto) == []
    assert not {n.op_type for n in proto.graph.node} & CONTROL_FLOW_OPS
    assert [i.name for i in proto.graph.input] == ["features", "stamps"]
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    props = {p.key: p.value for p in proto.metadata_props}
    meta = read_metadata(DEFAULT_MODEL)
    assert props["name"] == meta["name"] and props["version"] == meta["version"]
    assert json.loads(props["features"]) == meta["features"] == list(default_model_features())
    assert json.loads(props["class_names"]) == list(CLASS_NAMES)
    assert onnx_file_problem(DEFAULT_MODEL, meta) is None  # the committed file is current


@needs_real
def test_shipped_onnx_equals_tensorflow_on_real_alerts_and_a_night(night):
    features = default_model_features()
    assert _assert_parity(DEFAULT_MODEL, load_real_alerts(), features) > 200
    assert _assert_parity(DEFAULT_MODEL, decoded_alerts(night), features) > 50


# --- An imported ALeRCE model, exported with the CLI ----------------------------------------------
@pytest.fixture(scope="module")
def alerce_model(tmp_path_factory):
    if not (ALERCE / "best_model_so_far").is_dir():
        pytest.skip(f"ALeRCE checkpoints not found at {ALERCE} (set STAMPFLOW_DATA)")
    from model import network
    from model.alerce import import_alerce

    out = tmp_path_factory.mktemp("alerce") / "best"
    # Imported as before the rotation layer was rewritten: tf.image.rot90 (three If nodes in a
    # direct conversion) baked into the SavedModel. export-onnx must still give plain dataflow.
    patch = pytest.MonkeyPatch()
    patch.setattr(
        network.RotationExtend,
        "call",
        lambda self, x: tf.concat([x, *(tf.image.rot90(x, k) for k in (1, 2, 3))], 0),
    )
    try:
        import_alerce(ALERCE / "best_model_so_far", out)
    finally:
        patch.undo()
    assert _graph_ops(out) & {"If", "StatelessIf"}
    return out


def test_export_onnx_cli_on_an_old_alerce_import(alerce_model, night, capsys):
    from pipeline.cli import main

    assert main(["export-onnx", str(alerce_model)]) == 0
    assert "no control flow" in capsys.readouterr().out
    proto = onnx.load(str(alerce_model / ONNX_FILE))
    assert control_flow_nodes(proto) == []
    props = {p.key: p.value for p in proto.metadata_props}
    assert len(json.loads(props["features"])) == 26
    features = read_metadata(str(alerce_model))["features"]
    assert _assert_parity(alerce_model, decoded_alerts(night), features) > 50
    if REAL.is_dir():
        assert _assert_parity(alerce_model, load_real_alerts(), features) > 200


def test_export_to_another_file(alerce_model, tmp_path):
    info = export_onnx(str(alerce_model), str(tmp_path / "x" / "best.onnx"))
    assert Path(info["path"]).is_file() and not set(info["ops"]) & CONTROL_FLOW_OPS
    assert info["version"] == "tf1"


# --- The handler, called directly -----------------------------------------------------------------
def test_handler_answers_known_ssos_and_equals_the_tensorflow_handler(night):
    result = featurize_alerts(decoded_alerts(night)[:6], default_model_features(), "pad")
    examples = [e for _, e in result.examples]
    examples[1] = {**examples[1], KNOWN_SSO_KEY: True}
    onnx_handler, tf_handler = OnnxHandler(DEFAULT_MODEL), VersionedHandler(DEFAULT_MODEL)
    assert onnx_handler.batch_elements_kwargs() == tf_handler.batch_elements_kwargs()
    got = onnx_handler.run_inference(examples, onnx_handler.load_model())
    want = tf_handler.run_inference(examples, tf_handler.load_model())
    assert [r.model_id for r in got] == [DEFAULT_MODEL] * len(examples)
    np.testing.assert_array_equal(got[1].inference, KNOWN_SSO_PROBABILITIES)
    np.testing.assert_allclose(
        np.stack([r.inference for r in got]), np.stack([r.inference for r in want]), atol=TOLERANCE
    )


def test_provider_is_logged_and_a_gpu_not_used_is_a_warning(caplog):
    import onnxruntime

    from model.handler import CPU_PROVIDER, CUDA_PROVIDER

    with caplog.at_level("INFO", logger="model.handler"):
        model = OnnxModel(DEFAULT_MODEL, device="gpu")
    if CUDA_PROVIDER in onnxruntime.get_available_providers() and model.provider == CUDA_PROVIDER:
        pytest.skip("this machine runs the graph on its GPU")
    assert model.provider == CPU_PROVIDER
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "not on the GPU" in warnings[0].getMessage()
    assert CPU_PROVIDER in warnings[0].getMessage()


def test_a_bad_batch_raises_and_becomes_inference_dead_letters():
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.classify import Classify
    from pipeline.options import ModelInfo
    from transforms.schema import STAGE_INFERENCE, TAG_CLASSIFIED, TAG_DEAD_LETTERS

    bad = {"features": np.zeros(23, np.float32), "stamps": np.zeros((21, 21, 3), np.float32)}
    handler = OnnxHandler(DEFAULT_MODEL)
    with pytest.raises(Exception, match="stamps") as error:
        handler.run_inference([bad], handler.load_model())
    meta = {"objectId": "ZTF18bad", "candid": 1, "source": "mem", "raw": b"x", "path": None}
    model = ModelInfo.read(DEFAULT_MODEL)
    with beam.Pipeline(options=PipelineOptions([], runner="FnApiRunner")) as p:
        out = p | beam.Create([(meta, bad)]) | Classify(model, runtime="onnx")
        stages = out[TAG_DEAD_LETTERS] | beam.Map(
            lambda d: (d["stage"], d["candid"], d["reason"].split(":")[:2])
        )
        # The reason names the exception raised by the model (Beam hands the DoFn a class, a
        # repr and a traceback, not the exception: the reason once read "model: tuple: ...").
        expected = ["model", f" {error.type.__name__}"]
        assert_that(stages, equal_to([(STAGE_INFERENCE, 1, expected)]), label="dead")
        assert_that(out[TAG_CLASSIFIED], equal_to([]), label="none_classified")


# --- Options and the command line -----------------------------------------------------------------
def _copy_model(tmp_path: Path, with_onnx: bool = True) -> Path:
    model = tmp_path / "model"
    shutil.copytree(
        DEFAULT_MODEL, model, ignore=None if with_onnx else shutil.ignore_patterns(ONNX_FILE)
    )
    return model


def test_missing_onnx_file_is_one_line_naming_export_onnx(tmp_path, night, capsys):
    from pipeline.cli import main

    model = _copy_model(tmp_path, with_onnx=False)
    argv = ["run", "--input", str(night), "--output", str(tmp_path / "o"), "--model", str(model)]
    assert main([*argv, "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"stampflow export-onnx {model}" in err and ONNX_FILE in err


def test_onnx_of_another_version_is_refused(tmp_path, night):
    model = _copy_model(tmp_path)
    meta = json.loads((model / METADATA_FILE).read_text())
    (model / METADATA_FILE).write_text(json.dumps({**meta, "version": "9.9.9"}))
    with pytest.raises(OptionsError, match=r"another model .*version"):
        parse(["--input", str(night), "--output", str(tmp_path / "o"), "--model", str(model),
               "--runtime", "onnx"])  # fmt: skip
    with pytest.raises(ModelDirError, match="export-onnx"):
        OnnxModel(str(model))


def test_model_watch_is_refused_with_onnx():
    argv = ["--streaming", "--input-subscription", "projects/my-project/subscriptions/s",
            "--output-topic", "projects/my-project/topics/t", "--runtime", "onnx",
            "--model-watch", "/m/*/stampflow_model.json"]  # fmt: skip
    with pytest.raises(OptionsError, match=r"--model-watch .*--runtime onnx"):
        parse(argv)


# --- stampflow run --runtime onnx: batch and streaming --------------------------------------------
def _rows(out: Path) -> dict[int, dict]:
    return {r["candid"]: r for r in pq.read_table(out / "probabilities").to_pylist()}


def _assert_same_rows(got: dict, want: dict) -> None:
    assert set(got) == set(want) and got
    for candid, row in got.items():
        for col in PROBABILITY_COLUMN_NAMES:
            if col.startswith("p_"):
                assert abs(row[col] - want[candid][col]) <= TOLERANCE, (candid, col)
            elif isinstance(want[candid][col], float) and np.isnan(want[candid][col]):
                assert row[col] is None or np.isnan(row[col])
            else:
                assert row[col] == want[candid][col], (candid, col)


@pytest.fixture(scope="module")
def tensorflow_rows(night, tmp_path_factory):
    out = tmp_path_factory.mktemp("tf_run")
    run(["--input", str(night), "--output", str(out), "--quiet-progress"])
    return _rows(out)


def test_batch_run_with_onnx_gives_the_tensorflow_rows(night, tensorflow_rows, tmp_path, capsys):
    summary = run(["--input", str(night), "--output", str(tmp_path), "--runtime", "onnx",
                   "--quiet-progress"])  # fmt: skip
    assert summary["reconciled"]
    assert "onnxruntime" in capsys.readouterr().err  # which runtime and provider, said once
    _assert_same_rows(_rows(tmp_path), tensorflow_rows)


def test_streaming_run_with_onnx_gives_the_tensorflow_rows(
    night, tensorflow_rows, tmp_path, monkeypatch
):
    from bench.emulators import PubSubEmulator, pubsub_missing_requirements

    reason = pubsub_missing_requirements()
    if reason:
        pytest.skip(reason)
    from google.cloud import pubsub_v1

    from bench.streaming import Collector, create_topics
    from pipeline.publish import publish
    from pipeline.run_job import start_streaming

    with PubSubEmulator.start(tmp_path / "emulator.log") as emulator:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        names = create_topics(publisher, subscriber, ("alerts", "rows"))
        opts = parse(["--streaming", "--input-subscription", names["alerts"][1],
                      "--output-topic", names["rows"][0], "--hold-seconds", "3",
                      "--runtime", "onnx"])  # fmt: skip
        rows = Collector(subscriber, names["rows"][1])
        result = start_streaming(opts)
        try:
            time.sleep(5)  # the reader starts pulling, RunInference loads the model
            publish(names["alerts"][0], [str(night)], rate=100.0, publisher=publisher)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and len(rows.messages) < len(tensorflow_rows):
                time.sleep(0.5)
        finally:
            result.cancel()
            rows.stop()
    got = {r["candid"]: r for _, r in rows.messages}
    _assert_same_rows(got, tensorflow_rows)
