"""Benchmarks: each module measures ratios side by side in one run and returns a dict; `python -m bench` runs all."""
