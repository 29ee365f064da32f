"""A project registered for real, as the web UI serves it: tiny processed data, a raw BraTS test patient, an export
and two runs of the real `register` step (a champion, then a rejected challenger), each carrying its bundled
examples (tasks/release/examples.py)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from tasks import export, paths, register
from tasks.config import Settings
from tasks.data.splits import read_split
from tests.nifti_factory import write_patient
from tests.release_factory import (fresh_mlflow_store, make_release_project, tracked, write_checkpoint,
                                   write_metrics)

VOLUME_SHAPE = (48, 48, 12)


def add_raw_test_patient(root: Path, modalities: tuple[str, ...] = ("flair",)) -> str:
    """The first test patient's raw volumes of `modalities` and segmentation (labels 1/2/4) under data/raw/brats/."""
    patient = read_split("test", root / paths.SPLITS)[0]
    write_patient(root / paths.RAW_BRATS, patient, np.random.default_rng(3), parts=(*modalities, "seg"),
                  shape=VOLUME_SHAPE)
    return patient


@contextlib.contextmanager
def inside(root: Path) -> Iterator[None]:
    """Work in `root` with the project's default MLflow store there (no MLFLOW_TRACKING_URI)."""
    previous, uri = Path.cwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(previous)
        if uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = uri


CHALLENGER_SEED, CHALLENGER_CLS_BIAS = 1, -4.0


def registered_project(root: Path, settings: Settings) -> dict:
    """Champion v1 (passes the gate), challenger v2 (sensitivity 0.5: rejected); call inside(root).

    The challenger is another model, not the champion's file registered again: a checkpoint of another seed whose
    classifier leans to "no tumour" (cls bias CHALLENGER_CLS_BIAS), exported on its own, so what a route answers for
    "the challenger" can be told from the champion's answer. Its ONNX file stays at paths.ONNX_MODEL (exported last)."""
    settings = tracked(settings)
    make_release_project(root, settings)
    patient = add_raw_test_patient(root, tuple(settings.slice.modalities))
    fresh_mlflow_store(root)
    export.main(settings)
    champion = register.main(settings)
    write_checkpoint(root, settings, seed=CHALLENGER_SEED, cls_bias=CHALLENGER_CLS_BIAS)
    # after the checkpoint: it names the weights evaluated; figures of its own, so a page showing the champion's
    # metrics in the challenger's column (or the reverse) is told apart
    write_metrics(root, accuracy=0.75, sensitivity=0.5)
    export.main(settings)
    challenger = register.main(settings)
    return {"settings": settings, "patient": patient, "champion": champion, "challenger": challenger,
            "challenger_onnx": root / paths.ONNX_MODEL}


def registered_copy(source: Path, root: Path, settings: Settings) -> dict:
    """Like registered_project, over another project's trained export (the README's screenshots): its exports,
    joint checkpoint, reports and data (linked, read only) registered into a fresh store under `root`."""
    import json
    import shutil

    settings = tracked(settings)
    for part in (paths.EXPORTS, paths.best_checkpoint("joint"), paths.METRICS, paths.EXPORT_REPORT):
        (root / part).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (source / part).is_dir() else shutil.copyfile
        copy(source / part, root / part)
    for part in (paths.PROCESSED, paths.SPLITS):
        (root / part).parent.mkdir(parents=True, exist_ok=True)
        (root / part).symlink_to((source / part).resolve())
    linked = []
    for patient in read_split("test", source / paths.SPLITS):
        if (source / paths.RAW_BRATS / patient).is_dir():
            (root / paths.RAW_BRATS).mkdir(parents=True, exist_ok=True)
            (root / paths.RAW_BRATS / patient).symlink_to((source / paths.RAW_BRATS / patient).resolve())
            linked.append(patient)
    fresh_mlflow_store(root)
    champion = register.main(settings)
    metrics = json.loads((root / paths.METRICS).read_text())
    metrics["classification"]["sensitivity"] = 0.5  # the same model, reported worse: the gate rejects it
    (root / paths.METRICS).write_text(json.dumps(metrics))
    challenger = register.main(settings)
    return {"settings": settings, "patient": linked[0] if linked else None, "champion": champion,
            "challenger": challenger}
