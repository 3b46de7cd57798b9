"""Find and read alert inputs: files, directories, globs, nightly ``.tar.gz`` archives, ``gs://``.

All file access goes through Beam's ``FileSystems`` so the same code reads local disks on a laptop
and Cloud Storage on Dataflow. The functions here are pure generators of ``(source, bytes)`` items
or :class:`ReadError`; the Beam adapter turns errors into ``read`` dead letters.
"""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

if TYPE_CHECKING:
    from transforms.alerts import Alert, AlertDecodeError

#: File names picked up when a *directory* is given (explicit files and globs are read as named).
ALERT_SUFFIXES: tuple[str, ...] = (
    ".avro",  # Avro containers, or wire-format messages saved as they arrived
    ".parquet",  # brokers' Parquet copies (Fink's Rubin layout)
    ".wire",  # wire-format messages (byte 0, int32 schema id, record)
    ".tar.gz",
    ".tgz",
    ".tar",
    ".zip",
)
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar")
#: Largest single file or archive member read into memory [bytes]; alerts are ~70 kB, Fink-style
#: multi-alert files a few MB.
MAX_MEMBER_BYTES = 512 * 1024 * 1024
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class ReadError:
    """A path, pattern or archive member that could not be read.

    Attributes
    ----------
    source
        The path or ``archive!member``.
    reason
        ``"code: detail"`` (codes: ``no_match``, ``unreadable``, ``bad_archive``, ``too_large``).
    raw
        Whatever bytes were read (may be empty).
    """

    source: str
    reason: str
    raw: bytes = b""


def is_glob(pattern: str) -> bool:
    """True when ``pattern`` has glob characters (``*``, ``?``, ``[``)."""
    return any(c in _GLOB_CHARS for c in pattern)


def _is_remote_dir(path: str) -> bool:
    """True for ``gs://b/night`` when it is no object but objects sit below ``gs://b/night/``.

    Object stores have no directories; a name given without its trailing slash is one when it
    names a prefix. Local paths answer False (``os.path.isdir`` decides those).
    """
    if FileSystems.get_scheme(path) in (None, "file"):
        return False
    try:
        if FileSystems.exists(path):
            return False
        below = FileSystems.match([FileSystems.join(path, "**")], limits=[1])[0].metadata_list
    except Exception:  # an unreadable bucket: expand_pattern's own listing reports it
        return False
    return bool(below)


def _walk_local(query: str) -> Iterator[str]:
    """The files ``FileSystems.match([query])`` lists for a local ``DIR/**``, the same strings.

    Beam's local listing stats every file twice (size and time, which nothing here uses); a
    night is ~10^5 files. One ``stat`` each keeps its rule: a file that vanished, or a broken
    link, is not listed.
    """
    root = posixpath.dirname(query[:-2])  # "night/**" -> "night", as Beam's prefix directory
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                os.stat(path)
            except OSError:
                continue
            yield path


def expand_pattern(pattern: str) -> Iterator[str | ReadError]:
    """Expand one input argument into file paths.

    Parameters
    ----------
    pattern
        A file, a directory (searched recursively for :data:`ALERT_SUFFIXES`), or a glob; local or
        any Beam filesystem (``gs://bucket/night/*.avro``).

    Yields
    ------
    str or ReadError
        Paths in sorted order, or one ``no_match`` error when nothing matches.
    """
    is_dir = pattern.endswith("/") or (
        not is_glob(pattern) and (os.path.isdir(pattern) or _is_remote_dir(pattern))
    )
    query = FileSystems.join(pattern.rstrip("/"), "**") if is_dir else pattern
    try:
        if is_dir and "://" not in query and not is_glob(query[:-2]):
            paths = sorted(_walk_local(query))
        else:
            paths = sorted(m.path for m in FileSystems.match([query])[0].metadata_list)
    except Exception as e:  # BeamIOError for unreadable buckets, missing local dirs, bad globs
        yield ReadError(pattern, f"unreadable: cannot list {pattern!r}: {e}")
        return
    if is_dir:
        paths = [p for p in paths if p.lower().endswith(ALERT_SUFFIXES)]
    if not paths:
        yield ReadError(pattern, f"no_match: {pattern!r} matched no alert files")
        return
    yield from paths


