"""Pitt-Google's public streams as the streaming job's input (issue 28, item 4).

Messages are built as Pitt-Google publishes them, data and attributes, from real alerts:

- ``ztf-alerts``: ZTF's Avro containers as they are (Pitt-Google's own stored copies of its
  messages' data, named after the message, and every other real ZTF alert) with the Kafka
  connector's ``kafka.*`` attributes, and with the ``objectId``/``candid`` the library adds;
- ``lsst-alerts`` and ``lsst-alerts-json``: the 36 real Rubin alerts sent through
  :func:`pittgoogle_lsst`, which repeats ``pittgoogle-client`` 0.3.23's own steps
  (``Alert.from_cloud_run`` → ``Topic.publish``: ``LsstSchema.serialize``,
  ``Serializers.serialize_json`` and ``_clean_for_json``, ``Alert._add_attributes``). The library
  is not a dependency; run once beside it, it gave byte-identical data and the same attributes
  for all 36 (the HEALPix attributes aside: they need ``hpgeom`` and are stand-ins here).

Levels: the pure decode (every message gives the batch decoder's alerts), the DoFn on
``PubsubMessage`` objects, a ``TestPipeline`` running the streaming read's decode composite on a
mixed stream, and broken messages, each a dead letter with its reason.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import math
import re
import struct
from pathlib import Path

import apache_beam as beam
import fastavro
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.pubsub import DecodePubSubMessages
from tests.helpers import REAL, RUBIN, RUBIN_SCHEMAS, nan_equal, needs_real, needs_rubin
from transforms import wire
from transforms.alerts import decode_alerts
from transforms.dead_letters import reason_code
from transforms.pittgoogle import (
    KAFKA_OFFSET,
    KAFKA_PARTITION,
    KAFKA_TIMESTAMP,
    KAFKA_TOPIC,
    SCHEMA_VERSION,
    DecodeMessages,
    decode_message,
    message_source,
)
from transforms.schema import STAGE_DECODE, TAG_ALERTS, TAG_DEAD_LETTERS
from transforms.surveys import LSST, ZTF
from transforms.wire import SchemaSources

#: Pitt-Google's own copies of ztf-alerts messages (their bucket's ``oid.candid.topic.avro``).
PITTGOOGLE_ZTF = REAL / "mwvgroup__Pitt-Google-Broker"
REAL_RUBIN = (
    RUBIN / "astrolabsoftware__fink-client" / "datatest" / "lsst" / "part-2-918301.avro",
    RUBIN / "astrolabsoftware__fink-tutorials" / "lsst" / "data_transfer",
    RUBIN / "astrolabsoftware__fink-science" / "fink_science" / "data" / "alerts",
)


# --- messages as Pitt-Google publishes them ------------------------------------------------------
def kafka_attributes(topic: str, offset: int, partition: int = 0) -> dict[str, str]:
    """What the Kafka → Pub/Sub connector sets (``metadata.publish=true``)."""
    return {
        KAFKA_TOPIC: topic,
        KAFKA_PARTITION: str(partition),
        KAFKA_OFFSET: str(offset),
        KAFKA_TIMESTAMP: str(1_760_000_000_000 + offset),
    }


def _clean_for_json(value):
    """``pittgoogle.schema.Serializers._clean_for_json`` (0.3.23), step for step."""
    if isinstance(value, str | int | type(None)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("utf-8")
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, list):
        return [_clean_for_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean_for_json(v) for k, v in value.items()}
    raise TypeError(f"Unrecognized type '{type(value)}' ({value})")


def pittgoogle_lsst(packet: bytes, kafka: dict[str, str]) -> tuple[bytes, bytes, dict[str, str]]:
    """``(lsst-alerts data, lsst-alerts-json data, attributes)`` of one Rubin Kafka message.

    The broker's ``ps_to_storage`` opens the message with ``Alert.from_cloud_run(envelope,
    "lsst")`` and publishes ``alert.dict`` twice with ``alert.attributes``; the library's steps:
    """
    # LsstSchema._from_yaml: the version from the wire header, the schema file it names.
    _, version_id = struct.Struct(">bi").unpack(packet[:5])
    major, minor = str(version_id // 100), str(version_id % 100)
    version = f"v{major}_{minor}"
    definition = fastavro.schema.load_schema(
        RUBIN_SCHEMAS / major / minor / f"lsst.{version}.alert.avsc"
    )
    # LsstSchema.deserialize → Serializers.deserialize_confluent_wire_avro
    record = fastavro.schemaless_reader(io.BytesIO(packet[5:]), definition)
    # LsstSchema.serialize: the id rebuilt from the version, then serialize_confluent_wire_avro
    schema_id = int("0".join(version.strip("v").split("_")))
    out = io.BytesIO()
    out.write(b"\x00")
    out.write(struct.pack(">i", schema_id))
    fastavro.schemaless_writer(out, definition, record)
    # Topic.publish(alert, serializer="json") → Serializers.serialize_json
    as_json = json.dumps(_clean_for_json(record)).encode("utf-8")
    # Alert._add_attributes with schemas/maps/lsst.yml, over the incoming message's attributes
    attributes: dict = dict(kafka)
    if (record.get("diaObject") or {}).get("diaObjectId"):
        attributes["diaObject_diaObjectId"] = record["diaObject"]["diaObjectId"]
    elif (record.get("ssSource") or {}).get("ssObjectId"):
        attributes["ssSource_ssObjectId"] = record["ssSource"]["ssObjectId"]
    attributes["diaSource_diaSourceId"] = record["diaSource"]["diaSourceId"]
    for order in (9, 19, 29):  # hpgeom.angle_to_pixel at the diaSource; stand-ins here
        attributes[f"healpix{order}"] = 0
    attributes[SCHEMA_VERSION] = version
    attributes["n_previous_detections"] = len(record.get("prvDiaSources") or [])
    # Topic.publish: str keys and values, sorted by key
    attributes = {str(k): str(attributes[k]) for k in sorted(attributes)}
    return out.getvalue(), as_json, attributes


def ztf_library_attributes(container: bytes) -> dict[str, str]:
    """What ``Alert._add_attributes`` adds to a ZTF alert's (schemas/maps/ztf.yml; ``ZtfSchema``
    has no version, published as ``"None"``; HEALPix stand-ins as above)."""
    (record,) = fastavro.reader(io.BytesIO(container))
    return {
        "objectId": record["objectId"],
        "candid": str(record["candid"]),
        **{f"healpix{order}": "0" for order in (9, 19, 29)},
        SCHEMA_VERSION: "None",
        "n_previous_detections": str(len(record.get("prv_candidates") or [])),
    }


def message(data: bytes, attributes: dict[str, str], i: int = 0) -> beam.io.PubsubMessage:
    return beam.io.PubsubMessage(data, attributes, message_id=f"m{i}")


def _fingerprint(alert) -> tuple:
    """What must match the batch decoder: survey, ids, time and the exact bytes kept."""
    return (
        alert.survey.name,
        alert.candid,
        alert.object_id,
        alert.jd,
        hashlib.sha1(alert.raw).hexdigest(),
    )


@pytest.fixture
def schemas():
    wire.configure_schemas([str(RUBIN_SCHEMAS)])
    yield
    wire.configure_schemas([])


@pytest.fixture(scope="module")
def rubin_packets():
    """The 36 real Rubin alerts as Rubin's Kafka sends them (wire format, schema v10.0)."""
    from transforms.sources import decode_paths

    if not RUBIN.is_dir():
        pytest.skip(f"real Rubin alerts not found at {RUBIN}")
    alerts = [a for it in decode_paths([str(p) for p in REAL_RUBIN]) for a in it.alerts]
    wire.configure_schemas([str(RUBIN_SCHEMAS)])
    try:
        return [wire.to_wire(a.record) for a in alerts]
    finally:
        wire.configure_schemas([])


