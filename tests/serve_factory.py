"""Tiny real inputs for the serving tests: an ONNX model with the exported model's names, a torch checkpoint for
Grad-CAM, MRI-like slices and volumes in real file formats, and an MLflow registry in a temporary folder.

The ONNX model is a transparent stand-in for the trained network, so tests can know the right answer:
a pixel is tumour where its z-scored intensity exceeds BRIGHT_Z, a slice where any pixel does.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LOCAL_BASE_URL = "http://localhost"  # what a browser on this machine names: TestClient's "testserver" is refused


def local_client(app, base_url: str = LOCAL_BASE_URL, **kwargs):
    """fastapi's TestClient naming the server as a browser on this machine does. Its default Host, 'testserver',
    is a name the server refuses like any foreign one (serve/guards.py: the DNS-rebinding check)."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=base_url, **kwargs)
SIZE = 32
BRIGHT_Z = 1.5
THRESHOLD = 0.5


class BrightRegionNet(torch.nn.Module):
    """seg_logits = 6 (x - 1.5) per pixel; cls_logits = 6 (max x - 1.5): bright regions are 'tumour'.

    The per-pixel gain (all 6) is a weight tensor, so the graph has an initializer large enough for MLflow to
    store it as ONNX external data, as it does with a real model's weights.
    """

    def __init__(self, size: int = SIZE):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.full((1, 1, size, size), 6.0), requires_grad=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg = self.gain * (image[:, :1] - BRIGHT_Z)
        cls = 6.0 * (image.amax(dim=(1, 2, 3)) - BRIGHT_Z)
        return seg, cls


class BrightRegionsNet(torch.nn.Module):
    """Four modalities, three regions: region r (WT, TC, ET) is where channel r (FLAIR, T1, T1ce) is bright, as
    BrightRegionNet decides it; the slice is tumour where FLAIR is. Not flip-equivariant it needs not be: it is."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg = 6.0 * (image[:, :3] - BRIGHT_Z)
        cls = 6.0 * (image[:, 0].amax(dim=(1, 2)) - BRIGHT_Z)
        return seg, cls


def export_regions_onnx(path: Path, size: int = SIZE, with_metadata: bool = True) -> Path:
    """BrightRegionsNet as ONNX: 4 input channels (flair, t1, t1ce, t2), seg_logits (N, 3, H, W)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(BrightRegionsNet().eval(), (torch.zeros(1, 4, size, size),), str(path), opset_version=17,
                      dynamo=False, input_names=["image"], output_names=["seg_logits", "cls_logits"],
                      dynamic_axes={n: {0: "batch"} for n in ("image", "seg_logits", "cls_logits")})
    if with_metadata:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, {"slicewise": json.dumps({
            "image_size": size, "modalities": ["flair", "t1", "t1ce", "t2"], "regions": ["wt", "tc", "et"],
            "threshold": THRESHOLD, "mask_threshold": 0.5,
            "model_config": {"in_channels": 4, "base_channels": 4, "depth": 2, "seg_channels": 3}})})
        onnx.save(proto, str(path))
    return path


