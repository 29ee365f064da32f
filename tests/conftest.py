"""Shared fixtures: a tiny processed data set in the real on-disk format, and the real params.yaml shrunk.

The data set mirrors the project layout under tmp_path (data/processed/, data/splits/), so a test can
`monkeypatch.chdir(tiny_data.root)` and call any step's `main(settings)` exactly as `python -m tasks` would.
"""

from __future__ import annotations

import logging
import os
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks import paths
from tasks.config import Settings, load_settings
from tasks.data.shards import MANIFEST_COLUMNS, Shard, manifest_rows, write_shard

REPO = Path(__file__).resolve().parents[1]
# The repositories tests `dvc init` get DVC's default config, usage analytics on (the project's .dvc/config turns
# them off): each dvc command there would leave a report in the temporary folder for a sender that cannot connect.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@dataclass(frozen=True)
class TinyData:
    root: Path  # plays the project root: processed data and splits at their usual relative paths
    processed: Path
    splits: Path
    manifest: pd.DataFrame


def _brain_slice(rng: np.random.Generator, size: int, channels: int, tumour: bool) -> tuple[np.ndarray, np.ndarray]:
    """A noisy elliptic 'brain' on a zero background, with a bright disc as tumour; (image C×H×W, mask H×W)."""
    yy, xx = np.mgrid[:size, :size] / size
    brain = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.36) ** 2 < 1
    image = np.where(brain, rng.normal(0, 0.5, (channels, size, size)), 0.0)
    mask = np.zeros((size, size), dtype=np.uint8)
    if tumour:
        cy, cx, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.08, 0.16)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.uint8)
        image = image + 2.5 * mask
    return image.astype(np.float16), mask


def make_tiny_processed(root: Path, *, n_patients: int = 5, slices: int = 8, kaggle_per_class: int = 4,
                        size: int = 32, channels: int = 1, seed: int = 0) -> TinyData:
    """BraTS-like patients (every other slice with tumour) + Kaggle-like images, a manifest and splits.

    Splits: the last two patients are val and test, the rest train; Kaggle images go 2:1:1 to train/val/test.
    """
    rng = np.random.default_rng(seed)
    processed, splits_dir = root / paths.PROCESSED, root / paths.SPLITS
    rows, splits = [], {"train": [], "val": [], "test": []}
    for p in range(n_patients):
        patient = f"BraTS20_Training_{p + 1:03d}"
        pairs = [_brain_slice(rng, size, channels, tumour=i % 2 == 1) for i in range(slices)]
        masks = np.stack([m for _, m in pairs])
        shard = Shard(images=np.stack([im for im, _ in pairs]), masks=masks, has_mask=np.ones(slices, dtype=bool),
                      labels=masks.reshape(slices, -1).max(1).astype(np.uint8),
                      slice_index=np.arange(10, 10 + slices, dtype=np.int16), spacing=np.array([1.0, 1.0, 1.0], np.float32))
        write_shard(processed / "brats" / f"{patient}.npz", shard)
        rows += manifest_rows(patient, "brats", f"brats/{patient}.npz", shard)
        splits["val" if p == n_patients - 2 else "test" if p == n_patients - 1 else "train"].append(patient)
    for label, name in ((1, "yes"), (0, "no")):
        images = np.stack([_brain_slice(rng, size, channels, tumour=bool(label))[0] for _ in range(kaggle_per_class)])
        n = kaggle_per_class
        shard = Shard(images=images, masks=np.zeros((n, size, size), np.uint8), has_mask=np.zeros(n, dtype=bool),
                      labels=np.full(n, label, np.uint8), slice_index=np.full(n, -1, np.int16),
                      spacing=np.full(3, np.nan, np.float32))
        write_shard(processed / "kaggle" / f"{name}.npz", shard)
        for row in manifest_rows("", "kaggle", f"kaggle/{name}.npz", shard):
            row["patient"] = f"kaggle_{name}_{row['row']}"
            row["tumour_area_px"] = 0  # masks of photos are unknown
            rows.append(row)
            splits[("train", "train", "val", "test")[row["row"] % 4]].append(row["patient"])
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest.to_csv(processed / paths.MANIFEST.name, index=False)
    splits_dir.mkdir(parents=True, exist_ok=True)
    for name, ids in splits.items():
        (splits_dir / f"{name}.txt").write_text("".join(f"{i}\n" for i in sorted(ids)))
    return TinyData(root, processed, splits_dir, manifest)


def strip_tumours(data, patients: list[str]) -> None:
    """Make the BraTS `patients` of a make_tiny_processed data set tumour-free: empty masks, labels 0, in their shards
    and the manifest."""
    from tasks.data.shards import Shard, read_shard, write_shard

    manifest = pd.read_csv(data.processed / "manifest.csv")
    for patient in patients:
        path = data.processed / "brats" / f"{patient}.npz"
        shard = read_shard(path)
        write_shard(path, Shard(shard.images, np.zeros_like(shard.masks), shard.has_mask,
                                np.zeros_like(shard.labels), shard.slice_index, shard.spacing))
        manifest.loc[manifest.patient == patient, ["label", "tumour_area_px"]] = 0
    manifest.to_csv(data.processed / "manifest.csv", index=False)


