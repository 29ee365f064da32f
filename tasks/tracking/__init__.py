"""Tracking: the tracker hook every step logs through, MLflow behind it, and the lineage tags.

Plumbing: nothing here changes what a step writes into its outputs, so tests/test_dvc_deps.py needs no stage
to list it; register lists it all the same, its output being the registry itself.

    tracker.py      the Tracker protocol, NullTracker, and `tracked_step` that opens and ends a step's run
    mlflow_runs.py  the MLflow tracker: one parent run per pipeline run, a child run per step
    store.py        the MLflow store: its URI, retries with backoff, a client
    provenance.py   git commit, params and data hashes, Prefect flow run: the tags of runs and versions
"""
