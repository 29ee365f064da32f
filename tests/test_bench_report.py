"""The benchmark report keeps one seed sweep and one peer run per CPU family, and the README table shows each.

Quality depends on the CPU's kernels, so a sweep on one machine must not erase another machine's from the table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.__main__ import REPORT, markdown, quality_rows, record_by_cpu
from bench.bench_seeds import cpu_family, family_of


def sweep(model: str, slice_dice_min: float, overrides: tuple[str, ...] = ()) -> dict:
    figure = {"min": slice_dice_min, "median": 0.85, "max": 0.9}
    names = ("accuracy", "sensitivity", "slice_dice", "volume_dice", "hd95_mm")
    return {"cpu": {"model": model, "bf16_autocast": True}, "overrides": list(overrides), "seeds": [42, 1],
            "summary": {name: figure for name in names}}


def peer(model: str, ratio: float) -> dict:
    return {"cpu": {"model": model}, "dice_ratio_quick_over_peer": ratio, "budget_seconds": 300.0,
            "quick": {"test_slice_dice": 0.84}, "peer": {"test_slice_dice": 0.8, "epochs": 1.5}}


def test_cpu_family_groups_model_names_by_vendor_and_line():
    assert cpu_family("AMD EPYC 9R14 96-Core Processor") == "AMD EPYC"
    assert cpu_family("Intel(R) Xeon(R) Platinum 8488C") == cpu_family("Intel(R) Xeon(R) Processor") == "Intel Xeon"
    assert cpu_family("INTEL(R) XEON(R) GOLD 6348") == "Intel Xeon"
    assert cpu_family("Ampere Altra Q80-30") == "Ampere Altra"
    # AMX tiles send bf16 matrix multiplies through other kernels: a sweep there is another machine's figure
    assert cpu_family("Intel(R) Xeon(R) Processor", amx=True) == "Intel Xeon with AMX"
    # neither AMX nor AVX512-BF16: training runs in fp32, another kernel path again
    assert cpu_family("Intel(R) Xeon(R) Processor", native_bf16=False) == "Intel Xeon without bf16"


def test_a_record_names_its_family_by_its_bf16_hardware():
    ice_lake = {"model": "Intel(R) Xeon(R) Processor", "amx": False, "avx512_bf16": False}
    assert family_of(ice_lake) == "Intel Xeon without bf16"
    assert family_of(ice_lake | {"avx512_bf16": True}) == "Intel Xeon"
    assert family_of({"model": "AMD EPYC 9R14"}) == "AMD EPYC"  # recorded before the flag was: bf16 hardware


def test_a_sweep_on_another_cpu_family_keeps_the_first_one():
    report: dict = {}
    record_by_cpu(report, "seeds", sweep("AMD EPYC 9R14", 0.805))
    record_by_cpu(report, "peer", peer("AMD EPYC 9R14", 1.03))
    record_by_cpu(report, "seeds", sweep("Intel(R) Xeon(R) Processor", 0.799))
    assert set(report["by_cpu"]) == {"AMD EPYC", "Intel Xeon"}
    assert report["seeds"]["cpu"]["model"].startswith("Intel")  # the latest sweep, for the README's seed table
    labels = [label for label, _, _ in quality_rows(report)]
    assert "quick, 2 seeds, AMD EPYC: slice Dice min / median / max" in labels
    assert "quick, 2 seeds, Intel Xeon: slice Dice min / median / max" in labels
    assert "quick slice Dice / equal-time MONAI BasicUNet, AMD EPYC" in labels
    cells = {label: value for label, value, _ in quality_rows(report)}
    assert cells["quick, 2 seeds, Intel Xeon: slice Dice min / median / max"].startswith("0.799")


def test_a_recipe_variant_is_not_the_cpus_figure():
    report: dict = {}
    record_by_cpu(report, "seeds", sweep("AMD EPYC 9R14", 0.805))
    record_by_cpu(report, "seeds", sweep("AMD EPYC 9R14", 0.6, overrides=("train.amp_bf16=false",)))
    assert report["by_cpu"]["AMD EPYC"]["seeds"]["summary"]["slice_dice"]["min"] == 0.805


def test_an_amx_sweep_is_kept_beside_the_same_vendors_sweep_without_amx():
    report: dict = {}
    record_by_cpu(report, "seeds", sweep("Intel(R) Xeon(R) Processor", 0.799))
    amx = sweep("Intel(R) Xeon(R) Processor", 0.83)
    amx["cpu"]["amx"] = True
    record_by_cpu(report, "seeds", amx)
    assert set(report["by_cpu"]) == {"Intel Xeon", "Intel Xeon with AMX"}
    assert report["by_cpu"]["Intel Xeon"]["seeds"]["summary"]["slice_dice"]["min"] == 0.799


def test_a_report_from_before_by_cpu_still_renders_its_sweep():
    report = {"seeds": sweep("AMD EPYC", 0.805), "peer": peer("AMD EPYC", 1.03)}
    labels = [label for label, _, _ in quality_rows(report)]
    assert labels[0] == "quick slice Dice / equal-time MONAI BasicUNet, AMD EPYC"
    assert len(labels) == 6


def test_the_committed_report_renders_every_cpu_family():
    report = json.loads(REPORT.read_text())
    table = markdown(report)
    assert report.get("by_cpu")  # else the loop below checks nothing
    for family in report["by_cpu"]:
        assert f"seeds, {family}: slice Dice" in table


def test_the_pipeline_figures_peer_joins_the_other_families(monkeypatch):
    import bench.__main__ as bench_main

    report: dict = {}
    record_by_cpu(report, "peer", peer("AMD EPYC 9R14", 1.03))
    monkeypatch.setattr(bench_main, "pipeline_figures",
                        lambda peer_too: {"pipeline": {"pipeline_seconds": 600}, "peer": peer("Intel(R) Xeon(R)", 0.98)})
    bench_main.merge_pipeline_figures(report, peer=True)
    assert report["pipeline"] == {"pipeline_seconds": 600}
    assert {family: found["peer"]["dice_ratio_quick_over_peer"] for family, found in report["by_cpu"].items()} == {
        "AMD EPYC": 1.03, "Intel Xeon": 0.98}


def test_a_full_bench_run_keeps_the_figures_it_does_not_measure_again(monkeypatch, tmp_path):
    """`make bench` started from an empty report: it dropped every figure recorded by hand (recipe variants, other
    CPUs' experiments) that the README cites as evidence. It now replaces only what it measures."""
    import bench.__main__ as bench_main

    report_file = tmp_path / "bench.json"
    report_file.write_text(json.dumps({"slice_score_amx": {"auc": 0.97}, "pipeline": {"pipeline_seconds": 900},
                                       "by_cpu": {"AMD EPYC": {"seeds": sweep("AMD EPYC 9R14", 0.8)}},
                                       "rerun_dates": {"slice": "2026-12-01", "api": "2026-12-01"}}))
    monkeypatch.setattr(bench_main, "REPORT", report_file)
    monkeypatch.setattr(bench_main, "merge_pipeline_figures",
                        lambda report, peer: report.update(pipeline={"pipeline_seconds": 600}))
    report = bench_main.run_all({"api", "gpu", "hostile", "loader", "peer", "seeds", "volume"})
    assert report["slice_score_amx"] == {"auc": 0.97} and "AMD EPYC" in report["by_cpu"]
    assert report["pipeline"] == {"pipeline_seconds": 600}  # what it measured is replaced
    assert report["rerun_dates"] == {"api": "2026-12-01"}  # slicing was measured again; the skipped API was not


def test_a_full_run_without_a_gpu_keeps_a_measured_gpu_figure_and_drops_the_partial_run_note(monkeypatch, tmp_path):
    import bench.__main__ as bench_main
    import bench.bench_gpu as bench_gpu

    report_file = tmp_path / "bench.json"
    report_file.write_text(json.dumps({"gpu": {"measured": True, "images_per_s": 1200}, "pipeline_date": "2026-12-01",
                                       "gpu_stages": {"measured": True, "patients": 96}}))
    monkeypatch.setattr(bench_main, "REPORT", report_file)
    monkeypatch.setattr(bench_main, "merge_pipeline_figures", lambda report, peer: None)
    monkeypatch.setattr(bench_gpu, "run", lambda: {"measured": False, "reason": "no CUDA device"})
    report = bench_main.run_all({"api", "hostile", "loader", "peer", "seeds", "volume"})  # the stages: no CUDA here
    assert report["gpu"] == {"measured": True, "images_per_s": 1200} and "pipeline_date" not in report
    assert report["gpu_stages"] == {"measured": True, "patients": 96}


def test_the_production_projection_scales_steady_epochs_and_adds_start_up_once(monkeypatch):
    """bench.bench_gpu_stages: each stage's steady epoch (after the first) × 369 / patients × its production epochs,
    plus its start-up and first-epoch warm-up once; fetch, slice, evaluate and export scale with the patients, split
    and register do not."""
    from bench import bench_gpu_stages

    monkeypatch.setattr(bench_gpu_stages, "production_epochs", lambda: {"seg": 60, "cls": 20, "joint": 40})
    steps = {"fetch": {"seconds": 12.3}, "slice": {"seconds": 3.0}, "split": {"seconds": 6.0},
             "train_seg": {"seconds": 50.0, "epoch_seconds": [14.0, 10.0, 12.0]},
             "train_cls": {"seconds": 20.0, "epoch_seconds": [8.0, 6.0]},
             "train_joint": {"seconds": 30.0, "epoch_seconds": [9.0]},
             "evaluate": {"seconds": 40.0}, "export": {"seconds": 20.0}, "register": {"seconds": 3.0}}
    projected = bench_gpu_stages.projection({"patients": 123, "steps": steps})
    scale = 369 / 123  # 3
    assert projected["scale"] == 3.0
    seg = (50 - 36 + (14 - 11)) + 11 * scale * 60  # fixed start-up 14 s + 3 s warm-up, median steady epoch 11 s
    assert projected["minutes"]["train_seg"] == round(seg / 60, 1)
    assert projected["minutes"]["train_cls"] == round((20 - 14 + 2 + 6 * scale * 20) / 60, 1)
    assert projected["minutes"]["train_joint"] == round((21 + 9 * scale * 40) / 60, 1)  # one epoch: it is the steady one
    assert projected["minutes"]["fetch"] == round(12.3 * scale / 60, 1) and projected["minutes"]["split"] == 0.1
    assert projected["minutes"]["evaluate"] == 2.0 and projected["minutes"]["export"] == 1.0  # the test split grows
    assert projected["minutes"]["register"] == 0.1  # bookkeeping: as measured
    assert list(projected["minutes"]) == list(bench_gpu_stages.STEPS)  # in pipeline order
    del steps["evaluate"], steps["export"], steps["register"]  # a report from before they were timed
    assert list(bench_gpu_stages.projection({"patients": 123, "steps": steps})["minutes"]) == \
        list(bench_gpu_stages.STEPS[:6])


def test_a_gpu_stages_variant_sets_only_keys_params_has_and_its_row_names_them(tmp_path):
    """bench.bench_gpu_stages --set: a dotted key of params.yaml (a typo is refused, not added), and a variant's
    projection is its own README row, naming what it changed; --training-only refuses keys the data depends on."""
    from bench import bench_gpu_stages
    from bench.__main__ import gpu_rows
    from tasks.params_edit import parse_assignments

    params = bench_gpu_stages.project_params(8, {"seg": 1, "cls": 1, "joint": 1}, "cpu", 2,
                                             overrides=parse_assignments(["train.batch_size=32",
                                                                          "train.compile=true"]))
    assert params["train"]["batch_size"] == 32 and params["train"]["compile"] is True
    with pytest.raises(SystemExit, match="batch_szie"):
        bench_gpu_stages.project_params(8, {"seg": 1, "cls": 1, "joint": 1}, "cpu", 2,
                                        overrides={"train.batch_szie": 32})
    (tmp_path / "data" / "splits").mkdir(parents=True)
    (tmp_path / "bench_gpu_stages.json").write_text(json.dumps({"steps": {s: {"seconds": 1.0} for s in
                                                                           bench_gpu_stages.STEPS[:3]}}))
    with pytest.raises(SystemExit, match="image_size"):
        bench_gpu_stages.run(workdir=tmp_path, device="cpu", training_only=True,
                             overrides={"profiles.production.image_size": 64})
    stage = {"measured": True, "device": "NVIDIA H200", "cpu_cores": 16, "patients": 96, "production_patients": 369,
             "data": {"slices": 12253}, "steps": {s: {"gpu_utilisation_pct": 50.0} for s in bench_gpu_stages.STAGES},
             "projection": {"scale": 3.84, "minutes": {"train_seg": 10.0}, "total_minutes": 28.4}}
    rows = gpu_rows({"gpu_stages": stage, "gpu_stages_batch_32_compiled":
                     {**stage, "overrides": bench_gpu_stages.VARIANTS["batch_32_compiled"]}})
    assert [row[0] for row in rows] == ["production profile on 369 patients, projected (NVIDIA H200)",
                                        "production profile on 369 patients, projected (NVIDIA H200; "
                                        "train.batch_size=32, train.compile=True)"]
    assert "failed" not in rows[0][2]
    failed = gpu_rows({"gpu_stages": {**stage, "failed": {"step": "evaluate", "stderr": "No module named 'monai'"}}})
    assert "evaluate failed there" in failed[0][2]  # a projection without the steps it could not run says so


def test_a_gpu_stages_run_stopped_midway_keeps_what_it_measured(tmp_path, monkeypatch):
    """bench.bench_gpu_stages writes its report after every step, so a run its time limit stops (the device call's
    limit, or gpu_session.sh's) leaves the finished steps, their epochs included, for the projection and for a
    --training-only variant on the same data."""
    import subprocess
    from pathlib import Path

    from bench import bench_gpu_stages
    from tasks import paths

    ran = []

    def fake_step(command, cwd, **_):
        step = command[-1]
        if step == "train_cls":
            raise KeyboardInterrupt  # what the time limit's signal does to the benchmark between two steps
        ran.append(step)
        if step in bench_gpu_stages.STAGES:
            history = Path(cwd) / "reports" / "training" / f"{bench_gpu_stages.STAGES[step]}.csv"
            history.parent.mkdir(parents=True, exist_ok=True)
            history.write_text("epoch\n1\n2\n")
            paths.timings_beside(history).write_text("epoch,seconds\n1,5.5\n2,4.0\n")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(bench_gpu_stages.subprocess, "run", fake_step)
    with pytest.raises(KeyboardInterrupt):
        bench_gpu_stages.run(patients=4, workdir=tmp_path, device="cpu", smoke=True)
    kept = json.loads((tmp_path / "bench_gpu_stages.json").read_text())
    assert ran == ["fetch", "slice", "split", "train_seg"]
    assert list(kept["steps"]) == ran and kept["steps"]["train_seg"]["epoch_seconds"] == [5.5, 4.0]


def test_the_seed_table_names_the_cpu_with_its_article():
    from bench.__main__ import seeds_markdown

    row = {"accuracy": 0.9, "sensitivity": 0.9, "slice_dice": 0.8, "volume_dice": 0.9, "hd95_mm": 20.0,
           "tc_dice": 0.8, "et_dice": 0.7}
    summary = {name: {"min": value, "median": value, "max": value} for name, value in row.items()}
    base = {"seeds": [42], "per_seed": {"42": row}, "pipeline_seconds": {"42": 400.0},
            "summary": summary | {"every_seed_meets_targets": True},
            "targets": {"accuracy": 0.9, "slice_dice": 0.8, "volume_dice": 0.85}}
    amd = seeds_markdown(base | {"cpu": {"model": "AMD EPYC", "bf16_autocast": True, "amx": False}})
    intel = seeds_markdown(base | {"cpu": {"model": "Intel(R) Xeon(R) Processor", "bf16_autocast": True, "amx": True}})
    assert "on an AMD EPYC (2 cores)" in amd
    assert "on a Intel" not in intel and "on an Intel(R) Xeon(R) Processor (2 cores)" in intel
    zen5 = seeds_markdown(base | {"cpu": {"model": "AMD EPYC", "bf16_autocast": True, "amx": False,
                                          "family_model": "26/2"}})
    assert "on an AMD EPYC (2 cores, family/model 26/2)" in zen5


def test_the_cpu_is_recorded_with_its_family_and_model_numbers(tmp_path):
    """A hypervisor may name two EPYC generations just "AMD EPYC", and their kernels train a seed to other weights
    (2026-12-08): a sweep records /proc/cpuinfo's numbers too."""
    from bench.bench_seeds import cpu_family_model

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
                       "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\n")
    assert cpu_family_model(cpuinfo) == "26/2"
    assert cpu_family_model(tmp_path / "missing") is None  # no /proc/cpuinfo (another OS): not recorded


