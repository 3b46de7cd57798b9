"""Plain helpers and constants shared by the test modules; fixtures and hooks are in conftest.py.

- where the shared data live, and skip markers for when they are absent: :data:`DATA`,
  :data:`REAL` (= :data:`ALERTS_DIR`), :data:`BAD`, :data:`ALERCE`; :data:`needs_real`,
  :data:`needs_bad`, :data:`needs_alerce`;
- reading the real alerts: :func:`real_containers`, :func:`decoded_alerts`,
  :func:`load_real_alerts`;
- small synthetic ZTF-shaped containers: :data:`MINI_SCHEMA`, :func:`fits_stamp`,
  :func:`mini_record`, :func:`mini_container`;
- independent references written from SPEC §4-§5 with plain NumPy and one astropy ``SkyCoord``
  per alert, sharing no code with ``transforms.features``/``preprocess``:
  :func:`reference_features_26`, :func:`reference_stamps`, :func:`raw_cube`,
  :func:`reference_inputs` (ALeRCE's preprocessing);
- the fuzzers' corpus and mutations: :func:`fuzz_seeds`, :func:`fuzz_settings`,
  :func:`byte_flips`, :func:`truncate`, :func:`flip_bytes`, :func:`splice`, :func:`with_cutouts`;
- :func:`nan_equal` and :func:`export_random_model`; :data:`GCS_BUCKET`, the ``gcs`` fixture's
  bucket.

Project modules (and astropy) are imported inside the functions, so importing this module from
``conftest.py`` stays cheap.
"""

from __future__ import annotations

import glob
import gzip
import io
import math
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import fastavro
import numpy as np
import pytest

if TYPE_CHECKING:
    from transforms.alerts import Alert

__all__ = [
    "ALERCE",
    "ALERTS_DIR",
    "BAD",
    "DATA",
    "GCS_BUCKET",
    "MINI_SCHEMA",
    "REAL",
    "ROOT",
    "RUBIN",
    "RUBIN_SCHEMAS",
    "byte_flips",
    "decoded_alerts",
    "export_random_model",
    "fits_stamp",
    "flip_bytes",
    "fuzz_seeds",
    "fuzz_settings",
    "load_real_alerts",
    "mini_container",
    "mini_record",
    "nan_equal",
    "needs_alerce",
    "needs_bad",
    "needs_real",
    "needs_rubin",
    "raw_cube",
    "real_containers",
    "reference_features_26",
    "reference_inputs",
    "reference_stamps",
    "splice",
    "truncate",
    "with_cutouts",
]

# --- shared data and skip markers -----------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STAMPFLOW_DATA", ROOT.parent / "shared" / "data"))
REAL = DATA / "ztf_alerts"
BAD = DATA / "ztf_alerts_bad"

needs_real = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"real ZTF alerts not found at {REAL} (set STAMPFLOW_DATA)"
)
needs_bad = pytest.mark.skipif(
    not BAD.is_dir(), reason=f"broken ZTF inputs not found at {BAD} (set STAMPFLOW_DATA)"
)

#: The bucket the ``gcs`` fixture (conftest.py) creates on its emulator.
GCS_BUCKET = "night"

RUBIN = DATA / "rubin_alerts"
#: The official Rubin alert schemas (lsst-alert-packet's), for wire-format messages.
RUBIN_SCHEMAS = RUBIN / "lsst-alert-packet-30.2026.2700_pypi"
needs_rubin = pytest.mark.skipif(
    not RUBIN.is_dir(), reason=f"real Rubin alerts not found at {RUBIN} (set STAMPFLOW_DATA)"
)

ALERTS_DIR = REAL  # the name the feature tests use
ALERCE = DATA / "alerce"
needs_alerce = pytest.mark.skipif(
    not ALERCE.is_dir(), reason=f"ALeRCE checkpoints not found at {ALERCE} (set STAMPFLOW_DATA)"
)


