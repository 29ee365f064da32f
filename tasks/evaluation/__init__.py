"""Evaluation on the test split: predictions scored per slice and per volume, the report, the figures.

    scoring.py  predict a split shard by shard, score the masks per slice and per re-stacked volume
    metrics.py  classification, segmentation, calibration and the patient bootstrap (numbers in, numbers out)
    report.py   reports/metrics.json: threshold from validation, metrics and intervals from test; the figures
    intervals.py  the bootstrap intervals: what is resampled (patients, near-duplicate photos together), and how
    plots.py    the figures and the CSV files of `dvc plots`
    brats.py    WT/TC/ET Dice and HD95 per test patient on the raw volumes (BraTS rules), uncertainty vs errors
    brats_reference.py  the organisers' brats-evaluation package, run in its own virtualenv (.venv-brats)
"""
