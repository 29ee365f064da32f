"""Slicing cost versus a bare nibabel load of the same volumes (both timed in one slicing worker, as the slice step
runs them), and peak memory per slicing worker; with
`--incremental`, what a rerun costs: nothing changed, one new patient, and recognising 369 unchanged patients.

Usage: .venv/bin/python -m bench.bench_slice [RAW_BRATS_DIR] [--incremental] [--profile production]
(default data/raw/brats; run `make run` first)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.memory import status_mib
from tasks import paths
from tasks.config import load_settings
from tasks.data.file_digests import FileDigests
from tasks.data.process_pool import keep_freed_memory, process_pool
from tasks.data.shards import write_shard
from tasks.data.slicing import SliceSpec, find_part, patient_fingerprint, slice_dataset, slice_patient

PRODUCTION_PATIENTS = 369  # BraTS 2020 training set


def _bare_load(patient_dir: Path, parts: tuple[str, ...]) -> float:
    started = time.perf_counter()
    for part in parts:
        np.asarray(nib.load(find_part(patient_dir, part)).dataobj, dtype=np.float32)
    return time.perf_counter() - started


def _slice_seconds(patient_dir: Path, spec: SliceSpec) -> float:
    """One patient as the slice step's job does it: sliced, and its shard written (to a scratch file here)."""
    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp:
        started = time.perf_counter()
        write_shard(Path(tmp) / "shard.npz", slice_patient(patient_dir, spec))
        return time.perf_counter() - started


def _timed_in_one_worker(patients: list[Path], spec: SliceSpec, parts: tuple[str, ...],
                         rounds: int = 3) -> tuple[list, list]:
    """Run in a pool worker, as the slice step's patients are: after one untimed patient (the worker's first-call
    costs, which a step pays once per worker), each patient's bare load then its slicing, side by side, `rounds`
    times; the median of each (a shared machine's hiccups land in single runs)."""
    _slice_seconds(patients[0], spec)
    load_s, slice_s = [], []
    for patient in patients:
        runs = [(_bare_load(patient, parts), _slice_seconds(patient, spec)) for _ in range(rounds)]
        load_s.append(float(np.median([r[0] for r in runs])))
        slice_s.append(float(np.median([r[1] for r in runs])))
    return load_s, slice_s


def _peak_rss_mib(patient_dir: Path, spec: SliceSpec) -> float:
    """Run in a fresh worker process: that process's peak RSS in MiB after slicing one patient (VmHWM: bench/memory.py
    says why not ru_maxrss), its malloc set up as the slice step's workers have it."""
    keep_freed_memory()
    slice_patient(patient_dir, spec)
    return status_mib()


def run(raw_brats: Path = paths.RAW_BRATS, max_patients: int = 6, profile: str | None = None,
        image_size: int | None = None) -> dict:
    """`profile`: whose slicing spec (modalities, image size, stride) to time; the active one by default; `image_size`
    overrides its size. The synthetic volumes are full-size (240x240x155) whatever the profile, so the quick profile's
    data serves all."""
    settings = load_settings()
    patients = sorted(p for p in raw_brats.glob("*") if p.is_dir())[:max_patients]
    if not patients:
        raise SystemExit(f"{raw_brats}: no patients; run `make run` first")
    chosen = settings.profiles[profile] if profile else settings.active
    spec = SliceSpec(tuple(chosen.modalities), image_size or chosen.image_size, chosen.slice_stride,
                     settings.slice.min_brain_fraction)
    parts = spec.modalities + ("seg",)
    with process_pool(1) as pool:
        load_s, slice_s = pool.submit(_timed_in_one_worker, patients, spec, parts).result()
    peaks = []
    for patient in patients:  # one fresh process per patient so each peak RSS is that patient's alone; spawned, not
        # forked, so it holds none of this process's modules (torch, Prefect... when `make bench` runs it)
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            peaks.append(pool.submit(_peak_rss_mib, patient, spec).result())
    report = {
        "patients": len(patients),
        "bare_nibabel_load_s_per_patient": round(float(np.mean(load_s)), 3),
        "slice_s_per_patient": round(float(np.mean(slice_s)), 3),
        "slice_over_load_ratio": round(float(np.sum(slice_s) / np.sum(load_s)), 2),
        "peak_rss_mib_per_worker": round(max(peaks), 1),
        "image_size": spec.image_size,
        "slice_stride": spec.stride,
        "modalities": list(spec.modalities),
    }
    return report


def _link_patients(sources: list[Path], dest: Path, n: int, first: int = 0) -> list[Path]:
    """n patient folders under dest, hard links to the source patients' files in turn (no data copied)."""
    made = []
    for i in range(first, first + n):
        folder = dest / f"BraTS20_Training_{i + 1:03d}"
        folder.mkdir(parents=True)
        for f in sources[i % len(sources)].iterdir():
            os.link(f, folder / f.name)
        made.append(folder)
    return made