#: Read size when a file's length is unknown (object stores' readers) [bytes].
_READ_CHUNK = 1 << 20


def _read_limited(fileobj: BinaryIO, what: str) -> bytes:
    # ``read(MAX_MEMBER_BYTES + 1)`` would make CPython allocate the whole 512 MB buffer for
    # every ~70 kB alert before shrinking it (≈ 30 µs a file, a sixth of a night's first pass):
    # read the size the file has, or in chunks when it cannot tell.
    try:
        size = os.fstat(fileobj.fileno()).st_size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        size = None
    if size is not None and size <= MAX_MEMBER_BYTES:
        data = fileobj.read(size + 1)  # + 1: a file that grew since is still read to its end
        if len(data) <= size:
            return data
        rest = [data]
    else:
        rest = []
    total = sum(map(len, rest))
    while total <= MAX_MEMBER_BYTES:
        chunk = fileobj.read(_READ_CHUNK)
        if not chunk:
            return b"".join(rest)
        rest.append(chunk)
        total += len(chunk)
    raise ValueError(f"too_large: {what} exceeds {MAX_MEMBER_BYTES} B")


def _open(path: str) -> BinaryIO:
    """Open ``path`` for reading as it is (no transparent gunzip), any Beam filesystem.

    Local paths skip ``FileSystems`` (its scheme lookup walks every registered filesystem
    class on each call: a tenth of the cost of reading a ~70 kB alert).
    """
    if "://" not in path:
        return open(path, "rb")  # the caller closes it
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _iter_tar(path: str, fileobj: BinaryIO) -> Iterator[tuple[str, bytes] | ReadError]:
    # Streaming mode ("r|"): members are read in order without seeking, so a multi-GB nightly
    # archive on GCS is never held in memory or downloaded twice. gzip goes through GzipFile
    # rather than tarfile's own stream decoder, which stalls on multi-member gzip files (valid
    # gzip, e.g. archives written in parallel chunks): every read after the first member rescans.
    try:
        if path.lower().endswith((".tar.gz", ".tgz")):
            fileobj = gzip.GzipFile(fileobj=fileobj, mode="rb")
            mode = "r|"
        else:
            mode = "r|*"
        with tarfile.open(fileobj=fileobj, mode=mode) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                source = f"{path}!{member.name}"
                if member.size > MAX_MEMBER_BYTES:
                    yield ReadError(source, f"too_large: member of {member.size} B")
                    continue
                extracted = tar.extractfile(member)
                yield (source, extracted.read() if extracted else b"")
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as e:
        yield ReadError(path, f"bad_archive: {type(e).__name__}: {e}")


def _iter_zip(path: str, data: bytes) -> Iterator[tuple[str, bytes] | ReadError]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                source = f"{path}!{info.filename}"
                if info.file_size > MAX_MEMBER_BYTES:
                    yield ReadError(source, f"too_large: member of {info.file_size} B")
                    continue
                with zf.open(info) as member:
                    yield (source, _read_limited(member, source))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        yield ReadError(path, f"bad_archive: {type(e).__name__}: {e}", data)


def read_path(path: str) -> Iterator[tuple[str, bytes] | ReadError]:
    """Read one file: a single Avro container, or every member of a tar/zip archive.

    Parameters
    ----------
    path
        Local or Beam-filesystem path.

    Yields
    ------
    (source, bytes) or ReadError
        One item per container found; errors for what cannot be read (a truncated archive yields
        its readable members first, then an error).
    """
    lower = path.lower()
    try:
        # UNCOMPRESSED: FileSystems would otherwise gunzip ``.gz`` transparently, and tarfile
        # needs to see the gzip stream itself.
        fileobj = _open(path)
    except Exception as e:
        yield ReadError(path, f"unreadable: {type(e).__name__}: {e}")
        return
    with fileobj:
        if lower.endswith(ARCHIVE_SUFFIXES):
            yield from _iter_tar(path, fileobj)
            return
        try:
            data = _read_limited(fileobj, path)
        except ValueError as e:
            yield ReadError(path, str(e))
            return
        except Exception as e:
            yield ReadError(path, f"unreadable: {type(e).__name__}: {e}")
            return
    if data[:2] == b"PK" and zipfile.is_zipfile(io.BytesIO(data)):
        yield from _iter_zip(path, data)
    else:
        yield (path, data)


