"""The layout's promises, checked on the import graph (tests/import_graph.py follows every import, lazy ones too):

- a step never imports another step, and the library beneath never imports a step;
- serving reaches only what inference needs (preprocessing, the predictor, the registry client, settings), never
  training, data generation, evaluation or plotting code.
"""

from __future__ import annotations

import pytest

from tasks import STEPS
from tests.import_graph import REPO, external_imports, module_file, modules_under, reachable

STEP_MODULES = {f"tasks.{step}" for step in STEPS}
LIBRARY = {m for m in modules_under(REPO / "tasks") if m not in STEP_MODULES | {"tasks", "tasks.__main__"}}
SERVE = sorted(modules_under(REPO / "serve"))

# Everything of tasks/ and models/ that serving may reach.
SERVING_MAY_REACH = {
    "tasks", "tasks.config", "tasks.paths", "tasks.errors", "tasks.redaction", "tasks.io",
    "tasks.data", "tasks.data.preprocess",  # the slice step's preprocessing, numpy + Pillow only
    "tasks.data.regions",  # BraTS labels <-> WT/TC/ET regions, numpy only
    "tasks.data.volumes",  # reading a NIfTI and the one-grid rule uploads share with the slice step, nibabel
    "tasks.data.orientation",  # turning a volume to the orientation slices are cut in, nibabel
    "tasks.data.gzip_nifti",  # how volumes inflates a .nii.gz: ISA-L, or the standard library (the API image)
    "tasks.inference", "tasks.inference.predictor", "tasks.inference.checkpoints",
    "tasks.inference.volume",  # whole-volume inference, TTA, uncertainty: what evaluation scores, numpy + Pillow + scipy
    "tasks.inference.postprocess",  # the clean-up of a predicted volume, scipy
    "tasks.inference.photo_decisions",  # whether a photo gets a decision (serve.min_photo_accuracy), plain Python
    "tasks.inference.recorded_figures",  # numbers read back from metrics.json, plain Python
    "tasks.log_output",  # where `python -m serve` writes its log records (rich)
    "tasks.inference.tumour_free_reference",  # a volume's tumour beside the model's tumour-free twins (numpy)
    "tasks.inference.gradcam",  # Grad-CAM, built on first use where torch is installed
    "tasks.release", "tasks.release.registry",  # the registry client
    "tasks.tracking", "tasks.tracking.store",  # the MLflow store the registry client talks to
    "models", "models.unet",  # the torch model Grad-CAM rebuilds from the checkpoint
}


def test_every_step_module_exists_with_a_main():
    for module in sorted(STEP_MODULES):
        source = module_file(module)
        assert source is not None and "\ndef main(settings" in source.read_text(), f"{module}: no main(settings)"


@pytest.mark.parametrize("step", STEPS)
def test_a_step_never_imports_another_step(step):
    others = reachable(f"tasks.{step}") & (STEP_MODULES - {f"tasks.{step}"})
    assert not others, f"tasks/{step}.py reaches the step(s) {sorted(others)}: share library code instead"


def test_the_library_never_imports_a_step():
    for module in sorted(LIBRARY):
        steps = reachable(module) & STEP_MODULES
        assert not steps, f"{module} reaches the step(s) {sorted(steps)}: the library lies beneath the steps"


def test_serving_reaches_only_inference_code():
    reached = reachable(*SERVE)
    project = {m for m in reached if m.partition(".")[0] in ("tasks", "models")}
    assert project <= SERVING_MAY_REACH, f"serve/ reaches {sorted(project - SERVING_MAY_REACH)}"
    for forbidden in ("tasks.training", "tasks.evaluation", "tasks.data.synthetic", "tasks.data.slicing"):
        assert not any(m == forbidden or m.startswith(forbidden + ".") for m in reached), forbidden
    assert not external_imports(reached) & {"matplotlib", "sklearn", "nilearn", "prefect", "dvc"}, \
        "serve/ reaches plotting, training or orchestration libraries"
