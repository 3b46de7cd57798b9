"""Shared fixtures: real alerts from ../shared/data (skipped with a reason when absent) and small
synthetic ZTF-shaped containers built here, so every test module also runs without the data."""

from __future__ import annotations

import glob
import gzip
import io
import math
import os
import tarfile
from pathlib import Path

import fastavro
import numpy as np
import pytest

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


def nan_equal(a, b) -> bool:
    """Deep equality in which NaN equals NaN (fastavro records carry NaN doubles)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(nan_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


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


@pytest.fixture(scope="session")
def real() -> list[tuple[str, bytes]]:
    if not REAL.is_dir():
        pytest.skip(f"real ZTF alerts not found at {REAL} (set STAMPFLOW_DATA)")
    return real_containers()


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


def export_random_model(night, out: Path, version: str = "0.0.1") -> Path:
    """A small exported model: random weights (kernel 3, for speed), the production features, and
    the tf.Transform graph fitted with Beam on ``night`` itself."""
    from model.export import export_model, fit_transform
    from model.network import NetworkConfig, build_network
    from transforms.featurize import featurize_alerts
    from transforms.schema import FEATURES_PRODUCTION

    result = featurize_alerts(decoded_alerts(night), FEATURES_PRODUCTION, "pad")
    feats = np.stack([e["features"] for _, e in result.examples])
    stamps = np.stack([e["stamps"] for _, e in result.examples])
    transform = fit_transform(feats, stamps, FEATURES_PRODUCTION, str(out / "tft"), 21)
    cfg = NetworkConfig(kernel_size=3)
    model = out / "model"
    export_model(
        build_network(cfg), transform, str(model), cfg, FEATURES_PRODUCTION, "test-model", version
    )
    return model
