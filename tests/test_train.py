"""The three training stages on a tiny processed set: resume, determinism, freezing, checkpoints, collate, augment."""

import argparse
import importlib
import math

import numpy as np

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from monai.losses import DiceCELoss, DiceLoss

from models.unet import MultitaskUNet, UNetConfig
from tasks import paths, train_cls, train_joint, train_seg
from tasks.config import Augment, TrainSettings, load_settings
from tasks.data.augment import augment_batch
from tasks.data.batch_sampling import ComposedBatches
from tasks.data.datasets import SliceSet, collate_slices, stage_data
from tasks.data.loaders import training_loader
from tasks.data.modality_dropout import draw_modality_dropout, drop_modalities
from tasks.data.regions import regions_from_labels
from tasks.errors import SliceWiseError
from tasks.inference.checkpoints import load_checkpoint, load_model, save_checkpoint
from tasks.io import sha256_file
from tasks.tracking.tracker import NullTracker
from tasks.training import plan as training_plan
from tasks.training import resume as training_resume
from tasks.training import stage as training_stage
from tasks.training.device import augments_on_device, place_model
from tasks.training.optimizer import make_optimizer
from tasks.training.steps import StageLoss, StageRunner, followed_metric, metric_of, region_targets
from tests.conftest import (REPO, make_tiny_processed, shrink_settings, with_epochs,
                            with_section)


def metrics_only(history: pd.DataFrame) -> pd.DataFrame:
    """A history as written: what each epoch learned, its timings being in a file of their own (so two runs that
    learned the same have equal histories, byte for byte)."""
    assert not set(training_resume.TIMINGS) & set(history.columns)
    return history


@pytest.fixture
def in_project(tiny_data, monkeypatch):
    monkeypatch.chdir(tiny_data.root)
    return tiny_data


def test_collate_fills_missing_masks_and_flags_them(in_project, tiny_settings):
    train_set, _ = stage_data("joint", paths.PROCESSED, paths.SPLITS, tiny_settings.train_joint, seed=0)
    kaggle = int(torch.nonzero(~train_set.has_mask)[0])
    brats = int(torch.nonzero(train_set.has_mask & (train_set.labels == 1))[0])
    assert train_set[kaggle]["mask"] is None
    batch = collate_slices([train_set[brats], train_set[kaggle]])
    assert batch["image"].shape == (2, 1, 32, 32) and batch["mask"].shape == (2, 1, 32, 32)
    assert batch["has_mask"].tolist() == [True, False]
    assert batch["mask"][0].sum() > 0 and batch["mask"][1].sum() == 0
    assert batch["label"].tolist() == [1.0, train_set.labels[kaggle].item()]


def test_joint_seg_loss_ignores_samples_without_a_mask(tiny_settings):
    torch.manual_seed(0)
    out = {"seg": torch.randn(4, 3, 8, 8), "cls": torch.randn(4)}
    batch = {"image": torch.zeros(4, 1, 8, 8), "mask": torch.zeros(4, 1, 8, 8),
             "has_mask": torch.tensor([True, True, False, False]), "label": torch.tensor([1.0, 0, 1, 0])}
    loss = StageLoss("joint", tiny_settings.train_joint)
    before = loss(out, batch)
    batch["mask"][2:] = 1  # what a mask-less sample carries must not matter
    assert loss(out, batch) == before
    batch["mask"][0] = 1
    assert loss(out, batch) != before


def test_region_targets_are_regions_from_labels_on_the_batch():
    labels = torch.from_numpy(np.random.default_rng(0).choice([0, 1, 2, 4], size=(5, 1, 12, 12)).astype(np.float32))
    expected = regions_from_labels(labels[:, 0].numpy()).transpose(1, 0, 2, 3)  # (3, N, H, W) → (N, 3, H, W)
    np.testing.assert_array_equal(region_targets(labels).numpy(), expected.astype(np.float32))
    np.testing.assert_array_equal(region_targets(labels, 1).numpy(), expected[:, :1].astype(np.float32))
    assert region_targets(labels)[:, 0].sum() > region_targets(labels)[:, 1].sum() > region_targets(labels)[:, 2].sum()


@pytest.fixture
def batch_dice_settings(tiny_settings):
    """tiny_settings with the Dice term pooled over the batch in both stages (what these loss tests derive by hand;
    params.yaml ships `dice_over: both`)."""
    return tiny_settings.model_copy(update={
        "train_seg": tiny_settings.train_seg.model_copy(update={"dice_over": "batch"}),
        "train_joint": tiny_settings.train_joint.model_copy(update={"dice_over": "batch"})})


def test_stage_loss_is_monais_dice_ce_over_the_regions_plus_weighted_bce(batch_dice_settings):
    """StageLoss computes from sums (so DDP shares add up), but is the loss MONAI and torch define: MONAI's DiceLoss
    plus torch's BCE over the WT, TC and ET channels (nnU-Net's DC_and_BCE_loss for regions; MONAI's DiceCELoss would
    apply a softmax cross-entropy to more than one channel), with targets from the label maps in the batch."""
    torch.manual_seed(0)
    out = {"seg": torch.randn(6, 3, 16, 16) * 3, "cls": torch.randn(6)}
    labels = torch.from_numpy(np.random.default_rng(1).choice([0, 0, 0, 1, 2, 4], size=(6, 1, 16, 16))).float()
    batch = {"image": torch.zeros(6, 1, 16, 16), "mask": labels,
             "has_mask": torch.tensor([True] * 4 + [False] * 2), "label": torch.tensor([1.0, 0, 1, 0, 1, 0])}
    regions = torch.from_numpy(regions_from_labels(labels[:, 0].numpy()).transpose(1, 0, 2, 3).astype(np.float32))
    bce, lam = F.binary_cross_entropy_with_logits, 0.5
    dice_ce = lambda logits, truth: DiceLoss(sigmoid=True, batch=True)(logits, truth) + bce(logits, truth)  # noqa: E731
    joint = StageLoss("joint", batch_dice_settings.train_joint.model_copy(update={"cls_weight": lam}))
    all_masked = batch | {"has_mask": torch.ones(6, dtype=torch.bool)}
    torch.testing.assert_close(StageLoss("seg", batch_dice_settings.train_seg)(out, all_masked),
                               dice_ce(out["seg"], regions))
    one = {"seg": out["seg"][:, :1], "cls": out["cls"]}  # one channel: exactly MONAI's DiceCELoss, as before
    torch.testing.assert_close(StageLoss("seg", batch_dice_settings.train_seg)(one, all_masked),
                               DiceCELoss(sigmoid=True, batch=True)(one["seg"], regions[:, :1]))
    torch.testing.assert_close(joint(out, batch),
                               dice_ce(out["seg"][:4], regions[:4]) + lam * bce(out["cls"], batch["label"]))
    kaggle = {k: v[4:] for k, v in batch.items()}
    kaggle_out = {k: v[4:] for k, v in out.items()}
    torch.testing.assert_close(joint(kaggle_out, kaggle), lam * bce(kaggle_out["cls"], kaggle["label"]))
    # an ET error costs what a WT error costs: each region is one Dice term of three, not a share of pooled pixels
    only_et = {"seg": torch.full((6, 3, 16, 16), 20.0), "cls": out["cls"]}
    only_et["seg"][:, 2] = -20.0
    seg_loss = StageLoss("seg", batch_dice_settings.train_seg)
    wt_tc_dice = [2 * float(r.sum()) / (r.numel() + float(r.sum())) for r in (regions[:, 0], regions[:, 1])]
    expected_dice = (2 - sum(wt_tc_dice) + 1) / 3  # WT, TC predicted everywhere; ET nowhere: Dice 0
    assert seg_loss(only_et, all_masked).item() == pytest.approx(
        expected_dice + bce(only_et["seg"], regions).item(), rel=1e-4)


