// etp-search web page: plain JavaScript, no build step, no network beyond this server.
"use strict";

const API = "api/v1";
const $ = (id) => document.getElementById(id);
const LEAD_GRID = [["I", "aVR", "V1", "V4"], ["II", "aVL", "V2", "V5"], ["III", "aVF", "V3", "V6"]];
let subject = null;      // what the zero-shot panel scores: {kind: "record", id} or {kind: "upload", files}
let lastFiles = null;

// ------------------------------------------------------------------ API calls

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = sessionStorage.getItem("etp-token");
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function call(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const res = await fetch(API + path, opts);
  if (res.status === 401) { $("token-form").hidden = false; }
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res;
}

const getJSON = async (path) => (await call(path)).json();
const postJSON = async (path, body) =>
  (await call(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})).json();

function showError(err) {
  const box = $("error");
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
}

function busy(on) { document.body.classList.toggle("busy", on); }

// ------------------------------------------------------------------ drawing

// 12 leads as the classic 3x4 printout (2.5 s per column) on a light ECG grid.
function drawThumb(canvas, sig) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  ctx.fillStyle = "#fff7f7"; ctx.fillRect(0, 0, W, H);
  const pxPerS = W / 10, rowH = H / 3, pxPerMv = rowH / 3;
  ctx.lineWidth = 1;
  for (let t = 0; t <= 10.0001; t += 0.2) {           // 5 mm major grid: 0.2 s, 0.5 mV
    ctx.strokeStyle = "#f3c6c6"; ctx.beginPath(); ctx.moveTo(t * pxPerS, 0); ctx.lineTo(t * pxPerS, H); ctx.stroke();
  }
  for (let y = 0; y <= H; y += pxPerMv * 0.5) {
    ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(W, y); ctx.stroke();
  }
  const idx = Object.fromEntries(sig.leads.map((l, i) => [l, i]));
  const perS = sig.points / Math.max(sig.seconds, 1e-6);
  const colS = Math.min(2.5, sig.seconds / 4);
  ctx.strokeStyle = "#111"; ctx.lineWidth = 1.1; ctx.font = "10px sans-serif"; ctx.fillStyle = "#333";
  LEAD_GRID.forEach((row, r) => row.forEach((lead, c) => {
    const data = sig.data[idx[lead]];
    const i0 = Math.floor(c * colS * perS), i1 = Math.min(data.length, Math.floor((c + 1) * colS * perS));
    const base = (r + 0.5) * rowH;
    ctx.beginPath();
    for (let i = i0; i < i1; i++) {
      const x = (c * 2.5 + (i - i0) / perS) * pxPerS;
      const y = base - Math.max(-1.5, Math.min(1.5, data[i])) * pxPerMv;
      if (i === i0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.stroke();
    ctx.fillText(lead, c * 2.5 * pxPerS + 3, r * rowH + 11);
  }));
  canvas.dataset.drawn = "1";
}

async function thumbFor(canvas, id) {
  try {
    drawThumb(canvas, await getJSON("/records/" + encodeURIComponent(id) + "/signal?points=500"));
  } catch (err) {
    canvas.replaceWith(Object.assign(document.createElement("p"), {className: "hint", textContent: err.message}));
  }
}

// ------------------------------------------------------------------ results

function labelText(labels) {
  return Object.keys(labels).sort((a, b) => (labels[b] || 0) - (labels[a] || 0));
}

function renderHits(resp, title) {
  const list = $("results");
  list.replaceChildren();
  $("results-title").hidden = false;
  $("results-title").textContent = `${title}: top ${resp.hits.length} ${resp.target === "ecg" ? "ECGs" : "reports"} of ${resp.rows}`;
  if (!resp.hits.length) {
    list.append(Object.assign(document.createElement("li"), {className: "hint", textContent: "No record matches these filters."}));
  }
  for (const hit of resp.hits) {
    const li = document.createElement("li");
    li.className = "card"; li.tabIndex = 0; li.dataset.id = hit.id;
    li.setAttribute("aria-label", `record ${hit.id}, score ${hit.score.toFixed(3)}: ${hit.report}`);
    const canvas = Object.assign(document.createElement("canvas"), {className: "thumb", width: 400, height: 130});
    const head = document.createElement("div"); head.className = "card-head";
    head.innerHTML = `<strong></strong> <span class="score"></span>`;
    head.querySelector("strong").textContent = `#${hit.rank} · ${hit.id}`;
    head.querySelector(".score").textContent = `score ${hit.score.toFixed(3)}`;
    const labels = document.createElement("p"); labels.className = "labels";
    for (const l of labelText(hit.labels)) labels.append(Object.assign(document.createElement("span"), {textContent: l}));
    const report = Object.assign(document.createElement("p"), {className: "report", textContent: hit.report});
    const meta = Object.assign(document.createElement("p"), {className: "meta",
      textContent: [hit.age != null ? `age ${hit.age}` : "", hit.sex != null && hit.sex >= 0 ? `sex ${hit.sex}` : "",
                    hit.strat_fold != null && hit.strat_fold >= 0 ? `fold ${hit.strat_fold}` : ""].filter(Boolean).join(" · ")});
    const open = Object.assign(document.createElement("button"), {type: "button", className: "open", textContent: "Open record"});
    open.addEventListener("click", () => openRecord(hit.id));
    li.addEventListener("keydown", (e) => { if (e.key === "Enter" && e.target === li) openRecord(hit.id); });
    li.append(head, canvas, labels, report, meta, open);
    list.append(li);
    thumbFor(canvas, hit.id);
  }
}

function filters() {
  return $("where").value.split(";").map((s) => s.trim()).filter(Boolean);
}

async function searchText(ev) {
  if (ev) ev.preventDefault();
  const text = $("q").value.trim();
  if (!text) { showError("Type words to search for, e.g. atrial fibrillation"); return; }
  showError(null); busy(true);
  try {
    const resp = await postJSON("/search/text", {text, k: Number($("k").value) || 10, target: $("target").value, where: filters()});
    $("query-view").hidden = true;
    renderHits(resp, `“${text}”`);
  } catch (err) { showError(err); } finally { busy(false); }
}

async function searchRecord(id, target) {
  showError(null); busy(true);
  try {
    const resp = await postJSON("/search/record", {id, k: Number($("k").value) || 10, target, where: filters()});
    $("record").close();
    renderHits(resp, `record ${id}`);
  } catch (err) { showError(err); } finally { busy(false); }
}

// ------------------------------------------------------------------ uploads

function uploadForm(files) {
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  if ([...files].some((f) => f.name.toLowerCase().endsWith(".npy"))) {
    form.append("fs", $("npy-fs").value); form.append("layout", $("npy-layout").value); form.append("units", $("npy-units").value);
  }
  return form;
}

async function searchUpload(files) {
  if (!files || !files.length) return;
  lastFiles = files;
  $("npy-options").hidden = ![...files].some((f) => f.name.toLowerCase().endsWith(".npy"));
  showError(null); busy(true);
  try {
    const form = uploadForm(files);
    form.append("k", String(Number($("k").value) || 10)); form.append("target", $("target").value);
    form.append("thumbnail", "true");
    for (const w of filters()) form.append("where", w);
    const resp = await (await call("/search/upload", {method: "POST", body: form})).json();
    $("query-view").hidden = false;
    $("query-title").textContent = `Uploaded ECG: ${resp.query.file} (${resp.query.seconds.toFixed(1)} s at ${resp.query.fs} Hz)`;
    drawThumb($("query-thumb"), resp.query.thumbnail);
    setSubject({kind: "upload", files, name: resp.query.file});
    renderHits(resp, `ECG ${resp.query.file}`);
  } catch (err) { showError(err); } finally { busy(false); }
}

function setupDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); searchUpload(e.dataTransfer.files); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
  $("file").addEventListener("change", (e) => searchUpload(e.target.files));
}

