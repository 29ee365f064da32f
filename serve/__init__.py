"""SliceWise serving: REST API and web UI for the registry's champion (`python -m serve`, `make serve`).

    model_source.py  where the model comes from: the MLflow champion (cached by version) or an ONNX file
    served_model.py  the model served: ONNX predictor, input size, modalities, thresholds, from its metadata
    holder.py        the model served right now; polling and reload swap it without a restart
    multipart.py     upload bodies read part by part, with the count and size limits applied as they stream
    uploads.py       uploaded slices → arrays, every bad upload a 4xx naming the problem
    volumes.py       uploaded NIfTI volumes, judged by their header before anything is allocated
    inflate.py       gzip uploads inflated as they are read, member by member, within bounds
    budget.py        the memory budget the requests in flight share
    ood.py           out-of-distribution guard: a warning and a score instead of a confident answer
    inference.py     preprocessing (tasks/data/preprocess.py) → OnnxPredictor → JSON answers
    images.py        arrays → base64 PNG for the answers (input, mask, Grad-CAM overlay)
    explain.py       Grad-CAM on the torch checkpoint, built on first use
    examples.py      the example inputs bundled with the model: listing, prediction, truth
    compare.py       the champion's gate verdict, and the champion beside the latest challenger
    guards.py        body size, Host/Origin checks, the token of state-changing routes
    server.py        uvicorn with header/body deadlines and a connection cap
    api.py           FastAPI routes; static/ holds the web UI
    openapi.py       the upload routes' multipart bodies, described for /docs
    responses.py     JSON answers, validation errors as one sentence, large answers paced to the client
"""