def _seconds(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def incremental(raw_brats: Path = paths.RAW_BRATS, n_sliced: int = 12, n_known: int = PRODUCTION_PATIENTS) -> dict:
    """Rerun costs: slice n_sliced patients, rerun with nothing changed, add one patient; then fingerprint
    n_known patients cold (every file hashed) and warm (recognised by size, mtime and inode), and time
    `dvc status` on a DVC-tracked folder of n_known patients. Patients are hard links to the ones in raw_brats."""
    settings = load_settings()
    sources = sorted(p for p in raw_brats.glob("*") if p.is_dir())
    if not sources:
        raise SystemExit(f"{raw_brats}: no patients; run `make run` first")
    size, stride = settings.active.image_size, settings.active.slice_stride
    report: dict = {"image_size": size, "stride": stride, "modalities": list(settings.slice.modalities)}
    with tempfile.TemporaryDirectory(prefix="bench-slice-") as tmp:
        raw, out = Path(tmp) / "raw", Path(tmp) / "processed"
        _link_patients(sources, raw / "brats", n_sliced)
        full_s, _ = _seconds(lambda: slice_dataset(raw, out, settings.slice, size, stride))
        noop_s, noop = _seconds(lambda: slice_dataset(raw, out, settings.slice, size, stride))
        _link_patients(sources, raw / "brats", 1, first=n_sliced)
        one_s, one = _seconds(lambda: slice_dataset(raw, out, settings.slice, size, stride))
        report |= {"patients_sliced": n_sliced, "slice_all_seconds": round(full_s, 2),
                   "rerun_nothing_changed_seconds": round(noop_s, 2), "rerun_hashed_files": noop["raw_files_hashed"],
                   "one_new_patient_seconds": round(one_s, 2), "one_new_patient_resliced": one["resliced"]}

        known = _link_patients(sources, Path(tmp) / "known" / "brats", n_known)
        spec_digest = SliceSpec(tuple(settings.slice.modalities), size, stride, 0.0).digest()
        digests = FileDigests(Path(tmp) / "known.digests.json")
        cold_s, _ = _seconds(lambda: [patient_fingerprint(p, spec_digest, digests) for p in known])
        digests.save()
        warm = FileDigests(Path(tmp) / "known.digests.json")
        warm_s, _ = _seconds(lambda: [patient_fingerprint(p, spec_digest, warm) for p in known])
        report |= {"fingerprinted_patients": n_known, "fingerprint_all_hashed_seconds": round(cold_s, 2),
                   "fingerprint_known_by_stat_seconds": round(warm_s, 2), "files_hashed_when_known": warm.hashed,
                   **_dvc_status_seconds(Path(tmp) / "known")}
    return report


def _dvc_status_seconds(project: Path) -> dict:
    """A one-stage DVC pipeline that depends on `brats` (as `slice` depends on data/raw) in a fresh git + DVC
    repository: `dvc repro` hashes the folder once, then `dvc status` (best of two, DVC's state warm)."""
    dvc = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "dvc")
    quiet = {**os.environ, "DVC_NO_ANALYTICS": "1"}  # as the project's .dvc/config: no analytics report per command
    run = lambda *args: subprocess.run(args, cwd=project, capture_output=True, text=True, check=True,  # noqa: E731
                                       env=quiet)
    run("git", "init", "-q")
    run(dvc, "init", "-q")
    run(dvc, "stage", "add", "-q", "-n", "slice", "-d", "brats", "true")
    repro_s, _ = _seconds(lambda: run(dvc, "repro", "-q"))
    status_s = min(_seconds(lambda: run(dvc, "status"))[0] for _ in range(2))
    return {"dvc_repro_hashing_seconds": round(repro_s, 1), "dvc_status_seconds": round(status_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_brats_dir", nargs="?", type=Path, default=paths.RAW_BRATS,
                        help="BraTS patient folders to slice (default: data/raw/brats; run `make run` first)")
    parser.add_argument("--incremental", action="store_true",
                        help="what a rerun costs: nothing changed, one new patient, 369 unchanged patients recognised")
    parser.add_argument("--profile", choices=sorted(load_settings().profiles), help="time this profile's slicing spec (e.g. production: four modalities, "
                                          "240², stride 1) instead of the active one's")
    parser.add_argument("--image-size", type=int, help="slice to this size instead of the profile's (e.g. 256 to "
                                                          "compare with the production spec before 2026-12-03)")
    args = parser.parse_args()
    report = (incremental(args.raw_brats_dir) if args.incremental
              else run(args.raw_brats_dir, profile=args.profile, image_size=args.image_size))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
