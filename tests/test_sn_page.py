"""The SN candidates page: its data (pure), its files (batch and per streaming window), and the
page itself driven in real headless Chromium (filter, sort, vet, reload, export).

The browser tests need Debian's ``chromium`` (``scripts/ensure_venv.sh`` installs it where it can)
and Playwright from the test extras, pointed at ``/usr/bin/chromium``; they are skipped with the
reason where either is missing.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.transforms.window import TimestampedValue

from model.train import read_labels
from pipeline.options import DEFAULT_MODEL, ModelInfo, StreamingOptions, TnsReporter
from pipeline.sinks import PublishOutputs, light_curves, write_sn_candidates
from pipeline.sn_page import STORAGE_KEY, TNS_FILTER_IDS, jd_to_utc, page_records, render_page
from tests.helpers import REAL, needs_real
from transforms.light_curve import light_curve
from transforms.schema import TAG_ROWS
from transforms.sources import decode_paths

CHROMIUM = os.environ.get("STAMPFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage"]


def test_jd_to_utc_is_tns_date_format():
    assert jd_to_utc(2440587.5) == "1970-01-01 00:00:00.000"
    assert jd_to_utc(2458000.5 + 0.25) == "2017-09-04 06:00:00.000"


# --- rows from real alerts ------------------------------------------------------------------------
def _real_rows(n: int = 12, raw: bool = False) -> list[dict]:
    """Candidate-like rows for the first ``n`` real alerts (batch: slim, re-read by path)."""
    from pipeline.classify import alert_meta
    from transforms.schema import PROBABILITY_COLUMNS

    rows = []
    for item in decode_paths([str(REAL)]):
        for alert in item.alerts:
            if len(rows) == n:
                return rows
            meta = alert_meta(alert if raw else alert.slim())
            p = (len(rows) + 1) / (n + 1)
            probs = dict(zip(PROBABILITY_COLUMNS, [0.0, p, 1 - p, 0.0, 0.0], strict=True))
            rows.append({**meta, **probs, "predicted_class": "SN", "rule": None})
    return rows


@needs_real
def test_light_curves_read_history_back_for_slim_rows_and_from_bytes_otherwise():
    slim, full = _real_rows(), _real_rows(raw=True)
    assert all(not r["raw"] for r in slim) and all(r["raw"] for r in full)
    by_file = light_curves(slim)
    by_bytes = light_curves(full)
    assert by_file == by_bytes and all(c is not None for c in by_file)
    # The same as the light curve of the alert decoded directly.
    direct = {a.candid: light_curve(a) for i in decode_paths([str(REAL)]) for a in i.alerts}
    assert by_file == [direct[r["candid"]] for r in slim]
    assert sum(len(c.upper_limits) for c in by_file) > 0


@needs_real
def test_an_unreadable_history_still_writes_the_row(tmp_path):
    rows = _real_rows(3)
    rows[1]["path"] = str(tmp_path / "gone.avro")
    curves = light_curves(rows)
    assert curves[0] is not None and curves[1] is None and curves[2] is not None
    assert write_sn_candidates(rows, str(tmp_path), "m 1") == 3
    page = (tmp_path / "sn_candidates.html").read_text()
    assert "history not readable" in page  # the script's text for a missing light curve


@needs_real
def test_page_records_carry_what_the_page_and_tns_need():
    rows = _real_rows(6)
    from pipeline.reports import candidate_rows

    ranked = candidate_rows(rows)
    for r in ranked:
        r["stamps"] = {}
    curves = light_curves(ranked)
    records = page_records(ranked, curves)
    for rec, row, lc in zip(records, ranked, curves, strict=True):
        assert rec["candid"] == str(row["candid"])  # a string: 19 digits exceed 2**53
        assert -90 <= rec["gal_b"] <= 90 and rec["band"] in "gri"
        assert rec["tns"]["discovery_datetime"] == jd_to_utc(lc.first.jd)
        assert rec["tns"]["discovery_mag"] == lc.first.magpsf
        assert rec["tns"]["discovery_filter"] == TNS_FILTER_IDS[lc.first.fid]
        nd = rec["tns"]["non_detection"]
        if lc.last_non_detection is None:
            assert nd is None
        else:
            assert nd["obsdate"] == jd_to_utc(lc.last_non_detection.jd)
            assert nd["limiting_flux"] == lc.last_non_detection.diffmaglim
    json.dumps(records, allow_nan=False)  # what the page embeds must be strict JSON


def test_page_is_one_file_and_data_cannot_close_its_script():
    rec = {"objectId": "</script><script>alert(1)</script>", "candid": "1"}
    page = render_page([rec], "t", "m")
    assert page.count("</script>") == 3  # config, data, the page's script: nothing injected
    for attr in ("src=", "href="):
        assert attr + '"http' not in page  # no CDN script, no external stylesheet


# --- streaming: one page per window ---------------------------------------------------------------
@needs_real
def test_streaming_writes_a_page_per_window_and_rewrites_it_for_late_rows(tmp_path):
    rows = _real_rows(5, raw=True)
    start = 1_699_999_800  # 2023-11-14 22:10:00 UTC; windows of 600 s
    stream = (
        BeamTestStream()
        .advance_watermark_to(start)
        .add_elements(
            [TimestampedValue(rows[0], start + 10), TimestampedValue(rows[1], start + 20)]
        )
        .add_elements([TimestampedValue(rows[2], start + 610)])
        .advance_watermark_to(start + 605)  # the first window closes: its page is written
        .add_elements([TimestampedValue(rows[3], start + 30)])  # late, within the lateness
        .advance_watermark_to(start + 1300)
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    # Through the streaming job's output stage, as `stampflow run --streaming --sn-page-dir`.
    streaming = StreamingOptions("projects/p/subscriptions/s", sn_page_dir=str(tmp_path))
    assert (streaming.window_s, streaming.lateness_s) == (600, 3600)
    model = ModelInfo.read(DEFAULT_MODEL)
    with beam.Pipeline(options=options) as p:
        rows_in = p | stream
        _ = {TAG_ROWS: rows_in} | PublishOutputs(streaming, None, model, 10, TnsReporter(74, "Me"))
    first = tmp_path / "sn_candidates_20231114T221000Z.csv"
    second = tmp_path / "sn_candidates_20231114T222000Z.csv"
    assert sorted(p.name for p in tmp_path.glob("*.html")) == [
        "sn_candidates_20231114T221000Z.html",
        "sn_candidates_20231114T222000Z.html",
    ]
    in_first = {int(r["candid"]) for r in csv.DictReader(first.open())}
    assert in_first == {rows[i]["candid"] for i in (0, 1, 3)}  # the late row rewrote it
    assert [int(r["candid"]) for r in csv.DictReader(second.open())] == [rows[2]["candid"]]
    page = (tmp_path / "sn_candidates_20231114T221000Z.html").read_text()
    assert "22:10 to 22:20 UTC" in page and model.label in page


# --- the page in a real browser -------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; scripts/ensure_venv.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as pw:
        try:
            # No sandbox: root in a container; no /dev/shm: containers often give it 64 MB.
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as e:  # e.g. a Chromium that cannot start in this container
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real run over the real alerts (every alert, so histories have detections too)."""
    if not REAL.is_dir():
        pytest.skip(f"real ZTF alerts not found at {REAL}")
    from pipeline.run_job import run

    out = tmp_path_factory.mktemp("real_run")
    run(
        [
            *("--input", str(REAL), "--output", str(out), "--select", "all", "--quiet-progress"),
            *("--tns-reporter", "A. Tester (Test U.) on behalf of stampflow"),
        ]
    )
    return out