def export_tiny_onnx(path: Path, size: int = SIZE, channels: int = 1, metadata: dict | None = None,
                     threshold: float = THRESHOLD) -> Path:
    """BrightRegionNet as ONNX (input "image", outputs "seg_logits", "cls_logits", dynamic batch), with the
    `slicewise` metadata property the export step embeds (pass metadata={} to leave it out)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(BrightRegionNet(size).eval(), (torch.zeros(1, channels, size, size),), str(path), opset_version=17,
                      dynamo=False, input_names=["image"], output_names=["seg_logits", "cls_logits"],
                      dynamic_axes={n: {0: "batch"} for n in ("image", "seg_logits", "cls_logits")})
    if metadata is None:
        metadata = {"image_size": size, "modalities": ["flair"] * channels, "threshold": threshold,
                    "mask_threshold": 0.5, "model_config": {"in_channels": channels, "base_channels": 4, "depth": 2},
                    "slices_in_volume": True}  # as export writes it for a model evaluated by default
    if metadata:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, {"slicewise": json.dumps(metadata)})
        onnx.save(proto, str(path))
    return path


def write_gradcam_checkpoint(path: Path, channels: int = 1) -> Path:
    """A self-describing checkpoint of a seeded, untrained tiny MultitaskUNet (Grad-CAM needs a real model)."""
    from models.unet import MultitaskUNet, UNetConfig
    from tasks.inference.checkpoints import save_checkpoint

    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=channels, base_channels=4, depth=2)
    return save_checkpoint(path, model=MultitaskUNet(cfg), optimizer=None, model_config=cfg, epoch=1,
                           best_metric=0.5, metric_name="val_score", params={}, stage="joint")


def write_metrics(path: Path, accuracy: float = 0.91, sensitivity: float = 0.88,
                  photo_accuracy: float | None = 0.9) -> Path:
    """A metrics.json as evaluate writes it; `photo_accuracy`: on 20 test photos (serve.min_photo_accuracy reads it),
    None: no test photos."""
    path.parent.mkdir(parents=True, exist_ok=True)
    by_source = {"kaggle": {"n": 20, "positives": 10, "accuracy": photo_accuracy}} if photo_accuracy is not None else {}
    path.write_text(json.dumps({
        "classification_by_source": by_source,
        "classification": {"accuracy": accuracy, "sensitivity": sensitivity, "specificity": 0.93, "roc_auc": 0.95,
                           "threshold": THRESHOLD},
        "segmentation": {"dice": 0.74, "iou": 0.6, "hd95": 4.2, "n_slices": 12},
        "segmentation_volume": {"dice": 0.81, "hd95": 6.0, "n_patients": 2}}))
    return path


# ---------------------------------------------------------------- images and volumes


def brain_slice(size: int = 64, tumour: bool = True, centre=(0.4, 0.6), radius: float = 0.12) -> np.ndarray:
    """uint8 MRI-like slice: an even grey 'brain' on a black background, optionally a bright disc (the tumour)."""
    yy, xx = np.mgrid[:size, :size] / size
    brain = ((yy - 0.5) / 0.40) ** 2 + ((xx - 0.5) / 0.33) ** 2 < 1
    image = np.where(brain, 100, 0).astype(np.uint8)
    if tumour:
        image[((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2) & brain] = 250
    return image


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def brain_volume(shape=(40, 48, 10), tumour_box=((8, 16), (26, 34), (4, 7))) -> tuple[np.ndarray, np.ndarray]:
    """An (X, Y, Z) FLAIR-like volume (a grey brain cylinder, a bright box as tumour) and the box as a mask."""
    x, y, _ = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    brain = ((x - shape[0] / 2) / (0.42 * shape[0])) ** 2 + ((y - shape[1] / 2) / (0.42 * shape[1])) ** 2 < 1
    volume = np.where(brain, 300.0, 0.0)
    truth = np.zeros(shape, dtype=np.uint8)
    (x0, x1), (y0, y1), (z0, z1) = tumour_box
    truth[x0:x1, y0:y1, z0:z1] = 1
    volume[truth.astype(bool)] = 900.0
    return volume.astype(np.int16), truth


def nifti_bytes(volume: np.ndarray, spacing=(1.0, 1.5, 2.0), compress: bool = True) -> tuple[bytes, np.ndarray]:
    """(file bytes, affine): an .nii(.gz) with the given voxel spacing and a non-trivial affine."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [10.0, 220.0, -30.0]
    raw = nib.Nifti1Image(volume, affine).to_bytes()
    return (gzip.compress(raw) if compress else raw), affine


# ---------------------------------------------------------------- an MLflow registry in a folder


