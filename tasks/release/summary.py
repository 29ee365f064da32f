"""What `make run` prints at the end: where everything landed, headline metrics, the release decision."""

from __future__ import annotations

import csv
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tasks import paths
from tasks.inference.photo_decisions import photo_record, photo_refusal
from tasks.inference.recorded_figures import finite_interval, percent_range
from tasks.io import nested_value, read_json, sha256_file
from tasks.redaction import redact
from tasks.release.store_moved import registered_elsewhere
from tasks.tracking.store import portable_uri, tracking_uri

OUTPUTS = [
    ("raw data", paths.RAW),
    ("processed shards + manifest", paths.PROCESSED),
    ("rejected inputs", paths.REJECTED),
    ("splits", paths.SPLITS),
    ("checkpoints", paths.CHECKPOINTS),
    ("metrics", paths.METRICS),
    ("plots", paths.PLOTS),
    ("ONNX model", paths.ONNX_MODEL),
    ("export report", paths.EXPORT_REPORT),
]


def _report(path: Path, console: Console) -> dict | None:
    """A report's content, or None (said on the console) when it is not a JSON object: a hand-edited or damaged file
    was a traceback here."""
    report = read_json(path, default=None)
    if report is None or isinstance(report, dict):
        return report
    console.print(f"[yellow]{path} holds no report (a JSON {type(report).__name__}, not an object): run the step that "
                  "writes it again[/]")
    return None


def print_summary(console: Console | None = None, min_photo_accuracy: float | None = None) -> None:
    """`min_photo_accuracy` (serve.min_photo_accuracy): says when the model, served, will decide no photo."""
    console = console or Console()
    found = [(label, path) for label, path in OUTPUTS if path.exists()]
    if not found and not paths.REGISTER_REPORT.exists():
        console.print("no pipeline output here yet: run `make run` (or `.venv/bin/dvc repro`) in the project root")
        return
    # git carries reports/ (metrics.json, register.json): a fresh clone has the record of the run they come from,
    # but no data, model or registry of its own
    ran_here = any(path.exists() for path in (paths.RAW, paths.CHECKPOINTS, paths.ONNX_MODEL))
    if not ran_here:
        console.print("[yellow]nothing has run in this checkout yet:[/] below is the record committed with the code "
                      "(reports/), from the run that made it; `make run` reproduces it here")
    table = Table(title="SliceWise results", show_header=True)
    table.add_column("what")
    table.add_column("where")
    for label, path in found:
        table.add_row(label, str(path))
    table.add_row("MLflow store", redact(portable_uri(tracking_uri())))  # MLFLOW_TRACKING_URI's, when set
    console.print(table)
    if set_aside := _rejected_inputs():  # said at the end of both front doors' runs: the flow's said nothing of them
        console.print(f"[yellow]the slice step set {set_aside} input file(s) aside[/] (unreadable, or not a brain "
                      f"MRI it can use): {paths.REJECTED} names each and why; the rest of the data was used")

    if metrics := _report(paths.METRICS, console):
        ci = metrics.get("ci95", {})
        headline = Table(title="Test split (95 % CI, patients resampled)")
        for column in ("metric", "value", "95 % CI"):
            headline.add_column(column)
        rows = [("classification", "accuracy"), ("classification", "sensitivity"),
                ("classification", "specificity"), ("classification", "roc_auc"),
                ("segmentation", "dice"), ("segmentation", "hd95"), ("segmentation_volume", "dice")]
        # BraTS-style, per region on the raw test volumes (present when they were on disk at evaluation)
        rows += [(f"segmentation_regions.{region}", key) for region in metrics.get("segmentation_regions", {})
                 for key in ("dice", "hd95")]
        for section, key in rows:
            holder = nested_value(metrics, section)
            if not isinstance(holder, dict) or key not in holder:
                continue  # not measured by this evaluation (e.g. no raw volumes, no regions)
            value = nested_value(metrics, f"{section}.{key}")  # null: undefined, e.g. a sensitivity with no tumour
            lo_hi = ci.get(f"{section}.{key}")
            interval = f"[{_figure(lo_hi[0])}, {_figure(lo_hi[1])}]" if isinstance(lo_hi, list) and len(lo_hi) == 2 \
                else ""
            if interval and f"{section}.{key}" in (metrics.get("ci95_degenerate") or ()):
                interval += " every resample alike"  # no width: not certainty, a few patients all scoring alike
            unit = " (mm)" if key == "hd95" else ""
            headline.add_row(f"{section}.{key}{unit}", _figure(value), interval)
        console.print(headline)
        if nested_value(metrics, "segmentation.hd95") is not None:  # why it reads so far above the volume's
            console.print("segmentation.hd95 is per tumour slice: one predicted empty counts as the image's diagonal "
                          "(docs/evaluation.md); the volume and region HD95 are the re-stacked 3D ones")
        if where := _where_it_errs(metrics):
            console.print(where)
        if free := metrics.get("tumour_free_volumes"):  # no split holds a brain without a tumour
            console.print(f"tumour-free brains (the {free['n']} test patients rendered again without their tumour): "
                          f"{tumour_free_counts(free)}")
        if photo_refusal(record := photo_record(metrics), min_photo_accuracy):  # before anyone sends one
            known = (f"accuracy {record.accuracy:.3f} on {record.photos} test photos" if record
                     else "its figures on photos are not known")
            console.print(f"[yellow]served, this model gives photos (8-bit PNG/JPEG) no tumour decision:[/] {known}, "
                          f"below serve.min_photo_accuracy {min_photo_accuracy:g} (docs/serving.md)")

    if decision := _report(paths.REGISTER_REPORT, console):
        # the decision is this checkout's once it has exported a model: before that (a fresh clone, or one whose
        # pipeline stopped before export), register.json is the committed record, its version in another registry
        decided_here = paths.ONNX_MODEL.exists()
        if ran_here and not decided_here:
            console.print("[yellow]no model exported in this checkout yet: the decision below is the record committed "
                          "with the code, its version in the registry of the run that made it[/]")
        if stale := stale_decision(decision):
            console.print(f"[yellow]the decision below was made on another {stale} than the one on disk now (a step "
                          "ran again after register): run register again (`.venv/bin/dvc repro`)[/]")
        if elsewhere := registered_elsewhere(decision=decision):
            console.print(f"[yellow]{escape(elsewhere)}: `make run` registers it there too[/]")
        registered = decision.get("registered", True)  # false with tracking.enabled false: no version to trace
        if registered and decision.get("reused"):  # the version holding the alias already is this model: nothing new
            verdict = "still champion" if decision.get("promoted") else "still challenger"
            console.print(f"{decision.get('model_name', 'model')} version {decision.get('version')} already holds "
                          f"this model (same ONNX file, data, split and figures): {verdict}, no new version")
        elif registered:
            verdict = "[green]PROMOTED to champion[/]" if decision.get("promoted") else "[yellow]not promoted[/]"
            console.print(f"registered {decision.get('model_name', 'model')} version {decision.get('version')}: "
                          f"{verdict}")
        else:
            console.print("[yellow]not registered[/] (tracking.enabled is false)")
        console.print(f"reason: {escape(str(decision.get('reason')))}")  # "[pass]" is text, not markup
        if registered and decided_here:  # the version this run registered, whichever alias it got (a committed
            # record's version is in the registry of the machine that made it)
            console.print(f"lineage: .venv/bin/python -m tasks lineage {decision.get('version')}")


