"""What `export` checks an exported model with: parity with torch on the test slices (logits, tumour decisions,
masks per region) and latency per slice of onnxruntime against torch eager, measured interleaved in one process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from rich.progress import Progress

from tasks import paths
from tasks.config import ExportSettings
from tasks.data.regions import REGIONS
from tasks.errors import SliceWiseError
from tasks.inference.predictor import (LEGACY_SLICE_SCORE, MASK_THRESHOLD, ONNX_CLS_OUTPUT, ONNX_INPUT,
                                       ONNX_SEG_OUTPUT, sigmoid, slice_probability)

LATENCY_BATCHES = (1, 8)
WARMUP_RUNS = 2  # per block
LATENCY_ROUNDS = 3
PARITY_BATCH = 16


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    # Idle worker threads sleep instead of spinning: spinning steals the CPU from torch while it is being timed
    # and from other processes on a shared machine, for no gain at these model sizes.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(model: torch.nn.Module, session, shards: Iterator[np.ndarray], threshold: float,
                 cfg: ExportSettings, mask_threshold: float = MASK_THRESHOLD,
                 slice_score: str = LEGACY_SLICE_SCORE, lone_slice_threshold: float | None = None) -> dict:
    """Compare torch and onnxruntime logits, tumour decisions and masks on every slice of `shards`. A decision is
    `threshold` on the `slice_score` of each slice, and `lone_slice_threshold` too when it differs (what serving
    judges a slice sent alone by): a slice counts once when either decision differs. A differing decision is a tie,
    not a mismatch, when the logits' own tolerance cannot settle it: the torch logits moved by up to atol + rtol x
    |logit| each way give scores on both sides of the cut, and onnxruntime's score lies between them. Such a slice's
    score lies within float32 rounding of the cut, where either engine may land: counting it could fail a sound
    export at random, as the absolute logit limit alone once did (README, "Release"). Ties are reported, not failed."""
    thresholds = [threshold] + ([lone_slice_threshold] if lone_slice_threshold not in (None, threshold) else [])
    max_seg = max_cls = 0.0
    tolerance_used = 0.0  # the largest |difference| / (atol + rtol x |torch logit|): at most 1 passes
    n = mismatches = ties = 0
    overlap = area_torch = area_onnx = 0  # per region channel (numpy arrays once the first batch is in)
    with Progress(transient=True) as progress, torch.inference_mode():
        bar = progress.add_task("parity: torch vs onnxruntime", total=None)
        for images in shards:
            for start in range(0, len(images), PARITY_BATCH):
                batch = images[start : start + PARITY_BATCH]
                out = model(torch.from_numpy(batch))
                seg_t, cls_t = out["seg"].numpy(), out["cls"].numpy()
                seg_o, cls_o = session.run([ONNX_SEG_OUTPUT, ONNX_CLS_OUTPUT], {ONNX_INPUT: batch})
                # A NaN difference is infinite (max(0.0, nan) is 0.0): non-finite logits on either side fail parity.
                seg_diff, seg_used = _differences(seg_t, seg_o, cfg)
                cls_diff, cls_used = _differences(cls_t, cls_o.reshape(cls_t.shape), cfg)
                max_seg, max_cls = max(max_seg, seg_diff), max(max_cls, cls_diff)
                tolerance_used = max(tolerance_used, seg_used, cls_used)
                prob_t, prob_o = sigmoid(seg_t), sigmoid(seg_o)
                score_t = slice_probability(sigmoid(cls_t).reshape(-1), prob_t, slice_score)
                score_o = slice_probability(sigmoid(cls_o).reshape(-1), prob_o, slice_score)
                flipped = np.any([(score_t >= cut) != (score_o >= cut) for cut in thresholds], axis=0)
                if flipped.any():  # the tolerance's reach is only asked of a batch with a flipped decision
                    tie = _ties(cls_t, seg_t, score_o, flipped, thresholds, cfg, slice_score)
                    mismatches += int((flipped & ~tie).sum())
                    ties += int(tie.sum())
                mask_t, mask_o = prob_t >= mask_threshold, prob_o >= mask_threshold
                overlap = overlap + (mask_t & mask_o).sum(axis=(0, 2, 3))  # every region channel, each on its own
                area_torch, area_onnx = area_torch + mask_t.sum(axis=(0, 2, 3)), area_onnx + mask_o.sum(axis=(0, 2, 3))
                n += len(batch)
                progress.advance(bar, len(batch))
    if n == 0:
        raise SliceWiseError("the test split has no slices to check parity on", paths.SPLITS)
    region_dice = [1.0 if t + o == 0 else 2 * float(v) / float(t + o) for v, t, o in zip(overlap, area_torch, area_onnx)]
    dice = min(region_dice)  # every region channel must agree, not just their pooled pixels
    max_diff = max(max_seg, max_cls)
    passed = tolerance_used <= 1 and mismatches == 0 and dice >= cfg.parity_min_dice
    return {"passed": passed, "n_slices": n, "max_abs_diff": max_diff, "max_abs_diff_seg": max_seg,
            "max_abs_diff_cls": max_cls, "atol": cfg.parity_atol, "rtol": cfg.parity_rtol,
            "tolerance_used": tolerance_used, "decision_mismatches": mismatches, "decision_ties": ties,
            "threshold": threshold, "slice_score": slice_score, "mask_threshold": mask_threshold, "mask_dice": dice,
            "mask_dice_per_region": dict(zip(REGIONS, region_dice)) if len(region_dice) > 1 else {"wt": dice},
            "min_mask_dice": cfg.parity_min_dice}


def _differences(torch_logits: np.ndarray, onnx_logits: np.ndarray, cfg: ExportSettings) -> tuple[float, float]:
    """(max |difference|, the largest share of its allowance atol + rtol x |torch logit| that any logit's difference
    takes); both infinite when either side holds a NaN or an infinity (they can never be "close")."""
    if not (np.isfinite(torch_logits).all() and np.isfinite(onnx_logits).all()):
        return float("inf"), float("inf")
    if not torch_logits.size:
        return 0.0, 0.0
    difference = np.abs(torch_logits - onnx_logits)
    allowed = cfg.parity_atol + cfg.parity_rtol * np.abs(torch_logits)
    return float(difference.max()), float((difference / allowed).max())


def _ties(cls_t: np.ndarray, seg_t: np.ndarray, score_o: np.ndarray, flipped: np.ndarray, thresholds: list[float],
          cfg: ExportSettings, slice_score: str) -> np.ndarray:
    """Which flipped decisions the tolerance cannot settle: the torch logits moved by it each way give scores on both
    sides of a cut (the score is monotone in every logit), and onnxruntime's score lies between them."""
    low, high = (slice_probability(sigmoid(cls_t + _shift(cls_t, cfg, sign)).reshape(-1),
                                   sigmoid(seg_t + _shift(seg_t, cfg, sign)), slice_score) for sign in (-1, 1))
    unsettled = np.any([(low >= cut) != (high >= cut) for cut in thresholds], axis=0)
    return flipped & unsettled & (low <= score_o) & (score_o <= high)


