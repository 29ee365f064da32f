"""`fetch`: put raw inputs into data/raw/ in the real data sets' layouts, from one of three sources.

- synthetic: generate the embedded BraTS-like volumes and Kaggle-like images (default; no internet needed)
- local:     import a downloaded BraTS 2020 training folder and a Kaggle yes/no folder (data.brats_dir/kaggle_dir)
- kaggle:    download both data sets with the Kaggle API (resumable), extract safely, then import as local
The result is built next to data/raw and swapped in at the end, so a killed fetch never looks complete.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tasks import paths
from tasks.config import DataSettings, ProfileSettings, Settings
from tasks.errors import SliceWiseError
from tasks.io import staged_folder, write_text_atomic


def fetch_raw(
    data: DataSettings, profile: ProfileSettings, seed: int, out_dir: Path, downloads: Path, workers: int = 1
) -> dict:
    """Fill `out_dir` with `brats/<patient>/` and `kaggle/{yes,no}/` from the configured source."""
    versions: dict = {}
    with staged_folder(out_dir, out_dir.with_name(out_dir.name + ".partial")) as staging:
        brats_out, kaggle_out = staging / "brats", staging / "kaggle"
        if data.source == "synthetic":
            from tasks.data.synthetic import generate_brats
            from tasks.data.synthetic_photos import generate_kaggle

            n_patients = len(generate_brats(brats_out, profile.synthetic_patients, seed, workers=workers,
                                            tumour_free=profile.synthetic_tumour_free_patients))
            kaggle_counts = generate_kaggle(kaggle_out, profile.synthetic_kaggle_images, seed, workers=workers)
        else:
            brats_dir, kaggle_dir, versions = _source_folders(data, downloads)
            from tasks.data.local_import import import_brats, import_kaggle

            n_patients = import_brats(brats_dir, brats_out, profile.patient_fraction, seed)
            kaggle_counts = import_kaggle(kaggle_dir, kaggle_out, profile.patient_fraction, seed) if kaggle_dir else {}
            if versions:  # which versions data/raw holds: `tasks check` compares them with Kaggle's latest
                write_text_atomic(json.dumps(versions, indent=2), staging / paths.KAGGLE_VERSIONS.name)
    result = {"source": data.source, "brats_patients": n_patients, "kaggle_images": kaggle_counts}
    return (result | {"kaggle_versions": versions}) if versions else result


def _source_folders(data: DataSettings, downloads: Path) -> tuple[Path, Path | None, dict]:
    """The BraTS and Kaggle-image folders to import from, and for a Kaggle download the data set versions fetched."""
    if data.source == "kaggle":
        from tasks.data.kaggle_download import BRATS_DATASET, KAGGLE_IMAGES_DATASET, download_dataset

        brats, brats_version = download_dataset(BRATS_DATASET, downloads, data.kaggle_versions.brats)
        images, images_version = download_dataset(KAGGLE_IMAGES_DATASET, downloads, data.kaggle_versions.images)
        return brats, images, {"brats": {"dataset": BRATS_DATASET, "version": brats_version},
                               "images": {"dataset": KAGGLE_IMAGES_DATASET, "version": images_version}}
    if data.brats_dir is None:
        raise SliceWiseError("data.source is 'local' but data.brats_dir is not set", paths.PARAMS)
    return Path(data.brats_dir).expanduser(), Path(data.kaggle_dir).expanduser() if data.kaggle_dir else None, {}


def main(settings: Settings) -> dict:
    started = time.perf_counter()
    result = fetch_raw(
        settings.data, settings.active, settings.seed, paths.RAW, paths.DOWNLOADS, workers=settings.slice.workers
    )
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