def _figure(value) -> str:
    """A metric as the table shows it: 3 decimals; "n/a" for null (undefined) and for anything not a number (a
    hand-edited metrics.json)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.3f}"
    return "n/a" if value is None else f"not a number: {escape(repr(value))}"


def stale_decision(decision: dict) -> str | None:
    """Which file register decided on has changed since ("ONNX model", "metrics.json"), or None. A step run by hand
    after register (`python -m tasks evaluate`) left the summary printing the old verdict beside the new figures."""
    for label, key, path in (("ONNX model", "onnx_sha256", paths.ONNX_MODEL), ("metrics.json", "metrics_sha256",
                                                                             paths.METRICS)):
        recorded = decision.get(key)
        if recorded and path.exists() and sha256_file(path) != recorded:
            return label
    return None


def area_bin_title(name: str) -> str:
    """A tumour-area bin's key in metrics.json (`100_to_500_mm2`, `over_2000_mm2`) as people read it; the model card
    titles its table rows with it too. Here, not there: the run summary must not import what the card needs."""
    return name.replace("_to_", "–").replace("_mm2", " mm²").replace("over_", "≥ ")


def _rejected_inputs() -> int:
    """How many input files data/processed/rejected.csv lists (0 when there is none, or it cannot be read)."""
    try:
        with open(paths.REJECTED, newline="") as listed:
            return sum(1 for _ in csv.DictReader(listed))  # a reason may hold a line break
    except (OSError, csv.Error):
        return 0


def _share(value: float | None, decimals: int) -> str:
    """A ratio as text; n/a where it is undefined (null in metrics.json: e.g. the sensitivity of a source without
    tumours)."""
    return "n/a" if value is None else f"{value:.{decimals}f}"


def interval_text(value, interval) -> str:
    """The 95 % interval to print after a figure, " [lo, hi]"; empty without an interval or a figure."""
    return f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval and value is not None else ""


def tumour_free_counts(free: dict) -> str:
    """metrics.json's tumour_free_volumes in words, as the summary and the model card give it: with the share's
    interval when evaluate wrote one (a few brains: 2 of 7 is 8-64 % of such brains)."""
    bounds = finite_interval(free.get("with_predicted_tumour_ci95"))
    share = f"; {percent_range(bounds)} of such brains, 95 % interval" if bounds else ""
    return (f"{free['with_predicted_tumour']} left with a predicted tumour (up to {free['predicted_voxels_max']:,} "
            f"voxels{share}), {free['called_tumour']} called tumour")


def _where_it_errs(metrics: dict) -> str:
    """One line per subgroup family: accuracy and sensitivity per source, tumour slices detected by size."""
    by_source = metrics.get("classification_by_source") or {}
    by_area = metrics.get("sensitivity_by_tumour_area") or {}
    lines = []
    if by_source:
        intervals = metrics.get("ci95") or {}

        def accuracy(source: str, value) -> str:  # with the source's own interval, when evaluate wrote one
            return _share(value, 3) + interval_text(value, intervals.get(f"classification_by_source.{source}.accuracy"))

        lines.append("classifier by source: " + "; ".join(
            f"{source} accuracy {accuracy(source, m['accuracy'])}, sensitivity {_share(m['sensitivity'], 3)}"
            + (f", ROC-AUC {_share(m['roc_auc'], 3)}" if m.get("roc_auc") is not None else "")
            + f" ({m['n']} slices)" for source, m in by_source.items()))
    if by_area:
        lines.append("BraTS tumour slices detected, by tumour area: " + "; ".join(
            f"{area_bin_title(name)} {_share(m['sensitivity'], 2)} "
            f"({m['n']})" for name, m in by_area.items() if m["n"]))
    return "\n".join(lines)
