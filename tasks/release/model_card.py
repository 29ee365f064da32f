"""The model card: markdown written into each registry version's description (and logged with its run).

Data and split sizes, profile, test metrics with their 95 % intervals (WT, TC and ET per patient volume among
them, and the organisers' package's figures when evaluate ran it), ONNX parity and latency, the gate's decision,
lineage, intended use and limitations.
"""

from __future__ import annotations

from pathlib import Path

from tasks.data.splits import read_split, split_rows
from tasks.inference.postprocess import MIN_COMPONENT_SHARE, MIN_SLICE_EVIDENCE
from tasks.io import nested_value
from tasks.release.release_files import ties_note
from tasks.release.summary import area_bin_title, interval_text, tumour_free_counts

METRIC_ROWS = [("classification", "accuracy"), ("classification", "sensitivity"), ("classification", "specificity"),
               ("classification", "precision"), ("classification", "f1"), ("classification", "roc_auc"),
               ("classification", "pr_auc"), ("segmentation", "dice"), ("segmentation", "iou"),
               ("segmentation", "hd95"), ("segmentation_volume", "dice"), ("segmentation_volume", "hd95"),
               *[("segmentation_regions", f"{region}.{name}") for region in ("wt", "tc", "et")
                 for name in ("dice", "hd95")]]
LINEAGE_TAGS = ("git_commit", "git_dirty", "data_hash", "data_raw_hash", "splits_hash", "params_hash", "onnx_sha256",
                "mlflow_run_id", "prefect_flow_run_id")


def split_summary(processed: Path, splits_dir: Path) -> dict[str, dict[str, int]]:
    """Patients (a Kaggle image counts as its own patient), slices and tumour slices per split."""
    summary = {}
    for name in ("train", "val", "test"):
        rows = split_rows(processed, read_split(name, splits_dir))
        summary[name] = {"patients": int(rows["patient"].nunique()), "slices": int(len(rows)),
                         "tumour_slices": int(rows["label"].sum()),
                         "brats_patients": int(rows.loc[rows["source"] == "brats", "patient"].nunique())}
    return summary


def _lone_slice_sentence(decision_rule: dict, threshold) -> list[str]:
    """Where a slice that arrives alone (/v1/predict) is judged at a threshold of its own, the card says so."""
    lone = decision_rule.get("lone_slice_value")
    if lone is None or threshold is None or lone == threshold:
        return []
    photos = (" The Kaggle-style images always arrive alone, and their figures below are at that threshold too."
              if decision_rule.get("photos_at") == "lone_slice_value" else "")
    return ["", f"A slice sent alone (/v1/predict) has no volume to clean its mask up: it is judged at {_fmt(lone)}, "
                "the same rule's threshold on the validation slices each scored alone." + photos]


def _intervals_sentence(metrics: dict) -> str:
    """How the 95 % intervals were computed: metrics.json says since it had BCa intervals; before, percentile ones."""
    if (metrics.get("ci95_method") or {}).get("interval") == "bca":
        return ("Intervals: 95 % BCa bootstrap resampling patients, its tails widened for few patients; with a few "
                "test patients they still cover less than 95 % (docs/evaluation.md).")
    return "Intervals: percentile bootstrap resampling patients."


def _photo_threshold_caveat(decision_rule: dict, threshold) -> list[str]:
    """Metrics written before photos were judged at the lone slice threshold (`photos_at`) have their figures at the
    volume rule's threshold, but a photo always arrives alone and is served at the lone one: the card says so."""
    lone = decision_rule.get("lone_slice_value")
    if lone is None or threshold is None or lone == threshold or decision_rule.get("photos_at") == "lone_slice_value":
        return []
    return [f"- The Kaggle-style images' figures above are at {_fmt(threshold)}; /v1/predict judges an uploaded image "
            f"at {_fmt(lone)} (the lone slice threshold), so its answers on photos can differ from those figures."]