def _open(browser, page_path, downloads=None):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_path.as_uri())
    return context, page, errors


def _csv_rows(out):
    return list(csv.DictReader((out / "sn_candidates.csv").open()))


def test_page_filters_sorts_and_counts(browser, real_run):
    rows = _csv_rows(real_run)
    assert len(rows) >= 10
    context, page, errors = _open(browser, real_run / "sn_candidates.html")
    count = page.locator("#shown-count")
    assert count.inner_text() == f"{len(rows)} of {len(rows)} shown"
    assert page.locator("tr.cand").count() == len(rows)
    assert page.locator("tr.cand svg.lc").count() == len(rows)  # a light curve each

    cut = float(np.median([float(r["p_SN"]) for r in rows]))
    page.fill("#f-psn", str(cut))
    want = sum(float(r["p_SN"]) >= cut for r in rows)
    assert count.inner_text() == f"{want} of {len(rows)} shown"
    assert page.locator("tr.cand:visible").count() == want

    page.fill("#f-psn", "0")
    page.uncheck(".f-band[value=g]")
    want = sum(r["fid"] != "1" for r in rows)
    assert count.inner_text() == f"{want} of {len(rows)} shown"
    page.check(".f-band[value=g]")

    page.fill("#f-gal-b", "30")
    want = sum(abs(float(r["gal_b"])) >= 30 for r in rows)
    assert count.inner_text() == f"{want} of {len(rows)} shown"
    page.fill("#f-gal-b", "0")

    night = rows[-1]["night"]
    page.select_option("#f-night", night)
    want = sum(r["night"] == night for r in rows)
    assert count.inner_text() == f"{want} of {len(rows)} shown"
    page.select_option("#f-night", "")

    page.select_option("#sort", "magpsf:1")
    shown = page.eval_on_selector_all("tr.cand", "els => els.map(e => e.dataset.candid)")
    by_mag = sorted(rows, key=lambda r: (float(r["magpsf"]), int(r["rank"])))
    assert shown == [r["candid"] for r in by_mag]

    page.locator("tr.cand img").first.click()
    assert page.locator("#zoom.open img").count() == 3  # the triplet, enlarged
    page.locator("#zoom").click()
    assert page.locator("#zoom.open").count() == 0
    assert errors == []
    context.close()


