// Patient viewer: the axial slices of a volume with overlays (prediction filled, truth outlined, uncertainty heat),
// scrolled with the slider, the arrow keys or the wheel; per-region volumes and the per-slice score plot.
import { $, MODALITY_NAMES, PRED_RGB, announce, api, busy, drawLayers, esc, fmt, fmtSmall, loadImage, openView,
  outline, pickAgain, ranges, show, showWarning, tinted, UNRELIABLE, maskHidden, withheld, withoutColours }
  from "./common.js";

const REGION_NAMES = { wt: "whole tumour", tc: "tumour core", et: "enhancing tumour" };
// BraTS names each modality's file <patient>_<modality>.nii[.gz] (2020: flair, t1, t1ce, t2; 2023:
// <patient>-t2f, -t1n, -t1c, -t2w), as tasks/data/local_import.py PART_NAMES reads them; t1ce before t1, or "_t1ce"
// would read as T1.
const MODALITY_SUFFIX = /[-_](flair|t1ce|t1|t2|t2f|t1c|t1n|t2w)\.nii(\.gz)?$/i;
const LABEL_MAP_SUFFIX = /[-_]seg\.nii(\.gz)?$/i;  // a BraTS folder's segmentation: a label map, not an image
const BRATS_2023_NAMES = { t2f: "flair", t1c: "t1ce", t1n: "t1", t2w: "t2" };
// serve/images.py LABEL_COLOURS: the label overlay's colours (and the truth outline's), each with a box of its own
const LABEL_LEGEND = [["#e62828", "necrotic core (1)"], ["#28c846", "oedema (2)"], ["#fadc28", "enhancing (4)"]];
const LABEL_RGB = LABEL_LEGEND.map(([hex]) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)));
// what the volume clean-up removed: a colour none of the labels or the truth outline uses
const DROPPED_RGB = [70, 150, 255];
const patient = { result: null, slices: [], base: [], pred: [], truth: [], unc: [], dropped: [], urls: [],
  filtered: new Map() };

function blobUrl(base64, type = "application/gzip") {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  patient.urls.push(url);
  return url;
}

async function layers(result) {
  // The decoded images of every slice, built apart: the volume shown stays whole (its images, slices and links)
  // until the new one is ready, which takes seconds for 155 slices of four images.
  const all = (field, then = (x) => x) => Promise.all(result.slices.map(async (s) => then(await loadImage(s[field]))));
  // the label overlay and its legend for a model of the three BraTS regions; a whole-tumour model's label map calls
  // everything it finds oedema (2), so its mask is drawn as the whole tumour instead
  const hasLabels = (result.regions || []).length > 1 && result.slices.some((s) => s.labels_png);
  return {
    hasLabels,
    base: await all("image_png"),
    pred: hasLabels ? await all("labels_png") : await all("mask_png", (m) => tinted(m, PRED_RGB)),
    truth: await all("truth_png", (t) => outline(t)),
    unc: await all("uncertainty_png"),
    dropped: await all("dropped_png", (m) => tinted(m, DROPPED_RGB)),  // only slices the clean-up took a lesion from
  };
}