def test_threshold_rule_candidates_pick_what_they_promise():
    import numpy as np

    from bench.bench_threshold_rule import RULES

    # Youden's J is 0.9 at two cuts, 0.70 (no false positive, two tumours missed) and 0.52 (every tumour, two false
    # positives): the first maximum is the higher cut
    negatives = np.concatenate([np.linspace(0.05, 0.45, 18), [0.60, 0.62]])
    positives = np.concatenate([[0.52, 0.56], np.linspace(0.70, 0.95, 18)])
    labels, scores = np.array([0] * 20 + [1] * 20), np.concatenate([negatives, positives])
    assert RULES["youden"](labels, scores) == 0.70
    assert RULES["accuracy"](labels, scores) == 0.70  # balanced classes: accuracy and J agree
    assert RULES["fixed"](labels, scores) == 0.5
    # within one standard error of the best J (0.067 here) are 0.70, 0.62, 0.56 and 0.52: the one nearest 0.5 wins
    assert RULES["youden_1se"](labels, scores) == 0.52
    # with no stray scores every rule but the fixed one cuts between the classes
    clean = np.concatenate([np.linspace(0.05, 0.45, 20), np.linspace(0.70, 0.95, 20)])
    assert RULES["youden"](labels, clean) == RULES["youden_1se"](labels, clean) == 0.70
    assert abs(RULES["midpoint"](labels, scores) - (0.70 + 0.5) / 2) < 1e-12
    # bagging over patients: every resample of cleanly separated patients cuts at the lowest tumour score it holds
    patients = np.repeat(np.arange(8), 5)  # 8 patients of 5 slices, 4 without tumour and 4 with
    bagged = RULES["bootstrap_median"](labels, clean, patients)
    assert bagged in set(clean[20:]) and 0.70 <= bagged <= 0.75
    # a tumour patient scored low pulls the cut of every resample that holds him (1 - (7/8)^8, about 2 in 3): the median
    weak = clean.copy()
    weak[35:40] = 0.5
    assert RULES["bootstrap_median"](labels, weak, patients) == 0.5


