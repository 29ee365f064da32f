"""Release: ONNX export, the model registry, the promotion gate, the model card, lineage and the summary.

    onnx_export.py   the model to ONNX, checked for parity with torch, with latency figures (export)
    registry.py      the one registry client: versions by number or alias, downloads, verification
    registration.py  gate, log, register, verify and alias a new version (register)
    gate.py          the promotion gate: pure logic on numbers
    model_card.py    the markdown model card of a registry version
    lineage.py       `python -m tasks lineage`: version → run → commit → data → ONNX → Prefect run
    summary.py       `python -m tasks summary`: what `make run` prints at the end
"""
