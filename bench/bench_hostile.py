"""The API under load with hostile uploads mixed in: errors, latency and the server's peak memory.

Usage: .venv/bin/python -m bench.bench_hostile [--clients 30] [--requests 10] [--bombs 10]

Two runs of `python -m serve` as `make serve` runs it (uvicorn on 127.0.0.1, the serve: settings of params.yaml),
each a fresh process serving an untrained quick-profile MultitaskUNet (128², base 8, depth 4) exported to ONNX:
1. `clients` clients × `requests` mixed requests: PNG and NPY slices, batches of 4, NIfTI volumes;
2. the same, with `bombs` hostile uploads mixed in: .nii.gz headers claiming 1000×1000×500 float32 in 62 bytes,
   8×8×5000 and 4000×4000×8 volumes, a header claiming more data than the file holds, a 4096² PNG that inflates
   from 65 kB to 64 MB, a batch of 60 files.
An error is a 5xx, a dropped connection, or an answer other than the one expected (200 for good input, the 4xx
for each bomb). Peak RSS is the server process's VmHWM. Bounded: every request has a timeout, the counts are fixed.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from bench.memory import status_mib

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 128
CONNECTION_MB = 1  # what one connection may hold outside the budget (docs/security.md, "Uploads")
REQUEST_TIMEOUT_S = 300
MiB = 1024 * 1024


def quick_model(folder: Path, params: Path) -> Path:
    """An untrained quick-profile MultitaskUNet exported to ONNX with its metadata embedded, as `export` does."""
    from bench.bench_api import untrained_model

    return untrained_model(folder, params, "quick", IMAGE_SIZE)


# ---------------------------------------------------------------- inputs


def head_slice(side: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] / side
    brain = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.34) ** 2 < 1
    tumour = (yy - 0.4) ** 2 + (xx - 0.6) ** 2 < 0.01
    return np.where(brain, 90 + 15 * rng.standard_normal((side, side)) + 110 * tumour, 0).clip(0, 255)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32))
    return buffer.getvalue()


def volume_gz(shape=(160, 160, 48)) -> bytes:
    import nibabel as nib

    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    volume = np.where(x**2 + y**2 < 0.7, 300 + 40 * np.sin(6 * z), 0) + 500 * ((x - 0.2)**2 + y**2 + z**2 < 0.05)
    return gzip.compress(nib.Nifti1Image(volume.astype(np.int16), np.diag([1.0, 1.0, 2.0, 1.0])).to_bytes(), 6)


def forged_gz(shape, dtype=np.float32, data_bytes: int = 0) -> bytes:
    """A .nii.gz whose header claims `shape` × `dtype` but holds only `data_bytes` zeros (streamed, small)."""
    import zlib

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [deflate.compress(header.binaryblock + b"\0" * 4)]
    while data_bytes > 0:
        out.append(deflate.compress(bytes(min(data_bytes, MiB))))
        data_bytes -= MiB
    return b"".join(out) + deflate.flush()


def good_requests(clients: int, per_client: int) -> list[list[tuple]]:
    """(kind, path, files, expected status) per client: 5 slices, 2 batches, 1 NPY, 2 volumes in each 10."""
    slices = [png(head_slice(256, i)) for i in range(4)]
    array = npy(head_slice(240, 9) * 3.0)
    volume = volume_gz()
    menu = [("slice", "/v1/predict", lambda k: [("file", (f"s{k}.png", slices[k % 4]))])] * 5 + \
           [("batch", "/v1/predict/batch", lambda k: [("files", (f"b{j}.png", s)) for j, s in enumerate(slices)])] * 2 + \
           [("npy", "/v1/predict", lambda k: [("file", ("a.npy", array))])] + \
           [("volume", "/v1/predict/volume", lambda k: [("file", ("v.nii.gz", volume))])] * 2
    plans = []
    for c in range(clients):
        order = [menu[(c + k) % len(menu)] for k in range(per_client)]
        plans.append([(kind, path, files(k), 200) for k, (kind, path, files) in enumerate(order)])
    return plans


def bomb_requests(count: int) -> list[tuple]:
    """The hostile uploads of issue 13, each with the status it must get."""
    big_png = png(np.zeros((4096, 4096), np.uint8))
    tiny = png(head_slice(64, 0))
    menu = [
        ("bomb", "/v1/predict/volume", [("file", ("b.nii.gz", forged_gz((1000, 1000, 500))))], 413),
        ("bomb", "/v1/predict/volume", [("file", ("b.nii.gz", forged_gz((8, 8, 5000), data_bytes=8 * 8 * 5000 * 4)))],
         413),
        ("bomb", "/v1/predict/volume",
         [("file", ("b.nii.gz", forged_gz((4000, 4000, 8), np.uint8, data_bytes=4000 * 4000 * 8)))], 413),
        ("bomb", "/v1/predict/volume", [("file", ("b.nii.gz", forged_gz((256, 256, 250), data_bytes=4096)))], 422),
        ("bomb", "/v1/predict", [("file", ("big.png", big_png))], 200),
        ("bomb", "/v1/predict/batch", [("files", (f"{j}.png", tiny)) for j in range(60)], 413),
    ]
    return [menu[i % len(menu)] for i in range(count)]


# ---------------------------------------------------------------- the server and its memory


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(model: Path, params: Path, log: Path):
    import requests

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1"}
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serve", "--model-file", str(model), "--params", str(params),
                                 "--port", str(port), "--poll-seconds", "0", "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    session = requests.Session()
    session.trust_env = False
    try:
        started = time.monotonic()
        while True:
            try:
                if session.get(f"{url}/healthz", timeout=2).json().get("model_loaded"):
                    break
            except (requests.RequestException, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() - started > 180:
                raise RuntimeError(f"serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def peak_mb(pid: int) -> float:
    """The server's peak RSS (VmHWM) in MiB; NaN when it is gone."""
    return status_mib(pid, "VmHWM", missing=float("nan"))


