// Why this model: the champion's gate verdict with every criterion, its lineage, the champion beside the latest
// challenger (metrics with 95 % intervals, the same example slices predicted by both) and its model card.
import { $, PRED_RGB, TRUTH_RGB, anyPixel, api, decisionText, drawLayers, esc, fmt, loadImage, maskHidden, outline,
  show, tinted } from "./common.js";

const LINEAGE = [["git_commit", "git commit"], ["git_dirty", "uncommitted changes"], ["data_hash", "data hash"],
  ["data_raw_hash", "raw data hash"], ["splits_hash", "splits hash"], ["params_hash", "params hash"],
  ["prefect_flow_run_id", "Prefect flow run"], ["mlflow_run_id", "MLflow run"], ["onnx_sha256", "ONNX sha256"]];
const METRICS = [["classification.accuracy", "accuracy"], ["classification.sensitivity", "sensitivity"],
  ["classification.specificity", "specificity"], ["classification.roc_auc", "ROC AUC"],
  // each source alone: the photos are a few dozen of the test inputs, and the pooled accuracy hides how they fare
  ["classification_by_source.brats.accuracy", "accuracy, MRI slices"],
  ["classification_by_source.kaggle.accuracy", "accuracy, photos"],
  ["classification_by_source.kaggle.roc_auc", "ROC AUC, photos"],
  // three whole-tumour Dice figures, each said for what it is averaged over (docs/evaluation.md)
  ["segmentation.dice", "slice Dice (WT, mean over tumour slices)"], ["segmentation.hd95", "slice HD95 (mm)", true],
  ["segmentation_volume.dice", "volume Dice (WT, slices re-stacked per patient)"],
  ["segmentation_regions.wt.dice", "Dice WT (per patient, native grid)"],
  ["segmentation_regions.tc.dice", "Dice TC (per patient, native grid)"],
  ["segmentation_regions.et.dice", "Dice ET (per patient, native grid)"]];
let loaded = null;

const get = (object, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), object);

// The model card's Markdown (headings, tables, lists, bold, code) as HTML; everything escaped first.
export function markdown(text) {
  const inline = (s) => esc(s).replace(/`([^`]+)`/g, "<code>$1</code>").replace(/\*\*([^*]+)\*\*/g, "<b>$1</b>");
  const out = [];
  let table = null;
  let list = null;
  const flush = () => {
    // in a box of its own that scrolls sideways: a table with intervals in its cells outgrows a narrow window
    if (table) out.push(`<div class="table-wrap"><table class="compact">${table.join("")}</table></div>`);
    if (list) out.push(`<ul>${list.join("")}</ul>`);
    table = list = null;
  };
  for (const line of text.split("\n")) {
    const heading = /^(#{1,4})\s+(.*)$/.exec(line);
    if (line.startsWith("|")) {
      if (/^\|[\s|:-]+\|$/.test(line)) continue;
      if (!table) { flush(); table = []; }
      const cells = line.slice(1, -1).split("|").map((c) => c.trim());
      const tag = table.length ? "td" : "th";
      table.push(`<tr>${cells.map((c) => `<${tag}>${inline(c)}</${tag}>`).join("")}</tr>`);
    } else if (line.startsWith("- ")) {
      if (!list) { flush(); list = []; }
      list.push(`<li>${inline(line.slice(2))}</li>`);
    } else {
      flush();
      if (heading) out.push(`<h${heading[1].length + 2}>${inline(heading[2])}</h${heading[1].length + 2}>`);
      else if (line.trim()) out.push(`<p>${inline(line)}</p>`);
    }
  }
  flush();
  return out.join("\n");
}

function gateSection(info) {
  const gate = info.gate;
  $("gate-badge").textContent = gate ? gate.verdict : "no gate";
  $("gate-badge").className = "badge " + (gate ? (gate.verdict === "promoted" ? "clear" : "tumour") : "uncertain");
  $("gate-reason").textContent = gate ? (gate.criteria.length ? "Every criterion the promotion gate checked, with its numbers:" : gate.reason) :
    "This model was not registered through the promotion gate (it is served from a file).";
  $("gate-table").querySelector("tbody").innerHTML = (gate ? gate.criteria : []).map((c) =>
    `<tr class="${c.passed ? "pass" : "fail"}"><th scope="row">${esc(c.name)}</th>` +
    `<td>${c.passed ? "✔ pass" : "✘ fail"}</td><td>${esc(c.detail)}</td></tr>`).join("");
  show("gate-table", Boolean(gate && gate.criteria.length));  // no header row over nothing (a file has no gate)
  untestedSection(info.metrics || {});
}

// What the gate does not test, beside its verdict: its specificity is over slices of brains that all have a tumour,
// while on the test patients rendered without their tumour the volume decision calls some tumour (a review of the
// release's claims, 2026-12-07: the card's 0.982 read as the model's specificity, with 3 of 7 such brains called
// tumour).
function untestedSection(metrics) {
  const free = metrics.tumour_free_volumes;
  show("gate-untested", Boolean(free && free.n));
  if (!free || !free.n) return;
  const bounds = free.called_tumour_ci95;
  const interval = bounds ? ` (95 % interval ${fmt(1 - bounds[1], 2)}–${fmt(1 - bounds[0], 2)})` : "";
  $("gate-untested").textContent = "Not tested by the gate: brains without a tumour. On the " +
    `${free.n} test patients rendered again without their tumour, the volume decision called ${free.called_tumour} ` +
    `tumour, a specificity per brain of ${fmt((free.n - free.called_tumour) / free.n, 2)}${interval}; the gate's ` +
    "specificity is over the tumour-free slices of brains that all have a tumour.";
}

