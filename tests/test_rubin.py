"""Rubin (LSST) alerts through every stage (issue 26): the 36 real alerts from Fink's Avro and
Parquet copies and from wire-format messages, decoded by the LSST adapter, selected from their
histories, featurised at Rubin's scale, classified by a small Rubin-shaped model (random weights:
the shapes and the plumbing are under test, not the classes) and by the rules; broken Rubin inputs
each a dead letter with its reason; ZTF and Rubin alerts in one run."""

from __future__ import annotations

import io
import json
import math
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from pipeline.options import OptionsError, parse
from pipeline.run_job import run
from tests.helpers import REAL, RUBIN, RUBIN_SCHEMAS, export_random_model, needs_rubin
from transforms import wire
from transforms.alerts import decode_alerts
from transforms.schema import FEATURES_LSST, STAMP_KINDS
from transforms.sources import decode_paths
from transforms.stamps import decode_stamp
from transforms.surveys import LSST, ZTF

pytestmark = needs_rubin

#: The real alerts: Fink's Avro (7), Fink's transfer Parquet (2 x 2), fink-science's Parquet (25).
REAL_RUBIN = (
    RUBIN / "astrolabsoftware__fink-client" / "datatest" / "lsst" / "part-2-918301.avro",
    RUBIN / "astrolabsoftware__fink-tutorials" / "lsst" / "data_transfer",
    RUBIN / "astrolabsoftware__fink-science" / "fink_science" / "data" / "alerts",
)