def test_slice_dice_weighs_each_tumour_slice_alike_and_skips_slices_without_the_region(batch_dice_settings):
    """`dice_over: slice`: per region, the mean Dice loss of the slices that have it (MONAI's DiceLoss with
    batch=False, restricted to those slices), plus the same BCE as batch mode; mask-less samples add nothing."""
    torch.manual_seed(0)
    out = {"seg": torch.randn(5, 3, 16, 16) * 3, "cls": torch.randn(5)}
    labels = torch.zeros(5, 1, 16, 16)
    labels[0, 0, 2:12, 2:12] = 2  # a large oedema: WT only
    labels[1, 0, 5:7, 5:7] = 4  # a small cap: WT, TC and ET
    labels[3, 0, :8] = 1  # a mask-less (Kaggle) sample: its label map must not count
    batch = {"image": torch.zeros(5, 1, 16, 16), "mask": labels, "has_mask": torch.tensor([True, True, True, False, True]),
             "label": torch.tensor([1.0, 1, 0, 1, 0])}
    regions = torch.from_numpy(regions_from_labels(labels[:, 0].numpy()).transpose(1, 0, 2, 3).astype(np.float32))
    per_slice = DiceLoss(sigmoid=True, reduction="none")(out["seg"], regions)[..., 0, 0]  # (N, R)
    expected_dice = torch.stack([per_slice[[0, 1], 0].mean(), per_slice[1, 1], per_slice[1, 2]]).mean()
    masked = [0, 1, 2, 4]
    expected = expected_dice + F.binary_cross_entropy_with_logits(out["seg"][masked], regions[masked])
    seg = batch_dice_settings.train_seg.model_copy(update={"dice_over": "slice"})
    torch.testing.assert_close(StageLoss("seg", seg)(out, batch), expected)
    # a small cap missed entirely costs as much as a large tumour missed: not so with a batch Dice
    miss = {"seg": torch.where(regions[:, :1] > 0, 20.0, -20.0), "cls": out["cls"]}  # WT alone
    miss["seg"][1] = -20.0
    slice_loss, batch_loss = (StageLoss("seg", params)(miss, batch).item()
                              for params in (seg, batch_dice_settings.train_seg))
    # the same BCE in both; Dice: one of two WT slices lost (0.5) against 4 of the 104 WT pixels (1 - 200 / 204)
    assert slice_loss - batch_loss == pytest.approx(0.5 - (1 - 200 / 204), abs=1e-4)
    both = StageLoss("seg", seg.model_copy(update={"dice_over": "both"}))(miss, batch).item()
    assert both == pytest.approx((slice_loss + batch_loss) / 2, abs=1e-6)  # the same BCE, the mean of the Dice terms


def test_negative_photos_train_the_seg_head_on_an_empty_mask_and_tumour_photos_still_add_nothing(batch_dice_settings):
    """`negative_photos_as_empty_masks`: a mask-less sample labelled 0 counts as a masked sample whose mask is empty
    (BCE against zeros, its predicted area in the batch Dice); one labelled 1 stays out of the seg term."""
    torch.manual_seed(0)
    out = {"seg": torch.randn(4, 3, 16, 16) * 3, "cls": torch.randn(4)}
    labels = torch.zeros(4, 1, 16, 16)
    labels[0, 0, 2:12, 2:12] = 2  # a BraTS slice with oedema
    batch = {"image": torch.zeros(4, 1, 16, 16), "mask": labels, "has_mask": torch.tensor([True, True, False, False]),
             "label": torch.tensor([1.0, 0, 0, 1])}  # BraTS tumour, BraTS clear, photo "no", photo "yes"
    regions = torch.from_numpy(regions_from_labels(labels[:, 0].numpy()).transpose(1, 0, 2, 3).astype(np.float32))
    joint = batch_dice_settings.train_joint
    on = StageLoss("joint", joint.model_copy(update={"negative_photos_as_empty_masks": True}))(out, batch)
    counted = [0, 1, 2]
    expected = (DiceLoss(sigmoid=True, batch=True)(out["seg"][counted], regions[counted])
                + F.binary_cross_entropy_with_logits(out["seg"][counted], regions[counted])
                + joint.cls_weight * F.binary_cross_entropy_with_logits(out["cls"], batch["label"]))
    torch.testing.assert_close(on, expected)
    off = StageLoss("joint", joint)(out, batch)
    assert not torch.isclose(on, off)  # off (the default), the "no" photo is left out as before
    # a seg head that fires on the whole "no" photo costs more with the option, and nothing without it
    fired = {"seg": out["seg"].clone(), "cls": out["cls"]}
    fired["seg"][2] = 20.0
    assert StageLoss("joint", joint)(fired, batch) == pytest.approx(off.item())
    assert StageLoss("joint", joint.model_copy(update={"negative_photos_as_empty_masks": True}))(fired, batch) > on + 1

def test_peak_term_is_a_bce_of_each_samples_largest_wt_logit_against_its_label(tiny_settings):
    """`peak_weight`: + weight × BCE(largest WT logit, label) over every sample, photos included; 0 adds nothing."""
    torch.manual_seed(0)
    out = {"seg": torch.randn(4, 3, 8, 8), "cls": torch.randn(4)}
    batch = {"image": torch.zeros(4, 1, 8, 8), "mask": torch.zeros(4, 1, 8, 8),
             "has_mask": torch.tensor([True, True, False, False]), "label": torch.tensor([1.0, 0, 0, 1])}
    joint = tiny_settings.train_joint
    base = StageLoss("joint", joint)(out, batch)
    peaked = StageLoss("joint", joint.model_copy(update={"peak_weight": 0.5}))(out, batch)
    largest = out["seg"][:, 0].flatten(1).max(1).values
    torch.testing.assert_close(peaked - base, 0.5 * F.binary_cross_entropy_with_logits(largest, batch["label"]))
    # one bright pixel on a tumour-free slice (sample 1) raises the term; the same pixel on a tumour photo lowers it
    for sample, sign in ((1, 1), (3, -1)):
        bright = {"seg": out["seg"].clone(), "cls": out["cls"]}
        bright["seg"][sample, 0, 4, 4] = 8.0
        moved = StageLoss("joint", joint.model_copy(update={"peak_weight": 0.5}))(bright, batch)
        moved_base = StageLoss("joint", joint)(bright, batch)
        assert sign * ((moved - moved_base) - (peaked - base)) > 0


def test_modality_dropout_blanks_channels_but_never_all_that_carry_signal():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4000, 4, 2, 2)
    images[:1000, 1:] = 0  # Kaggle-like: the image in the FLAIR channel, the other modalities missing
    dropped = drop_modalities(images, draw_modality_dropout(len(images), 4, 0.5, generator))
    kept = dropped.flatten(2).ne(0).any(2)
    assert kept.any(1).all()  # no sample is left without signal
    assert kept[:1000, 0].all()  # a single-channel image keeps its only channel
    four = kept[1000:]
    thinned = ~four.all(1)
    assert 0.35 < thinned.float().mean() < 0.6  # about modality_dropout of the 4-channel samples
    flair_only = (four == torch.tensor([True, False, False, False])).all(1)
    assert flair_only.sum() > 0.4 * thinned.sum()  # the single-channel case serving sees most
    assert four[thinned].sum(0).min() > 0 and (four.sum(1) == 2).any() and (four.sum(1) == 3).any()
    torch.testing.assert_close(dropped[kept[:, :, None, None].expand_as(images)], images[kept[:, :, None, None].expand_as(images)])
    draws = draw_modality_dropout(len(images), 4, 0.5, generator)  # a thinned sample always loses a channel:
    assert set(draws.subset.tolist()) == set(range(1, 15))  # never the subset of all four (1 in 15 of them, before)
    before = generator.get_state()
    assert draw_modality_dropout(len(images), 4, 0.0, generator) is None
    assert draw_modality_dropout(len(images), 1, 1.0, generator) is None  # one channel: nothing to drop
    assert torch.equal(generator.get_state(), before) and torch.equal(drop_modalities(images, None), images)


def test_a_step_that_augments_on_the_device_trains_as_one_fed_augmented_batches(tiny_settings):
    """train.augment_on: device hands the loader's reading-only batches to the step, which augments them after the
    copy: the same weights as with the loader augmenting (here both on the CPU), where skipping it would differ.
    With the stage's own settings (a train_seg.bias_field over the shared train.augment's), which the step applied
    the shared ones instead of: a GPU trained another recipe than a CPU from the same params."""
    cfg = tiny_settings.train.model_copy(update={"channels_last": False, "augment": Augment(
        flip=True, rotate_degrees=20, intensity_jitter=0.2, modality_dropout=0.5)})
    stage_augment = cfg.augment.model_copy(update={"bias_field": 0.3})  # as stage_augment(plan) gives it
    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(24, 16, 16, generator=generator) > 0.8).to(torch.uint8)
    data = SliceSet(torch.randn(24, 4, 16, 16, generator=generator).half(), masks, torch.ones(24, dtype=torch.bool),
                    masks.flatten(1).amax(1))
    weights = {}
    for how, augment, on_device in (("loader", stage_augment, False), ("device", stage_augment, True),
                                    ("not at all", None, False), ("shared settings", cfg.augment, False)):
        torch.manual_seed(0)
        model = place_model(MultitaskUNet(UNetConfig(4, 4, 2, seg_channels=3)), torch.device("cpu"), cfg)
        runner = StageRunner(model, make_optimizer(model, "seg", tiny_settings.train_seg),
                             StageLoss("seg", tiny_settings.train_seg), "seg", cfg, torch.device("cpu"))
        loader = training_loader(data, 8, torch.Generator().manual_seed(0), augment=augment,
                                 augment_on_device=on_device)
        runner.train_epoch(loader, 1, 1, on_batch=lambda loss: None)
        weights[how] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(weights["loader"], weights["device"])
    assert not torch.equal(weights["loader"], weights["not at all"])
    assert not torch.equal(weights["loader"], weights["shared settings"])  # the stage's field does change training