def load(url: str, plans: list[list[tuple]]) -> dict:
    """Every client runs its plan on its own keep-alive session; returns counts, latency and the bad answers."""
    import requests

    def client(plan: list[tuple]) -> list[tuple[str, float, bool, str]]:
        session = requests.Session()
        session.trust_env = False
        results = []
        for kind, path, files, expected in plan:
            started = time.perf_counter()
            try:
                response = session.post(url + path, files=files, timeout=REQUEST_TIMEOUT_S)
                status, detail = response.status_code, response.text[:200]
            except requests.RequestException as exc:
                status, detail = 0, type(exc).__name__
            seconds = time.perf_counter() - started
            ok = status == expected and (status < 400 or "detail" in detail)
            results.append((kind, seconds, ok, f"{kind} {path}: {status} (expected {expected}) {detail}"))
        return results

    started = time.perf_counter()
    with ThreadPoolExecutor(len(plans)) as pool:
        results = [r for batch in pool.map(client, plans) for r in batch]
    wall = time.perf_counter() - started
    good = [r for r in results if r[0] != "bomb"]
    latency = {kind: {"p50_ms": round(1000 * float(np.percentile(t, 50)), 1),
                      "p95_ms": round(1000 * float(np.percentile(t, 95)), 1), "n": len(t)}
               for kind in sorted({r[0] for r in results}) for t in [[r[1] for r in results if r[0] == kind]]}
    return {"requests": len(results), "errors": sum(not r[2] for r in results),
            "bad_answers": [r[3] for r in results if not r[2]][:5], "wall_s": round(wall, 1),
            "p95_ms": round(1000 * float(np.percentile([r[1] for r in good], 95)), 1),
            "p50_ms": round(1000 * float(np.percentile([r[1] for r in good], 50)), 1), "latency": latency}


def run(clients: int = 30, per_client: int = 10, bombs: int = 10, seed: int = 0) -> dict:
    from tasks.config import load_settings

    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        folder = Path(tmp)
        params = folder / "params.yaml"
        shutil.copyfile(REPO / "params.yaml", params)
        model = quick_model(folder, params)
        serve_cfg = load_settings(params).serve
        report = {"model": f"untrained quick-profile MultitaskUNet, {IMAGE_SIZE}² ONNX", "clients": clients,
                  "requests_per_client": per_client, "memory_budget_mb": serve_cfg.memory_budget_mb,
                  "max_connections": serve_cfg.max_connections}
        plans = good_requests(clients, per_client)
        with serve(model, params, folder / "plain.log") as (url, pid):
            report["idle_rss_mb"] = round(status_mib(pid, "VmRSS", missing=float("nan")), 1)
            # the bound the design promises (docs/security.md, "The memory budget"): idle RSS + the budget
            # + 1 MB a connection
            report["ceiling_mb"] = round(report["idle_rss_mb"] + serve_cfg.memory_budget_mb
                                         + CONNECTION_MB * serve_cfg.max_connections, 1)
            report["plain"] = load(url, plans) | {"peak_rss_mb": round(peak_mb(pid), 1)}
        rng = random.Random(seed)
        for bomb in bomb_requests(bombs):  # each bomb takes the place of a good request of a random client
            plan = plans[rng.randrange(clients)]
            plan.insert(rng.randrange(len(plan) + 1), bomb)
        with serve(model, params, folder / "bombs.log") as (url, pid):
            report["with_bombs"] = load(url, plans) | {"peak_rss_mb": round(peak_mb(pid), 1),
                                                      "bombs": bombs}
    plain, bombed = report["plain"], report["with_bombs"]
    report["ratios"] = {"peak_rss_bombs_over_plain": round(bombed["peak_rss_mb"] / plain["peak_rss_mb"], 2),
                        "p95_bombs_over_plain": round(bombed["p95_ms"] / plain["p95_ms"], 2),
                        "peak_rss_bombs_over_ceiling": round(bombed["peak_rss_mb"] / report["ceiling_mb"], 2)}
    report["within_ceiling"] = bombed["peak_rss_mb"] <= report["ceiling_mb"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--requests", type=int, default=10, help="requests per client")
    parser.add_argument("--bombs", type=int, default=10)
    args = parser.parse_args()
    report = run(args.clients, args.requests, args.bombs)
    print(json.dumps(report, indent=2))
    plain, bombed, ratios = report["plain"], report["with_bombs"], report["ratios"]
    print(f"{args.clients} clients x {args.requests}: {plain['errors']} errors in {plain['requests']}, p95 "
          f"{plain['p95_ms']:.0f} ms, peak RSS {plain['peak_rss_mb']:.0f} MB")
    print(f"+ {args.bombs} bombs: {bombed['errors']} errors in {bombed['requests']}, p95 {bombed['p95_ms']:.0f} ms "
          f"({ratios['p95_bombs_over_plain']:.2f}x), peak RSS {bombed['peak_rss_mb']:.0f} MB "
          f"({ratios['peak_rss_bombs_over_plain']:.2f}x plain, {ratios['peak_rss_bombs_over_ceiling']:.2f}x the "
          f"{report['ceiling_mb']:.0f} MB ceiling)")


if __name__ == "__main__":
    main()
