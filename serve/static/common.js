// Shared helpers of the web UI: the API client (every error becomes a readable message), images and overlays.
export const $ = (id) => document.getElementById(id);
export const pct = (p, digits = 1) => (100 * p).toFixed(digits) + " %";
// A score and its threshold as percentages with the decimals that tell them apart (up to 4): 0.7681 against 0.7684
// read "76.8 %" twice, beside a "no tumour" decision.
export function pctApart(score, threshold) {
  let digits = 1;
  while (digits < 4 && score !== threshold && pct(score, digits) === pct(threshold, digits)) digits += 1;
  return [pct(score, digits), pct(threshold, digits)];
}
export const esc = (text) => String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
export const fmt = (value, digits = 3) => (typeof value === "number" ? value.toFixed(digits) : "n/a");
export const MODALITY_NAMES = { flair: "FLAIR", t1: "T1", t1ce: "T1ce", t2: "T2" };

// JSON from the API, or an Error whose message says what went wrong (the API's `detail`, else the status).
export async function api(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new Error(`cannot reach the SliceWise server (${error.message}); is it still running?`);
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    // refused for the model's sake (an example it lacks, no model loaded yet, a checkpoint that does not fit): maybe
    // the first sign that another model is served now, as error answers name none; whoever watches asks which
    if ([404, 409, 503].includes(response.status)) for (const listener of refusalListeners) listener(response.status);
    const detail = body && body.detail !== undefined ? body.detail : text.slice(0, 200) || response.statusText;
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  if (body === null) throw new Error(`the server answered ${url} with something that is not JSON`);
  // Which model computed a prediction (the champion can change between two requests): kept with the answer, not
  // in its JSON, and told to whoever watches (the header shows the served model; a newer one is news).
  const model = response.headers.get("X-SliceWise-Model");
  if (model && typeof body === "object") {
    Object.defineProperty(body, "answeredBy", { value: model, enumerable: false });
    for (const listener of modelListeners) listener(model);
  }
  return body;
}

const modelListeners = [];
export function onAnsweredBy(listener) { modelListeners.push(listener); }
const refusalListeners = [];
export function onRefused(listener) { refusalListeners.push(listener); }
// A figure shown with `digits` decimals that would read 0.00 although it is not zero: "< 0.01" instead.
export const fmtSmall = (value, digits = 2) => (typeof value === "number" && value > 0 && value < 10 ** -digits
  ? `< ${(10 ** -digits).toFixed(digits)}` : fmt(value, digits));
// The model that answered what each view shows ("slice", "vol", "batch"), as the API named it.
export const shownBy = {};

export async function postFiles(url, field, files) {
  const form = new FormData();
  for (const file of files) form.append(field, file, file.name);
  try {
    return await api(url, { method: "POST", body: form });
  } catch (error) {
    // the size guard refuses a body before any file in it is read, so its answer names none: one file is named here
    if (files.length !== 1 || !error.message.startsWith("413: request body")) throw error;
    throw new Error(`413: ${files[0].name}: ${error.message.slice(5)}`);
  }
}

export function show(id, visible) { $(id).hidden = !visible; }

// What a screen reader says when an answer arrives: each view's status region (always present, visually hidden; a
// live region inside a container that starts hidden is not announced). Emptied first and filled a moment later, so
// the same words again (the same file predicted twice) are news too.
export function announce(id, text) {
  const box = $(id);
  box.textContent = "";
  setTimeout(() => { box.textContent = text; }, 100);
}

// "3, 5, 6, 7, 9" → "3, 5–7, 9": slice numbers as a person reads them.
export function ranges(numbers) {
  const parts = [];
  for (let i = 0; i < numbers.length; i++) {
    let j = i;
    while (j + 1 < numbers.length && numbers[j + 1] === numbers[j] + 1) j++;
    parts.push(j > i ? `${numbers[i]}–${numbers[j]}` : `${numbers[i]}`);
    i = j;
  }
  return parts.join(", ");
}