async function render(result, title, isLatest = () => true) {
  if (!result.slices.length || !result.slices[0].image_png) throw new Error("the answer holds no slice images");
  const { hasLabels, base, pred, truth, unc, dropped } = await layers(result);
  if (!isLatest()) return;  // a newer volume was asked for meanwhile: it, not this one, replaces what is shown
  patient.urls.forEach((url) => URL.revokeObjectURL(url));
  Object.assign(patient, { result, slices: result.slices, base, pred, truth, unc, dropped, urls: [],
    filtered: new Map() });
  // the slices are cut in one orientation whatever the file's storage: say which, as a viewer's markers would
  const shown = result.orientation ? ` · stored ${result.orientation}, shown anterior up, patient's right on the ` +
    "left, slices inferior to superior" : "";
  $("vol-title").textContent = `${title} · ${result.shape.join(" × ")} voxels of ` +
    `${result.voxel_spacing_mm.map((s) => s.toFixed(2)).join(" × ")} mm${shown}`;
  showWarning("vol-warning", result.warning);
  const missing = (result.modalities || {}).missing || [];
  $("vol-modalities").textContent = missing.length ?
    `Predicted without ${missing.map((m) => MODALITY_NAMES[m] || m).join(", ")}: this model also reads ` +
    "them, and a modality not sent is an all-zero channel, which costs the tumour core and the enhancing tumour " +
    "most. Select every modality file at once for the full prediction." : "";
  show("vol-modalities", missing.length > 0);
  // BraTS has no healthy brain: the answer puts a tumour found here beside what this model paints on its test
  // patients rendered again without their tumour (tumour_free_reference; tasks/inference/tumour_free_reference.py)
  showWarning("vol-healthy-note", (result.tumour_free_reference || {}).note || "");
  show("vol-truth-toggle", patient.truth.some(Boolean));
  show("vol-unc-toggle", patient.unc.some(Boolean));
  show("vol-dropped-toggle", patient.dropped.some(Boolean));
  const droppedLegend = patient.dropped.some(Boolean) ? [[`rgb(${DROPPED_RGB})`, "dropped by the clean-up"]] : [];
  const key = ([colour, name]) => `<span><i style="background:${colour}"></i>${esc(name)}</span>`;
  // each label can be shown alone: the BraTS red and green (necrotic core, oedema) read alike to a red-green
  // colour-blind eye, which then tells them apart by ticking one off
  const labelKeys = LABEL_LEGEND.map(([colour, name], i) => `<label><input type="checkbox" class="region-toggle" ` +
    `data-label="${i}" checked> <i style="background:${colour}"></i>${esc(name)}</label>`);
  $("vol-legend").innerHTML = (hasLabels ? labelKeys.join("") : key(["#e62828", "whole tumour (predicted)"])) +
    droppedLegend.map(key).join("") +
    (patient.truth.some(Boolean) ? "<span><i class=\"outline\"></i>truth: outline in the label's colour</span>" : "");
  for (const box of $("vol-legend").querySelectorAll(".region-toggle")) box.addEventListener("input", drawSlice);
  regionTable(result);
  cleanupNote(result.cleanup);
  maskNote(result);
  // no decision for an out-of-distribution volume: "0 of N slices with tumour" would read as a clean scan
  const found = result.tumor_slices === null ? "decision withheld (out of distribution)" :
    `${result.tumor_slices.length} of ${result.slices.length} slices with tumour`;
  $("vol-summary").textContent = `${found} · max score ${fmt(result.max_tumor_probability)} · ` +
    `OOD score ${fmt(result.ood_score, 2)}`;
  plotSummary(result);
  const labels = result.label_map_nifti ? [result.label_map_nifti, result.label_map_nifti_filename] :
    [result.mask_nifti, result.mask_nifti_filename];
  $("vol-labels-link").href = blobUrl(labels[0]);
  $("vol-labels-link").download = labels[1];
  $("vol-labels-link").textContent = result.label_map_nifti ? "download label map (NIfTI)" : "download tumour mask (NIfTI)";
  show("vol-unc-link", Boolean(result.uncertainty_nifti));
  if (result.uncertainty_nifti) {
    $("vol-unc-link").href = blobUrl(result.uncertainty_nifti);
    $("vol-unc-link").download = result.uncertainty_nifti_filename;
  }
  $("vol-slider").max = result.slices.length - 1;
  $("vol-slider").value = openingSlice(result.slices).slice;
  show("vol-result", true);
  drawSlice();
  announce("vol-said", `${title}: ${$("vol-summary").textContent}`);
}

// The score plot in words, for whoever cannot see or point at it: which slices reach the threshold, the highest
// score (a button goes there) and where the truth has tumour. The plot itself is hidden from screen readers; the
// slider is the keyboard's way along the slices.
function plotSummary(result) {
  const { slices, threshold } = result;
  const above = slices.filter((s) => s.tumor_probability >= threshold).map((s) => s.slice);
  const peak = slices.reduce((a, b) => (b.tumor_probability > a.tumor_probability ? b : a));
  const truth = slices.filter((s, i) => patient.truth[i]).map((s) => s.slice);
  show("vol-plot-truth-key", truth.length > 0);
  $("vol-plot-summary").innerHTML = `Score at or above the threshold (${fmt(threshold)}) on ` +
    (above.length ? `${above.length} slice${above.length === 1 ? "" : "s"}: ${ranges(above)}` : "no slice") +
    `${withheld(result) ? UNRELIABLE : ""}; highest ${fmt(peak.tumor_probability)} on ` +
    `<button type="button" class="link" id="vol-peak-go">slice ${peak.slice}</button>` +
    (truth.length ? `; tumour in the truth on slice${truth.length === 1 ? "" : "s"} ${ranges(truth)}` : "") + ".";
  $("vol-peak-go").addEventListener("click", () => goToSlice(peak.slice));
}

