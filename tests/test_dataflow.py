"""The Dataflow path without Google Cloud: the job request built and staged offline, the package
the workers install, and the Flex Template's parameters against the command line's own flags.

The job request: ``stampflow run --runner DataflowRunner --dry_run True`` with the README's GPU
worker options, staging to a GCS emulator (``pipeline.dataflow``). The staged sdist
(``workflow.tar.gz``) is installed with pip into a scratch directory and imported from there, as a
worker does. Nothing is submitted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from model.remote import local_copy, upload_dir
from pipeline.options import DEFAULT_MODEL, add_arguments
from pipeline.run_job import run
from tests.helpers import GCS_BUCKET, ROOT

#: The stages the job graph must name (``pipeline.run_job.build``).
STAGES = (
    "ReadAlerts", "SelectFirstDetections", "Featurize", "Classify", "ApplyRules", "SkyDensity",
    "DeadLetters", "WriteOutputs", "WriteDeadLetters", "CountOutcomes",
)  # fmt: skip
#: The GPU worker options of docs/dataflow.md, as a user pastes them.
GPU_OPTIONS = (
    "--dataflow_service_options",
    "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver",
    "--machine_type", "n1-standard-4",
    "--experiments", "use_runner_v2",
    "--experiments", "no_use_multiple_sdk_containers",
)  # fmt: skip
TEMPLATE = ROOT / "deploy" / "flex_template"


@pytest.fixture(scope="module")
def staged_request(gcs, tmp_path_factory):
    """The dry run's report, with a night and the shipped model on the emulator."""
    from simulator import simulate

    night = tmp_path_factory.mktemp("df_night")
    simulate(6, night, seed=5, night="20240611", fmt="tar", workers=1)
    bucket = f"gs://{GCS_BUCKET}"
    upload_dir(str(night), f"{bucket}/ztf")
    upload_dir(DEFAULT_MODEL, f"{bucket}/models/stampflow-sim", last=("stampflow_model.json",))
    return run([
        "--input", f"{bucket}/ztf/ztf_public_20240611.tar.gz", "--output", f"{bucket}/out/20240611",
        "--model", f"{bucket}/models/stampflow-sim",
        "--runner", "DataflowRunner", "--project", "stampflow-test", "--region", "us-central1",
        "--temp_location", f"{bucket}/tmp", "--setup_file", str(ROOT / "setup.py"),
        *GPU_OPTIONS, "--dry_run", "True", "--quiet-progress",
    ])  # fmt: skip


def test_job_request_names_our_stages_and_takes_the_gpu_options(staged_request):
    assert set(STAGES) <= set(staged_request["transforms"]), staged_request["transforms"]
    job = json.loads(
        Path(local_copy(f"gs://{GCS_BUCKET}/out/20240611"), "dataflow_job.json").read_text()
    )
    env = job["environment"]
    assert env["serviceOptions"] == [GPU_OPTIONS[1]]
    assert env["workerPools"][0]["machineType"] == "n1-standard-4"
    assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(env["experiments"])
    image = env["workerPools"][0]["workerHarnessContainerImage"]
    from apache_beam.version import __version__ as beam_version

    assert image.endswith(f"beam_python3.11_sdk:{beam_version}"), image
    options = env["sdkPipelineOptions"]["options"]
    assert options["setup_file"].endswith("setup.py") and options["project"] == "stampflow-test"
    names = {Path(p).name for p in staged_request["staged"]}
    assert {"workflow.tar.gz", "pipeline.pb"} <= names, names


def test_beam_refusing_the_dataflow_options_is_one_line_and_exit_2(staged_request, capsys):
    from pipeline.cli import main

    bucket = f"gs://{GCS_BUCKET}"
    code = main([
        "run", "--input", f"{bucket}/ztf/ztf_public_20240611.tar.gz", "--output", f"{bucket}/o",
        "--model", f"{bucket}/models/stampflow-sim", "--runner", "DataflowRunner",
        "--project", "My Project", "--region", "us-central1", "--temp_location", f"{bucket}/tmp",
        "--dry_run", "True",
    ])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Invalid Project ID (My Project)" in err[0], err


def test_staged_package_installs_and_imports_like_on_a_worker(staged_request, tmp_path):
    sdist = next(p for p in staged_request["staged"] if p.endswith("/workflow.tar.gz"))
    local = Path(local_copy(sdist.rsplit("/", 1)[0]), "workflow.tar.gz")
    target = tmp_path / "site"
    # What the worker does with --setup_file (its dependencies are in the SDK image + pins).
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(local)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    probe = (
        "import json, pipeline.run_job, model.handler, model.remote, transforms.schema, "
        "simulator.core, bench.emulators; from importlib import resources; "
        "print(json.dumps([pipeline.run_job.__file__, "
        "sorted(p.name for p in resources.files('simulator').joinpath('schema').iterdir())]))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
        check=True, timeout=120,
    )  # fmt: skip
    where, schemas = json.loads(out.stdout.strip().splitlines()[-1])
    assert where.startswith(str(target)), where  # imported from the installed package
    assert schemas == sorted(p.name for p in (ROOT / "simulator" / "schema").glob("*.avsc"))


