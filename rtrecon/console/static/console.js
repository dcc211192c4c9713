// The console page: one WebSocket, a snapshot on connecting, then an update per change pushed by
// the server. Nothing here polls: the server pushes, and a closed socket is re-opened once it
// closes (the console or its network came back).
"use strict";

const runs = new Map();      // run -> Map(index -> volume)
const trials = new Map();    // "run:trial" -> trial
let summary = null;
let retry = 500;

const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 2) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits));
const pct = (v) => (v === null || v === undefined ? "—" : (100 * v).toFixed(1) + " %");

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null) node.append(c);
  return node;
}

function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.onopen = () => { retry = 500; setConnection(true); };
  ws.onmessage = (event) => apply(JSON.parse(event.data));
  ws.onclose = () => { setConnection(false); setTimeout(connect, retry); retry = Math.min(retry * 2, 5000); };
}

function setConnection(up) {
  const c = $("connection");
  c.textContent = up ? "live" : "console disconnected: reconnecting…";
  c.className = "pill " + (up ? "ok" : "bad");
}

function apply(msg) {
  if (msg.type === "snapshot") { runs.clear(); trials.clear(); }
  for (const v of msg.volumes) {
    if (!runs.has(v.run)) runs.set(v.run, new Map());
    runs.get(v.run).set(v.index, v);
  }
  for (const t of msg.trials) trials.set(t.run + ":" + t.trial, t);
  summary = msg.summary;
  renderSummary();
  if (msg.volumes.length || msg.type === "snapshot") { renderMotion(); renderLatency(); }
  if (msg.trials.length || msg.type === "snapshot") { renderTrials(); renderLatency(); }
}

function renderSummary() {
  const s = summary;
  $("session").textContent = s.session;
  $("state").textContent = s.state;
  $("received").textContent = s.received;
  $("expected").textContent = s.expected || "—";
  $("missing").textContent = s.missing;
  $("tr").textContent = s.tr ? s.tr + " s" : "—";
  $("restarts").textContent = s.engine_restarts;
  const names = { engine: "engine", bridge_alive: "bridge → engine", stimulus_events_alive: "stimulus → engine",
                  stimulus_results_alive: "engine → stimulus" };
  $("links").replaceChildren(...Object.entries(names).map(([key, name]) => {
    const v = s.links[key];
    return el("span", { class: "pill " + (v === undefined ? "unknown" : v ? "ok" : "bad"), "data-link": key,
                        text: name + (v === undefined ? " ?" : v ? " ✓" : " ✗") });
  }));
  const lead = s.bridge_lead;
  $("bridge-lead").textContent = lead === null ? "—" :
    lead.lead + " volume(s)" + (lead.bound ? " (bound " + lead.bound + ")" : " (unbounded)");
  $("decoding").textContent = s.decoder.trials_decoding;
  $("pending").textContent = s.decoder.results_pending;
  $("ready").textContent = s.decoder.ready ? "yes" : "falling behind";
  $("gpu").textContent = s.decoder.gpu_memory_mb === null ? "— (not on a GPU)" : fmt(s.decoder.gpu_memory_mb, 0) + " MB";
  $("task").textContent = s.accuracy.task;
  $("scored").textContent = s.accuracy.trials;
  $("top1").textContent = pct(s.accuracy.top1);
  $("top5").textContent = pct(s.accuracy.top5);
  $("cpd-row").classList.toggle("hidden", !s.accuracy.cpd_trials);
  $("cpd-mean").textContent = s.accuracy.cpd_trials ? `${fmt(s.accuracy.cpd_mean, 3)} (${s.accuracy.cpd_trials} trials)` : "—";
  $("two-way").textContent = pct(s.accuracy.pairmate_two_way);
  $("banners").replaceChildren(...s.banners.map((b) => el("div", { class: "banner " + b.level, text: b.text })));
  const alarm = $("fd-alarm");
  alarm.classList.toggle("hidden", !s.alarm);
  alarm.textContent = s.alarm ? `FD alarm: ${fmt(s.alarm.fd)} mm at volume ${s.alarm.index} (threshold ${s.fd_threshold_mm} mm)` : "";
  $("pause").textContent = s.feedback_paused ? "Resume feedback" : "Pause feedback";
  $("control-log").replaceChildren(...s.controls.slice().reverse().map((c) =>
    el("li", { text: new Date(c.time * 1000).toLocaleTimeString() + " " + c.action.replace("_", " ") +
               (c.run !== undefined ? " run " + c.run : "") + (c.trial !== undefined ? " trial " + c.trial : "") })));
}

function currentVolumes() {
  if (!summary || summary.run === null || !runs.has(summary.run)) return [];
  return [...runs.get(summary.run).values()].sort((a, b) => a.index - b.index);
}