def test_losses_read_back_in_groups_give_every_step_its_loss_in_order(tiny_settings):
    """StageRunner reads its losses back every `read_losses_every` steps (one device sync for the group): the
    progress callback still gets every step's loss in order, the last partial group too, and the epoch's mean
    loss and weights are those of reading each step at once."""
    cfg = tiny_settings.train.model_copy(update={"channels_last": False})
    generator = torch.Generator().manual_seed(1)
    masks = (torch.rand(44, 16, 16, generator=generator) > 0.8).to(torch.uint8)
    data = SliceSet(torch.randn(44, 1, 16, 16, generator=generator).half(), masks, torch.ones(44, dtype=torch.bool),
                    masks.flatten(1).amax(1))
    seen, means, weights = {}, {}, {}
    for every in (1, 3):
        torch.manual_seed(0)
        model = place_model(MultitaskUNet(UNetConfig(1, 4, 2, seg_channels=3)), torch.device("cpu"), cfg)
        runner = StageRunner(model, make_optimizer(model, "seg", tiny_settings.train_seg),
                             StageLoss("seg", tiny_settings.train_seg), "seg", cfg, torch.device("cpu"))
        runner.read_losses_every = every
        seen[every] = []
        means[every] = runner.train_epoch(training_loader(data, 4, torch.Generator().manual_seed(0)), 1, 1,
                                          on_batch=seen[every].append)
        weights[every] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert len(seen[3]) == 11 and seen[3] == seen[1]  # 11 steps: three groups of 3 and the last 2
    assert means[3] == means[1] and torch.equal(weights[3], weights[1])


def test_augment_on_auto_augments_on_a_gpu_and_in_the_loader_on_a_cpu(tiny_settings):
    on = lambda where, device: augments_on_device(tiny_settings.train.model_copy(update={"augment_on": where}),
                                                  torch.device(device))
    assert on("auto", "cuda") and not on("auto", "cpu")
    assert on("device", "cpu") and not on("loader", "cuda")


def test_modality_dropout_reaches_training_batches_but_not_the_4_channel_inference_path(tiny_settings):
    """Training batches lose channels (the loader thins them); validation, and the predictor that evaluation and
    serving use, see every channel of every slice, and the predictor's output is the plain network's on the 4-channel
    input."""
    from tasks.inference.predictor import TorchPredictor

    cfg = tiny_settings.train.model_copy(update={"channels_last": False, "augment": Augment(
        flip=False, rotate_degrees=0, intensity_jitter=0, modality_dropout=1.0)})
    torch.manual_seed(0)
    images = torch.randn(16, 4, 16, 16).half()
    data = SliceSet(images, torch.zeros(16, 16, 16, dtype=torch.uint8), torch.ones(16, dtype=torch.bool),
                    torch.zeros(16, dtype=torch.uint8))
    model = place_model(MultitaskUNet(UNetConfig(4, 4, 2, seg_channels=3)), torch.device("cpu"), cfg)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    runner = StageRunner(model, make_optimizer(model, "seg", tiny_settings.train_seg),
                         StageLoss("seg", tiny_settings.train_seg), "seg", cfg, torch.device("cpu"))
    runner.train_epoch(training_loader(data, 8, torch.Generator().manual_seed(0), augment=cfg.augment), 1, 1,
                       on_batch=lambda loss: None)
    training = torch.cat(seen)
    assert (training.flatten(2).ne(0).any(2).sum(1) < 4).all()  # share 1.0: every training sample thinned

    seen.clear()
    row = runner.evaluate(data)  # one batch: the slices as they are
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], images.float())  # validation: every channel, untouched
    assert {"val_dice", "val_dice_tc", "val_dice_et"} <= set(row) and not any("flair" in k for k in row)
    flair = runner.evaluate_flair_only(data)  # then FLAIR alone (what 1 channel costs), a pass of its own
    torch.testing.assert_close(seen[1], images.float() * torch.tensor([1.0, 0, 0, 0]).view(1, 4, 1, 1))
    assert set(flair) == {"val_dice_flair_only", "val_dice_tc_flair_only", "val_dice_et_flair_only"}
    seen.clear()
    model.eval()
    prediction = TorchPredictor(model).predict(images.float().numpy())
    torch.testing.assert_close(torch.cat(seen), images.float())
    with torch.no_grad():
        plain = torch.sigmoid(model(images.float(), heads=("seg",))["seg"])
    np.testing.assert_allclose(prediction.region_probability, plain.numpy(), atol=1e-6)
    assert prediction.region_probability.shape == (16, 3, 16, 16)


@pytest.mark.parametrize("channels_last", [True, False])
def test_train_channels_last_reaches_weights_and_inputs_of_training_and_validation(tiny_settings, channels_last):
    cfg = tiny_settings.train.model_copy(update={"channels_last": channels_last})
    nhwc = torch.channels_last
    data = SliceSet(torch.randn(8, 2, 16, 16).half(), torch.zeros(8, 16, 16, dtype=torch.uint8),
                    torch.ones(8, dtype=torch.bool), torch.zeros(8, dtype=torch.uint8))  # 2 channels: NHWC != NCHW
    model = place_model(MultitaskUNet(UNetConfig(2, 4, 2)), torch.device("cpu"), cfg)
    inputs = []
    model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].is_contiguous(memory_format=nhwc)))
    runner = StageRunner(model, make_optimizer(model, "seg", tiny_settings.train_seg),
                         StageLoss("seg", tiny_settings.train_seg), "seg", cfg, torch.device("cpu"))
    runner.train_epoch(training_loader(data, 4, torch.Generator().manual_seed(0)), 1, 1, on_batch=lambda loss: None)
    runner.evaluate(data)
    runner.evaluate_flair_only(data)
    assert model.encoder.levels[0].conv1.conv.weight.is_contiguous(memory_format=nhwc) == channels_last
    assert inputs == [channels_last] * 4  # two training batches, one validation batch as it is and FLAIR alone


def test_augmentation_moves_mask_with_image_and_keeps_background_zero():
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(6, 1, 32, 32)
    mask[:, :, 4:14, 6:12] = 1  # off-centre, so flips and rotations move it
    image, moved = augment_batch(mask.clone(), mask.clone(), Augment(flip=True, rotate_degrees=20, intensity_jitter=0),
                                 generator)
    assert not torch.equal(moved, mask)
    agreement = ((image > 0.5) == (moved > 0.5)).float().mean()
    assert agreement > 0.97
    jittered, _ = augment_batch(mask.clone(), mask.clone(), Augment(flip=False, rotate_degrees=0, intensity_jitter=0.5),
                                generator)
    assert torch.all(jittered[mask == 0] == 0) and not torch.equal(jittered, mask)


def test_three_stages_write_checkpoints_and_history(in_project, tiny_settings):
    settings = with_epochs(tiny_settings, seg=2, cls=2, joint=2)
    steps = {"seg": train_seg, "cls": train_cls, "joint": train_joint}
    results = {stage: step.main(settings) for stage, step in steps.items()}
    for stage, result in results.items():
        history = pd.read_csv(paths.history_file(stage))
        assert list(history["epoch"]) == [1, 2] and {"train_loss", "val_loss"} <= set(history.columns)
        assert result["epochs_run"] == 2
        best = load_checkpoint(paths.best_checkpoint(stage))
        assert best["stage"] == stage and best["metric_name"] == result["metric"]
        assert math.isclose(best["best_metric"], history[result["metric"]].max(), abs_tol=1e-4)
        # the weights of the best epoch (the first of equals), not of the last one
        assert best["epoch"] == int(history["epoch"][history[result["metric"]].idxmax()])
        assert paths.last_checkpoint(stage).exists() and not list(paths.checkpoint_dir(stage).glob("*.tmp"))
        # each epoch timed in wall and CPU seconds (the peer benchmark's busy-machine check), in a file of their own:
        # neither in the history (evaluate depends on it: a resumed run's other timings reran evaluate) nor best.pt
        timings = pd.read_csv(paths.timings_file(stage))
        assert list(timings["epoch"]) == [1, 2]
        assert (timings["seconds"] > 0).all() and (timings["cpu_seconds"] > 0).all()
        assert timings["machine"].str.match(r"cpu .+, \d+ threads$").all()  # what measured them (bench_peer checks)
        assert not set(training_resume.TIMINGS) & (set(best["extra"]["metrics"]) | set(history.columns))
    assert {"val_dice", "val_accuracy", "val_roc_auc"} <= set(pd.read_csv(paths.history_file("joint")).columns)