@pytest.fixture(scope="module")
def lsst_messages(rubin_packets):
    """``(packet, lsst-alerts data, lsst-alerts-json data, attributes)`` per real Rubin alert."""
    return [
        (p, *pittgoogle_lsst(p, kafka_attributes("alerts-simulated", i)))
        for i, p in enumerate(rubin_packets)
    ]


def _pittgoogle_ztf_files() -> list[Path]:
    return sorted(PITTGOOGLE_ZTF.rglob("*.avro"))


# --- pure: message → alerts ---------------------------------------------------------------------
@needs_real
def test_pitt_googles_own_ztf_alerts_messages_decode_as_the_batch_reader_does():
    """The broker stores each ``ztf-alerts`` message's data as a file named after the message:
    ``objectId.candid.kafka-topic.avro`` (85 here), or ``kafka-topic_kafka-timestamp.avro``
    (2, an older Cloud Function's); 2 more are its test alerts."""
    files = _pittgoogle_ztf_files()
    assert len(files) == 89
    named = 0
    for i, path in enumerate(files):
        data = path.read_bytes()
        assert data[:4] == b"Obj\x01"  # the original Avro container, schema in the header
        parts = path.name.split(".")
        old = re.fullmatch(r"(ztf_\d{8}_programid\d)_(\d+)\.avro", path.name)
        topic = parts[2] if len(parts) == 4 else old[1] if old else "ztf_20200101_programid1"
        attributes = kafka_attributes(topic, i) | ztf_library_attributes(data)
        if old:
            attributes[KAFKA_TIMESTAMP] = old[2]
        source = message_source(attributes, "m")
        assert source == f"kafka:{topic}/0/{i}"
        (got,), error = decode_message(data, attributes, source)
        (want,), _ = decode_alerts(data, source)
        assert error is None
        assert got.survey is ZTF and got.source == source and got.raw == data
        assert nan_equal(got.record, want.record)
        if len(parts) == 4:
            assert (got.object_id, str(got.candid)) == (parts[0], parts[1])
        named += len(parts) == 4 or old is not None
    assert named == 87


