"""``stampflow bench``: throughput per stage and end to end against the baseline, in one run.

The flow::

    simulate a night of N alerts (cached) ─ export a random-weight production model (cached)
      ─ machine fp32 matmul GFLOP/s
      ─ per stage on a subset: decoding (ours vs fastavro / astropy), featurisation (batched vs
        per alert), transform, inference at batch 1, 64, 256 (GFLOP/s, % of the machine)
      ─ the same stages on ../shared/data/ztf_alerts when present (no inference)
      ─ baseline (bench.baseline) on a subset of the same night's files
      ─ ``stampflow run`` end to end on the whole night (subprocess): alerts/s, peak RSS
      ─ optional extra sizes (--sizes) for the scaling table; optional cProfile (--profile)
      ─ optional (--onnx): onnxruntime vs TensorFlow inference and the night with --runtime onnx
    ─▶ a markdown table on stdout and, with --json, every number

    stampflow bench --quick                       # 5k alerts, a few minutes
    stampflow bench --alerts 50000 --json bench.json --sizes 5000,20000
    stampflow bench --streaming --rates 50,330 --stream-seconds 60   # Pub/Sub emulator
    stampflow bench --streaming --streaming-mode backlog --backlog 5000  # (bench.streaming)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.argtypes import positive_int

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL = ROOT.parent / "shared" / "data" / "ztf_alerts"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "stampflow-bench"
DEFAULT_ALERTS, QUICK_ALERTS = 50_000, 5_000


def run_bench(
    alerts: int = DEFAULT_ALERTS,
    workers: int = 1,
    stage_alerts: int = 1000,
    baseline_alerts: int = 2000,
    cache_dir: str | Path = DEFAULT_CACHE,
    real_dir: str | Path | None = DEFAULT_REAL,
    sizes: tuple[int, ...] = (),
    seed: int = 0,
    repeat: int = 3,
    seconds: float = 3.0,
    profile: str | Path | None = None,
    null_model: bool = False,
    device: bool = False,
    onnx: bool = False,
    log=print,
) -> dict[str, Any]:
    """Run every measurement and return the result (see the module docstring).

    Parameters
    ----------
    alerts
        Alerts in the simulated night run end to end.
    workers
        Worker processes of the end-to-end run (1: in-process FnApiRunner).
    stage_alerts
        Alerts of the night used for the per-stage rates.
    baseline_alerts
        Alert files of the night run through the baseline.
    cache_dir
        Where simulated nights and the benchmark model are kept between runs.
    real_dir
        Real alerts for the per-stage rates (skipped when absent or None).
    sizes
        Extra night sizes run end to end for the scaling table.
    seed
        Simulation and weight seed.
    repeat
        Passes per stage measurement (best kept).
    seconds
        Minimum time per machine and inference measurement.
    profile
        Also profile an in-process run of the night with cProfile and write the report here.
    null_model
        Also run the night end to end with ``--runtime null`` (fixed probabilities, no
        TensorFlow): the cost of everything but inference, in the same run (``end_to_end_null``).
    device
        Also measure inference on the accelerator TensorFlow sees (or the CPU, said plainly),
        at that device's batch sizes, with and without XLA, and the XLA parity (``device``).
    onnx
        Also measure the model's ONNX export with onnxruntime: inference at batch 1, 64, 256
        beside TensorFlow in the same process, with the parity (``onnx``), and the night end to
        end with ``--runtime onnx`` (``end_to_end_onnx``).
    log
        Progress printer (``print``; a no-op to stay quiet).

    Returns
    -------
    dict
        Headline keys (``baseline_alerts_per_s``, ``pipeline_alerts_per_s``, ``ratio``,
        ``peak_rss_mb``, ``inference_gflops``, ``machine_gflops``, ``model_flops_per_alert``,
        ``inference_efficiency``), the per-stage ``stages`` table and the details.
    """
    from bench import baseline, end_to_end, stages
    from bench.decode_bench import load

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    result: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_average_start": load_start[0],
        "alerts": alerts,
        "workers": workers,
        "seed": seed,
    }

    log(f"simulating {alerts} alerts (cached in {cache}) ...")
    night = end_to_end.simulate_night(alerts, cache, seed)
    files = end_to_end.alert_files(night)
    subset = [p.read_bytes() for p in files[: min(stage_alerts, len(files))]]

    log("exporting the benchmark model (random weights, kernel 5, crop 21, 23 features) ...")
    from transforms.alerts import decode_alerts

    fit_alerts = [a for c in subset[:256] for a in decode_alerts(c, "bench")[0]]
    model_dir = stages.build_bench_model(fit_alerts, cache / f"model-s{seed}", seed)

    log("machine fp32 matmul ...")
    machine = stages.machine_gflops(seconds=seconds)
    machine_gflops = max(machine.values())
    result["machine"] = machine

    log(f"stages on {len(subset)} simulated alerts ...")
    sim = stages.measure_stages(subset, model_dir, machine_gflops, repeat, seconds)
    result["stages_simulated"] = sim
    if real_dir is not None and Path(real_dir).is_dir():
        real = load(str(real_dir))
        if real:
            log(f"stages on the real alerts in {real_dir} ...")
            result["stages_real"] = stages.measure_stages(
                real, model_dir, machine_gflops, repeat, seconds, inference=False
            )

    if device:
        real_alerts = None
        if real_dir is not None and Path(real_dir).is_dir():
            real_alerts = [a for c in load(str(real_dir)) for a in decode_alerts(c, "real")[0]]
        result["device"] = measure_device(model_dir, fit_alerts, seconds, log, real_alerts)
    if onnx:
        log("onnxruntime vs TensorFlow inference, batch 1, 64, 256 ...")
        alerts_sub = [a for c in subset for a in decode_alerts(c, "bench")[0]]
        result["onnx"] = stages.measure_onnx(model_dir, alerts_sub, machine_gflops, seconds)

    picked = sorted(random.Random(seed).sample(files, min(baseline_alerts, len(files))))
    log(f"baseline on {len(picked)} alert files ...")
    end_to_end.warm_page_cache(picked)  # every side reads from memory (see warm_page_cache)
    base = baseline.baseline_rate(picked, model_dir)
    result["baseline"] = base
    log(f"ALeRCE-style batched peer on {len(picked)} alert files ...")
    end_to_end.warm_page_cache(picked)
    result["batched_peer"] = baseline.batched_peer_rate(picked, model_dir)

    runs = []
    for n in sorted({*sizes, alerts}):
        n_night = night if n == alerts else end_to_end.simulate_night(n, cache, seed)
        log(f"stampflow run on {n} alerts, {workers} worker(s) ...")
        out = Path(tempfile.mkdtemp(prefix="run-", dir=cache))
        try:
            runs.append(end_to_end.run_pipeline(n_night, model_dir, out, workers))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    result["scaling"] = runs
    e2e = next(r for r in runs if r["alerts"] == alerts)
    result["end_to_end"] = e2e
    # The same night again without the model (the CPU side) and with its ONNX export.
    for wanted, runtime in ((null_model, "null"), (onnx, "onnx")):
        if not wanted:
            continue
        log(f"stampflow run --runtime {runtime} on {alerts} alerts, {workers} worker(s) ...")
        out = Path(tempfile.mkdtemp(prefix=f"run-{runtime}-", dir=cache))
        try:
            result[f"end_to_end_{runtime}"] = end_to_end.run_pipeline(
                night, model_dir, out, workers, runtime=runtime
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)

    if profile:
        log("profiling an in-process run ...")
        out = Path(tempfile.mkdtemp(prefix="profile-", dir=cache))
        try:
            Path(profile).write_text(end_to_end.profile_run(night, model_dir, out))
        finally:
            shutil.rmtree(out, ignore_errors=True)

    flops = stages.model_flops_per_alert(stages.PRODUCTION)
    b64 = sim["inference"][64]
    result.update(
        baseline_alerts_per_s=base["alerts_per_s"],
        pipeline_alerts_per_s=e2e["alerts_per_s"],
        ratio=e2e["alerts_per_s"] / base["alerts_per_s"] if base["alerts_per_s"] else 0.0,
        batched_peer_alerts_per_s=result["batched_peer"]["alerts_per_s"],
        ratio_batched_peer=(
            e2e["alerts_per_s"] / result["batched_peer"]["alerts_per_s"]
            if result["batched_peer"]["alerts_per_s"]
            else 0.0
        ),
        peak_rss_mb=e2e["peak_rss_mb"],
        inference_gflops=b64["gflops"],
        machine_gflops=machine_gflops,
        inference_efficiency=b64["efficiency"],
        model_flops_per_alert=flops,
        model_macs=stages.model_macs(stages.PRODUCTION),
        stages=stage_table(result),
        load_average_end=os.getloadavg()[0],
    )
    return result


def measure_device(
    model_dir: Path, alerts: list, seconds: float, log=print, real_alerts: list | None = None
) -> dict[str, Any]:
    """Inference on the device TensorFlow sees: alerts/s per batch size, plain, with XLA and
    in mixed precision, and how far the last two move the probabilities.

    Parameters
    ----------
    model_dir
        The benchmark model (random weights: speed).
    alerts
        Alerts to run it on.
    seconds
        Minimum time per measurement.
    log
        Progress printer.
    real_alerts
        Real alerts: mixed precision's parity is also measured on them with the shipped model
        (trained weights, the probabilities users see); None: not measured.

    Returns
    -------
    dict
        ``gpus`` (names; empty: none seen), ``device`` (``gpu``/``cpu``), ``cpu_flags`` (the
        bfloat16/float16 units the CPU has), ``batches``, ``inference``, ``inference_xla`` and
        ``inference_mixed`` (``{batch: alerts/s}``), ``xla_max_abs_diff`` and
        ``mixed_max_abs_diff`` (largest probability difference from the plain graph on the
        benchmark alerts), ``mixed_policy``, and with ``real_alerts`` ``mixed_real`` (the
        shipped model on them: ``alerts``, ``max_abs_diff``, ``class_agreement``).
    """
    import numpy as np

    from bench import stages
    from bench.serving import load_serving
    from model.handler import BATCH_BOUNDS, visible_gpus
    from model.rebuild import mixed_policy
    from pipeline.options import DEFAULT_MODEL

    gpus = visible_gpus()
    kind = "gpu" if gpus else "cpu"
    log(f"device: {', '.join(gpus) if gpus else 'TensorFlow sees no GPU; measuring the CPU'}")
    batches = tuple(sorted({1, 64, *BATCH_BOUNDS[kind]}))
    features, stamps = stages.examples_of(alerts)
    plain = stages.inference_rates(model_dir, features, stamps, batches, seconds)
    xla = stages.inference_rates(model_dir, features, stamps, batches, seconds, jit_compile=True)
    log(f"mixed precision ({mixed_policy(kind)}) ...")
    mixed = stages.inference_rates(
        model_dir, features, stamps, batches, seconds, mixed_precision=True
    )
    reference = load_serving(model_dir)(features, stamps)
    diff = np.abs(reference - load_serving(model_dir, True)(features, stamps))
    mixed_diff = np.abs(reference - load_serving(model_dir, mixed_precision=True)(features, stamps))
    out = {
        "gpus": gpus,
        "device": kind,
        "cpu_flags": cpu_half_precision_flags(),
        "batches": list(batches),
        "inference": plain,
        "inference_xla": xla,
        "inference_mixed": mixed,
        "xla_max_abs_diff": float(diff.max()),
        "mixed_policy": mixed_policy(kind),
        "mixed_max_abs_diff": float(mixed_diff.max()),
    }
    if real_alerts:
        from model.handler import read_metadata

        f, s = stages.examples_of(real_alerts, read_metadata(DEFAULT_MODEL)["features"])
        p32 = load_serving(DEFAULT_MODEL)(f, s)
        p16 = load_serving(DEFAULT_MODEL, mixed_precision=True)(f, s)
        out["mixed_real"] = {
            "alerts": len(f),
            "max_abs_diff": float(np.abs(p32 - p16).max()),
            "class_agreement": float((p32.argmax(1) == p16.argmax(1)).mean()),
        }
    return out


def cpu_half_precision_flags() -> list[str]:
    """The CPU's bfloat16 / float16 capabilities (``/proc/cpuinfo`` flags), empty if none."""
    wanted = ("avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [w for w in wanted if w in flags]


def stage_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-stage table: ``{"stage", "stampflow", "baseline", "baseline_name", "ratio"}`` rows
    (alerts/s; ``baseline`` None where the stage has no peer counterpart)."""
    sim = result["stages_simulated"]
    dec = sim["decoding"]
    rows = [
        ("container decoding", dec["containers_ours"], dec["containers_fastavro"], "fastavro"),
        ("stamp decoding (3 cutouts)", dec["stamps_ours"], dec["stamps_astropy"], "astropy"),
        (
            "featurisation",
            sim["featurize"],
            sim["featurize_per_alert"],
            "per alert (1 SkyCoord each)",
        ),
        ("transform (tf.Transform graph)", sim["transform"], None, ""),
    ]
    for b, r in sim["inference"].items():
        rows.append((f"inference, batch {b}", r["alerts_per_s"], None, ""))
    e2e, base = result["end_to_end"], result["baseline"]
    rows.append(
        ("end to end", e2e["alerts_per_s"], base["alerts_per_s"], "one alert at a time, 1 process")
    )
    onnx = result.get("onnx")
    if onnx:  # against TensorFlow measured beside it
        for b, r in onnx["onnxruntime"].items():
            theirs = onnx["tensorflow"][b]["alerts_per_s"]
            rows.append((f"inference, batch {b}, onnxruntime", r["alerts_per_s"], theirs, "TF"))
    if "end_to_end_onnx" in result:
        rows.append(
            (
                "end to end, --runtime onnx",
                result["end_to_end_onnx"]["alerts_per_s"],
                e2e["alerts_per_s"],
                "--runtime tensorflow",
            )
        )
    return [
        {
            "stage": s,
            "stampflow": ours,
            "baseline": theirs,
            "baseline_name": name,
            "ratio": ours / theirs if theirs else None,
        }
        for s, ours, theirs, name in rows
    ]


def format_markdown(result: dict[str, Any]) -> str:
    """Markdown tables of a :func:`run_bench` result (stages, inference, end to end, scaling)."""
    e2e, base = result["end_to_end"], result["baseline"]
    loaded = max(result["load_average_start"], result["load_average_end"]) > 0.5 * result["cpus"]
    lines = [
        f"{result['alerts']:,} simulated alerts ({e2e['classified_fraction']:.0%} first "
        f"detections), {result['cpus']} CPUs, load average {result['load_average_start']:.1f} → "
        f"{result['load_average_end']:.1f}" + (" (**measured under load**)" if loaded else ""),
        "",
        "| stage | stampflow [alerts/s] | baseline [alerts/s] | baseline | ratio |",
        "|---|---:|---:|---|---:|",
    ]
    for row in result["stages"]:
        theirs = "—" if row["baseline"] is None else f"{row['baseline']:,.0f}"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.1f}×"
        lines.append(
            f"| {row['stage']} | {row['stampflow']:,.0f} | {theirs} | {row['baseline_name']} "
            f"| {ratio} |"
        )
    if "stages_real" in result:
        real = result["stages_real"]
        dec = real["decoding"]
        lines += [
            "",
            f"Real alerts ({real['alerts']}): containers {dec['containers_ours']:,.0f} vs "
            f"fastavro {dec['containers_fastavro']:,.0f}; stamps {dec['stamps_ours']:,.0f} vs "
            f"astropy {dec['stamps_astropy']:,.0f}; featurisation {real['featurize']:,.0f} vs "
            f"per alert {real['featurize_per_alert']:,.0f}; transform {real['transform']:,.0f} "
            "alerts/s.",
        ]
    machine = result["machine"]
    lines += [
        "",
        f"Model: {result['model_flops_per_alert'] / 1e9:.3f} GFLOP per alert (kernel 5, crop 21, "
        f"23 features). Machine fp32 matmul: TensorFlow {machine['tensorflow']:.1f}, numpy "
        f"{machine['numpy']:.1f} GFLOP/s (reference: the larger).",
        "",
        "| inference batch | alerts/s | GFLOP/s | % of machine |",
        "|---:|---:|---:|---:|",
    ]
    for b, r in result["stages_simulated"]["inference"].items():
        lines.append(
            f"| {b} | {r['alerts_per_s']:,.0f} | {r['gflops']:.1f} | {r['efficiency']:.0%} |"
        )
    lines += [
        "",
        f"End to end: `stampflow run`, {e2e['workers']} worker(s): {e2e['alerts_per_s']:,.0f} "
        f"alerts/s ({e2e['runtime_s']:.1f} s job time, {e2e['wall_s']:.1f} s wall with start-up), "
        f"peak RSS {e2e['peak_rss_mb']:,.0f} MB (process tree). Baseline on {base['alerts']:,} of "
        f"the same alerts: {base['alerts_per_s']:,.0f} alerts/s. Ratio {result['ratio']:.1f}×. "
        "Every side reads its files from the page cache (read once just before; reading the "
        f"night took {e2e.get('warm_cache_s', 0.0):.1f} s before this run).",
        f"ALeRCE-style batched peer (per-file fastavro, astropy stamps, features and inference "
        f"per batch of {result['batched_peer']['batch']}): "
        f"{result['batched_peer_alerts_per_s']:,.0f} alerts/s; ratio "
        f"{result['ratio_batched_peer']:.1f}×.",
    ]
    dev = result.get("device")
    if dev:
        seen = ", ".join(dev["gpus"]) if dev["gpus"] else "no GPU: CPU only"
        lines += [
            "",
            f"Device: TensorFlow sees {seen}; CPU half-precision units: "
            f"{', '.join(dev['cpu_flags']) or 'none'}. XLA (`--jit-compile`) changes "
            f"probabilities by at most {dev['xla_max_abs_diff']:.1e}; mixed precision "
            f"(`--mixed-precision`, {dev['mixed_policy']}) by at most "
            f"{dev['mixed_max_abs_diff']:.1e} on the benchmark model.",
        ]
        real = dev.get("mixed_real")
        if real:
            lines.append(
                f"Mixed precision with the shipped model on {real['alerts']} real alerts: "
                f"probabilities within {real['max_abs_diff']:.1e}, the same class for "
                f"{real['class_agreement']:.1%} of them."
            )
        lines += [
            "",
            "| batch | plain [alerts/s] | XLA [alerts/s] | mixed precision [alerts/s] |",
            "|---:|---:|---:|---:|",
        ]
        for b in dev["batches"]:
            lines.append(
                f"| {b} | {dev['inference'][b]:,.0f} | {dev['inference_xla'][b]:,.0f} "
                f"| {dev['inference_mixed'][b]:,.0f} |"
            )
    onnx = result.get("onnx")
    if onnx:
        lines += [
            "",
            f"ONNX export with onnxruntime ({onnx['provider']}), TensorFlow measured beside it "
            f"in the same process; probabilities differ by at most {onnx['max_abs_diff']:.1e} "
            f"on {onnx['alerts']} alerts.",
            "",
            "| inference batch | TensorFlow [alerts/s] | onnxruntime [alerts/s] | ratio |",
            "|---:|---:|---:|---:|",
        ]
        for b, r in onnx["onnxruntime"].items():
            tf_rate = onnx["tensorflow"][b]["alerts_per_s"]
            lines.append(
                f"| {b} | {tf_rate:,.0f} | {r['alerts_per_s']:,.0f} "
                f"| {r['alerts_per_s'] / tf_rate:.2f}× |"
            )
    e2e_onnx = result.get("end_to_end_onnx")
    if e2e_onnx:
        lines += [
            "",
            f"End to end with `--runtime onnx` (same night, same run): "
            f"{e2e_onnx['alerts_per_s']:,.0f} alerts/s ({e2e_onnx['runtime_s']:.1f} s job time, "
            f"peak RSS {e2e_onnx['peak_rss_mb']:,.0f} MB); `--runtime tensorflow` "
            f"{e2e['alerts_per_s']:,.0f} alerts/s ({e2e['runtime_s']:.1f} s).",
        ]
    null = result.get("end_to_end_null")
    if null:
        lines += [
            "",
            f"Everything but inference (`--runtime null`, same night, same run): "
            f"{null['alerts_per_s']:,.0f} alerts/s, {null['ms_per_alert_read']:.2f} ms per alert "
            f"read ({null['runtime_s']:.1f} s job time); with the model "
            f"{e2e['ms_per_alert_read']:.2f} ms, so inference costs "
            f"{e2e['ms_per_alert_read'] - null['ms_per_alert_read']:.2f} ms per alert read.",
        ]
    if len(result["scaling"]) > 1:
        lines += [
            "",
            "| alerts | classified | job time [s] | alerts/s | peak RSS [MB] |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in result["scaling"]:
            lines.append(
                f"| {r['alerts']:,} | {r['classified']:,} | {r['runtime_s']:.1f} "
                f"| {r['alerts_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} |"
            )
    return "\n".join(lines)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--sizes wants N,N,..., got {text!r}") from e


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's typed flags."""
    parser.add_argument(
        "--alerts",
        type=positive_int,
        default=None,
        help=f"night size (default {DEFAULT_ALERTS:,}); with --streaming: messages per steady "
        "rate (instead of rate x --stream-seconds)",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ALERTS:,} alerts and shorter measurements"
    )
    parser.add_argument("--json", type=str, default=None, help="also write every number here")
    parser.add_argument(
        "--device",
        action="store_true",
        help="also measure inference on the accelerator TensorFlow sees (says so when none), "
        "at its batch sizes, with and without XLA",
    )
    parser.add_argument(
        "--null-model",
        action="store_true",
        help="also run the night with fixed probabilities and no TensorFlow (--runtime null): "
        "the cost of everything around the model",
    )
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also measure the model's ONNX export with onnxruntime: inference beside "
        "TensorFlow at batch 1, 64, 256, and the night end to end with --runtime onnx",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="end-to-end worker processes (default 1, as `stampflow run`: one process is as fast "
        "as two on 2 cores, TensorFlow already uses both)",
    )
    parser.add_argument(
        "--stage-alerts", type=positive_int, default=None, help="alerts for per-stage rates (1000)"
    )
    parser.add_argument(
        "--baseline-alerts",
        type=positive_int,
        default=None,
        help="alerts run through the baseline (2000)",
    )
    parser.add_argument(
        "--sizes", type=_sizes, default=(), help="extra night sizes for scaling, e.g. 5000,20000"
    )
    parser.add_argument(
        "--cache", type=str, default=str(DEFAULT_CACHE), help="simulated nights and model cache"
    )
    parser.add_argument(
        "--real", type=str, default=str(DEFAULT_REAL), help="real alerts for per-stage rates"
    )
    parser.add_argument("--seed", type=int, default=0, help="simulation and weight seed")
    parser.add_argument(
        "--seconds", type=float, default=None, help="min time per matmul/inference pass (3, 1)"
    )
    parser.add_argument(
        "--profile", type=str, default=None, help="also cProfile an in-process run, report here"
    )
    streaming = parser.add_argument_group(
        "--streaming", "capacity of the streaming job on the Pub/Sub emulator (bench.streaming)"
    )
    streaming.add_argument(
        "--streaming",
        action="store_true",
        help="instead: the streaming job, the publisher and the emulator in their own processes: "
        "publish → row latency at steady rates, backlog drain rates, CPU, nothing lost",
    )
    streaming.add_argument(
        "--streaming-mode",
        choices=("steady", "backlog", "both"),
        default="steady",
        help="steady: publish at each --rates; backlog: publish --backlog messages, then start "
        "the job; both (default steady)",
    )
    streaming.add_argument(
        "--rates",
        type=_rates,
        default=(50.0, 330.0, 1000.0),
        help="steady publish rates [messages/s] (default 50,330,1000)",
    )
    streaming.add_argument(
        "--stream-seconds",
        type=_positive_float,
        default=60.0,
        help="steady: publishing time per rate, rate x this many messages (default 60)",
    )
    streaming.add_argument(
        "--backlog",
        type=_sizes,
        default=(5000, 20000),
        help="backlog sizes [messages] (default 5000,20000)",
    )
    streaming.add_argument(
        "--hold-seconds",
        type=_positive_float,
        default=4.0,
        help="the job's --hold-seconds (default 4)",
    )
    streaming.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=300.0,
        help="longest wait for the rows after the last publish (steady) or the job's start "
        "(backlog) [s]; rows still missing then count as infinitely late (default 300)",
    )
    parser.add_argument("--verbose", action="store_true", help="show library logs")


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--rates wants R,R,..., got {text!r}") from e
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"--rates must be > 0 messages/s, got {text!r}")
    return rates


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _cached_night(cache: Path, n: int, seed: int) -> Path | None:
    """The smallest night simulated before with at least ``n`` alerts (runs use its first
    files), or None."""
    from bench.end_to_end import DETECTIONS_PER_OBJECT

    found = []
    for d in cache.glob(f"night-n*-s{seed}-d{DETECTIONS_PER_OBJECT}"):
        size = d.name.split("-")[1][1:]
        if (d / ".complete").is_file() and size.isdigit() and int(size) >= n:
            found.append((int(size), d))
    return min(found)[1] if found else None


