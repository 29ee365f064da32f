// Batch: many slices → a sortable table with thumbnails and the OOD flag, and the same rows as CSV.
import { $, announce, busy, decisionText, fmt, forThisPage, outOfDistribution, pct, PHOTO_UNDECIDED, photoWithheld,
  pickAgain, pngSrc, postFiles, show, withheld } from "./common.js";

const batch = { rows: [], key: "tumor_probability", descending: true, limit: 50 };
const CSV_COLUMNS = ["filename", "tumor_probability", "has_tumor", "threshold", "tumor_area_px", "ood_score",
  "out_of_distribution", "withheld", "warning", "error"];
const COLUMNS = 6;  // of the table: a file that could not be read spans the five after its name with the reason

function cell(content, className = "") {
  const td = document.createElement("td");
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  if (className) td.className = className;
  return td;
}

function renderBatch() {
  const { key, descending } = batch;
  // A file not read sorts last, then a value that is missing (a withheld decision's null), in either direction; an
  // area under no "tumour" decision (withheld, or a candidate too faint for it) below every area the model decided
  // was a tumour, so the largest found come first. Names compare as text, in the reader's collation.
  const value = (row) => (key === "tumor_area_px" && row.has_tumor !== true ? row[key] - 1e9 : row[key]);
  const last = (row) => (row.error ? 2 : value(row) === null || value(row) === undefined ? 1 : 0);
  const rows = [...batch.rows].sort((a, b) => {
    if (last(a) !== last(b)) return last(a) - last(b);
    if (last(a)) return 0;
    const [x, y] = [value(a), value(b)];
    const order = typeof x === "string" ? x.localeCompare(y) : x < y ? -1 : x > y ? 1 : 0;
    return descending ? -order : order;
  });
  $("batch-table").querySelector("tbody").replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    if (row.error) {  // a file the server could not read: its reason, in its row (the others were predicted)
      const reason = cell(forThisPage(row.error), "file-error");
      reason.colSpan = COLUMNS - 2;
      const mark = cell("✕");
      mark.setAttribute("aria-label", "not read");
      tr.append(mark, cell(row.filename, "name"), reason);
      tr.classList.add("error-row");
      return tr;
    }
    const thumb = document.createElement("img");
    thumb.className = "thumb";
    thumb.alt = `slice ${row.filename}`;
    thumb.src = pngSrc(row.image_png);
    const [decision, style] = decisionText(row);
    const badge = document.createElement("span");
    badge.className = "badge small-badge " + style;
    badge.textContent = decision;
    const ood = document.createElement("span");
    ood.className = outOfDistribution(row) ? "flag ood" : "flag";
    const oodScore = fmt(row.ood_score, 2);
    ood.textContent = outOfDistribution(row) ? `⚠ ${oodScore} out of distribution` : oodScore;
    // a mask under a "no tumour" decision is not a found tumour (the slice view says why: the decision is the answer)
    const area = withheld(row) ? cell(`${row.tumor_area_px}${photoWithheld(row) ? PHOTO_UNDECIDED : " (unreliable)"}`,
      "unreliable")
      : row.has_tumor === false && row.tumor_area_px > 0 ? cell(`${row.tumor_area_px} (no tumour decided)`, "unreliable")
        : cell(String(row.tumor_area_px));
    // a withheld decision's score is no measurement either: marked as its area is (the slice view greys it too)
    const score = withheld(row)
      ? cell(`${pct(row.tumor_probability)}${photoWithheld(row) ? PHOTO_UNDECIDED : " (unreliable)"}`, "unreliable")
      : cell(pct(row.tumor_probability));
    tr.append(cell(thumb), cell(row.filename, "name"), score, cell(badge), area, cell(ood));
    if (row.warning) tr.title = row.warning;
    if (outOfDistribution(row)) tr.classList.add("ood-row");
    return tr;
  }));
  for (const th of $("batch-table").querySelectorAll("th[data-key]")) {
    const sorted = th.dataset.key === key;
    th.className = sorted ? (descending ? "sorted-desc" : "sorted-asc") : "";
    th.setAttribute("aria-sort", sorted ? (descending ? "descending" : "ascending") : "none");
  }
  show("batch-table", true);
}

// A batch that failed leaves no table behind: the previous batch's rows (and their CSV) would read as this one's.
export function clearBatch() {
  batch.rows = [];
  show("batch-table", false);
  show("batch-failed", false);
  $("batch-csv").disabled = true;
}

async function predictBatch() {
  const files = Array.from($("batch-files").files);
  if (!files.length) return;
  const limit = Number($("batch-limit").textContent) || batch.limit;
  if (files.length > limit) {
    clearBatch();
    $("batch-error").textContent = `${files.length} files: at most ${limit} per batch`;
    show("batch-error", true);
    return;
  }
  const ok = await busy("batch", () => postFiles("/v1/predict/batch", "files", files), (rows) => {
    batch.rows = rows;
    renderBatch();
    $("batch-csv").disabled = false;
    const failed = rows.filter((row) => row.error).length;
    $("batch-failed").textContent = failed ? `${failed} of ${rows.length} files could not be read: the reasons are in `
      + "their rows; the other files were predicted." : "";
    show("batch-failed", failed > 0);
    // every decision counted apart, the withheld ones too: "0 with tumour" over three undecided files read as three
    // clear slices; the files not read are said by #batch-failed, a status region of its own
    const count = (value) => rows.filter((row) => !row.error && row.has_tumor === value).length;
    announce("batch-said", `${rows.length - failed} of ${rows.length} files predicted: ${count(true)} tumour, ` +
      `${count(false)} no tumour, ${count(null)} without a decision`);
  });
  if (ok === false) clearBatch();
}

// A text cell a spreadsheet would run as a formula (a file named "=HYPERLINK(...).png") gets a leading quote, as
// OWASP advises against CSV injection; numbers and booleans are written as they are.
const FORMULA_START = /^[=+\-@\t\r]/;

function csvCell(value) {
  if (value === null || value === undefined) return "";
  const text = typeof value === "string" && FORMULA_START.test(value) ? `'${value}` : String(value);
  return `"${text.replaceAll('"', '""')}"`;
}

export function batchCsv(rows) {
  const lines = [CSV_COLUMNS.join(","), ...rows.map((row) =>
    // a file that could not be read was judged by nothing: no "false" in its out_of_distribution column
    CSV_COLUMNS.map((c) => csvCell(c !== "out_of_distribution" ? row[c]
      : row.error ? undefined : outOfDistribution(row))).join(","))];
  return lines.join("\n") + "\n";
}

function downloadCsv() {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([batchCsv(batch.rows)], { type: "text/csv" }));
  link.download = "slicewise-batch.csv";
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

export function setupBatch() {
  for (const th of document.querySelectorAll("#batch-table th[data-key]")) {
    th.querySelector("button").addEventListener("click", () => {
      batch.descending = batch.key === th.dataset.key ? !batch.descending : th.dataset.key !== "filename";
      batch.key = th.dataset.key;
      renderBatch();
    });
  }
  pickAgain($("batch-files"), predictBatch);
  $("batch-csv").addEventListener("click", downloadCsv);
}