def test_vetting_survives_reload_and_exports_labels_and_tns(browser, real_run, tmp_path):
    rows = _csv_rows(real_run)
    context, page, errors = _open(browser, real_run / "sn_candidates.html")
    a, b, c = rows[0]["candid"], rows[1]["candid"], rows[2]["candid"]
    page.check(f"input[name='vet-{a}'][value=sn]")
    page.fill(f"tr[data-candid='{a}'] input.comment", 'rising, "hostless", 2 d')
    page.check(f"input[name='vet-{b}'][value=not_sn]")
    page.select_option(f"tr[data-candid='{b}'] select.cls", "VS")
    page.check(f"input[name='vet-{c}'][value=unsure]")

    page.reload()
    assert page.is_checked(f"input[name='vet-{a}'][value=sn]")
    assert page.is_checked(f"input[name='vet-{b}'][value=not_sn]")
    assert page.is_checked(f"input[name='vet-{c}'][value=unsure]")
    assert page.input_value(f"tr[data-candid='{a}'] input.comment") == 'rising, "hostless", 2 d'
    assert page.input_value(f"tr[data-candid='{b}'] select.cls") == "VS"
    stored = json.loads(page.evaluate(f"localStorage.getItem('{STORAGE_KEY}')"))
    assert set(stored) == {a, b, c}
    page.select_option("#f-vet", "")
    assert page.inner_text("#shown-count") == f"{len(rows) - 3} of {len(rows)} shown"
    page.select_option("#f-vet", "*")

    with page.expect_download() as download:
        page.click("#export-labels")
    labels = tmp_path / "labels.csv"
    download.value.save_as(labels)
    read = read_labels(str(labels))  # what stampflow train --labels reads
    by_candid = {r["candid"]: r for r in rows}
    assert read == {
        int(a): (by_candid[a]["objectId"], "SN"),
        int(b): (by_candid[b]["objectId"], "VS"),
    }
    assert next(iter(csv.DictReader(labels.open())))["comment"] == 'rising, "hostless", 2 d'

    # The reporter came from --tns-reporter; the group id must be given before exporting.
    assert page.input_value("#tns-reporter").startswith("A. Tester")
    page.click("#export-tns")
    assert "reporting group" in page.inner_text("#export-msg")
    page.fill("#tns-group", "74")
    with page.expect_download() as download:
        page.click("#export-tns")
    tns_file = tmp_path / "tns_report.json"
    download.value.save_as(tns_file)
    report = json.loads(tns_file.read_text())["at_report"]
    assert list(report) == ["0"]  # the SN-vetted candidate only
    at = report["0"]

    record = next(
        r for r in json.loads(page.inner_text("#sn-data")) if r["candid"] == a
    )  # the page's own data for candidate a
    lc = record["light_curve"]
    assert at["internal_name"] == by_candid[a]["objectId"]
    assert at["reporting_group_id"] == "74" and at["discovery_data_source_id"] == "48"
    assert at["reporter"] == "A. Tester (Test U.) on behalf of stampflow"
    assert float(at["ra"]["value"]) == pytest.approx(float(by_candid[a]["ra"]), abs=1e-6)
    assert float(at["dec"]["value"]) == pytest.approx(float(by_candid[a]["dec"]), abs=1e-6)
    assert at["discovery_datetime"] == jd_to_utc(lc["first"]["jd"])
    phot = at["photometry"]["photometry_group"]["0"]
    assert float(phot["flux"]) == pytest.approx(lc["first"]["magpsf"])
    assert phot["filter_value"] == TNS_FILTER_IDS[lc["first"]["fid"]]
    assert phot["flux_units"] == "1" and phot["instrument_value"] == "196"
    nd = lc["last_non_detection"]
    if nd is None:
        assert at["non_detection"]["archiveid"] == "0"
    else:
        assert at["non_detection"]["obsdate"] == jd_to_utc(nd["jd"])
        assert float(at["non_detection"]["limiting_flux"]) == pytest.approx(nd["diffmaglim"])
        assert at["non_detection"]["filter_value"] == TNS_FILTER_IDS[nd["fid"]]
    assert at["remarks"] == 'rising, "hostless", 2 d'
    assert errors == []
    context.close()


