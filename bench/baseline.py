"""The baselines: the way peer brokers classify a night, in one process.

``baseline_rate`` is the peer-style baseline, one alert at a time; ``batched_peer_rate`` is the
ALeRCE-style batched peer (their stamp-classifier step consumes a batch of Kafka messages, builds
the features of the batch with pandas and calls the model once per batch): per-file
``fastavro.reader``, astropy stamps, features and inference per batch of first detections.

The per-alert baseline in detail:

For each alert file: ``fastavro.reader`` (re-parsing the writer schema per file), a first-
detection check on the alert's own history, the three cutouts through ``gzip`` + astropy
``fits.open``, the metadata features computed for that alert alone (one astropy ``SkyCoord``
transform per alert), and one call of the same SavedModel's serving signature per alert.

Fairness: both sides read every alert and classify only first detections; both report alerts
*read* per second. The baseline uses the pipeline's own pure functions for the history check
and the feature arithmetic (so it computes the same thing), called per alert instead of per
batch; it skips the pipeline's Beam overheads, its sinks and its dead-letter bookkeeping.
"""

from __future__ import annotations

import gzip
import io
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.serving import load_serving
from bench.timing import best_rate
from transforms.schema import CUTOUT_FIELDS, FEATURES_PRODUCTION, STAMP_KINDS, STAMP_SIZE

__all__ = [
    "astropy_cube",
    "baseline_rate",
    "batched_peer_rate",
    "classify_file",
    "per_alert_features",
    "per_alert_features_rate",
]


def astropy_cube(record: dict[str, Any]) -> np.ndarray | None:
    """``float32 [63, 63, 3]`` stamps of a fastavro record via astropy, or None if unusable."""
    from astropy.io import fits

    planes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-standard cards in some cutouts
        for kind in STAMP_KINDS:
            cutout = record.get(CUTOUT_FIELDS[kind])
            if not cutout or not cutout.get("stampData"):
                return None
            try:
                with fits.open(io.BytesIO(gzip.decompress(cutout["stampData"]))) as hdul:
                    data = np.asarray(hdul[0].data, dtype=np.float32)
            except (OSError, ValueError, TypeError):
                return None
            if data.shape != (STAMP_SIZE, STAMP_SIZE):
                return None
            planes.append(data)
    return np.stack(planes, axis=-1)


def per_alert_features(candidate: dict[str, Any]) -> np.ndarray | None:
    """Raw features of one candidate, computed alone (one ``SkyCoord`` per call), or None."""
    from transforms.features import extract_features

    batch = extract_features([candidate], FEATURES_PRODUCTION)
    return batch.values[0] if batch.valid[0] else None


def classify_file(path: str, predict: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> list:
    """Classify the first detections in one alert file, the peer way.

    Parameters
    ----------
    path
        An Avro alert file.
    predict
        ``predict(features [1, F], stamps [1, 63, 63, 3]) -> probabilities [1, 5]``.

    Returns
    -------
    list
        ``(candid, probabilities)`` for the alerts classified (others were skipped or unusable).
    """
    import fastavro

    from transforms.rules import history_skip_reason

    out = []
    with open(path, "rb") as fh:
        records = list(fastavro.reader(fh))
    for record in records:
        candidate = record["candidate"]
        if history_skip_reason(candidate, record.get("prv_candidates") or []) is not None:
            continue
        cube = astropy_cube(record)
        if cube is None:
            continue
        features = per_alert_features(candidate)
        if features is None:
            continue
        out.append((record["candid"], predict(features[None], cube[None])[0]))
    return out


def baseline_rate(paths: Sequence[str | Path], model_dir: str | Path) -> dict[str, Any]:
    """Time :func:`classify_file` over ``paths`` (model loaded and warmed up beforehand).

    Parameters
    ----------
    paths
        Alert files (one alert each for simulated nights).
    model_dir
        The exported model, the same one the pipeline runs.

    Returns
    -------
    dict
        ``alerts`` read, ``classified``, ``seconds`` and ``alerts_per_s``.
    """
    import fastavro

    from transforms.features import sky_coordinates

    predict = load_serving(model_dir)
    predict(
        np.zeros((1, len(FEATURES_PRODUCTION)), np.float32),
        np.zeros((1, STAMP_SIZE, STAMP_SIZE, 3), np.float32),
    )
    sky_coordinates(np.zeros(1), np.zeros(1))  # astropy's one-off set-up is not charged
    n_alerts = 0
    for path in paths:  # count records outside the timed loop
        with open(path, "rb") as fh:
            n_alerts += sum(block.num_records for block in fastavro.block_reader(fh))
    classified = 0
    t0 = time.perf_counter()
    for path in paths:
        classified += len(classify_file(str(path), predict))
    seconds = time.perf_counter() - t0
    return {
        "files": len(paths),
        "alerts": n_alerts,
        "classified": classified,
        "seconds": seconds,
        "alerts_per_s": n_alerts / seconds if seconds > 0 else 0.0,
    }


def batched_peer_rate(
    paths: Sequence[str | Path], model_dir: str | Path, batch: int = 64
) -> dict[str, Any]:
    """The ALeRCE-style batched peer over ``paths``: read and check per file, classify per batch.

    Parameters
    ----------
    paths
        Alert files.
    model_dir
        The same exported model.
    batch
        First detections per feature/inference batch (ALeRCE's steps consume Kafka batches).

    Returns
    -------
    dict
        ``alerts`` read, ``classified``, ``seconds``, ``alerts_per_s`` and ``batch``.
    """
    import fastavro

    from transforms.features import extract_features, sky_coordinates
    from transforms.rules import history_skip_reason

    predict = load_serving(model_dir)
    predict(
        np.zeros((batch, len(FEATURES_PRODUCTION)), np.float32),
        np.zeros((batch, STAMP_SIZE, STAMP_SIZE, 3), np.float32),
    )
    sky_coordinates(np.zeros(1), np.zeros(1))
    pending: list[tuple[dict[str, Any], np.ndarray]] = []
    counts = {"alerts": 0, "classified": 0}

    def flush() -> None:
        if not pending:
            return
        feats = extract_features([c for c, _ in pending], FEATURES_PRODUCTION)
        keep = [i for i in range(len(pending)) if feats.valid[i]]
        if keep:
            predict(feats.values[keep], np.stack([pending[i][1] for i in keep]))
            counts["classified"] += len(keep)
        pending.clear()

    t0 = time.perf_counter()
    for path in paths:
        with open(path, "rb") as fh:
            records = list(fastavro.reader(fh))
        counts["alerts"] += len(records)
        for record in records:
            candidate = record["candidate"]
            if history_skip_reason(candidate, record.get("prv_candidates") or []) is not None:
                continue
            cube = astropy_cube(record)
            if cube is not None:
                pending.append((candidate, cube))
            if len(pending) >= batch:
                flush()
    flush()
    seconds = time.perf_counter() - t0
    return {
        "files": len(paths),
        **counts,
        "batch": batch,
        "seconds": seconds,
        "alerts_per_s": counts["alerts"] / seconds if seconds > 0 else 0.0,
    }


def per_alert_features_rate(candidates: Sequence[dict[str, Any]], repeat: int = 3) -> float:
    """alerts/s of :func:`per_alert_features` (the per-alert featurisation baseline)."""
    from transforms.features import sky_coordinates

    sky_coordinates(np.zeros(1), np.zeros(1))

    def once() -> int:
        for c in candidates:
            per_alert_features(c)
        return len(candidates)

    return best_rate(once, repeat)