def tumour_free_sentence(metrics: dict) -> str:
    """What this model paints on its test patients without their tumour (synthetic data; '' when not measured)."""
    free = metrics.get("tumour_free_volumes")
    if not free:
        return ""
    return (f" This model, on its {free['n']} test patients rendered again without their tumour: "
            f"{tumour_free_counts(free)} by the volume decision.")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _metrics_table(metrics: dict) -> list[str]:
    lines = ["| metric | value | 95 % CI |", "|---|---|---|"]
    intervals, alike = metrics.get("ci95") or {}, set(metrics.get("ci95_degenerate") or ())
    for section, name in METRIC_ROWS:
        value = nested_value(metrics, f"{section}.{name}")  # segmentation_regions.<region>.<metric> is nested
        interval = intervals.get(f"{section}.{name}")
        shown = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "n/a"
        if f"{section}.{name}" in alike:  # a zero-width interval would read as certainty from a few patients
            shown += f" {DEGENERATE_NOTE}"
        lines.append(f"| {section}.{name} | {_fmt(value)} | {shown} |")
    return lines


DEGENERATE_NOTE = "(every resample alike: no measure of its uncertainty)"


def _organisers_section(metrics: dict) -> list[str]:
    """The organisers' package's figures (global and lesion-wise), when evaluate could run it."""
    organisers = metrics.get("segmentation_regions_brats_evaluation") or {}
    if not organisers.get("available"):
        return []
    lines = ["", "BraTS organisers' `brats-evaluation` (panoptica, gli config) on the same label maps, mean over the "
             f"test patients it scored of {organisers.get('n_patients')} (none where a region is empty in truth and "
             "prediction alike):", "",
             "| region | patients scored | Dice | HD95 mm | NSD | lesion-wise Dice | lesion-wise HD95 mm "
             "| lesion-wise NSD |",
             "|---|---|---|---|---|---|---|---|"]
    for region in ("wt", "tc", "et"):
        if values := organisers.get(region):
            cells = [_fmt(values.get(k)) for k in ("dice", "hd95", "nsd", "lesion_dice", "lesion_hd95", "lesion_nsd")]
            scored = (values.get("n_scored") or {}).get("dice", "n/a")
            lines.append(f"| {region.upper()} | {scored} | " + " | ".join(cells) + " |")
    return lines


def _subgroups_section(metrics: dict) -> list[str]:
    """Where the classifier errs: per source, and the tumour slices it detects by tumour size."""
    by_source, by_area = metrics.get("classification_by_source") or {}, metrics.get("sensitivity_by_tumour_area") or {}
    if not by_source:
        return []
    alone = ((metrics.get("classification_threshold") or {}).get("photos_at") == "lone_slice_value")
    judged = "each input at the threshold serving applies to it" if alone else "same threshold"
    lines = ["", f"Where the classifier errs (test split, {judged}; an interval resamples that source alone):", "",
             "| source | slices | with tumour | accuracy | sensitivity | specificity |", "|---|---|---|---|---|---|"]
    intervals = metrics.get("ci95") or {}
    for source, m in by_source.items():
        cells = [_fmt(value) + interval_text(value, intervals.get(f"classification_by_source.{source}.{name}"))
                 for name, value in ((name, m.get(name)) for name in ("accuracy", "sensitivity", "specificity"))]
        lines.append(f"| {source} | {m['n']} | {m['positives']} | {' | '.join(cells)} |")
    if by_area:
        lines += ["", "| BraTS tumour slices by tumour area | slices | detected |", "|---|---|---|"]
        for name, m in by_area.items():
            lines.append(f"| {area_bin_title(name)} | {m['n']} "
                         f"| {_fmt(m['sensitivity']) if m['n'] else 'n/a'} |")
    return lines


