"""Data-path throughput: production-size training batches through the real loader, against what a GPU consumes.

A synthetic processed set in the real format (tasks/data/shards.py: one shard per patient + a manifest) is written
straight from random brain-like slices of the production shape (4 × 256², z-scored float16, zero background), once
uncompressed (the format the slice step writes) and once compressed (the format before streaming). Each measurement
runs in a fresh process: `training_loader` with the real augmentation (params.yaml's train.augment) and foreground
quota, batch 32, drawing batches as a training stage does, with

    0 workers and one torch thread      slices/s per CPU core (read + augment + collate in one process)
    1, 2 workers                         the scaling that `train.num_workers` buys
    the same with train_seg's windows    the warm-up's loader: each sample cut to a window around its brain
                                         (`train_seg.crop` of the side, 192² of 256² at 0.75) by the same pass
    compressed, cache ≥ the set          what the old in-RAM format costs in memory
    compressed, cache < the set          what an LRU of decompressed shards does under random access
    validation reads                     the validation pass's reads, every slice once in order: sample by sample
                                         (as before 2026-12-04) against whole batches (`batches_in_order`), in one
                                         process, then whole batches with the workers measured

reporting slices/s (wall clock) and slices per CPU-second (main process + workers: a busy machine's other load does
not dilute it), the peak RSS of the loading processes (VmHWM), bytes on disk and files. The rate per CPU-second
with workers (it includes moving batches between processes) × 16 is set against the issue's goal (2,000 slices/s on 16 cores) and what one A100 trains on (a 2D U-Net at 4×192×160,
mixed precision: about 1,000–1,350 images/s, NVIDIA's nnU-Net benchmark; no GPU was lent to measure it here).

    .venv/bin/python -m bench.bench_loader [--patients 4] [--slices 140] [--batches 12]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bench.memory import status_mib

if TYPE_CHECKING:
    from tasks.data.shards import Shard

REPO = Path(__file__).resolve().parents[1]
GOAL_SLICES_PER_S, GOAL_CORES = 2000, 16
A100_IMAGES_PER_S = (1000, 1350)
SIZE, CHANNELS, BATCH = 256, 4, 32


def _patient(rng: np.random.Generator, slices: int) -> "Shard":
    """One patient's slices: a noisy ellipse of 'brain' that shrinks towards the ends of the volume, a tumour disc
    on the middle third (for the foreground quota), zero elsewhere, as the slice step leaves z-scored data."""
    from tasks.data.shards import Shard

    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    images = np.zeros((slices, CHANNELS, SIZE, SIZE), np.float16)
    masks = np.zeros((slices, SIZE, SIZE), np.uint8)
    for i in range(slices):
        scale = 0.5 + 0.5 * np.sin(np.pi * (i + 1) / (slices + 1))
        brain = ((yy - 0.5) / (0.42 * scale)) ** 2 + ((xx - 0.5) / (0.36 * scale)) ** 2 < 1
        images[i][:, brain] = rng.standard_normal((CHANNELS, int(brain.sum())), np.float32)
        if slices // 3 <= i < 2 * slices // 3:
            masks[i] = ((yy - 0.45) ** 2 + (xx - 0.55) ** 2 < 0.01) & brain
    return Shard(images=images, masks=masks, has_mask=np.ones(slices, bool),
                 labels=masks.reshape(slices, -1).max(1).astype(np.uint8),
                 slice_index=np.arange(slices, dtype=np.int16), spacing=np.array([0.9375, 0.9375, 1.0], np.float32))


def write_sets(root: Path, patients: int, slices: int, seed: int = 0,
               kinds: tuple[str, ...] = ("stored", "compressed")) -> dict[str, Path]:
    """The same patients written as processed sets of these kinds, {"stored": ..., "compressed": ...}."""
    from tasks.data.shards import MANIFEST_COLUMNS, manifest_rows, write_shard

    rng, rows = np.random.default_rng(seed), []
    sets = {kind: root / kind for kind in kinds}
    for p in range(patients):
        name, shard = f"BraTS20_Training_{p + 1:03d}", _patient(rng, slices)
        for kind, folder in sets.items():
            write_shard(folder / "brats" / f"{name}.npz", shard, compress=kind == "compressed")
        rows += manifest_rows(name, "brats", f"brats/{name}.npz", shard)
    for folder in sets.values():
        pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(folder / "manifest.csv", index=False)
    return sets


def long_epoch(loader, batches: int) -> None:
    """Make `loader`'s epochs at least `batches` batches long (its ComposedBatches, under any sampler that wraps it)."""
    from tasks.data.batch_sampling import ComposedBatches

    sampler = loader.batch_sampler
    while not isinstance(sampler, ComposedBatches):
        sampler = sampler.batches
    sampler.batches = max(sampler.batches, batches)


