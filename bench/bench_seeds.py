"""Quality across seeds: the quick pipeline for several seeds as DVC experiments, min / median / max of each metric.

Usage: .venv/bin/python -m bench.bench_seeds [--seeds 42 1 2 3 4] [--keep DIR]

One figure from one run is an anecdote: training is seeded but bimodal (a narrow network can stay in "predict
nothing"), and CPUs with and without native bf16 take different kernels. So quality is claimed from this sweep.
Each seed is one `dvc exp run -S seed=N` in a throw-away copy of the project (the seed drives the synthetic data,
the split, the initial weights and the batches), and the results are read back with `dvc exp show --json`, each
seed's 95 % intervals of the target figures from its experiment's commit (a miss inside its interval is within what
resampling the seed's 7 test patients moves; one whose interval lies wholly below the target is a real one).
Experiments run one after another in the copy's workspace: a queued experiment runs in a temporary clone that has
no `.venv`, and two at once would fight over 2 cores. A seed whose pipeline fails is reported with its step's error
(`failed_seeds`), the sweep goes on, and the command exits non-zero after printing the report. The CPU and whether
bf16 autocast ran are recorded with the figures, since both change the trained weights.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DVC = REPO / ".venv" / "bin" / "dvc"
DEFAULT_SEEDS = (42, 1, 2, 3, 4)
# (name in the report, metrics.json section, key; a dotted section is nested); targets from the quick profile's
# quality goals (whole tumour). TC and ET: the BraTS-style native-resolution volume figures, reported, not targeted.
FIGURES = (("accuracy", "classification", "accuracy"), ("sensitivity", "classification", "sensitivity"),
           ("slice_dice", "segmentation", "dice"), ("volume_dice", "segmentation_volume", "dice"),
           ("hd95_mm", "segmentation", "hd95"), ("tc_dice", "segmentation_regions.tc", "dice"),
           ("et_dice", "segmentation_regions.et", "dice"),
           # where the classifier errs: BraTS slices and Kaggle-style photos apart
           ("brats_accuracy", "classification_by_source.brats", "accuracy"),
           ("photo_accuracy", "classification_by_source.kaggle", "accuracy"),
           ("photo_sensitivity", "classification_by_source.kaggle", "sensitivity"),
           # the pixel cut the masks were scored at (evaluate.mask_threshold: fixed, or chosen on validation)
           ("mask_threshold", "segmentation_threshold", "value"))
TARGETS = {"accuracy": 0.90, "slice_dice": 0.80, "volume_dice": 0.85}
# Each target figure's key in metrics.json's `ci95` (the patients-resampled bootstrap interval evaluate writes). A
# seed's test split holds 7 patients: its interval says whether a miss is beyond what resampling them moves.
INTERVAL_KEYS = {"accuracy": "classification.accuracy", "slice_dice": "segmentation.dice",
                 "volume_dice": "segmentation_volume.dice"}


def cpu_description() -> dict:
    """Model name and the bf16-relevant features of this CPU (they decide which kernels training takes)."""
    from tasks.training.device import cpu_model_and_flags, native_cpu_bf16

    model, flags = cpu_model_and_flags()
    return {"model": model, "amx": "amx_tile" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "bf16_autocast": native_cpu_bf16(), "family_model": cpu_family_model()}


def cpu_family_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """"family/model" as /proc/cpuinfo numbers this CPU (None elsewhere). A hypervisor may pass on a bare "AMD EPYC"
    as the model name, which two EPYC generations shared whose kernels train the same seed to other weights (seed 4's
    volume Dice 0.905 on one, 0.849 on the other, from the same commit: docs/quality.md, 2026-12-08)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        key, _, value = line.partition(":")
        if key.strip() in ("cpu family", "model"):
            fields.setdefault(key.strip(), value.strip())
    return f"{fields['cpu family']}/{fields['model']}" if len(fields) == 2 else None


def cpu_family(model: str, amx: bool = False, native_bf16: bool = True) -> str:
    """The vendor and product line of a CPU model name ("AMD EPYC 9R14 96-Core Processor" → "AMD EPYC",
    "Intel(R) Xeon(R) Platinum 8488C" → "Intel Xeon"), "with AMX" when it has AMX tiles (bf16 matrix multiplies
    take other kernels there) and "without bf16" when it has neither AMX nor AVX512-BF16 (training runs in fp32):
    what the README's table keeps one sweep of each."""
    family = next((family for line, family in KNOWN_CPU_LINES.items() if line in model.lower()), None)
    if family is None:  # however the vendor capitalises it
        words = re.sub(r"\((R|TM)\)", "", model, flags=re.IGNORECASE).split()
        family = " ".join(words[:2]) if words else "unknown CPU"
    return f"{family} with AMX" if amx else family if native_bf16 else f"{family} without bf16"