def _shift(logits: np.ndarray, cfg: ExportSettings, sign: int) -> np.ndarray:
    """The most each logit may move within the parity tolerance, signed: sign x (atol + rtol x |logit|)."""
    return (sign * (cfg.parity_atol + cfg.parity_rtol * np.abs(logits))).astype(np.float32)


def _percentiles_ms(seconds: list[float], batch: int) -> dict:
    per_slice = np.asarray(seconds) * 1000 / batch
    return {"p50_ms": round(float(np.percentile(per_slice, 50)), 4),
            "p95_ms": round(float(np.percentile(per_slice, 95)), 4)}


def _time_block(engine, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        engine()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        engine()
        seconds.append(time.perf_counter() - started)
    return seconds


def measure_latency(model: torch.nn.Module, session, sample: np.ndarray, runs: int) -> dict:
    """Per-slice latency of onnxruntime and torch eager (CPU, fp32) on the same input in the same process.

    The engines alternate in blocks (LATENCY_ROUNDS each), not run by run: switching after every run would let one
    engine's sleeping worker threads slow the other down, while blocks still share any drift in machine load.
    """
    latency: dict[str, dict] = {"onnxruntime": {}, "torch_eager": {}}
    speedup = {}
    for batch in LATENCY_BATCHES:
        x = np.ascontiguousarray(np.resize(sample, (batch, *sample.shape[1:])), dtype=np.float32)
        x_torch = torch.from_numpy(x)
        engines = {"onnxruntime": lambda: session.run(None, {ONNX_INPUT: x}), "torch_eager": lambda: model(x_torch)}
        times: dict[str, list[float]] = {name: [] for name in engines}
        with torch.inference_mode():
            for round_ in range(LATENCY_ROUNDS):
                block = runs // LATENCY_ROUNDS + (round_ < runs % LATENCY_ROUNDS)
                for name, engine in engines.items():
                    times[name] += _time_block(engine, WARMUP_RUNS, block)
        for name in engines:
            latency[name][f"batch_{batch}"] = _percentiles_ms(times[name], batch)
        speedup[f"batch_{batch}"] = round(latency["torch_eager"][f"batch_{batch}"]["p50_ms"]
                                          / latency["onnxruntime"][f"batch_{batch}"]["p50_ms"], 3)
    return {"latency": latency, "speedup_p50": speedup}
