"""The ``stampflow`` command line: help, subcommands, and the decode job end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline import cli
from pipeline.decode_job import run
from tests.helpers import BAD, REAL, mini_container, mini_record, needs_bad, needs_real


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out


def test_help_does_not_import_tensorflow():
    code = (
        "import sys; from pipeline import cli; cli.build_parser([]); "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_wrong_model_directory_is_a_message_not_a_traceback(tmp_path, capsys):
    from model.handler import METADATA_FILE

    parent = tmp_path / "bench-model"
    (parent / "model").mkdir(parents=True)
    (parent / "model" / METADATA_FILE).write_text("{}")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.avro").write_bytes(mini_container([mini_record(1)]))
    code = cli.main(
        [
            "run",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "o"),
            "--model",
            str(parent),
            "--verbose",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "is not an exported stampflow model" in err
    assert f"did you mean {parent / 'model'}?" in err
    assert "Traceback" not in err


def test_decode_job_reconciles(tmp_path):
    night = tmp_path / "night"
    night.mkdir()
    for i in range(6):
        (night / f"{i}.avro").write_bytes(mini_container([mini_record(i)]))
    bad = mini_record(9)
    bad["cutoutDifference"] = None
    (night / "nullcut.avro").write_bytes(mini_container([bad]))
    (night / "junk.avro").write_bytes(b"not avro at all")
    summary = run([str(night), "--output", str(tmp_path / "out")])
    assert summary["records_in"] == 8
    assert summary["alerts_ok"] == 6
    assert summary["dead_letters"] == {"decode": 1, "stamps": 1}
    assert summary["dead_letter_reasons"] == {"decode:bad_magic": 1, "stamps:null": 1}
    lines = (tmp_path / "out" / "dead_letters" / "dead_letters.jsonl").read_text().splitlines()
    assert len(lines) == 2
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["records_in"] == 8


@needs_real
@needs_bad
def test_decode_cli_on_real_and_bad_alerts(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "decode",
            str(REAL),
            str(BAD),
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "dead letters" in out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["alerts_ok"] == 225
    assert summary["records_in"] == 225 + sum(summary["dead_letters"].values())
    assert summary["dead_letters"] == {"decode": 15, "stamps": 18}
