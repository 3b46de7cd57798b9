"""Run a simulation: plan the night, build chunks in worker processes, write files or an archive."""

from __future__ import annotations

import contextlib
import csv
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator import generate as gen
from simulator import metadata as md
from simulator.writer import TAR_END, AlertEncoder, gzip_member, tar_member

LABEL_COLUMNS = ("candid", "objectId", "class", "subtype", "defect")
FORMATS = ("files", "tar")

_ENCODER: AlertEncoder | None = None


@dataclass
class SimulationSummary:
    """What :func:`simulate` wrote.

    Attributes
    ----------
    n_alerts, n_objects
        Counts written.
    out_dir, labels_path, archive_path
        Output locations (``archive_path`` is None for the ``files`` format).
    class_counts, defect_counts
        Alerts per class and per defect kind.
    seconds, alerts_per_second
        Wall time and throughput.
    """

    n_alerts: int
    n_objects: int
    out_dir: Path
    labels_path: Path
    archive_path: Path | None
    class_counts: dict[str, int] = field(default_factory=dict)
    defect_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    alerts_per_second: float = 0.0


def _encoder() -> AlertEncoder:
    global _ENCODER  # one parsed schema per process
    if _ENCODER is None:
        _ENCODER = AlertEncoder()
    return _ENCODER


def _run_chunk(args: tuple[gen.NightPlan, int, str, str]) -> tuple[list[dict], bytes]:
    """Worker: build one chunk, write its files (or return its gzip tar member), return labels."""
    plan, chunk, fmt, out_dir = args
    enc = _encoder()
    labels, parts = [], []
    for alert, label in gen.make_chunk(plan, chunk):
        payload = enc.encode(alert)
        name = f"{alert['candid']}.avro"
        if fmt == "files":
            Path(out_dir, name).write_bytes(payload)
        else:
            mtime = int(md.jd_to_unix(alert["candidate"]["jd"]))
            parts.append(tar_member(name, payload, mtime))
        labels.append(label)
    return labels, gzip_member(b"".join(parts)) if parts else b""


@contextlib.contextmanager
def chunk_results(run: Callable[[Any], Any], jobs: list[Any], workers: int) -> Iterator[Any]:
    """``run`` over ``jobs`` in worker processes, results in job order (so the output does not
    depend on ``workers``); in this process when one worker or one job."""
    if workers == 1 or len(jobs) <= 1:
        yield map(run, jobs)
        return
    # fork is fastest on Linux; spawn elsewhere (macOS, Windows).
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = mp.get_context(method).Pool(workers)
    try:
        yield pool.imap(run, jobs)  # imap keeps job order
    finally:
        pool.close()
        pool.join()


def simulate(
    n: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    night: str = "20180815",
    mix: str | dict[str, float] | None = None,
    fmt: str = "files",
    detections_per_object: int = 1,
    defects: float = 0.0,
    workers: int | None = None,
    first_detections: bool = False,
) -> SimulationSummary:
    """Write ``n`` simulated ZTF 4.02 alerts and ``labels.csv`` to ``out_dir``.

    Parameters
    ----------
    n
        Number of alerts.
    out_dir
        Output directory (created).
    seed
        Random seed; the output depends only on the seed and the other arguments, not on
        ``workers``.
    night
        ``YYYYMMDD`` UT date of the night (sets ``jd``, ``nid`` and the archive name).
    mix
        Class fractions, e.g. ``"AGN=0.2,SN=0.3,VS=0.2,asteroid=0.1,bogus=0.2"`` (normalised).
    fmt
        ``files``: one ``{candid}.avro`` per alert; ``tar``: ``ztf_public_<night>.tar.gz``.
    detections_per_object
        Maximum alerts per object in the night.
    defects
        Fraction of alerts given a defect (NaN pixels, edge stamp, null fields).
    workers
        Worker processes (default ``os.cpu_count()``); 1 runs in-process.
    first_detections
        A night of first detections only, as production classifies them
        (:func:`simulator.generate.plan_night`).

    Returns
    -------
    SimulationSummary
        Counts, paths and throughput.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = gen.plan_night(n, seed, night, mix, detections_per_object, defects, first_detections)
    jobs = [(plan, c, fmt, str(out)) for c in range(len(plan.chunks) - 1)]
    workers = max(1, workers or os.cpu_count() or 1)
    archive = out / f"ztf_public_{night}.tar.gz" if fmt == "tar" else None
    labels_path = out / "labels.csv"
    classes: dict[str, int] = {}
    defect_counts: dict[str, int] = {}
    tar_fh = archive.open("wb") if archive else None
    try:
        with labels_path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
            writer.writeheader()
            with chunk_results(_run_chunk, jobs, workers) as results:
                for labels, member in results:  # in chunk order: deterministic output
                    writer.writerows(labels)
                    for row in labels:
                        classes[row["class"]] = classes.get(row["class"], 0) + 1
                        if row["defect"]:
                            defect_counts[row["defect"]] = defect_counts.get(row["defect"], 0) + 1
                    if tar_fh is not None:
                        tar_fh.write(member)
        if tar_fh is not None:
            tar_fh.write(gzip_member(TAR_END))
    finally:
        if tar_fh is not None:
            tar_fh.close()
    seconds = time.perf_counter() - t0
    return SimulationSummary(
        n_alerts=plan.n_alerts,
        n_objects=int(plan.cls.size),
        out_dir=out,
        labels_path=labels_path,
        archive_path=archive,
        class_counts=classes,
        defect_counts=defect_counts,
        seconds=seconds,
        alerts_per_second=plan.n_alerts / seconds if seconds > 0 else 0.0,
    )


def make_alerts(
    n: int,
    seed: int = 0,
    night: str = "20180815",
    mix: str | dict[str, float] | None = None,
    detections_per_object: int = 1,
    defects: float = 0.0,
    first_detections: bool = False,
) -> list[tuple[dict, dict]]:
    """Build alert records and label rows in memory (no files), in plan order.

    Parameters are as for :func:`simulate`. Returns ``[(alert record, label row), ...]``.
    """
    plan = gen.plan_night(n, seed, night, mix, detections_per_object, defects, first_detections)
    rows: list[tuple[dict, dict]] = []
    for c in range(len(plan.chunks) - 1):
        rows.extend(gen.make_chunk(plan, c))
    return rows