# --- comparison -----------------------------------------------------------------------------------
def nan_equal(a, b) -> bool:
    """Deep equality in which NaN equals NaN (fastavro records carry NaN doubles)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(nan_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# --- real alerts ---------------------------------------------------------------------------------
def real_containers() -> list[tuple[str, bytes]]:
    """Every real container (files and tar members) as ``(source, bytes)``."""
    out = []
    for path in sorted(glob.glob(str(REAL / "**" / "*"), recursive=True)):
        if path.endswith(".avro"):
            out.append((path, Path(path).read_bytes()))
        elif path.endswith(".tar.gz"):
            with tarfile.open(path) as tar:
                for m in tar:
                    if m.isfile():
                        out.append((f"{path}!{m.name}", tar.extractfile(m).read()))
    return out


def decoded_alerts(directory) -> list:
    """Every alert under ``directory`` (files and archive members), decoded."""
    from transforms.alerts import decode_alerts
    from transforms.sources import expand_pattern, read_path

    out = []
    for path in expand_pattern(str(directory)):
        for item in read_path(path):
            if isinstance(item, tuple):
                out += decode_alerts(item[1], item[0])[0]
    return out


def default_model_features() -> tuple[str, ...]:
    """The shipped model's feature list (``model/default/stampflow_model.json``)."""
    from model.handler import read_metadata
    from pipeline.options import DEFAULT_MODEL

    return tuple(read_metadata(DEFAULT_MODEL)["features"])


def load_real_alerts() -> list[Alert]:
    """Every record under ``ztf_alerts`` (``.avro`` files and ``.tar.gz`` archives)."""
    from transforms.alerts import decode_alerts

    alerts: list[Alert] = []
    for path in sorted(ALERTS_DIR.rglob("*")):
        if path.suffix == ".avro":
            decoded, _ = decode_alerts(path.read_bytes(), str(path))
            alerts += decoded
        elif path.name.endswith(".tar.gz"):
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.endswith(".avro"):
                        data = tar.extractfile(member).read()
                        decoded, _ = decode_alerts(data, f"{path}!{member.name}")
                        alerts += decoded
    return alerts


# --- synthetic ZTF-shaped alerts ------------------------------------------------------------------
MINI_SCHEMA = {
    "type": "record",
    "name": "alert",
    "namespace": "ztf",
    "fields": [
        {"name": "schemavsn", "type": "string"},
        {"name": "objectId", "type": "string"},
        {"name": "candid", "type": "long"},
        {
            "name": "candidate",
            "type": {
                "type": "record",
                "name": "candidate",
                "fields": [
                    {"name": "jd", "type": "double"},
                    {"name": "ra", "type": "double"},
                    {"name": "dec", "type": "double"},
                    {"name": "fid", "type": "int"},
                    {"name": "magpsf", "type": "float"},
                    {"name": "fwhm", "type": ["null", "float"], "default": None},
                ],
            },
        },
        {
            "name": "prv_candidates",
            "type": ["null", {"type": "array", "items": "string"}],
            "default": None,
        },
    ]
    + [
        {
            "name": name,
            "type": [
                "null",
                {
                    "type": "record",
                    "name": f"cutout_{name}",
                    "fields": [
                        {"name": "fileName", "type": "string"},
                        {"name": "stampData", "type": "bytes"},
                    ],
                },
            ],
            "default": None,
        }
        for name in ("cutoutScience", "cutoutTemplate", "cutoutDifference")
    ],
}


def fits_stamp(image: np.ndarray) -> bytes:
    """gzip-compressed single-HDU float32 FITS, as ZTF encodes cutouts (via astropy)."""
    from astropy.io import fits

    buf = io.BytesIO()
    fits.PrimaryHDU(image.astype(">f4")).writeto(buf)
    return gzip.compress(buf.getvalue(), mtime=0)


def mini_record(i: int, stamp: bytes | None = None) -> dict:
    """A small valid record of :data:`MINI_SCHEMA`."""
    if stamp is None:
        img = np.arange(63 * 63, dtype=np.float32).reshape(63, 63) + i
        img[0, 0] = np.nan
        stamp = fits_stamp(img)
    cut = {"fileName": f"cand{i}.fits.gz", "stampData": stamp}
    return {
        "schemavsn": "test",
        "objectId": f"ZTF99aaaa{i:03d}",
        "candid": 1_000_000_000_000 + i,
        "candidate": {
            "jd": 2460000.5 + i / 100,
            "ra": 10.0 + i,
            "dec": 20.0,
            "fid": 1 + i % 2,
            "magpsf": 18.5,
            "fwhm": None if i % 3 == 0 else 2.25,
        },
        "prv_candidates": None,
        "cutoutScience": cut,
        "cutoutTemplate": cut,
        "cutoutDifference": cut,
    }


