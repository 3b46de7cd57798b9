// The SN candidates page (pipeline/sn_page.py embeds this file, its data and its config).
// Rows are built once; sorting reorders them and filtering hides them, so judgements typed
// into a row survive every sort and filter. No network: everything it needs is in the page.
// Candidates are ZTF's (magnitudes, as before Rubin) or Rubin's (c.survey === "lsst": fluxes in
// nJy, forced photometry, stamps in the visit's orientation, TNS ids left to the user).
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("sn-config").textContent);
  const data = JSON.parse(document.getElementById("sn-data").textContent);
  const BAND_COLOUR = { u: "#9467bd", g: "#2ca02c", r: "#d62728", i: "#ff7f0e", z: "#8c564b",
    y: "#17becf", "?": "#555" };
  const BAND_ORDER = ["u", "g", "r", "i", "z", "y"];  // Rubin's, by wavelength; ZTF's g r i among them
  const colour = (b) => BAND_COLOUR[b] || BAND_COLOUR["?"];
  const isRubin = (c) => c.survey === "lsst";
  const BANDS = { 1: "g", 2: "r", 3: "i" };
  const VETS = [["sn", "SN"], ["not_sn", "not SN"], ["unsure", "unsure"]];
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const fmt = (x, d) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

  // --- judgements, kept in localStorage by candid ----------------------------------------------
  function loadVets() {
    try { return JSON.parse(localStorage.getItem(config.storageKey) || "{}"); }
    catch (err) { return {}; }
  }
  let vets = loadVets();
  function saveVet(candid, vet) {
    vets = loadVets();  // another tab may have written meanwhile
    if (vet === null) { delete vets[candid]; } else { vets[candid] = vet; }
    localStorage.setItem(config.storageKey, JSON.stringify(vets));
  }

  // --- light curve ----------------------------------------------------------------------------
  function lightCurve(c) {
    const lc = c.light_curve;
    if (!lc) { return '<div class="lc-note">history not readable</div>'; }
    if (isRubin(c)) { return rubinCurve(c); }
    const W = 250, H = 130, L = 34, R = 8, T = 8, B = 24;
    const t0 = lc.first.jd;
    const pts = lc.detections.map((d) => ({ t: d.jd - t0, m: d.magpsf, e: d.sigmapsf || 0,
      b: BANDS[d.fid] || "?", pos: d.positive, first: d.jd === t0, own: d.jd === lc.alert.jd }));
    const uls = lc.upper_limits.map((u) => ({ t: u.jd - t0, m: u.diffmaglim, b: BANDS[u.fid] || "?" }));
    const ts = pts.map((p) => p.t).concat(uls.map((u) => u.t));
    let tmin = Math.min(...ts), tmax = Math.max(...ts);
    if (tmax - tmin < 2) { tmin -= 1; tmax += 1; }
    // The magnitude axis follows the detections and the limits fainter than the brightest of
    // them; a shallow limit (a bright-sky night) says nothing and is drawn at the top edge.
    const bright = Math.min(...pts.map((p) => p.m - p.e));
    const faint = Math.max(...pts.map((p) => p.m + p.e), ...uls.map((u) => u.m).filter((m) => m > bright));
    const mmin = bright - 0.3, mmax = faint + 0.3;
    const x = (t) => L + (t - tmin) / (tmax - tmin) * (W - L - R);
    const y = (m) => T + (Math.max(m, mmin) - mmin) / (mmax - mmin) * (H - T - B);  // bright on top
    let s = `<svg class="lc" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img">`;
    s += `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#999"/>`;
    s += `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#999"/>`;
    for (const m of [mmin + 0.3, (mmin + mmax) / 2, mmax - 0.3]) {
      s += `<text x="${L - 3}" y="${y(m) + 3}" font-size="9" text-anchor="end">${m.toFixed(1)}</text>`;
    }
    for (const t of [tmin, 0, tmax]) {
      s += `<text x="${x(t)}" y="${H - B + 11}" font-size="9" text-anchor="middle">${t.toFixed(0)}</text>`;
    }
    s += `<text x="${(L + W - R) / 2}" y="${H - 3}" font-size="9" text-anchor="middle">days from first detection · mag</text>`;
    for (const u of uls) {  // upper limit: an open triangle pointing down (fainter than this)
      const X = x(u.t), Y = y(u.m);
      s += `<path class="ul" d="M${X - 4},${Y - 3}L${X + 4},${Y - 3}L${X},${Y + 4}Z" fill="none" stroke="${BAND_COLOUR[u.b]}"><title>${u.b} > ${u.m.toFixed(2)}</title></path>`;
    }
    for (const p of pts) {
      const X = x(p.t), Y = y(p.m);
      if (p.e) { s += `<line x1="${X}" y1="${y(p.m - p.e)}" x2="${X}" y2="${y(p.m + p.e)}" stroke="${BAND_COLOUR[p.b]}"/>`; }
      const fill = p.pos ? BAND_COLOUR[p.b] : "#fff";
      s += `<circle class="det" cx="${X}" cy="${Y}" r="3.2" fill="${fill}" stroke="${BAND_COLOUR[p.b]}"><title>${p.b} ${p.m.toFixed(2)} ± ${p.e.toFixed(2)}</title></circle>`;
      if (p.first) { s += `<circle class="first" cx="${X}" cy="${Y}" r="6.5" fill="none" stroke="#000" stroke-width="1.2"><title>first detection</title></circle>`; }
      if (p.own && !p.first) { s += `<rect class="own" x="${X - 6}" y="${Y - 6}" width="12" height="12" fill="none" stroke="#000" stroke-dasharray="2,2"><title>this alert</title></rect>`; }
    }
    s += "</svg>";
    const f = lc.first, n = lc.last_non_detection;
    let note = `first detection (ringed) ${BANDS[f.fid] || "?"} ${f.magpsf.toFixed(2)}` +
      (f.sigmapsf ? ` ± ${f.sigmapsf.toFixed(2)}` : "");
    if (lc.alert.jd !== f.jd) { note += `; this alert (boxed) ${(lc.alert.jd - f.jd).toFixed(1)} d later`; }
    note += n ? `; last non-detection <b class="days">${lc.days_since_non_detection.toFixed(2)} d</b> before (${BANDS[n.fid] || "?"} &gt; ${n.diffmaglim.toFixed(2)})`
      : "; no non-detection in the 30-day history";
    return s + `<div class="lc-note">${note}</div>`;
  }

  // Rubin: flux [nJy] against time, error bars, a zero line; forced photometry as open squares.
  const nJy = (f) => (Math.abs(f) >= 1e4 ? `${(f / 1e3).toFixed(0)}k` : Math.abs(f) >= 1e3 ? `${(f / 1e3).toFixed(1)}k` : f.toFixed(0));
  function rubinCurve(c) {
    const lc = c.light_curve;
    const W = 250, H = 130, L = 38, R = 8, T = 8, B = 24;
    const t0 = lc.first.jd;
    const points = (s) => s.jd.map((jd, i) => ({ t: jd - t0, f: s.flux[i], e: s.flux_err[i] || 0,
      b: s.band[i] || "?", jd: jd }));
    const dets = points(lc.detections), fps = points(lc.forced);
    const uls = lc.upper_limits.jd.map((jd, i) => ({ t: jd - t0, f: lc.upper_limits.flux[i], b: lc.upper_limits.band[i] || "?" }));
    const all = dets.concat(fps);
    const ts = all.map((p) => p.t).concat(uls.map((u) => u.t));
    let tmin = Math.min(...ts), tmax = Math.max(...ts);
    if (tmax - tmin < 2) { tmin -= 1; tmax += 1; }
    // The flux axis follows the detections, zero, the limits and the middle 90% of the forced
    // points: a forced outlier (a bad visit) is drawn at the edge, its value in its tooltip.
    const sorted = fps.map((p) => p.f).sort((a, b) => a - b);
    const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
    const forcedRange = sorted.length ? [q(0.05), q(0.95)] : [];
    let lo = Math.min(0, ...dets.map((p) => p.f - p.e), ...forcedRange);
    let hi = Math.max(0, ...dets.map((p) => p.f + p.e), ...forcedRange, ...uls.map((u) => u.f));
    const pad = 0.06 * (hi - lo || 1);
    lo -= pad; hi += pad;
    const x = (t) => L + (t - tmin) / (tmax - tmin) * (W - L - R);
    const y = (f) => T + (hi - Math.min(Math.max(f, lo), hi)) / (hi - lo) * (H - T - B);  // bright on top
    let s = `<svg class="lc lc-flux" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img">`;
    s += `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#999"/>`;
    s += `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#999"/>`;
    s += `<line class="zero" x1="${L}" y1="${y(0)}" x2="${W - R}" y2="${y(0)}" stroke="#bbb" stroke-dasharray="3,3"/>`;
    for (const f of [lo + pad, 0, hi - pad]) {
      s += `<text x="${L - 3}" y="${y(f) + 3}" font-size="9" text-anchor="end">${nJy(f)}</text>`;
    }
    for (const t of [tmin, 0, tmax]) {
      s += `<text x="${x(t)}" y="${H - B + 11}" font-size="9" text-anchor="middle">${t.toFixed(0)}</text>`;
    }
    s += `<text x="${(L + W - R) / 2}" y="${H - 3}" font-size="9" text-anchor="middle">days from first detection · flux [nJy]</text>`;
    for (const u of uls) {  // 5-sigma limit: an open triangle pointing down
      const X = x(u.t), Y = y(u.f);
      s += `<path class="ul" d="M${X - 4},${Y - 3}L${X + 4},${Y - 3}L${X},${Y + 4}Z" fill="none" stroke="${colour(u.b)}"><title>${u.b} &lt; ${u.f.toFixed(0)} nJy</title></path>`;
    }
    for (const p of fps) {
      const X = x(p.t), Y = y(p.f);
      if (p.e) { s += `<line x1="${X}" y1="${y(p.f - p.e)}" x2="${X}" y2="${y(p.f + p.e)}" stroke="${colour(p.b)}" stroke-opacity="0.5"/>`; }
      s += `<rect class="forced" x="${X - 2}" y="${Y - 2}" width="4" height="4" fill="#fff" stroke="${colour(p.b)}"><title>forced ${p.b} ${p.f.toFixed(0)} ± ${p.e.toFixed(0)} nJy</title></rect>`;
    }
    for (const p of dets) {
      const X = x(p.t), Y = y(p.f);
      if (p.e) { s += `<line x1="${X}" y1="${y(p.f - p.e)}" x2="${X}" y2="${y(p.f + p.e)}" stroke="${colour(p.b)}"/>`; }
      s += `<circle class="det" cx="${X}" cy="${Y}" r="2.8" fill="${colour(p.b)}" stroke="${colour(p.b)}"><title>${p.b} ${p.f.toFixed(0)} ± ${p.e.toFixed(0)} nJy</title></circle>`;
      const first = Math.abs(p.jd - lc.first.jd) < 1e-5, own = Math.abs(p.jd - lc.alert.jd) < 1e-5;  // columns keep 6 decimals
      if (first) { s += `<circle class="first" cx="${X}" cy="${Y}" r="6.5" fill="none" stroke="#000" stroke-width="1.2"><title>first detection</title></circle>`; }
      if (own && !first) { s += `<rect class="own" x="${X - 6}" y="${Y - 6}" width="12" height="12" fill="none" stroke="#000" stroke-dasharray="2,2"><title>this alert</title></rect>`; }
    }
    s += "</svg>";
    const f = lc.first, n = lc.last_non_detection;
    let note = `first detection (ringed) ${f.band || "?"} ${f.flux.toFixed(0)}` + (f.flux_err ? ` ± ${f.flux_err.toFixed(0)}` : "") +
      " nJy" + (f.magpsf !== null ? ` (${f.magpsf.toFixed(2)} mag)` : "");
    if (lc.alert.jd !== f.jd) { note += `; this alert (boxed) ${(lc.alert.jd - f.jd).toFixed(1)} d later`; }
    note += `; ${lc.detections.jd.length} detections, ${lc.forced.jd.length} forced`;
    note += n ? `; last non-detection <b class="days">${lc.days_since_non_detection.toFixed(2)} d</b> before (${n.band || "?"} &lt; ${n.flux_limit.toFixed(0)} nJy)`
      : "; no non-detection limits in the packet";
    return s + `<div class="lc-note">${note}</div>`;
  }

  // --- the table --------------------------------------------------------------------------------
  function stampCell(c) {
    return ["science", "template", "difference"].filter((k) => c.stamps[k]).map((k) =>
      `<img alt="${k}" title="${k} (click to zoom)" data-kind="${k}" src="${c.stamps[k]}">`).join("");
  }
  // Rubin stamps: their size and scale, and their orientation (the visit's, not north-up).
  function stampGeometry(c) {
    const g = c.stamp_geometry;
    if (!isRubin(c) || !g) { return ""; }
    const size = g.nx === null ? `? px at ${g.pixel_scale}″/px`
      : `${g.nx}×${g.ny} px × ${g.pixel_scale}″ = ${g.fov[0]}″×${g.fov[1]}″`;
    const rot = g.rotpa === null ? "unknown" : `${g.rotpa.toFixed(1)}°`;
    return `<div class="small stamp-geometry">${size}; visit orientation (ROTPA ${rot}), not north-up</div>`;
  }
  function vetCell(c) {
    const v = vets[c.candid] || {};
    const radios = VETS.map(([val, label]) => `<label><input type="radio" name="vet-${c.candid}" value="${val}"${v.vet === val ? " checked" : ""}> ${label}</label>`).join("");
    const opts = config.classes.filter((k) => k !== "SN").map((k) =>
      `<option${(v.cls || "bogus") === k ? " selected" : ""}>${k}</option>`).join("");
    return `<div class="vet">${radios}<label class="small">if not SN: <select class="cls">${opts}</select></label>` +
      `<input class="comment" type="text" placeholder="comment" value="${esc(v.comment || "")}"></div>`;
  }
  function rowHtml(c) {
    const probs = Object.entries(c.probabilities).map(([k, p]) => `${k}=${p.toFixed(2)}`).join(" ");
    const ps1 = isRubin(c) ? "n/a (Rubin alerts carry no PS1 match)"
      : c.distpsnr1 === null ? "none" : `sg=${fmt(c.sgscore1, 2)} at ${fmt(c.distpsnr1, 1)}″`;
    const links = [["alerce_url", "ALeRCE"], ["fink_url", "Fink"], ["tns_url", "TNS"], ["simbad_url", "SIMBAD"], ["ned_url", "NED"]]
      .filter(([k]) => c.links[k])
      .map(([k, n]) => `<a href="${esc(c.links[k])}" target="_blank" rel="noopener">${n}</a>`).join(" · ");
    const rubin = !isRubin(c) ? "" : `<div class="small">psfFlux ${fmt(c.psfFlux, 0)} ± ${fmt(c.psfFluxErr, 0)} nJy</div>` +
      `<div class="small">SNR ${fmt(c.snr, 1)} · reliability ${fmt(c.reliability, 2)}</div>`;
    const survey = !isRubin(c) ? "" : `<div class="small">Rubin ${c.objectId.startsWith("ss") ? "solar-system object" : "diaObject"}</div>`;
    return `<td class="num">${c.rank}</td>` +
      `<td><b>${esc(c.objectId)}</b>${survey}<div class="small">candid ${c.candid}</div><div class="small">night ${c.night}</div></td>` +
      `<td class="stamps">${stampCell(c)}${stampGeometry(c)}</td><td>${lightCurve(c)}</td>` +
      `<td class="num"><span class="bar" style="width:${(60 * c.p_SN).toFixed(0)}px"></span>${c.p_SN.toFixed(3)}<div class="small">${probs}</div></td>` +
      `<td>${esc(c.predicted_class)}${c.rule ? `<div class="rule">rule: ${esc(c.rule)}</div>` : ""}</td>` +
      `<td class="num">${fmt(c.magpsf, 2)} (${esc(c.band)})${rubin}</td>` +
      `<td class="num">${c.ra.toFixed(5)}<br>${c.dec >= 0 ? "+" : ""}${c.dec.toFixed(5)}<div class="small">|b| ${Math.abs(c.gal_b).toFixed(1)}°</div></td>` +
      `<td>${esc(ps1)}</td><td>${links}</td><td>${vetCell(c)}</td>`;
  }

  const app = document.getElementById("app");
  const nights = [...new Set(data.map((c) => c.night))].sort();
  const rules = [...new Set(data.map((c) => c.rule).filter((r) => r))].sort();
  // ZTF's g r i always (as before Rubin), and every other band a candidate has.
  const present = new Set(data.map((c) => c.band));
  const bands = BAND_ORDER.filter((b) => ["g", "r", "i"].includes(b) || present.has(b))
    .concat([...present].filter((b) => !BAND_ORDER.includes(b) && b !== "?").sort());
  app.innerHTML = `<div class="controls">
    <label>sort by <select id="sort">
      <option value="p_SN:-1">P(SN), highest first</option><option value="magpsf:1">magnitude, brightest first</option>
      <option value="magpsf:-1">magnitude, faintest first</option><option value="abs_b:-1">|Galactic latitude|, highest first</option>
      <option value="distpsnr1:-1">PS1 distance, farthest first</option><option value="sgscore1:1">PS1 star score, lowest first</option>
      <option value="days:1">days since non-detection, fewest first</option><option value="jd:1">time, earliest first</option></select></label>
    <label>P(SN) ≥ <input id="f-psn" type="number" step="0.05" min="0" max="1" value="0"></label>
    <label>mag from <input id="f-mag-min" type="number" step="0.5"></label>
    <label>mag to <input id="f-mag-max" type="number" step="0.5"></label>
    <div class="bands">band ${bands.map((b) => `<label><input class="f-band" type="checkbox" value="${esc(b)}" checked>${esc(b)}</label>`).join("")}</div>
    <label>|b| ≥ [deg] <input id="f-gal-b" type="number" step="5" min="0" max="90" value="0"></label>
    <label>PS1 distance ≥ [″] <input id="f-dist-min" type="number" step="0.5" min="0"></label>
    <label>PS1 star score ≤ <input id="f-sg-max" type="number" step="0.1" min="0" max="1"></label>
    <label>night <select id="f-night"><option value="">all</option>${nights.map((n) => `<option>${n}</option>`).join("")}</select></label>
    <label>rule <select id="f-rule"><option value="*">any</option><option value="">none fired</option>${rules.map((r) => `<option>${esc(r)}</option>`).join("")}</select></label>
    <label>vetting <select id="f-vet"><option value="*">all</option><option value="">not vetted</option>${VETS.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}</select></label>
    <span id="shown-count"></span>
  </div>
  <div class="controls">
    <label>TNS reporter <input id="tns-reporter" type="text" size="40"></label>
    <label>TNS reporting group id <input id="tns-group" type="text" size="6"></label>
    <button id="export-labels" type="button">export labels.csv</button>
    <button id="export-tns" type="button">export TNS report (SN-vetted)</button>
    <span id="export-msg"></span>
  </div>
  <table><thead><tr><th>#</th><th>object</th><th>science · reference · difference</th><th>light curve</th>
  <th>P(SN)</th><th>class</th><th>mag</th><th>position [deg]</th><th>PS1 nearest</th><th>look up</th><th>vetting</th></tr></thead>
  <tbody id="cands"></tbody></table>
  ${data.length ? "" : "<p>No SN candidates in this run.</p>"}
  <div id="zoom" title="click to close"></div>`;

  const tbody = document.getElementById("cands");
  const rows = new Map();
  for (const c of data) {
    const tr = document.createElement("tr");
    tr.className = "cand";
    tr.dataset.candid = c.candid;
    tr.innerHTML = rowHtml(c);
    rows.set(c.candid, tr);
    tbody.appendChild(tr);
  }
  const byCandid = new Map(data.map((c) => [c.candid, c]));

  function rowVet(tr) {
    const checked = tr.querySelector('input[type=radio]:checked');
    return {
      vet: checked ? checked.value : null,
      cls: tr.querySelector("select.cls").value,
      comment: tr.querySelector("input.comment").value,
    };
  }
  function paint(tr) {
    const v = vets[tr.dataset.candid];
    tr.classList.remove("vet-sn", "vet-not_sn", "vet-unsure");
    if (v && v.vet) { tr.classList.add("vet-" + v.vet); }
  }
  tbody.addEventListener("change", onEdit);
  tbody.addEventListener("input", (ev) => { if (ev.target.classList.contains("comment")) { onEdit(ev); } });
  function onEdit(ev) {
    const tr = ev.target.closest("tr.cand");
    const v = rowVet(tr);
    saveVet(tr.dataset.candid, v.vet || v.comment ? v : null);
    paint(tr);
    if (ev.type === "change") { apply(); }
  }

  const num = (id) => { const v = document.getElementById(id).value; return v === "" ? null : Number(v); };
  function keep(c) {
    const psn = num("f-psn"), lo = num("f-mag-min"), hi = num("f-mag-max"), b = num("f-gal-b");
    const dmin = num("f-dist-min"), sgmax = num("f-sg-max");
    const bands = [...document.querySelectorAll(".f-band:checked")].map((el) => el.value);
    const night = document.getElementById("f-night").value;
    const rule = document.getElementById("f-rule").value;
    const vet = document.getElementById("f-vet").value;
    if (psn !== null && c.p_SN < psn) { return false; }
    if (lo !== null && !(c.magpsf >= lo)) { return false; }
    if (hi !== null && !(c.magpsf <= hi)) { return false; }
    if (!bands.includes(c.band)) { return false; }
    if (b !== null && Math.abs(c.gal_b) < b) { return false; }
    // No PS1 neighbour counts as infinitely far and as no star.
    if (dmin !== null && c.distpsnr1 !== null && c.distpsnr1 < dmin) { return false; }
    if (sgmax !== null && c.sgscore1 !== null && c.sgscore1 > sgmax) { return false; }
    if (night && c.night !== night) { return false; }
    if (rule !== "*" && c.rule !== rule) { return false; }
    const v = (vets[c.candid] || {}).vet || "";
    if (vet !== "*" && v !== vet) { return false; }
    return true;
  }
  function sortValue(c, key) {
    if (key === "abs_b") { return Math.abs(c.gal_b); }
    if (key === "days") { return c.days_since_non_detection; }
    return c[key];
  }
  function apply() {
    const [key, dir] = document.getElementById("sort").value.split(":");
    const order = data.slice().sort((a, b) => {
      const x = sortValue(a, key), y = sortValue(b, key);
      if (x === null || x === undefined) { return (y === null || y === undefined) ? a.rank - b.rank : 1; }
      if (y === null || y === undefined) { return -1; }
      return (x - y) * Number(dir) || a.rank - b.rank;
    });
    // Rows move only when the order changes: moving them under a click in progress (a comment's
    // change event fires on the mousedown that blurs it) would swallow that click.
    const current = [...tbody.children].map((tr) => tr.dataset.candid);
    if (order.some((c, i) => c.candid !== current[i])) {
      for (const c of order) { tbody.appendChild(rows.get(c.candid)); }
    }
    let shown = 0;
    for (const c of order) {
      const ok = keep(c);
      const tr = rows.get(c.candid);
      if (tr.hidden === ok) { tr.hidden = !ok; }
      shown += ok;
    }
    document.getElementById("shown-count").textContent = `${shown} of ${data.length} shown`;
  }
  document.querySelector(".controls").addEventListener("input", apply);
  document.querySelector(".controls").addEventListener("change", apply);
  for (const tr of rows.values()) { paint(tr); }
  apply();

  // --- zoom -------------------------------------------------------------------------------------
  const zoom = document.getElementById("zoom");
  tbody.addEventListener("click", (ev) => {
    if (ev.target.tagName !== "IMG") { return; }
    const c = byCandid.get(ev.target.closest("tr.cand").dataset.candid);
    zoom.innerHTML = `<div>${stampCell(c)}</div><p>${esc(c.objectId)} · science · reference · difference (5×)</p>${stampGeometry(c)}`;
    zoom.classList.add("open");
  });
  zoom.addEventListener("click", () => zoom.classList.remove("open"));
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") { zoom.classList.remove("open"); } });

  // --- export -----------------------------------------------------------------------------------
  const reporter = document.getElementById("tns-reporter"), group = document.getElementById("tns-group");
  const tnsKey = config.storageKey + ".tns";
  const savedTns = JSON.parse(localStorage.getItem(tnsKey) || "{}");
  reporter.value = savedTns.reporter || config.tns.reporter;
  group.value = savedTns.reporting_group_id || config.tns.reporting_group_id;
  for (const el of [reporter, group]) {
    el.addEventListener("input", () => localStorage.setItem(tnsKey, JSON.stringify(
      { reporter: reporter.value, reporting_group_id: group.value })));
  }
  const msg = document.getElementById("export-msg");
  function download(name, text, type) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], { type: type }));
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 0);
  }
  const csvField = (s) => (/[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
  document.getElementById("export-labels").addEventListener("click", () => {
    vets = loadVets();
    const lines = ["candid,objectId,class,vetting,comment"];
    for (const c of data) {
      const v = vets[c.candid];
      if (!v || (v.vet !== "sn" && v.vet !== "not_sn")) { continue; }  // unsure is not a label
      const cls = v.vet === "sn" ? "SN" : v.cls;
      lines.push([c.candid, c.objectId, cls, v.vet, v.comment || ""].map(csvField).join(","));
    }
    msg.textContent = `${lines.length - 1} labels exported`;
    download("labels.csv", lines.join("\n") + "\n", "text/csv");
  });
  document.getElementById("export-tns").addEventListener("click", () => {
    vets = loadVets();
    if (!reporter.value.trim() || !group.value.trim()) {
      msg.textContent = "fill in the TNS reporter and reporting group id first";
      return;
    }
    const report = {};
    let i = 0, rubinCount = 0;
    // A Rubin record's TNS fields name their own (empty) ids; a ZTF record takes the page's.
    const own = (t, key) => (key in t ? t[key] : config.tns[key]);
    const str = (v) => (v === null || v === undefined ? "" : String(v));
    for (const c of data) {
      if ((vets[c.candid] || {}).vet !== "sn") { continue; }
      const t = c.tns, rubin = isRubin(c);
      rubinCount += rubin;
      const err = str(own(t, "position_error_arcsec"));
      const instrument = own(t, "instrument_value"), exptime = rubin ? t.exptime : "30";
      const nd = t.non_detection ? {
        obsdate: t.non_detection.obsdate, limiting_flux: String(t.non_detection.limiting_flux),
        flux_units: "1", filter_value: t.non_detection.filter_value,
        instrument_value: instrument, exptime: exptime, observer: "Robot",
        comments: rubin ? `Rubin difference-image limit (alert packet), band ${t.non_detection.filter_name}`
          : "ZTF difference-image limit (alert history)",
      } : { archiveid: "0", archival_remarks: rubin ? "no non-detection limits in the Rubin alert packet"
        : "no ZTF non-detection in the alert's 30-day history" };
      report[String(i++)] = {
        ra: { value: c.ra.toFixed(6), error: err, units: "arcsec" },
        dec: { value: c.dec.toFixed(6), error: err, units: "arcsec" },
        reporting_group_id: group.value.trim(),
        discovery_data_source_id: own(t, "discovery_data_source_id"),
        reporter: reporter.value.trim(),
        discovery_datetime: t.discovery_datetime,
        at_type: "1",
        internal_name: c.objectId,
        remarks: (vets[c.candid].comment || "") ,
        non_detection: nd,
        photometry: { photometry_group: { "0": {
          obsdate: t.discovery_datetime, flux: str(t.discovery_mag),
          flux_error: t.discovery_mag_error === null ? "" : String(t.discovery_mag_error),
          limiting_flux: t.discovery_limit === null ? "" : String(t.discovery_limit),
          flux_units: "1", filter_value: t.discovery_filter,
          instrument_value: instrument, exptime: exptime, observer: "Robot",
          comments: rubin ? `Rubin alert ${c.candid}, band ${t.discovery_filter_name}` : "ZTF alert " + c.candid,
        } } },
      };
    }
    msg.textContent = `${i} SN-vetted candidates in the TNS report` + (rubinCount
      ? `; ${rubinCount} Rubin: pick TNS's instrument, discovery data source and filter ids for Rubin before uploading` : "");
    download("tns_report.json", JSON.stringify({ at_report: report }, null, 1), "application/json");
  });
})();
