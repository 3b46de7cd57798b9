"""One outcome-count scheme for every job: what happened to each record, counted by key.

Every record ends in exactly one outcome, counted under a key named in :mod:`transforms.schema`
(``COUNT_*``)::

    decoded                      an alert came out of a container
    classified, class=C, rule=R  a probability row (and its class and rule)
    skipped=REASON               not classified on purpose (not a first detection, a duplicate)
    dead=STAGE, reason=STAGE:CODE  a dead letter

:class:`CountOutcomes` turns the job's PCollections into these keys and counts each key twice
over: as a Beam counter of the same name (readable while a stream runs on Dataflow and after any
job) and in a tally of the worker process (:mod:`pipeline.progress`: the progress line, and a
local stream's summary); in batch also, exactly, as ``counts.json`` in the output.
:func:`summarise` makes the summary from either; the batch and streaming jobs share it, and the
decode job (:mod:`pipeline.decode_job`) counts with the same keys.

Reconciliation (batch): ``records_in = decoded + dead letters of read/decode``, and every decoded
alert is classified, skipped or dead-lettered after decoding. Sink dead letters (a row BigQuery
refused, stage ``bigquery``) are reported with the others but are not part of that sum: the row
was written to the files (or topic) all the same. A stream never reconciles (alerts are in
flight when it stops): its ``reconciled`` is None.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.dead_letters import reason_code
from transforms.schema import (
    CLASS_NAMES,
    COUNT_CLASS_PREFIX,
    COUNT_CLASSIFIED,
    COUNT_DEAD_PREFIX,
    COUNT_DECODED,
    COUNT_REASON_PREFIX,
    COUNT_RULE_PREFIX,
    COUNT_SKIPPED_PREFIX,
    INPUT_STAGES,
    METRICS_NAMESPACE,
    SINK_STAGES,
    TAG_ALERTS,
    TAG_DEAD_LETTERS,
    TAG_ROWS,
    TAG_SKIPPED,
)

__all__ = [
    "COUNTS_FILE",
    "CountOutcomes",
    "counters",
    "dead_keys",
    "format_summary",
    "group",
    "row_keys",
    "skip_key",
    "summarise",
]

#: The exact counts of a batch run, under ``--output``.
COUNTS_FILE = "counts.json"


def row_keys(row: Mapping[str, Any]) -> list[str]:
    """Keys of a probability row: classified, its class and the rule that fired (if one did)."""
    keys = [COUNT_CLASSIFIED, f"{COUNT_CLASS_PREFIX}{row['predicted_class']}"]
    if row.get("rule"):
        keys.append(f"{COUNT_RULE_PREFIX}{row['rule']}")
    return keys


def skip_key(reason: str) -> str:
    """Key of a skipped alert."""
    return f"{COUNT_SKIPPED_PREFIX}{reason}"


def dead_keys(letter: Mapping[str, Any]) -> list[str]:
    """Keys of a dead letter: its stage and ``stage:reason code``."""
    stage = letter["stage"]
    return [f"{COUNT_DEAD_PREFIX}{stage}", f"{COUNT_REASON_PREFIX}{stage}:{reason_code(letter)}"]


def group(counts: Mapping[str, int], prefix: str) -> dict[str, int]:
    """The counts whose key starts with ``prefix``, by the rest of the key (sorted)."""
    return {k[len(prefix) :]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}


def _decoded_keys(_: Any) -> list[str]:
    return [COUNT_DECODED]


def _skip_keys(item: tuple[str, Any]) -> list[str]:
    return [skip_key(item[0])]


class _CountPerBundle(beam.DoFn):
    """Outcome keys of each element, summed per bundle: Beam counters, tallies, ``(key, n)``.

    Nothing is emitted per element (one alert would otherwise cost an extra element and a
    counter call per key); each bundle ends with one counter increment and, when asked, one
    ``(key, n)`` pair per key it saw.

    Parameters
    ----------
    keys
        Element → its outcome keys.
    progress
        Also print the progress line of a local run.
    emit
        Emit the ``(key, n)`` pairs (batch's exact ``counts.json``).
    """

    def __init__(self, keys: Any, progress: bool, emit: bool) -> None:
        self.keys, self.progress, self.emit = keys, progress, emit

    def setup(self) -> None:
        from pipeline import progress

        self._counters: dict[str, Any] = {}
        self._tally = progress.tally
        if self.progress:
            progress.enable_lines()

    def start_bundle(self) -> None:
        self._bundle: dict[str, int] = {}

    def process(self, element: Any) -> Iterator[Any]:
        bundle = self._bundle
        for key in self.keys(element):
            bundle[key] = bundle.get(key, 0) + 1
        return iter(())

    def finish_bundle(self) -> Iterator[Any]:
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.timestamp import MAX_TIMESTAMP
        from apache_beam.utils.windowed_value import WindowedValue

        for key, n in self._bundle.items():
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = Metrics.counter(METRICS_NAMESPACE, key)
            counter.inc(n)
            self._tally(key, n)
            if self.emit:
                yield WindowedValue((key, n), MAX_TIMESTAMP - 1, [GlobalWindow()])
        self._bundle = {}


class CountOutcomes(beam.PTransform):
    """``{alerts, rows, skipped, dead_letters}`` → outcome keys, counted (see module docstring).

    Parameters
    ----------
    output
        Batch: write the exact ``{key: count}`` to ``output/counts.json``; None (streaming):
        Beam counters only (a global count never ends on an unbounded input).
    progress
        Also feed the progress line of a local run (:mod:`pipeline.progress`).
    """

    def __init__(self, output: str | None = None, progress: bool = False) -> None:
        super().__init__()
        self.output, self.progress = output, progress

    def expand(self, pcolls: Mapping[str, beam.PCollection]) -> Any:
        emit = self.output is not None
        keyers = {
            TAG_ALERTS: ("Decoded", _decoded_keys),
            TAG_ROWS: ("Rows", row_keys),
            TAG_SKIPPED: ("Skipped", _skip_keys),
            TAG_DEAD_LETTERS: ("DeadLetters", dead_keys),
        }
        # One counting step per input, before any Flatten: the Python direct runner loses the
        # metric updates of some bundles a ParDo reads through a Flatten (seen with Beam 2.x:
        # the counter of one input never reported).
        counted = tuple(
            pcolls[tag] | f"Count{name}" >> beam.ParDo(_CountPerBundle(keys, self.progress, emit))
            for tag, (name, keys) in keyers.items()
        )
        if not emit:
            return counted
        return (
            counted
            | "AllCounts" >> beam.Flatten()
            | "Sum" >> beam.CombinePerKey(sum)
            | "ToDict" >> beam.combiners.ToDict()
            | "ToJson" >> beam.Map(lambda c: json.dumps(c, sort_keys=True))
            | "WriteCounts"
            >> beam.io.WriteToText(
                FileSystems.join(self.output, "counts"),
                file_name_suffix=".json",
                shard_name_template="",
            )
        )


def read_counts(output: str) -> dict[str, int]:
    """The ``counts.json`` a batch run wrote."""
    with FileSystems.open(FileSystems.join(output, COUNTS_FILE)) as f:
        return json.load(f)


def counters(result: Any) -> dict[str, int]:
    """The job's ``stampflow`` counters (committed, else attempted) by name."""
    out: dict[str, int] = {}
    try:
        for c in result.metrics().query()["counters"]:
            if c.key.metric.namespace != METRICS_NAMESPACE:
                continue
            value = c.committed if c.committed is not None else c.attempted
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    except Exception:  # metrics are a courtesy after a cancel; the outputs are the product
        pass
    return out


def summarise(
    counts: Mapping[str, int],
    model: Any,
    runtime_s: float,
    state: str | None = None,
) -> dict[str, Any]:
    """The run summary from outcome counts.

    Parameters
    ----------
    counts
        Outcome counts (``counts.json`` of a batch run, or a stream's counters).
    model
        The :class:`pipeline.options.ModelInfo` served.
    runtime_s
        Wall time of the run [s].
    state
        A stream's final state (``RUNNING``, ``CANCELLED`` ...); None for a batch run.

    Returns
    -------
    dict
        ``records_in``, ``classified``, ``skipped``, ``dead_letters`` (by stage, sinks included),
        ``dead_letter_reasons``, ``per_class``, ``rules_fired``, model, runtime and
        ``reconciled`` (None for a stream).
    """
    dead = group(counts, COUNT_DEAD_PREFIX)
    skipped = group(counts, COUNT_SKIPPED_PREFIX)
    classified = counts.get(COUNT_CLASSIFIED, 0)
    decoded = counts.get(COUNT_DECODED, 0)
    before_alert = sum(dead.get(s, 0) for s in INPUT_STAGES)
    at_sinks = sum(dead.get(s, 0) for s in SINK_STAGES)
    after_alert = sum(dead.values()) - before_alert - at_sinks
    records_in = decoded + before_alert
    balanced = decoded == classified + sum(skipped.values()) + after_alert
    summary: dict[str, Any] = {}
    if state is not None:
        summary["state"] = state
    summary.update(
        records_in=records_in,
        classified=classified,
        skipped=skipped,
        dead_letters=dead,
        dead_letter_reasons=group(counts, COUNT_REASON_PREFIX),
        per_class={c: counts.get(f"{COUNT_CLASS_PREFIX}{c}", 0) for c in CLASS_NAMES},
        rules_fired=group(counts, COUNT_RULE_PREFIX),
        model_name=model.name,
        model_version=model.version,
        runtime_s=round(runtime_s, 3),
        alerts_per_s=round(records_in / runtime_s, 1) if runtime_s > 0 else None,
        reconciled=None if state is not None else balanced,
    )
    return summary


def format_summary(s: Mapping[str, Any], output: str | None) -> str:
    """A short human summary for the end of a run (``output`` None: a stream's)."""
    skipped = sum(s["skipped"].values())
    dead = sum(s["dead_letters"].values())
    classes = ", ".join(f"{c} {n}" for c, n in s["per_class"].items())
    lines = [
        f"{s['records_in']} records in → {s['classified']} classified, {skipped} skipped, "
        f"{dead} dead letters ({s['runtime_s']:.1f} s, {s['alerts_per_s']} alerts/s)",
        f"classes: {classes}",
    ]
    if "state" in s:
        lines.insert(0, f"streaming job {s['state']} (counts so far; a stream does not reconcile)")
    if s["rules_fired"]:
        lines.append("rules: " + ", ".join(f"{k} {v}" for k, v in s["rules_fired"].items()))
    if s["skipped"]:
        lines.append("skipped: " + ", ".join(f"{k} {v}" for k, v in s["skipped"].items()))
    if s["dead_letters"]:
        lines.append("dead letters: " + ", ".join(f"{k} {v}" for k, v in s["dead_letters"].items()))
    sinks = {k: v for k, v in s["dead_letters"].items() if k in SINK_STAGES}
    if sinks:
        lines.append(
            "rows refused by a sink (still in the other outputs): "
            + ", ".join(f"{k} {v}" for k, v in sinks.items())
        )
    lines.append(f"model: {s['model_name']} {s['model_version']}")
    if output is not None:
        out = output if "://" in output else os.path.abspath(output)
        lines.append(
            f"outputs: {out}/ (probabilities/, sky_density/, sky_map.png, sn_candidates.html, "
            "dead_letters/, summary.json)"
        )
    return "\n".join(lines)