def _same(a, b) -> bool:
    """Records equal, NaN equal to NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@pytest.fixture(scope="module")
def rubin_alerts():
    alerts = [a for it in decode_paths([str(p) for p in REAL_RUBIN]) for a in it.alerts]
    assert len(alerts) == 36
    return alerts


@pytest.fixture
def schemas():
    wire.configure_schemas([str(RUBIN_SCHEMAS)])
    yield
    wire.configure_schemas([])


@pytest.fixture(scope="module")
def rubin_model(tmp_path_factory):
    return export_random_model(
        REAL_RUBIN[2], tmp_path_factory.mktemp("rubin_model"), "0.0.1", survey="lsst"
    )


@pytest.fixture(scope="module")
def wire_dir(rubin_alerts, tmp_path_factory):
    """The 36 real alerts as wire-format message files (schema v10.0, the version they carry)."""
    out = tmp_path_factory.mktemp("wire")
    wire.configure_schemas([str(RUBIN_SCHEMAS)])
    try:
        for a in rubin_alerts:
            (out / f"{a.candid}.wire").write_bytes(wire.to_wire(a.record))
    finally:
        wire.configure_schemas([])
    return out


# --- pure: the adapter ---------------------------------------------------------------------------
def test_every_real_rubin_alert_decodes_with_the_lsst_adapter(rubin_alerts):
    assert {a.survey for a in rubin_alerts} == {LSST}
    assert len({a.candid for a in rubin_alerts}) == 36
    # First detection from the history, as counted directly from prvDiaSources.
    direct = [
        not any(
            p["midpointMjdTai"] < a.record["diaSource"]["midpointMjdTai"]
            for p in a.record.get("prvDiaSources") or []
        )
        for a in rubin_alerts
    ]
    assert [not a.earlier_detection for a in rubin_alerts] == direct
    assert sum(direct) == 24
    known = [a for a in rubin_alerts if LSST.known_sso(a.record)]
    assert len(known) == 5 and all(a.object_id.startswith("ss") for a in known)
    assert Counter(a.band for a in rubin_alerts) == {"i": 32, "g": 4}
    # JD (UTC) from MJD (TAI): 2400000.5 days on, 37 s back.
    a = rubin_alerts[0]
    mjd = a.record["diaSource"]["midpointMjdTai"]
    assert a.jd == pytest.approx(mjd + 2400000.5 - 37 / 86400, abs=1e-9)


def test_rubin_cutouts_are_read_bit_identically_to_astropy(rubin_alerts):
    seen = 0
    for a in rubin_alerts:
        for kind in STAMP_KINDS:
            data = a.cutout_bytes(kind)
            if not data:
                continue
            with fits.open(io.BytesIO(data)) as hdus:
                want = hdus[0].data
            got = decode_stamp(data)
            assert got.dtype == np.float32 and got.tobytes() == want.astype(np.float32).tobytes()
            seen += 1
    assert seen >= 90


def test_parquet_alerts_keep_raw_bytes_that_decode_to_the_same_record(rubin_alerts):
    for a in rubin_alerts:
        back, error = decode_alerts(a.raw, "raw")
        assert error is None and len(back) == 1 and back[0].survey is LSST
        assert _same(back[0].record, a.record)


def test_lsst_features_follow_their_formulas(rubin_alerts):
    batch = LSST.features([a.candidate for a in rubin_alerts], FEATURES_LSST)
    assert batch.valid.all() and np.isfinite(batch.values).all()
    col = dict(zip(FEATURES_LSST, batch.values.T, strict=True))
    src = rubin_alerts[0].candidate
    assert col["psf_mag"][0] == pytest.approx(31.4 - 2.5 * np.log10(abs(src["psfFlux"])), abs=1e-4)
    assert col["is_negative"][0] == float(src["psfFlux"] < 0)
    assert col["band_wavelength"][0] == 755.0  # i
    # Seeing of the real alerts: 0.96-1.73" (PSF FWHM of the science cutouts).
    assert 0.7 < np.median(col["fwhm_psf"]) < 1.8
    # A required field missing is the row's reason, not a crash.
    bad = dict(src, psfFluxErr=None)
    batch = LSST.features([bad], FEATURES_LSST)
    assert not batch.valid[0] and "psfFluxErr=None" in batch.errors[0]


def test_stamps_are_centred_windows_of_30_px(rubin_alerts):
    sizes = Counter()
    for a in rubin_alerts:
        if not a.cutout_bytes("science"):
            continue
        sizes[decode_stamp(a.cutout_bytes("science")).shape] += 1
        cube, padded = LSST.stamp_cube(a.record, "drop")
        assert cube.shape == (30, 30, 3) and not padded
    assert len(sizes) > 1  # real sizes vary (30-34 px): all become 30
    science = decode_stamp(rubin_alerts[0].cutout_bytes("science"))
    r0 = (science.shape[0] - 30) // 2
    cube, _ = LSST.stamp_cube(rubin_alerts[0].record, "drop")
    assert np.array_equal(cube[:, :, 0], science[r0 : r0 + 30, r0 : r0 + 30], equal_nan=True)


def test_rules_for_rubin():
    probs = np.array([0.1, 0.6, 0.1, 0.1, 0.1])
    assert LSST.apply_rules(probs, {"known_sso": True}) == ("asteroid", "known_solar_system_object")
    assert LSST.apply_rules(probs, {"psfFlux": -5.0}) == ("AGN", "sn_veto_negative_difference")
    assert LSST.apply_rules(probs, {"psfFlux": 5.0}) == ("SN", None)
    assert LSST.apply_rules(probs, {"known_sso": True}, enabled=False) == ("SN", None)


# --- wire format ---------------------------------------------------------------------------------
def test_wire_format_round_trip_and_schema_ids(rubin_alerts, schemas):
    assert wire.known_schema_ids() == [1000, 1101]
    for a in rubin_alerts:
        message = wire.to_wire(a.record)
        assert message[0] == 0 and struct.unpack(">i", message[1:5])[0] == 1000
        (back,), error = decode_alerts(message, "m")
        assert error is None and back.survey is LSST and back.raw == message
        assert (back.candid, back.object_id, back.earlier_detection, back.band) == (
            a.candid,
            a.object_id,
            a.earlier_detection,
            a.band,
        )
        assert all(back.cutout_bytes(k) == a.cutout_bytes(k) for k in STAMP_KINDS)
    # v11.1 too: the newer schema takes the same alerts.
    (back,), error = decode_alerts(wire.to_wire(rubin_alerts[0].record, 1101), "m")
    assert error is None and back.candid == rubin_alerts[0].candid


def test_broken_wire_messages_have_specific_reasons(rubin_alerts, schemas):
    message = wire.to_wire(rubin_alerts[0].record)
    cases = {
        "truncated": message[: len(message) // 2],
        "unknown_schema_id": b"\0" + struct.pack(">i", 9999) + message[5:],
        "bad_record": message + b"\0\0\0",
    }
    for code, data in cases.items():
        alerts, error = decode_alerts(data, "m")
        assert not alerts and error is not None and error.code == code, (code, error)
    assert "lsst.v99_99" in decode_alerts(cases["unknown_schema_id"], "m")[1].detail
    wire.configure_schemas([])
    error = decode_alerts(message, "m")[1]
    assert error.code == "unknown_schema_id" and "no --schema-dir" in error.detail


# --- the pipeline --------------------------------------------------------------------------------
def _rows(out: Path) -> dict[int, dict]:
    return {r["candid"]: r for r in pq.read_table(out / "probabilities").to_pylist()}


def _dead(out: Path) -> list[dict]:
    dead = []
    for path in (out / "dead_letters").glob("*.jsonl"):
        dead += [json.loads(line) for line in path.read_text().splitlines()]
    return dead


def test_batch_run_classifies_the_real_rubin_alerts_from_every_form(
    rubin_alerts, rubin_model, wire_dir, tmp_path
):
    out = tmp_path / "files"
    summary = run(
        ["--input", *map(str, REAL_RUBIN), "--output", str(out), "--model", str(rubin_model)]
    )
    assert summary["reconciled"] and summary["records_in"] == 36
    rows = _rows(out)
    firsts = {a.candid for a in rubin_alerts if not a.earlier_detection}
    assert set(rows) == firsts and len(rows) == 24
    assert {r["survey"] for r in rows.values()} == {"lsst"} and all(
        r["fid"] is None for r in rows.values()
    )
    asteroids = {a.candid for a in rubin_alerts if LSST.known_sso(a.record)}
    assert {c for c, r in rows.items() if r["rule"] == "known_solar_system_object"} == asteroids
    assert all(rows[c]["predicted_class"] == "asteroid" for c in asteroids)
    density = pq.read_table(out / "sky_density").to_pylist()
    assert {d["survey"] for d in density} == {"lsst"}
    assert sum(d["count"] for d in density) == 24

    # The same alerts as wire-format messages: the same rows.
    out2 = tmp_path / "wire"
    summary = run(
        [
            "--input", str(wire_dir), "--output", str(out2), "--model", str(rubin_model),
            "--schema-dir", str(RUBIN_SCHEMAS),
        ]
    )  # fmt: skip
    assert summary["reconciled"]
    wired = _rows(out2)
    assert set(wired) == set(rows)
    for candid, r in rows.items():
        for k, v in r.items():
            if isinstance(v, float):
                assert wired[candid][k] == pytest.approx(v, abs=1e-6), (candid, k)
            else:
                assert wired[candid][k] == v, (candid, k)


def test_broken_rubin_inputs_are_dead_letters_with_reasons(
    rubin_alerts, rubin_model, tmp_path, schemas
):
    first = next(
        a for a in rubin_alerts if not a.earlier_detection and not LSST.known_sso(a.record)
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    message = wire.to_wire(first.record)
    (bad / "truncated.wire").write_bytes(message[:500])
    (bad / "unknown_id.wire").write_bytes(b"\0" + struct.pack(">i", 777) + message[5:])

    def variant(name: str, **cutouts) -> None:
        record = json.loads(json.dumps(first.record, default=lambda b: None))  # a deep copy
        for k in STAMP_KINDS:
            record[f"cutout{k.capitalize()}"] = first.cutout_bytes(k)
        record.update(cutouts)
        record["diaSourceId"] = first.candid + len(name)
        record["diaSource"]["diaSourceId"] = record["diaSourceId"]
        record["diaSource"]["diaObjectId"] = 10**12 + len(name)  # an object of its own
        (bad / f"{name}.wire").write_bytes(wire.to_wire(record))

    science = decode_stamp(first.cutout_bytes("science"))
    small = fits.PrimaryHDU(science[:25, :25].astype(np.float32))
    blank = fits.PrimaryHDU(np.full_like(science, np.nan, dtype=np.float32))
    variant("no_science", cutoutScience=None)
    variant("small_stamp", cutoutScience=_fits_bytes(small))
    variant("nan_stamp", cutoutTemplate=_fits_bytes(blank))
    out = tmp_path / "out"
    summary = run(
        [
            "--input", str(bad), "--output", str(out), "--model", str(rubin_model),
            "--schema-dir", str(RUBIN_SCHEMAS),
        ]
    )  # fmt: skip
    assert summary["reconciled"] and summary["records_in"] == 5 and summary["classified"] == 0
    reasons = {Path(d["source"]).stem: (d["stage"], d["reason"]) for d in _dead(out)}
    assert reasons["truncated"][0] == "decode" and reasons["truncated"][1].startswith("truncated")
    assert reasons["unknown_id"][1].startswith("unknown_schema_id: schema id 777 (lsst.v7_77)")
    assert reasons["no_science"] == ("stamps", "null: science: cutout is null")
    assert reasons["small_stamp"][0] == "stamps" and "25x25" in reasons["small_stamp"][1]
    assert reasons["nan_stamp"][0] == "stamps" and reasons["nan_stamp"][1].startswith("nan:")


def _fits_bytes(hdu) -> bytes:
    buf = io.BytesIO()
    fits.HDUList([hdu]).writeto(buf)
    return buf.getvalue()


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real ZTF alerts not found at {REAL}")
def test_ztf_and_rubin_alerts_in_one_run(rubin_model, tmp_path):
    # A single ZTF first detection (2018-06-01, no earlier detection in its history).
    ztf_file = REAL / "AmpelProject__Ampel-ZTF/alerts/ztf_public_20180601/516171791415015025.avro"
    inputs = ["--input", str(ztf_file), str(REAL_RUBIN[0])]
    # Only the ZTF model given: the Rubin alerts are dead letters that say what to do.
    default = str(Path(__file__).resolve().parents[1] / "model" / "default")
    out = tmp_path / "ztf_only"
    summary = run([*inputs, "--output", str(out), "--model", default])
    assert summary["reconciled"] and summary["classified"] >= 1
    rubin_dead = [d for d in _dead(out) if d["reason"].startswith("no_model: a lsst alert")]
    assert rubin_dead and all("give --model with a lsst model" in d["reason"] for d in rubin_dead)
    # Both models: each survey classified by its own.
    out = tmp_path / "both"
    summary = run(
        [
            *inputs,
            "--output",
            str(out),
            "--model",
            str(rubin_model),
            "--model",
            str(Path(__file__).resolve().parents[1] / "model" / "default"),
        ]
    )
    assert summary["reconciled"] and not _dead(out)
    rows = _rows(out).values()
    assert {(r["survey"], r["model_name"]) for r in rows} == {
        ("lsst", "test-model-lsst"),
        ("ztf", "stampflow-sim"),
    }


def test_survey_and_model_options_are_checked(rubin_model):
    base = ["--input", str(REAL_RUBIN[0]), "--output", "/tmp/stampflow-unused"]
    with pytest.raises(OptionsError, match="--survey lsst: no --model classifies lsst alerts"):
        parse(
            [
                *base,
                "--survey",
                "lsst",
                "--model",
                str(Path(__file__).parents[1] / "model" / "default"),
            ]
        )
    with pytest.raises(OptionsError, match="both classify lsst alerts"):
        parse([*base, "--model", str(rubin_model), "--model", str(rubin_model)])
    with pytest.raises(OptionsError, match=r"no --model classifies ztf alerts \(.* is for lsst"):
        parse([*base, "--survey", "ztf", "--model", str(rubin_model)])
    default = str(Path(__file__).resolve().parents[1] / "model" / "default")
    with pytest.raises(OptionsError, match="is not a ztf model"):
        parse([*base, "--survey", "ztf", "--model", default, "--model", str(rubin_model)])
    with pytest.raises(OptionsError, match="--schema-dir: /nonexistent does not exist"):
        parse([*base, "--schema-dir", "/nonexistent"])
    opts = parse([*base, "--model", str(rubin_model), "--survey", "lsst"])
    assert opts.model.survey == "lsst" and list(opts.models) == ["lsst"]
    assert ZTF.name not in opts.models


# --- streaming -----------------------------------------------------------------------------------
def test_streaming_classifies_wire_format_rubin_messages(
    pubsub, rubin_alerts, rubin_model, tmp_path, monkeypatch, schemas
):
    import time

    from google.cloud import pubsub_v1

    from bench.streaming import Collector, create_topics
    from pipeline.publish import publish
    from pipeline.run_job import start_streaming

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
    batch = tmp_path / "batch"
    run(["--input", *map(str, REAL_RUBIN), "--output", str(batch), "--model", str(rubin_model)])
    want = _rows(batch)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    names = create_topics(publisher, subscriber, ("rubin", "rows", "dead"))
    opts = parse(
        [
            "--streaming",
            "--input-subscription", names["rubin"][1],
            "--output-topic", names["rows"][0],
            "--dead-letter-topic", names["dead"][0],
            "--model", str(rubin_model),
            "--schema-dir", str(RUBIN_SCHEMAS),
            "--hold-seconds", "2",
        ]
    )  # fmt: skip
    rows, dead = Collector(subscriber, names["rows"][1]), Collector(subscriber, names["dead"][1])
    result = start_streaming(opts)
    try:
        time.sleep(5)  # let the reader start pulling and RunInference load the model
        counts = publish(names["rubin"][0], [str(p) for p in REAL_RUBIN], publisher=publisher)
        assert counts == {"published": 36, "failed": 0, "unreadable": 0}  # one message per alert
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(rows.messages) < len(want):
            time.sleep(0.5)
        time.sleep(4)  # a duplicate would arrive by now
    finally:
        result.cancel()
        rows.stop()
        dead.stop()
    got = {r["candid"]: r for _, r in rows.messages}
    assert len(got) == len(rows.messages) == len(want) == 24
    assert not dead.messages
    for candid, r in got.items():
        assert r["survey"] == "lsst" and r["band"] == want[candid]["band"]
        assert r["predicted_class"] == want[candid]["predicted_class"]
        assert r["p_SN"] == pytest.approx(want[candid]["p_SN"], abs=1e-6)


def test_wire_schemas_from_a_confluent_registry(rubin_alerts, tmp_path):
    """``--schema-registry``: ``GET {url}/schemas/ids/{id}`` answers ``{"schema": "<json>"}``."""
    import http.server
    import threading

    schema = json.dumps(fastavro_schema_1000())
    asked: list[str] = []

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            if self.path == "/schemas/ids/1000":
                body = json.dumps({"schema": schema}).encode()
                self.send_response(200)
            else:
                body = b'{"error_code": 40403, "message": "Schema not found"}'
                self.send_response(404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wire.configure_schemas([str(RUBIN_SCHEMAS)])
        message = wire.to_wire(rubin_alerts[0].record)
        wire.configure_schemas([], f"http://127.0.0.1:{server.server_port}/")
        (alert,), error = decode_alerts(message, "m")
        assert error is None and alert.candid == rubin_alerts[0].candid
        bad = b"\0" + struct.pack(">i", 1101) + message[5:]
        error = decode_alerts(bad, "m")[1]
        assert error.code == "unknown_schema_id" and "--schema-registry http" in error.detail
        assert asked == ["/schemas/ids/1000", "/schemas/ids/1101"]  # each id asked once
        decode_alerts(message, "m")
        assert len(asked) == 2
    finally:
        server.shutdown()
        wire.configure_schemas([])


def fastavro_schema_1000() -> dict:
    """lsst.v10_0's alert schema as one self-contained JSON document (what a registry holds)."""
    import fastavro.schema

    path = next(RUBIN_SCHEMAS.rglob("lsst.v10_0.alert.avsc"))
    return fastavro.schema.load_schema(str(path), _write_hint=False)


