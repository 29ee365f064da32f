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
        return ("Intervals: 95 % BCa bootstrap resampling patients, its tails widened for few patients (a proportion "
                "every resample agrees on, and the shares of tumour-free brains, get Wilson's interval instead); with "
                "a few test patients they still cover less than 95 % (docs/evaluation.md).")
    return "Intervals: percentile bootstrap resampling patients."


def _populations_note(metrics: dict, splits: dict) -> list[str]:
    """What the headline figures are computed over: a reader took the slice specificity for a specificity per brain,
    and an HD95 without its unit and its misses for a boundary error (a review of the card's claims, 2026-12-07)."""
    test = splits.get("test") or {}
    brains = test.get("brats_patients")
    inputs = ("the BraTS-style slices and the photos" if brains is None else
              f"the slices of {brains} brain volumes and {test['patients'] - brains} photos")
    lines = ["", f"`classification.*` pool every test input: {inputs} (each source alone below). Every brain volume "
             "has a tumour somewhere, so the specificity is over the tumour-free slices of tumour-bearing brains and "
             "the tumour-free photos, not over brains without a tumour (see *Tumour-free brains*). The pooled ROC-AUC "
             "ranks slices scored within their volume together with photos scored alone, two scores: each source's "
             "own is below."]
    misses = metrics.get("segmentation_misses") or {}
    if misses.get("n_slices_missed") is not None:
        lines.append(f"`segmentation.hd95` is in mm, per tumour slice; the {misses['n_slices_missed']} tumour slices "
                     f"with no predicted mask count as the image's diagonal (over the slices found it is "
                     f"{_fmt(misses.get('hd95_over_found'))} mm, median {_fmt(misses.get('hd95_median'))} mm). "
                     "The volume and region HD95 are 3D, in mm.")
    lowest = {region: worst for region, worst in (metrics.get("segmentation_regions_lowest") or {}).items() if worst}
    if lowest:  # with a few patients one failure sets a mean's interval: the reader is told which
        named = "; ".join(f"{region.upper()} {worst['patient']} ({worst['dice']:.3f})"
                          for region, worst in lowest.items())
        lines.append(f"The lowest test patient by region Dice: {named}; every patient's figures are in the "
                     "evaluation's reports/plots/patients.csv.")
    if (ece := (metrics.get("calibration") or {}).get("ece")) is not None:
        lines.append(f"Calibration: the tumour score's expected calibration error on the test inputs is {ece:.3f} "
                     f"({metrics['calibration'].get('bins')} equal-width bins); read a score as a ranking, not as the "
                     "chance of a tumour.")
    return lines


def _tumour_free_section(metrics: dict) -> list[str]:
    """Brains without a tumour, which no split holds (BraTS has none): what the volume decision says of the test
    patients rendered again without their tumour, as a specificity per brain. The gate does not test it."""
    free = metrics.get("tumour_free_volumes")
    if not free:
        return ["", "## Tumour-free brains", "",
                "Not measured: no split holds a brain volume without a tumour (BraTS has none); on synthetic data "
                "evaluate renders the test patients again without their tumour, which this evaluation did not. The "
                "gate does not test it."]
    n, called = free["n"], free["called_tumour"]
    bounds = free.get("called_tumour_ci95")
    interval = (f" (95 % Wilson interval {1 - bounds[1]:.2f}–{1 - bounds[0]:.2f})" if bounds else "")
    return ["", "## Tumour-free brains", "",
            f"The {n} test patients rendered again without their tumour (synthetic): the volume decision calls "
            f"{called} of them tumour, a specificity per brain of {(n - called) / n:.2f}{interval}; "
            f"{tumour_free_counts(free)}. **The promotion gate does not test this**: its specificity is over slices."]


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
             "| source | slices | with tumour | accuracy | sensitivity | specificity | ROC-AUC |",
             "|---|---|---|---|---|---|---|"]
    intervals = metrics.get("ci95") or {}
    for source, m in by_source.items():
        cells = [_fmt(value) + interval_text(value, intervals.get(f"classification_by_source.{source}.{name}"))
                 for name, value in ((name, m.get(name))
                                     for name in ("accuracy", "sensitivity", "specificity", "roc_auc"))]
        lines.append(f"| {source} | {m['n']} | {m['positives']} | {' | '.join(cells)} |")
    if by_area:
        lines += ["", "| BraTS tumour slices by tumour area | slices (patients) | detected (95 % Wilson over slices) |",
                  "|---|---|---|"]
        for name, m in by_area.items():
            patients = f" ({m['patients']})" if m.get("patients") is not None else ""
            detected = _fmt(m["sensitivity"]) + interval_text(m["sensitivity"], m.get("ci95_slices")) if m["n"] \
                else "n/a"
            lines.append(f"| {area_bin_title(name)} | {m['n']}{patients} | {detected} |")
        lines += ["", "The slices of one patient are not independent: these intervals are narrower than the truth."]
    return lines