@needs_real
def test_every_real_ztf_container_as_a_ztf_alerts_message():
    """All 183 real containers (180 single-alert, three of 3 to 31 alerts): the same alerts and
    the same (absent) error as the batch decoder's, with or without the library's id attributes
    (which describe a message's one alert and are not checked on the multi-alert ones)."""
    from tests.helpers import real_containers

    containers = real_containers()
    assert len(containers) == 183
    n = 0
    for i, (name, data) in enumerate(containers):
        want, want_error = decode_alerts(data, name)
        attributes = kafka_attributes("ztf_20240101_programid1", i)
        if len(want) == 1:
            attributes |= ztf_library_attributes(data)
        got, error = decode_message(data, attributes, name)
        assert error is None and want_error is None
        assert [_fingerprint(a) for a in got] == [_fingerprint(a) for a in want]
        n += len(got)
    assert n == 225


@needs_rubin
def test_lsst_alerts_messages_are_the_kafka_packets_and_decode_as_batch(lsst_messages, schemas):
    for packet, avro, _, attributes in lsst_messages:
        assert avro == packet  # Pitt-Google re-encodes Rubin's message byte for byte
        source = message_source(attributes)
        (got,), error = decode_message(avro, attributes, source)
        (want,), _ = decode_alerts(packet, "batch")
        assert error is None and got.survey is LSST and got.raw == packet
        assert nan_equal(got.record, want.record)
        assert attributes["diaSource_diaSourceId"] == str(got.candid)
        assert attributes[SCHEMA_VERSION] == "v10_0"


@needs_rubin
def test_lsst_alerts_json_messages_give_the_same_alerts_as_the_avro_copies(lsst_messages, schemas):
    """JSON loses NaN (null), bytes (base64) and datetimes (seconds): the schema named by the
    ``schema_version`` attribute brings them back, so the alert, its record and even its bytes
    are those of the ``lsst-alerts`` copy."""
    solar = cut = timed = 0
    for packet, _, as_json, attributes in lsst_messages:
        assert as_json[:1] == b"{"
        (got,), error = decode_message(as_json, attributes, message_source(attributes))
        (want,), _ = decode_alerts(packet, "batch")
        assert error is None
        assert got.raw == packet  # re-encoded exactly as the wire-format message it was
        assert nan_equal(got.record, want.record)
        assert _fingerprint(got)[:4] == _fingerprint(want)[:4]
        solar += "ssSource_ssObjectId" in attributes
        cut += got.cutout_bytes("science") is not None
        timed += isinstance(
            (got.record.get("mpc_orbits") or {}).get("created_at"), datetime.datetime
        )
    # What the JSON had to bring back: cutouts (bytes), orbits' timestamp-micros (datetimes).
    assert cut == 36 and timed == 2 and solar == 5


@needs_rubin
def test_json_nulls_become_nan_only_where_the_schema_has_no_null(lsst_messages, schemas):
    """The library writes NaN as null. A float the schema does not let be null (diaSource.x)
    was NaN, and becomes NaN again; a nullable one (psfFlux) stays null: JSON kept no
    difference between a NaN and a null there."""
    _, _, as_json, attributes = lsst_messages[0]
    record = json.loads(as_json)
    assert record["diaSource"]["x"] is not None and record["diaSource"]["psfFlux"] is not None
    record["diaSource"]["x"] = None
    record["diaSource"]["psfFlux"] = None
    (got,), error = decode_message(json.dumps(record).encode(), attributes, "s")
    assert error is None
    assert math.isnan(got.record["diaSource"]["x"])
    assert got.record["diaSource"]["psfFlux"] is None