function line(svg, points, cls, n, lo, hi) {
  const xs = (i) => (n > 1 ? (1000 * i) / (n - 1) : 0);
  const ys = (v) => 115 - (110 * (v - lo)) / (hi - lo || 1);
  let d = "";
  for (const [i, v] of points) if (v !== null) d += `${xs(i).toFixed(1)},${ys(v).toFixed(1)} `;
  const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  pl.setAttribute("points", d); pl.setAttribute("class", cls);
  svg.append(pl);
  return { xs, ys };
}

function svgText(svg, x, y, text) {
  const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
  t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("class", "axis"); t.textContent = text;
  svg.append(t);
}

function renderMotion() {
  const vols = currentVolumes();
  const n = Math.max(vols.length ? vols[vols.length - 1].index + 1 : 0, summary ? summary.expected || 0 : 0);
  const plots = [["plot-trans", ["trans_x", "trans_y", "trans_z"], 1, "mm"], ["plot-rot", ["rot_x", "rot_y", "rot_z"], 180 / Math.PI, "°"]];
  for (const [id, keys, scale, unit] of plots) {
    const svg = $(id); svg.replaceChildren();
    const vals = vols.flatMap((v) => keys.map((k) => v[k])).filter((v) => v !== null).map((v) => v * scale);
    const lo = Math.min(-0.5, ...vals), hi = Math.max(0.5, ...vals);
    keys.forEach((k, j) => line(svg, vols.map((v) => [v.index, v[k] === null ? null : v[k] * scale]), "xyz"[j], n, lo, hi));
    svgText(svg, 4, 12, `${fmt(hi, 1)} ${unit}`); svgText(svg, 4, 116, `${fmt(lo, 1)} ${unit}`);
  }
  const svg = $("plot-fd"); svg.replaceChildren();
  const thr = summary.fd_threshold_mm;
  const fds = vols.map((v) => v.fd).filter((v) => v !== null);
  const hi = Math.max(thr * 1.5, ...fds);
  const { xs, ys } = line(svg, vols.map((v) => [v.index, v.fd]), "fd", n, 0, hi);
  line(svg, [[0, thr], [Math.max(n - 1, 1), thr]], "thr", Math.max(n, 2), 0, hi);
  for (const v of vols) {
    if (v.missing || (v.fd !== null && v.fd > thr)) {
      const c = document.createElementNS("http://www.w3.org/2000/svg", "circle");
      c.setAttribute("cx", xs(v.index)); c.setAttribute("cy", v.missing ? 110 : ys(v.fd)); c.setAttribute("r", 4);
      c.setAttribute("class", v.missing ? "miss" : "over");
      svg.append(c);
    }
  }
  svgText(svg, 4, 12, `${fmt(hi, 2)} mm`);
}

function renderLatency() {
  const vols = currentVolumes().slice(-200);
  const svg = $("plot-latency"); svg.replaceChildren();
  const lat = vols.map((v) => v.latency_ms).filter((v) => v !== null);
  const hi = Math.max(1, ...lat);
  vols.forEach((v, i) => {
    if (v.latency_ms === null) return;
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const w = 1000 / Math.max(vols.length, 1), h = (55 * v.latency_ms) / hi;
    r.setAttribute("x", i * w); r.setAttribute("width", Math.max(w - 1, 1)); r.setAttribute("y", 58 - h); r.setAttribute("height", h);
    r.setAttribute("class", "lat");
    svg.append(r);
  });
  svgText(svg, 4, 10, `${fmt(hi, 0)} ms`);
  const stages = [];
  const last = vols.length ? vols[vols.length - 1] : null;
  if (last) {
    const names = { bridge: "read → received", persist: "→ stored", realign: "→ realigned", glm: "→ GLM" };
    for (const [key, name] of Object.entries(names)) {
      if (last.stages[key] !== undefined) stages.push([name, fmt(last.stages[key], 1) + " ms"]);
    }
    stages.push(["received → GLM", fmt(last.latency_ms, 0) + " ms", "volume " + last.index]);
  }
  const latest = [...trials.values()].filter((t) => t.releases.length).sort((a, b) => b.trial - a.trial)[0];
  if (latest) {
    const r = latest.releases[latest.releases.length - 1];
    const L = r.latencies, S = r.stamps;
    if (L.betas_s !== undefined) stages.push(["released (beta)", fmt(L.betas_s * 1000, 0) + " ms"]);
    if (L.decode_s !== undefined) stages.push(["decoded", fmt(L.decode_s * 1000, 0) + " ms"]);
    if (L.retrieval_s !== undefined) stages.push(["retrieval", fmt(L.retrieval_s * 1000, 0) + " ms"]);
    if (L.image_s !== undefined) stages.push(["image", fmt(L.image_s, 2) + " s"]);
    if (S.sent !== undefined && S.trial_ready !== undefined) stages.push(["ready → sent", fmt(S.sent - S.trial_ready, 2) + " s"]);
    if (r.shown) {
      // sent -> shown crosses two machines' clocks; arrived -> shown is the stimulus PC's own
      if (S.sent !== undefined) stages.push(["sent → shown", fmt(r.shown.wall - S.sent, 2) + " s"]);
      stages.push(["shown", fmt(r.shown.received_to_shown_s * 1000, 0) + " ms after it arrived", "@" + fmt(r.shown.run_s, 2) + " s"]);
    } else {
      stages.push(["shown", "not yet"]);
    }
    stages.push(["trial", String(latest.trial)]);
  }
  $("latency-strip").replaceChildren(...stages.map(([name, value, note]) =>
    el("span", { class: "stage", text: `${name}: ${value}${note ? " (" + note + ")" : ""}` })));
}

