"""Science/reference/difference triplets per class (cf. Fig. 2 of Carrasco-Davis et al. 2021)."""

from __future__ import annotations

import csv
import gzip
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import fastavro
import numpy as np
from astropy.io import fits

from simulator.metadata import CLASS_NAMES

COLUMNS = (
    ("cutoutScience", "science"),
    ("cutoutTemplate", "template"),
    ("cutoutDifference", "difference"),
)


def decode_cutout(stamp_data: bytes) -> np.ndarray:
    """gzip FITS bytes -> float32 image (astropy reader)."""
    with fits.open(io.BytesIO(gzip.decompress(stamp_data))) as hdul:
        return np.asarray(hdul[0].data, dtype=np.float32)


def scale_stamp(img: np.ndarray, lo: float = 1.0, hi: float = 99.5) -> np.ndarray:
    """Robust display scaling to [0, 1]: clip at percentiles of the finite pixels (zscale-like).

    NaN pixels map to 0 so masks show as black.
    """
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros_like(img)
    vmin, vmax = np.percentile(finite, [lo, hi])
    out = (img - vmin) / (vmax - vmin if vmax > vmin else 1.0)
    return np.nan_to_num(np.clip(out, 0, 1), nan=0.0)


def _iter_alerts(path: Path) -> Iterator[dict]:
    """Alerts from a directory of .avro files or a ztf_public tar.gz (or a single file)."""
    if path.is_dir():
        tars = sorted(path.glob("*.tar.gz"))
        avros = sorted(path.glob("*.avro"))
        for t in tars:
            yield from _iter_alerts(t)
        for f in avros:
            with f.open("rb") as fh:
                yield from fastavro.reader(fh)
    elif path.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".avro"):
                    yield from fastavro.reader(tar.extractfile(member))
    else:
        with path.open("rb") as fh:
            yield from fastavro.reader(fh)


def montage(
    alerts: str | os.PathLike,
    labels: str | os.PathLike,
    out: str | os.PathLike,
    per_class: int = 3,
) -> Path:
    """Draw ``per_class`` alerts of each class as rows of science/template/difference stamps.

    Parameters
    ----------
    alerts
        Directory of ``.avro`` files / ``ztf_public_*.tar.gz``, or one such file.
    labels
        ``labels.csv`` with ``candid`` and ``class`` columns.
    out
        PNG path to write.
    per_class
        Rows per class.

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(labels, newline="") as fh:
        label_of = {int(r["candid"]): r for r in csv.DictReader(fh)}
    chosen: dict[str, list[dict]] = {c: [] for c in CLASS_NAMES}
    for alert in _iter_alerts(Path(alerts)):
        row = label_of.get(int(alert["candid"]))
        if row is None or row.get("defect") or len(chosen[row["class"]]) >= per_class:
            continue
        chosen[row["class"]].append(alert | {"_label": row})
        if all(len(v) >= per_class for v in chosen.values()):
            break
    rows = [(c, a) for c in CLASS_NAMES for a in chosen[c]]
    if not rows:
        raise ValueError(f"no labelled alerts found in {alerts}")
    fig, axes = plt.subplots(len(rows), 3, figsize=(4.2, 1.45 * len(rows)), squeeze=False)
    for r, (cls, alert) in enumerate(rows):
        for col, (key, title) in enumerate(COLUMNS):
            ax = axes[r, col]
            ax.imshow(
                scale_stamp(decode_cutout(alert[key]["stampData"])),
                cmap="gray",
                origin="lower",
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        sub = alert["_label"].get("subtype") or ""
        axes[r, 0].set_ylabel(
            f"{cls}\n{sub}".strip(), fontsize=8, rotation=0, ha="right", va="center"
        )
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
