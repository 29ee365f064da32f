"""API latency per 256² slice against a bare onnxruntime call on the same input, 20 concurrent clients, and the
start-up time of `python -m serve` once the champion is cached locally.

Usage: .venv/bin/python -m bench.bench_api [--model exports/model.onnx] [--runs 60] [--skip-startup]
Without --model, a production-size MultitaskUNet (params.yaml `profiles.production`, untrained) is exported to a
temporary folder: latency depends on the architecture, not on the weights. The API runs as `make serve` runs it
(a uvicorn process on 127.0.0.1, real HTTP with keep-alive); the bare call is `InferenceSession.run` on the
already-preprocessed input. Both are timed interleaved in the same run, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.config import load_settings
from serve.inference import in_flair_channel
from tasks.data.preprocess import prepare_photo

REPO = Path(__file__).resolve().parents[1]
SLICE_SIDE = 256
WARMUP = 5
CLIENTS = 20
REQUESTS_PER_CLIENT = 10
STARTUP_TARGET_S = 5.0
RATIO_TARGET = 1.15
# Pause between timed calls: onnxruntime's worker threads keep spinning for a moment after a run, and the other
# process's call must not start while they still hold the cores (both processes share this machine's cores).
SETTLE_S = 0.05


def untrained_model(folder: Path, params: Path, profile: str = "production", side: int = SLICE_SIDE) -> Path:
    """An untrained, seeded MultitaskUNet of `profile` exported to ONNX at side², with its metadata embedded."""
    import torch

    from models.unet import MultitaskUNet
    from tasks.inference.checkpoints import model_config_for, save_checkpoint
    from tasks.release.onnx_export import check_onnx, export_onnx, model_metadata

    settings = load_settings(params)
    torch.manual_seed(0)
    cfg = model_config_for(settings, profile)
    model = MultitaskUNet(cfg).eval()
    checkpoint = save_checkpoint(folder / "best.pt", model=model, optimizer=None, model_config=cfg, epoch=0,
                                 best_metric=0.0, metric_name="none", params={}, stage="joint")
    path = folder / "model.onnx"
    export_onnx(model, path, cfg.in_channels, side, settings.export.opset)
    check_onnx(path, model_metadata(torch.load(checkpoint, weights_only=True), list(settings.slice.modalities),
                                    side, 0.5, settings.export.opset))
    return path


def mri_like_png(side: int = SLICE_SIDE) -> bytes:
    """A grayscale head-like slice on a black background (the OOD guard must see a normal input)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side] / side
    brain = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.34) ** 2 < 1
    tumour = (yy - 0.4) ** 2 + (xx - 0.6) ** 2 < 0.01
    image = np.where(brain, 90 + 15 * rng.standard_normal((side, side)) + 110 * tumour, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return json.load(response).get("model_loaded") is True
    except OSError:
        return False


@contextmanager
def serve_process(args: list[str], log: Path, env: dict | None = None, cwd: Path = REPO):
    """`python -m serve …` on a free port; yields (url, seconds until /healthz reports a loaded model)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1", **(env or {})}
    started = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serve", "--port", str(port), *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        while not healthy(url):
            if proc.poll() is not None or time.perf_counter() - started > 180:
                raise RuntimeError(f"serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.02)
        yield url, time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def http_session():
    import requests

    session = requests.Session()
    session.trust_env = False  # loopback, never a proxy
    return session


def latency(url: str, model_path: Path, png: bytes, runs: int) -> dict:
    """p50/p95 of the API (HTTP round trip) and of a bare session.run on the same input, interleaved."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=ort.get_available_providers())
    name = session.get_inputs()[0].name
    # what serving feeds the model: the photo in the FLAIR channel of as many channels as the model takes
    channels = session.get_inputs()[0].shape[1]
    x = in_flair_channel(prepare_photo(Image.open(io.BytesIO(png)), SLICE_SIDE), channels)[None]
    http = http_session()
    times = {"api": [], "bare_onnxruntime": []}
    for i in range(WARMUP + runs):
        started = time.perf_counter()
        session.run(None, {name: x})
        bare = time.perf_counter() - started
        time.sleep(SETTLE_S)
        started = time.perf_counter()
        response = http.post(f"{url}/v1/predict", files={"file": ("slice.png", png, "image/png")})
        api = time.perf_counter() - started
        time.sleep(SETTLE_S)
        response.raise_for_status()
        if i >= WARMUP:
            times["bare_onnxruntime"].append(bare)
            times["api"].append(api)
    ms = {k: {"p50_ms": round(1000 * float(np.percentile(v, 50)), 2), "p95_ms": round(1000 * float(np.percentile(v, 95)), 2)}
          for k, v in times.items()}
    return {"latency": ms, "p50_ratio_api_over_bare": round(ms["api"]["p50_ms"] / ms["bare_onnxruntime"]["p50_ms"], 3),
            "runs": runs}


def concurrency(url: str, png: bytes) -> dict:
    def client(_: int) -> list[int]:
        http = http_session()
        return [http.post(f"{url}/v1/predict", files={"file": ("s.png", png)}).status_code
                for _ in range(REQUESTS_PER_CLIENT)]

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = [s for batch in pool.map(client, range(CLIENTS)) for s in batch]
    seconds = time.perf_counter() - started
    return {"clients": CLIENTS, "requests": len(statuses), "errors": sum(s != 200 for s in statuses),
            "requests_per_s": round(len(statuses) / seconds, 1)}


def register_champion(uri: str, model_path: Path, artifacts: Path, params: Path) -> None:
    """A registry holding `model_path` as version 1 of `registry.model_name`, with the `champion` alias."""
    import mlflow
    import onnx
    from mlflow import MlflowClient

    registry = load_settings(params).registry
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("bench-api", artifact_location=artifacts.as_uri())
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.onnx.log_model(onnx.load(str(model_path)), name="model",
                                     registered_model_name=registry.model_name)
    client.set_registered_model_alias(registry.model_name, registry.alias, info.registered_model_version)


def startup(model_path: Path, folder: Path, params_file: Path) -> dict:
    """Seconds to a loaded model: serving a file, and the registry's champion on a first (download) and a
    second (cached) start. The registry is a sqlite store in `folder`."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    register_champion(uri, model_path, folder / "mlartifacts", params_file)
    env = {"MLFLOW_TRACKING_URI": uri}
    params = ["--params", str(params_file), "--poll-seconds", "0"]
    result = {}
    with serve_process(["--model-file", str(model_path), *params], folder / "file.log", cwd=folder) as (_, seconds):
        result["model_file_s"] = round(seconds, 2)
    with serve_process(params, folder / "first.log", env, cwd=folder) as (_, seconds):
        result["registry_first_start_s"] = round(seconds, 2)
    with serve_process(params, folder / "cached.log", env, cwd=folder) as (_, seconds):
        result["registry_cached_start_s"] = round(seconds, 2)
    result["target_s"] = STARTUP_TARGET_S
    return result


def run(model: Path | None = None, runs: int = 60, with_startup: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        folder = Path(tmp)
        params = folder / "params.yaml"  # one snapshot: every process of the run reads the same parameters
        shutil.copyfile(REPO / "params.yaml", params)
        model_path = model.resolve() if model else untrained_model(folder, params)
        png = mri_like_png()
        report = {"model": str(model) if model else "untrained production-profile MultitaskUNet", "slice": "256x256 PNG"}
        args = ["--model-file", str(model_path), "--poll-seconds", "0", "--params", str(params)]
        with serve_process(args, folder / "serve.log") as (url, _):
            report |= latency(url, model_path, png, runs)
            report["concurrency"] = concurrency(url, png)
        if with_startup:
            report["startup"] = startup(model_path, folder, params)
    report["ratio_target"] = RATIO_TARGET
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="ONNX file taking 256x256 slices (default: production-size, untrained)")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args()
    report = run(args.model, args.runs, not args.skip_startup)
    print(json.dumps(report, indent=2))
    print(f"API p50 / bare onnxruntime p50 = {report['p50_ratio_api_over_bare']:.3f} (target <= {RATIO_TARGET})")


if __name__ == "__main__":
    main()