# --- ids, times, bands, publish, registry outages, options ----------------------------------------
def test_ids_that_lost_bits_and_non_finite_times_are_bad_alerts(rubin_alerts):
    from transforms.surveys.lsst import LSST as adapter

    record = json.loads(json.dumps(rubin_alerts[0].record, default=lambda b: None))
    ok = dict(record, diaSource=dict(record["diaSource"]))
    assert adapter.validate(ok) is None
    lost = dict(record, diaSourceId=float(record["diaSourceId"]) + 0.0)  # > 2^53 as a double
    assert adapter.validate(lost) == "no exact diaSourceId"
    nan_time = dict(record, diaSource=dict(record["diaSource"], midpointMjdTai=float("nan")))
    assert adapter.validate(nan_time).startswith("diaSource midpointMjdTai is nan")
    nan_object = dict(
        record,
        diaSource=dict(record["diaSource"], diaObjectId=float("nan"), ssObjectId=None),
        diaObject=None,
        ssSource=None,
    )
    assert adapter.validate(nan_object) == "neither an exact diaObjectId nor an ssObjectId"
    # No band is the features stage's letter for that alert alone.
    no_band = dict(record, diaSource=dict(record["diaSource"], band=None))
    assert adapter.validate(no_band) is None
    batch = adapter.features([no_band["diaSource"]], FEATURES_LSST)
    assert not batch.valid[0] and "band=None" in batch.errors[0]