def test_sdist_holds_every_package_and_the_simulator_schema(tmp_path):
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (sdist,) = tmp_path.glob("stampflow-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tracked = subprocess.run(
        ["git", "ls-files", "pipeline", "transforms", "model", "simulator", "bench"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    missing = [f for f in tracked if f not in names]
    assert not missing, f"the sdist (what Dataflow workers install) lacks {missing}"
    assert {"setup.py", "README.md"} <= names  # setup.py reads README.md on the worker


# --- Flex Template --------------------------------------------------------------------------------
def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def _flags() -> dict[str, argparse.Action]:
    """``stampflow run``'s flags by template parameter name (``--top-sn`` → ``top_sn``)."""
    return {
        a.option_strings[0][2:].replace("-", "_"): a
        for a in _run_parser()._actions
        if a.option_strings and a.option_strings[0] != "-h"
    }


def test_flex_template_metadata_matches_the_command_line():
    from pipeline.flex_template import NOT_TEMPLATE_PARAMETERS

    meta = json.loads((TEMPLATE / "metadata.json").read_text())
    params = {p["name"]: p for p in meta["parameters"]}
    flags = _flags()
    left_out = {n.replace("-", "_") for n in NOT_TEMPLATE_PARAMETERS}
    assert left_out <= set(flags), "NOT_TEMPLATE_PARAMETERS names a flag that is gone"
    # Every flag is a parameter (or left out, with the reason) and every parameter a flag.
    assert set(params) == set(flags) - left_out, set(params) ^ (set(flags) - left_out)
    for name, p in params.items():
        action = flags[name]
        assert p["label"] and p["helpText"] and p["paramType"], name
        assert p["isOptional"] is not action.required, name
        if action.choices:  # exactly the parser's choices, as options and as the regex
            assert [o["value"] for o in p["enumOptions"]] == list(action.choices), name
            assert p["regexes"] == ["^(" + "|".join(action.choices) + ")$"], name
        elif action.nargs == 0:  # a switch
            assert (p["paramType"], p["regexes"]) == ("BOOLEAN", ["^(true|false)$"]), name
        elif action.type not in (None, str):  # typed numbers
            assert p["paramType"] == "NUMBER", name
    assert meta["name"] and meta["description"]


def test_flex_template_parameters_parse_as_the_launcher_passes_them():
    import datetime as dt

    from pipeline.flex_template import last_night, template_argv

    # 2024-06-12 09:00 UT: the night of 06-12 is not over at Palomar; last night is 06-11.
    now = dt.datetime(2024, 6, 12, 9, 0, tzinfo=dt.UTC)
    assert last_night(now) == "20240611"
    assert last_night(now + dt.timedelta(hours=8)) == "20240612"
    launcher = [
        f"--input={DEFAULT_MODEL}/../../tests/{{last_night}}.avro", "--top_sn=7",
        "--rules=none", "--jit_compile=false", "--quiet_progress=true",
        "--runner=DataflowRunner", "--project=p", "--temp_location=gs://b/tmp",
    ]  # fmt: skip
    argv = template_argv(launcher, now)
    args, beam_args = _run_parser().parse_known_args(argv)
    assert args.input == [f"{DEFAULT_MODEL}/../../tests/20240611.avro"]
    assert (args.top_sn, args.rules, args.jit_compile, args.quiet_progress) == (
        7,
        "none",
        False,
        True,
    )
    assert args.runner == "DataflowRunner"
    assert beam_args == ["--project=p", "--temp_location=gs://b/tmp"]


def test_scheduler_body_uses_only_template_parameters_and_beam_options():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.flex_template import template_argv

    body = json.loads((TEMPLATE / "scheduler_body.json").read_text())
    given = body["launchParameter"]["parameters"]
    declared = {
        p["name"] for p in json.loads((TEMPLATE / "metadata.json").read_text())["parameters"]
    }
    beam = {k for k in given if k not in declared}
    assert beam == {"sdk_container_image"}  # Beam's own option: the workers' image
    options = PipelineOptions([f"--{k}={given[k]}" for k in beam]).get_all_options()
    assert options["sdk_container_image"] == given["sdk_container_image"]
    argv = template_argv([f"--{k}={v}" for k, v in given.items() if k in declared])
    args, extra = _run_parser().parse_known_args(argv)
    assert not extra and args.input[0].startswith("gs://BUCKET/ztf/ztf_public_2")
    assert "{last_night}" not in args.output and args.quiet_progress


def test_flex_template_image_is_our_beam_version():
    from apache_beam.version import __version__ as beam_version

    dockerfile = Path(__file__).parent.parent / "deploy" / "flex_template" / "Dockerfile"
    froms = [ln for ln in dockerfile.read_text().splitlines() if ln.startswith("FROM ")]
    assert f"FROM apache/beam_python3.11_sdk:{beam_version}" in froms, froms
