"""The shared predictor: Torch and ONNX give the same probabilities; ONNX works without torch."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from models.unet import MultitaskUNet, TwoHeadOutputs, UNetConfig
from tasks.inference.predictor import OnnxPredictor, Prediction, TorchPredictor, sigmoid, slice_probability


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return MultitaskUNet(UNetConfig(in_channels=1, base_channels=4, depth=2)).eval()


@pytest.fixture(scope="module")
def onnx_file(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(
        TwoHeadOutputs(tiny_model), (torch.zeros(1, 1, 16, 16),), str(path), opset_version=17, dynamo=False,
        input_names=["image"], output_names=["seg_logits", "cls_logits"],
        dynamic_axes={"image": {0: "batch"}, "seg_logits": {0: "batch"}, "cls_logits": {0: "batch"}},
    )
    return path


def images(n=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 1, 16, 16)).astype(np.float32)


def test_sigmoid_is_stable_and_correct():
    x = np.array([-1000.0, -2.0, 0.0, 3.0, 1000.0])
    with np.errstate(over="raise", invalid="raise"):
        out = sigmoid(x)
    assert out.tolist() == pytest.approx([0.0, 1 / (1 + np.exp(2.0)), 0.5, 1 / (1 + np.exp(-3.0)), 1.0])


def test_torch_predictor_shapes_ranges_and_batching(tiny_model):
    x = images(5)
    whole = TorchPredictor(tiny_model, batch_size=32).predict(x)
    batched = TorchPredictor(tiny_model, batch_size=2).predict(x)
    assert isinstance(whole, Prediction) and len(whole) == 5
    assert whole.tumour_probability.shape == (5,) and whole.mask_probability.shape == (5, 16, 16)
    assert ((whole.mask_probability >= 0) & (whole.mask_probability <= 1)).all()
    np.testing.assert_allclose(batched.tumour_probability, whole.tumour_probability, atol=1e-5)
    with torch.inference_mode():
        expected = torch.sigmoid(tiny_model(torch.from_numpy(x))["cls"]).numpy()
    np.testing.assert_allclose(whole.tumour_probability, expected, atol=1e-6)


def test_fused_slice_score_is_the_mean_of_both_heads(tiny_model):
    x = images(6, seed=2)
    classifier = TorchPredictor(tiny_model).predict(x)
    fused = TorchPredictor(tiny_model, slice_score="fused").predict(x)
    assert classifier.slice_score == "classifier" and fused.slice_score == "fused"
    with torch.inference_mode():
        out = tiny_model(torch.from_numpy(x))
    cls, largest = torch.sigmoid(out["cls"]).numpy(), torch.sigmoid(out["seg"][:, 0]).amax(dim=(1, 2)).numpy()
    np.testing.assert_allclose(classifier.tumour_probability, cls, atol=1e-6)
    np.testing.assert_allclose(fused.tumour_probability, (cls + largest) / 2, atol=1e-6)
    # the classifier's own probability stays at hand (the volume clean-up's evidence) whatever the slice score
    np.testing.assert_allclose(fused.classifier_probability, classifier.tumour_probability, atol=1e-7)
    assert not np.allclose(fused.tumour_probability, classifier.tumour_probability)


def test_slice_probability_rules():
    cls = np.array([0.2, 0.9], np.float32)
    regions = np.zeros((2, 3, 4, 4), np.float32)
    regions[0, 0, 1, 2], regions[1, 1] = 0.8, 1.0  # slice 1: only a TC pixel, which the WT rule does not read
    np.testing.assert_allclose(slice_probability(cls, regions, "fused"), [0.5, 0.45])
    assert slice_probability(cls, regions, "classifier") is cls
    assert slice_probability(cls[:0], regions[:0], "fused").shape == (0,)
    with pytest.raises(ValueError, match="unknown slice score 'max'"):
        slice_probability(cls, regions, "max")
    with pytest.raises(ValueError, match="unknown slice score"):
        TorchPredictor(torch.nn.Identity(), slice_score="both")


def test_predictor_rejects_wrong_rank(tiny_model):
    with pytest.raises(ValueError, match="N, C, H, W"):
        TorchPredictor(tiny_model).predict(np.zeros((16, 16), dtype=np.float32))


def test_onnx_and_torch_predictors_agree(tiny_model, onnx_file):
    x = images(7, seed=1)
    torch_prediction = TorchPredictor(tiny_model, batch_size=3).predict(x)
    for source in (onnx_file, onnx_file.read_bytes()):
        onnx_prediction = OnnxPredictor(source, providers=["CPUExecutionProvider"], batch_size=4).predict(x)
        np.testing.assert_allclose(onnx_prediction.tumour_probability, torch_prediction.tumour_probability, atol=1e-4)
        np.testing.assert_allclose(onnx_prediction.mask_probability, torch_prediction.mask_probability, atol=1e-4)
    fused_torch = TorchPredictor(tiny_model, slice_score="fused").predict(x)
    fused_onnx = OnnxPredictor(onnx_file, providers=["CPUExecutionProvider"], slice_score="fused").predict(x)
    np.testing.assert_allclose(fused_onnx.tumour_probability, fused_torch.tumour_probability, atol=1e-4)


def test_onnx_predictor_runs_without_torch(onnx_file):
    """A slim serving image has onnxruntime but no torch: importing and using OnnxPredictor must not need it."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import numpy as np\n"
        "from tasks.inference.predictor import OnnxPredictor\n"
        f"p = OnnxPredictor({str(onnx_file)!r}).predict(np.zeros((2, 1, 16, 16), np.float32))\n"
        "print(p.tumour_probability.shape, p.mask_probability.shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(2,) (2, 16, 16)" in result.stdout