def test_a_stage_draws_its_bar_on_a_terminal_only(in_project, tiny_settings, capsys, monkeypatch):
    """Off a terminal (`make run > log`, CI) Rich drew the finished bar once, cut at 80 columns
    (`train_joint ━━━━━ 276/2…`); the epoch lines the stage logs say it all there."""
    for forcing in ("FORCE_COLOR", "TTY_COMPATIBLE"):  # Rich takes either as a terminal: a CI may set them
        monkeypatch.delenv(forcing, raising=False)
    train_seg.main(with_epochs(tiny_settings, seg=1, cls=1, joint=1))
    err = capsys.readouterr().err
    assert "━" not in err and "train_seg" not in err
    from tasks.training.stage import _progress

    assert _progress(True).disable  # no terminal here
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # on a terminal the bar is drawn, by the process that shows it
    assert not _progress(True).disable and _progress(False).disable


def test_frozen_encoder_and_decoder_are_unchanged_by_train_cls(in_project, tiny_settings):
    train_seg.main(tiny_settings)
    train_cls.main(with_epochs(tiny_settings, cls=2))
    seg = load_checkpoint(paths.best_checkpoint("seg"))["model"]
    cls = load_checkpoint(paths.last_checkpoint("cls"))["model"]
    for name, tensor in seg.items():
        if name.startswith(("encoder.", "seg_decoder.")):
            assert torch.equal(tensor, cls[name]), name
    assert any(not torch.equal(seg[n], cls[n]) for n in seg if n.startswith("cls_head."))


def test_joint_stage_gives_the_encoder_its_own_lower_learning_rate(tiny_settings):
    model = MultitaskUNet(UNetConfig(1, 4, 2))
    optimizer = make_optimizer(model, "joint", tiny_settings.train_joint)
    encoder_group, head_group = optimizer.param_groups
    assert encoder_group["lr"] == tiny_settings.train_joint.encoder_lr < head_group["lr"] == tiny_settings.train_joint.head_lr
    assert {id(p) for p in encoder_group["params"]} == {id(p) for p in model.encoder.parameters()}


def test_two_seeded_runs_give_identical_metrics(tiny_data, tmp_path, tiny_settings, monkeypatch):
    other = make_tiny_processed(tmp_path / "other")
    settings = with_epochs(tiny_settings, seg=2)
    histories, best = [], []
    for root in (tiny_data.root, other.root):
        monkeypatch.chdir(root)
        train_seg.main(settings)
        histories.append(metrics_only(pd.read_csv(paths.history_file("seg"))))
        best.append(sha256_file(paths.best_checkpoint("seg")))
    pd.testing.assert_frame_equal(*histories)
    # best.pt byte for byte (no wall-clock seconds in it), so model.onnx, which records its sha256, is too
    assert best[0] == best[1]


def test_loader_workers_change_nothing_that_is_learned(tmp_path, monkeypatch):
    """Batches, augmentation, modality dropout and the model's dropout noise are drawn alike with 0 or 2 loader
    workers, so the weights are the same bit for bit (4 channels; train_cls: two epochs, dropout in the head). The
    stages do thin their inputs: without modality dropout they learn other weights."""
    four = with_epochs(shrink_settings(load_settings(REPO / "params.yaml"), modalities=("flair", "t1", "t1ce", "t2")),
                       cls=2)
    assert four.train.augment.modality_dropout > 0
    digests, histories = {}, {}
    for workers, dropout in ((0, True), (2, True), (0, False)):
        augment = four.train.augment.model_copy(update={} if dropout else {"modality_dropout": 0.0})
        settings = with_section(four, "train", num_workers=workers, augment=augment)
        monkeypatch.chdir(make_tiny_processed(tmp_path / f"workers{workers}-{dropout}", channels=4).root)
        digests[workers, dropout] = tuple(step.main(settings)["weights_digest"] for step in (train_seg, train_cls))
        histories[workers, dropout] = [metrics_only(pd.read_csv(paths.history_file(stage))) for stage in ("seg", "cls")]
    assert digests[0, True] == digests[2, True]
    for alone, with_workers in zip(histories[0, True], histories[2, True]):  # validation read by the workers too
        pd.testing.assert_frame_equal(alone, with_workers, check_exact=True)
    assert digests[0, False][0] != digests[0, True][0] and digests[0, False][1] != digests[0, True][1]


