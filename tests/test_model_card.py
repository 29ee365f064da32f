"""The model card shows WT, TC and ET with their intervals, and the organisers' figures when evaluate had them."""

from types import SimpleNamespace

from tasks.inference.postprocess import MIN_COMPONENT_SHARE, MIN_SLICE_EVIDENCE
from tasks.release.model_card import render_model_card

EXPORT = {"onnx": {"opset": 17}, "parity": {"n_slices": 4, "max_abs_diff": 1e-6, "decision_mismatches": 0,
                                            "mask_dice": 1.0}}


def card(metrics: dict) -> str:
    return render_model_card(model_name="slicewise", version="3", profile="quick", data_source="synthetic",
                             image_size=128, modalities=["flair", "t1", "t1ce", "t2"], splits={}, metrics=metrics,
                             export_report=EXPORT, decision=SimpleNamespace(promoted=True, criteria=["ok"]), tags={})


def test_card_shows_the_three_regions_with_intervals_and_the_organisers_figures():
    metrics = {"classification": {"threshold": 0.5},
               "segmentation_regions": {"wt": {"dice": 0.876, "hd95": 5.5}, "tc": {"dice": 0.712, "hd95": 9.25},
                                        "et": {"dice": None, "hd95": None}},
               "ci95": {"segmentation_regions.wt.dice": [0.81, 0.92]},
               "segmentation_regions_brats_evaluation": {"available": True, "n_patients": 4,
                                                         "wt": {"dice": 0.87, "hd95": 5.4, "nsd": 0.9,
                                                                "lesion_dice": 0.7, "lesion_hd95": 40.0,
                                                                "lesion_nsd": 0.6, "n_scored": {"dice": 3}}}}
    text = card(metrics)
    assert "| segmentation_regions.wt.dice | 0.876 | [0.810, 0.920] |" in text
    assert "| segmentation_regions.tc.hd95 | 9.250 | n/a |" in text
    assert "| segmentation_regions.et.dice | n/a | n/a |" in text
    assert "| WT | 3 | 0.870 | 5.400 | 0.900 | 0.700 | 40.000 | 0.600 |" in text  # 3 of the 4 patients scored
    assert "it scored of 4" in text
    assert "U-Net: whole-tumour, tumour-core and enhancing-tumour segmentation of axial" in text  # not "whole-tumour"


def test_card_names_the_patient_behind_each_regions_lowest_dice():
    """Review 2026-12-07: a TC Dice of 0.845 had the interval [0.459, 0.954] because one of seven test patients scored
    0.261, and the card did not say so."""
    text = card({"classification": {"threshold": 0.5},
                 "segmentation_regions_lowest": {"wt": {"patient": "BraTS20_Training_039", "dice": 0.9027},
                                                 "tc": {"patient": "BraTS20_Training_038", "dice": 0.2607},
                                                 "et": None}})
    assert ("The lowest test patient by region Dice: WT BraTS20_Training_039 (0.903); TC BraTS20_Training_038 "
            "(0.261); every patient's figures") in text
    assert "The lowest test patient" not in card({"classification": {"threshold": 0.5}})


def test_card_without_regions_or_organisers_still_renders():
    text = card({"classification": {"threshold": 0.5}})
    assert "segmentation_regions.wt.dice | n/a" in text and "brats-evaluation" not in text
    assert "U-Net: whole-tumour segmentation of axial" in text


def test_card_names_how_its_intervals_were_computed():
    bca = card({"classification": {"threshold": 0.5}, "ci95_method": {"interval": "bca", "level": 0.95}})
    assert "95 % BCa bootstrap resampling patients, its tails widened for few patients" in bca
    # a metrics.json from before the BCa intervals: they were percentile intervals, and the card says so
    older = card({"classification": {"threshold": 0.5}})
    assert "Intervals: percentile bootstrap resampling patients." in older and "BCa" not in older


def test_card_renders_when_metrics_json_lacks_a_section_or_holds_null():
    """A missing or null section fails its gate criterion (gate.py); the card rendered before the gate and crashed
    `register` with a KeyError / AttributeError traceback instead."""
    for metrics in ({}, {"classification": None}, {"classification": {"threshold": 0.5}, "ci95": None},
                    {"classification": {"threshold": 0.5}, "segmentation_threshold": None}):
        text = card(metrics)
        assert "| classification.accuracy | n/a | n/a |" in text and "probability >= 0.5" in text


