// SliceWise web UI: five views over the REST API. Plain ES modules, no build step, nothing fetched from elsewhere.
import { $, MODALITY_NAMES, PRED_RGB, TRUTH_RGB, announce, anyPixel, api, busy, decisionText, drawLayers, esc, fmt,
  loadImage, maskHidden, onAnsweredBy, onRefused, openView, outline, pctApart, photoWithheld, pickAgain, pngSrc,
  postFiles, show, showWarning, shownBy, tinted, unreliableNote, withheld } from "./common.js";
import { clearBatch, setupBatch } from "./batch.js";
import { forgetModelView, loadModelView } from "./model.js";
import { openVolumeExample, setupPatient } from "./patient.js";

const state = { info: null, examples: [] };

// ---------------------------------------------------------------- tabs (click, or arrow keys along the tab list)
const tabs = [...document.querySelectorAll(".tab")];
function selectTab(tab, focus = false) {
  for (const t of tabs) {
    const active = t === tab;
    t.classList.toggle("active", active);
    t.setAttribute("aria-selected", String(active));
    t.tabIndex = active ? 0 : -1;
    $("view-" + t.dataset.view).classList.toggle("active", active);
  }
  if (focus) tab.focus();
  if (location.hash !== "#" + tab.dataset.view) history.replaceState(null, "", "#" + tab.dataset.view);
  if (tab.dataset.view === "model") loadModelView();
}
for (const tab of tabs) {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", (event) => {
    const i = tabs.indexOf(tab);
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    selectTab(tabs[(next + tabs.length) % tabs.length], true);
  });
}

window.addEventListener("hashchange", () => {
  const tab = tabs.find((t) => "#" + t.dataset.view === location.hash);
  if (!tab || tab.classList.contains("active")) return;
  // A link inside a view (a hint's "examples") hides the view that holds the focus: without a new place the focus
  // fell back to the page's start. It goes to the new view's tab, as openView does.
  const focusInView = Boolean(document.activeElement && document.activeElement.closest(".view"));
  selectTab(tab, focusInView);
});

// ---------------------------------------------------------------- header: the served model
// Which model is served: the server swaps in a new champion while the page stays open (serve.poll_seconds).
const identity = (info) => (info ? `${info.name}|${info.version}|${(info.tags || {}).onnx_sha256 || ""}` : "none");
// How a prediction's X-SliceWise-Model header names the served model (serve/api.py answered_by).
const servedTag = (info) => (!info ? null
  : info.source === "registry" ? `${info.name}/${info.version}`
    : `file ${info.name}@${((info.tags || {}).onnx_sha256 || "").slice(0, 12)}`);

async function loadModelInfo() {
  const box = $("model-info");
  try {
    const info = await api("/model/info");
    state.info = info;
    state.identity = identity(info);
    if (state.lastServed === undefined) state.lastServed = state.identity;  // the first model this page saw
    $("batch-limit").textContent = (info.limits || {}).max_batch_files ?? 50;
    const name = info.source === "registry" ? `${info.name} v${info.version} (${info.alias})` : `file ${info.name}`;
    const cls = (info.metrics || {}).classification || {};
    const seg = (info.metrics || {}).segmentation || {};
    const metric = (label, value) => (value === undefined ? "" : `<span class="metric">${label} <b>${fmt(value)}</b></span>`);
    const gate = info.gate ? `<span class="metric">gate <b class="verdict-${esc(info.gate.verdict)}">${esc(info.gate.verdict)}</b></span>` : "";
    const photos = (((info.metrics || {}).classification_by_source || {}).kaggle || {});
    // figures measured on the data the project generates say nothing of real scans: said beside them, not only in
    // the model card
    const synthetic = (info.tags || {}).data_source === "synthetic"
      ? '<span class="metric" id="model-data" title="test figures measured on the synthetic BraTS-like data the ' +
        'project generates, not on real scans">on synthetic test data</span>' : "";
    // photos get no decision from a model below serve.min_photo_accuracy on its test photos: said before any upload
    const photoDecisions = info.photo_decisions && !info.photo_decisions.given
      ? `<span class="metric" id="model-photo-decisions" title="${esc(info.photo_decisions.reason || "")}">` +
        "no decisions on photos</span>" : "";
    setHeader(`model <b id="model-version">${esc(name)}</b>` + metric("accuracy", cls.accuracy) +
      metric("sensitivity", cls.sensitivity) + metric("Dice", seg.dice) +
      // the photos' own figure: a few dozen of the test inputs, easily hidden by the pooled accuracy
      (photos.n ? metric(`photo accuracy (${photos.n})`, photos.accuracy) : "") + photoDecisions + synthetic + gate);
    box.title = info.detail || "";
  } catch (error) {
    state.info = null;
    state.identity = identity(null);
    setHeader(`<span class="none" id="model-unavailable">no model served: ${esc(error.message)}</span>`);
  }
}