@needs_rubin
def test_json_datetimes_come_back_to_the_microsecond(lsst_messages, schemas):
    """``datetime.timestamp()`` seconds (the library's JSON) → timestamp-micros, exactly."""
    packet = next(p for p, *_ in lsst_messages if _orbits(p))
    (alert,), _ = decode_alerts(packet, "s")
    record = alert.record
    when = datetime.datetime(2025, 10, 9, 12, 34, 56, 789012, tzinfo=datetime.UTC)
    record["mpc_orbits"]["created_at"] = when
    record["mpc_orbits"]["fitting_datetime"] = when + datetime.timedelta(microseconds=1)
    packet = wire.encode_wire(1000, wire.writer_schema(1000), record)
    avro, as_json, attributes = pittgoogle_lsst(packet, kafka_attributes("alerts", 1))
    assert json.loads(as_json)["mpc_orbits"]["created_at"] == when.timestamp()
    (got,), error = decode_message(as_json, attributes, "s")
    assert error is None and got.raw == avro == packet
    assert got.record["mpc_orbits"]["created_at"] == when
    assert got.record["mpc_orbits"]["fitting_datetime"] - when == datetime.timedelta(microseconds=1)


def _orbits(packet: bytes) -> bool:
    (alert,), _ = decode_alerts(packet, "s")
    return alert.record.get("mpc_orbits") is not None


