"""Example inputs bundled with every registered model, so a newcomer can try the served model without a file.

`register` calls `bundle_examples`, which packs into one `examples.zip` (logged as an extra file of the model,
so `models:/<name>@champion` carries it and serving downloads it with the model):

- a handful of TEST-split slices exactly as the model was evaluated on them (float32 (C, S, S) `.npy` from the
  processed shards), some with tumour (large, medium, small) and some without, each with its truth mask;
- one out-of-distribution image: a generated colour photograph (sky, sun, grass, a house). A phone photo is the
  wrong upload people most often try, and it shows the OOD guard at work (no decision, a warning saying why).
  It is generated here, so no third-party picture with unknown licence ships with the model;
- one TEST-split patient volume: its raw NIfTI files under data/raw/brats/<patient>/ for the modalities the
  model reads (FLAIR at least) and its segmentation, for the truth overlay. The test patient with the largest
  tumour among those with raw files; none when no raw BraTS files exist (e.g. Kaggle-only data).

Nothing ever comes from the training or validation split. `index.json` in the archive lists the examples:
    {"format": 1, "examples": [{"id", "kind": "slice" | "volume", "title", "file" | "files": {modality: file},
      "truth": file | null, "patient", "slice_index", "label", "expected"}]}
serve/examples.py reads it.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tasks.data.brats_files import find_part, nifti_extension
from tasks.data.shards import read_shard
from tasks.data.splits import read_split, split_rows
from tasks.errors import SliceWiseError
from tasks.release.registry import EXAMPLES_ARCHIVE

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
FORMAT = 1
TUMOUR_SLICES = 3
CLEAR_SLICES = 2
PHOTO_SIZE = 160


def spread(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """`n` rows evenly spread over `rows` (in their order), from different patients where possible."""
    if rows.empty or n <= 0:
        return rows.iloc[:0]
    firsts = rows.drop_duplicates("patient")
    pool = firsts if len(firsts) >= n else rows
    positions = np.unique(np.linspace(0, len(pool) - 1, n).round().astype(int))
    return pool.iloc[positions]


def pick_test_slices(processed: Path, splits_dir: Path, tumour: int = TUMOUR_SLICES,
                     clear: int = CLEAR_SLICES) -> pd.DataFrame:
    """Test-split slices with a known mask: `tumour` with tumour (largest to smallest, one per patient where
    possible), `clear` without (central slices).
    Kaggle photos (no mask) only when the test split holds no BraTS slice."""
    rows = split_rows(processed, read_split("test", splits_dir))
    masked = rows[rows["has_mask"].astype(bool)]
    rows = masked if not masked.empty else rows
    with_tumour = rows[rows["label"] == 1].sort_values(["tumour_area_px", "patient", "row"],
                                                       ascending=[False, True, True])
    # Slices without tumour nearest the middle of their patient's volume: a full brain, not its top or bottom.
    centre = rows.groupby("patient")["slice_index"].transform("median")
    without = rows.assign(off_centre=(rows["slice_index"] - centre).abs())
    without = without[without["label"] == 0].sort_values(["off_centre", "patient", "row"])
    return pd.concat([spread(with_tumour, tumour), spread(without, clear).drop(columns="off_centre")])


def write_slice_examples(rows: pd.DataFrame, processed: Path, out: Path) -> list[dict]:
    entries, shards = [], {}
    for n, row in enumerate(rows.itertuples(index=False)):
        if row.shard not in shards:  # each shard read once, however many examples it gives
            shards[row.shard] = read_shard(processed / row.shard)
        shard = shards[row.shard]
        kind = "tumour" if row.label == 1 else "clear"
        example_id = f"slice-{n + 1}-{kind}"
        np.save(out / f"{example_id}.npy", np.asarray(shard.images[row.row], dtype=np.float32))
        truth = None
        if bool(row.has_mask):
            truth = f"{example_id}_truth.png"
            Image.fromarray((shard.masks[row.row] > 0).astype(np.uint8) * 255).save(out / truth)
        where = f"{row.patient}, slice {row.slice_index}" if row.slice_index >= 0 else row.patient
        # the truth's area, named as such: the answer shows the predicted area beside it
        title = (f"tumour (truth: {row.tumour_area_px} px)" if row.label == 1 else "no tumour") + f" · {where}"
        entries.append({"id": example_id, "kind": "slice", "title": title, "file": f"{example_id}.npy",
                        "truth": truth, "patient": row.patient, "slice_index": int(row.slice_index),
                        "label": int(row.label), "expected": kind})
    return entries


def colour_photo(size: int = PHOTO_SIZE) -> np.ndarray:
    """A deterministic (size, size, 3) uint8 'holiday photo': blue sky, yellow sun, green grass, a red house."""
    yy, xx = np.mgrid[:size, :size] / size
    sky = np.stack([90 + 80 * yy, 150 + 60 * yy, 235 - 20 * yy], axis=-1)
    image = np.where((yy > 0.62)[..., None], np.stack([60 + 40 * xx, 150 + 30 * yy, 50 + 0 * xx], axis=-1), sky)
    image[(yy - 0.2) ** 2 + (xx - 0.78) ** 2 < 0.08 ** 2] = (250, 215, 60)
    image[(yy > 0.42) & (yy < 0.7) & (xx > 0.18) & (xx < 0.45)] = (190, 50, 40)
    image[(yy > 0.55) & (yy < 0.7) & (xx > 0.27) & (xx < 0.34)] = (90, 60, 30)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_ood_example(out: Path) -> dict:
    Image.fromarray(colour_photo()).save(out / "ood-photo.png")
    return {"id": "ood-photo", "kind": "slice", "title": "out of distribution · a colour photograph",
            "file": "ood-photo.png", "truth": None, "patient": None, "slice_index": -1, "label": None,
            "expected": "out of distribution"}


def raw_file(folder: Path, part: str) -> Path | None:
    """The patient's NIfTI file of one modality (or `seg`), or None when it has none."""
    try:
        return find_part(folder, part)
    except SliceWiseError:
        return None


