"""bench/bench_tumour_free.py: tumour-free brains past the data set, never one a split holds."""

from __future__ import annotations

import pytest


def test_the_bench_refuses_brains_the_data_set_holds():
    """Patient N of the data seed is the data set's patient N: brains numbered within it would be split patients'
    twins (the test ones evaluate already renders, or training ones the model saw with their tumour)."""
    from bench.bench_tumour_free import run
    from tasks.config import load_settings

    active = load_settings().active
    held = active.synthetic_patients + active.synthetic_tumour_free_patients
    with pytest.raises(SystemExit, match=f"the data set holds patients 1 to {held}"):
        run(brains=1, first=held)