def _data_section(splits: dict, profile: str, data_source: str, image_size: int, modalities: list[str]) -> list[str]:
    lines = [f"Profile `{profile}`, data source `{data_source}`, {image_size}x{image_size} slices, "
             f"modalities {', '.join(modalities)}.", "",
             "| split | patients | of which BraTS | slices | tumour slices |", "|---|---|---|---|---|"]
    for name, s in splits.items():
        lines.append(f"| {name} | {s['patients']} | {s['brats_patients']} | {s['slices']} | {s['tumour_slices']} |")
    return lines


def _export_section(export_report: dict) -> list[str]:
    parity, latency = export_report.get("parity", {}), export_report.get("latency", {})
    opset = f"ONNX opset {export_report.get('onnx', {}).get('opset', 'unknown')}"
    if "max_abs_diff" not in parity:  # a report edited or made elsewhere: the gate fails the model on it
        lines = [f"{opset}; no parity result in the export report."]
    else:
        checked = parity["n_slices"]
        if parity.get("test_slices", checked) > checked:  # parity_max_slices of them, evenly spaced
            checked = f"{checked} (evenly spaced) of the {parity['test_slices']}"
        used = (f" ({parity['tolerance_used']:.2f} of what atol {parity['atol']:.0e} + rtol {parity['rtol']:.0e} x "
                "|logit| allows)" if "tolerance_used" in parity else "")
        lines = [f"{opset}; parity with torch on {checked} test slices: max |logit difference| "
                 f"{parity['max_abs_diff']:.2e}{used}, {parity['decision_mismatches']} decision mismatches"
                 f"{ties_note(parity)}, mask Dice {parity['mask_dice']:.5f}."]
    if latency:
        lines += ["", "| engine (CPU) | batch 1 p50 / p95 ms | batch 8 p50 / p95 ms per slice |", "|---|---|---|"]
        for engine, batches in latency.items():
            b1, b8 = batches["batch_1"], batches["batch_8"]
            lines.append(f"| {engine} | {b1['p50_ms']:.2f} / {b1['p95_ms']:.2f} "
                         f"| {b8['p50_ms']:.2f} / {b8['p95_ms']:.2f} |")
    return lines


# metrics.json's classification_threshold.rule, as the card words it (older metrics: the validation wording)
THRESHOLD_ORIGINS = {
    "youden": "the threshold chosen on the validation split (Youden's J)",
    "target_sensitivity": "the threshold chosen on the validation split (the highest reaching the target sensitivity)",
    "fixed": "a fixed threshold (evaluate.threshold_rule: fixed)",
    "fallback: the validation split holds one class only": "0.5 by default: the validation split holds one class only",
}
# metrics.json's segmentation_threshold.rule → how the card says the pixel cut came about
CUT_ORIGINS = {"validation": "chosen on the validation split",
               "fallback: no validation slice has tumour": "0.5 by default: no validation slice has tumour"}
# metrics.json's classification_threshold.slice_score: what the probability is (older metrics: the classifier's)
SLICE_SCORE_WORDS = {
    "classifier": "the classification head's probability",
    "fused": "the mean of the classification head's probability and the segmentation head's largest pixel "
             "probability in the slice",
}


def _segmented(metrics: dict) -> str:
    """What the seg head delineates: the three BraTS regions, or (an older one-output model) the whole tumour."""
    regions = metrics.get("segmentation_regions") or {}
    return ("whole-tumour, tumour-core and enhancing-tumour" if regions.get("tc") and regions.get("et")
            else "whole-tumour")


