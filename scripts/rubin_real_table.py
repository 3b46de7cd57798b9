"""The README's table of the real Rubin alerts: the shipped Rubin model's class and probabilities
per alert, beside what is known about each (a known solar-system object, Fink's SIMBAD type).

    stampflow run --input DIRS --output OUT --survey lsst --select all --rules none
    python scripts/rubin_real_table.py OUT DIRS

Reads the run's ``probabilities/`` rows and, for each alert, its packet (``decode_paths``): whether
it is a first detection, its ``ssObjectId`` and Fink's ``xm.simbad_otype`` where the copy has one.
An "expected" class is given only where such a fact implies one (known solar-system object →
asteroid; SIMBAD QSO, AGN, Seyfert, AG? → AGN; a variable-star type → VS).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transforms.schema import CLASS_NAMES  # noqa: E402
from transforms.sources import decode_paths  # noqa: E402

#: SIMBAD object types that imply a class (others are listed but imply none).
SIMBAD_CLASS = {
    "QSO": "AGN",
    "AGN": "AGN",
    "Sy1": "AGN",
    "Sy2": "AGN",
    "AG?": "AGN",
    "Q?": "AGN",
    "V*": "VS",
    "RR*": "VS",
    "EB*": "VS",
    "Mi*": "VS",
    "LP*": "VS",
}


def facts(paths: list[str]) -> dict[int, dict]:
    """What the packets say about each alert, by diaSourceId."""
    out = {}
    for item in decode_paths(paths):
        for a in item.alerts:
            rec = a.record
            xm = rec.get("xm") if isinstance(rec.get("xm"), dict) else {}
            otype = (xm or {}).get("simbad_otype")
            otype = otype if otype not in (None, "", "Unknown", "Fail", "nan") else None
            sso = a.survey.known_sso(rec)
            expected = "asteroid" if sso else SIMBAD_CLASS.get(otype or "")
            out[a.candid] = {
                "first": not a.earlier_detection,
                "known": "known SSO" if sso else (f"SIMBAD {otype}" if otype else ""),
                "expected": expected,
                "band": rec["diaSource"].get("band"),
                "snr": rec["diaSource"].get("snr"),
            }
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python scripts/rubin_real_table.py RUN_OUTPUT ALERT_DIRS...", file=sys.stderr)
        return 2
    out_dir, inputs = argv[0], argv[1:]
    rows = pq.read_table(Path(out_dir) / "probabilities").to_pylist()
    known = facts(inputs)
    missing = [r["candid"] for r in rows if r["candid"] not in known]
    if missing:
        print(
            f"{len(missing)} rows of {out_dir} are not among the alerts given (e.g. "
            f"{missing[0]}): give the run's inputs",
            file=sys.stderr,
        )
        return 2
    rows.sort(key=lambda r: (not known[r["candid"]]["first"], r["candid"]))
    print(
        "| diaSourceId | first det. | band | S/N | class | "
        + " | ".join(f"p({c})" for c in CLASS_NAMES)
        + " | known | agrees |"
    )
    print("|---|:-:|:-:|--:|---|" + "--:|" * len(CLASS_NAMES) + "---|:-:|")
    agree = total = 0
    for r in rows:
        k = known[r["candid"]]
        ok = ""
        if k["expected"]:
            total += 1
            agree += r["predicted_class"] == k["expected"]
            ok = "yes" if r["predicted_class"] == k["expected"] else f"no ({k['expected']})"
        probs = " | ".join(f"{r['p_' + c]:.2f}" for c in CLASS_NAMES)
        snr = "" if k["snr"] is None else f"{k['snr']:.1f}"
        print(
            f"| {r['candid']} | {'yes' if k['first'] else 'no'} | {k['band']} | {snr} "
            f"| {r['predicted_class']} | {probs} | {k['known']} | {ok} |"
        )
    counts = {c: sum(r["predicted_class"] == c for r in rows) for c in CLASS_NAMES}
    firsts = [r for r in rows if known[r["candid"]]["first"]]
    fcounts = {c: sum(r["predicted_class"] == c for r in firsts) for c in CLASS_NAMES}
    print()
    print(
        f"{len(rows)} alerts: {counts}; first detections ({len(firsts)}): {fcounts}; "
        f"agrees with a known fact: {agree}/{total}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