def shrink_settings(settings: Settings, **profile_updates) -> Settings:
    """The given settings on CPU, tiny model, one epoch per stage, 32-pixel images, no tracking, FLAIR only.

    FLAIR only because make_tiny_processed writes one channel by default (a test of several passes
    `modalities=...` and `channels=...`); the project copies of the end-to-end tests (tests/project_copy.py) keep
    the quick profile's own modalities."""
    profile = settings.active
    modalities = tuple(profile_updates.pop("modalities", ("flair",)))
    profile = profile.model_copy(update={
        "image_size": 32, "synthetic_patients": 5, "synthetic_kaggle_images": 4, "modalities": modalities,
        "model": profile.model.model_copy(update={"base_channels": 4, "depth": 2}),
        "epochs": profile.epochs.model_copy(update={"seg": 1, "cls": 1, "joint": 1}),
        **profile_updates,
    })
    return settings.model_copy(update={
        "profiles": {**settings.profiles, settings.profile: profile},
        "slice": settings.slice.model_copy(update={"modalities": modalities}),
        "train": settings.train.model_copy(update={"batch_size": 8, "device": "cpu", "threads": 1}),
        "tracking": settings.tracking.model_copy(update={"enabled": False}),
        "evaluate": settings.evaluate.model_copy(update={"bootstrap": 20}),
        "export": settings.export.model_copy(update={"latency_runs": 3}),
    })


def with_epochs(settings: Settings, **epochs: int) -> Settings:
    """The settings with other epoch counts for the active profile, e.g. with_epochs(s, seg=2)."""
    profile = settings.active.model_copy(update={"epochs": settings.active.epochs.model_copy(update=epochs)})
    return settings.model_copy(update={"profiles": {**settings.profiles, settings.profile: profile}})


def with_section(settings: Settings, section: str, **updates) -> Settings:
    """The settings with some keys of one section changed, e.g. with_section(s, "train", patience=1)."""
    return settings.model_copy(update={section: getattr(settings, section).model_copy(update=updates)})


def own_make(env: dict[str, str]) -> dict[str, str]:
    """`env` for a make of its own, not a sub-make of `make test`'s: its MAKEFLAGS would reach the inner make, which
    then prints "Entering directory" around what a test reads."""
    return {k: v for k, v in env.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def traced_peak(call) -> tuple[object, int]:
    """(call's result, the most memory traced at once while it ran)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine OpenMP threads waiting for each
    other make every op many times slower; training tests pin threads through train.threads as well."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _prefect_console_on_an_open_stream():
    """Prefect's console handler writes to the stream that was sys.stderr when Prefect set up its logging. Set up in a
    test that captured stderr (capsys), it later writes into that closed capture, and logging prints "--- Logging
    error ---" with a traceback into whichever test's stderr comes next (test_register's store-lost test failed after
    test_kaggle_download's `flows run` check, in that order only). After each test a handler left on a closed stream
    gets the current stderr."""
    yield
    if "prefect.logging.handlers" not in sys.modules:
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger))]
    for handler in {h for logger in loggers for h in logger.handlers if isinstance(h, PrefectConsoleHandler)}:
        if getattr(handler.stream, "closed", False):
            handler.stream = handler.console.file = sys.stderr  # not setStream: it flushes the closed one first


@pytest.fixture
def tiny_data(tmp_path) -> TinyData:
    return make_tiny_processed(tmp_path)


@pytest.fixture
def tiny_settings() -> Settings:
    """The real params.yaml, shrunk for tests (see shrink_settings)."""
    return shrink_settings(load_settings(REPO / "params.yaml"))


@pytest.fixture
def untrained_checkpoint(tmp_path, tiny_settings) -> Path:
    """A best.pt-style checkpoint of a seeded, untrained model sized like tiny_settings."""
    import torch

    from models.unet import MultitaskUNet
    from tasks.inference.checkpoints import model_config_for, save_checkpoint

    torch.manual_seed(0)
    cfg = model_config_for(tiny_settings)
    return save_checkpoint(tmp_path / "untrained.pt", model=MultitaskUNet(cfg), optimizer=None, model_config=cfg, epoch=0,
                           best_metric=0.0, metric_name="none", params={}, stage="joint")


@pytest.fixture
def stop_signals(monkeypatch):
    """The entry points' signal handlers (tasks/termination.py) in this process for one test, nothing noted yet; then
    the handlers of before, and nothing the test's signals noted left for the tests after it."""
    import signal

    from tasks import termination

    before = {signum: signal.getsignal(signum) for signum in termination.STOP_SIGNALS}
    monkeypatch.setattr(termination, "_received", [])
    termination.exit_on_sigterm()
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)