// As the Slice view does: a mask under a "no tumour" or withheld decision starts hidden, and the page says why (a
// filled red mask reads as a found tumour); every other answer starts with it shown, whatever the last one did.
function maskNote(result) {
  const hidden = maskHidden(result);
  $("vol-show-pred").checked = !hidden;
  const cm3 = `${fmtSmall(result.tumor_volume_cm3)} cm³`;
  showWarning("vol-mask-note", !hidden ? "" : withheld(result) ? "The volume is out of distribution, so there is " +
    `no decision; the segmentation head's ${cm3} are hidden (tick "predicted" to see them) and, like the scores, ` +
    "say nothing reliable about a tumour." : `The decision is no tumour, yet the segmentation head marks ${cm3} ` +
    "(hidden; tick \"predicted\" to see them): a candidate too faint for the decision. The decision is the answer.");
}

function regionTable(result) {
  const predicted = result.region_volumes_cm3 || { wt: result.tumor_volume_cm3 };
  const truth = result.truth_region_volumes_cm3;
  const regions = (result.regions || Object.keys(predicted)).filter((r) => r in REGION_NAMES);
  const shown = truth ? Object.keys(REGION_NAMES) : regions;
  $("vol-regions").querySelector("thead").innerHTML =
    `<tr><th>region</th><th>predicted</th>${truth ? "<th>truth</th>" : ""}</tr>`;
  $("vol-regions").querySelector("tbody").innerHTML = shown.map((r) => {
    const value = predicted[r];
    const cell = value === null || value === undefined ? "<td class=\"muted\">not predicted</td>" :
      withheld(result) ? `<td id="vol-volume-${r}" class="unreliable">${fmtSmall(value)} cm³${UNRELIABLE}</td>` :
      `<td id="vol-volume-${r}">${fmtSmall(value)} cm³</td>`;
    return `<tr><th scope="row">${REGION_NAMES[r]} (${r.toUpperCase()})</th>${cell}` +
      (truth ? `<td>${fmt(truth[r], 2)} cm³</td>` : "") + "</tr>";
  }).join("");
}

// What the volume clean-up dropped, so a lesion it removed is seen, not only missed: the count and volume, and the
// largest dropped component with its slices (a button to go there), evidence and reason.
function cleanupNote(cleanup) {
  const note = $("vol-cleanup");
  show("vol-cleanup", Boolean(cleanup && cleanup.dropped));
  if (!cleanup || !cleanup.dropped) return;
  const largest = cleanup.components.find((c) => !c.kept);
  const [first, last] = largest ? largest.slices : [0, 0];
  const unreliable = withheld(patient.result) ? UNRELIABLE : "";
  note.innerHTML = `Clean-up kept ${cleanup.kept} component${cleanup.kept === 1 ? "" : "s"} and dropped ` +
    `${cleanup.dropped} (${fmt(cleanup.dropped_cm3, 2)} cm³ in all${unreliable}).` + (largest ?
    ` Largest dropped: ${fmt(largest.volume_cm3, 2)} cm³${unreliable} on ` +
    `<button type="button" class="link" id="vol-dropped-go">` +
    `slices ${first}–${last}</button>, ${esc(largest.reason)}.` : "");
  const go = $("vol-dropped-go");
  if (go) go.addEventListener("click", () => goToSlice(first));
}

// Slice `z` of a label layer ("pred" or "truth") without the `hidden` labels: a pixel loop, kept per slice, layer and
// choice of labels, so scrolling, held keys and the opacity slider redraw without it (render() starts afresh).
function labelsShown(layer, z, hidden) {
  const image = patient[layer][z];
  if (!hidden.length || !image) return image;
  const key = `${layer}:${z}:${hidden}`;
  if (!patient.filtered.has(key)) patient.filtered.set(key, withoutColours(image, LABEL_RGB, hidden));
  return patient.filtered.get(key);
}

function drawSlice() {
  if (!patient.slices.length) return;
  const z = Number($("vol-slider").value);
  const s = patient.slices[z];
  const opacity = $("vol-opacity").value / 100;
  // the labels ticked off in the legend are left out of the prediction and the truth outline alike
  const hidden = [...$("vol-legend").querySelectorAll(".region-toggle")].filter((box) => !box.checked)
    .map((box) => Number(box.dataset.label));
  drawLayers($("vol-canvas"), patient.base[z], [
    { image: $("vol-show-unc").checked ? patient.unc[z] : null, opacity },
    { image: $("vol-show-pred").checked ? labelsShown("pred", z, hidden) : null, opacity },
    { image: $("vol-show-dropped").checked ? patient.dropped[z] : null, opacity },
    { image: $("vol-show-truth").checked ? labelsShown("truth", z, hidden) : null, opacity: 1 },
  ], patient.result.display_aspect);
  const area = s.tumor_area_mm2 === undefined ? "" :
    ` · ${s.tumor_area_mm2.toFixed(0)} mm²${withheld(patient.result) ? " (unreliable)" : ""}`;
  $("vol-slice-label").textContent = `${z} / ${patient.slices.length - 1} · score ${s.tumor_probability.toFixed(3)}${area}`;
  // what a screen reader says of the slider: the slice and its figures, not the bare number
  $("vol-slider").setAttribute("aria-valuetext", `slice ${$("vol-slice-label").textContent}`);
  drawPlot(z);
}