def test_publish_names_the_container_version_and_sends_junk_as_it_is(schemas):
    from pipeline.publish import messages

    fake = next(RUBIN_SCHEMAS.rglob("10/0/sample_data/fakeAlert.avro"))
    (msg,) = list(messages([str(fake)]))
    assert isinstance(msg, tuple) and struct.unpack(">i", msg[1][1:5])[0] == 1000
    # Something that is not an alert is sent as it is (the job dead-letters it).
    assert decode_alerts(b"\0" * 64, "zeros")[1].code == "bad_magic"


def test_a_registry_outage_is_not_remembered(rubin_alerts, monkeypatch):
    wire.configure_schemas([str(RUBIN_SCHEMAS)])
    message = wire.to_wire(rubin_alerts[0].record)
    wire.configure_schemas([], "http://127.0.0.1:9")  # nothing listens there
    try:
        assert decode_alerts(message, "m")[1].code == "unknown_schema_id"
        # Once it answers, the same id decodes: the failure was not cached.
        monkeypatch.setattr(wire, "_from_registry", lambda url, i: fastavro_parsed(i))
        (alert,), error = decode_alerts(message, "m")
        assert error is None and alert.candid == rubin_alerts[0].candid
    finally:
        wire.configure_schemas([])


def fastavro_parsed(schema_id: int):
    import fastavro

    return fastavro.parse_schema(fastavro_schema_1000()) if schema_id == 1000 else None


def test_schema_options_are_checked(tmp_path):
    base = ["--input", str(REAL_RUBIN[0]), "--output", str(tmp_path / "o")]
    a_file = tmp_path / "schema.avsc"
    a_file.write_text("{}")
    with pytest.raises(OptionsError, match="is not a directory"):
        parse([*base, "--schema-dir", str(a_file)])
    with pytest.raises(OptionsError, match="is not an http:// or https:// URL"):
        parse([*base, "--schema-registry", "registry.example:8081"])