def measure(processed: Path, workers: int, cache_mb: int, batches: int, warmup: int, read_only: bool = False,
            crop: int | None = None) -> dict:
    """Slices/s through `training_loader` over `processed`, in this process (start it fresh: see `_measure_in`);
    `read_only`: the loader of `train.augment_on: device`, which reads and leaves augmenting to the GPU; `crop`:
    batches of crop x crop windows around each brain, as train_seg's loader makes them."""
    import psutil
    import torch

    from tasks.config import load_settings
    from tasks.data.datasets import stream_slices
    from tasks.data.loaders import training_loader
    from tasks.data.shards import ShardRowReader, read_manifest

    torch.set_num_threads(1)  # one core for the main process; each worker is one more (DataLoader sets 1 thread)
    settings = load_settings(REPO / "params.yaml")
    patients = sorted(read_manifest(processed / "manifest.csv")["patient"].unique())
    data = stream_slices(processed, patients, ("brats",), ShardRowReader(cache_mb * 2**20 // (workers + 1)))
    loader = training_loader(data, BATCH, torch.Generator().manual_seed(0), workers,
                             foreground_share=settings.train_seg.foreground_share, augment=settings.train.augment,
                             augment_on_device=read_only, crop=crop)
    # One epoch outlasts the timed window: the small synthetic set's own epoch ended every 17-35 batches, and each end
    # drains the workers' prefetch, which the 0-worker side never pays (8 workers lost about a fifth so); a production
    # epoch is thousands of batches. The pools are walked endlessly, so a longer epoch only draws more of them.
    long_epoch(loader, warmup + batches)
    baseline_mib = status_mib(field="VmRSS")
    batches_seen, count, epoch_ends = iter(loader), 0, 0
    processes = [psutil.Process()] + [psutil.Process(w.pid) for w in getattr(batches_seen, "_workers", [])]
    for i in range(warmup + batches):
        if i == warmup:
            started, cpu_started = time.perf_counter(), [_cpu_seconds(p) for p in processes]
        try:
            batch = next(batches_seen)
        except StopIteration:
            batches_seen, epoch_ends = iter(loader), epoch_ends + 1
            batch = next(batches_seen)
        count += len(batch["label"]) if i >= warmup else 0
    seconds = time.perf_counter() - started
    spent = [_cpu_seconds(p) - before for p, before in zip(processes, cpu_started)]
    cpu = sum(spent)
    return {"workers": workers, "cache_mb": cache_mb, "slices": count, "epoch_ends": epoch_ends,
            "seconds": round(seconds, 2),
            "slices_per_s": round(count / seconds, 1), "cpu_seconds": round(cpu, 2),
            "slices_per_cpu_second": round(count / cpu, 1),
            # What the training process itself spends per batch: with workers, what is left after they took the rest.
            "main_cpu_ms_per_batch": round(1000 * spent[0] / batches, 1),
            "rss_before_loading_mib": round(baseline_mib), "main_peak_rss_mib": round(status_mib()),
            "workers_peak_rss_mib": round(sum(status_mib(p.pid) for p in processes[1:])),
            # A forked worker's RSS counts the parent's pages it shares; USS is what it holds alone.
            "workers_uss_mib": round(sum(p.memory_full_info().uss for p in processes[1:]) / 2**20)}


def validation_reads(processed: Path, worker_counts: tuple[int, ...], passes: int = 3) -> dict:
    """Slices/s of a validation pass's reads over `processed` (batches of 2 × BATCH, in order, as float32 tensors
    for the model): each slice read alone and collated (the validation path before 2026-12-04) against whole
    batches read into one buffer (`batches_in_order`), side by side in this process, one torch thread; then whole
    batches with each worker count > 0. Best of `passes` passes after one untimed pass (the page cache)."""
    import torch
    from torch.utils.data import DataLoader

    from tasks.data.datasets import collate_slices, stream_slices
    from tasks.data.loaders import batches_in_order
    from tasks.data.shards import ShardRowReader, read_manifest

    torch.set_num_threads(1)
    patients = sorted(read_manifest(processed / "manifest.csv")["patient"].unique())
    data = stream_slices(processed, patients, ("brats",), ShardRowReader(0))
    ways = {"sample_by_sample": lambda: DataLoader(data, batch_size=2 * BATCH, collate_fn=collate_slices),
            **{f"whole_batches_{w}_workers": (lambda w=w: batches_in_order(data, 2 * BATCH, w))
               for w in sorted(set(worker_counts) | {0})}}
    rates = {}
    for name, loader in ways.items():
        best = float("inf")
        for attempt in range(passes + 1):
            started = time.perf_counter()
            for batch in loader():
                batch["image"].float(), batch["mask"].float()  # what the consumer converts (on its device)
            best = min(best, time.perf_counter() - started) if attempt else best
        rates[name] = round(len(data) / best, 1)
        print(f"  validation reads, {name.replace('_', ' ')}: {rates[name]:,.0f} slices/s", flush=True)
    return {"slices": len(data), "batch_size": 2 * BATCH, "slices_per_s": rates,
            "whole_over_sample_by_sample": round(rates["whole_batches_0_workers"] / rates["sample_by_sample"], 2)}


def _cpu_seconds(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _measure_in(processed: Path, workers: int, cache_mb: int, batches: int, warmup: int,
                read_only: bool = False, crop: int | None = None) -> dict:
    """`measure` in a fresh interpreter, so its peak RSS is its own."""
    command = [sys.executable, "-m", "bench.bench_loader", "--measure", str(processed), "--workers", str(workers),
               "--cache-mb", str(cache_mb), "--batches", str(batches), "--warmup", str(warmup)] \
        + (["--read-only"] if read_only else []) + (["--crop", str(crop)] if crop else [])
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    kind = " read-only" if read_only else f" {crop}² windows" if crop else ""
    print(f"  {processed.name:>10}{kind}, {workers} workers, cache {cache_mb:>4} MiB: "
          f"{result['slices_per_s']:7.1f} slices/s "
          f"({result['slices_per_cpu_second']:6.1f} per CPU-second; main process {result['main_cpu_ms_per_batch']:.0f} "
          f"ms CPU per batch), peak RSS {result['main_peak_rss_mib']} MiB "
          f"({result['rss_before_loading_mib']} before loading); workers' USS {result['workers_uss_mib']} MiB",
          flush=True)
    return result


def run(patients: int = 4, slices: int = 140, batches: int = 12, warmup: int = 2,
        worker_counts: tuple[int, ...] = (0, 1, 2), compressed: bool = True,
        read_only_counts: tuple[int, ...] = ()) -> dict:
    """`worker_counts` (0 first) on the stored set; `compressed`: also the two compressed-set runs;
    `read_only_counts`: the read-only loader of `train.augment_on: device` with these many workers. With more
    workers each measurement takes more batches (`batches` per worker, at least), so that every worker's start-up
    stays in the untimed warm-up and the timed part outlasts it."""
    from tasks.io import usable_cores

    counts = sorted(set(worker_counts) | {0})

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        started = time.perf_counter()
        sets = write_sets(Path(tmp), patients, slices, kinds=("stored", "compressed") if compressed else ("stored",))
        disk = {kind: {"mib": round(sum(p.stat().st_size for p in folder.rglob("*.npz")) / 2**20, 1),
                       "files": sum(1 for _ in folder.rglob("*.npz")) + 1} for kind, folder in sets.items()}
        print(f"wrote {patients} patients x {slices} slices of {CHANNELS}x{SIZE}² in {time.perf_counter() - started:.0f} s: "
              + ", ".join(f"{k} {v['mib']} MiB in {v['files']} files" for k, v in disk.items()), flush=True)
        runs = {f"stored_{w}_workers": _measure_in(sets["stored"], w, 0, batches * max(1, w), warmup * max(1, w))
                for w in counts}
        if crop := warm_up_window():
            runs |= {f"stored_{w}_workers_crop": _measure_in(sets["stored"], w, 0, batches * max(1, w),
                                                             warmup * max(1, w), crop=crop) for w in counts}
        for w in read_only_counts:
            runs[f"read_only_{w}_workers"] = _measure_in(sets["stored"], w, 0, 4 * batches * max(1, w),
                                                         warmup * max(1, w), read_only=True)
        validation = validation_reads(sets["stored"], tuple(w for w in counts if w))
        if compressed:
            runs["compressed_cache_fits"] = _measure_in(sets["compressed"], 0, int(disk["stored"]["mib"]) + 64,
                                                        batches, warmup)
            small_cache = max(1, int(disk["stored"]["mib"] // 4))  # a quarter of the decompressed set
            runs["compressed_cache_quarter"] = _measure_in(sets["compressed"], 0, small_cache, max(1, batches // 6), 0)
    # Per core: slices per CPU-second of the one-process, one-thread loader, which a busy machine's other load
    # does not dilute as it dilutes the wall-clock rate.
    per_core = runs["stored_0_workers"]["slices_per_cpu_second"]
    wall = runs["stored_0_workers"]["slices_per_s"]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "set": {"patients": patients, "slices": patients * slices, "shape": [CHANNELS, SIZE, SIZE],
                "batch_size": BATCH, "disk": disk},
        "runs": runs,
        "validation_reads": validation,
        "per_core_slices_per_s": per_core,
        "scaling": {f"{w}_workers_over_0": round(runs[f"stored_{w}_workers"]["slices_per_s"] / wall, 2)
                    for w in counts if w},
        # Workers pay for moving batches between processes: project from their CPU-second rate, not the bare one.
        "workers_slices_per_cpu_second": runs[f"stored_{counts[-1]}_workers"]["slices_per_cpu_second"],
        # train_seg's loader (windows around the brain), when params.yaml crops: the same figures for it
        **({"crop_side": crop, "crop_per_core_slices_per_s": runs["stored_0_workers_crop"]["slices_per_cpu_second"],
            "crop_scaling": {f"{w}_workers_over_0": round(runs[f"stored_{w}_workers_crop"]["slices_per_s"]
                                                          / runs["stored_0_workers_crop"]["slices_per_s"], 2)
                             for w in counts if w}} if crop else {}),
        "projected_16_cores_slices_per_s": round(runs[f"stored_{counts[-1]}_workers"]["slices_per_cpu_second"]
                                                 * GOAL_CORES),
        "goal_slices_per_s": GOAL_SLICES_PER_S,
        "a100_images_per_s": list(A100_IMAGES_PER_S),
        "cpu_cores_here": usable_cores(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def warm_up_window() -> int | None:
    """The side of train_seg's windows on these SIZE² slices (params.yaml's `train_seg.crop`, rounded as the stage
    rounds it for the production model), or None when it trains on whole slices."""
    from types import SimpleNamespace

    from tasks.config import load_settings
    from tasks.inference.checkpoints import model_config_for
    from tasks.training.plan import crop_side

    settings = load_settings(REPO / "params.yaml")
    plan = SimpleNamespace(stage="seg", stage_params=settings.train_seg,
                           model=model_config_for(settings, "production"))
    return crop_side(plan, (SIZE, SIZE))


def stage_peak_rss(patient_counts: tuple[int, ...] = (3, 11), slices: int = 140) -> dict:
    """Peak RSS of a real `python -m tasks train_seg` (one epoch, production image size and channels, the quick
    profile's small U-Net so that it ends in minutes on a CPU) on processed sets of different sizes: streaming
    makes it independent of the data size. One patient validates, the others train."""
    import yaml

    results = {}
    for count in patient_counts:
        with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
            root = Path(tmp)
            write_sets(root / "data", count, slices, kinds=("stored",))["stored"].rename(root / "data" / "processed")
            patients = [f"BraTS20_Training_{p + 1:03d}" for p in range(count)]
            splits = {"train": patients[:-1], "val": patients[-1:], "test": patients[-1:]}
            (root / "data" / "splits").mkdir()
            for name, ids in splits.items():
                (root / "data" / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
            params = yaml.safe_load((REPO / "params.yaml").read_text())
            quick_model = params["profiles"]["quick"]["model"]
            params["profile"] = "production"
            params["profiles"]["production"].update(model=quick_model, epochs={"seg": 1, "cls": 1, "joint": 1})
            params["slice"]["modalities"] = ["flair", "t1", "t1ce", "t2"]
            params["train"].update(min_epochs=1, device="cpu")
            params["tracking"]["enabled"] = False
            (root / "params.yaml").write_text(yaml.safe_dump(params))
            started = time.perf_counter()
            child = subprocess.Popen([sys.executable, "-m", "tasks", "train_seg"], cwd=root,
                                     env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
            peak = 0.0
            while child.poll() is None:
                peak = max(peak, status_mib(child.pid))
                time.sleep(0.2)
            if child.returncode != 0:
                raise RuntimeError(child.stderr.read()[-3000:])
            data_mib = sum(p.stat().st_size for p in (root / "data" / "processed").rglob("*.npz")) / 2**20
            results[count] = {"train_slices": (count - 1) * slices, "data_mib": round(data_mib),
                              "peak_rss_mib": round(peak), "seconds": round(time.perf_counter() - started, 1)}
            print(f"  train_seg on {count} patients ({data_mib:.0f} MiB of shards): peak RSS {peak:.0f} MiB, "
                  f"{results[count]['seconds']} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--slices", type=int, default=140, help="slices per patient (BraTS keeps about 140)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first (worker start-up)")
    parser.add_argument("--worker-counts", default="0,1,2", help="loader workers to measure, comma-separated")
    parser.add_argument("--no-compressed", action="store_true", help="skip the compressed-set runs")
    parser.add_argument("--read-only-counts", default="", help="workers for the read-only loader (augment_on: "
                        "device), comma-separated; none by default")
    parser.add_argument("--read-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage-rss", action="store_true",
                        help="instead: peak RSS of a real train_seg epoch on 3 and on 11 patients")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cache-mb", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--crop", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.workers, args.cache_mb, args.batches, args.warmup,
                                 args.read_only, args.crop)))
        return
    if args.stage_rss:
        print(json.dumps(stage_peak_rss()))
        return
    report = run(args.patients, args.slices, args.batches, args.warmup,
                 tuple(int(w) for w in args.worker_counts.split(",")), not args.no_compressed,
                 tuple(int(w) for w in args.read_only_counts.split(",") if w))
    print(f"per core {report['per_core_slices_per_s']:.0f} slices per CPU-second ("
          f"{report['workers_slices_per_cpu_second']:.0f} with workers); x{GOAL_CORES} cores = "
          f"{report['projected_16_cores_slices_per_s']} (goal {GOAL_SLICES_PER_S}; one A100 trains on "
          f"{A100_IMAGES_PER_S[0]}-{A100_IMAGES_PER_S[1]}/s); scaling {report['scaling']}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