def test_mask_rule_study_pools_patients_and_keeps_the_default_cut_when_the_curve_is_flat():
    import numpy as np

    from bench.bench_mask_rule import one_error_nearest_default, pooled_table
    from tasks.evaluation.scoring import MaskThresholdTally

    def patient(slice_dice: list[float], volume_dice: float) -> MaskThresholdTally:
        tally = MaskThresholdTally(candidates=(0.3, 0.5, 0.7))
        for cut, bump in zip(tally.candidates, (0.0, 0.01, 0.02)):  # a curve rising gently towards 0.7
            tally.slice_dice[cut] = [d + bump for d in slice_dice]
            tally.volume_dice[cut] = [volume_dice + bump]
        return tally

    one, two = patient([0.8, 0.6], 0.9), patient([0.9], 0.6)
    table = pooled_table([one, two])
    assert np.allclose(table["slice_dice"], [0.7667, 0.7767, 0.7867], atol=1e-4)  # pooled over all 3 slices
    assert np.allclose(table["volume_dice"], [0.75, 0.76, 0.77])  # over the 2 patients
    per_patient = [pooled_table([one]), pooled_table([two])]
    # the patients disagree by far more than the curve rises: 0.5, the untuned cut, is within one error of the best
    assert one_error_nearest_default(table, per_patient) == 0.5
    # patients that agree: the error is ~0 and the best cut stands
    assert one_error_nearest_default(table, [pooled_table([one]), pooled_table([one])]) == 0.7


