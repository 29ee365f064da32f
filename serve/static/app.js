// SliceWise web UI: four views over the REST API, vanilla JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const pct = (p) => (100 * p).toFixed(1) + " %";
const esc = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
let limits = { max_batch_files: 50 };

async function postFiles(url, field, files) {
  const form = new FormData();
  for (const file of files) form.append(field, file, file.name);
  const response = await fetch(url, { method: "POST", body: form });
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
  return body;
}

function show(id, visible) { $(id).hidden = !visible; }
function showError(prefix, error) {
  $(prefix + "-error").textContent = error ? String(error.message || error) : "";
  show(prefix + "-error", Boolean(error));
}
function showWarning(id, warning) { $(id).textContent = warning || ""; show(id, Boolean(warning)); }

function decisionText(result) {
  if (result.has_tumor === null) return ["uncertain: out of distribution", "uncertain"];
  return result.has_tumor ? ["tumour", "tumour"] : ["no tumour", "clear"];
}

function loadImage(base64) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = reject;
    image.src = "data:image/png;base64," + base64;
  });
}

// A binary mask PNG as a red, transparent-elsewhere canvas, drawn over the slice at any opacity.
function redMask(maskImage) {
  const canvas = document.createElement("canvas");
  canvas.width = maskImage.width;
  canvas.height = maskImage.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(maskImage, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const on = pixels.data[i] > 127;
    pixels.data.set(on ? [230, 30, 30, 255] : [0, 0, 0, 0], i);
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

function drawOverlay(canvas, image, mask, opacity) {
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.globalAlpha = 1;
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  ctx.globalAlpha = opacity;
  ctx.drawImage(mask, 0, 0, canvas.width, canvas.height);
  ctx.globalAlpha = 1;
}

// ---------------------------------------------------------------- header: the served model
async function loadModelInfo() {
  const box = $("model-info");
  try {
    const response = await fetch("/model/info");
    const info = await response.json();
    if (!response.ok) { box.innerHTML = `<span class="none">${esc(info.detail)}</span>`; return; }
    limits = info.limits || limits;
    $("batch-limit").textContent = limits.max_batch_files;
    const name = esc(info.source === "registry" ? `${info.name} v${info.version} (${info.alias})` : `file ${info.name}`);
    const cls = (info.metrics || {}).classification || {};
    const seg = (info.metrics || {}).segmentation || {};
    const metric = (label, value) => value === undefined ? "" :
      `<span class="metric">${label} <b>${Number(value).toFixed(3)}</b></span>`;
    const promotion = (info.tags || {}).promotion;
    box.innerHTML = `model <b id="model-version">${name}</b>` + metric("accuracy", cls.accuracy) +
      metric("sensitivity", cls.sensitivity) + metric("specificity", cls.specificity) + metric("ROC AUC", cls.roc_auc) +
      metric("Dice", seg.dice) + (promotion ? `<span class="metric">gate <b>${esc(promotion)}</b></span>` : "");
    box.title = (info.tags || {}).promotion_reason || info.detail || "";
  } catch (error) {
    box.textContent = "model information unavailable: " + error;
  }
}

// ---------------------------------------------------------------- tabs
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
    document.querySelectorAll(".view").forEach((v) => v.classList.toggle("active", v.id === "view-" + tab.dataset.view));
  });
}

// The file chosen in the view's `<view>-file` input, posted to `url`: `render` fills in the answer, then the result
// is shown and `drawn` draws what needs it visible; an error is shown instead of a result.
async function predictChosenFile(view, url, render, drawn = () => {}) {
  const file = $(`${view}-file`).files[0];
  if (!file) return;
  showError(view, null);
  try {
    await render(await postFiles(url, "file", [file]));
    show(`${view}-result`, true);
    drawn();
  } catch (error) {
    showError(view, error);
    show(`${view}-result`, false);
  }
}

// ---------------------------------------------------------------- classification
function classify() {
  return predictChosenFile("cls", `/v1/predict?gradcam=${$("cls-gradcam").checked}`, (result) => {
    $("cls-probability").textContent = pct(result.tumor_probability);
    $("cls-bar").style.width = pct(result.tumor_probability).replace(" ", "");
    $("cls-threshold-mark").style.left = (220 * result.threshold) + "px";
    const [text, style] = decisionText(result);
    $("cls-decision").textContent = text;
    $("cls-decision").className = "badge " + style;
    $("cls-threshold").textContent = `threshold ${result.threshold.toFixed(3)} · OOD score ${result.ood_score.toFixed(2)}`;
    showWarning("cls-warning", result.warning);
    $("cls-image").src = "data:image/png;base64," + result.image_png;
    if (result.gradcam_png) $("cls-gradcam-image").src = "data:image/png;base64," + result.gradcam_png;
    show("cls-gradcam-figure", Boolean(result.gradcam_png));
  });
}
$("cls-file").addEventListener("change", classify);
$("cls-gradcam").addEventListener("change", classify);

// ---------------------------------------------------------------- segmentation
const segState = {};
function segment() {
  return predictChosenFile("seg", "/v1/predict", async (result) => {
    segState.image = await loadImage(result.image_png);
    segState.mask = redMask(await loadImage(result.mask_png));
    $("seg-area").textContent = result.tumor_area_px;
    $("seg-probability").textContent = pct(result.tumor_probability);
    showWarning("seg-warning", result.warning);
  }, drawSegmentation);
}
function drawSegmentation() {
  if (segState.image) drawOverlay($("seg-canvas"), segState.image, segState.mask, $("seg-opacity").value / 100);
}
$("seg-file").addEventListener("change", segment);
$("seg-opacity").addEventListener("input", drawSegmentation);