const PLOT = { w: 480, h: 120, left: 30, right: 8, top: 8, bottom: 18 };
const plotX = (z) => PLOT.left + ((PLOT.w - PLOT.left - PLOT.right) * z) / Math.max(patient.slices.length - 1, 1);
const plotY = (p) => PLOT.top + (PLOT.h - PLOT.top - PLOT.bottom) * (1 - p);

function drawPlot(current) {
  const { w, h, left, right } = PLOT;
  const points = patient.slices.map((s) => `${plotX(s.slice).toFixed(1)},${plotY(s.tumor_probability).toFixed(1)}`);
  const truthTicks = patient.slices.filter((s, i) => patient.truth[i])
    .map((s) => `<line class="truth-tick" x1="${plotX(s.slice)}" y1="${h - 16}" x2="${plotX(s.slice)}" y2="${h - 12}"/>`);
  const threshold = patient.result.threshold;
  $("vol-plot").innerHTML = `
    <line class="axis" x1="${left}" y1="${plotY(0)}" x2="${w - right}" y2="${plotY(0)}"/>
    <line class="axis" x1="${left}" y1="${plotY(0)}" x2="${left}" y2="${plotY(1)}"/>
    <text x="2" y="${plotY(1) + 8}">1.0</text><text x="2" y="${plotY(0)}">0.0</text>
    <text x="${w / 2 - 60}" y="${h - 2}">tumour score per slice</text>
    <line class="threshold" x1="${left}" y1="${plotY(threshold)}" x2="${w - right}" y2="${plotY(threshold)}"/>
    ${truthTicks.join("")}
    <polyline class="line" points="${points.join(" ")}"/>
    <line class="cursor" x1="${plotX(current)}" y1="${plotY(0)}" x2="${plotX(current)}" y2="${plotY(1)}"/>`;
}

function step(delta) {
  const slider = $("vol-slider");
  slider.value = Math.min(Math.max(Number(slider.value) + delta, 0), Number(slider.max));
  drawSlice();
}

// A button or a key that moves the picture to slice `z`: drawn, and said (the focus stays where it was).
function goToSlice(z) {
  $("vol-slider").value = z;
  drawSlice();
  saySliceSoon();
}

// The slice reached with the keys on the image, said once the keys rest: the image's name cannot change while it
// has the focus, and a word at every step of a held key would queue dozens.
let sayTimer = null;
function saySliceSoon() {
  clearTimeout(sayTimer);
  sayTimer = setTimeout(() => { $("vol-slice-said").textContent = `slice ${$("vol-slice-label").textContent}`; }, 400);
}

export async function openVolumeExample(example) {
  openView("patient");
  const ok = await busy("vol",
    () => api(`/v1/examples/${encodeURIComponent(example.id)}/predict?images=true`, { method: "POST" }),
    (result, isLatest) => render(result, "example: " + example.title, isLatest));
  if (ok === false) show("vol-result", false);
}

// The slice the viewer opens on: where the tumour is largest. Many slices reach a probability of 1.000, and the
// first of them is the tumour's lower edge; by area (then probability, for a volume without any mask) it is its middle.
export function openingSlice(slices) {
  const size = (s) => [s.tumor_area_mm2 ?? 0, s.tumor_probability];
  return slices.reduce((a, b) => {
    const [areaA, pA] = size(a), [areaB, pB] = size(b);
    return areaB > areaA || (areaB === areaA && pB > pA) ? b : a;
  });
}