// The header is rewritten only when its words change: the minute's poll rewrote it with the same model, which a
// screen reader (or a selection of its text) took as new content every minute.
function setHeader(html) {
  if (html === state.header) return;
  state.header = html;
  $("model-info").innerHTML = html;
}

// Asked again every minute and when the page comes back into view: a new model refreshes the header, the examples
// (bundled with each model) and the Model tab, instead of describing the old one beside the new one's predictions.
async function watchModel() {
  const before = state.identity;
  await loadModelInfo();
  // A failed poll ("none") is no new model: results go only when one served model replaced another (a network
  // blip, or a laptop waking, cleared them as "changed" and again when the same model answered).
  if (state.identity !== "none") {
    answeredByAnotherModel(state.identity !== state.lastServed);
    state.lastServed = state.identity;
  }
  if (state.identity === before) return;
  forgetModelView();
  $("examples-error").hidden = true;
  await loadExamples();
  if (location.hash === "#model") loadModelView();
}

// A prediction answered by a model the header does not name: the champion changed meanwhile (or a request in flight
// was answered by the one before). The header is asked again now, not at the next minute's poll.
onAnsweredBy((model) => { if (state.info && model !== servedTag(state.info)) watchModelOnce(); });
// A refusal (an example the served model lacks, no model loaded) names no model: the header is asked again too, or
// the page went on naming the old model and listing its examples until the minute's poll.
onRefused(() => watchModelOnce());
let watching = null;  // one question at a time: /model/info refused while asking must not ask again, and again
function watchModelOnce() {
  if (!watching) watching = watchModel().finally(() => { watching = null; });
  return watching;
}

// Results on screen answered by another model than the one served now: left as they were, they read as this one's
// (and its Grad-CAM box asked the new model for an example of the old one). They go, and each view says why; a
// result the served model itself answered stays (it was cleared as stale right after the swap that made it).
// `changed`: the served model is new to the page, which is all an answer without its model's name can go by.
function answeredByAnotherModel(changed) {
  const now = servedTag(state.info);
  for (const view of ["slice", "vol", "batch"]) {
    const shown = view === "batch" ? !$("batch-table").hidden : !$(`${view}-result`).hidden;
    if (!shown || (shownBy[view] ? shownBy[view] === now : !changed)) continue;
    if (view === "batch") clearBatch(); else show(`${view}-result`, false);
    $(`${view}-error`).textContent = "The served model changed since this result: run it again for the new model's answer.";
    show(`${view}-error`, true);
  }
  lastSliceExample = null;
}

// ---------------------------------------------------------------- examples gallery
async function loadExamples() {
  try {
    const listing = await api("/v1/examples");
    state.examples = listing.examples;
    show("examples-empty", !listing.examples.length);
    $("examples-empty").textContent = listing.detail || "";
    $("examples-gallery").replaceChildren(...listing.examples.map(exampleCard));
    const volume = listing.examples.find((e) => e.kind === "volume");
    show("vol-example", Boolean(volume));
    if (volume) $("vol-example").onclick = () => openVolumeExample(volume);
  } catch (error) {
    $("examples-error").textContent = "the examples could not be listed: " + error.message;
    show("examples-error", true);
  }
}

