"""Start and stop the Google Cloud CLI's Pub/Sub emulator for tests and benchmarks (SPEC §10).

The emulator runs in its own process group on 127.0.0.1 and a free port, and is stopped by
signalling that group. :func:`missing_requirements` tells a test why it must skip.

    with PubSubEmulator.start() as emulator:   # sets nothing globally; use emulator.env
        ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

#: Seconds to wait for the emulator to answer (it takes ~3 s).
STARTUP_TIMEOUT_S: float = 60.0


class EmulatorUnavailableError(RuntimeError):
    """The emulator could not be started."""


def missing_requirements() -> str | None:
    """Why the emulator cannot run here, or None."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return "gcloud (Google Cloud CLI) not on PATH: Pub/Sub emulator tests skipped"
    sdk = Path(os.path.realpath(gcloud)).parents[1]  # .../google-cloud-sdk/bin/gcloud
    if not (sdk / "platform" / "pubsub-emulator").is_dir():
        return "the gcloud Pub/Sub emulator component is not installed: tests skipped"
    if shutil.which("java") is None:
        return "java not found (the Pub/Sub emulator needs it): tests skipped"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PubSubEmulator:
    """A running emulator: ``host`` is ``127.0.0.1:PORT`` for ``PUBSUB_EMULATOR_HOST``."""

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
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmulatorUnavailableError(f"emulator exited with {process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return emulator
            time.sleep(0.3)
        emulator.stop()
        raise EmulatorUnavailableError(f"emulator not ready after {STARTUP_TIMEOUT_S} s")

    def stop(self) -> None:
        """Stop the emulator's process group (SIGTERM, then SIGKILL)."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