@needs_real
def test_page_with_500_candidates_loads_and_filters(browser, tmp_path):
    """The page stays usable at 500 candidates (the README's claim): every row built once."""
    base = _real_rows(20)
    rows = [{**base[i % 20], "candid": base[i % 20]["candid"] + i * 10**6} for i in range(500)]
    write_sn_candidates(rows, str(tmp_path), "m 1", TnsReporter(74, "me"))
    # The stamps make the page: 500 triplets of 63x63 PNGs.
    assert (tmp_path / "sn_candidates.html").stat().st_size < 12e6
    context, page, errors = _open(browser, tmp_path / "sn_candidates.html")
    assert page.inner_text("#shown-count") == "500 of 500 shown"
    page.fill("#f-psn", "0.5")
    want = sum(r["p_SN"] >= 0.5 for r in rows)
    assert page.inner_text("#shown-count") == f"{want} of 500 shown"
    assert page.input_value("#tns-group") == "74"
    assert errors == []
    context.close()


def test_no_candidates_page_says_so(browser, tmp_path):
    write_sn_candidates([], str(tmp_path), "m 1")
    context, page, errors = _open(browser, tmp_path / "sn_candidates.html")
    assert "No SN candidates in this run." in page.inner_text("body")
    assert page.inner_text("#shown-count") == "0 of 0 shown"
    assert errors == []
    context.close()
