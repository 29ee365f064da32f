"""Release: ONNX export, the model registry, the promotion gate, the model card, lineage and the summary.

    onnx_export.py   the model to ONNX, checked for parity with torch, with latency figures (export), over:
    onnx_checks.py     parity with torch on the test slices, latency of both engines
    examples.py      the example inputs bundled with a registered model for the UI
    registry.py      the one registry client: versions by number or alias, downloads, verification
    registration.py  gate, log, register, verify and alias a new version (register), over:
    release_files.py   what a release is, read from the files the earlier steps wrote, checked to be one model
    champion.py        the champion's accuracy, comparable with the new model's
    versions.py        the logged model and its registry version: created once, verified, removed on failure
    gate.py          the promotion gate: pure logic on numbers
    model_card.py    the markdown model card of a registry version
    lineage.py       `python -m tasks lineage`: version → run → commit → data → ONNX → Prefect run
    summary.py       `python -m tasks summary`: what `make run` prints at the end
"""