function picture(src, label) {
  if (!src) return el("div", { class: "none", text: label });
  const img = el("img", { src, alt: label, title: label });
  img.onerror = () => img.replaceWith(el("div", { class: "none", text: label }));
  return img;
}

function control(body) {
  return fetch("/api/control", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

// Pairmate distinctiveness as neurofeedback studies draw it: -1 (the pairmate) .. 0 .. +1 (the seen image).
function cpdBar(cpd, pairmate) {
  const share = Math.max(0, Math.min(1, (cpd + 1) / 2));
  const bar = el("div", { class: "cpd-bar" }, el("span", { class: cpd > 0 ? "fill good" : "fill poor" }));
  bar.firstChild.style.width = (100 * share).toFixed(1) + "%";
  return el("div", { class: "cpd", title: "pairmate distinctiveness: +1 at the seen image, -1 at its pairmate " + pairmate },
    el("span", { class: "cpd-value", text: "CPD " + (cpd >= 0 ? "+" : "") + fmt(cpd, 2) }), bar);
}

function renderTrials() {
  const list = [...trials.values()].filter((t) => !summary || t.run === summary.run || summary.run === null)
    .sort((a, b) => b.run - a.run || b.trial - a.trial);
  $("trials").replaceChildren(...list.map((t) => {
    const latest = t.releases.length ? t.releases[t.releases.length - 1] : null;
    const releases = el("div", { class: "releases" }, ...t.releases.map((r) =>
      el("span", { class: r.final ? "final" : "", text: (r.final ? "final" : "r" + r.release) +
                   (r.release_s !== null && !Number.isNaN(r.release_s) && r.release_s ? ` @${fmt(r.release_s, 1)} s` : "") })));
    if (!t.releases.length) releases.append(el("span", { text: "waiting" }));
    const top = el("ol", { class: "top5" }, ...(latest ? latest.retrieved : []).map((id, i) => {
      const icon = el("img", { src: "/gallery/" + encodeURIComponent(id), alt: "" });
      icon.onerror = () => icon.remove();  // no gallery folder, or not in it: the id alone
      return el("li", { class: id === t.stimulus ? "hit" : "" }, icon, `${id} (${fmt(latest.scores[i], 3)})`);
    }));
    const rank = !latest || !latest.retrieved.length ? "—" : latest.rank ? "rank " + latest.rank : `not in top-${latest.n_retrieved}`;
    const bad = el("button", { text: t.bad ? "unmark bad" : "mark bad" });
    bad.onclick = () => control({ action: t.bad ? "unmark_bad" : "mark_bad", run: t.run, trial: t.trial });
    const cpd = latest && latest.cpd !== null && latest.cpd !== undefined ? cpdBar(latest.cpd, latest.pairmate) : null;
    return el("div", { class: "trial" + (t.bad ? " bad" : ""), "data-run": t.run, "data-trial": t.trial },
      el("div", {}, el("strong", { text: "trial " + t.trial }), el("br"),
         el("span", { class: "hint", text: t.onset !== null ? "onset " + fmt(t.onset, 1) + " s" : "" })),
      picture(t.stimulus ? "/gallery/" + encodeURIComponent(t.stimulus) : null, t.stimulus || "no stimulus"),
      el("div", {}, el("div", { class: "hint", text: t.stimulus }), releases, el("div", { class: "hint", text: latest ? latest.decoder : "" })),
      picture(latest ? latest.thumbnail : null, "no reconstruction"),
      top,
      el("div", {}, el("div", { class: "rank", text: rank }), cpd, bad));
  }));
}

$("pause").onclick = () => control({ action: summary && summary.feedback_paused ? "resume_feedback" : "pause_feedback" });
$("end-run").onclick = () => {
  if (summary && summary.run !== null && confirm(`End run ${summary.run}? This is recorded in the session's records.`)) {
    control({ action: "end_run", run: summary.run });
  }
};
connect();