def git_experiment(project, name: str, ci95: dict, date: str) -> None:
    """Commit a metrics.json with `ci95` and point a DVC-experiment-like ref `refs/exps/../<name>` at it."""
    import subprocess

    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date, "PATH": "/usr/bin:/bin"}
    (project / "reports").mkdir(exist_ok=True)
    (project / "reports" / "metrics.json").write_text(json.dumps({"classification": {"accuracy": 0.9}, "ci95": ci95}))
    for args in (["add", "reports/metrics.json"], ["commit", "-q", "-m", name],
                 ["update-ref", f"refs/exps/ab/{date[:10].replace('-', '')}/{name}", "HEAD"]):
        subprocess.run(["git", *args], cwd=project, env=env, check=True)


def test_each_seeds_intervals_come_from_its_newest_experiment_commit(tmp_path):
    import subprocess

    from bench.bench_seeds import committed_reports, experiment_intervals, interval_verdict

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    wide = {"classification.accuracy": [0.85, 0.93], "segmentation.dice": [0.79, 0.86],
            "segmentation_volume.dice": [0.88, 0.95]}
    git_experiment(tmp_path, "seed-3", wide | {"segmentation.dice": [0.5, 0.6]}, "2026-12-01T10:00:00+00:00")
    git_experiment(tmp_path, "seed-3", wide, "2026-12-02T10:00:00+00:00")  # the sweep run again: this one counts
    git_experiment(tmp_path, "seed-4", {"classification.accuracy": [0.80, 0.89]}, "2026-12-02T11:00:00+00:00")
    intervals = experiment_intervals(committed_reports(tmp_path, (3, 4, 7)))
    assert intervals["3"] == {"accuracy": [0.85, 0.93], "slice_dice": [0.79, 0.86], "volume_dice": [0.88, 0.95]}
    assert intervals["4"] == {"accuracy": [0.80, 0.89]} and "7" not in intervals  # seed 7 never ran
    # seed 3 misses nothing beyond its interval; seed 4's accuracy interval ends below 0.90: a real miss
    assert interval_verdict({"3": {"ci95": intervals["3"]}}) is True
    assert interval_verdict({seed: {"ci95": ci} for seed, ci in intervals.items()}) is False
    assert interval_verdict({"3": {"accuracy": 0.9}}) is None  # a sweep from before intervals were read


def test_a_seeds_validation_figures_are_those_at_the_mask_cut_evaluate_chose():
    from bench.bench_seeds import validation_at_cut

    table = [{"threshold": 0.5, "slice_dice": 0.81, "volume_dice": 0.90},
             {"threshold": 0.75, "slice_dice": 0.86, "volume_dice": 0.93}]
    chosen = {"segmentation_threshold": {"value": 0.75, "rule": "validation", "validation": table}}
    assert validation_at_cut(chosen) == {"val_slice_dice": 0.86, "val_volume_dice": 0.93}
    # a fixed cut has no validation table: no figure rather than a made-up one
    assert validation_at_cut({"segmentation_threshold": {"value": 0.5, "rule": "fixed"}}) == {}
    assert validation_at_cut({}) == {}


