"""The multitask U-Net: head shapes, head subsets, Grad-CAM layer, learning, ONNX export."""

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from models import unet
from models.unet import MultitaskUNet, TwoHeadOutputs, UNetConfig


@pytest.mark.parametrize("cfg", [UNetConfig(1, 4, 2), UNetConfig(2, 4, 3), UNetConfig(1, 2, 4, norm="instance")])
def test_every_head_has_its_shape(cfg):
    model = MultitaskUNet(cfg).eval()
    x = torch.randn(3, cfg.in_channels, 32, 32)
    both = model(x)
    assert both["seg"].shape == (3, 1, 32, 32) and both["cls"].shape == (3,)
    assert set(model(x, heads=("seg",))) == {"seg"}
    assert set(model(x, heads=("cls",))) == {"cls"}
    torch.testing.assert_close(model(x, heads=("cls",))["cls"], both["cls"])


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_blocks_are_monais_to_the_weight_keys_initial_weights_and_outputs(norm):
    """The blocks are written out to spare every step `import monai`; they must stay MONAI's nnU-Net blocks, so
    checkpoints built with MONAI load and a seed initialises the same weights."""
    from monai.networks.blocks import UnetBasicBlock, UnetOutBlock, UnetUpBlock

    cfg, monai_norm = UNetConfig(norm=norm), ("instance", {"affine": True}) if norm == "instance" else ("batch", {})
    pairs = [
        (lambda: UnetBasicBlock(2, 4, 8, kernel_size=3, stride=2, norm_name=monai_norm),
         lambda: unet.UnetBasicBlock(cfg, 4, 8, stride=2), (torch.randn(2, 4, 16, 16),)),
        (lambda: UnetUpBlock(2, 16, 8, kernel_size=3, stride=1, upsample_kernel_size=2, norm_name=monai_norm),
         lambda: unet.UnetUpBlock(cfg, 16, 8), (torch.randn(2, 16, 8, 8), torch.randn(2, 8, 16, 16))),
        (lambda: UnetOutBlock(2, 8, 3), lambda: unet.UnetOutBlock(8, 3), (torch.randn(2, 8, 16, 16),)),
    ]
    for make_theirs, make_ours, inputs in pairs:
        torch.manual_seed(0)
        theirs = make_theirs()
        torch.manual_seed(0)
        ours = make_ours()
        theirs_state, ours_state = theirs.state_dict(), ours.state_dict()
        assert list(theirs_state) == list(ours_state)
        assert all(torch.equal(theirs_state[k], ours_state[k]) for k in theirs_state)
        assert torch.equal(theirs(*inputs), ours(*inputs))


def test_width_and_depth_are_configurable():
    small, wide, deep = (MultitaskUNet(UNetConfig(1, c, d)) for c, d in ((4, 2), (8, 2), (4, 4)))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) < count(wide) and count(small) < count(deep)
    assert len(deep.encoder.levels) == 4 and len(deep.seg_decoder.ups) == 3


def test_gradcam_layer_is_the_bottleneck_the_classifier_head_reads():
    model = MultitaskUNet(UNetConfig(1, 4, 3)).eval()
    layer = dict(model.named_modules())[model.gradcam_layer]
    seen = []
    layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    cls = model(torch.randn(2, 1, 32, 32), heads=("cls",))["cls"]
    assert seen[0].shape == (2, 16, 8, 8)  # base 4 × 2², at 32 / 2²
    gradient, = torch.autograd.grad(cls.sum(), seen[0])
    assert gradient.abs().sum() > 0  # the classifier's score is made from that layer (Grad-CAM needs its gradient)


def test_a_few_steps_overfit_one_batch():
    torch.manual_seed(0)
    model = MultitaskUNet(UNetConfig(1, 4, 2))
    x = torch.randn(4, 1, 32, 32)
    mask = torch.zeros(4, 1, 32, 32)
    mask[:2, :, 8:20, 10:22] = 1
    x = x + 2 * mask
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    seg_loss, cls_loss = DiceCELoss(sigmoid=True), torch.nn.BCEWithLogitsLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # Adam's first step is lr · sign(gradient): alike
    losses = []
    for _ in range(40):
        out = model(x)
        loss = seg_loss(out["seg"], mask) + cls_loss(out["cls"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_two_head_wrapper_returns_the_same_tensors_as_a_tuple():
    model = MultitaskUNet(UNetConfig(1, 4, 2)).eval()
    x = torch.randn(2, 1, 32, 32)
    seg, cls = TwoHeadOutputs(model)(x)
    torch.testing.assert_close(seg, model(x)["seg"])
    torch.testing.assert_close(cls, model(x)["cls"])


def test_exports_to_onnx_with_both_outputs_and_a_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = MultitaskUNet(UNetConfig(1, 4, 2)).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(TwoHeadOutputs(model), (torch.randn(1, 1, 32, 32),), str(path), input_names=["image"],
                      output_names=["seg_logits", "cls_logits"], dynamic_axes={"image": {0: "n"}}, dynamo=False)
    x = torch.randn(3, 1, 32, 32)
    seg, cls = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x)
    np.testing.assert_allclose(seg, expected["seg"].numpy(), atol=1e-4)
    np.testing.assert_allclose(cls, expected["cls"].numpy(), atol=1e-4)


def test_region_outputs_start_as_one_detector_and_then_specialise():
    """The three region logits (WT, TC, ET) are equal on any input at initialisation (see SegDecoder), and one
    training step on nested targets makes them differ."""
    torch.manual_seed(0)
    model = MultitaskUNet(UNetConfig(in_channels=4, base_channels=4, depth=2, seg_channels=3))
    x = torch.randn(2, 4, 16, 16)
    seg = model(x, heads=("seg",))["seg"]
    assert seg.shape == (2, 3, 16, 16)
    torch.testing.assert_close(seg[:, 1], seg[:, 0])
    torch.testing.assert_close(seg[:, 2], seg[:, 0])
    targets = torch.zeros(2, 3, 16, 16)
    targets[:, 0, 4:12, 4:12], targets[:, 1, 6:10, 6:10], targets[:, 2, 7:9, 7:9] = 1, 1, 1  # ET ⊂ TC ⊂ WT
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # Adam's first step is lr · sign(gradient): alike
    torch.nn.functional.binary_cross_entropy_with_logits(seg, targets).backward()
    optimizer.step()
    model.eval()
    after = model(x, heads=("seg",))["seg"]
    assert not torch.allclose(after[:, 0], after[:, 1]) and not torch.allclose(after[:, 1], after[:, 2])