def _data_section(splits: dict, profile: str, data_source: str, image_size: int, modalities: list[str]) -> list[str]:
    # a photo is its own "patient" to the split: the column says both, and synthetic volumes are not BraTS's own
    volumes = "BraTS-like volumes (synthetic)" if data_source == "synthetic" else "BraTS volumes"
    lines = [f"Profile `{profile}`, data source `{data_source}`, {image_size}x{image_size} slices, "
             f"modalities {', '.join(modalities)}.", "",
             f"| split | brains + photos | of which {volumes} | slices | tumour slices |", "|---|---|---|---|---|"]
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
    "fused": "the tumour score (the mean of the classification head's probability and the segmentation head's largest "
             "pixel probability in the slice: a score, not a calibrated probability)",
}


def _segmented(metrics: dict) -> str:
    """What the seg head delineates: the three BraTS regions, or (an older one-output model) the whole tumour."""
    regions = metrics.get("segmentation_regions") or {}
    return ("whole-tumour, tumour-core and enhancing-tumour" if regions.get("tc") and regions.get("et")
            else "whole-tumour")


def _lineage_section(tags: dict[str, str]) -> list[str]:
    lines = [f"- {key}: `{tags[key]}`" for key in LINEAGE_TAGS if key in tags]
    if tags.get("git_dirty") == "true":
        lines.append("- The working tree had uncommitted changes when this version was registered: its commit alone "
                     "does not rebuild it.")
    return lines


def render_model_card(*, model_name: str, version: str | None, profile: str, data_source: str, image_size: int,
                      modalities: list[str], splits: dict, metrics: dict, export_report: dict, decision,
                      tags: dict[str, str], seed: int | None = None) -> str:
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
        "", "## Model details", "",
        f"One training run{f' (seed {seed})' if seed is not None else ''} of the SliceWise pipeline's `{profile}` "
        "profile: three stages (segmentation warm-up, classification head on the frozen encoder, joint "
        "fine-tuning). Another seed, or another CPU, trains other weights and other figures: the spread over "
        "five seeds is in the README (*Quality across seeds and CPUs*). The recipe was chosen with earlier test "
        "figures in view (docs/quality.md), so these test patients are not a blind estimate.",
        "", "## Data", "", *_data_section(splits, profile, data_source, image_size, modalities), "",
        "Splits are patient-level (no patient in two splits); near-duplicate Kaggle images stay in one split.",
        "", "## Test metrics", "", _intervals_sentence(metrics), "",
        *_metrics_table(metrics), *_populations_note(metrics, splits), *_subgroups_section(metrics),
        *_organisers_section(metrics), *_tumour_free_section(metrics), "",
        "## Export", "", *_export_section(export_report), "",
        "## Promotion gate", "", f"**{'PROMOTED' if decision.promoted else 'NOT PROMOTED'}**", "",
        *[f"- {criterion}" for criterion in decision.criteria], "",
        "## Lineage", "", *_lineage_section(tags), "",
        "## Intended use", "",
        "Research and teaching: a worked example of a reproducible MRI pipeline (data versioning, tracking, "
        "registry, serving). Input: skull-stripped axial MRI volumes (or their slices) of the modalities above, "
        "preprocessed as described in the model's metadata (model.json).", "",
        "Out of scope: any clinical use; screening (the model trained on no tumour-free brain volume, only on "
        "photos of tumour-free brains, and it calls tumour on brains without one: *Tumour-free brains*); real "
        "scans when it was trained on synthetic data; other tumour types than glioma, post-operative scans, other "
        "planes than axial. Photos of scans (8-bit PNG/JPEG) are served without a decision when this model's test "
        "accuracy on photos is below the server's `serve.min_photo_accuracy`. A lone MRI slice (/v1/predict) is "
        "judged without its volume: the BraTS figures above are for slices judged within their volume, and no test "
        "figure is measured for lone MRI slices. The server's out-of-distribution flag is a set of hand-written "
        "checks (serve/ood.py), not evaluated against real out-of-distribution scans.", "",
        "## Ethical considerations", "",
        ("Synthetic data holds no person's information; it imitates BraTS 2020's adult gliomas. " if synthetic else "")
        + "A model trained on BraTS inherits the population of the cohort it was given (BraTS 2020: adult gliomas, "
        "pre-operative multi-parametric MRI from a few dozen institutions; later BraTS cohorts hold other tumours "
        "and timepoints); how it fares beyond that cohort's ages, scanners and populations is unmeasured. A wrong "
        "\"no tumour\" can delay care and a wrong \"tumour\" can cause harm too: the figures above are not "
        "evidence for either use.", "",
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
        "- **Every BraTS-like patient, in training and in test, has a tumour** (as in BraTS): the clean-up above "
        "can delete a faint tumour whole when the classifier doubts its slices, and on a brain without a tumour a "
        "volume answer can still show one (both measured on synthetic brains: docs/recipes.md, \"When the veto "
        "deletes a real tumour\")." + tumour_free_sentence(metrics),
        "- Small test split: see the width of the 95 % intervals before trusting a difference between versions.",
        "- Kaggle-style images have no masks: segmentation metrics come from BraTS-style patients only.",
        *_photo_threshold_caveat(decision_rule, threshold),
    ]
    return "\n".join(lines) + "\n"