def test_card_shows_where_the_classifier_errs():
    metrics = {"classification": {"threshold": 0.5},
               "classification_by_source": {"brats": {"n": 248, "positives": 126, "accuracy": 0.903,
                                                      "sensitivity": 0.85, "specificity": 0.9},
                                            "kaggle": {"n": 35, "positives": 17, "accuracy": 0.771,
                                                       "sensitivity": 0.588, "specificity": 0.944, "roc_auc": 0.712}},
               "sensitivity_by_tumour_area": {"0_to_100_mm2": {"n": 12, "sensitivity": 0.25},
                                              "over_2000_mm2": {"n": 0, "sensitivity": 0.0}}}
    text = card(metrics)
    assert "| kaggle | 35 | 17 | 0.771 | 0.588 | 0.944 | 0.712 |" in text
    assert "| brats | 248 | 126 | 0.903 | 0.850 | 0.900 | n/a |" in text  # a record written before it had one
    with_intervals = card(metrics | {"ci95": {"classification_by_source.kaggle.accuracy": [0.629, 0.914]}})
    assert "| kaggle | 35 | 17 | 0.771 [0.629, 0.914] | 0.588 | 0.944 |" in with_intervals  # the photos' own interval
    assert "| 0–100 mm² | 12 | 0.250 |" in text and "| ≥ 2000 mm² | 0 | n/a |" in text


def test_card_says_how_predicted_volumes_are_cleaned():
    text = card({"classification": {"threshold": 0.5}})
    assert f"smaller than {MIN_COMPONENT_SHARE} x the largest kept" in text
    assert f"median tumour probability over the slices it spans is below {MIN_SLICE_EVIDENCE}" in text


def test_card_says_how_the_decision_threshold_came_about():
    for rule, words in (("youden", "the threshold chosen on the validation split (Youden's J)"),
                        ("fixed", "a fixed threshold (evaluate.threshold_rule: fixed)"),
                        ("fallback: the validation split holds one class only", "0.5 by default")):
        text = card({"classification": {"threshold": 0.5}, "classification_threshold": {"value": 0.5, "rule": rule}})
        assert f"tumour when the classification head's probability >= 0.500, {words}" in text, rule


def test_card_says_what_the_threshold_applies_to():
    fused = card({"classification": {"threshold": 0.4},
                  "classification_threshold": {"value": 0.4, "rule": "youden", "slice_score": "fused"}})
    assert ("tumour when the tumour score (the mean of the classification head's probability and the segmentation "
            "head's largest pixel probability in the slice: a score, not a calibrated probability) >= 0.400") in fused
    assert "tumour when the classification head's probability >= 0.400" in card(
        {"classification": {"threshold": 0.4}, "classification_threshold": {"value": 0.4, "rule": "youden"}})
    assert "volume clean-up" not in fused
    in_volume = card({"classification": {"threshold": 0.4}, "classification_threshold": {
        "value": 0.4, "rule": "youden", "slice_score": "fused", "slices_in_volume": True}})
    assert ("not a calibrated probability) (for the slices of a volume, as /v1/predict/volume answers them: without "
            "the components the volume clean-up drops) >= 0.400") in in_volume
    assert "sent alone" not in in_volume  # no lone-slice threshold recorded (or the same): nothing to add
    lone = card({"classification": {"threshold": 0.4}, "classification_threshold": {
        "value": 0.4, "rule": "youden", "slice_score": "fused", "slices_in_volume": True, "lone_slice_value": 0.7}})
    assert "A slice sent alone (/v1/predict) has no volume to clean its mask up: it is judged at 0.700" in lone


def test_card_says_where_masks_are_cut():
    assert "a pixel is tumour when its probability >= 0.500, fixed" in card({"classification": {"threshold": 0.5}})
    chosen = card({"classification": {"threshold": 0.5}, "segmentation_threshold": {"value": 0.65, "rule": "validation"}})
    assert "a pixel is tumour when its probability >= 0.650, chosen on the validation split" in chosen
    fallback = card({"classification": {"threshold": 0.5},
                     "segmentation_threshold": {"value": 0.5, "rule": "fallback: no validation slice has tumour"}})
    assert "a pixel is tumour when its probability >= 0.500, 0.5 by default: no validation slice has tumour" in fallback


def test_card_says_what_no_tumour_free_brain_in_the_data_means():
    text = card({"classification": {"threshold": 0.5}})
    assert "**Every BraTS-like patient, in training and in test, has a tumour**" in text
    assert "can delete a faint tumour whole" in text and "a volume answer can still show one" in text


