"""``stampflow run``'s options: parsed and validated once, a user's mistake is one line and exit 2
before any work starts (the pipeline is never built)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import StandardOptions

from pipeline.cli import main
from pipeline.options import (
    BATCH_RUNNER,
    STREAMING_RUNNER,
    OptionsError,
    RunOptions,
    TnsReporter,
    check_output,
    parse,
)
from tests.helpers import mini_container, mini_record

STREAM = [
    "--streaming",
    "--input-subscription", "projects/my-project/subscriptions/alerts",
    "--output-topic", "projects/my-project/topics/rows",
]  # fmt: skip


@pytest.fixture
def night(tmp_path) -> Path:
    d = tmp_path / "night"
    d.mkdir()
    (d / "a.avro").write_bytes(mini_container([mini_record(1)]))
    return d


@pytest.fixture
def never_built(monkeypatch):
    """Fail the test if a pipeline is built: refusals must come before any work."""
    import pipeline.run_job as run_job

    def build(*_, **__):
        raise AssertionError("the pipeline was built for a refused run")

    monkeypatch.setattr(run_job, "build", build)


def test_batch_options_are_typed_and_resolved(night, tmp_path):
    opts = parse(["--input", str(night), "--output", str(tmp_path / "out"), "--select", "all"])
    assert isinstance(opts, RunOptions) and not opts.is_streaming
    assert opts.inputs == (str(night),) and opts.select == "all" and opts.rules is True
    assert opts.runner == BATCH_RUNNER and not opts.spread
    assert opts.model.name and opts.model.features  # read once, here
    assert (tmp_path / "out").is_dir()  # created by the writability check
    assert not [p for p in (tmp_path / "out").iterdir()]  # and the probe file is gone
    with pytest.raises(AttributeError):
        opts.select = "first"  # frozen


def test_streaming_options_resolve_runner_watch_and_one_hold_default(tmp_path):
    opts = parse([*STREAM, "--model-watch", str(tmp_path / "*" / "stampflow_model.json")])
    assert opts.is_streaming and opts.output is None and opts.inputs == ()
    assert opts.runner == STREAMING_RUNNER
    assert opts.watch.mode == "poll"  # the only mode the local runners can run
    assert opts.streaming.hold_s == 5.0 and opts.streaming.ttl_s == 86400.0
    on_dataflow = parse([*STREAM, "--runner", "DataflowRunner", "--model-watch", "m/*/x.json"])
    assert on_dataflow.watch.mode == "side-input" and on_dataflow.spread
    assert on_dataflow.pipeline_options().view_as(StandardOptions).streaming


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "/no/such/path"], "'/no/such/path' matched no alert files"),
        (["--input", "/no/such/*.avro"], "matched no alert files"),
        ([], "--input is required"),
        (["--input", "{night}", "--model", "/tmp"], "is not an exported stampflow model"),
        (["--input", "{night}", "--bigquery-dataset", "nodataset"], "PROJECT:DATASET"),
        (["--input", "{night}", "--model-watch", "m/*"], "--streaming run only"),
        (["--streaming", "--output-topic", "projects/my-project/topics/t"], "--input-subscription"),
        (
            ["--streaming", "--input-subscription", "projects/my-project/subscriptions/s"],
            "--output-topic and/or --bigquery-dataset",
        ),
        (
            [*STREAM[:3], "--output-topic", "projects/my-project/topic/rows"],
            'must be in the form "projects/<project>/topics',
        ),
        (
            ["--streaming", "--input-subscription", "alerts", *STREAM[3:]],
            "subscription must be in the form",
        ),
        (
            [*STREAM, "--dead-letter-topic", "projects/x/topics/dead"],
            "Invalid PubSub project name: 'x'",
        ),
        ([*STREAM, "--model-watch", "m/*", "--model-watch-mode", "side-input"], "poll"),
        (
            ["--input", "{night}", "--runtime", "null", "--mixed-precision"],
            "--mixed-precision applies to --runtime tensorflow, not null",
        ),
        ([*STREAM, "--sn-page-dir", "/proc/stampflow-pages"], "--sn-page-dir /proc/stampflow"),
    ],
)
def test_user_mistakes_are_refused_with_one_line(argv, message, night):
    argv = [a.replace("{night}", str(night)) for a in argv]
    with pytest.raises(OptionsError, match=message.replace("(", r"\(").replace("*", r"\*")):
        parse(argv)


def test_sn_page_options(night, tmp_path):
    opts = parse([*STREAM, "--sn-page-dir", str(tmp_path / "pages"), "--tns-group-id", "74"])
    assert opts.streaming.sn_page_dir == str(tmp_path / "pages") and (tmp_path / "pages").is_dir()
    assert opts.tns == TnsReporter(74, "")
    batch = parse(["--input", str(night), "--output", str(tmp_path / "o"), "--tns-reporter", "Me"])
    assert batch.tns == TnsReporter(None, "Me") and batch.streaming is None


def test_output_that_is_a_file_or_unwritable_is_refused(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OptionsError, match="exists and is not a directory"):
        check_output(str(a_file))
    with pytest.raises(OptionsError, match="cannot create it"):
        check_output(str(a_file / "sub"))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # root writes anywhere: then use a filesystem that refuses everyone
        target = "/proc/stampflow-out" if os.access(locked, os.W_OK) else str(locked)
        with pytest.raises(OptionsError, match="--output"):
            check_output(target)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "/no/such/path"], "stampflow run: --input: '/no/such/path' matched no alert"),
        (["--input", "{night}", "--output", "/proc/stampflow-out"], "stampflow run: --output"),
        (
            ["--streaming", "--input-subscription", "bad", "--output-topic", "projects/p/topics/t"],
            "stampflow run: --input-subscription 'bad'",
        ),
    ],
)
def test_the_command_line_prints_one_line_and_exits_2(argv, message, night, never_built, capsys):
    argv = [a.replace("{night}", str(night)) for a in argv]
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_decode_refuses_a_typo_the_same_way(tmp_path, capsys):
    typo = str(tmp_path / "nothing*.avro")
    assert main(["decode", typo, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"stampflow decode: input: '{typo}' matched no alert files"]


def test_null_runtime_serves_fixed_probabilities_without_a_model(night, tmp_path):
    from model.handler import NULL_PROBABILITIES, NullHandler

    opts = parse(["--input", str(night), "--output", str(tmp_path / "o"), "--runtime", "null"])
    assert opts.runtime == "null"
    handler = NullHandler(opts.model.directory)
    assert handler.load_model() is None
    (result,) = handler.run_inference([{"features": None, "stamps": None}], None)
    assert result.model_id == opts.model.directory
    assert result.inference.tolist() == NULL_PROBABILITIES.tolist()
    assert NULL_PROBABILITIES.sum() == pytest.approx(1.0) and len(set(NULL_PROBABILITIES)) == 1
    with pytest.raises(OptionsError, match="--runtime null serves none"):
        parse([*STREAM, "--runtime", "null", "--model-watch", "m/*"])


def test_device_decides_the_inference_batch_sizes(night, tmp_path):
    from model.handler import BATCH_BOUNDS, StampClassifierHandler

    base = ["--input", str(night), "--output", str(tmp_path / "o")]
    assert parse(base).device == "cpu"  # this machine: TensorFlow sees no GPU
    gpu_job = [*base, "--runner", "DataflowRunner", "--project", "p", "--region", "r"]
    accel = "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1"
    assert parse([*gpu_job, accel]).device == "gpu"
    assert parse(gpu_job).device == "cpu"
    assert parse([*base, "--device", "gpu", "--jit-compile"]).jit_compile
    assert parse([*base, "--mixed-precision"]).mixed_precision
    assert not parse(base).mixed_precision
    for device, (low, high) in BATCH_BOUNDS.items():
        kwargs = StampClassifierHandler("m", device=device).batch_elements_kwargs()
        assert kwargs == {"min_batch_size": low, "max_batch_size": high}
    assert BATCH_BOUNDS["gpu"][1] > BATCH_BOUNDS["cpu"][1]
