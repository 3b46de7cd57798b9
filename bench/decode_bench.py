"""Decoding throughput, ours against the naive path, measured in the same run on the same bytes.

    python -m bench.decode_bench [--data DIR | --simulated N] [--repeat N] [--json FILE]

* containers: :func:`transforms.alerts.decode_alerts` (schema parsed once per process) against
  ``list(fastavro.reader(BytesIO(data)))`` per file, which re-parses the ~27 kB writer schema;
* first pass: :func:`transforms.first_pass.scan_alerts` (only what first-detection selection
  needs; history values and cutouts skipped) against that full decode;
* second pass: :func:`transforms.first_pass.slim_alerts` (the selected alerts decoded without
  their histories) against the full decode followed by ``Alert.slim()``;
* stamps: :func:`transforms.stamps.decode_stamp` against ``astropy.io.fits.open`` on the gunzipped
  bytes (what brokers commonly do), three cutouts per alert.

Rates are alerts/s on one core (single process). Reads the real alerts in ``../shared/data`` by
default; with ``--data`` any directory of alert files, with ``--simulated N`` a night of N
simulated ZTF 4.02 alerts (:func:`simulator.simulate`, seed 0, in a temporary directory).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import fastavro

from transforms.alerts import decode_alerts
from transforms.first_pass import scan_alerts, slim_alerts
from transforms.schema import STAMP_KINDS
from transforms.sources import expand_pattern, read_path
from transforms.stamps import decode_stamp

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ztf_alerts"


def _rate(fn: Callable[[], int], repeat: int) -> float:
    """Best-of-``repeat`` alerts/s of ``fn`` (which returns how many alerts it processed)."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def load(data_dir: str) -> list[bytes]:
    """All containers under ``data_dir`` (files and archive members) as bytes."""
    out = []
    for path in expand_pattern(data_dir):
        if isinstance(path, str):
            out += [item[1] for item in read_path(path) if isinstance(item, tuple)]
    return out


def measure(containers: list[bytes], repeat: int = 5) -> dict[str, float]:
    """Measure the four rates on ``containers``.

    Parameters
    ----------
    containers
        Avro container bytes (one or many alerts each).
    repeat
        Passes per measurement; the best is kept (least disturbed by other load).

    Returns
    -------
    dict
        alerts/s for ``containers_ours``, ``containers_fastavro``, ``containers_first_pass``,
        ``containers_slim``, ``stamps_ours``, ``stamps_astropy``, and the ratios
        ``containers_ratio`` (ours / fastavro), ``first_pass_ratio`` (first pass / ours),
        ``slim_ratio`` (slim / ours) and ``stamps_ratio``.
    """
    alerts = [a for c in containers for a in decode_alerts(c, "bench")[0]]
    cutouts = [a.cutout_bytes(k) for a in alerts for k in STAMP_KINDS]

    def ours_containers() -> int:
        return sum(len(decode_alerts(c, "bench")[0]) for c in containers)

    def fastavro_containers() -> int:
        return sum(len(list(fastavro.reader(io.BytesIO(c)))) for c in containers)

    def first_pass_containers() -> int:
        return sum(len(scan_alerts(c, "bench")[0]) for c in containers)

    def slim_containers() -> int:
        return sum(len(list(slim_alerts(c, "bench"))) for c in containers)

    def ours_stamps() -> int:
        for raw in cutouts:
            decode_stamp(raw)
        return len(alerts)

    def astropy_stamps() -> int:
        from astropy.io import fits

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-standard SIMPLE cards in 2018 cutouts
            for raw in cutouts:
                with fits.open(io.BytesIO(gzip.decompress(raw))) as hdul:
                    _ = hdul[0].data
        return len(alerts)

    ours_containers()  # warm the schema caches, as in a long-running worker
    first_pass_containers()
    slim_containers()
    result = {
        "alerts": len(alerts),
        "containers_ours": _rate(ours_containers, repeat),
        "containers_fastavro": _rate(fastavro_containers, repeat),
        "containers_first_pass": _rate(first_pass_containers, repeat),
        "containers_slim": _rate(slim_containers, repeat),
        "stamps_ours": _rate(ours_stamps, repeat),
        "stamps_astropy": _rate(astropy_stamps, repeat),
    }
    result["containers_ratio"] = result["containers_ours"] / result["containers_fastavro"]
    result["first_pass_ratio"] = result["containers_first_pass"] / result["containers_ours"]
    result["slim_ratio"] = result["containers_slim"] / result["containers_ours"]
    result["stamps_ratio"] = result["stamps_ours"] / result["stamps_astropy"]
    return result


def format_table(r: dict[str, float]) -> str:
    """Markdown table of a :func:`measure` result."""
    rows = [
        ("container decoding", r["containers_ours"], r["containers_fastavro"], "fastavro.reader"),
        (
            "first-pass scan (selection facts)",
            r["containers_first_pass"],
            r["containers_ours"],
            "our full decode",
        ),
        (
            "second pass (winners without history)",
            r["containers_slim"],
            r["containers_ours"],
            "our full decode",
        ),
        ("stamp decoding (3/alert)", r["stamps_ours"], r["stamps_astropy"], "astropy fits.open"),
    ]
    lines = [
        f"{r['alerts']} alerts, one core",
        "",
        "| stage | ours [alerts/s] | baseline [alerts/s] | baseline | ratio |",
        "|---|---:|---:|---|---:|",
    ]
    lines += [f"| {s} | {o:,.0f} | {b:,.0f} | {n} | {o / b:.1f}x |" for s, o, b, n in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the table (and writes JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=str, default=str(DEFAULT_DATA), help="alert directory")
    parser.add_argument(
        "--simulated", type=int, default=0, help="measure N simulated 4.02 alerts instead"
    )
    parser.add_argument("--repeat", type=int, default=5, help="passes per measurement")
    parser.add_argument("--json", type=str, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.simulated > 0:
        from simulator import simulate

        with tempfile.TemporaryDirectory() as tmp:
            simulate(args.simulated, tmp, seed=0, workers=1)
            containers = load(tmp)
    else:
        containers = load(args.data)
    if not containers:
        parser.error(f"no alert containers under {args.data}")
    result = measure(containers, args.repeat)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
