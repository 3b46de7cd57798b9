"""The shipped Rubin model (``model/default_lsst``): what it declares, its invariance, and that a
run chooses it for Rubin alerts by itself."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from model.augment import dihedral
from pipeline.options import DEFAULT_MODEL, DEFAULT_MODEL_LSST, OptionsError, parse
from pipeline.run_job import run
from tests.helpers import RUBIN, needs_rubin
from transforms.schema import FEATURES_LSST
from transforms.sources import decode_paths
from transforms.surveys import LSST

REAL_RUBIN = (
    RUBIN / "astrolabsoftware__fink-client" / "datatest" / "lsst" / "part-2-918301.avro",
    RUBIN / "astrolabsoftware__fink-tutorials" / "lsst" / "data_transfer",
    RUBIN / "astrolabsoftware__fink-science" / "fink_science" / "data" / "alerts",
)


def test_the_shipped_rubin_model_declares_what_it_is():
    with open(f"{DEFAULT_MODEL_LSST}/stampflow_model.json") as fh:
        meta = json.load(fh)
    assert meta["survey"] == "lsst" and meta["stamp_size"] == 30
    assert meta["features"] == list(FEATURES_LSST)
    assert meta["architecture"]["flips"] is True
    assert meta["name"] == "stampflow-rubin-sim"


@needs_rubin
def test_the_shipped_rubin_model_is_exactly_invariant_on_real_stamps():
    from transforms.featurize import featurize_alerts

    alerts = [a for item in decode_paths([str(p) for p in REAL_RUBIN]) for a in item.alerts]
    result = featurize_alerts(alerts, FEATURES_LSST, "pad", LSST)
    features = np.stack([e["features"] for _, e in result.examples])
    stamps = np.stack([e["stamps"] for _, e in result.examples])
    serve = tf.saved_model.load(DEFAULT_MODEL_LSST).signatures["serving_default"]

    def probs(s):
        out = serve(features=tf.constant(features), stamps=tf.constant(s))
        return out["probabilities"].numpy()

    base = probs(stamps)
    for k in range(1, 8):
        np.testing.assert_allclose(probs(dihedral(stamps, k)), base, atol=1e-5, rtol=0)


@needs_rubin
def test_runs_choose_each_surveys_shipped_model(tmp_path):
    base = ["--input", str(REAL_RUBIN[0]), "--output", str(tmp_path / "unused")]
    auto = parse(base)
    assert {s: m.directory for s, m in auto.models.items()} == {
        "ztf": DEFAULT_MODEL,
        "lsst": DEFAULT_MODEL_LSST,
    }
    assert list(parse([*base, "--survey", "lsst"]).models) == ["lsst"]
    assert list(parse([*base, "--survey", "ztf"]).models) == ["ztf"]
    with pytest.raises(OptionsError, match="is not a lsst model"):
        parse([*base, "--survey", "lsst", "--model", DEFAULT_MODEL, "--model", DEFAULT_MODEL_LSST])

    out = tmp_path / "out"
    summary = run(["--input", *map(str, REAL_RUBIN), "--output", str(out)])
    assert summary["reconciled"] and summary["records_in"] == 36
    assert not summary["dead_letters"]
    rows = pq.read_table(out / "probabilities").to_pylist()
    assert len(rows) == 24 and {r["model_name"] for r in rows} == {"stampflow-rubin-sim"}
