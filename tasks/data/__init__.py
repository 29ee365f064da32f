"""Data: raw sources (synthetic, local, Kaggle), preprocessing, slicing into shards, splits, training datasets.

    synthetic.py, synthetic_shapes.py   the embedded synthetic BraTS-like and Kaggle-like data (fetch)
    local_import.py, kaggle_download.py  a downloaded BraTS/Kaggle folder; the Kaggle download (fetch)
    brats_files.py                       which file of a raw patient folder is which part
    preprocess.py                        intensities → model inputs: slicing, evaluation and serving share it
    shards.py                            the processed format: one shard per patient + the manifest
    slicing.py                           raw volumes and images → shards (slice)
    splitting.py                         patient-level, leakage-free assignment to train/val/test (split)
    splits.py                            the split lists on disk and the slices they select
    datasets.py, augment.py              what a training stage learns from, and its augmentation
"""