def test_card_says_photos_are_served_at_another_threshold_only_when_their_figures_are_not():
    served_apart = card({"classification": {"threshold": 0.6},
                         "classification_threshold": {"value": 0.6, "lone_slice_value": 0.68}})
    assert "figures above are at 0.600; /v1/predict judges an uploaded image at 0.680" in served_apart
    same = card({"classification": {"threshold": 0.6},
                 "classification_threshold": {"value": 0.6, "lone_slice_value": 0.6}})
    assert "/v1/predict judges an uploaded image" not in same
    judged_as_served = card({"classification": {"threshold": 0.6},
                             "classification_threshold": {"value": 0.6, "lone_slice_value": 0.68,
                                                          "photos_at": "lone_slice_value"}})
    assert "/v1/predict judges an uploaded image" not in judged_as_served
    assert "Kaggle-style images always arrive alone, and their figures below are at that threshold too" in \
        judged_as_served
    subgroups = {"classification_by_source": {"kaggle": {"n": 2, "positives": 1, "accuracy": 1.0,
                                                         "sensitivity": 1.0, "specificity": 1.0}}}
    assert "errs (test split, each input at the threshold serving applies to it;" in card(
        {"classification": {"threshold": 0.6}, **subgroups,
         "classification_threshold": {"value": 0.6, "lone_slice_value": 0.68, "photos_at": "lone_slice_value"}})
    assert "errs (test split, same threshold;" in card({"classification": {"threshold": 0.6}, **subgroups})


def test_card_says_how_much_of_the_parity_tolerance_the_logits_used():
    parity = EXPORT["parity"] | {"max_abs_diff": 1.9e-5, "atol": 1e-4, "rtol": 1e-4, "tolerance_used": 0.1}
    text = render_model_card(model_name="slicewise", version="3", profile="quick", data_source="synthetic",
                             image_size=128, modalities=["flair"], splits={}, metrics={"classification": {}},
                             export_report=EXPORT | {"parity": parity},
                             decision=SimpleNamespace(promoted=True, criteria=["ok"]), tags={})
    assert "max |logit difference| 1.90e-05 (0.10 of what atol 1e-04 + rtol 1e-04 x |logit| allows)" in text
    assert "of what atol" not in card({"classification": {}})  # an export report from before rtol: no such claim


def test_card_says_what_the_model_paints_on_its_test_patients_without_their_tumour():
    free = {"n": 7, "with_predicted_tumour": 2, "called_tumour": 1, "predicted_voxels_max": 4357,
            "predicted_voxels_median": 0.0}
    text = card({"classification": {"threshold": 0.5}, "tumour_free_volumes": free})
    assert ("This model, on its 7 test patients rendered again without their tumour: 2 left with a predicted tumour "
            "(up to 4,357 voxels), 1 called tumour by the volume decision.") in text
    # seven brains say little: the share's interval, where evaluate wrote it (since 2026-12-07)
    with_interval = card({"classification": {"threshold": 0.5},
                          "tumour_free_volumes": free | {"with_predicted_tumour_ci95": [0.082, 0.641]}})
    assert "2 left with a predicted tumour (up to 4,357 voxels; 8-64 % of such brains, 95 % interval)" in with_interval
    assert "rendered again without their tumour" not in card({"classification": {"threshold": 0.5}})  # real data