def mini_container(records: list[dict], codec: str = "null", block_size: int = 1) -> bytes:
    """An Avro container of ``records`` written by plain fastavro."""
    buf = io.BytesIO()
    fastavro.writer(
        buf, fastavro.parse_schema(MINI_SCHEMA), records, codec=codec, sync_interval=block_size
    )
    return buf.getvalue()


# --- independent references (SPEC §4-§5) ---------------------------------------------------------
def reference_features_26(cand: dict, stats: dict) -> np.ndarray:
    """Straightforward SPEC §4: read, derive, clip, z-score; one alert at a time, float64."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    c = SkyCoord(cand["ra"] * u.deg, cand["dec"] * u.deg, frame="icrs")
    derived = {
        "isdiffpos": 0.0 if cand["isdiffpos"] in ("t", "1") else 1.0,
        "non_detections": cand["ncovhist"] - cand["ndethist"],
        "gal_lat": c.galactic.b.deg,
        "gal_long": c.galactic.l.deg,
        "ecl_lat": c.barycentricmeanecliptic.lat.deg,
        "ecl_long": c.barycentricmeanecliptic.lon.deg,
    }
    table_a1 = {  # SPEC §4 clipping, spelled out again on purpose
        "sgscore1": (-1, None), "distpsnr1": (-1, None), "sgscore2": (-1, None),
        "distpsnr2": (-1, None), "sgscore3": (-1, None), "distpsnr3": (-1, None),
        "fwhm": (None, 10), "ndethist": (None, 20), "ncovhist": (None, 3000),
        "chinr": (-1, 15), "sharpnr": (-1, 1.5), "non_detections": (None, 2000),
        "distnr": (-1, None), "magnr": (-1, None),
    }  # fmt: skip
    out = []
    for name, s in stats.items():
        x = float(derived[name] if name in derived else cand[name])
        lo, hi = table_a1.get(name, (None, None))
        x = max(x, lo) if lo is not None else x
        x = min(x, hi) if hi is not None else x
        out.append((x - s["mean"]) / s["std"])
    return np.array(out)


def reference_stamps(cube: np.ndarray, crop: int = 21) -> np.ndarray:
    """SPEC §5 per image: crop rows/cols around 31, per channel (x - nanmin) / nanmax, NaN -> 0."""
    half = crop // 2
    x = cube[31 - half : 31 + half + 1, 31 - half : 31 + half + 1, :].astype(np.float64)
    out = np.zeros_like(x)
    for c in range(x.shape[2]):
        ch = x[:, :, c]
        if np.all(np.isnan(ch)):
            continue
        ch = ch - np.nanmin(ch)
        with np.errstate(invalid="ignore", divide="ignore"):
            ch = ch / np.nanmax(ch)
        ch[np.isnan(ch)] = 0.0
        out[:, :, c] = ch
    return out


def raw_cube(alert: Alert) -> np.ndarray:
    from transforms.features import stack_stamps
    from transforms.schema import STAMP_KINDS
    from transforms.stamps import decode_stamps

    images = decode_stamps({k: alert.cutout_bytes(k) for k in STAMP_KINDS})
    cube, _ = stack_stamps(images, "pad", alert.candidate.get("xpos"), alert.candidate.get("ypos"))
    return cube


def reference_inputs(alerts, stats):
    """ALeRCE's preprocessing, for the alerts it can handle: full 63×63 stamps, no null feature."""
    keep, feats, stamps = [], [], []
    for alert in alerts:
        cube = raw_cube(alert)
        if any(alert.candidate.get(n) is None for n in stats if n in alert.candidate):
            continue  # ALeRCE turns a null into NaN probabilities; ours imputes (tested elsewhere)
        if any(
            alert.cutout_bytes(k) is None for k in ("science", "template", "difference")
        ) or cube.shape != (63, 63, 3):
            continue
        from transforms.stamps import decode_stamp

        if decode_stamp(alert.cutout_bytes("science")).shape != (63, 63):
            continue  # ALeRCE drops non-63×63 stamps
        keep.append(alert)
        feats.append(reference_features_26(alert.candidate, stats))
        stamps.append(reference_stamps(cube))
    return keep, np.array(feats, np.float32), np.array(stamps, np.float32)


