"""End to end: ``stampflow run`` on a simulated night, timed and memory-sampled from outside.

The night is simulated once per (size, seed, detections per object) and cached under the
benchmark's cache directory. The job runs in a subprocess (``python -m pipeline.cli run``), so
its interpreter and TensorFlow start-up, and every worker process it forks, are measured the way a
user's run would be. Peak RSS is the largest *sum* of resident memory over the job's whole process
tree, sampled from ``/proc`` every 0.2 s, and never less than the largest single process's own
peak (``VmHWM``, which the kernel resets at ``exec``). ``wait4``'s ``ru_maxrss`` is not used: it
counts the child from ``fork``, when it still shares the benchmark process's pages.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Simulated alerts per object (1 to this many, asteroids 1): about a quarter are first detections.
DETECTIONS_PER_OBJECT = 4
_PAGE = os.sysconf("SC_PAGE_SIZE")


def simulate_night(
    n: int, cache_dir: str | Path, seed: int = 0, detections_per_object: int = DETECTIONS_PER_OBJECT
) -> Path:
    """A simulated night of ``n`` alert files (one alert per file), cached.

    Parameters
    ----------
    n
        Alerts.
    cache_dir
        Parent directory of the cached nights.
    seed
        Simulation seed.
    detections_per_object
        Maximum alerts per object.

    Returns
    -------
    pathlib.Path
        Directory holding ``*.avro`` and ``labels.csv``.
    """
    from simulator import simulate

    out = Path(cache_dir) / f"night-n{n}-s{seed}-d{detections_per_object}"
    done = out / ".complete"
    if not done.is_file():
        simulate(
            n, out, seed=seed, detections_per_object=detections_per_object, workers=os.cpu_count()
        )
        done.write_text(str(n))
    return out


def warm_page_cache(paths: list[Path] | str | Path) -> float:
    """Read files once so that every run measured after it reads them from memory.

    This machine's kernel reclaims page cache that has gone cold (a 50k night read from disk
    costs ~15 s more than from memory), so without this the first run of a benchmark pays the
    disk and the others do not. Every measured side (the baselines, each end-to-end run) is
    preceded by it, so all of them measure the CPU, as the ratios assume.

    Parameters
    ----------
    paths
        Files, or a night directory (its ``*.avro``).

    Returns
    -------
    float
        Seconds the reading took (large when the files had left the cache).
    """
    files = alert_files(paths) if isinstance(paths, str | Path) else paths
    t0 = time.perf_counter()
    for p in files:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass
    return time.perf_counter() - t0


def alert_files(night: str | Path) -> list[Path]:
    """The night's alert files, sorted."""
    return sorted(Path(night).glob("*.avro"))


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += tree.get(p, [])
    return out


def tree_memory(pid: int) -> tuple[int, int]:
    """Memory of ``pid`` and all its descendants, in one walk of the process tree.

    Returns
    -------
    (int, int)
        The resident memory summed over the tree now, and the largest ``VmHWM`` (a process's peak
        resident memory since ``exec``) in it [bytes]; zeros once the tree is gone.
    """
    total = largest = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE
            with open(f"/proc/{p}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        largest = max(largest, int(line.split()[1]) * 1024)
                        break
        except (OSError, IndexError, ValueError):
            pass
    return total, largest


def run_pipeline(
    night: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    workers: int = 2,
    interval: float = 0.2,
    runtime: str = "tensorflow",
) -> dict[str, Any]:
    """Run ``stampflow run`` on ``night`` in a subprocess; time it and sample its memory.

    Parameters
    ----------
    night
        Input directory.
    model_dir
        Exported model.
    out_dir
        Output directory of the run (recreated by the job).
    workers
        ``1``: FnApiRunner in one process; more: ``--direct_running_mode=multi_processing``
        with that many worker processes.
    interval
        Memory sampling period [s].
    runtime
        ``--runtime`` of the run: ``tensorflow``, ``onnx`` (the model's ``model.onnx``), or
        ``null`` (fixed probabilities, no TensorFlow: everything but inference).

    Returns
    -------
    dict
        The run's ``summary`` plus ``wall_s`` (process start to exit), ``alerts_per_s`` (records
        in over the job's own ``runtime_s``: pipeline construction, run and summary, without
        interpreter and TensorFlow start-up), ``wall_alerts_per_s``, ``classified_fraction``,
        ``peak_rss_mb`` (process tree) and ``max_process_rss_mb``.

    Raises
    ------
    RuntimeError
        If the job exits non-zero (its stderr tail is included).
    """
    cache_s = warm_page_cache(night)
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--input", str(night)]
    cmd += ["--output", str(out_dir), "--model", str(model_dir), "--runtime", runtime]
    if workers > 1:
        cmd += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    peak = largest = 0
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    t0 = time.perf_counter()
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, largest
        while not stop.is_set():
            rss, hwm = tree_memory(proc.pid)
            peak, largest = max(peak, rss), max(largest, hwm)
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, _ = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = (logs / "stdout").read_text()
    stderr = (logs / "stderr").read_text()
    shutil.rmtree(logs, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"stampflow run exited {proc.returncode}: {stderr[-2000:]}")
    summary = json.loads(Path(out_dir, "summary.json").read_text())
    records = summary["records_in"]
    return {
        "alerts": records,
        "classified": summary["classified"],
        "classified_fraction": summary["classified"] / records if records else 0.0,
        "workers": workers,
        "runtime_s": summary["runtime_s"],
        "wall_s": wall,
        "alerts_per_s": records / summary["runtime_s"] if summary["runtime_s"] else 0.0,
        # CPU cost per alert read: job time x cores over the alerts read [core-ms]
        "ms_per_alert_read": 1000 * summary["runtime_s"] / records if records else 0.0,
        "runtime": runtime,
        "wall_alerts_per_s": records / wall,
        # the sampled tree sum can miss a short peak; never report less than the largest process
        "peak_rss_mb": max(peak, largest) / 2**20,
        "sampled_tree_rss_mb": peak / 2**20,
        "max_process_rss_mb": largest / 2**20,
        "reconciled": summary["reconciled"],
        # reading the night's files before the run (see warm_page_cache) [s]
        "warm_cache_s": cache_s,
        "stdout": stdout.strip().splitlines()[:1],
    }


def profile_run(
    night: str | Path, model_dir: str | Path, out_dir: str | Path, top: int = 40
) -> str:
    """Profile ``stampflow run`` in this process (FnApiRunner, one worker) with cProfile.

    Parameters
    ----------
    night, model_dir, out_dir
        As for :func:`run_pipeline`.
    top
        Functions listed, by cumulative and by own time.

    Returns
    -------
    str
        The pstats report (``cumulative`` then ``tottime``).
    """
    from pipeline.run_job import run

    argv = ["--input", str(night), "--output", str(out_dir), "--model", str(model_dir)]
    profiler = cProfile.Profile()
    profiler.enable()
    summary = run(argv)
    profiler.disable()
    buf = io.StringIO()
    buf.write(f"summary: {json.dumps(summary)}\n\n")
    stats = pstats.Stats(profiler, stream=buf)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return buf.getvalue()
