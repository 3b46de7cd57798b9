"""``stampflow simulate`` and ``stampflow montage``: argument parsing only; work is in the API."""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.argtypes import fraction, positive_int


def run_simulate(args: argparse.Namespace) -> int:
    """Run ``stampflow simulate`` from parsed arguments; returns the exit code."""
    from simulator.core import simulate

    try:
        s = simulate(
            args.n,
            args.out,
            seed=args.seed,
            night=args.night,
            mix=args.mix,
            fmt=args.format,
            detections_per_object=args.detections_per_object,
            defects=args.defects,
            workers=args.workers,
            first_detections=args.first_detections,
        )
    except ValueError as e:
        print(f"stampflow simulate: {e}", file=sys.stderr)
        return 2
    where = s.archive_path or s.out_dir
    print(f"wrote {s.n_alerts} alerts ({s.n_objects} objects) to {where} and {s.labels_path}")
    print(f"classes: {s.class_counts}  defects: {s.defect_counts}")
    print(f"{s.seconds:.1f} s, {s.alerts_per_second:.0f} alerts/s")
    return 0


def run_montage(args: argparse.Namespace) -> int:
    """Run ``stampflow montage`` from parsed arguments; returns the exit code."""
    from simulator.montage import montage

    try:
        path = montage(args.alerts, args.labels, args.out, per_class=args.per_class)
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
        p = subparsers.add_parser(name, help="write realistic simulated ZTF alerts with labels")
        p.add_argument("--n", type=positive_int, required=True, help="number of alerts")
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--night", default="20180815", help="UT date YYYYMMDD (default 20180815)")
        p.add_argument(
            "--mix",
            default=None,
            help="class fractions, e.g. AGN=0.2,SN=0.2,VS=0.2,asteroid=0.2,bogus=0.2",
        )
        p.add_argument(
            "--format",
            choices=("files", "tar"),
            default="files",
            help="files: {candid}.avro each; tar: ztf_public_YYYYMMDD.tar.gz",
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
        p.add_argument("--alerts", required=True, help="directory of .avro files or a tar.gz")
        p.add_argument("--labels", required=True, help="labels.csv written by simulate")
        p.add_argument("--out", required=True, help="PNG to write")
        p.add_argument("--per-class", type=positive_int, default=3, help="alerts per class (3)")
        p.set_defaults(func=run_montage)
    else:
        raise ValueError(f"simulator.cli does not provide {name!r}")