// ------------------------------------------------------------------ record view

async function openRecord(id) {
  showError(null);
  try {
    const rec = await getJSON("/records/" + encodeURIComponent(id));
    const dlg = $("record");
    dlg.dataset.id = id;
    $("rec-title").textContent = `Record ${rec.id}`;
    $("rec-report").textContent = rec.report || "(no report)";
    $("rec-labels").replaceChildren(...labelText(rec.labels).map((l) => Object.assign(document.createElement("span"), {textContent: l})));
    $("rec-meta").textContent = Object.entries(rec.meta).filter(([, v]) => v !== null && typeof v !== "object")
      .map(([k, v]) => `${k} ${v}`).join(" · ");
    const img = $("rec-plot");
    img.removeAttribute("src"); img.dataset.loaded = "";
    if (!dlg.open) dlg.showModal();
    setSubject({kind: "record", id});
    const [png, svg] = await Promise.all([call(`/records/${encodeURIComponent(id)}/plot.png`), call(`/records/${encodeURIComponent(id)}/plot.svg`)]);
    img.onload = () => { img.dataset.loaded = "1"; };
    img.src = URL.createObjectURL(await png.blob());
    $("rec-svg").href = URL.createObjectURL(await svg.blob());
    $("rec-svg").download = `${id.replace(/[^\w.-]/g, "_")}.svg`;
  } catch (err) { showError(err); }
}

