"""Science/reference/difference triplets per class (cf. Fig. 2 of Carrasco-Davis et al. 2021)."""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from astropy.io import fits

from simulator.metadata import CLASS_NAMES
from transforms.schema import STAMP_KINDS

COLUMNS = (("science", "science"), ("template", "template"), ("difference", "difference"))


def decode_cutout(stamp_data: bytes) -> np.ndarray:
    """FITS bytes (gzip-compressed as ZTF's, or plain as Rubin's) -> float32 image of the first
    HDU (astropy reader)."""
    raw = gzip.decompress(stamp_data) if stamp_data[:2] == b"\x1f\x8b" else stamp_data
    with fits.open(io.BytesIO(raw)) as hdul:
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


def _iter_alerts(
    path: Path, unreadable: list[str]
) -> Iterator[tuple[int, dict[str, bytes | None]]]:
    """``(candid, {kind: cutout bytes})`` of every alert under ``path`` with its three cutouts, any
    survey and container the pipeline reads (ZTF files and archives, Rubin Avro, Parquet, wire
    format); what could not be read, and alerts missing a cutout, are named in ``unreadable``."""
    from transforms.sources import NoInputError, decode_paths

    try:
        for item in decode_paths([str(path)]):
            if item.read_error or item.decode_error:
                unreadable.append(f"{item.source}: {item.read_error or item.decode_error}")
            for alert in item.alerts:
                cutouts = {kind: alert.cutout_bytes(kind) for kind in STAMP_KINDS}
                if any(c is None for c in cutouts.values()):
                    unreadable.append(f"{alert.candid}: a cutout is missing")
                    continue
                yield alert.candid, cutouts
    except NoInputError as e:
        raise FileNotFoundError(f"--alerts: {e.reason}") from e


def montage(
    alerts: str | os.PathLike,
    labels: str | os.PathLike,
    out: str | os.PathLike,
    per_class: int = 3,
    by: str = "class",
) -> Path:
    """Draw ``per_class`` alerts of each class as rows of science/template/difference stamps.

    Parameters
    ----------
    alerts
        Directory or file of alerts in any format ``stampflow run`` reads (ZTF or Rubin).
    labels
        ``labels.csv`` with ``candid`` and ``class`` columns.
    out
        PNG path to write.
    per_class
        Rows per class (or per subtype).
    by
        ``class``: rows grouped by class; ``subtype``: ``per_class`` rows of every subtype.

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if by not in ("class", "subtype"):
        raise ValueError(f"by must be 'class' or 'subtype', got {by!r}")
    try:
        with open(labels, newline="") as fh:
            label_of = {int(r["candid"]): r for r in csv.DictReader(fh)}
    except OSError as e:
        raise FileNotFoundError(f"--labels {labels}: {e.strerror or e}") from e
    groups = {c: [] for c in CLASS_NAMES} if by == "class" else {}
    for r in label_of.values():
        if by == "subtype" and not r.get("defect"):
            groups.setdefault((r["class"], r.get("subtype") or ""), [])
    if by == "subtype":
        order = sorted(groups, key=lambda k: (CLASS_NAMES.index(k[0]), k[1]))
        groups = {k: groups[k] for k in order}
    unreadable: list[str] = []
    for candid, cutouts in _iter_alerts(Path(alerts), unreadable):
        row = label_of.get(int(candid))
        if row is None or row.get("defect"):
            continue
        key = row["class"] if by == "class" else (row["class"], row.get("subtype") or "")
        if key in groups and len(groups[key]) < per_class:
            groups[key].append((cutouts, row))
        if all(len(v) >= per_class for v in groups.values()):
            break
    rows = [(row["class"], cutouts, row) for v in groups.values() for cutouts, row in v]
    if not rows:
        skipped = f" ({len(unreadable)} unreadable, e.g. {unreadable[0]})" if unreadable else ""
        raise ValueError(f"no labelled alerts found in {alerts}{skipped}")
    fig, axes = plt.subplots(len(rows), 3, figsize=(4.2, 1.45 * len(rows)), squeeze=False)
    for r, (cls, cutouts, label) in enumerate(rows):
        for col, (key, title) in enumerate(COLUMNS):
            ax = axes[r, col]
            ax.imshow(
                scale_stamp(decode_cutout(cutouts[key])),
                cmap="gray",
                origin="lower",
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        sub = label.get("subtype") or ""
        axes[r, 0].set_ylabel(
            f"{cls}\n{sub}".strip(), fontsize=8, rotation=0, ha="right", va="center"
        )
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