function exampleCard(example) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.className = "example";
  button.dataset.example = example.id;
  button.dataset.kind = example.kind;
  const tags = [example.kind === "volume" ? "whole patient" : "slice", example.truth ? "truth known" : null,
    example.expected ? `expected: ${example.expected}` : null].filter(Boolean);
  button.innerHTML = `<img alt="" src="${pngSrc(example.thumbnail_png)}"><span class="title">${esc(example.title)}</span>` +
    `<span class="tags">${tags.map((t) => `<span>${esc(t)}</span>`).join("")}</span>`;
  button.setAttribute("aria-label", `run the model on the example: ${example.title}`);
  button.addEventListener("click", () => (example.kind === "volume" ? openVolumeExample(example) : runSliceExample(example)));
  li.appendChild(button);
  return li;
}

// ---------------------------------------------------------------- one slice (upload or example)
const slice = { base: null, pred: null, truth: null };

async function showSlice(result, title, isLatest = () => true) {
  const [base, mask, truth] = await Promise.all([result.image_png, result.mask_png, result.truth_png].map(loadImage));
  // a newer answer of this view may have been shown while these decoded: it stays (as the Patient view's render)
  if (!isLatest()) return;
  slice.base = base;
  slice.pred = tinted(mask, PRED_RGB);
  // a truth with no tumour has nothing to outline: no toggle, and the picture's name says so
  slice.truthEmpty = Boolean(truth) && !anyPixel(truth);
  slice.truth = truth && !slice.truthEmpty ? outline(truth, TRUTH_RGB) : null;
  slice.title = title;
  slice.hasMask = result.tumor_area_px > 0;
  $("slice-title").textContent = title;
  // A withheld decision (out of distribution, or a photo for a model that fails on photos): its probability is no
  // measurement either, so it is shown greyed and marked, not as the big red figure a found tumour gets.
  const unreliable = withheld(result);
  const [score, threshold] = pctApart(result.tumor_probability, result.threshold);
  $("slice-probability").textContent = score + (unreliable ? " (unreliable)" : "");
  $("slice-probability").classList.toggle("unreliable", unreliable);
  $("slice-bar").parentElement.classList.toggle("unreliable", unreliable);
  $("slice-bar").style.width = (100 * result.tumor_probability).toFixed(1) + "%";
  $("slice-threshold-mark").style.left = (100 * result.threshold).toFixed(1) + "%";
  const [text, style] = decisionText(result);
  slice.decision = text;
  $("slice-decision").textContent = text;
  $("slice-decision").className = "badge " + style;
  $("slice-details").textContent = `threshold ${threshold} · tumour area ${result.tumor_area_px} px` +
    `${withheld(result) ? unreliableNote(result) : ""} · ` +
    `OOD score ${fmt(result.ood_score, 2)}`;
  showWarning("slice-warning", result.warning);
  // A photo or a one-channel slice reaches a multi-modality model as FLAIR alone, the other channels zero: said as
  // the Patient view says it of a FLAIR-only volume (the prediction differs from the full one)
  const missing = (result.modalities || {}).missing || [];
  showWarning("slice-modalities", missing.length ? `Predicted from one channel, read as FLAIR: this model also reads ` +
    `${missing.map((m) => MODALITY_NAMES[m] || m).join(", ")}, each an all-zero channel here. An NPY of every ` +
    "modality, (C, H, W) in the model's order, gives the full prediction." : "");
  // The decision and the mask are two answers (docs/serving.md). Under a "no tumour" decision a mask is at most a
  // candidate too faint for it, and on a photo, whose masks never trained the model, it can cover the whole brain:
  // drawn filled in red by default it read as a found tumour. It starts hidden, and the page says why.
  const maskAgainstDecision = result.has_tumor === false && result.tumor_area_px > 0;
  const maskWithoutDecision = unreliable && result.tumor_area_px > 0;  // an input the model was not trained for
  $("slice-show-pred").checked = !maskHidden(result);
  showWarning("slice-mask-note", maskAgainstDecision ? `The decision is no tumour, yet the segmentation head marks ` +
    `${result.tumor_area_px} px (hidden; tick "predicted" to see them): a candidate too faint for the decision, or, ` +
    "on a photo, whose masks the model never trained on, nothing at all. The decision is the answer."
    : maskWithoutDecision ? `${photoWithheld(result) ? "This model gives no decision on photos (the warning " +
    "above says why)" : "The input is out of distribution, so there is no decision"}; the segmentation head's ` +
    `${result.tumor_area_px} px are hidden (tick "predicted" to see them) and, like the score, say nothing ` +
    "reliable about a tumour." : "");
  // Each map is scaled to its own peak, so a slice without a tumour shows a hottest spot too (a review, 2026-12-07)
  $("slice-gradcam-caption").textContent = "Grad-CAM of the classification" + (!unreliable
    ? ", scaled to this slice's own peak: where the score came from, not whether there is a tumour"
    : photoWithheld(result) ? " (no decision on photos: what it highlights is unreliable too)"
      : " (out of distribution: what it highlights is unreliable too)");
  show("slice-truth-toggle", Boolean(slice.truth));
  if (result.gradcam_png) $("slice-gradcam-image").src = pngSrc(result.gradcam_png);
  show("slice-gradcam-figure", Boolean(result.gradcam_png));
  show("slice-result", true);
  drawSlice();
  announce("slice-said",
    `${title}: ${text}, score ${score}${unreliable ? " (unreliable)" : ""}, threshold ${threshold}`);
}