def test_card_says_what_its_figures_are_computed_over_and_what_they_cannot_claim():
    """A review of the release's claims (2026-12-07): the gate's specificity 0.982 read as the model's, while the
    volume decision called 3 of 7 tumour-free brains tumour; the score read as a probability; one seed's figures, an
    HD95 without its unit or misses, detection rates on 12 slices without an interval; a photo counted as a patient;
    no out-of-scope use, no ethical considerations, and a registration from a dirty tree not said to be one."""
    metrics = {"classification": {"threshold": 0.566},
               "classification_threshold": {"value": 0.566, "rule": "youden", "slice_score": "fused"},
               "tumour_free_volumes": {"n": 7, "with_predicted_tumour": 3, "called_tumour": 3,
                                       "called_tumour_ci95": [0.158, 0.75], "predicted_voxels_max": 2606,
                                       "predicted_voxels_median": 0.0},
               "segmentation_misses": {"n_slices_missed": 7, "hd95_over_found": 11.8, "hd95_median": 4.17},
               "calibration": {"ece": 0.0514, "bins": 10},
               "classification_by_source": {"brats": {"n": 409, "positives": 204, "accuracy": 0.98,
                                                      "sensitivity": 0.961, "specificity": 0.99}},
               "sensitivity_by_tumour_area": {"0_to_100_mm2": {"n": 12, "sensitivity": 1 / 3, "patients": 3,
                                                               "ci95_slices": [0.138, 0.609]}}}
    splits = {"train": {"patients": 201, "brats_patients": 34, "slices": 2000, "tumour_slices": 900},
              "test": {"patients": 25, "brats_patients": 7, "slices": 444, "tumour_slices": 221}}
    text = render_model_card(model_name="slicewise", version="8", profile="quick", data_source="synthetic",
                             image_size=128, modalities=["flair"], splits=splits, metrics=metrics,
                             export_report=EXPORT, decision=SimpleNamespace(promoted=True, criteria=["ok"]),
                             tags={"git_commit": "abc", "git_dirty": "true"}, seed=42)
    assert "a specificity per brain of 0.57 (95 % Wilson interval 0.25–0.84)" in text
    assert "**The promotion gate does not test this**" in text
    assert "the slices of 7 brain volumes and 18 photos" in text and "not over brains without a tumour" in text
    assert "a score, not a calibrated probability" in text
    assert "expected calibration error on the test inputs is 0.051" in text
    assert "the 7 tumour slices with no predicted mask count as the image's diagonal" in text
    assert "| 0–100 mm² | 12 (3) | 0.333 [0.138, 0.609] |" in text
    assert "| split | brains + photos | of which BraTS-like volumes (synthetic) |" in text
    assert "One training run (seed 42)" in text and "not a blind estimate" in text
    assert "Out of scope: any clinical use; screening" in text and "## Ethical considerations" in text
    assert "trained on no tumour-free brain volume, only on photos of tumour-free brains" in text  # photos are brains
    assert "uncommitted changes" in text
    clean = card({"classification": {"threshold": 0.5}})  # no tumour-free figure, no dirty tree: said so, or nothing
    assert "## Tumour-free brains\n\nNot measured" in clean and "uncommitted" not in clean


def test_a_card_longer_than_mlflow_keeps_is_cut_at_a_section_and_names_the_rest():
    """MLflow keeps a version's description in VARCHAR(5000) on PostgreSQL: the quick model's card (6,100 characters,
    9,458 with this session's sections) failed the registration there. The description keeps the first whole sections
    that fit and names the others and the file with the whole card."""
    from tasks.release.versions import CARD_FILE, DESCRIPTION_LIMIT, version_description

    short = "# slicewise\n\nA card.\n\n## Data\n\nSome.\n"
    assert version_description(short, "slicewise", "9") == short.replace("# slicewise\n", "# slicewise version 9\n")
    sections = [f"## Part {i}\n\n" + "words " * 300 for i in range(8)]  # 1,800 characters each
    described = version_description("# slicewise\n\nThe decision rule.\n\n" + "\n".join(sections), "slicewise", "9")
    assert len(described) <= DESCRIPTION_LIMIT and described.startswith("# slicewise version 9\n")
    assert "## Part 0" in described and "## Part 1" in described and "## Part 2" not in described
    assert f"with Part 2, Part 3, Part 4, Part 5, Part 6, Part 7, is `{CARD_FILE}` in this version's MLflow run" \
        in described


def test_a_section_too_long_for_the_description_keeps_its_first_paragraphs():
    """Version 10's first card: one line added to Test metrics (3,037 characters) made it too long for what was left,
    and the description, cut at whole sections, held no test figure at all."""
    from tasks.release.versions import DESCRIPTION_LIMIT, version_description

    table = "| metric | value |\n|---|---|\n" + "\n".join(f"| metric {i} | 0.9 |" for i in range(60))  # ~1,200
    card = ("# slicewise\n\nThe rule.\n\n## Data\n\n" + "data " * 500 + "\n\n## Test metrics\n\nIntervals.\n\n"
            + table + "\n\n" + "A note. " * 300 + "\n\n## Promotion gate\n\n**PROMOTED**\n")
    described = version_description(card, "slicewise", "10")
    assert len(described) <= DESCRIPTION_LIMIT and "| metric 59 | 0.9 |" in described  # the whole table
    assert "A note." not in described and "**PROMOTED**" not in described
    assert "The whole card, with the rest of Test metrics, Promotion gate, is" in described
