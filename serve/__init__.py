"""SliceWise serving: REST API and web UI for the registry's champion (`python -m serve`, `make serve`).

    model_source.py  where the model comes from: the MLflow champion (cached by version) or an ONNX file
    holder.py        the model served right now; polling and reload swap it without a restart
    uploads.py       uploaded bytes → arrays, every bad upload a 4xx naming the problem
    ood.py           out-of-distribution guard: a warning and a score instead of a confident answer
    inference.py     preprocessing (tasks/data/preprocess.py) → OnnxPredictor → JSON answers
    explain.py       Grad-CAM on the torch checkpoint, built on first use
    api.py           FastAPI routes; static/ holds the web UI
"""