function drawSlice() {
  if (!slice.base) return;
  const opacity = $("slice-opacity").value / 100;
  const [pred, truth] = [$("slice-show-pred").checked, $("slice-show-truth").checked && slice.truth];
  drawLayers($("slice-canvas"), slice.base, [
    { image: pred ? slice.pred : null, opacity },
    { image: truth ? slice.truth : null, opacity: 1 },
  ]);
  // the picture's name says what is drawn on it now (a fixed "with the predicted tumour" was read on a "no tumour")
  const mask = !slice.hasMask ? "no predicted tumour" : pred ? "the predicted tumour filled in red"
    : "the predicted tumour hidden";
  $("slice-canvas").setAttribute("aria-label", `${slice.title}, decision ${slice.decision}: ${mask}` +
    (truth ? ", the truth outlined in green" : slice.truthEmpty ? ", no tumour in the truth" : ""));
}

let lastSliceExample = null;  // what the Grad-CAM box re-runs: the example shown last, or else the file shown last
let lastSliceFile = null;  // kept: opening the file picker clears the input (pickAgain), cancelling leaves it empty

async function predictSliceFile() {
  const file = $("slice-file").files[0] || lastSliceFile;
  if (!file) return;
  lastSliceExample = null;
  lastSliceFile = file;
  const ok = await busy("slice", () => postFiles(`/v1/predict?gradcam=${$("slice-gradcam").checked}`, "file", [file]),
    (result, isLatest) => showSlice(result, file.name, isLatest));
  if (ok === false) show("slice-result", false);
}

async function runSliceExample(example) {
  openView("slice");
  lastSliceExample = example;
  lastSliceFile = null;  // what is shown now is the example: the Grad-CAM box must not fall back to an older upload
  const url = `/v1/examples/${encodeURIComponent(example.id)}/predict?gradcam=${$("slice-gradcam").checked}`;
  const ok = await busy("slice", () => api(url, { method: "POST" }),
    (result, isLatest) => showSlice(result, "example: " + example.title, isLatest));
  if (ok === false) show("slice-result", false);
}

pickAgain($("slice-file"), predictSliceFile);
$("slice-gradcam").addEventListener("change", () =>
  (lastSliceExample ? runSliceExample(lastSliceExample) : predictSliceFile()));
for (const id of ["slice-opacity", "slice-show-pred", "slice-show-truth"]) $(id).addEventListener("input", drawSlice);

// The skip link moves the focus to the content without changing the hash: the hash holds the open view, and
// "#main" made a reload open the Examples tab instead of the view the user was on.
document.querySelector("a.skip").addEventListener("click", (event) => {
  event.preventDefault();
  $("main").focus();
});

// ---------------------------------------------------------------- start
setupPatient();
setupBatch();
const initial = tabs.find((t) => "#" + t.dataset.view === location.hash) || tabs[0];
selectTab(initial);
loadModelInfo();
loadExamples();
setInterval(watchModelOnce, 60_000);
document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") watchModelOnce(); });
