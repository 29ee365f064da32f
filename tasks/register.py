"""`register`: the exported model into the MLflow registry, through the promotion gate.

    1. read reports/metrics.json, reports/export.json, exports/model.onnx (+ model.json) and the joint best.pt
    2. decide: thresholds, ONNX parity, and "not worse than the champion" (tasks/release/gate.py)
    3. log the ONNX model (+ best.pt and model.json, so Grad-CAM at serving time has the torch weights) into the
       pipeline's parent run, create a version with the contract's tags and the model card as description
    4. verify the version (tasks/release/registry.py), then move an alias: `champion` when the gate passed,
       `challenger` when not; end the parent run. A version that fails verification is deleted.
With tracking.enabled false nothing is registered; the gate still runs. reports/register.json says what happened.
The work is tasks/release/registration.py's.
"""

from __future__ import annotations

from tasks import paths
from tasks.config import Settings
from tasks.io import sha256_file, write_json_atomic
from tasks.release.registration import decide, register_release
from tasks.release.release_files import read_release
from tasks.tracking.tracker import tracked_step


def main(settings: Settings) -> dict:
    paths.REGISTER_REPORT.unlink(missing_ok=True)  # a failed run must not leave the previous decision looking current
    release = read_release(paths.ONNX_MODEL, paths.EXPORT_METADATA, paths.best_checkpoint("joint"), paths.METRICS,
                           paths.EXPORT_REPORT)
    release_metrics = sha256_file(paths.METRICS)
    if not settings.tracking.enabled:
        decision = decide(settings, release, None)
        result = {"registered": False, "model_name": settings.registry.model_name, "version": None,
                  "promoted": False, "alias": None, "gate": decision.as_dict()["criteria"],
                  "reason": f"not registered (tracking.enabled is false); the gate alone says {decision.reason}",
                  "metrics_sha256": release_metrics}
        write_json_atomic(result, paths.REGISTER_REPORT)
        return result
    with tracked_step(settings, "register") as tracker:  # the parent run: register ends it
        # which figures the decision is about: the run summary flags a decision older than metrics.json
        result = register_release(settings, release, tracker, paths.PROCESSED, paths.SPLITS) | {
            "metrics_sha256": release_metrics}
        # written before the parent run ends: if this write fails, the rerun reopens the same run and finds its
        # version, instead of registering the model again
        write_json_atomic(result, paths.REGISTER_REPORT)
    return result
