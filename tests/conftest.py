"""Shared pytest fixtures. Plain helpers and constants (data locations, skip markers, synthetic
ZTF-shaped containers, references) are in :mod:`tests.helpers`; import them from there."""

from __future__ import annotations

import pytest

from tests.helpers import GCS_BUCKET, REAL, real_containers


@pytest.fixture(scope="session")
def real() -> list[tuple[str, bytes]]:
    if not REAL.is_dir():
        pytest.skip(f"real ZTF alerts not found at {REAL} (set STAMPFLOW_DATA)")
    return real_containers()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A GCS emulator on 127.0.0.1 with bucket :data:`GCS_BUCKET`, for one test module.

    ``STORAGE_EMULATOR_HOST`` points at it while the module runs (Beam's ``gs://`` filesystem
    builds a client per call and reads it each time); skipped with the reason when the emulator
    package is missing or the server does not start.
    """
    from bench.emulators import EmulatorUnavailableError, GcsEmulator
    from model.remote import use_emulator_credentials

    try:
        emulator = GcsEmulator.start(tmp_path_factory.mktemp("gcs") / "emulator.log")
    except EmulatorUnavailableError as e:
        pytest.skip(f"GCS emulator cannot start: {e}")
    with emulator, pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", emulator.url)
        use_emulator_credentials()
        emulator.create_bucket(GCS_BUCKET)
        yield emulator


@pytest.fixture(scope="module")
def pubsub(tmp_path_factory):
    """A Pub/Sub emulator on 127.0.0.1 for one test module (skipped, saying why, without gcloud
    or its emulator)."""
    from bench.emulators import PubSubEmulator, pubsub_missing_requirements

    reason = pubsub_missing_requirements()
    if reason:
        pytest.skip(reason)
    with PubSubEmulator.start(tmp_path_factory.mktemp("pubsub") / "emulator.log") as em:
        yield em