// Run `handler` on each file choice, the same file again included: a browser fires no "change" for a file that is
// already chosen, so after a failure (a 503 while the champion loads, a dropped connection) picking it again did
// nothing. The choice is forgotten as the picker opens; until then `input.files` still holds it for re-runs.
export function pickAgain(input, handler) {
  input.addEventListener("click", () => { input.value = ""; });
  input.addEventListener("change", handler);
}
// The API speaks to programs ("use /v1/predict/volume"); on this page that route is the Patient tab, and
// /v1/predict the Slice tab.
export const forThisPage = (message) => String(message).replace("use /v1/predict/volume", "open it in the Patient tab")
  .replace("slices go to /v1/predict", "open a slice in the Slice tab");
export function showError(prefix, error) {
  $(prefix + "-error").textContent = error ? forThisPage(error.message || error) : "";
  show(prefix + "-error", Boolean(error));
}
export function showWarning(id, warning) { $(id).textContent = warning || ""; show(id, Boolean(warning)); }

// Each view's latest request. Requests of a view run side by side, and a slow answer to an earlier choice (Grad-CAM
// ticked, then unticked; file X, then file Y) must not replace the newer one's answer or error, nor hide its busy note.
const latest = {};

// Runs `request` with the view's busy note shown, then `render(answer, isLatest)` unless a newer request of the view
// was made meanwhile (a render that awaits checks `isLatest()` before it changes what is shown); a failure fills the
// error box. Returns true when rendered, false when it failed, null when a newer request took over the view.
export async function busy(prefix, request, render = () => {}) {
  const ticket = (latest[prefix] = (latest[prefix] || 0) + 1);
  const isLatest = () => latest[prefix] === ticket;
  // the answer on screen is the previous request's until this one's lands: dimmed, not read as this file's
  const shown = $(prefix + "-result") || $(prefix + "-table");
  showError(prefix, null);
  show(prefix + "-busy", true);
  shown?.classList.add("stale");
  shown?.setAttribute("aria-busy", "true");
  try {
    const answer = await request();
    if (!isLatest()) return null;
    shownBy[prefix] = answer?.answeredBy;
    await render(answer, isLatest);
    return isLatest() ? true : null;
  } catch (error) {
    if (!isLatest()) return null;
    showError(prefix, error);
    return false;
  } finally {
    if (isLatest()) {
      show(prefix + "-busy", false);
      shown?.classList.remove("stale");
      shown?.removeAttribute("aria-busy");
    }
  }
}

// An answer whose decision was withheld still carries its areas and volumes: shown, but marked, so a figure from an
// input the model was not trained for is never read as a measurement. Withheld for one of two reasons (`withheld`):
// the input is out of distribution, or it is a photo and the model's test photos scored below
// serve.min_photo_accuracy (its `warning` gives the figures).
export const withheld = (result) => result.has_tumor === null;
export const photoWithheld = (result) => withheld(result) && result.withheld === "photo_accuracy";
export const outOfDistribution = (result) => withheld(result) && !photoWithheld(result);
export const UNRELIABLE = " (unreliable: out of distribution)";
export const PHOTO_UNDECIDED = " (no decision on photos)";
export const unreliableNote = (result) => (photoWithheld(result) ? PHOTO_UNDECIDED : UNRELIABLE);
// A mask drawn filled in red reads as a found tumour: under a "no tumour" decision it is at most a candidate too faint
// for it, and without a decision (withheld) it says nothing reliable. Every view starts it hidden and says why.
// A slice answer measures its mask in pixels, a volume answer in cm³.
export const maskHidden = (result) => (result.has_tumor === false || withheld(result)) &&
  (result.tumor_area_px ?? result.tumor_volume_cm3) > 0;

export function decisionText(result) {
  if (photoWithheld(result)) return ["no decision: photo", "uncertain"];
  if (withheld(result)) return ["uncertain: out of distribution", "uncertain"];
  return result.has_tumor ? ["tumour", "tumour"] : ["no tumour", "clear"];
}

export function pngSrc(base64) { return "data:image/png;base64," + base64; }

export function loadImage(base64) {
  return new Promise((resolve, reject) => {
    if (!base64) { resolve(null); return; }
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the server sent an image the browser cannot decode"));
    image.src = pngSrc(base64);
  });
}