def test_the_seed_table_shows_each_seeds_interval_and_says_whether_a_miss_is_beyond_it():
    from bench.__main__ import seeds_markdown

    row = {"accuracy": 0.872, "sensitivity": 0.9, "slice_dice": 0.85, "volume_dice": 0.9, "hd95_mm": 20.0,
           "ci95": {"accuracy": [0.811, 0.915], "slice_dice": [0.83, 0.87]}}
    summary = {name: {"min": row[name], "median": row[name], "max": row[name]}
               for name in ("accuracy", "sensitivity", "slice_dice", "volume_dice", "hd95_mm")}
    table = seeds_markdown({"cpu": {"model": "AMD EPYC", "bf16_autocast": True}, "seeds": [3],
                            "per_seed": {"3": row}, "pipeline_seconds": {"3": 500.0},
                            "summary": summary | {"every_seed_meets_targets": False,
                                                  "no_seed_interval_below_targets": True},
                            "targets": {"accuracy": 0.9, "slice_dice": 0.8, "volume_dice": 0.85}})
    assert "| 3 | 0.872 [0.811, 0.915] | 0.900 | 0.850 [0.830, 0.870] | 0.900 | 20.0 |" in table
    assert "**not met**" in table and "No seed's interval lies wholly below a target." in table


def test_the_slice_score_study_fuses_the_kth_largest_pixel_as_evaluation_fuses_the_largest():
    import numpy as np
    import torch

    from bench.bench_slice_score import RecordingPredictor, slice_scores
    from models.unet import MultitaskUNet, UNetConfig
    from tasks.inference.predictor import TorchPredictor

    torch.manual_seed(0)
    inner = TorchPredictor(MultitaskUNet(UNetConfig(in_channels=2, base_channels=4, depth=2)), slice_score="fused")
    images = np.random.default_rng(0).normal(size=(5, 2, 16, 16)).astype(np.float32)
    recorder = RecordingPredictor(inner, ((),), largest=3)
    shipped = recorder.predict(images)
    scores = slice_scores(recorder.classifier[0], recorder.top_pixels[0], (1, 3))
    # k = 1 is `fused` itself, to the bit: the study's thresholds are evaluate's
    assert np.array_equal(scores["fused"], shipped.tumour_probability)
    third = np.sort(shipped.mask_probability.reshape(5, -1), axis=1)[:, -3]
    assert np.array_equal(scores["fused_pixel_3"], ((shipped.classifier_probability + third) / 2).astype(np.float32))
    assert np.array_equal(scores["classifier"], shipped.classifier_probability)
    # with the left-right flip, each slice's answer is the mean of it and its mirror image's, flipped back
    flipped = RecordingPredictor(inner, ((), (3,)), largest=1).predict(images)
    mirror = inner.predict(images[..., ::-1].copy())
    assert np.allclose(flipped.classifier_probability,
                       (shipped.classifier_probability + mirror.classifier_probability) / 2, atol=1e-6)


def test_the_peer_ratio_uses_the_median_peer_run_and_reports_their_range():
    from bench.bench_peer import peer_ratios, summarise_peer_runs

    runs = [{"seed": s, "steps": 180, "epochs": e, "seconds": 300.0, "parameters": 1000, "test_slice_dice": d}
            for s, e, d in ((42, 1.4, 0.80), (1, 1.5, 0.76), (2, 1.6, 0.84))]
    summary = summarise_peer_runs(runs)
    assert summary["test_slice_dice"] == 0.80 and summary["epochs"] == 1.5 and summary["runs"] == runs
    ratios = peer_ratios(0.84, [r["test_slice_dice"] for r in runs])
    assert ratios == {"dice_ratio_quick_over_peer": 1.05, "dice_ratio_range": [1.0, 1.1053]}
    assert peer_ratios(0.84, [0.0])["dice_ratio_quick_over_peer"] == float("inf")  # a peer that learnt nothing
    # several quick models (other training seeds on the same data): median against median, worst-best range
    assert peer_ratios([0.82, 0.88, 0.84], [r["test_slice_dice"] for r in runs]) == {
        "dice_ratio_quick_over_peer": 1.05, "dice_ratio_range": [0.9762, 1.1579]}

    report: dict = {}
    record_by_cpu(report, "peer", peer("AMD EPYC 9R14", 1.05) | {"peer": summary, **ratios})
    (row,) = quality_rows(report)
    assert row[1] == "1.050×" and "median of 3 peer runs, ratio 1.00–1.11 over them" in row[2]  # 0.84 / 0.76 = 1.1053
    record_by_cpu(report, "peer", peer("AMD EPYC 9R14", 1.0462) | {"peer": summary,
                                                                   "dice_ratio_range": ratios["dice_ratio_range"]})
    (row,) = quality_rows(report)
    assert row[1] == "1.046×"  # just under the 1.05 target: shown as "1.05×" it read as met
    several = peer("AMD EPYC 9R14", 1.05) | {"peer": summary, "dice_ratio_range": [0.9762, 1.1579]}
    several["quick"] = {"test_slice_dice": 0.84, "runs": [{"test_slice_dice": d} for d in (0.82, 0.88, 0.84)]}
    record_by_cpu(report, "peer", several)
    (row,) = quality_rows(report)
    assert "median of 3 peer runs and of 3 quick models, ratio 0.98–1.16 over them" in row[2]
    record_by_cpu(report, "peer", several | {"caveat": "0.94 on another data set"})
    (row,) = quality_rows(report)
    assert row[2].endswith("over them; 0.94 on another data set)")


def test_the_peer_runs_three_times_by_default_whatever_the_projects_seed():
    """The project's seed first, then the first others of 1, 2, 3, ...: a project of seed 1 or 2 once got two runs
    (its own seed and the other), and the "median" of two was their mean."""
    from bench.bench_peer import default_peer_seeds

    assert default_peer_seeds(42) == [42, 1, 2] and default_peer_seeds(4) == [4, 1, 2]  # as the recorded runs had
    assert default_peer_seeds(1) == [1, 2, 3] and default_peer_seeds(2) == [2, 1, 3]
    assert default_peer_seeds(3) == [3, 1, 2]
    assert default_peer_seeds(7, runs=1) == [7]