def render_model_card(*, model_name: str, version: str | None, profile: str, data_source: str, image_size: int,
                      modalities: list[str], splits: dict, metrics: dict, export_report: dict, decision,
                      tags: dict[str, str]) -> str:
    """Markdown model card; `decision` is a gate.GateDecision."""
    title = f"# {model_name}" + (f" version {version}" if version else "")
    # a section missing or null fails its gate criterion (gate.py); the card says n/a instead of crashing
    threshold = (metrics.get("classification") or {}).get("threshold")
    decision_rule = metrics.get("classification_threshold") or {}
    threshold_origin = THRESHOLD_ORIGINS.get(decision_rule.get("rule"), "the threshold chosen on the validation split")
    score = SLICE_SCORE_WORDS.get(decision_rule.get("slice_score"), SLICE_SCORE_WORDS["classifier"])
    if decision_rule.get("slices_in_volume") and decision_rule.get("slice_score") == "fused":
        score += (" (for the slices of a volume, as /v1/predict/volume answers them: without the components the "
                  "volume clean-up drops)")
    cut = metrics.get("segmentation_threshold") or {"value": 0.5, "rule": "fixed"}
    cut_origin = CUT_ORIGINS.get(cut.get("rule"), "fixed")
    synthetic = data_source == "synthetic"
    lines = [
        title, "",
        f"Multitask 2D U-Net: {_segmented(metrics)} segmentation of axial brain MRI slices and a tumour / no-tumour "
        f"decision per slice (tumour when {score} >= {_fmt(threshold)}, {threshold_origin}; "
        f"a pixel is tumour when its probability >= {_fmt(cut.get('value'))}, {cut_origin}).",
        *_lone_slice_sentence(decision_rule, threshold),
        "", "## Data", "", *_data_section(splits, profile, data_source, image_size, modalities), "",
        "Splits are patient-level (no patient in two splits); near-duplicate Kaggle images stay in one split.",
        "", "## Test metrics", "", _intervals_sentence(metrics), "",
        *_metrics_table(metrics), *_subgroups_section(metrics), *_organisers_section(metrics), "",
        "## Export", "", *_export_section(export_report), "",
        "## Promotion gate", "", f"**{'PROMOTED' if decision.promoted else 'NOT PROMOTED'}**", "",
        *[f"- {criterion}" for criterion in decision.criteria], "",
        "## Lineage", "", *[f"- {key}: `{tags[key]}`" for key in LINEAGE_TAGS if key in tags], "",
        "## Intended use", "",
        "Research and teaching: a worked example of a reproducible MRI pipeline (data versioning, tracking, "
        "registry, serving). Input: skull-stripped axial MRI slices preprocessed as described in the model's "
        "metadata (model.json).", "",
        "## Limitations", "",
        "- **Not a medical device.** Not validated clinically; must not be used for diagnosis or treatment decisions.",
        ("- **Trained and tested on synthetic data** (the default `data.source: synthetic`): generated BraTS-like "
         "volumes and Kaggle-like images. The metrics say nothing about real scans." if synthetic else
         f"- Trained on `{data_source}` data; performance on other scanners, protocols or populations is unknown."),
        "- 2D slices only: no 3D context. Regions: whole tumour (WT), and tumour core (TC) and enhancing tumour (ET) "
        "when the model predicts them (`segmentation_regions`: per patient volume, native resolution, BraTS rule for "
        "empty regions: both empty Dice 1 / HD95 0, one empty Dice 0 / HD95 373.13 mm).",
        f"- Predicted volumes are cleaned: a connected component is dropped when the classifier's median tumour "
        f"probability over the slices it spans is below {MIN_SLICE_EVIDENCE}, and so is one smaller than "
        f"{MIN_COMPONENT_SHARE} x the largest kept (a second lesion smaller than that is deleted too); single slices "
        "are returned as predicted.",
        "- **Every training and test patient has a tumour** (as in BraTS): the clean-up above can delete a faint "
        "tumour whole when the classifier doubts its slices, and on a brain without a tumour a volume answer can "
        "still show one (both measured on synthetic brains: docs/recipes.md, \"When the veto deletes a real "
        "tumour\")." + tumour_free_sentence(metrics),
        "- Small test split: see the width of the 95 % intervals before trusting a difference between versions.",
        "- Kaggle-style images have no masks: segmentation metrics come from BraTS-style patients only.",
        *_photo_threshold_caveat(decision_rule, threshold),
    ]
    return "\n".join(lines) + "\n"