def family_of(cpu: dict) -> str:
    """`cpu_family` of a recorded `cpu_description`; a record from before it named AVX512-BF16 was made on a CPU
    that had it (every sweep then ran bf16 autocast)."""
    return cpu_family(cpu.get("model", "this machine"), cpu.get("amx", False), cpu.get("avx512_bf16", True))


KNOWN_CPU_LINES = {"epyc": "AMD EPYC", "xeon": "Intel Xeon", "ryzen": "AMD Ryzen", "core(tm)": "Intel Core"}


def experiment_metrics(show: list[dict]) -> dict[str, dict]:
    """experiment name → reports/metrics.json, from `dvc exp show --json` (DVC 3's layout)."""
    found = {}
    for commit in show:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                metrics = (data.get("metrics") or {}).get("reports/metrics.json", {}).get("data")
                if rev.get("name") and metrics:
                    found[rev["name"]] = metrics
    return found


def figure(metrics: dict, section: str, key: str) -> float:
    from tasks.io import nested_value

    return nested_value(metrics, f"{section}.{key}")


def committed_reports(project: Path, seeds: tuple[int, ...]) -> dict[str, dict]:
    """seed → its `seed-N` experiment's reports/metrics.json, read from the experiment's commit: `dvc exp show`
    leaves out list values such as `ci95` and the mask cut's validation table. The newest experiment of that name
    when there are several; a seed without one is left out."""
    refs = subprocess.run(["git", "for-each-ref", "--sort=-committerdate", "--format=%(refname)", "refs/exps"],
                          cwd=project, capture_output=True, text=True, check=True).stdout.split()
    out = {}
    for seed in seeds:
        ref = next((r for r in refs if r.rsplit("/", 1)[-1] == f"seed-{seed}"), None)
        shown = ref and subprocess.run(["git", "show", f"{ref}:reports/metrics.json"], cwd=project,
                                       capture_output=True, text=True)
        if shown and shown.returncode == 0:
            out[str(seed)] = json.loads(shown.stdout)
    return out


def experiment_intervals(reports: dict[str, dict]) -> dict[str, dict[str, list[float]]]:
    """seed → {target figure: its 95 % interval} from `committed_reports`; a seed whose evaluate was too old to
    write intervals gets none."""
    out = {}
    for seed, metrics in reports.items():
        ci95 = metrics.get("ci95") or {}
        out[seed] = {name: ci95[key] for name, key in INTERVAL_KEYS.items() if ci95.get(key)}
    return out


def validation_at_cut(metrics: dict) -> dict[str, float]:
    """The validation patients' slice and re-stacked volume Dice at the mask cut evaluate chose on them (its
    `segmentation_threshold.validation` table): what a recipe is chosen on, the test figures being reported only.
    {} when the cut was fixed rather than chosen."""
    section = metrics.get("segmentation_threshold") or {}
    row = next((r for r in section.get("validation") or [] if math.isclose(r["threshold"], section["value"])), None)
    return {"val_slice_dice": row["slice_dice"], "val_volume_dice": row["volume_dice"]} if row else {}


def interval_verdict(per_seed: dict[str, dict]) -> bool | None:
    """True when no seed's 95 % interval of a target figure lies wholly below the target (its upper end reaches
    it); None when no seed has intervals."""
    bounds = [(name, interval) for row in per_seed.values() for name, interval in (row.get("ci95") or {}).items()]
    return all(interval[1] >= TARGETS[name] for name, interval in bounds) if bounds else None


def summarise(per_seed: dict[int, dict]) -> dict:
    """min / median / max of each figure over the seeds, and whether every seed met the targets."""
    summary = {}
    for name, section, key in FIGURES:
        values = [v for m in per_seed.values() if (v := figure(m, section, key)) is not None]
        if values:  # a figure an older evaluate did not write is left out
            summary[name] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    summary["every_seed_meets_targets"] = all(
        figure(m, section, key) >= TARGETS[name] for m in per_seed.values() for name, section, key in FIGURES
        if name in TARGETS)
    return summary