def test_a_peer_budget_from_a_training_on_a_busy_machine_is_flagged(tmp_path):
    """The peer gets the training's wall seconds; when other work shared the machine, the training kept fewer CPU
    seconds busy per wall second than the peer does alone, and the report and its README row say the budget is too
    long. Histories from before the CPU column give no verdict rather than a wrong one."""
    from bench.bench_peer import budget_check, training_seconds

    for stage, cpu in (("seg", [60.0, 62.0]), ("cls", [20.0, 20.0]), ("joint", [50.0, 48.0])):
        timings = pd.DataFrame({"epoch": [1, 2], "seconds": [40.0, 40.0], "cpu_seconds": cpu})
        timings.to_csv(tmp_path / f"{stage}_timings.csv")
    wall, cpu = training_seconds(tmp_path)
    assert (wall, cpu) == (240.0, 260.0)
    for stage in ("seg", "cls", "joint"):  # histories from before the timings file held the columns themselves
        (tmp_path / f"{stage}_timings.csv").rename(tmp_path / f"{stage}.csv")
    assert training_seconds(tmp_path) == (240.0, 260.0)
    busy = budget_check(wall, cpu, peer_wall=300.0, peer_cpu=570.0)  # 1.08 against the peer's 1.9
    assert busy == {"training_cpu_per_wall": 1.08, "peer_cpu_per_wall": 1.9, "busy_during_training": True}
    assert budget_check(wall, 1.8 * wall, 300.0, 570.0)["busy_during_training"] is False
    assert budget_check(wall, None, 300.0, 570.0)["busy_during_training"] is None

    report: dict = {}
    record_by_cpu(report, "peer", peer("AMD EPYC 9R14", 1.05) | {"budget_check": busy})
    (row,) = quality_rows(report)
    assert "the machine was busy while the quick model trained" in row[2]


def test_a_peer_budget_measured_on_another_machine_is_refused(tmp_path):
    """The peer's budget is the training's wall seconds in reports/training, which git or `dvc pull` may have brought
    from another CPU (an AMX Xeon trains the quick model in 172 s, this Xeon without bf16 in 368 s): such a budget is
    refused by name, not measured against. Timings from before they named a machine give no verdict."""
    from bench.bench_peer import foreign_budget, training_machines

    here = "cpu Intel(R) Xeon(R) Processor @ 2.80GHz, 2 threads"
    for stage in ("seg", "cls", "joint"):
        pd.DataFrame({"epoch": [1], "seconds": [40.0], "cpu_seconds": [70.0]}).to_csv(tmp_path / f"{stage}_timings.csv")
    assert training_machines(tmp_path) == set() and foreign_budget(set(), here) is None
    machines = {"seg": here, "cls": here, "joint": "cpu AMD EPYC 9R14 96-Core Processor, 2 threads"}
    for stage, machine in machines.items():
        pd.DataFrame({"epoch": [1], "seconds": [40.0], "cpu_seconds": [70.0], "machine": [machine]}).to_csv(
            tmp_path / f"{stage}_timings.csv")
    assert training_machines(tmp_path) == set(machines.values())
    why = foreign_budget(training_machines(tmp_path), here)
    assert "AMD EPYC 9R14" in why and "--seconds" in why and "Intel" not in why.split("not on this machine")[0]
    assert foreign_budget({here.replace("2 threads", "16 threads")}, here) is None  # threads alone: same machine


def test_data_recipes_are_compared_on_validation_patients_the_base_project_never_held():
    from bench.bench_unseen_patients import unseen_validation_patients

    base = {"train": ["BraTS20_Training_001", "BraTS20_Training_002", "no_01"],
            "val": ["BraTS20_Training_003", "yes_07"], "test": ["BraTS20_Training_004"]}
    other = {"train": ["BraTS20_Training_001", "BraTS20_Training_005", "no_01"],
             "val": ["BraTS20_Training_003", "BraTS20_Training_004", "BraTS20_Training_006", "yes_07"],
             "test": ["BraTS20_Training_002"]}
    # 003 (base's validation) and 004 (base's test) were seen by the base project; 006 was not; the photo stays
    photos = {"no_01", "yes_07"}  # the manifest's Kaggle images
    assert unseen_validation_patients(base, other, photos) == (["BraTS20_Training_006"], ["yes_07"])
    other["train"].append("yes_07")
    with pytest.raises(SystemExit, match="yes_07"):
        unseen_validation_patients(base, other, photos)


def test_every_cpu_familys_latest_sweep_stands_side_by_side_with_its_misses_in_bold():
    from bench.__main__ import sweeps_side_by_side

    targets = {"accuracy": 0.9, "slice_dice": 0.8, "volume_dice": 0.85}

    def sweep(date: str, commit: str, slice_dice: float) -> dict:
        row = {"accuracy": 0.93, "slice_dice": slice_dice, "volume_dice": 0.9}
        return {"date": date, "commit": commit, "targets": targets, "per_seed": {"42": row, "4": dict(row)}}

    by_cpu = {"Intel Xeon with AMX": {"seeds": sweep("2026-12-04", "c30071e", 0.86)},
              "AMD EPYC": {"seeds": sweep("2026-12-05", "abc1234", 0.77), "peer": {}},
              "Intel Xeon": {"peer": {}}}  # a family with a peer run only has no sweep to show
    table = sweeps_side_by_side(by_cpu)
    header = "| seed | AMD EPYC (2026-12-05, commit abc1234) | Intel Xeon with AMX (2026-12-04, commit c30071e) |"
    assert header in table  # newest first, each with the date and commit it measured
    assert "| 42 | 0.930 / **0.770** / 0.900 | 0.930 / 0.860 / 0.900 |" in table
    assert "| pairs met | 4 of 6 | 6 of 6 |" in table
    assert sweeps_side_by_side({"AMD EPYC": {"seeds": sweep("2026-12-05", "abc1234", 0.77)}}) == ""  # one: no table