// One file goes as `file` (FLAIR, or a 4D volume of the model's modalities) unless its BraTS name says another
// modality: then it is refused here (FLAIR is missing), rather than predicted on as if T1ce data were FLAIR.
// Several go one field per modality, told apart by their BraTS names; the names also tell a missing
// FLAIR, a modality chosen twice and files of two patients apart, which are refused here in the user's words (the
// API refuses the first two as well, in its fields' terms).
function volumeForm(files) {
  const form = new FormData();
  if (files.length === 1 && LABEL_MAP_SUFFIX.test(files[0].name)) {
    throw new Error(`${files[0].name}: a segmentation (label map), not an image; choose the patient's FLAIR, or its ` +
      "modality files together");
  }
  if (files.length === 1) {
    const match = MODALITY_SUFFIX.exec(files[0].name);
    const name = match ? BRATS_2023_NAMES[match[1].toLowerCase()] || match[1].toLowerCase() : "flair";
    if (name !== "flair") throw noFlair(files);  // the API would say so in its fields' terms
    form.append("file", files[0], files[0].name);
    return form;
  }
  const chosen = {};  // modality → its file, patient → one of its files
  const patients = {};
  for (const file of files) {
    const match = MODALITY_SUFFIX.exec(file.name);
    if (!match) {
      throw new Error(`${file.name}: with several files, each must be named like BraTS's ` +
        "<patient>_flair / _t1 / _t1ce / _t2 .nii.gz (or 2023's -t2f / -t1n / -t1c / -t2w), so the viewer " +
        "knows which modality it holds");
    }
    const name = BRATS_2023_NAMES[match[1].toLowerCase()] || match[1].toLowerCase();
    if (chosen[name]) {
      throw new Error(`two ${name.toUpperCase()} files chosen (${chosen[name].name}, ${file.name}): choose one ` +
        "patient's files, one per modality");
    }
    chosen[name] = file;
    patients[file.name.slice(0, match.index).toLowerCase()] = file.name;
    form.append(name, file, file.name);
  }
  // The server cannot tell two patients' volumes apart when they share a grid (every BraTS volume does): their
  // channels would be predicted as one brain, and its volumes read as that patient's. The names can tell.
  const named = Object.values(patients);
  if (named.length > 1) {
    throw new Error(`${named.join(", ")}: these files name ${named.length} different patients; choose one ` +
      "patient's modality files");
  }
  if (!chosen.flair) throw noFlair(files);
  return form;
}

const noFlair = (files) => new Error(`no FLAIR among ${files.map((f) => f.name).join(", ")}: choose the patient's ` +
  "FLAIR too (the other modalities are optional)");

// A whole BraTS patient folder chosen at once holds its segmentation too: left out (the answer is the model's own),
// and said so in the title, rather than refused as a file that names no modality.
function imageFiles(files) {
  const images = files.length > 1 ? files.filter((f) => !LABEL_MAP_SUFFIX.test(f.name)) : files;
  const left = files.filter((f) => !images.includes(f)).map((f) => f.name);
  return [images, left.length ? ` (${left.join(", ")} left out: a label map, not an image)` : ""];
}

async function predictVolumeFile() {
  const [files, leftOut] = imageFiles([...$("vol-file").files]);
  if (!files.length) return;
  const title = (files.length === 1 ? files[0].name : files.map((f) => f.name).join(" + ")) + leftOut;
  const ok = await busy("vol", () => api("/v1/predict/volume?images=true", { method: "POST", body: volumeForm(files) }),
    (result, isLatest) => render(result, title, isLatest));
  if (ok === false) show("vol-result", false);
}

export function setupPatient() {
  pickAgain($("vol-file"), predictVolumeFile);
  for (const id of ["vol-slider", "vol-opacity", "vol-show-pred", "vol-show-truth", "vol-show-unc",
    "vol-show-dropped"]) {
    $(id).addEventListener("input", drawSlice);
  }
  $("vol-canvas").addEventListener("keydown", (event) => {
    const delta = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10 }[event.key];
    if (event.key === "Home" || event.key === "End") {
      goToSlice(event.key === "Home" ? 0 : $("vol-slider").max);
    } else if (delta !== undefined) {
      step(delta);
      saySliceSoon();
    } else {
      return;
    }
    event.preventDefault();
  });
  $("vol-canvas").addEventListener("wheel", (event) => {
    if (!patient.slices.length) return;
    event.preventDefault();
    step(event.deltaY > 0 ? -1 : 1);
  }, { passive: false });
  $("vol-plot").addEventListener("click", (event) => {
    if (!patient.slices.length) return;
    const box = $("vol-plot").getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * PLOT.w;
    const fraction = (x - PLOT.left) / (PLOT.w - PLOT.left - PLOT.right);
    $("vol-slider").value = Math.round(Math.min(Math.max(fraction, 0), 1) * (patient.slices.length - 1));
    drawSlice();
  });
}
