"""Directories on any Beam filesystem as local directories: copied down, or written and uploaded.

Everything in the project reads and writes files through Beam's ``FileSystems`` (``gs://`` on
Dataflow, the local disk on a laptop), except TensorFlow, which reads and writes SavedModels
through its own filesystem layer. Its GCS client is a second code path to authenticate on a
worker, and it ignores ``STORAGE_EMULATOR_HOST``, so a test against an emulator cannot reach it.
So a remote SavedModel is copied down through ``FileSystems`` before ``tf.saved_model.load``
(:func:`local_copy`, once per process and version), and a model or report meant for a remote
directory is written to a local one and uploaded, metadata last (:func:`local_output`). Local
paths pass through untouched: one code path, a copy only where the path is remote.

:func:`use_emulator_credentials` makes Beam connect anonymously when ``STORAGE_EMULATOR_HOST``
is set (an emulator needs no credentials; without it Beam spends ~30 s retrying to find some).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.writable import check_output

__all__ = [
    "check_remote_output",
    "is_remote",
    "local_copy",
    "local_output",
    "upload_dir",
    "use_emulator_credentials",
]

#: Bytes per read when copying a file between filesystems.
_CHUNK = 1 << 20
#: ``(remote dir, its listing) -> local copy``: a version is downloaded once per process; a
#: directory whose files changed (same name, new upload) is downloaded again.
_COPIES: dict[tuple[str, tuple[tuple[str, int, float], ...]], str] = {}
_LOCK = threading.Lock()


def is_remote(path: str) -> bool:
    """True when ``path`` names a non-local Beam filesystem (``gs://``, ``s3://``...)."""
    return FileSystems.get_scheme(path) not in (None, "file")


def check_remote_output(directory: str, flag: str) -> None:
    """Refuse an unwritable remote output directory now, before hours of work are lost.

    Raises
    ------
    pipeline.errors.OptionsError
        With one line naming ``flag`` (printed by the command line, exit status 2). Local
        directories are left to the job, which creates them.
    """
    if is_remote(directory):
        check_output(directory, flag)


def _copy_file(source: str, destination: str) -> None:
    # UNCOMPRESSED: FileSystems would otherwise gunzip a ``.gz`` file on the way.
    with (
        FileSystems.open(source, compression_type=CompressionTypes.UNCOMPRESSED) as src,
        FileSystems.create(destination, compression_type=CompressionTypes.UNCOMPRESSED) as dst,
    ):
        shutil.copyfileobj(src, dst, _CHUNK)


def _remove_copies() -> None:
    for path in _COPIES.values():
        shutil.rmtree(path, ignore_errors=True)


def local_copy(directory: str) -> str:
    """A local directory holding the files of ``directory`` (itself when it is local).

    Parameters
    ----------
    directory
        A directory on any Beam filesystem, e.g. ``gs://B/models/v1``.

    Returns
    -------
    str
        ``directory`` unchanged when local; else a temporary directory with a copy of every file
        under it, made once per process for each version of its listing (names, sizes,
        modification times) and removed at exit.

    Raises
    ------
    FileNotFoundError
        When no file is under a remote ``directory``.
    """
    if not is_remote(directory):
        return directory
    base = directory.rstrip("/") + "/"
    found = FileSystems.match([base + "**"])[0].metadata_list
    files = sorted(
        (m.path, m.size_in_bytes, m.last_updated_in_seconds)
        for m in found
        if not m.path.endswith("/")  # a "folder" placeholder object
    )
    if not files:
        raise FileNotFoundError(f"{directory}: no files there")
    key = (base, tuple(files))
    with _LOCK:  # threads of one worker share the copy instead of racing to make several
        cached = _COPIES.get(key)
        if cached is not None and os.path.isdir(cached):
            return cached
        target = tempfile.mkdtemp(prefix="stampflow-copy-")
        for path, _, _ in files:
            local = Path(target, path[len(base) :])
            local.parent.mkdir(parents=True, exist_ok=True)
            _copy_file(path, str(local))
        if not _COPIES:
            atexit.register(_remove_copies)
        _COPIES[key] = target
    logging.getLogger(__name__).info("copied %s to %s (%d files)", directory, target, len(files))
    return target


def upload_dir(local: str, remote: str, last: Sequence[str] = ()) -> int:
    """Copy every file under ``local`` to ``remote`` (any Beam filesystem), keeping the layout.

    Parameters
    ----------
    local
        Local directory.
    remote
        Destination directory.
    last
        File names copied after all others (a model's metadata file: a watcher that sees it
        finds the version complete).

    Returns
    -------
    int
        Files copied.
    """
    root = Path(local)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name in last)  # stable: the order within each group is kept
    for path in files:
        _copy_file(str(path), FileSystems.join(remote, *path.relative_to(root).parts))
    return len(files)


@contextlib.contextmanager
def local_output(directory: str, last: Sequence[str] = ()) -> Iterator[str]:
    """A local directory to write ``directory``'s files into, uploaded when the block ends.

    Parameters
    ----------
    directory
        The real destination (any Beam filesystem).
    last
        As for :func:`upload_dir`.

    Yields
    ------
    str
        ``directory`` itself when it is local; else a fresh local path (not yet created) whose
        files are uploaded to ``directory`` when the block exits without an error.
    """
    if not is_remote(directory):
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="stampflow-out-") as tmp:
        staged = os.path.join(tmp, "out")
        yield staged
        if os.path.isdir(staged):
            upload_dir(staged, directory, last)


def use_emulator_credentials() -> bool:
    """Make Beam's Google Cloud clients connect anonymously when a GCS emulator is in use.

    Returns
    -------
    bool
        True when ``STORAGE_EMULATOR_HOST`` is set (and Beam's credentials were set to none).

    Notes
    -----
    Beam looks for application-default credentials once per process, retrying with backoff for
    ~30 s when there are none, then connects anonymously anyway. An emulator needs none, so
    with ``STORAGE_EMULATOR_HOST`` set that cache is filled with "none" at once. This reaches
    into Beam's (private) credentials cache; if it moves, Beam merely takes its 30 s again.
    """
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        return False
    with contextlib.suppress(ImportError, AttributeError):
        from apache_beam.internal.gcp import auth

        with auth._Credentials._credentials_lock:
            auth._Credentials._credentials = None
            auth._Credentials._credentials_init = True
    return True