def test_a_failed_seed_does_not_stop_the_sweep_and_is_reported_with_its_reason(tmp_path):
    import os

    from bench.bench_seeds import run_experiments

    fake_dvc = tmp_path / "dvc"  # fails the way export did on a seed: the step's error line, then DVC's summary
    fake_dvc.write_text("#!/bin/sh\n"
                        "case \"$*\" in *'seed=4 '*) echo 'error: checkpoints/joint/best.pt: ONNX parity failed' >&2;"
                        " echo \"ERROR: failed to reproduce 'export'\" >&2; exit 1;; esac\n"
                        "echo \"$*\" >> ran.txt\n")
    os.chmod(fake_dvc, 0o755)
    seconds, failed = run_experiments(tmp_path, (42, 4, 1), ("train_seg.bias_field=0.3",), dvc=fake_dvc)
    assert set(seconds) == {42, 1} and failed == {4: "error: checkpoints/joint/best.pt: ONNX parity failed"}
    ran = (tmp_path / "ran.txt").read_text().splitlines()  # the seed after the failed one still ran
    assert ran == [f"exp run -S seed={s} -S train_seg.bias_field=0.3 -n seed-{s}" for s in (42, 1)]


def test_a_failed_seed_counts_as_three_missed_targets_in_the_tables():
    from bench.__main__ import quality_rows, seeds_markdown, sweeps_side_by_side

    targets = {"accuracy": 0.9, "slice_dice": 0.8, "volume_dice": 0.85}
    row = {"accuracy": 0.93, "sensitivity": 0.9, "slice_dice": 0.86, "volume_dice": 0.9, "hd95_mm": 20.0}
    summary = {name: {"min": row[name], "median": row[name], "max": row[name]} for name in row}
    sweep = {"cpu": {"model": "AMD EPYC", "bf16_autocast": True}, "date": "2026-12-06", "commit": "abc1234",
             "targets": targets, "seeds": [42, 4], "per_seed": {"42": row}, "pipeline_seconds": {"42": 300.0},
             "failed_seeds": {"4": "error: ONNX parity failed"},
             "summary": summary | {"every_seed_meets_targets": False}}
    table = seeds_markdown(sweep)
    assert "**not met**" in table and "Seed 4's pipeline failed, so it has no model: `error: ONNX parity failed`" in table
    side = sweeps_side_by_side({"AMD EPYC": {"seeds": sweep}, "Intel Xeon with AMX": {"seeds": sweep | {
        "failed_seeds": {}, "date": "2026-12-05"}}})
    assert "| 4 | **pipeline failed** | – |" in side and "| pairs met | 3 of 6 | 3 of 3 |" in side
    # the benchmark table's rows say the figures are of the seeds that finished, and which one did not
    rows = [row for row in quality_rows({"by_cpu": {"AMD EPYC": {"seeds": sweep}}}) if row[0].startswith("quick, ")]
    assert rows and all(row[0].startswith("quick, 1 of 2 seeds, AMD EPYC") for row in rows)
    assert all("seed 4's pipeline failed" in row[2] for row in rows)
    # review 2026-12-07: a sweep in which no seed's pipeline finished took its CPU family's rows away without a word
    nothing_ran = sweep | {"per_seed": {}, "summary": {"every_seed_meets_targets": False},
                           "failed_seeds": {"4": "error: ONNX parity failed", "42": "error: disk full"}}
    rows = [row for row in quality_rows({"by_cpu": {"AMD EPYC": {"seeds": nothing_ran}}})
            if row[0].startswith("quick, ")]
    assert rows == [("quick, 0 of 2 seeds, AMD EPYC", "every pipeline failed", "AMD EPYC, bf16 autocast on; seed 4: "
                     "error: ONNX parity failed; seed 42: error: disk full")]


def test_a_partial_rerun_records_the_cpu_and_date_of_what_it_measured_and_only_of_that(monkeypatch, tmp_path):
    """Review 2026-12-07: `--only gpu` without CUDA dated the GPU figures it kept today; a rerun API row named no
    CPU (under the header of another run, which read "x86_64": platform.processor() is empty on Linux)."""
    import bench.__main__ as bench_main
    import bench.bench_api as bench_api
    import bench.bench_gpu as bench_gpu
    from bench.bench_seeds import cpu_description

    report_file = tmp_path / "bench.json"
    kept = {"measured": True, "images_per_s": 1200, "date": "2026-12-04"}
    report_file.write_text(json.dumps({"gpu": kept, "rerun_dates": {"gpu": "2026-12-04"}}))
    monkeypatch.setattr(bench_main, "REPORT", report_file)
    monkeypatch.setattr(bench_gpu, "run", lambda: {"measured": False, "reason": "no CUDA device"})
    monkeypatch.setattr(bench_api, "run", lambda: {"p50_ratio_api_over_bare": 1.1})
    report = bench_main.run_some(["gpu", "api"])
    assert report["gpu"] == kept and report["rerun_dates"]["gpu"] == "2026-12-04"
    model = cpu_description()["model"]
    assert report["api"]["cpu"] == model and report["rerun_dates"]["api"] == report["api"]["date"]
    assert report["machine"]["processor"] == model != "x86_64"


def test_the_sweeps_and_the_epoch_timings_name_a_cpu_alike():
    """bench_peer compares the machine an epoch's timings name with this one: the sweeps' CPU record and the timings'
    machine are read by one function, so the same CPU is never two names."""
    import torch

    from bench.bench_seeds import cpu_description
    from tasks.training.device import machine_description

    cpu = cpu_description()
    assert machine_description(torch.device("cpu")) == f"cpu {cpu['model']}, {torch.get_num_threads()} threads"
    assert cpu["model"] and cpu["model"] != "x86_64" or not Path("/proc/cpuinfo").exists()


def test_a_seed_sweep_names_the_commit_it_measured():
    import re

    from bench.bench_seeds import source_commit

    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", source_commit())  # the sweep's README column names it


