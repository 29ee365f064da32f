"""Slicing cost versus a bare nibabel load of the same volumes, and peak memory per slicing worker.

Usage: .venv/bin/python -m bench.bench_slice [RAW_BRATS_DIR]   (default data/raw/brats; run `make run` first)
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from tasks import paths
from tasks.config import load_settings
from tasks.data.slicing import SliceSpec, find_part, slice_patient


def _bare_load(patient_dir: Path, parts: tuple[str, ...]) -> float:
    started = time.perf_counter()
    for part in parts:
        np.asarray(nib.load(find_part(patient_dir, part)).dataobj, dtype=np.float32)
    return time.perf_counter() - started


def _slice_and_peak_rss(patient_dir: Path, spec: SliceSpec) -> tuple[float, float]:
    """Run in a fresh worker process: seconds to slice one patient and that process's peak RSS in MiB."""
    started = time.perf_counter()
    slice_patient(patient_dir, spec)
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(raw_brats: Path = paths.RAW_BRATS, max_patients: int = 6) -> dict:
    settings = load_settings()
    patients = sorted(p for p in raw_brats.glob("*") if p.is_dir())[:max_patients]
    if not patients:
        raise SystemExit(f"{raw_brats}: no patients; run `make run` first")
    spec = SliceSpec(tuple(settings.slice.modalities), settings.active.image_size, settings.active.slice_stride,
                     settings.slice.min_brain_fraction)
    parts = spec.modalities + ("seg",)
    load_s = [_bare_load(p, parts) for p in patients]
    results = []
    for patient in patients:  # one fresh process per patient so each peak RSS is that patient's alone
        with ProcessPoolExecutor(max_workers=1) as pool:
            results.append(pool.submit(_slice_and_peak_rss, patient, spec).result())
    slice_s = [r[0] for r in results]
    report = {
        "patients": len(patients),
        "bare_nibabel_load_s_per_patient": round(float(np.mean(load_s)), 3),
        "slice_s_per_patient": round(float(np.mean(slice_s)), 3),
        "slice_over_load_ratio": round(float(np.sum(slice_s) / np.sum(load_s)), 2),
        "peak_rss_mib_per_worker": round(max(r[1] for r in results), 1),
        "image_size": spec.image_size,
        "modalities": list(spec.modalities),
    }
    return report


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]) if len(sys.argv) > 1 else paths.RAW_BRATS), indent=2))
