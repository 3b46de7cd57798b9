"""Input discovery and reading: files, directories, globs, tar and zip archives, errors."""

from __future__ import annotations

import io
import tarfile
import zipfile

from tests.helpers import mini_container, mini_record
from transforms.sources import ReadError, expand_pattern, read_path


def _write_night(tmp_path):
    night = tmp_path / "night"
    (night / "sub").mkdir(parents=True)
    for i in range(3):
        (night / f"{i}.avro").write_bytes(mini_container([mini_record(i)]))
    (night / "sub" / "3.avro").write_bytes(mini_container([mini_record(3)]))
    (night / "README.md").write_text("not an alert")
    return night


def test_directory_is_recursive_and_filtered(tmp_path):
    night = _write_night(tmp_path)
    paths = list(expand_pattern(str(night)))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["0.avro", "1.avro", "2.avro", "3.avro"]
    assert list(expand_pattern(str(night) + "/")) == paths


def test_glob_and_single_file(tmp_path):
    night = _write_night(tmp_path)
    assert len(list(expand_pattern(str(night / "*.avro")))) == 3
    assert list(expand_pattern(str(night / "0.avro"))) == [str(night / "0.avro")]
    # An explicit non-alert file is read as named (and will dead-letter at decode).
    assert list(expand_pattern(str(night / "README.md"))) == [str(night / "README.md")]


def test_no_match_is_an_error_not_silence(tmp_path):
    for pattern in (str(tmp_path / "missing.avro"), str(tmp_path / "*.avro"), str(tmp_path)):
        (item,) = expand_pattern(pattern)
        assert isinstance(item, ReadError) and item.reason.startswith("no_match")


def _tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_gz_members_are_streamed(tmp_path):
    members = {f"{i}.avro": mini_container([mini_record(i)]) for i in range(4)}
    path = tmp_path / "ztf_public_20990101.tar.gz"
    path.write_bytes(_tar_bytes(members))
    got = list(read_path(str(path)))
    assert [s for s, _ in got] == [f"{path}!{i}.avro" for i in range(4)]
    assert [d for _, d in got] == list(members.values())


def test_multi_member_gzip_archive_streams(tmp_path):
    # Valid gzip made of one member per chunk (as archives written in parallel are).
    import gzip

    members = {f"{i}.avro": mini_container([mini_record(i)]) for i in range(6)}
    tar = _tar_bytes(members, mode="w")
    chunks = [tar[i : i + 5000] for i in range(0, len(tar), 5000)]
    path = tmp_path / "ztf_public_20990102.tar.gz"
    path.write_bytes(b"".join(gzip.compress(c, mtime=0) for c in chunks))
    got = list(read_path(str(path)))
    assert [d for _, d in got] == list(members.values())


def test_truncated_tar_yields_members_then_error(tmp_path):
    members = {f"{i}.avro": mini_container([mini_record(i)]) for i in range(4)}
    data = _tar_bytes(members, mode="w")  # uncompressed, so truncation lands mid-member
    path = tmp_path / "broken.tar"
    path.write_bytes(data[: len(data) // 2])
    got = list(read_path(str(path)))
    assert isinstance(got[-1], ReadError) and got[-1].reason.startswith("bad_archive")
    assert 1 <= len(got) - 1 < 4


def test_zip_members(tmp_path):
    buf = io.BytesIO()
    member = mini_container([mini_record(1)])
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.avro", member)
    path = tmp_path / "a.avro.zip"
    path.write_bytes(buf.getvalue())
    ((source, data),) = read_path(str(path))
    assert source.endswith("a.avro.zip!a.avro") and data == member


def test_unreadable_path(tmp_path):
    (item,) = read_path(str(tmp_path / "nope.avro"))
    assert isinstance(item, ReadError) and item.reason.startswith("unreadable")


def test_reads_files_of_any_size_exactly(tmp_path, monkeypatch):
    """Files are read by their size (never a 512 MB buffer), or in chunks when it is unknown."""
    from transforms import sources

    blob = bytes(range(256)) * 4099  # not a multiple of the chunk
    path = tmp_path / "a.avro"
    path.write_bytes(blob)
    assert list(read_path(str(path))) == [(str(path), blob)]
    monkeypatch.setattr(sources, "_READ_CHUNK", 1000)
    unsized = io.BytesIO(blob)  # no fileno(): an object store's reader
    assert sources._read_limited(unsized, "x") == blob
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", len(blob) - 1)
    for fileobj in (io.BytesIO(blob), open(path, "rb")):  # noqa: SIM115
        with fileobj:
            try:
                sources._read_limited(fileobj, "x")
            except ValueError as e:
                assert str(e).startswith("too_large: x exceeds")
            else:
                raise AssertionError("a file over the limit was read")


def test_local_directory_listing_equals_beams(tmp_path, monkeypatch):
    """Directories are walked directly, listing exactly the strings Beam's match lists."""
    import os

    from apache_beam.io.filesystems import FileSystems

    night = _write_night(tmp_path)
    (night / "sub" / "deeper").mkdir()
    (night / "sub" / "deeper" / "x.tar.gz").write_bytes(b"")
    os.symlink(tmp_path / "gone.avro", night / "broken.avro")  # Beam skips it: so do we
    os.symlink(night / "0.avro", night / "sub" / "link.avro")
    monkeypatch.chdir(tmp_path)
    for pattern in ("night", "night/", "./night", str(night), str(night) + "/", "night/sub"):
        query = FileSystems.join(pattern.rstrip("/"), "**")
        beams = sorted(m.path for m in FileSystems.match([query])[0].metadata_list)
        wanted = [p for p in beams if p.endswith((".avro", ".tar.gz"))]
        assert list(expand_pattern(pattern)) == wanted, pattern
        assert len(wanted) >= 3 and not any("broken" in p for p in wanted)