def write_volume_example(processed: Path, splits_dir: Path, raw_brats: Path, modalities: tuple[str, ...],
                         out: Path) -> dict | None:
    """The test patient with the largest tumour whose raw FLAIR (and other modalities) are on disk, or None."""
    rows = split_rows(processed, read_split("test", splits_dir))
    rows = rows[rows["source"] == "brats"]
    order = rows.groupby("patient")["tumour_area_px"].sum().sort_values(ascending=False, kind="stable")
    wanted = ("flair",) + tuple(m for m in modalities if m != "flair")
    for patient in order.index:
        folder = raw_brats / patient
        if not folder.is_dir():
            continue
        files = {m: raw_file(folder, m) for m in wanted}
        if any(f is None for f in files.values()):
            continue
        names = {}
        for modality, path in files.items():
            names[modality] = f"{patient}_{modality}{nifti_extension(path)}"
            shutil.copyfile(path, out / names[modality])
        seg = raw_file(folder, "seg")
        truth = None
        if seg is not None:
            truth = f"{patient}_seg{nifti_extension(seg)}"
            shutil.copyfile(seg, out / truth)
        return {"id": f"volume-{patient}", "kind": "volume", "title": f"patient volume · {patient}",
                "files": names, "truth": truth, "patient": patient, "slice_index": -1, "label": None,
                "expected": "tumour" if order[patient] > 0 else "clear"}
    log.warning("register: no test patient has raw NIfTI files under %s; the examples hold no volume", raw_brats)
    return None


def bundle_examples(processed: Path, splits_dir: Path, raw_brats: Path, modalities: tuple[str, ...],
                    folder: Path) -> Path:
    """Write the examples into `folder` and pack them as `folder/examples.zip`; returns the archive."""
    content = folder / "examples"
    content.mkdir(parents=True, exist_ok=True)
    entries = write_slice_examples(pick_test_slices(processed, splits_dir), processed, content)
    entries.append(write_ood_example(content))
    volume = write_volume_example(processed, splits_dir, raw_brats, tuple(modalities), content)
    if volume is not None:
        entries.append(volume)
    (content / INDEX_FILE).write_text(json.dumps({"format": FORMAT, "examples": entries}, indent=2))
    archive = folder / EXAMPLES_ARCHIVE
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(content.iterdir()):
            zf.write(path, path.name)
    log.info("register: bundled %d examples (%s)", len(entries), ", ".join(e["id"] for e in entries))
    return archive