# --- models ---------------------------------------------------------------------------------------
def export_random_model(night, out: Path, version: str = "0.0.1", survey: str = "ztf") -> Path:
    """A small exported model: random weights (kernel 3, for speed), the survey's default features
    (ZTF's 23 production ones; Rubin's), and the tf.Transform graph fitted with Beam on ``night``
    itself (unlabelled alerts: only their feature and pixel statistics are used)."""
    from model.export import export_model, fit_transform
    from model.network import NetworkConfig, build_network
    from transforms.featurize import featurize_alerts
    from transforms.surveys import get_survey

    adapter = get_survey(survey)
    names = adapter.default_features
    alerts = [a for a in decoded_alerts(night) if a.survey is adapter]
    result = featurize_alerts(alerts, names, "pad", adapter)
    feats = np.stack([e["features"] for _, e in result.examples])
    stamps = np.stack([e["stamps"] for _, e in result.examples])
    crop = 21 if survey == "ztf" else adapter.stamp_size
    transform = fit_transform(feats, stamps, names, str(out / "tft"), crop)
    cfg = NetworkConfig(kernel_size=3, crop=crop, n_features=len(names))
    model = out / "model"
    export_model(
        build_network(cfg),
        transform,
        str(model),
        cfg,
        names,
        "test-model" if survey == "ztf" else f"test-model-{survey}",
        version,
        survey=survey,
    )
    return model


# --- fuzzing: the corpus and the mutations tests/test_fuzz.py and test_first_pass.py share -----
def fuzz_seeds() -> list[bytes]:
    """Seed containers to mutate: every seventh small real container, or made ones without data."""
    if REAL.is_dir():
        return [data for _, data in real_containers() if len(data) < 120_000][::7]
    seeds = [mini_container([mini_record(i)]) for i in range(4)]
    seeds.append(mini_container([mini_record(i) for i in range(5)], block_size=2))
    return seeds


def fuzz_settings(max_examples: int):
    """Hypothesis settings for the fuzzers: derandomised (reproducible in CI), large inputs ok."""
    from datetime import timedelta

    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=max_examples,
        deadline=timedelta(seconds=5),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=True,
    )


def byte_flips(max_size: int):
    """Strategy: up to ``max_size`` ``(where in [0, 1], xor mask)`` pairs for :func:`flip_bytes`."""
    from hypothesis import strategies as st

    return st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=max_size)


def truncate(data: bytes, frac: float) -> bytes:
    """The first ``frac`` of ``data``."""
    return data[: int(len(data) * frac)]


def flip_bytes(data: bytes, flips, start: int = 0, span: int | None = None) -> bytes:
    """``data`` with bytes XOR-ed at fractions of ``span`` bytes from ``start`` (all by default)."""
    buf = bytearray(data)
    span = len(buf) - start if span is None else span
    for where, xor in flips:
        buf[min(start + int(where * span), len(buf) - 1)] ^= xor
    return bytes(buf)


def splice(a: bytes, b: bytes, i: float, j: float) -> bytes:
    """The first ``i`` of ``a`` followed by ``b`` from its fraction ``j`` on."""
    return a[: int(len(a) * i)] + b[int(len(b) * j) :]


def with_cutouts(data: bytes, field: str, junk: bytes) -> tuple[bytes, int]:
    """``data`` re-written with every record's ``field`` cutout replaced by ``junk``.

    Returns
    -------
    (bytes, int)
        The new container and its number of records.
    """
    reader = fastavro.reader(io.BytesIO(data))
    records = list(reader)
    for record in records:
        record[field] = {"fileName": "junk", "stampData": junk}
    buf = io.BytesIO()
    fastavro.writer(buf, reader.writer_schema, records)
    return buf.getvalue(), len(records)