def kill_in_second_epoch(settings, monkeypatch) -> None:
    """Run train_seg with `settings` in the current folder and kill it (KeyboardInterrupt) in its second epoch."""
    real_epoch, calls = training_stage.StageRunner.train_epoch, []

    def crash_in_second_epoch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_epoch(self, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(training_stage.StageRunner, "train_epoch", crash_in_second_epoch)
        with pytest.raises(KeyboardInterrupt):
            train_seg.main(settings)


def test_killed_run_resumes_from_its_last_epoch_and_matches_an_uninterrupted_one(tiny_data, tmp_path, tiny_settings,
                                                                                   monkeypatch):
    settings = with_epochs(tiny_settings, seg=3)
    uninterrupted = make_tiny_processed(tmp_path / "uninterrupted")
    monkeypatch.chdir(uninterrupted.root)
    train_seg.main(settings)
    expected = metrics_only(pd.read_csv(paths.history_file("seg")))

    monkeypatch.chdir(tiny_data.root)
    kill_in_second_epoch(settings, monkeypatch)
    assert load_checkpoint(paths.last_checkpoint("seg"))["epoch"] == 1

    result = train_seg.main(settings)
    assert result["resumed_from_epoch"] == 1 and result["epochs_run"] == 3
    pd.testing.assert_frame_equal(metrics_only(pd.read_csv(paths.history_file("seg"))), expected)


def test_ema_follows_each_step_and_is_what_validation_scores(tiny_settings):
    """train.ema_decay d: the average starts as the first step's weights, then w_avg <- d * w_avg + (1 - d) * w after
    each step (batch-norm statistics too; its step counters follow the model: they were averaged and truncated, 1
    after two steps); validation runs the average, not the model."""
    decay = 0.8
    cfg = tiny_settings.train.model_copy(update={"ema_decay": decay, "channels_last": False})
    data = SliceSet(torch.randn(8, 1, 16, 16).half(), torch.zeros(8, 16, 16, dtype=torch.uint8),
                    torch.ones(8, dtype=torch.bool), torch.zeros(8, dtype=torch.uint8))
    model = place_model(MultitaskUNet(UNetConfig(1, 4, 2)), torch.device("cpu"), cfg)
    runner = StageRunner(model, make_optimizer(model, "seg", tiny_settings.train_seg),
                         StageLoss("seg", tiny_settings.train_seg), "seg", cfg, torch.device("cpu"))
    after = []
    runner.optimizer.register_step_post_hook(lambda *_: after.append(
        {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}))
    runner.train_epoch(training_loader(data, 4, torch.Generator().manual_seed(0)), 1, 1, on_batch=lambda loss: None)
    assert len(after) == 2
    averaged = runner.handed_on.state_dict()
    for name, first in after[0].items():
        torch.testing.assert_close(averaged[name], decay * first + (1 - decay) * after[1][name])
    counters = [k for k, v in model.state_dict().items() if not v.is_floating_point()]
    counted = {k: (averaged[k].item(), model.state_dict()[k].item()) for k in counters}
    assert all(mean == model_count for mean, model_count in counted.values())  # counts, as the model's
    assert counted["encoder.levels.0.norm1.num_batches_tracked"] == (2, 2)
    assert runner.handed_on is not model
    assert not torch.equal(averaged["encoder.levels.0.conv1.conv.weight"], model.encoder.levels[0].conv1.conv.weight)
    seen = []
    runner.handed_on.register_forward_pre_hook(lambda module, args: seen.append(1))
    runner.evaluate(data)
    assert seen  # validation ran the average
    off = StageRunner(model, runner.optimizer, runner.loss_fn, "seg", tiny_settings.train, torch.device("cpu"))
    assert off.ema is None and off.handed_on is model


def test_with_ema_best_pt_holds_the_average_and_a_killed_run_resumes_it(tiny_data, tmp_path, tiny_settings,
                                                                        monkeypatch):
    settings = with_section(with_epochs(tiny_settings, seg=3), "train", ema_decay=0.5)
    uninterrupted = make_tiny_processed(tmp_path / "uninterrupted")
    monkeypatch.chdir(uninterrupted.root)
    train_seg.main(settings)
    expected = metrics_only(pd.read_csv(paths.history_file("seg")))
    expected_best = sha256_file(paths.best_checkpoint("seg"))

    monkeypatch.chdir(tiny_data.root)
    kill_in_second_epoch(settings, monkeypatch)
    # after epoch 1 (best so far, being the first): best.pt holds the average, last.pt the model and the average
    last, best = load_checkpoint(paths.last_checkpoint("seg")), load_checkpoint(paths.best_checkpoint("seg"))
    assert last["epoch"] == best["epoch"] == 1
    average = {k.removeprefix("module."): v for k, v in last["extra"]["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(best["model"][k], average[k]) for k in best["model"])
    assert any(not torch.equal(last["model"][k], average[k]) for k in last["model"])
    assert train_seg.main(settings)["resumed_from_epoch"] == 1
    # the validation metrics are the average's: equal only if the resumed run restored it
    pd.testing.assert_frame_equal(metrics_only(pd.read_csv(paths.history_file("seg"))), expected)
    assert sha256_file(paths.best_checkpoint("seg")) == expected_best


def test_more_epochs_continue_a_constant_schedule_but_changed_params_start_fresh(in_project, tiny_settings):
    # with no warm-up, a constant schedule's LR does not depend on the planned epochs
    constant = with_section(tiny_settings, "train", lr_schedule="constant", warmup_epochs=0)
    train_seg.main(constant)
    assert train_seg.main(with_epochs(constant, seg=2))["resumed_from_epoch"] == 1
    assert len(pd.read_csv(paths.history_file("seg"))) == 2
    # fewer epochs than were trained: a fresh run would have stopped sooner (and kept another best.pt)
    assert train_seg.main(with_epochs(constant, seg=1))["resumed_from_epoch"] == 0
    changed = with_section(with_epochs(constant, seg=2), "train_seg", lr=2e-4)
    assert train_seg.main(changed)["resumed_from_epoch"] == 0


def test_the_cosine_schedule_starts_fresh_for_other_epochs(in_project, tiny_settings):
    """Cosine decay runs over the planned epochs: epoch 1 of a 1-epoch plan ends at 5 % of the LR, of a 2-epoch plan
    at half of it, so a longer plan cannot continue a shorter one."""
    assert tiny_settings.train.lr_schedule == "cosine"
    train_seg.main(tiny_settings)
    assert train_seg.main(with_epochs(tiny_settings, seg=2))["resumed_from_epoch"] == 0
    # a warm-up is a fraction of the planned epochs in the LR's arithmetic too (its last bits differ)
    warm = with_section(tiny_settings, "train", lr_schedule="constant")
    assert warm.train.warmup_epochs > 0
    train_seg.main(warm)
    assert train_seg.main(with_epochs(warm, seg=2))["resumed_from_epoch"] == 0


def test_a_best_pt_left_by_another_run_is_never_resumed_under_this_runs_last_pt(in_project, tiny_settings,
                                                                                   monkeypatch):
    """A fresh run that died between writing best.pt and last.pt (disk full: last.pt also holds the optimizer) left
    its best.pt beside the earlier run's last.pt; going back to the earlier params resumed that last.pt and kept the
    other run's best.pt as its result."""
    train_seg.main(tiny_settings)
    mine = sha256_file(paths.best_checkpoint("seg"))
    other = with_section(tiny_settings, "train_seg", lr=1e-6)

    def full_disk_for_last_pt(path, **kwargs):
        if path.name == "last.pt":
            raise OSError(28, "No space left on device")
        return save_checkpoint(path, **kwargs)

    with monkeypatch.context() as patched, pytest.raises(OSError):  # (undo() would also undo in_project's chdir)
        patched.setattr(training_resume, "save_checkpoint", full_disk_for_last_pt)
        train_seg.main(other)
    assert load_checkpoint(paths.best_checkpoint("seg"))["params"]["train_seg"]["lr"] == 1e-6  # the other run's
    result = train_seg.main(tiny_settings)
    assert result["resumed_from_epoch"] == 0  # not "resumed", with the other run's best.pt as its own
    assert sha256_file(paths.best_checkpoint("seg")) == mine


def test_a_stage_refuses_a_previous_checkpoint_trained_on_other_data(in_project, tiny_settings):
    """Steps run by hand: train_seg on one data set, then the data resliced or resplit, then train_cls started
    from the old seg weights without a word."""
    train_seg.main(tiny_settings)
    test_list = paths.SPLITS / "test.txt"
    test_list.write_text(test_list.read_text() + "\n")  # another split, as far as any fingerprint can tell
    with pytest.raises(SliceWiseError, match="train_seg's checkpoint was trained on other processed data or splits"):
        train_cls.main(tiny_settings)


def test_changed_training_code_starts_fresh(in_project, tiny_settings, monkeypatch):
    """DVC reruns a training stage when its code changes; resuming last.pt would then train no epoch and keep the
    old code's weights under the new code's dvc.lock."""
    train_seg.main(tiny_settings)
    assert train_seg.main(tiny_settings)["resumed_from_epoch"] == 1  # same code: nothing left to train
    monkeypatch.setattr(training_plan, "training_code_digest", lambda: "edited-loss-py")
    result = train_seg.main(tiny_settings)
    assert result["resumed_from_epoch"] == 0 and result["epochs_run"] == 1


def test_the_training_code_digest_follows_each_module_that_decides_what_is_learned(monkeypatch):
    """code_identity itself (comments and docstrings do not count) is tested with the slicer's
    (test_slice.py); here: the digest a run resumes by covers every module of TRAINING_CODE, each on its own."""
    digest = training_plan.training_code_digest()
    assert digest == training_plan.training_code_digest() and len(digest) == 16  # stable between calls
    real = training_plan.code_identity
    for module in training_plan.TRAINING_CODE:
        edited = importlib.import_module(module).__file__

        def one_module_edited(path, edited=edited):
            return real(path) + (b"edit" if str(path) == edited else b"")

        monkeypatch.setattr(training_plan, "code_identity", one_module_edited)
        assert training_plan.training_code_digest() != digest, module
    monkeypatch.undo()
    assert training_plan.training_code_digest() == digest


def test_less_patience_than_a_finished_run_had_starts_fresh_and_more_continues(in_project, tiny_settings):
    """A run that trained on where today's patience would have stopped holds another epoch's best.pt than a fresh
    run would: it starts fresh. More patience continues it, as a fresh run would have gone on."""
    patient = with_epochs(with_section(frozen_seg(tiny_settings, min_epochs=1), "train", patience=3), seg=4)
    assert train_seg.main(patient)["epochs_run"] == 4  # no improvement after epoch 1; stops at the last epoch
    impatient = with_section(patient, "train", patience=1)
    result = train_seg.main(impatient)
    assert result["resumed_from_epoch"] == 0 and result["epochs_run"] == 2
    result = train_seg.main(patient)  # more patience again: continues the 2-epoch run
    assert result["resumed_from_epoch"] == 2 and result["epochs_run"] == 4


def test_a_continued_run_writes_the_history_a_fresh_run_writes(tmp_path, monkeypatch):
    """The FLAIR-only pass fills the last row of a run. A run stopped early (patience 1) and continued with more
    patience kept those figures on its old last epoch too, so its history (a DVC plot, a dep of evaluate) was not the
    one a fresh run with today's settings writes."""
    monkeypatch.chdir(make_tiny_processed(tmp_path, channels=4).root)  # FLAIR alone means something with 4 channels
    four = shrink_settings(load_settings(REPO / "params.yaml"), modalities=("flair", "t1", "t1ce", "t2"))
    patient = with_epochs(with_section(frozen_seg(four, min_epochs=1), "train", patience=3), seg=4)
    train_seg.main(with_section(patient, "train", patience=1))  # stops after epoch 2
    assert train_seg.main(patient)["resumed_from_epoch"] == 2
    continued = pd.read_csv(paths.history_file("seg"))
    for checkpoint in ("best.pt", "last.pt"):
        (paths.checkpoint_dir("seg") / checkpoint).unlink()
    assert train_seg.main(patient)["resumed_from_epoch"] == 0
    fresh = pd.read_csv(paths.history_file("seg"))
    flair_only = [column for column in fresh.columns if column.endswith("_flair_only")]
    assert flair_only and fresh[flair_only].notna().all(axis=1).tolist() == [False, False, False, True]
    pd.testing.assert_frame_equal(continued, fresh)


def test_a_resumed_optimizer_keeps_the_fused_choice_of_the_device_it_resumes_on(tiny_settings):
    """`make_optimizer` takes fused AdamW on CUDA only: on the CPU it would round differently from the update every
    recorded CPU model was trained with. `load_state_dict` brought the saved run's choice back with the rest, so a
    last.pt written on a GPU went on fused on a CPU (and a CPU one unfused on a GPU)."""
    model = MultitaskUNet(UNetConfig(in_channels=1, base_channels=4, depth=2))
    saved = make_optimizer(model, "seg", tiny_settings.train_seg)
    for group in saved.param_groups:
        group["fused"] = True  # as on CUDA (the fused kernel runs on the CPU too)
    model(torch.randn(2, 1, 16, 16))["seg"].mean().backward()
    saved.step()

    resumed = make_optimizer(model, "seg", tiny_settings.train_seg)
    training_resume.restore_optimizer(resumed, saved.state_dict())
    assert [group["fused"] for group in resumed.param_groups] == [None]
    assert resumed.state_dict()["state"][0]["step"] == 1  # the saved state came along
    resumed.step()


def test_a_fresh_start_never_leaves_an_earlier_runs_best_checkpoint_as_its_own(in_project, tiny_settings,
                                                                               monkeypatch):
    """dvc.yaml persists best.pt (resuming needs it), so a run that starts fresh must remove the earlier one: with a
    metric that never improves (NaN), no epoch would overwrite it and DVC would commit it as this run's output."""
    train_seg.main(tiny_settings)
    assert paths.best_checkpoint("seg").exists()
    changed = with_section(tiny_settings, "train_seg", lr=2e-4)  # another run key: starts fresh
    monkeypatch.setattr(training_stage, "metric_of", lambda stage, row: math.nan)
    train_seg.main(changed)
    assert not paths.best_checkpoint("seg").exists()


def frozen_seg(settings, min_epochs: int):
    """A seg stage that cannot learn: LR 1e-12 and instance norm (batch norm's running statistics would keep moving,
    and the val Dice with them), patience 1."""
    frozen = with_section(with_section(settings, "train_seg", lr=1e-12), "train", patience=1, min_epochs=min_epochs)
    profile = frozen.active.model_copy(update={"model": frozen.active.model.model_copy(update={"norm": "instance"})})
    return frozen.model_copy(update={"profiles": {**frozen.profiles, frozen.profile: profile}})


def test_early_stopping_ends_a_stage_that_stops_improving(in_project, tiny_settings):
    frozen = frozen_seg(tiny_settings, min_epochs=1)
    result = train_seg.main(with_epochs(frozen, seg=5))
    assert result["epochs_run"] == 2  # epoch 1 sets the best, epoch 2 cannot beat it


@pytest.mark.parametrize("min_epochs", [3, 4])
def test_early_stopping_never_ends_a_stage_before_the_minimum_epochs(in_project, tiny_settings, min_epochs):
    result = train_seg.main(with_epochs(frozen_seg(tiny_settings, min_epochs), seg=6))
    assert result["epochs_run"] == min_epochs  # no improvement after epoch 1, so it stops right at the minimum
    assert len(pd.read_csv(paths.history_file("seg"))) == min_epochs
    assert load_checkpoint(paths.best_checkpoint("seg"))["epoch"] == 1  # the last epochs never beat it
    assert load_checkpoint(paths.last_checkpoint("seg"))["epoch"] == min_epochs


def test_each_epoch_says_how_it_went_in_the_log(in_project, tiny_settings, caplog):
    with caplog.at_level("INFO", logger="tasks.training.stage"):
        result = train_seg.main(with_epochs(tiny_settings, seg=2))
    # each record once: after the flow tests (flows/stage_task.forward_step_logs gives the `tasks` logger the handlers
    # of `prefect.extra`) the same record reaches the capture handler twice; two records would still count twice
    records = {id(record): record for record in caplog.records}.values()
    lines = [r.getMessage() for r in records if r.getMessage().startswith("train_seg: epoch ")]
    assert [line.split(",")[0] for line in lines] == ["train_seg: epoch 1/2", "train_seg: epoch 2/2"]
    assert result["epochs_run"] == 2 and "val_dice" in lines[0] and lines[0].endswith(" s")
    assert " (best)" in lines[0]  # the first epoch is the best so far


def test_a_one_class_validation_set_names_the_metric_the_classifier_stage_follows():
    """ROC-AUC is undefined when the validation slices are all of one class: cls follows accuracy then, and its log
    line, progress bar and checkpoint must name accuracy, not print accuracy under ROC-AUC's name."""
    one_class = {"val_accuracy": 0.75, "val_roc_auc": math.nan, "val_dice": 0.4, "val_dice_accuracy_mean": 0.6}
    assert followed_metric("cls", one_class) == "val_accuracy" and metric_of("cls", one_class) == 0.75
    both = {**one_class, "val_roc_auc": 0.9}
    assert followed_metric("cls", both) == "val_roc_auc" and metric_of("cls", both) == 0.9
    assert [followed_metric(stage, one_class) for stage in ("seg", "joint")] == ["val_dice", "val_dice_accuracy_mean"]


def test_a_cls_stage_on_a_one_class_validation_set_says_it_follows_accuracy_also_when_resumed(in_project, tiny_settings,
                                                                                             monkeypatch, caplog):
    """With ROC-AUC undefined (one class in the validation set) the stage follows accuracy; its log lines, its result
    and best.pt name accuracy, and so does a rerun that resumes with nothing left to train."""
    from tasks.training import steps

    train_seg.main(tiny_settings)
    one_class = steps._classification_metrics

    def roc_undefined(probabilities, labels):
        return {**one_class(probabilities, labels), "val_roc_auc": math.nan}

    monkeypatch.setattr(steps, "_classification_metrics", roc_undefined)
    with caplog.at_level("INFO", logger="tasks.training.stage"):
        result = train_cls.main(tiny_settings)
    assert result["metric"] == "val_accuracy"
    assert load_checkpoint(paths.best_checkpoint("cls"))["metric_name"] == "val_accuracy"
    lines = {r.getMessage() for r in caplog.records if r.getMessage().startswith("train_cls: epoch ")}
    assert lines and all("val_accuracy" in line and "val_roc_auc" not in line for line in lines)
    resumed = train_cls.main(tiny_settings)
    assert resumed["resumed_from_epoch"] == resumed["epochs_run"] and resumed["metric"] == "val_accuracy"


def test_a_stage_stuck_at_its_floor_says_so_in_log_result_and_tracker(in_project, tiny_settings, monkeypatch, caplog):
    """A seg head that predicts no tumour anywhere (val Dice 0) must be reported, not pass silently."""
    initial = training_stage._initial_model

    def predicts_nothing(plan, data):
        model = initial(plan, data)
        torch.nn.init.constant_(model.seg_decoder.out.conv.conv.bias, -50.0)  # every pixel far below 0.5
        return model

    monkeypatch.setattr(training_stage, "_initial_model", predicts_nothing)
    tags = {}

    class Recorder(NullTracker):
        def set_tags(self, new):
            tags.update(new)

    settings = with_section(with_section(tiny_settings, "train_seg", lr=1e-12), "train", min_epochs=2, patience=1)
    plan = training_stage.plan_stage(with_epochs(settings, seg=2), "seg")
    with caplog.at_level("ERROR"):
        result = training_stage.train_stage(plan, Recorder())
    assert result["stuck_at_floor"] and "val_dice 0.0000 after 2 epochs" in result["stuck_at_floor"]
    assert "STUCK AT ITS FLOOR" in caplog.text and tags["stuck_at_floor"] == "true"
    # the weights handed on, by their sha256: what a registry version shipping them names too (tasks lineage)
    assert tags["checkpoint_sha256"] == sha256_file(plan.checkpoint_dir / "best.pt")
    assert training_stage.stuck_at_floor("seg", [{"val_dice": 0.01}, {"val_dice": 0.3}], 0.05) is None
    assert training_stage.stuck_at_floor("cls", [{"val_roc_auc": 0.52}], 0.05)  # a guessing classifier
    assert training_stage.stuck_at_floor("cls", [{"val_roc_auc": 0.9}], 0.05) is None
    assert "within 0.05 of its floor 0.5" in training_stage.stuck_at_floor("cls", [{"val_roc_auc": 0.52}], 0.05)
    # an inverted classifier is not "within" the margin: it was reported as if it were
    inverted = training_stage.stuck_at_floor("cls", [{"val_roc_auc": 0.2}], 0.05)
    assert "below its floor 0.5" in inverted and "within" not in inverted


@pytest.mark.parametrize("min_epochs, patience, rows_run", [(9, 3, 3), (2, 0, 2)])
def test_what_flair_alone_costs_is_scored_once_after_the_stages_last_epoch(tmp_path, tiny_settings, monkeypatch,
                                                                            min_epochs, patience, rows_run):
    """The FLAIR-only pass is a second pass over the validation set: it runs after the stage's last epoch (the last
    of `epochs`, or the one early stopping ends on), not every epoch, and its time counts in that epoch's seconds."""
    data = make_tiny_processed(tmp_path, channels=4)
    monkeypatch.chdir(data.root)
    settings = shrink_settings(load_settings(REPO / "params.yaml"), modalities=("flair", "t1", "t1ce", "t2"))
    settings = with_section(with_epochs(settings, seg=3), "train", min_epochs=min_epochs, patience=patience)
    training_stage.train_stage(training_stage.plan_stage(settings, "seg"))
    history = pd.read_csv(paths.history_file("seg"))
    assert list(history["epoch"]) == list(range(1, rows_run + 1))
    flair = history[["val_dice_flair_only", "val_dice_tc_flair_only", "val_dice_et_flair_only"]]
    assert flair.iloc[-1].notna().all() and flair.iloc[:-1].isna().all().all()
    assert history["val_dice"].notna().all()


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_foreground_sampling_puts_the_configured_share_of_tumour_slices_in_every_batch(share):
    """nnU-Net-style oversampling: with 10 % tumour slices, each batch still has ceil(share * batch) of them."""
    labels = torch.zeros(400, dtype=torch.uint8)
    labels[::10] = 1
    data = SliceSet(torch.zeros(400, 1, 4, 4).half(), torch.zeros(400, 4, 4, dtype=torch.uint8),
                    torch.ones(400, dtype=torch.bool), labels)
    loader = training_loader(data, 16, torch.Generator().manual_seed(0), foreground_share=share)
    per_batch = [int(batch["label"].sum()) for batch in loader]
    assert len(per_batch) == 400 // 16
    assert min(per_batch) >= math.ceil(share * 16)
    natural = [int(batch["label"].sum()) for batch in training_loader(data, 16, torch.Generator().manual_seed(0))]
    assert sum(natural) / (16 * len(natural)) < 0.2 < sum(per_batch) / (16 * len(per_batch))


def test_kaggle_quota_and_foreground_share_compose_in_one_batch():
    has_mask = torch.tensor([True] * 300 + [False] * 20)
    labels = torch.tensor([1] * 30 + [0] * 270 + [1] * 10 + [0] * 10, dtype=torch.uint8)
    sampler = ComposedBatches(has_mask, labels, 16, torch.Generator().manual_seed(1), kaggle_share=0.5,
                              foreground_share=0.5)
    batches = list(sampler)
    assert len(batches) == 320 // 16
    for batch in batches:
        kaggle = [i for i in batch if not has_mask[i]]
        tumour = [i for i in batch if has_mask[i] and labels[i] == 1]
        assert len(kaggle) == 8 and len(tumour) >= 4
    again = list(ComposedBatches(has_mask, labels, 16, torch.Generator().manual_seed(1), 0.5, 0.5))
    assert again == batches  # the generator alone decides: DDP processes draw the same global batches


@pytest.mark.parametrize("share, expected", [(0.02, 1), (0.97, 15), (0.5, 8)])
def test_a_kaggle_share_never_rounds_a_source_out_of_the_batches(share, expected, caplog):
    """0.02 x 16 rounds to 0 and 0.97 x 16 to 16: either the Kaggle images or the BraTS slices (every mask of a
    joint batch) were never drawn, silently. Each batch keeps at least one of each, and the log says so."""
    has_mask = torch.tensor([True] * 300 + [False] * 40)
    labels = torch.tensor([1] * 30 + [0] * 270 + [1] * 20 + [0] * 20, dtype=torch.uint8)
    with caplog.at_level("WARNING"):
        batches = list(ComposedBatches(has_mask, labels, 16, torch.Generator().manual_seed(2), kaggle_share=share))
    assert all(sum(1 for i in batch if not has_mask[i]) == expected for batch in batches)
    assert ("holds both sources" in caplog.text) == (share != 0.5)


def test_a_batch_of_one_draws_the_kaggle_images_at_their_natural_rate(caplog):
    """Review 2026-12-07: no share of a batch of one holds both sources, and round(0.5 x 1) is 0: train_cls at batch
    size 1 never drew a Kaggle image, silently."""
    has_mask = torch.tensor([True] * 300 + [False] * 100)
    labels = torch.tensor([1] * 30 + [0] * 270 + [1] * 50 + [0] * 50, dtype=torch.uint8)
    with caplog.at_level("WARNING"):
        batches = list(ComposedBatches(has_mask, labels, 1, torch.Generator().manual_seed(3), kaggle_share=0.5))
    assert len(batches) == 400 and all(len(batch) == 1 for batch in batches)
    kaggle = sum(1 for [i] in batches if not has_mask[i])
    assert 60 <= kaggle <= 140  # a quarter of the samples: 100 expected
    assert "a batch of 1 cannot hold both sources" in caplog.text


def test_the_foreground_quota_is_not_pushed_up_by_floating_point():
    """0.28 x 25 is 7.000000000000001 in floating point: the ceiling took 8 tumour slices for a quota of 7."""
    labels = torch.tensor([1] * 100 + [0] * 300, dtype=torch.uint8)
    sampler = ComposedBatches(torch.ones(400, dtype=torch.bool), labels, 25, torch.Generator().manual_seed(0),
                              foreground_share=0.28)
    assert [size for _, size in sampler.quotas] == [7, 18]


def test_the_best_metric_is_the_one_best_pt_scored():
    """A gain under the 1e-6 tolerance is no improvement, so it must not raise best_metric either: it ratcheted
    up, the state described a best epoch that best.pt does not hold, and gains adding up past the tolerance were
    never counted (0.5, 0.5000008, 0.5000016: the third beats best.pt's 0.5 by 1.6e-6)."""
    from tasks.training.resume import StageState

    state = StageState()
    assert [state.record({"epoch": 1}, 0.5), state.record({"epoch": 2}, 0.5000008)] == [True, False]
    assert state.best_metric == 0.5 and state.epochs_since_best == 1
    assert state.record({"epoch": 3}, 0.5000016) and state.best_metric == 0.5000016 and state.epochs_since_best == 0


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(0)
    cfg = UNetConfig(2, 4, 3)
    model = MultitaskUNet(cfg).eval()
    path = save_checkpoint(tmp_path / "ckpt" / "best.pt", model=model, optimizer=None, model_config=cfg, epoch=3,
                           best_metric=0.5, metric_name="val_dice", params={"seed": 1}, stage="seg")
    loaded, checkpoint = load_model(path)
    x = torch.randn(2, 2, 32, 32)
    assert not loaded.training and checkpoint["epoch"] == 3 and checkpoint["params"] == {"seed": 1}
    with torch.no_grad():
        for head in ("seg", "cls"):
            torch.testing.assert_close(loaded(x)[head], model(x)[head], rtol=0, atol=0)
    assert not list(path.parent.glob("*.tmp"))


def test_loading_refuses_pickled_code_and_names_missing_files(tmp_path):
    hostile = tmp_path / "hostile.pt"
    torch.save({"model": argparse.Namespace(x=1)}, hostile)  # any class outside the allow-list
    with pytest.raises(SliceWiseError, match="unreadable checkpoint"):
        load_checkpoint(hostile)
    with pytest.raises(SliceWiseError, match="not found") as missing:
        load_model(tmp_path / "missing.pt")
    assert str(missing.value.path) == str(tmp_path / "missing.pt")  # the error names the file


def test_cls_before_seg_is_a_clear_error(in_project, tiny_settings):
    with pytest.raises(SliceWiseError, match=r"checkpoint not found \(run the training stage that writes it first\)") \
            as error:
        train_cls.main(tiny_settings)
    assert str(error.value.path).endswith("checkpoints/seg/best.pt")


def test_image_size_must_suit_the_model_depth(tmp_path, tiny_settings, monkeypatch):
    data = make_tiny_processed(tmp_path / "odd", size=36)
    monkeypatch.chdir(data.root)
    deep = tiny_settings.active.model_copy(update={"model": tiny_settings.active.model.model_copy(update={"depth": 4})})
    settings = tiny_settings.model_copy(update={"profiles": {tiny_settings.profile: deep}})
    with pytest.raises(SliceWiseError, match="multiple of 8"):
        train_seg.main(settings)


def test_tracker_receives_params_metrics_and_artifacts(in_project, tiny_settings):
    class Recorder(NullTracker):
        def __init__(self):
            self.params, self.metrics, self.artifacts = {}, [], []

        def log_params(self, params):
            self.params.update(params)

        def log_metrics(self, metrics, step=None):
            self.metrics.append((step, dict(metrics)))

        def log_artifact(self, path, artifact_path=None):
            self.artifacts.append(path)

    recorder = Recorder()
    training_stage.train_stage(training_stage.plan_stage(with_epochs(tiny_settings, seg=2), "seg"), recorder)
    assert recorder.params["train_seg.lr"] == tiny_settings.train_seg.lr and recorder.params["model.base_channels"] == 4
    assert [step for step, _ in recorder.metrics] == [1, 2] and "val_dice" in recorder.metrics[0][1]
    assert paths.best_checkpoint("seg") in recorder.artifacts and paths.history_file("seg") in recorder.artifacts


def test_dvc_reruns_training_for_the_train_keys_that_change_what_is_learned():
    """Runtime-only switches (device, bf16, compile, pin_memory, ...) are no DVC params; every other train key is.
    patience and min_epochs are both: a run may resume with another value, but they decide which epoch best.pt
    holds."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    expected = {f"train.{key}" for key in TrainSettings.model_fields if key not in training_plan.RUNTIME_ONLY}
    for stage in ("train_seg", "train_cls", "train_joint"):
        listed = {p for p in stages[stage]["params"] if isinstance(p, str) and p.startswith("train.")}
        assert listed == expected | {"train.patience", "train.min_epochs"}, stage


@pytest.mark.parametrize("norm, layer", [("batch", torch.nn.BatchNorm2d), ("instance", torch.nn.InstanceNorm2d)])
def test_the_profile_chooses_the_norm_the_stage_trains(tiny_settings, norm, layer):
    profile = tiny_settings.active.model_copy(
        update={"model": tiny_settings.active.model.model_copy(update={"norm": norm})})
    settings = tiny_settings.model_copy(update={"profiles": {**tiny_settings.profiles, tiny_settings.profile: profile}})
    plan = training_stage.plan_stage(settings, "seg")
    trained = training_stage._initial_model(plan, "")  # the model the stage builds and trains, not one built here
    norms = {type(m) for m in trained.modules() if "Norm" in type(m).__name__}
    assert norms == {layer}


def test_a_diverged_loss_stops_the_stage_with_its_epoch_and_keeps_the_last_good_checkpoint(in_project, tiny_settings,
                                                                                          monkeypatch):
    """A NaN loss stops training at that step with a clear error, before the poisoned weights are saved: last.pt
    still holds the last whole epoch, so nothing already trained is lost."""
    real_from_sums, calls = StageLoss.from_sums, []
    calls_per_epoch = None  # training steps and validation batches

    def nan_in_second_epoch(self, sums):
        calls.append(1)
        loss = real_from_sums(self, sums)
        return loss * math.nan if calls_per_epoch is not None and len(calls) == calls_per_epoch + 2 else loss

    monkeypatch.setattr(StageLoss, "from_sums", nan_in_second_epoch)
    settings = with_epochs(tiny_settings, seg=3)
    train_seg.main(with_epochs(tiny_settings, seg=1))  # how many steps an epoch has
    calls_per_epoch, calls[:] = len(calls), []
    paths.last_checkpoint("seg").unlink()
    with pytest.raises(SliceWiseError, match=r"train_seg: the training loss became nan at epoch 2, step 2 of \d+: "
                                             r"the weights diverged"):
        train_seg.main(settings)
    last = load_checkpoint(paths.last_checkpoint("seg"))
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("tumour_slices, words", [(0, "hold no tumour"), (3, "some repeat within a batch"),
                                                  (40, None)])
def test_a_foreground_quota_the_training_set_cannot_fill_is_said(tumour_slices, words, caplog):
    labels = torch.zeros(200, dtype=torch.uint8)
    labels[:tumour_slices] = 1
    with caplog.at_level("WARNING", logger="tasks.data.batch_sampling"):
        ComposedBatches(torch.ones(200, dtype=torch.bool), labels, 16, torch.Generator().manual_seed(0),
                        foreground_share=0.33)
    warnings = [r.getMessage() for r in caplog.records if r.name == "tasks.data.batch_sampling"]
    assert (words in warnings[0]) if words else not warnings, warnings


def test_weights_poisoned_by_an_epochs_last_step_are_caught_before_they_are_saved(in_project, tiny_settings,
                                                                                 monkeypatch):
    """The loss of a step is computed before its update: an update that poisons the weights in the last step of an
    epoch shows in no loss of that epoch, so the weights are checked before validation and last.pt see them."""
    real_epoch, calls = training_stage.StageRunner.train_epoch, []

    def poison_after_second_epoch(self, loader, epoch, *args, **kwargs):
        calls.append(epoch)
        if epoch == 2:
            real_step = self.optimizer.step
            steps_left = [len(loader)]

            def step(*a, **k):
                real_step(*a, **k)
                steps_left[0] -= 1
                if not steps_left[0]:  # the epoch's last update
                    with torch.no_grad():
                        next(self.model.parameters()).fill_(math.inf)

            monkeypatch.setattr(self.optimizer, "step", step)
        return real_epoch(self, loader, epoch, *args, **kwargs)

    monkeypatch.setattr(training_stage.StageRunner, "train_epoch", poison_after_second_epoch)
    with pytest.raises(SliceWiseError, match="the weights became non-finite in the last step of epoch 2"):
        train_seg.main(with_epochs(tiny_settings, seg=3))
    assert calls == [1, 2] and load_checkpoint(paths.last_checkpoint("seg"))["epoch"] == 1


def test_a_validation_split_without_tumour_says_its_dice_says_nothing(tmp_path, tiny_settings, monkeypatch, caplog):
    """Local data whose validation patients have no tumour: the pooled validation Dice is 0 for any false pixel, and
    the stage ended "stuck at its floor" with no hint why; it warns at its start."""
    import logging

    from tests.conftest import strip_tumours

    data = make_tiny_processed(tmp_path)
    strip_tumours(data, [p for p in (data.splits / "val.txt").read_text().split() if p.startswith("BraTS")])
    monkeypatch.chdir(data.root)
    with caplog.at_level(logging.WARNING):
        train_seg.main(with_epochs(tiny_settings, seg=1))
    assert "the validation split holds no MRI slice with tumour" in caplog.text


def test_a_warm_up_as_long_as_a_stage_is_refused_naming_the_stages_it_would_outlast(tmp_path):
    """Review 2026-12-07: train.warmup_epochs serves all three stages; 3 suits a 4-epoch train_seg but kept the
    2-epoch train_joint under 18 % of its learning rate throughout, and nothing said so."""
    from tasks.params_edit import set_params
    from tasks.training.optimizer import scheduled_lr_factor
    from tests.conftest import REPO

    # what such a stage would get: its highest learning-rate factor over 2 epochs of a 3-epoch warm-up
    assert max(scheduled_lr_factor(step / 100, "cosine", 3 / 2) for step in range(100)) < 0.2
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    with pytest.raises(SliceWiseError, match=r"train.warmup_epochs 3 is not shorter than profile quick's joint "
                                             r"\(2 epochs\): the learning rate would still be warming up"):
        set_params({"train.warmup_epochs": 3}, params)
    with pytest.raises(SliceWiseError, match=r"seg \(4 epochs\), cls \(4 epochs\), joint \(2 epochs\)"):
        set_params({"train.warmup_epochs": 4}, params)
    set_params({"train.warmup_epochs": 1.5}, params)
    assert load_settings(params).train.warmup_epochs == 1.5