def _streaming(args: argparse.Namespace) -> int:
    from bench import end_to_end, stages, streaming
    from transforms.alerts import decode_alerts

    cache = Path(args.cache)
    mode = args.streaming_mode
    rates = args.rates if mode in ("steady", "both") else ()
    backlogs = args.backlog if mode in ("backlog", "both") else ()
    # --alerts: messages per steady rate (as before); else rate x --stream-seconds.
    per_rate = [args.alerts or max(1, round(r * args.stream_seconds)) for r in rates]
    needed = max([*backlogs, *(n + streaming.WARMUP_MESSAGES for n in per_rate), 256])
    night = _cached_night(cache, needed, args.seed)
    if night is None:
        print(f"simulating {needed:,} alerts (cached) ...")
        night = end_to_end.simulate_night(needed, cache, args.seed)
    print(f"night {night}; exporting the benchmark model (cached) ...")
    files = end_to_end.alert_files(night)[:256]
    fit = [a for f in files for a in decode_alerts(f.read_bytes(), "bench")[0]]
    model_dir = stages.build_bench_model(fit, cache / f"model-s{args.seed}", args.seed)
    work = cache / "streaming" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result = streaming.measure(
        night,
        model_dir,
        rates=rates,
        backlogs=backlogs,
        seconds=args.stream_seconds,
        messages=args.alerts,
        hold_s=args.hold_seconds,
        timeout_s=args.drain_timeout,
        work_dir=work,
    )
    print(streaming.format_markdown(result))
    if args.json:
        Path(args.json).write_text(streaming.to_json(result))
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments; prints the tables. Returns the exit code."""
    from pipeline.run_job import quiet

    if not args.verbose:
        quiet()
    if args.streaming:
        return _streaming(args)
    quick = args.quick
    alerts = args.alerts or (QUICK_ALERTS if quick else DEFAULT_ALERTS)
    started = time.perf_counter()
    result = run_bench(
        alerts=alerts,
        workers=args.workers,
        stage_alerts=args.stage_alerts or (500 if quick else 1000),
        baseline_alerts=args.baseline_alerts or (1000 if quick else 2000),
        cache_dir=args.cache,
        real_dir=args.real,
        sizes=args.sizes,
        seed=args.seed,
        repeat=2 if quick else 3,
        seconds=args.seconds or (1.0 if quick else 3.0),
        profile=args.profile,
        null_model=args.null_model,
        device=args.device,
        onnx=args.onnx,
    )
    result["bench_seconds"] = time.perf_counter() - started
    print(format_markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    """Add ``stampflow bench`` to the command line."""
    parser = subparsers.add_parser(
        name,
        help="measure throughput per stage and end to end against the baseline",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(parser)
    parser.set_defaults(func=main)
