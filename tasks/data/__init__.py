"""Data: raw sources (synthetic, local, Kaggle), preprocessing, slicing into shards, splits, training datasets.

    synthetic.py, synthetic_shapes.py   the embedded synthetic BraTS-like patients (fetch)
    synthetic_photos.py                  the embedded synthetic Kaggle-like photos, cut from such patients (fetch)
    local_import.py, kaggle_download.py  a downloaded BraTS/Kaggle folder; the Kaggle download (fetch)
    brats_files.py                       which file of a raw patient folder is which part; file names as text
    preprocess.py                        intensities → model inputs: slicing, evaluation and serving share it
    shards.py                            the processed format: one shard per patient + the manifest
    slicing.py                           raw volumes and images → shards (slice)
    photo_slicing.py                     the Kaggle photos → one shard per class (slice)
    splitting.py                         patient-level, leakage-free assignment to train/val/test (split)
    splits.py                            the split lists on disk and the slices they select
    datasets.py                          what a training stage learns from, streamed from the shards
    batch_sampling.py, loaders.py        which samples make each batch; the DataLoaders that read and augment them
    augment.py, modality_dropout.py      the augmentation, and the modalities blanked in training
"""
