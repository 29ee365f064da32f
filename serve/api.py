"""The REST API and web UI (routes in docs/CONTRACT.md): FastAPI over the model holder.

Route handlers are plain `def`s, so FastAPI runs them in its thread pool and onnxruntime works on several
requests at once. Every problem a client can cause is a 4xx with a JSON `detail` naming it: uploads are
decoded and checked in serve/uploads.py, request bodies are capped before they are read (413), and FastAPI's
own validation errors are rewritten from lists into one sentence.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from serve.holder import ModelHolder
from serve.inference import prepare_slice, slice_results, volume_result
from serve.model_source import ModelSource, ServedModel
from serve.uploads import MB, UploadError, decode_slice, decode_volume
from tasks.config import ServeSettings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
FORM_OVERHEAD = 1 * MB  # multipart boundaries and headers around the files
VOLUME_ROUTE = "/v1/predict/volume"


def body_limits(cfg: ServeSettings) -> dict[str, int]:
    return {
        "/v1/predict": int(cfg.max_slice_mb * MB + FORM_OVERHEAD),
        "/v1/predict/batch": int(cfg.max_slice_mb * MB * cfg.max_batch_files + FORM_OVERHEAD),
        VOLUME_ROUTE: int(cfg.max_volume_mb * MB + FORM_OVERHEAD),
    }


class BodySizeLimit:
    """ASGI middleware: refuse a request body larger than its route allows before it is parsed or spooled.

    Content-Length is checked up front; the bytes actually received are counted too (chunked uploads, or a
    client that lies), and FastAPI turns the HTTPException raised while reading into the 413 answer.
    """

    def __init__(self, app, limits: dict[str, int], default: int = FORM_OVERHEAD):
        self.app = app
        self.limits = limits
        self.default = default

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope["path"].rstrip("/") or "/", self.default)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            response = JSONResponse({"detail": too_large(int(declared), limit)}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, too_large(received, limit))
            return message

        await self.app(scope, counting_receive, send)


def too_large(size: int, limit: int) -> str:
    return f"request body of {size / MB:.1f} MB exceeds this route's limit of {limit / MB:.1f} MB"


def validation_detail(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one sentence a person can act on."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        if error.get("type") == "missing" and error.get("loc", ("",))[0] == "body":
            problems.append(f"missing multipart field '{where}' (send the upload as multipart/form-data)")
        else:
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request"


def read_upload(upload: UploadFile, limit_mb: float) -> bytes:
    """The upload's bytes, reading at most one byte past the limit (decode_* then reports the 413)."""
    return upload.file.read(int(limit_mb * MB) + 1)


def json_response(content) -> Response:
    # Plain json.dumps: faster than FastAPI's encoder walk for answers holding long base64 strings.
    return Response(json.dumps(content, allow_nan=False), media_type="application/json")


def gate_verdict(tags: dict) -> dict | None:
    """The promotion gate's verdict on each criterion (accuracy, sensitivity, slice and volume Dice, parity, ...),
    from the version's tags; None for a model that did not come through the registry."""
    if "promotion" not in tags:
        return None
    try:
        criteria = json.loads(tags.get("promotion_gate", "[]"))
    except ValueError:
        criteria = []
    return {"verdict": tags["promotion"], "reason": tags.get("promotion_reason", ""), "criteria": criteria}


def model_info(holder: ModelHolder, model: ServedModel, cfg: ServeSettings) -> dict:
    return {
        **model.card,
        "gate": gate_verdict(model.card.get("tags", {})),
        "served": {"image_size": model.image_size, "in_channels": model.in_channels,
                   "modalities": list(model.modalities), "threshold": model.threshold,
                   "mask_threshold": model.mask_threshold, "gradcam_checkpoint": model.checkpoint is not None},
        "limits": {"max_slice_mb": cfg.max_slice_mb, "max_volume_mb": cfg.max_volume_mb,
                   "max_batch_files": cfg.max_batch_files, "max_image_side": cfg.max_image_side},
        "ood_threshold": cfg.ood_threshold,
        "detail": holder.detail,
        "last_check": holder.last_check,
    }


def create_app(source: ModelSource, cfg: ServeSettings) -> FastAPI:
    holder = ModelHolder(source)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder.start(cfg.poll_seconds)
        yield
        holder.stop()

    app = FastAPI(title="SliceWise", summary="Brain-tumour MRI slice classification and segmentation",
                  lifespan=lifespan)
    app.state.holder = holder
    app.add_middleware(BodySizeLimit, limits=body_limits(cfg))

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc)}, status_code=422)

    def served_model() -> ServedModel:
        model = holder.model  # read once: a concurrent swap must not change the model mid-request
        if model is None:
            raise HTTPException(503, holder.detail)
        return model

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness: the process answers. `model_loaded` and `detail` say what it serves (or why nothing)."""
        model = holder.model  # read once: a reload may swap it meanwhile
        card = model.card if model else {}
        return {"status": "ok", "model_loaded": model is not None, "detail": holder.detail,
                "version": card.get("version")}

    @app.get("/model/info")
    def info() -> dict:
        """Name, version, alias, metrics and lineage tags of the model being served."""
        return model_info(holder, served_model(), cfg)

    @app.post("/model/reload")
    def reload() -> dict:
        """Check the registry now (the poller does it every `serve.poll_seconds`) and load a changed champion."""
        result = holder.refresh()
        return {**result, "detail": holder.detail}

    @app.post("/v1/predict")
    def predict(file: UploadFile = File(..., description="PNG, JPEG or NPY slice"),
                gradcam: bool = Query(False, description="add a Grad-CAM overlay of the classification")) -> Response:
        model = served_model()
        name = file.filename or "upload"
        decoded = decode_slice(read_upload(file, cfg.max_slice_mb), name, cfg.max_slice_mb, cfg.max_image_side)
        prepared = prepare_slice(decoded, model, name, cfg.ood_threshold)
        return json_response(slice_results(model, [prepared], cfg.ood_threshold, gradcam)[0])

    @app.post("/v1/predict/batch")
    def predict_batch(files: list[UploadFile] = File(..., description="up to serve.max_batch_files slices")) -> Response:
        model = served_model()
        if len(files) > cfg.max_batch_files:
            raise UploadError(413, f"too many files: {len(files)}; at most {cfg.max_batch_files} per batch")
        prepared = []
        for index, upload in enumerate(files):
            name = upload.filename or f"files[{index}]"
            decoded = decode_slice(read_upload(upload, cfg.max_slice_mb), name, cfg.max_slice_mb, cfg.max_image_side)
            prepared.append(prepare_slice(decoded, model, name, cfg.ood_threshold))
        return json_response(slice_results(model, prepared, cfg.ood_threshold))

    @app.post(VOLUME_ROUTE)
    def predict_volume(file: UploadFile = File(..., description=".nii or .nii.gz FLAIR volume"),
                       images: bool = Query(False, description="add every slice and its mask as PNG (web UI)")) -> Response:
        model = served_model()
        name = file.filename or "volume.nii.gz"
        volume, image = decode_volume(read_upload(file, cfg.max_volume_mb), name, cfg.max_volume_mb)
        return json_response(volume_result(volume, image, model, name, cfg.ood_threshold, images))

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