# --- broken messages ------------------------------------------------------------------------------
def _broken(lsst_messages, ztf: bytes) -> list[tuple[str, bytes, dict[str, str], str]]:
    """``(name, data, attributes, expected reason code)`` of each broken message."""
    _, avro, as_json, attrs = lsst_messages[0]
    record = json.loads(as_json)
    ztf_attrs = kafka_attributes("ztf_20240101_programid1", 7) | ztf_library_attributes(ztf)
    no_version = {k: v for k, v in attrs.items() if k != SCHEMA_VERSION}
    wrong_cut = dict(record, cutoutScience="not base64!")
    mismatch, other_source = "attribute_mismatch", {"diaSource_diaSourceId": "1"}
    return [
        ("ztf truncated", ztf[: len(ztf) // 2], ztf_attrs, "truncated"),
        ("ztf wrong candid", ztf, ztf_attrs | {"candid": "1"}, mismatch),
        ("ztf with Rubin's id", ztf, ztf_attrs | other_source, mismatch),
        ("no data (ztf-alert_avros)", b"", ztf_attrs, "truncated"),
        ("lsst truncated", avro[:-100], attrs, "truncated"),
        ("lsst wrong version", avro, attrs | {SCHEMA_VERSION: "v11_1"}, mismatch),
        ("lsst wrong source id", avro, attrs | other_source, mismatch),
        ("lsst bad version text", avro, attrs | {SCHEMA_VERSION: "10.0"}, "bad_attribute"),
        ("json truncated", as_json[:5000], attrs, "bad_json"),
        ("json without version", as_json, no_version, "bad_attribute"),
        ("json wrong version", as_json, attrs | {SCHEMA_VERSION: "v11_1"}, "bad_json"),
        ("json unknown version", as_json, attrs | {SCHEMA_VERSION: "v99_0"}, "unknown_schema_id"),
        ("json lite topic", json.dumps({"alert_lite": record}).encode(), attrs, "bad_json"),
        ("json cutout not base64", json.dumps(wrong_cut).encode(), attrs, "bad_json"),
        ("json a list", b"[1, 2]", attrs, "bad_json"),
        ("json wrong source id", as_json, attrs | other_source, mismatch),
    ]  # fmt: skip


@needs_real
@needs_rubin
def test_broken_messages_are_dead_letters_with_reasons(lsst_messages, schemas):
    ztf = _pittgoogle_ztf_files()[0].read_bytes()
    fn = DecodeMessages()
    for i, (name, data, attributes, code) in enumerate(_broken(lsst_messages, ztf)):
        out = list(fn.process(message(data, attributes, i)))
        assert len(out) == 1, name
        assert isinstance(out[0], beam.pvalue.TaggedOutput) and out[0].tag == TAG_DEAD_LETTERS
        letter = out[0].value
        assert (letter["stage"], reason_code(letter)) == (STAGE_DECODE, code), (name, letter)
        assert letter["raw"] == data, name  # the message as received
        assert letter["source"] == message_source(attributes), name
        assert len(letter["reason"]) < 500, name


@needs_rubin
def test_json_reasons_name_what_is_wrong(lsst_messages, schemas):
    _, _, as_json, attrs = lsst_messages[0]
    reasons = {
        v: decode_message(as_json, attrs | {SCHEMA_VERSION: v}, "s")[1].reason
        for v in ("v11_1", "v99_0")
    }
    assert "diaSource lacks exposureTime" in reasons["v11_1"]
    assert "schema id 9900" in reasons["v99_0"] and "--schema-dir" in reasons["v99_0"]
    no_version = {k: v for k, v in attrs.items() if k != SCHEMA_VERSION}
    assert (
        "without the schema_version attribute" in decode_message(as_json, no_version, "s")[1].reason
    )


# --- DoFn ---------------------------------------------------------------------------------------
@needs_real
def test_dofn_sources_and_the_source_attribute_of_stampflow_publish():
    data = _pittgoogle_ztf_files()[0].read_bytes()
    fn = DecodeMessages()
    (alert,) = fn.process(message(data, kafka_attributes("ztf_20210818_programid1", 5, 2)))
    assert alert.source == "kafka:ztf_20210818_programid1/2/5"
    (alert,) = fn.process(message(data, {"source": "night/a.avro", KAFKA_TOPIC: "t"}))
    assert alert.source == "night/a.avro"  # stampflow publish's attribute wins
    (alert,) = fn.process(beam.io.PubsubMessage(data, None, message_id="42"))
    assert alert.source == "pubsub:42"


# --- TestPipeline: the streaming read's decode composite on a mixed stream -----------------------
def _read_message(item: tuple[str, dict[str, str], str]) -> beam.io.PubsubMessage:
    """A message from ``(data file, attributes, message id)``: ``beam.Create`` of the messages
    themselves (~20 MB) pickles them slowly (60 s here), of their files' names in no time."""
    path, attributes, message_id = item
    return beam.io.PubsubMessage(Path(path).read_bytes(), attributes, message_id=message_id)


@needs_real
@needs_rubin
def test_streaming_decode_of_a_mixed_pittgoogle_stream_equals_the_batch_decode(
    lsst_messages, tmp_path
):
    """ztf-alerts, lsst-alerts and lsst-alerts-json messages and the broken ones in one stream
    through :class:`pipeline.pubsub.DecodePubSubMessages` (the streaming read after
    ``ReadFromPubSub``): the batch decoder's alerts on event time ``jd``, a dead letter each."""
    ztf_files = _pittgoogle_ztf_files()
    items, want = [], []
    for i, path in enumerate(ztf_files):
        data = path.read_bytes()
        attributes = kafka_attributes("ztf_20210818_programid1", i) | ztf_library_attributes(data)
        items.append((str(path), attributes, f"z{i}"))
        want += [_fingerprint(a) for a in decode_alerts(data, "batch")[0]]
    broken = _broken(lsst_messages, ztf_files[0].read_bytes())
    want_dead = [(message_source(a), STAGE_DECODE, code) for _, _, a, code in broken]
    wire.configure_schemas([str(RUBIN_SCHEMAS)])
    try:
        for i, (packet, avro, as_json, attributes) in enumerate(lsst_messages):
            # half from lsst-alerts, half from lsst-alerts-json: one copy of each alert
            (tmp_path / f"r{i}").write_bytes(avro if i % 2 else as_json)
            items.append((str(tmp_path / f"r{i}"), attributes, f"r{i}"))
            want += [_fingerprint(a) for a in decode_alerts(packet, "batch")[0]]
        for i, (_, data, attributes, _) in enumerate(broken):
            (tmp_path / f"b{i}").write_bytes(data)
            items.append((str(tmp_path / f"b{i}"), attributes, f"b{i}"))
        assert len(want) == 89 + 36

        with BeamTestPipeline() as p:
            out = (
                p
                | beam.Create(items)
                | beam.Map(_read_message)
                | DecodePubSubMessages(SchemaSources((str(RUBIN_SCHEMAS),)))
            )
            assert_that(out[TAG_ALERTS] | beam.Map(_fingerprint), equal_to(want), label="Alerts")
            dead = out[TAG_DEAD_LETTERS] | beam.Map(
                lambda d: (d["source"], d["stage"], reason_code(d))
            )
            assert_that(dead, equal_to(want_dead), label="Dead")
            # Event time is the alert's jd, as for every streaming input.
            offsets = out[TAG_ALERTS] | beam.ParDo(_EventTimeOffset())
            assert_that(
                offsets | beam.Map(lambda dt: dt < 1e-3) | beam.combiners.Count.PerElement(),
                equal_to([(True, len(want))]),
                label="EventTime",
            )
    finally:
        wire.configure_schemas([])  # DecodeMessages.setup sets them in this process too


class _EventTimeOffset(beam.DoFn):
    """|element timestamp - the alert's jd| [s]."""

    def process(self, alert, timestamp=beam.DoFn.TimestampParam):
        from transforms.streaming_state import jd_to_unix

        yield abs(float(timestamp) - jd_to_unix(alert.jd))


# --- end to end: stampflow run --streaming on the Pub/Sub emulator -------------------------------
@needs_rubin
def test_stampflow_run_streaming_classifies_lsst_alerts_json_messages(
    pubsub, lsst_messages, tmp_path, monkeypatch
):
    """The 36 real Rubin alerts published as ``lsst-alerts-json`` messages (data and attributes),
    with ``--schema-dir`` and ``--timestamp-attribute kafka.timestamp`` as the docs say: the
    batch run's rows (its 24 first detections, same probabilities) and a dead letter per broken
    message. (``lsst-alerts``' wire-format messages: tests/test_rubin.py's streaming test.)"""
    import time

    import pyarrow.parquet as pq
    from google.cloud import pubsub_v1

    from bench.streaming import Collector, create_topics
    from pipeline.options import parse
    from pipeline.run_job import run, start_streaming
    from tests.helpers import export_random_model

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
    model = export_random_model(REAL_RUBIN[2], tmp_path / "model", "0.0.1", survey="lsst")
    run(
        [
            "--input",
            *map(str, REAL_RUBIN),
            "--output",
            str(tmp_path / "batch"),
            "--model",
            str(model),
        ]
    )
    want = {r["candid"]: r for r in pq.read_table(tmp_path / "batch" / "probabilities").to_pylist()}
    _, avro, as_json, attributes = lsst_messages[0]
    broken = [
        (as_json, {k: v for k, v in attributes.items() if k != SCHEMA_VERSION}, "bad_attribute"),
        (avro, attributes | {"diaSource_diaSourceId": "1"}, "attribute_mismatch"),
    ]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    names = create_topics(publisher, subscriber, ("lsst-alerts-json", "rows", "dead"))
    opts = parse(
        [
            "--streaming",
            "--input-subscription", names["lsst-alerts-json"][1],
            "--schema-dir", str(RUBIN_SCHEMAS),
            "--timestamp-attribute", KAFKA_TIMESTAMP,
            "--output-topic", names["rows"][0],
            "--dead-letter-topic", names["dead"][0],
            "--model", str(model),
            "--hold-seconds", "2",
        ]
    )  # fmt: skip
    rows, dead = Collector(subscriber, names["rows"][1]), Collector(subscriber, names["dead"][1])
    result = start_streaming(opts)
    try:
        topic = names["lsst-alerts-json"][0]
        sent = [(j, a) for _, _, j, a in lsst_messages] + [(d, a) for d, a, _ in broken]
        for data, attrs in sent:
            publisher.publish(topic, data, **attrs).result()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            len(rows.messages) < len(want) or len(dead.messages) < len(broken)
        ):
            time.sleep(0.5)
        time.sleep(4)  # a duplicate would arrive by now
    finally:
        result.cancel()
        rows.stop()
        dead.stop()
    got = {r["candid"]: r for _, r in rows.messages}
    assert len(got) == len(rows.messages) == len(want) == 24
    for candid, r in got.items():
        assert r["survey"] == "lsst" and r["objectId"] == want[candid]["objectId"]
        assert r["predicted_class"] == want[candid]["predicted_class"]
        assert r["p_SN"] == pytest.approx(want[candid]["p_SN"], abs=1e-6)
    letters = sorted((d["stage"], reason_code(d), d["source"]) for _, d in dead.messages)
    source = message_source(attributes)
    assert letters == sorted((STAGE_DECODE, code, source) for _, _, code in broken)