function pixelsOf(image) {
  const canvas = document.createElement("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0);
  return [canvas, ctx, ctx.getImageData(0, 0, canvas.width, canvas.height)];
}

// Whether a mask PNG (0/255) marks any pixel: an example's truth of a tumour-free slice is a mask of zeros.
export function anyPixel(maskImage) {
  if (!maskImage) return false;
  const d = pixelsOf(maskImage)[2].data;
  for (let i = 0; i < d.length; i += 4) if (d[i] > 127) return true;
  return false;
}

// A binary mask PNG (0/255) as a coloured, transparent-elsewhere layer.
export function tinted(maskImage, rgb) {
  if (!maskImage) return null;
  const [canvas, ctx, pixels] = pixelsOf(maskImage);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) d.set(d[i] > 127 ? [...rgb, 255] : [0, 0, 0, 0], i);
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

// A coloured layer without the pixels whose colour is nearest one of `hidden` (indices into `palette`, the layer's
// colours as [r, g, b]): nearest, not equal, since a canvas stores semi-transparent colours premultiplied and reads
// them back a unit or two off. Lets each label be shown alone (the BraTS red and green read alike to a colour-blind
// eye).
export function withoutColours(image, palette, hidden) {
  if (!image || !hidden.length) return image;
  const [canvas, ctx, pixels] = pixelsOf(image);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] === 0) continue;
    let nearest = 0;
    let best = Infinity;
    palette.forEach(([r, g, b], k) => {
      const distance = (d[i] - r) ** 2 + (d[i + 1] - g) ** 2 + (d[i + 2] - b) ** 2;
      if (distance < best) [best, nearest] = [distance, k];
    });
    if (hidden.includes(nearest)) d[i + 3] = 0;
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

// Only the edge of each coloured region of a layer (RGBA labels, or a 0/255 mask painted `rgb`): the truth is
// drawn as an outline over the filled prediction, as radiology viewers do.
export function outline(image, rgb = null) {
  if (!image) return null;
  const [canvas, ctx, pixels] = pixelsOf(image);
  const { width: w, height: h } = canvas;
  const d = pixels.data;
  const on = (x, y) => x >= 0 && y >= 0 && x < w && y < h && (rgb ? d[4 * (y * w + x)] > 127 : d[4 * (y * w + x) + 3] > 0);
  const key = (x, y) => (rgb ? 1 : d[4 * (y * w + x)] * 65536 + d[4 * (y * w + x) + 1] * 256 + d[4 * (y * w + x) + 2]);
  const out = ctx.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!on(x, y)) continue;
      const k = key(x, y);
      const edge = [[1, 0], [-1, 0], [0, 1], [0, -1]].some(([dx, dy]) => !on(x + dx, y + dy) || key(x + dx, y + dy) !== k);
      if (edge) out.data.set(rgb ? [...rgb, 255] : [d[4 * (y * w + x)], d[4 * (y * w + x) + 1], d[4 * (y * w + x) + 2], 255], 4 * (y * w + x));
    }
  }
  ctx.putImageData(out, 0, 0);
  return canvas;
}

// The slice and its layers ([{image, opacity}], null images skipped), scaled to the canvas without smoothing.
// `aspect`: the picture's height over width in mm (a volume answer's display_aspect): its square images are drawn in
// a centred box of those proportions, so a non-square slice is not shown stretched to a square.
export function drawLayers(canvas, base, layers, aspect = 1) {
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.globalAlpha = 1;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const a = aspect > 0 && Number.isFinite(aspect) ? aspect : 1;
  const [w, h] = a >= 1 ? [canvas.width / a, canvas.height] : [canvas.width, canvas.height * a];
  const [x, y] = [(canvas.width - w) / 2, (canvas.height - h) / 2];
  if (base) ctx.drawImage(base, x, y, w, h);
  for (const { image, opacity } of layers) {
    if (!image || opacity <= 0) continue;
    ctx.globalAlpha = opacity;
    ctx.drawImage(image, x, y, w, h);
  }
  ctx.globalAlpha = 1;
}

// Switch to a view (the tab's click handler, set up in app.js).
// Opened from a control inside another view (an example's button), which is hidden then: focus goes to the view's tab,
// where a keyboard user goes on into it, instead of falling back to the page's start. A view already open keeps the
// focus where it is (the Grad-CAM box that re-ran its example).
export function openView(view) {
  const tab = $("tab-" + view);
  const wasOpen = tab.getAttribute("aria-selected") === "true";
  tab.click();
  if (!wasOpen) tab.focus();
}

export const PRED_RGB = [230, 40, 40];
export const TRUTH_RGB = [40, 220, 90];
