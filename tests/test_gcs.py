"""The Google Cloud Storage path against an emulator on 127.0.0.1 (``gcp-storage-emulator``).

``stampflow run`` reads a night's archive and single-alert objects from ``gs://``, serves a model
stored on ``gs://`` and writes every output (rows, dead letters, summary) there: the rows equal a
run of the same night from local disk. ``train``, ``evaluate`` and ``import-alerce`` write to and
read from ``gs://``; a typo'd bucket or path is one line and exit status 2 before any work; the
``--model-watch`` glob on ``gs://`` swaps versions. Skipped, with the reason, when the emulator
package is not installed or cannot start.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from model.handler import METADATA_FILE
from model.remote import local_copy, upload_dir
from pipeline.cli import main
from pipeline.run_job import run
from tests.helpers import (
    ALERCE,
    GCS_BUCKET,
    export_random_model,
    needs_alerce,
)
from transforms.schema import FEATURES_PRODUCTION

NIGHT = "20180815"


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A night's archive (``ztf_public_YYYYMMDD.tar.gz``) and, beside it, single-alert files."""
    from simulator import simulate

    out = tmp_path_factory.mktemp("gcs_night")
    simulate(80, out / "archive", seed=41, night=NIGHT, fmt="tar", detections_per_object=2,
             defects=0.2, workers=1)  # fmt: skip
    simulate(20, out / "singles", seed=42, night="20180816", workers=1)
    return out


@pytest.fixture(scope="module")
def model_dir(night, tmp_path_factory):
    return export_random_model(night / "archive", tmp_path_factory.mktemp("gcs_model"), "1.0.0")


@pytest.fixture(scope="module")
def uploaded(gcs, night, model_dir):
    """The night and the model on the emulator: ``gs://night/in/...``, ``gs://night/models/v1``."""
    upload_dir(str(night), f"gs://{GCS_BUCKET}/in")
    upload_dir(str(model_dir), f"gs://{GCS_BUCKET}/models/v1", last=(METADATA_FILE,))
    return f"gs://{GCS_BUCKET}"


def _outputs(out: str) -> dict:
    """Rows, dead letters and summary of a run's output directory (local or ``gs://``)."""
    local = Path(local_copy(out))
    rows = sorted(pq.read_table(local / "probabilities").to_pylist(), key=lambda r: r["candid"])
    dead = []
    for path in sorted((local / "dead_letters").glob("*.jsonl")):
        dead += [json.loads(line) for line in path.read_text().splitlines()]
    summary = json.loads((local / "summary.json").read_text())
    return {"rows": rows, "dead": dead, "summary": summary, "files": local}


@pytest.fixture(scope="module")
def local_run(night, model_dir, tmp_path_factory):
    """The same night run from local disk: the reference for the gs:// runs."""
    out = tmp_path_factory.mktemp("gcs_local_run")
    run(["--input", str(night / "archive" / f"ztf_public_{NIGHT}.tar.gz"),
         str(night / "singles" / "*.avro"), "--output", str(out), "--model", str(model_dir),
         "--quiet-progress"])  # fmt: skip
    return out