// What the served model and the one beside it are: a file has no version; a version without the challenger alias
// is only the newest other one (often the previous champion), not a challenger the gate turned down.
export const servedLabel = (model) => (model.source === "registry" ? `champion v${model.version}`
  : `served file ${model.name}`);
export const otherLabel = (model) => ((model.aliases || []).length ? `challenger v${model.version}`
  : `v${model.version} (newest other version)`);

function lineageSection(info) {
  const tags = info.tags || {};
  const rows = [["model", info.source === "registry" ? `${info.name} version ${info.version} (@${info.alias})` : info.path],
    ["registered", info.registered_at_ms ? new Date(info.registered_at_ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : null],
    ...LINEAGE.map(([key, label]) => [label, tags[key]])];
  $("lineage-table").querySelector("tbody").innerHTML = rows.map(([label, value]) =>
    `<tr><th scope="row">${esc(label)}</th><td><code class="hash">${value ? esc(value) : "—"}</code></td></tr>`).join("");
}

// A figure is bold only when it is better beyond doubt: both models scored on the same test data (sameTestData) and
// their 95 % intervals apart. Any difference was bold, on 7 test patients where most intervals overlap, and
// between versions scored on different patients (a review of the model card's claims, 2026-12-07).
const intervalOf = (metrics, key) => (get(metrics, "ci95") ? metrics.ci95[key] : undefined);
function metricCell(metrics, key, lowerIsBetter, other, comparable) {
  const value = get(metrics, key);
  if (typeof value !== "number") return "<td class=\"muted\">—</td>";
  const ci = intervalOf(metrics, key);
  const interval = ci ? ` <span class="ci">[${fmt(ci[0])}, ${fmt(ci[1])}]</span>` : "";
  const theirs = comparable ? intervalOf(other, key) : undefined;
  const better = Boolean(ci && theirs) && (lowerIsBetter ? ci[1] < theirs[0] : ci[0] > theirs[1]);
  return `<td class="${better ? "better" : ""}">${fmt(value)}${interval}</td>`;
}

// Scored on the same test data: every tag the gate compares (serve/compare.py TEST_DATA_TAGS) known and equal. One
// split list over other data (another fetch or slice: data_hash) is other test patients' slices.
const sameTestData = (a, b) => Boolean(a && b && a.test_data && b.test_data) &&
  Object.keys(a.test_data).every((k) => a.test_data[k] && a.test_data[k] === b.test_data[k]);

function compareSection(compare) {
  const { champion, challenger } = compare;
  const comparable = sameTestData(champion, challenger);
  $("compare-detail").textContent = compare.detail ||
    `${servedLabel(champion)} against ${otherLabel(challenger)}` +
    ((challenger.aliases || []).length ? "" : ", which holds no challenger alias") +
    ` (${challenger.gate ? challenger.gate.reason : "registered without the gate"}). ` +
    (comparable ? "Bold: better, its 95 % bootstrap interval apart from the other's; most " +
      "differences on a few test patients are within the intervals' noise."
      : "They were not scored on the same test data (their data_hash, splits_hash or data_fingerprint differ), so " +
        "their figures do not compare; none is bold.");
  const head = `<tr><th>metric (test split)</th><th>${esc(servedLabel(champion))}</th>` +
    (challenger ? `<th>${esc(otherLabel(challenger))}</th>` : "") + "</tr>";
  const rows = METRICS.filter(([key]) => typeof get(champion.metrics, key) === "number" ||
    (challenger && typeof get(challenger.metrics, key) === "number"))
    .map(([key, label, lower]) => `<tr><th scope="row">${esc(label)}</th>` +
      metricCell(champion.metrics, key, lower, challenger && challenger.metrics, comparable) +
      (challenger ? metricCell(challenger.metrics, key, lower, champion.metrics, comparable) : "") + "</tr>");
  $("compare-table").querySelector("thead").innerHTML = head;
  $("compare-table").querySelector("tbody").innerHTML = rows.join("");
  return compareExamples(compare);
}

async function panel(row, role, label, truth) {
  const answer = row[role];
  const figure = document.createElement("figure");
  if (!answer) return figure;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 160;
  const caption = document.createElement("figcaption");
  if (answer.error) {
    caption.textContent = `${label}: ${answer.error}`;
  } else {
    const base = await loadImage(answer.image_png);
    // as the slice view: a mask under "no tumour", or without a decision, is not drawn as a found tumour
    const hidden = maskHidden(answer);
    drawLayers(canvas, base, [{ image: hidden ? null : tinted(await loadImage(answer.mask_png), PRED_RGB),
      opacity: 0.55 }, { image: truth, opacity: 1 }]);
    caption.textContent = `${label}: score ${fmt(answer.tumor_probability)} · ${decisionText(answer)[0]}` +
      (hidden ? ` · its ${answer.tumor_area_px} px mask not drawn` : "");
    figure.appendChild(canvas);
  }
  figure.appendChild(caption);
  return figure;
}

async function compareExamples(compare) {
  const box = $("compare-examples");
  box.replaceChildren();
  if (!compare.examples.length) {
    box.innerHTML = "<p class=\"small\">No example slices: the served model carries none (the Examples tab says " +
      "why).</p>";
    return;
  }
  for (const row of compare.examples) {
    const item = document.createElement("div");
    item.className = "compare-row";
    // decoded and outlined once for both panels; a tumour-free example's truth is a mask of zeros: nothing is
    // outlined, and the line says so
    const truthMask = row.truth_png ? await loadImage(row.truth_png) : null;
    const truth = truthMask && anyPixel(truthMask) ? outline(truthMask, TRUTH_RGB) : null;
    const truthShown = !truthMask ? "" : truth ? " · truth outlined in green" : " · no tumour in the truth";
    item.innerHTML = `<div class="subtitle">${esc(row.title)}${truthShown}</div>`;
    const figures = document.createElement("div");
    figures.className = "pair";
    figures.append(await panel(row, "champion", servedLabel(compare.champion), truth),
      await panel(row, "challenger", compare.challenger ? otherLabel(compare.challenger) : "challenger", truth));
    item.appendChild(figures);
    box.appendChild(item);
  }
}

async function load() {
  // the comparison is the costly part (the challenger's model, the examples predicted twice): when it fails (a busy
  // server's 503, a registry that does not answer) the champion's own verdict, lineage and card are still shown
  const comparing = api("/model/compare").then((compare) => ({ compare }), (error) => ({ error }));
  const info = await api("/model/info");
  show("model-busy", false);
  gateSection(info);
  lineageSection(info);
  // the whole card from the registering run; the version's description holds at most MLflow's 5,000 characters
  const card = info.model_card || info.description;
  $("model-card").innerHTML = card ? markdown(card) :
    "<p class=\"small\">No model card: the model is served from a file, not from the registry.</p>";
  show("model-content", true);
  const { compare, error } = await comparing;
  if (error) {
    $("compare-detail").textContent = `The comparison with the challenger could not be loaded (${error.message}); ` +
      "open this tab again to retry.";
    $("compare-table").querySelector("thead").innerHTML = "";
    $("compare-table").querySelector("tbody").innerHTML = "";
    $("compare-examples").replaceChildren();
    loaded = null;  // the next visit asks again
    return;
  }
  await compareSection(compare);
}

// The served model changed (the server swapped in a new champion): the next visit loads the new one's details.
export function forgetModelView() {
  loaded = null;
}

export function loadModelView() {
  if (!loaded) {
    $("model-error").hidden = true;
    show("model-busy", $("model-content").hidden);  // the first load only: a reload keeps what is shown meanwhile
    loaded = load().catch((error) => {
      show("model-busy", false);
      loaded = null;  // try again next time the tab opens
      $("model-error").textContent = "the model's details could not be loaded: " + error.message;
      show("model-error", true);
    });
  }
  return loaded;
}
