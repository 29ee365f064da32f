"""The REST API and web UI (routes in docs/CONTRACT.md): FastAPI over the model holder.

Every problem a client can cause is a 4xx with a JSON `detail` naming it, and no upload can take more memory
than it is granted:
- the body is capped before it is read (413, serve/guards.py) and read as it streams in, part by part, with the
  file count and each file's size checked on the way (serve/multipart.py);
- an upload's cost is judged from its header (image size, NIfTI dims and dtype: serve/uploads.py,
  serve/volumes.py) and reserved from the memory budget shared by all requests in flight (serve/budget.py)
  before it is decoded;
- decoding and inference run in the thread pool, so onnxruntime works on several requests at once;
- Host/Origin checks and the token of state-changing routes are serve/guards.py's; FastAPI's own validation
  errors are rewritten from lists into one sentence.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable

import anyio
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from serve.budget import MemoryBudget
from serve.compare import comparison, find_challenger, gate_verdict
from serve.examples import find_example, listing, predict_slice_example, volume_uploads, with_volume_truth
from serve.explain import gradcam_unavailable
from serve.guards import BodySizeLimit, HostOriginGuard, SecurityHeaders, admin_router, admin_token
from serve.holder import ModelHolder
from serve.inference import (PreparedSlice, inference_bytes, prepare_slice, slice_results, volume_output_bytes,
                             volume_result)
from serve.model_source import ModelSource
from serve.multipart import FilePart, close_parts, read_file_parts
from serve.openapi import VOLUME_FIELDS, multipart_body, volume_body
from serve.responses import PacedAnswer, json_response, validation_detail
from serve.served_model import ServedModel
from serve.uploads import (FILE_FAULTS, HEAD_BYTES, MB, FileFault, UploadError, batch_refusal, decode_slice,
                           slice_memory_bytes)
from serve.volumes import VolumeUpload, probe_volume, read_volume
from tasks.config import ServeSettings
from tasks.data.orientation import Orientation
from tasks.data.volumes import affine_mm, same_grid
from tasks.inference.photo_decisions import photo_refusal
from tasks.inference.volume import NO_TTA

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
FORM_OVERHEAD = 1 * MB  # multipart boundaries and headers around the files
VOLUME_ROUTE = "/v1/predict/volume"
LIMITS = ("max_slice_mb", "max_volume_mb", "max_voxels", "max_slices", "max_batch_files", "max_image_side",
          "memory_budget_mb")  # shown by /model/info


def body_limits(cfg: ServeSettings) -> dict[str, tuple[int, str]]:
    """Each upload route's body limit in bytes, and what it takes in the settings' terms (the 413's words)."""
    return {
        "/v1/predict": (int(cfg.max_slice_mb * MB + FORM_OVERHEAD),
                        f"one file of at most {cfg.max_slice_mb:g} MB (serve.max_slice_mb)"),
        "/v1/predict/batch": (int(cfg.max_slice_mb * MB * cfg.max_batch_files + FORM_OVERHEAD),
                              f"at most {cfg.max_batch_files} files of {cfg.max_slice_mb:g} MB each "
                              "(serve.max_batch_files, serve.max_slice_mb)"),
        VOLUME_ROUTE: (int(cfg.max_volume_mb * MB + FORM_OVERHEAD),
                       f"volumes of at most {cfg.max_volume_mb:g} MB in all (serve.max_volume_mb)"),
    }


def check_same_grid(uploads: list[VolumeUpload], main: VolumeUpload) -> None:
    """Modalities sent as separate files must share the main one's grid: same spatial shape and affine."""
    reference = affine_mm(main.header.image.header, main.header.image.affine)
    for upload in uploads:
        image, shape = upload.header.image, upload.header.shape[:3]
        if shape != main.header.shape[:3]:
            raise UploadError(422, f"{upload.header.name}: shape {list(shape)} differs from {main.header.name}'s "
                                   f"{list(main.header.shape[:3])}; the modalities must be co-registered on one grid")
        if not same_grid(affine := affine_mm(image.header, image.affine), reference):
            # the shapes agree: say what does not (another orientation, voxel size or position), not "shape and affine"
            raise UploadError(422, f"{upload.header.name}: same shape, but another affine than {main.header.name}'s "
                                   f"(orientation {axis_codes(affine)} against {axis_codes(reference)}, voxel "
                                   "size or position); the modalities must be co-registered on one grid")


def axis_codes(affine) -> str:
    """The stored axes' codes, e.g. "LPS" (each upload's affine was checked to name three when it was probed)."""
    return "".join(Orientation.of(affine).stored_axes)


def model_info(model: ServedModel, detail: str, last_check: float | None, cfg: ServeSettings) -> dict:
    gradcam_reason = gradcam_unavailable(model)  # a checkpoint of another run, or no torch: `gradcam=true` is a 409
    return {
        **model.card,
        "gate": gate_verdict(model.card.get("tags", {})),
        "served": {"image_size": model.image_size, "in_channels": model.in_channels,
                   "modalities": list(model.modalities), "regions": list(model.regions),
                   "threshold": model.threshold, "lone_slice_threshold": model.slice_threshold,
                   "slice_score": model.predictor.slice_score, "slices_in_volume": model.slices_in_volume,
                   "mask_threshold": model.mask_threshold, "gradcam_checkpoint": gradcam_reason is None,
                   "gradcam_unavailable": gradcam_reason},
        "limits": {key: getattr(cfg, key) for key in LIMITS},
        "ood_threshold": cfg.ood_threshold,
        "photo_decisions": photo_decisions(model, cfg.min_photo_accuracy),
        "detail": detail,
        "last_check": last_check,
    }


def photo_decisions(model: ServedModel, min_accuracy: float | None) -> dict:
    """Whether photos (8-bit PNG/JPEG) get a tumour decision from this model, and the figures that settle it."""
    record = model.photos
    refusal = photo_refusal(record, min_accuracy)
    return {"given": refusal is None, "reason": refusal, "min_accuracy": min_accuracy,
            "test_accuracy": record.accuracy if record else None, "test_photos": record.photos if record else 0,
            "ci95": list(record.ci95) if record and record.ci95 else None}


MODEL_HEADER = "X-SliceWise-Model"


def answered_by(model: ServedModel, response: Response) -> Response:
    """`response` with a header naming the model that computed it (`slicewise/11`, or the served file's name and the
    start of its sha256: a file replaced by a new export keeps its name): the champion may change between two
    requests, and the JSON does not say which one answered."""
    card = model.card
    response.headers[MODEL_HEADER] = (f"{card['name']}/{card['version']}" if card.get("source") == "registry"
                                      else f"file {card.get('name')}@{file_digest_prefix(card)}")
    return response


def file_digest_prefix(card: dict) -> str:
    """What names one served file's content in the model header (the web UI's servedTag builds the same)."""
    return str((card.get("tags") or {}).get("onnx_sha256", ""))[:12]


SPARE_THREADS = 8  # worker threads beyond one per allowed request: the page, its static files, /model/info


def create_app(source: ModelSource, cfg: ServeSettings, bind_host: str | None = None,
               token: str | None = None) -> FastAPI:
    """The app serving `source`. `bind_host` (default `serve.host`) decides the Host check and whether the
    state-changing routes exist without a token; `token` defaults to SLICEWISE_ADMIN_TOKEN."""
    holder = ModelHolder(source)
    budget = MemoryBudget(cfg.memory_budget_mb * MB, cfg.queue_seconds)
    bind_host = bind_host or cfg.host
    token = token if token is not None else admin_token()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # A request waiting for its share of the memory budget waits in a worker thread. With anyio's default 40
        # threads, 40 such waits stalled every other route, the page itself (GET / took 14.6 s): as many threads as
        # the requests serve.max_connections lets in, and some over for the page and its files.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, cfg.max_connections + SPARE_THREADS)
        holder.start(cfg.poll_seconds)
        yield
        holder.stop()

    app = FastAPI(title="SliceWise", summary="Brain-tumour MRI slice classification and segmentation",
                  lifespan=lifespan)
    app.state.holder = holder
    app.state.budget = budget
    app.add_middleware(BodySizeLimit, limits=body_limits(cfg), default=FORM_OVERHEAD)
    app.add_middleware(HostOriginGuard, bind_host=bind_host, allowed_hosts=cfg.allowed_hosts)
    app.add_middleware(SecurityHeaders)  # added last, so outermost: the guards' own refusals carry the headers too

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc)}, status_code=422)

    def served_model_and_detail() -> tuple[ServedModel, str]:
        model, detail = holder.view()  # read once: a concurrent swap must not change the model mid-request
        if model is None:
            raise HTTPException(503, detail)
        return model, detail

    def served_model() -> ServedModel:
        return served_model_and_detail()[0]

    def prepared(part: FilePart, model: ServedModel, holding: bool = False) -> PreparedSlice:
        """One uploaded slice, decoded and prepared within its share of the memory budget (a worker thread).
        `holding`: the request holds part of the budget already (a batch's earlier files)."""
        name = part.filename or part.field
        part.file.seek(0)
        need = slice_memory_bytes(part.file.read(HEAD_BYTES), part.size, name, cfg.max_image_side, part.file)
        with budget.reserve(need, name, holding):
            decoded = decode_slice(part.read(), name, cfg.max_slice_mb, cfg.max_image_side)
            return prepare_slice(decoded, model, name, cfg.ood_threshold)

    def predicted(model: ServedModel, items: list[PreparedSlice | FileFault], gradcam: bool = False,
                  one: bool = False, inputs_held: int = 0) -> Response:
        """Inference on prepared slices and its JSON answer, within a share of the memory budget (a worker thread):
        one answer per item, in order, a file that could not be read answering with its error.
        `inputs_held`: what the caller already holds of the budget for the prepared inputs, which the estimate
        counts too."""
        slices = [item for item in items if isinstance(item, PreparedSlice)]
        need = inference_bytes(model, len(slices)) * (2 if gradcam else 1)
        with budget.reserve(max(need - inputs_held, 0), slices[0].name, holding=inputs_held > 0):
            results = iter(slice_results(model, slices, cfg.ood_threshold, cfg.min_photo_accuracy, gradcam))
            answers = [next(results) if isinstance(item, PreparedSlice) else item.answer() for item in items]
            return answered_by(model, json_response(answers[0] if one else answers))

    # HEAD: what many load balancers' health checks send. `async`: it runs on the event loop, never queued behind
    # volume requests that hold every worker thread while they wait for the memory budget (a probe would time out
    # and restart a server that is only busy).
    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> dict:
        """Liveness: the process answers. `model_loaded` and `detail` say what it serves (or why nothing)."""
        model, detail = holder.view()  # read once: a reload may swap it meanwhile
        card = model.card if model else {}
        return {"status": "ok", "model_loaded": model is not None, "detail": detail,
                "version": card.get("version")}

    @app.get("/model/info")
    def info() -> dict:
        """Name, version, alias, metrics and lineage tags of the model being served."""
        model, detail = served_model_and_detail()  # the pair as one: a swap between two reads would mix them
        return model_info(model, detail, holder.last_check, cfg)

    admin = admin_router(token, bind_host)
    if admin is None:
        log.warning("POST /model/reload is off: this server is reachable beyond localhost and no token is set "
                    "(set %s to enable it); the registry is still polled every %g s", "SLICEWISE_ADMIN_TOKEN",
                    cfg.poll_seconds)
    else:
        @admin.post("/model/reload")
        def reload() -> JSONResponse:
            """Check the registry now (the poller does it every `serve.poll_seconds`) and load a changed champion.
            A check that failed is a 503 (a script must not read "changed: false" as "nothing new")."""
            result = holder.refresh()
            return JSONResponse({**result, "detail": holder.detail}, status_code=503 if "error" in result else 200)

        app.include_router(admin)

    @app.post("/v1/predict", openapi_extra=multipart_body("file", "PNG, JPEG or NPY slice"))
    async def predict(request: Request, gradcam: bool = Query(False, description="add a Grad-CAM overlay of the "
                                                                                 "classification")) -> Response:
        model = served_model()
        parts = await read_file_parts(request, "file", 1, cfg.max_slice_mb, "request (use "
                                      "/v1/predict/batch for several)")
        try:
            item = await run_in_threadpool(prepared, parts[0], model)
        finally:
            close_parts(parts)
        return await run_in_threadpool(predicted, model, [item], gradcam, True)

    @app.post("/v1/predict/batch", openapi_extra=multipart_body(
        "files", "up to serve.max_batch_files slices", many=True))
    async def predict_batch(request: Request, gradcam: bool = Query(False, description="add a Grad-CAM overlay of "
                                                                                       "each slice's classification")
                            ) -> Response:
        """One answer per file, in upload order. A file that cannot be read (413, 415, 422) answers in its place
        with `{"filename", "error", "status"}` and the others are still predicted; when none can be read the
        request fails with that reason."""
        model = served_model()
        items: list[PreparedSlice | FileFault] = []
        held = 0  # the prepared inputs wait for the rest of the body (up to serve.body_timeout_seconds): budgeted

        async def on_file(part: FilePart) -> None:  # decoded while the next file streams in
            nonlocal held
            name = part.filename or part.field
            try:
                held += await run_in_threadpool(budget.acquire, model.in_channels * model.image_size ** 2 * 4, name,
                                                held > 0)
                items.append(await run_in_threadpool(prepared, part, model, held > 0))
            except UploadError as exc:  # one unreadable file answers in its place; the others are still predicted
                if exc.status_code not in FILE_FAULTS:
                    raise
                items.append(FileFault(name, exc.status_code, exc.detail))
            finally:
                close_parts([part])

        try:
            await read_file_parts(request, "files", cfg.max_batch_files, cfg.max_slice_mb, "batch", on_file)
            if not any(isinstance(item, PreparedSlice) for item in items):
                raise batch_refusal(items)
            return await run_in_threadpool(predicted, model, items, gradcam, False, held)
        finally:
            budget.release(held)

    @app.post(VOLUME_ROUTE, openapi_extra=volume_body())
    async def predict_volume(request: Request, images: bool = Query(
            False, description="add every slice, its masks and its uncertainty as PNG (web UI)"), tta: bool = Query(
            False, description="flip test-time augmentation (the flips of serve.tta_flips, in one batched run)")
    ) -> Response:
        model = served_model()
        parts = await read_file_parts(request, VOLUME_FIELDS, len(VOLUME_FIELDS), cfg.max_volume_mb, "request")
        return await volume_answer(parts, model, images, tta, json_response)

    async def volume_answer(parts: list[FilePart], model: ServedModel, with_images: bool, tta: bool,
                            finish: Callable[[dict], Response]) -> Response:
        """The volume route's answer for `parts` (closed here), `finish` making the response of the answer dict.
        Serialised in a worker thread, within the reservation: a volume answer is megabytes of JSON. Its bytes stay
        budgeted until they are sent (a client that reads slowly holds them that long)."""
        try:
            response, sending = await run_in_threadpool(predict_volume_files, parts, model, with_images, tta, finish)
        finally:
            close_parts(parts)
        return PacedAnswer(response, lambda: budget.release(sending), cfg.answer_timeout_seconds)

    def predict_volume_files(parts: list[FilePart], model: ServedModel, with_images: bool, tta: bool,
                             finish: Callable[[dict], Response]) -> tuple[Response, int]:
        """Judge every header, reserve what the volumes cost together, decode, predict, answer (a worker thread).
        The answer becomes its response within the reservation, and the part of the budget its body takes stays
        held: (response, bytes held), for the caller to release once it is sent."""
        fields = [part.field for part in parts]
        if len(set(fields)) < len(fields) or ("file" in fields and len(fields) > 1):
            raise UploadError(422, f"volume fields {fields}: send `file` alone, or each of flair, t1, t1ce, t2 "
                                   "at most once")
        if not {"file", "flair"} & set(fields):
            raise UploadError(422, f"no FLAIR volume among {fields}: send `file` (FLAIR, or a 4D volume of the "
                                   "model's modalities) or `flair`, with any of t1, t1ce, t2")
        unused = sorted((p for p in parts if p.field not in ("file", *model.modalities)), key=lambda p: p.field)
        if unused:  # named before anything is decoded: the files the model has no channel for
            raise UploadError(422, f"{', '.join(p.filename or p.field for p in unused)}: the served model takes "
                                   f"{', '.join(model.modalities)}; it has no channel for "
                                   f"{', '.join(p.field for p in unused)}")
        probed = []
        for part in parts:
            channels = model.in_channels if part.field == "file" else 1
            probed.append(probe_volume(part.file, part.filename or part.field, cfg.max_volume_mb, cfg.max_voxels,
                                       cfg.max_slices, channels))
        main = probed[fields.index("file" if "file" in fields else "flair")]
        check_same_grid(probed, main)
        spatial = main.header.voxels // main.header.channels
        need = sum(u.header.memory_bytes(model.image_size, first=u is main) for u in probed) \
            + inference_bytes(model, main.header.axial_shape[2]) + volume_output_bytes(model, spatial)
        held, kept = budget.acquire(need, main.header.name), 0
        try:
            uploads, image = {}, None
            for part, upload in zip(parts, probed):
                volume, read_image = read_volume(upload)
                if upload is main:
                    image = read_image
                if volume.ndim == 4:  # one 4D volume: its channels are the model's modalities, in order
                    uploads |= {m: volume[..., c] for c, m in enumerate(model.modalities)}
                else:
                    uploads["flair" if part.field == "file" else part.field] = volume
            flips = cfg.tta_flips if tta else NO_TTA
            answer = volume_result(uploads, image, model, main.header.name, cfg.ood_threshold, with_images, flips)
            response = answered_by(model, finish(answer))
            kept = min(len(response.body), held)  # what stays in memory until it is sent
            return response, kept
        finally:
            budget.release(held - kept)

    @app.get("/v1/examples")
    def examples() -> dict:
        """The served model's bundled examples (test-split slices with truth, an out-of-distribution photo, one
        test patient volume), each with an id for POST /v1/examples/{id}/predict and a thumbnail."""
        return listing(served_model())

    @app.post("/v1/examples/{example_id}/predict")
    async def predict_example(example_id: str, images: bool = Query(
            True, description="volume examples: add every slice, its overlays and the truth as PNG"),
            gradcam: bool = Query(False, description="slice examples: add a Grad-CAM overlay, as /v1/predict does")
            ) -> Response:
        """The /v1/predict (or /v1/predict/volume) answer for one example, plus the truth overlay when known."""
        model = served_model()
        entry = find_example(model, example_id)
        if entry["kind"] != "volume":
            return await run_in_threadpool(predicted_example, model, entry, gradcam)
        parts = [FilePart(field, name, open(path, "rb"), path.stat().st_size)
                 for field, name, path in volume_uploads(entry, model.examples, model.modalities)]
        # the volume route's own handler, as if the example's files had been uploaded, plus the truth
        return await volume_answer(parts, model, images, False,
                                   lambda answer: json_response(with_volume_truth(answer, model, entry)))

    def predicted_example(model: ServedModel, entry: dict, gradcam: bool = False) -> Response:
        with budget.reserve(inference_bytes(model, 1) * (2 if gradcam else 1), entry["id"]):
            answer = predict_slice_example(model, entry, cfg, gradcam)
            return answered_by(model, json_response(answer))

    @app.get("/model/compare")
    def compare() -> Response:
        """The champion beside the latest challenger: metrics with intervals, gate verdicts, lineage, and the
        champion's example slices predicted by both."""
        model = served_model()
        # The registry first, holding no budget: a slow store must not keep uploads waiting for memory it never uses.
        found, detail = find_challenger(holder.source, model.card.get("version"))
        need = inference_bytes(model, 1) + (inference_bytes(found[1], 1) if found else 0)  # each model's own size
        with budget.reserve(need, "model comparison"):
            return answered_by(model, json_response(comparison(model, found, detail, cfg)))

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