def read_containers(path: str, wanted: Iterable[tuple[str, int | None]]) -> dict[tuple, bytes]:
    """Read one file again and return the raw bytes of the wanted alerts, in one pass.

    For dead letters of alerts whose bytes were dropped after selection (see
    :data:`transforms.dead_letters.REREAD_PATH`): all letters of one file are filled by a single
    read, and an archive is streamed only up to its last wanted member.

    Parameters
    ----------
    path
        The file or archive the alerts were read from.
    wanted
        ``(source, candid)`` pairs; ``candid`` cuts the alert's own single-record container out
        of a multi-record file (None: the whole member).

    Returns
    -------
    dict
        ``(source, candid) -> bytes`` for what was found; pairs that cannot be read any more are
        absent (their letters are then written without bytes).
    """
    from transforms.alerts import decode_alerts

    todo: dict[str, set[int | None]] = {}
    for source, candid in wanted:
        todo.setdefault(source, set()).add(candid)
    found: dict[tuple, bytes] = {}
    try:
        for item in read_path(path):
            if isinstance(item, ReadError) or item[0] not in todo:
                continue
            source, data = item
            candids = todo.pop(source)
            alerts = None
            for candid in candids:
                if candid is not None:
                    if alerts is None:
                        alerts = decode_alerts(data, source, path)[0]
                    if len(alerts) > 1:
                        found[(source, candid)] = next(
                            (a.raw for a in alerts if a.candid == candid), data
                        )
                        continue
                found[(source, candid)] = data
            if not todo:
                break  # stop streaming the archive
    except Exception:  # best effort: the letters are still written, without bytes
        pass
    return found


class NoInputError(ValueError):
    """A pattern given by the user matches nothing (or cannot be listed).

    Parameters
    ----------
    pattern
        The pattern as given.
    reason
        The :class:`ReadError` reason (``no_match: ...``).
    """

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(reason)
        self.pattern = pattern
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DecodedItem:
    """One file or archive member, decoded: its alerts, or why it could not be read or decoded.

    Attributes
    ----------
    source
        The path or ``archive!member``.
    path
        The file or archive it lives in.
    alerts
        The alerts decoded from it (those before a broken record, when ``decode_error`` is set).
    read_error, decode_error
        Why it could not be read, or why decoding stopped; None when it went well.
    """

    source: str
    path: str
    alerts: list[Alert] = field(default_factory=list)
    read_error: ReadError | None = None
    decode_error: AlertDecodeError | None = None


def decode_paths(patterns: Iterable[str]) -> Iterator[DecodedItem]:
    """Read and decode every alert file under ``patterns``, outside Beam (the command-line tools).

    Parameters
    ----------
    patterns
        Files, directories, globs or archives, as ``stampflow run --input`` takes them.

    Yields
    ------
    DecodedItem
        One per file or archive member, in input order.

    Raises
    ------
    NoInputError
        When a pattern matches nothing.
    """
    from transforms.alerts import decode_alerts

    for pattern in patterns:
        for path in expand_pattern(str(pattern)):
            if isinstance(path, ReadError):
                raise NoInputError(str(pattern), path.reason)
            for item in read_path(path):
                if isinstance(item, ReadError):
                    yield DecodedItem(item.source, path, read_error=item)
                    continue
                alerts, error = decode_alerts(item[1], item[0], path)
                yield DecodedItem(item[0], path, alerts, decode_error=error)