def register_version(tracking_uri: str, onnx_path: Path, model_name: str = "slicewise", alias: str | None = "champion",
                     checkpoint: Path | None = None, metrics: Path | None = None, tags: dict | None = None) -> str:
    """Log the ONNX file as a new version of `model_name` as tasks/release/registration.py does (ONNX flavour with
    the torch checkpoint and model.json as extra files, metrics.json under the run's reports/, lineage tags on the
    version); optionally move `alias` to it."""
    import mlflow
    import onnx
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    experiment = client.get_experiment_by_name("serve-test")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        "serve-test", artifact_location=(Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri())
    model = onnx.load(str(onnx_path))
    metadata_file = onnx_path.with_name("model.json")
    metadata_file.write_text(next((p.value for p in model.metadata_props if p.key == "slicewise"), "{}"))
    extra_files = [str(f) for f in (checkpoint, metadata_file) if f is not None]
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.onnx.log_model(model, name="model", registered_model_name=model_name, extra_files=extra_files)
        if metrics is not None:
            mlflow.log_artifact(str(metrics), "reports")
    version = str(info.registered_model_version)
    for key, value in {"promotion": "promoted", "mlflow_run_id": run.info.run_id, **(tags or {})}.items():
        client.set_model_version_tag(model_name, version, key, value)
    if alias:
        client.set_registered_model_alias(model_name, alias, version)
    return version


# ---------------------------------------------------------------- the app over a model file


@dataclass(frozen=True)
class ServedFiles:
    onnx: Path
    checkpoint: Path
    metrics: Path


def make_served_files(folder: Path) -> ServedFiles:
    return ServedFiles(export_tiny_onnx(folder / "model.onnx"), write_gradcam_checkpoint(folder / "best.pt"),
                       write_metrics(folder / "metrics.json"))


def file_app(files: ServedFiles, bind_host: str | None = None, token: str | None = None, **serve_overrides):
    """The FastAPI app serving `files` (no registry), with params.yaml's `serve:` settings, optionally changed;
    `bind_host` and `token` as create_app takes them."""
    from serve.api import create_app
    from serve.model_source import FileSource
    from tasks.config import load_settings

    cfg = load_settings(REPO / "params.yaml").serve.model_copy(update={"poll_seconds": 0, **serve_overrides})
    return create_app(FileSource(files.onnx, files.checkpoint, files.metrics), cfg, bind_host=bind_host, token=token)


def decode_png(b64: str) -> np.ndarray:
    import base64

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


@contextlib.contextmanager
def running_server(files: ServedFiles | None, log: Path) -> Iterator[str]:
    """`python -m serve` as `make serve` runs it, on 127.0.0.1 and a free port; yields its URL.
    With `files`, it serves them (--model-file); without, the registry's champion of the project."""
    from tests.service_processes import free_port, http_ok, running, service_env

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "serve", "--port", str(port), "--poll-seconds", "0"]
    if files is not None:
        command += ["--model-file", str(files.onnx), "--checkpoint", str(files.checkpoint), "--metrics", str(files.metrics)]
    with running(command, log, lambda: http_ok(f"{url}/healthz"), env=service_env(), cwd=REPO, timeout=90):
        yield url


# ---------------------------------------------------------------- hostile uploads and an in-process server


def forged_nifti_gz(shape, dtype=np.float32, data_bytes: int = 0, affine: np.ndarray | None = None,
                    header_changes: dict | None = None) -> bytes:
    """A .nii.gz whose header says `shape` and `dtype` but which holds only `data_bytes` zero bytes of voxels
    (compressed as they stream, so a claimed 128 MB costs the test no 128 MB)."""
    import zlib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms((1.0,) * len(shape))
    header.set_sform(np.eye(4) if affine is None else affine, code=1)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    for key, value in (header_changes or {}).items():
        header[key] = value
    deflate = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [deflate.compress(header.binaryblock + b"\0" * 4)]
    zeros = bytes(1 << 20)
    while data_bytes > 0:
        out.append(deflate.compress(zeros[: min(data_bytes, len(zeros))]))
        data_bytes -= len(zeros)
    return b"".join(out) + deflate.flush()


@contextlib.contextmanager
def served_in_thread(app, cfg) -> Iterator[str]:
    """`app` behind uvicorn with the options `python -m serve` uses (serve/server.py), in a thread of this process
    on 127.0.0.1 and a free port; yields its URL."""
    import threading
    import time

    import uvicorn

    from serve.server import uvicorn_options
    from tests.service_processes import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, **uvicorn_options(cfg)))
    thread = threading.Thread(target=server.run, name="uvicorn-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
