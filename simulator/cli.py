"""``stampflow simulate`` and ``stampflow montage``: argument parsing only; work is in the API."""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.argtypes import fraction, non_negative_int, positive_int

#: ``--night`` when not given, per survey: a ZTF night of 2018, a Rubin dayObs of 2026.
DEFAULT_NIGHT = {"ztf": "20180815", "lsst": "20260305"}


def run_simulate(args: argparse.Namespace) -> int:
    """Run ``stampflow simulate`` from parsed arguments; returns the exit code."""
    from simulator.core import simulate

    if args.survey == "lsst":
        return _run_simulate_lsst(args)
    if args.format not in ("files", "tar"):
        print(
            f"stampflow simulate: --format {args.format} is for --survey lsst; ZTF writes "
            "files or tar",
            file=sys.stderr,
        )
        return 2
    try:
        s = simulate(
            args.n,
            args.out,
            seed=args.seed,
            night=args.night or DEFAULT_NIGHT["ztf"],
            mix=args.mix,
            fmt=args.format,
            detections_per_object=args.detections_per_object,
            defects=args.defects,
            workers=args.workers,
            first_detections=args.first_detections,
        )
    except (ValueError, OSError) as e:  # bad values; an --out that cannot be written
        print(f"stampflow simulate: {e}", file=sys.stderr)
        return 2
    where = s.archive_path or s.out_dir
    print(f"wrote {s.n_alerts} alerts ({s.n_objects} objects) to {where} and {s.labels_path}")
    print(f"classes: {s.class_counts}  defects: {s.defect_counts}")
    print(f"{s.seconds:.1f} s, {s.alerts_per_second:.0f} alerts/s")
    return 0


def _run_simulate_lsst(args: argparse.Namespace) -> int:
    """``stampflow simulate --survey lsst``: Rubin alerts (:mod:`simulator.lsst`)."""
    from simulator.lsst import simulate_lsst

    for flag, value, default in (
        ("--detections-per-object", args.detections_per_object, 1),
        ("--defects", args.defects, 0.0),
    ):
        if value != default:
            print(f"stampflow simulate: {flag} is not available for --survey lsst", file=sys.stderr)
            return 2
    fmt = "avro" if args.format == "files" else args.format
    if fmt == "tar":
        print(
            "stampflow simulate: --survey lsst writes --format avro, parquet or wire",
            file=sys.stderr,
        )
        return 2
    try:
        s = simulate_lsst(
            args.n,
            args.out,
            seed=args.seed,
            night=args.night or DEFAULT_NIGHT["lsst"],
            mix=args.mix,
            fmt=fmt,
            first_detections=args.first_detections,
            workers=args.workers,
            schema_dir=args.schema_dir,
            version=args.schema_version,
        )
    except (ValueError, OSError) as e:  # bad values; an --out that cannot be written
        print(f"stampflow simulate: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {s.n_alerts} Rubin alerts ({s.n_objects} objects, lsst.v"
        f"{args.schema_version.replace('.', '_')}, {fmt}) to {s.out_dir} and {s.labels_path}"
    )
    print(f"classes: {s.class_counts}")
    print(f"{s.seconds:.1f} s, {s.alerts_per_second:.0f} alerts/s")
    return 0


def run_montage(args: argparse.Namespace) -> int:
    """Run ``stampflow montage`` from parsed arguments; returns the exit code."""
    from simulator.montage import montage

    try:
        path = montage(args.alerts, args.labels, args.out, per_class=args.per_class, by=args.by)
    except (ValueError, FileNotFoundError) as e:
        print(f"stampflow montage: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    """Add the ``simulate`` or ``montage`` subcommand parser.

    Parameters
    ----------
    subparsers
        The ``stampflow`` sub-parser collection.
    name
        ``"simulate"`` or ``"montage"``.
    """
    if name == "simulate":
        p = subparsers.add_parser(
            name, help="write realistic simulated ZTF or Rubin (LSST) alerts with labels"
        )
        p.add_argument(
            "--survey",
            choices=("ztf", "lsst"),
            default="ztf",
            help="ztf: ZTF 4.02 packets (default); lsst: Rubin packets (docs/rubin.md)",
        )
        p.add_argument("--n", type=positive_int, required=True, help="number of alerts")
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
        p.add_argument(
            "--night",
            default=None,
            help="UT date YYYYMMDD (default 20180815; for lsst the dayObs, default 20260305)",
        )
        p.add_argument(
            "--mix",
            default=None,
            help="class fractions, e.g. AGN=0.2,SN=0.2,VS=0.2,asteroid=0.2,bogus=0.2",
        )
        p.add_argument(
            "--format",
            choices=("files", "tar", "avro", "parquet", "wire"),
            default="files",
            help="ztf: files ({candid}.avro each) or tar (ztf_public_YYYYMMDD.tar.gz); lsst: avro "
            "(containers of 128 alerts; files means avro), parquet, or wire (one Kafka "
            "wire-format message per file)",
        )
        p.add_argument(
            "--schema-dir",
            default=None,
            help="lsst: directory of the official Rubin schemas (lsst-alert-packet's schema/ "
            "tree; default: the installed lsst-alert-packet's)",
        )
        p.add_argument(
            "--schema-version",
            choices=("10.0", "11.1"),
            default="11.1",
            help="lsst: the packet schema version written (default 11.1, the live stream's)",
        )
        p.add_argument(
            "--detections-per-object",
            type=positive_int,
            default=1,
            help="max alerts per object in the night (default 1)",
        )
        p.add_argument(
            "--defects",
            type=fraction,
            default=0.0,
            help="fraction of alerts with a defect (default 0)",
        )
        p.add_argument(
            "--first-detections",
            action="store_true",
            help="only first detections (one alert per new object), in the class mix of a real "
            "night's first detections (60%% bogus) unless --mix is given",
        )
        p.add_argument(
            "--workers",
            type=positive_int,
            default=os.cpu_count() or 1,
            help="worker processes (default: CPU count); output does not depend on it",
        )
        p.set_defaults(func=run_simulate)
    elif name == "montage":
        p = subparsers.add_parser(name, help="draw science/reference/difference triplets per class")
        p.add_argument(
            "--alerts", required=True, help="alerts in any format stampflow run reads (ZTF, Rubin)"
        )
        p.add_argument("--labels", required=True, help="labels.csv written by simulate")
        p.add_argument("--out", required=True, help="PNG to write")
        p.add_argument("--per-class", type=positive_int, default=3, help="alerts per row group (3)")
        p.add_argument(
            "--by",
            choices=("class", "subtype"),
            default="class",
            help="group rows by class (default) or show every subtype",
        )
        p.set_defaults(func=run_montage)
    else:
        raise ValueError(f"simulator.cli does not provide {name!r}")