def test_run_from_gcs_equals_run_from_disk(uploaded, local_run):
    archive = f"ztf_public_{NIGHT}.tar.gz"
    local_out = local_run
    gs_out = f"{uploaded}/out/{NIGHT}"
    summary = run(["--input", f"{uploaded}/in/archive/{archive}", f"{uploaded}/in/singles/*.avro",
                   "--output", gs_out, "--model", f"{uploaded}/models/v1",
                   "--quiet-progress"])  # fmt: skip
    assert summary["reconciled"]
    local, remote = _outputs(str(local_out)), _outputs(gs_out)
    assert remote["summary"]["records_in"] == 100
    assert len(remote["rows"]) == remote["summary"]["classified"] > 0
    # The same rows: same candids, classes, probabilities (bit for bit), model name and version.
    assert remote["rows"] == local["rows"]
    # The same dead letters, apart from where their input was read from.
    assert remote["dead"], "the night has defects: some alerts must be dead letters"

    def strip(letters):
        return sorted((d["stage"], d["reason"], d["source"].rsplit("/", 1)[-1]) for d in letters)

    assert strip(remote["dead"]) == strip(local["dead"])
    assert all(d["source"].startswith("gs://") for d in remote["dead"])
    for key in ("records_in", "classified", "skipped", "dead_letters"):
        assert remote["summary"][key] == local["summary"][key], key
    assert {p.name for p in remote["files"].iterdir()} == {p.name for p in local_out.iterdir()}


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--input", "gs://night/no-such-dir/*.avro", "--input"),
        ("--model", "gs://night/models/no-such-version", "is not an exported stampflow model"),
        ("--output", "gs://no-such-bucket/out", "--output gs://no-such-bucket/out: not writable"),
    ],
)
def test_a_typo_in_a_gs_path_is_one_line_and_exit_2(uploaded, flag, value, message, capsys):
    argv = {
        "--input": f"{uploaded}/in/archive/ztf_public_{NIGHT}.tar.gz",
        "--model": f"{uploaded}/models/v1",
        "--output": f"{uploaded}/out/typo",
    }
    argv[flag] = value
    t0 = time.monotonic()
    code = main(["run", *(x for kv in argv.items() for x in kv), "--quiet-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0], err
    assert time.monotonic() - t0 < 30  # refused before work, not after a retry storm


def test_train_and_evaluate_to_and_from_gcs(uploaded, night, tmp_path, capsys):
    # --alerts and --labels from gs://, --out to gs://; then evaluate the gs:// model into gs://.
    model = f"{uploaded}/models/trained"
    code = main(["train", "--alerts", f"{uploaded}/in/archive/ztf_public_{NIGHT}.tar.gz",
                 "--labels", f"{uploaded}/in/archive/labels.csv", "--out", model,
                 "--kernel", "3", "--val-per-class", "2", "--test-per-class", "2",
                 "--max-steps", "4", "--val-every", "2",
                 "--name", "gcs", "--version", "7"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    local = Path(local_copy(model))
    meta = json.loads((local / METADATA_FILE).read_text())
    assert (meta["name"], meta["version"]) == ("gcs", "7")
    assert meta["features"] == list(FEATURES_PRODUCTION)
    assert (local / "saved_model.pb").is_file() and (local / "evaluation" / "report.json").is_file()

    report = f"{uploaded}/reports/trained"
    code = main(["evaluate", "--model", model, "--alerts", f"{uploaded}/in/archive",
                 "--labels", f"{uploaded}/in/archive/labels.csv", "--out", report])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    on_gcs = json.loads(Path(local_copy(report), "report.json").read_text())
    assert 0.0 <= on_gcs["accuracy"] <= 1.0
    # The model's metadata file is uploaded last, so a --model-watch glob never sees a
    # half-uploaded version.
    code = main(["evaluate", "--model", model, "--alerts", f"{uploaded}/in/archive",
                 "--labels", f"{uploaded}/in/archive/labels.csv",
                 "--out", "gs://no-such-bucket/r"])  # fmt: skip
    assert code == 2 and "--out gs://no-such-bucket/r: not writable" in capsys.readouterr().err


@needs_alerce
def test_import_alerce_to_gcs(uploaded, night, capsys):
    out = f"{uploaded}/models/alerce"
    code = main(["import-alerce", str(ALERCE / "best_model_so_far"), "--out", out])
    assert code == 0, capsys.readouterr().err
    meta = json.loads(Path(local_copy(out), METADATA_FILE).read_text())
    assert meta["name"] == "alerce-best_model_so_far"
    code = main(["import-alerce", str(ALERCE / "best_model_so_far"), "--out", "gs://nope/m"])
    assert code == 2 and "not writable" in capsys.readouterr().err


def test_upload_puts_metadata_last_and_local_copy_follows_new_uploads(gcs, model_dir, tmp_path):
    from apache_beam.io.filesystems import FileSystems

    target = f"gs://{GCS_BUCKET}/order/v1"
    upload_dir(str(model_dir), target, last=(METADATA_FILE,))
    listing = FileSystems.match([f"{target}/**"])[0].metadata_list
    newest = max(listing, key=lambda m: (m.last_updated_in_seconds, m.path.endswith(METADATA_FILE)))
    assert newest.path.endswith(METADATA_FILE)
    first = local_copy(target)
    assert local_copy(target) == first  # copied once per process
    with FileSystems.create(f"{target}/extra.txt") as f:
        f.write(b"new file")
    second = local_copy(target)
    assert second != first and Path(second, "extra.txt").read_bytes() == b"new file"


def test_watched_model_on_gcs_swaps_versions(uploaded, model_dir, night):
    from model.handler import PollingHandler, WatchedModel
    from tests.helpers import decoded_alerts
    from transforms.featurize import featurize_alerts

    pattern = f"{uploaded}/watch/*/{METADATA_FILE}"
    watched = WatchedModel(pattern, f"{uploaded}/models/v1", interval_s=0.0)
    assert watched.current()[1] == f"{uploaded}/models/v1"  # nothing matches yet
    upload_dir(str(model_dir), f"{uploaded}/watch/v2", last=(METADATA_FILE,))
    assert watched.current()[1] == f"{uploaded}/watch/v2"
    # A version whose upload has not reached its metadata file is not seen at all.
    upload_dir(str(model_dir / "variables"), f"{uploaded}/watch/v3/variables")
    assert watched.current()[1] == f"{uploaded}/watch/v2"
    handler = PollingHandler(f"{uploaded}/models/v1", pattern, 0.0)
    example = featurize_alerts(
        decoded_alerts(night / "archive")[:1], FEATURES_PRODUCTION, "pad"
    ).examples[0][1]
    loaded = handler.load_model()
    assert [r.model_id for r in handler.run_inference([example], loaded)] == [
        f"{uploaded}/watch/v2"
    ]


def test_model_watch_on_gcs_swaps_versions_in_a_streaming_run(
    uploaded, night, model_dir, local_run, tmp_path, monkeypatch
):
    """``--model-watch 'gs://.../*/stampflow_model.json'`` (poll mode) on the Pub/Sub emulator:
    rows before a new version is uploaded name v1, rows after it name v2, none are lost."""
    from bench.emulators import PubSubEmulator, pubsub_missing_requirements
    from bench.streaming import Collector, create_topics
    from pipeline.options import parse
    from pipeline.publish import publish
    from pipeline.run_job import start_streaming
    from tests.helpers import decoded_alerts

    reason = pubsub_missing_requirements()
    if reason:
        pytest.skip(reason)
    rows_local = _outputs(str(local_run))["rows"]
    singles = {a.candid for a in decoded_alerts(night / "singles")}
    first = [r for r in rows_local if r["candid"] in singles]
    then = [r for r in rows_local if r["candid"] not in singles]
    assert first and then
    interval_s = 1.0
    with PubSubEmulator.start(tmp_path / "pubsub.log") as pubsub:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
        from google.cloud import pubsub_v1

        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        topics = create_topics(publisher, subscriber, ("gcs_alerts", "gcs_rows"))
        opts = parse([
            "--streaming", "--input-subscription", topics["gcs_alerts"][1],
            "--output-topic", topics["gcs_rows"][0], "--model", f"{uploaded}/models/v1",
            "--model-watch", f"{uploaded}/live/*/{METADATA_FILE}",
            "--model-watch-interval", str(interval_s), "--hold-seconds", "2", "--quiet-progress",
        ])  # fmt: skip
        assert opts.watch.mode == "poll"
        rows = Collector(subscriber, topics["gcs_rows"][1])
        result = start_streaming(opts)
        try:
            publish(topics["gcs_alerts"][0], [str(night / "singles")], publisher=publisher)
            assert rows.wait_for(len(first), 120), f"{len(rows.messages)} of {len(first)} rows"
            v2 = tmp_path / "v2"
            shutil.copytree(model_dir, v2)
            meta = json.loads((v2 / METADATA_FILE).read_text())
            (v2 / METADATA_FILE).write_text(json.dumps({**meta, "version": "2.0.0"}))
            upload_dir(str(v2), f"{uploaded}/live/v2", last=(METADATA_FILE,))
            # The handler looks at the glob at most every interval: once one has passed since
            # the last batch, the next batch is computed by the newest version.
            time.sleep(interval_s + 0.5)
            publish(topics["gcs_alerts"][0], [str(night / "archive")], publisher=publisher)
            assert rows.wait_for(len(first) + len(then), 120), len(rows.messages)
        finally:
            result.cancel()
            rows.stop()
    got = {r["candid"]: r for _, r in rows.messages}
    assert len(got) == len(rows.messages) == len(first) + len(then)
    assert {got[r["candid"]]["model_version"] for r in first} == {"1.0.0"}
    assert {got[r["candid"]]["model_version"] for r in then} == {"2.0.0"}