// ---------------------------------------------------------------- batch
const batch = { rows: [], key: "tumor_probability", descending: true };
async function predictBatch() {
  const files = Array.from($("batch-files").files);
  if (!files.length) return;
  showError("batch", null);
  if (files.length > limits.max_batch_files) {
    showError("batch", `${files.length} files: at most ${limits.max_batch_files} per batch`);
    return;
  }
  try {
    batch.rows = await postFiles("/v1/predict/batch", "files", files);
    renderBatch();
    $("batch-csv").disabled = false;
  } catch (error) {
    showError("batch", error);
  }
}
function renderBatch() {
  const { key, descending } = batch;
  const value = (row) => (row[key] === null ? -1 : row[key]);
  const rows = [...batch.rows].sort((a, b) => {
    const order = value(a) < value(b) ? -1 : value(a) > value(b) ? 1 : 0;
    return descending ? -order : order;
  });
  const body = $("batch-table").querySelector("tbody");
  body.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    const cells = [row.filename, pct(row.tumor_probability), decisionText(row)[0], row.tumor_area_px, row.ood_score.toFixed(2)];
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = cell;
      tr.appendChild(td);
    }
    if (row.warning) tr.title = row.warning;
    return tr;
  }));
  for (const th of $("batch-table").querySelectorAll("th")) {
    th.className = th.dataset.key === key ? (descending ? "sorted-desc" : "sorted-asc") : "";
  }
  show("batch-table", true);
}
for (const th of document.querySelectorAll("#batch-table th")) {
  th.addEventListener("click", () => {
    batch.descending = batch.key === th.dataset.key ? !batch.descending : th.dataset.key !== "filename";
    batch.key = th.dataset.key;
    renderBatch();
  });
}
$("batch-files").addEventListener("change", predictBatch);
$("batch-csv").addEventListener("click", () => {
  const columns = ["filename", "tumor_probability", "has_tumor", "threshold", "tumor_area_px", "ood_score", "warning"];
  const quote = (v) => (v === null || v === undefined ? "" : `"${String(v).replaceAll('"', '""')}"`);
  const lines = [columns.join(","), ...batch.rows.map((row) => columns.map((c) => quote(row[c])).join(","))];
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
  link.download = "slicewise-batch.csv";
  link.click();
  URL.revokeObjectURL(link.href);
});

// ---------------------------------------------------------------- patient (volume)
const patient = { slices: [], images: [], masks: [] };
function predictVolume() {
  return predictChosenFile("vol", "/v1/predict/volume?images=true", async (result) => {
    patient.result = result;
    patient.slices = result.slices;
    patient.images = await Promise.all(result.slices.map((s) => loadImage(s.image_png)));
    patient.masks = await Promise.all(result.slices.map((s) => loadImage(s.mask_png).then(redMask)));
    $("vol-volume").textContent = result.tumor_volume_cm3.toFixed(2) + " cm³";
    $("vol-count").textContent = `${result.tumor_slices.length} / ${result.slices.length}`;
    $("vol-mask-link").href = "data:application/gzip;base64," + result.mask_nifti;
    $("vol-mask-link").download = result.mask_nifti_filename;
    showWarning("vol-warning", result.warning);
    const best = result.slices.reduce((a, b) => (b.tumor_probability > a.tumor_probability ? b : a));
    $("vol-slider").max = result.slices.length - 1;
    $("vol-slider").value = best.slice;
  }, drawSlice);
}
function drawSlice() {
  if (!patient.slices.length) return;
  const z = Number($("vol-slider").value);
  const s = patient.slices[z];
  drawOverlay($("vol-canvas"), patient.images[z], patient.masks[z], $("vol-opacity").value / 100);
  $("vol-slice-label").textContent = `${z} · p = ${s.tumor_probability.toFixed(3)} · ${s.tumor_area_mm2.toFixed(0)} mm²`;
  drawPlot(z);
}
function drawPlot(current) {
  const svg = $("vol-plot");
  const [w, h, left, bottom, top] = [480, 240, 34, 22, 10];
  const n = patient.slices.length;
  const x = (z) => left + ((w - left - 8) * z) / Math.max(n - 1, 1);
  const y = (p) => top + (h - top - bottom) * (1 - p);
  const points = patient.slices.map((s) => `${x(s.slice).toFixed(1)},${y(s.tumor_probability).toFixed(1)}`).join(" ");
  const threshold = patient.result.threshold;
  svg.innerHTML = `
    <line class="axis" x1="${left}" y1="${y(0)}" x2="${w - 8}" y2="${y(0)}"/>
    <line class="axis" x1="${left}" y1="${y(0)}" x2="${left}" y2="${y(1)}"/>
    <text x="4" y="${y(1) + 4}">1.0</text><text x="4" y="${y(0.5) + 4}">0.5</text><text x="4" y="${y(0) + 4}">0.0</text>
    <text x="${w / 2 - 20}" y="${h - 4}">axial slice</text>
    <line class="threshold" x1="${left}" y1="${y(threshold)}" x2="${w - 8}" y2="${y(threshold)}"/>
    <polyline class="line" points="${points}"/>
    <line class="cursor" x1="${x(current)}" y1="${y(0)}" x2="${x(current)}" y2="${y(1)}"/>`;
}
$("vol-file").addEventListener("change", predictVolume);
$("vol-slider").addEventListener("input", drawSlice);
$("vol-opacity").addEventListener("input", drawSlice);
$("vol-plot").addEventListener("click", (event) => {
  const box = $("vol-plot").getBoundingClientRect();
  const fraction = (event.clientX - box.left - (34 * box.width) / 480) / (box.width * (480 - 42) / 480);
  $("vol-slider").value = Math.round(Math.min(Math.max(fraction, 0), 1) * (patient.slices.length - 1));
  drawSlice();
});

loadModelInfo();
