"""SliceWise orchestration with Prefect: one task per DVC stage, DVC decides freshness (see flows/pipeline.py).

`python -m flows run` runs the pipeline once; `python -m flows serve` serves the scheduled deployment.
"""
