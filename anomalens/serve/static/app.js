// The inspection page: pick a model, drop images, see overlay + decision, keep a running list.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { count: 0, ok: 0, ng: 0, failed: 0 };

function headers() {
  const key = $("#api-key").value.trim();
  if (key) sessionStorage.setItem("anomalens-key", key);
  return key ? { "X-API-Key": key } : {};
}

function setStatus(text) { $("#status").textContent = text; }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body.error) return `${body.error.kind}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status}`;
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) { setStatus(await errorText(response)); return; }
  const { models } = await response.json();
  const select = $("#model");
  select.replaceChildren(...models.map((m) => el("option", { value: m.name }, m.name)));
  select.dataset.info = JSON.stringify(models);
  showModel();
  setStatus(`${models.length} model${models.length === 1 ? "" : "s"} loaded`);
}

function showModel() {
  const models = JSON.parse($("#model").dataset.info || "[]");
  const m = models.find((x) => x.name === $("#model").value);
  if (!m) { $("#model-info").textContent = ""; return; }
  const thr = m.threshold ? m.threshold.description : "no threshold (scores only)";
  $("#model-info").textContent = `${m.method} on ${m.backbone}, ${m.num_references} references; threshold ${thr}`;
}

function updateCounts() {
  $("#counts").textContent = `(${state.count}: ${state.ok} OK, ${state.ng} NG, ${state.failed} failed)`;
}

function addRow(file, model, pred, error) {
  state.count += 1;
  const decision = pred ? (pred.decision || "none") : "error";
  if (decision === "OK") state.ok += 1; else if (decision === "NG") state.ng += 1; else if (!pred) state.failed += 1;
  const top = pred && pred.descriptions.length ? pred.descriptions[0].text : "";
  const row = el("tr", {},
    el("td", { class: "num" }, String(state.count)),
    el("td", {}, file),
    el("td", {}, model),
    el("td", { class: "num" }, pred && pred.score !== null ? pred.score.toFixed(4) : ""),
    el("td", {}, pred ? el("span", { class: `decision ${decision}` }, decision) : el("span", { class: "error" }, error)),
    el("td", {}, top),
    el("td", { class: "num" }, pred ? pred.timing.total_ms.toFixed(0) : ""));
  $("#results tbody").prepend(row);
  updateCounts();
}

function card(file) {
  const original = el("img", { alt: `image ${file.name}`, src: URL.createObjectURL(file) });
  const overlay = el("img", { alt: `overlay ${file.name}`, class: "overlay" });
  const verdict = el("p", { class: "verdict" }, "scoring…");
  const node = el("article", { class: "card" },
    el("h3", {}, file.name),
    el("div", { class: "pair" },
      el("figure", {}, original, el("figcaption", {}, "image")),
      el("figure", {}, overlay, el("figcaption", {}, "anomaly overlay"))),
    verdict);
  $("#current").prepend(node);
  return { node, overlay, verdict };
}

async function score(file) {
  const model = $("#model").value;
  if (!model) { setStatus("no model"); return; }
  const view = card(file);
  const form = new FormData();
  form.append("file", file, file.name);
  let response;
  try {
    response = await fetch(`/v1/models/${encodeURIComponent(model)}/predict?overlay=true`,
      { method: "POST", body: form, headers: headers() });
  } catch (err) {
    view.verdict.replaceChildren(el("span", { class: "error" }, String(err)));
    addRow(file.name, model, null, String(err));
    return;
  }
  if (!response.ok) {
    const text = await errorText(response);
    view.verdict.replaceChildren(el("span", { class: "error" }, text));
    view.node.classList.add("failed");
    addRow(file.name, model, null, text);
    return;
  }
  const pred = await response.json();
  view.overlay.src = `data:image/png;base64,${pred.overlay.data}`;
  const decision = pred.decision || "none";
  const scoreText = pred.score === null ? "NaN" : pred.score.toFixed(4);
  const thrText = pred.threshold === null ? "no threshold" : `threshold ${pred.threshold.toFixed(4)}`;
  view.verdict.replaceChildren(
    el("span", { class: `decision ${decision}` }, decision), ` score ${scoreText} (${thrText}), `,
    `${pred.timing.total_ms.toFixed(0)} ms`);
  if (pred.descriptions.length) {
    view.verdict.append(el("ul", { class: "descriptions" },
      ...pred.descriptions.slice(0, 3).map((d) => el("li", {}, `${d.text} (${d.similarity.toFixed(3)})`))));
  }
  view.node.dataset.decision = decision;
  addRow(file.name, model, pred, null);
}

async function scoreAll(files) {
  for (const file of files) await score(file);  // one at a time: the service queues the rest anyway
}

function setup() {
  $("#api-key").value = sessionStorage.getItem("anomalens-key") || "";
  $("#api-key").addEventListener("change", loadModels);
  $("#model").addEventListener("change", showModel);
  $("#files").addEventListener("change", (e) => { scoreAll([...e.target.files]); e.target.value = ""; });
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    scoreAll([...e.dataTransfer.files]);
  });
  updateCounts();
  loadModels();
}

setup();