// ------------------------------------------------------------------ zero-shot

function setSubject(s) {
  subject = s;
  $("zs-subject").textContent = s.kind === "record" ? `Scoring record ${s.id}.` : `Scoring uploaded ECG ${s.name}.`;
  $("zs-button").disabled = false;
}

async function zeroshot(ev) {
  if (ev) ev.preventDefault();
  if (!subject) return;
  showError(null); busy(true);
  const task = $("zs-task").value, prompts = $("zs-prompts").value;
  const labels = $("zs-labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    let resp;
    if (subject.kind === "record") {
      resp = await postJSON("/zeroshot/record", task ? {id: subject.id, task, prompts} : {id: subject.id, labels});
    } else {
      const form = uploadForm(subject.files);
      if (task) { form.append("task", task); form.append("prompts", prompts); } else form.append("labels", labels.join(","));
      resp = await (await call("/zeroshot/upload", {method: "POST", body: form})).json();
    }
    const list = $("zs-results");
    list.replaceChildren();
    for (const c of resp.classes) {
      const li = document.createElement("li");
      li.innerHTML = `<span class="zs-label"></span><span class="bar"><span></span></span><span class="zs-num"></span>`;
      li.querySelector(".zs-label").textContent = c.label === c.description ? c.label : `${c.label} — ${c.description}`;
      li.querySelector(".bar span").style.width = `${Math.round(c.probability * 100)}%`;
      li.querySelector(".zs-num").textContent = `${(c.probability * 100).toFixed(1)} % · cos ${c.score.toFixed(3)}`;
      list.append(li);
    }
    $("zeroshot").scrollIntoView({block: "nearest"});
  } catch (err) { showError(err); } finally { busy(false); }
}

// ------------------------------------------------------------------ start

async function loadInfo() {
  try {
    const info = await getJSON("/info");
    $("status").textContent = `${info.rows} ECGs · checkpoint ${info.checkpoint.name} · ${info.indexes.ecg.factory} index` +
      (info.indexes.ecg.recall_at_10 != null ? ` (recall@10 ${info.indexes.ecg.recall_at_10})` : "");
    $("token-form").hidden = true;
    const sel = $("zs-task");
    if (sel.options.length === 1) for (const t of info.tasks) sel.append(new Option(t, t));
  } catch (err) { $("status").textContent = "not connected: " + err.message; }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", searchText);
  $("zs-form").addEventListener("submit", zeroshot);
  $("rec-similar").addEventListener("click", () => searchRecord($("record").dataset.id, "ecg"));
  $("rec-reports").addEventListener("click", () => searchRecord($("record").dataset.id, "report"));
  $("rec-zeroshot").addEventListener("click", () => { $("record").close(); zeroshot(); });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault(); sessionStorage.setItem("etp-token", $("token").value); loadInfo();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement.tagName !== "INPUT" && !$("record").open) { e.preventDefault(); $("q").focus(); }
  });
  setupDrop();
  loadInfo();
});