def run(seeds: tuple[int, ...] = DEFAULT_SEEDS, keep: Path | None = None, overrides: tuple[str, ...] = ()) -> dict:
    """`overrides`: params.yaml KEY=VALUE set in every experiment besides the seed (e.g. train.amp_bf16=false, to
    sweep fp32 on a CPU that would take bf16)."""
    sys.path.insert(0, str(REPO))
    from tests.project_copy import copy_project

    folder = keep or Path(tempfile.mkdtemp(prefix="bench-seeds-"))
    folder.mkdir(parents=True, exist_ok=True)
    project = copy_project(folder, tiny=False)  # tracking off: register only runs the gate
    commit = source_commit()  # what the copy holds: the checkout may move on during an hour-long sweep
    seconds, failed = run_experiments(project, seeds, overrides)
    show = subprocess.run([str(DVC), "exp", "show", "--json"], cwd=project, capture_output=True, text=True, check=True)
    by_name = experiment_metrics(json.loads(show.stdout))
    per_seed = {seed: by_name[f"seed-{seed}"] for seed in seeds if seed not in failed}
    reports = committed_reports(project, seeds)
    intervals = experiment_intervals(reports)
    if keep is None:
        subprocess.run(["rm", "-rf", str(folder)], check=False)
    cpu = cpu_description()
    if "train.amp_bf16=false" in overrides:
        cpu["bf16_autocast"] = False
    rows = {str(seed): {name: figure(m, section, key) for name, section, key in FIGURES}
            | ({"ci95": intervals[str(seed)]} if intervals.get(str(seed)) else {})
            | validation_at_cut(reports.get(str(seed), {}))
            # how the photos were judged: sweeps before 2026-12-05 judged them at the in-volume threshold
            | {"photos_at": figure(m, "classification_threshold", "photos_at") or "value"}
            for seed, m in per_seed.items()}
    return {
        "cpu": cpu,
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "overrides": list(overrides),
        "seeds": list(seeds),
        "pipeline_seconds": {str(seed): s for seed, s in seconds.items()},  # str keys, as JSON gives them back
        "per_seed": rows,
        # a seed whose pipeline failed has no model, so it meets no target; the others are reported all the same
        "failed_seeds": {str(seed): reason for seed, reason in failed.items()},
        "summary": summarise(per_seed) | {"no_seed_interval_below_targets": interval_verdict(rows)}
        | ({"every_seed_meets_targets": False} if failed else {}),
        "targets": TARGETS,
    }


def run_experiments(project: Path, seeds: tuple[int, ...], overrides: tuple[str, ...],
                    dvc: Path = DVC) -> tuple[dict[int, float], dict[int, str]]:
    """One `dvc exp run` per seed, one after another: (seed → seconds of those that finished, seed → why the others
    failed). A failed seed does not stop the sweep: the seeds before and after it still count."""
    seconds, failed = {}, {}
    for seed in seeds:
        started = time.perf_counter()
        sets = [arg for item in (f"seed={seed}", *overrides) for arg in ("-S", item)]
        done = subprocess.run([str(dvc), "exp", "run", *sets, "-n", f"seed-{seed}"], cwd=project,
                              capture_output=True, text=True)
        if done.returncode != 0:
            failed[seed] = failure_reason(done.stdout + "\n" + done.stderr)
            print(f"seed {seed}: failed: {failed[seed]}", file=sys.stderr, flush=True)
            continue
        seconds[seed] = round(time.perf_counter() - started, 1)
        print(f"seed {seed}: {seconds[seed]} s", flush=True)
    return seconds, failed


def failure_reason(output: str) -> str:
    """The line of a failed run's output that says why: the step's own error (`error: <file>: <reason>`, as the
    CLI prints a SliceWiseError) before DVC's summary of it, else DVC's, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    step = [line for line in lines if line.startswith("error:")]
    dvc = [line for line in lines if line.startswith("ERROR:")]
    return (step or dvc or lines or ["no output"])[-1]


def source_commit() -> str:
    """The commit the sweep's project copy was made from, short, "-dirty" when its source files had uncommitted
    changes (the provenance every MLflow run records)."""
    from tasks.tracking.provenance import git_commit, git_dirty

    return git_commit()[:7] + ("-dirty" if git_dirty() == "true" else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--keep", type=Path, help="build the project copy here and keep it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml value for every experiment, e.g. --set train.amp_bf16=false")
    args = parser.parse_args()
    report = run(tuple(args.seeds), args.keep, tuple(args.overrides))
    print(json.dumps(report, indent=2))
    if report["failed_seeds"]:
        raise SystemExit(f"the pipeline failed for seed(s) {', '.join(report['failed_seeds'])}; the others are above")


if __name__ == "__main__":
    main()