def test_the_loader_row_for_train_seg_windows_sizes_them_as_the_stage_does_and_compares_side_by_side():
    from bench.__main__ import loader_rows
    from bench.bench_loader import SIZE, warm_up_window
    from tasks.config import load_settings

    share = load_settings(REPORT.parents[1] / "params.yaml").train_seg.crop
    side = warm_up_window()
    # the production model's multiple of 8 (depth 4), rounded down from params.yaml's share of the 256² slices
    assert side is None if share >= 1 else side == int(SIZE * share) // 8 * 8

    run = {"slices_per_s": 200.0, "slices_per_cpu_second": 200.0, "main_cpu_ms_per_batch": 150.0,
           "main_peak_rss_mib": 700, "rss_before_loading_mib": 600}
    runs = {f"stored_{w}_workers": run for w in (0, 1, 2)} | {
        "compressed_cache_fits": run, "compressed_cache_quarter": run,
        **{f"stored_{w}_workers_crop": run | {"slices_per_s": 100.0 * (w + 4), "slices_per_cpu_second": 400.0 - 60 * w}
           for w in (0, 1, 2)}}
    loader = {"runs": runs, "set": {"slices": 560, "disk": {"stored": {"mib": 315}, "compressed": {"mib": 88}}},
              "per_core_slices_per_s": 200.0, "workers_slices_per_cpu_second": 180.0,
              "projected_16_cores_slices_per_s": 2880, "goal_slices_per_s": 2000, "a100_images_per_s": [1000, 1350],
              "scaling": {"1_workers_over_0": 1.0, "2_workers_over_0": 1.0}, "cpu_cores_here": 2,
              "load_average_1min": 0.5, "crop_side": 192, "crop_per_core_slices_per_s": 400.0,
              "crop_scaling": {"1_workers_over_0": 1.25, "2_workers_over_0": 1.5}}
    crop_rows = [row for row in loader_rows(loader) if "windows" in row[0]]
    assert [row[1] for row in crop_rows] == ["2.00×"]
    assert "192²" in crop_rows[0][0]
    assert "0 workers 400/s, 1 workers 500/s (1.25×), 2 workers 600/s" in crop_rows[0][2]
    # projected over 16 cores from the rate with workers (280 per CPU-second), as the whole slices' row is: the
    # bare one-process rate (400) overstated it
    assert "× 16 cores (2 workers' rate per CPU-second): 4,480/s" in crop_rows[0][2]
    # a run from before the windows (or with train_seg.crop: 1) has no such row
    whole = {k: v for k, v in loader.items() if not k.startswith("crop")}
    assert not [row for row in loader_rows(whole) if "windows" in row[0]]


@pytest.mark.parametrize(("argv", "words"), [
    (["--only", "loader", "--skip", "api"], "--skip applies to a full run"),
    (["--only", "loader", "--keep-seeds", "kept"], "this run does not sweep the seeds"),
    (["--skip", "seeds", "--keep-seeds", "kept"], "this run does not sweep the seeds"),
])
def test_options_a_bench_run_would_ignore_are_refused(argv, words):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPORT.parents[1], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and words in done.stderr, done.stderr


def test_the_pipeline_row_names_the_cpu_its_seconds_were_measured_on():
    from bench.__main__ import rows

    report = json.loads(REPORT.read_text())
    report["pipeline"]["cpu"] = {"model": "AMD EPYC 9R14 96-Core Processor", "amx": False}
    (row,) = [detail for label, _, detail in rows(report) if label == "quick pipeline, from scratch"]
    assert "AMD EPYC" in row
    report["pipeline"]["cpu"] = {"model": "Intel(R) Xeon(R) Processor", "amx": True}
    report.pop("pipeline_date", None)
    (row,) = [detail for label, _, detail in rows(report) if label == "quick pipeline, from scratch"]
    assert row.endswith("(Intel Xeon with AMX)")
    del report["pipeline"]["cpu"]  # recorded before the rows named their CPU: no CPU, no error
    (row,) = [detail for label, _, detail in rows(report) if label == "quick pipeline, from scratch"]
    assert "Xeon" not in row and "EPYC" not in row


def test_the_peer_learns_the_whole_tumour_not_the_label_codes(monkeypatch):
    """The shards hold BraTS label codes (0, 1, 2, 4). Given as sigmoid targets, 2 and 4 made a loss without a floor
    (about -100 for a 2 and -300 for a 4 at a logit of 100), which held the peer back and inflated every ratio measured before 2026-12-05."""
    import monai.losses
    import torch

    from bench.bench_peer import train_peer

    targets = []

    class Recording(monai.losses.DiceCELoss):
        def forward(self, prediction, target):
            targets.append(target.detach().clone())
            return super().forward(prediction, target)

    monkeypatch.setattr(monai.losses, "DiceCELoss", Recording)
    images = torch.randn(4, 1, 32, 32)
    masks = torch.zeros(4, 32, 32, dtype=torch.uint8)
    masks[:, 4:8, 4:8], masks[:, 8:10, 8:10], masks[:, 2, 2] = 4, 2, 1
    _, run = train_peer(images, masks, seconds=0.3, seed=0)  # the budget is checked after each step
    assert run["steps"] >= 1 and len(targets) == run["steps"]
    for target in targets:  # each step's batch is the whole set (4 < 16): every tumour pixel, once, as a 1
        assert set(target.unique().tolist()) == {0.0, 1.0} and int(target.sum()) == int((masks > 0).sum())


def test_the_loaders_timed_window_never_crosses_an_epoch_end(tmp_path):
    """Review 2026-12-07: the synthetic set's epochs were 17-35 batches, so a window of 320 batches (8 workers)
    crossed about nine epoch ends, each draining the workers' prefetch, which the 0-worker side never paid."""
    from bench.bench_loader import BATCH, measure, write_sets

    sets = write_sets(tmp_path, patients=2, slices=20, kinds=("stored",))  # 40 slices: one batch an epoch
    result = measure(sets["stored"], workers=0, cache_mb=0, batches=3, warmup=1)
    assert result["epoch_ends"] == 0 and result["slices"] == 3 * BATCH


def test_the_layout_comparison_runs_each_layout_first_and_last_alike():
    """Review 2026-12-07: NHWC always ran first, paying the cold page cache and lazy imports alone, and the totals were
    set against a 120 s budget no target states."""
    import inspect

    import bench.bench_train as bench_train

    order = bench_train.layout_order(True, True)
    assert sorted(order) == [False, False, True, True] and order == order[::-1]
    assert bench_train.layout_order(False, False) == [False]
    assert bench_train.mean_total([{"total": 100.0}, {"total": 110.0}]) == 105.0
    assert "budget" not in inspect.getsource(bench_train).lower()
