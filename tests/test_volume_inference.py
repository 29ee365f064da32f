"""Volume inference (tasks/inference/volume.py): TTA, the flips undone, the native grid, regions and uncertainty."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from models.unet import MultitaskUNet, UNetConfig
from tasks.data.preprocess import axial_slice, zscore_volume
from tasks.data.regions import regions_from_labels
from tasks.inference.predictor import Prediction, TorchPredictor
from tasks.inference.volume import (binary_entropy, check_flips, predict_slices_tta, predict_volume,
                                    prepare_channels, slice_to_grid, to_volume_grid)


class FixedLeftHalf(torch.nn.Module):
    """Not flip-equivariant: 'tumour' in the left half of every slice, whatever the input."""

    def forward(self, x):
        seg = torch.full((len(x), 1, *x.shape[2:]), -20.0)
        seg[..., : x.shape[3] // 2] = 20.0
        return {"seg": seg, "cls": torch.zeros(len(x))}


class Bright(torch.nn.Module):
    """Pointwise, so flip-equivariant: region r is where channel 0 exceeds r + 0.5 (nested, like WT ⊇ TC ⊇ ET)."""

    def __init__(self, regions: int = 3, levels=(0.5, 1.5, 2.5)):
        super().__init__()
        self.levels = levels[:regions]

    def forward(self, x):
        seg = torch.cat([40.0 * (x[:, :1] - level) for level in self.levels], dim=1)
        return {"seg": seg, "cls": x[:, 0].amax(dim=(1, 2)) - 1.0}


class CountingPredictor:
    """A predictor that records the batch sizes it is called with."""

    def __init__(self, inner):
        self.inner, self.batch_size, self.calls = inner, inner.batch_size, []

    def predict(self, images):
        self.calls.append(len(images))
        return self.inner.predict(images)


@pytest.fixture(scope="module")
def unet3():
    torch.manual_seed(0)
    return MultitaskUNet(UNetConfig(in_channels=4, base_channels=4, depth=2, seg_channels=3)).eval()


def asymmetric_volume(shape=(20, 24, 6), seed=0):
    rng = np.random.default_rng(seed)
    volume = np.where(rng.random(shape) > 0.3, 100.0, 0.0)
    volume[3:9, 4:15, :] = 400.0  # a bright box away from the centre: left-right asymmetric
    volume[4:6, 6:9, 2:4] = 900.0
    return volume.astype(np.float32)


def test_a_repeated_flip_counts_once_and_no_tta_is_the_predictors_own_answer(unet3):
    """A flip listed twice is one view, not a double weight (check_flips merges them), so [[], []] is no TTA; and
    with no TTA each slice's probabilities are what the predictor gives for it. (The averaging of distinct views is what
    test_flips_are_undone_for_a_model_that_is_not_flip_equivariant checks.)"""
    volumes = [asymmetric_volume(seed=s) for s in range(4)]
    predictor = TorchPredictor(unet3, batch_size=4)
    plain = predict_volume(predictor, volumes, 16)
    assert check_flips([[], [], [3, 3], [3]]) == ((), (3,))
    identity = predict_volume(predictor, volumes, 16, flips=[[], []])
    np.testing.assert_array_equal(identity.slice_probability, plain.slice_probability)
    np.testing.assert_array_equal(identity.label_map, plain.label_map)
    np.testing.assert_array_equal(identity.uncertainty, plain.uncertainty)
    assert plain.regions == ("wt", "tc", "et") and plain.masks.shape == (3, 20, 24, 6)
    assert set(np.unique(plain.label_map)) <= {0, 1, 2, 4}
    direct = predictor.predict(prepare_channels(volumes, 16))
    np.testing.assert_allclose(plain.slice_probability, direct.region_probability, atol=1e-6)


def test_tta_with_flips_differs_from_no_tta_on_a_real_unet(unet3):
    volumes = [asymmetric_volume(seed=s) for s in range(4)]
    predictor = TorchPredictor(unet3, batch_size=8)
    plain = predict_volume(predictor, volumes, 16)
    tta = predict_volume(predictor, volumes, 16, flips=[[], [3], [2, 3]])
    assert not np.allclose(tta.slice_probability, plain.slice_probability)
    assert tta.uncertainty_summary()["tta_flips"] == [[], [3], [2, 3]]


def test_flips_are_undone_for_a_model_that_is_not_flip_equivariant():
    inputs = np.random.default_rng(0).normal(size=(5, 1, 8, 8)).astype(np.float32)
    predictor = TorchPredictor(FixedLeftHalf())
    plain = predict_slices_tta(predictor, inputs).region_probability
    left_right = predict_slices_tta(predictor, inputs, [[], [3]]).region_probability
    up_down = predict_slices_tta(predictor, inputs, [[], [2]]).region_probability
    # flipped back, the left-right copy says "right half": the average is 0.5 everywhere (not flipped back: left)
    np.testing.assert_allclose(left_right, 0.5, atol=1e-6)
    np.testing.assert_allclose(up_down, plain, atol=1e-6)  # an up-down flip leaves a left half where it was


def test_flip_equivariant_model_gives_the_same_result_through_tta():
    volume = asymmetric_volume()
    predictor = TorchPredictor(Bright())
    plain = predict_volume(predictor, [volume], 16)
    tta = predict_volume(predictor, [volume], 16, flips=[[], [2], [3], [2, 3]])
    np.testing.assert_allclose(tta.slice_probability, plain.slice_probability, atol=1e-5)
    np.testing.assert_array_equal(tta.label_map, plain.label_map)


def test_tta_is_one_batched_run_per_chunk_not_one_pass_per_flip():
    inputs = np.zeros((10, 1, 8, 8), dtype=np.float32)
    predictor = CountingPredictor(TorchPredictor(Bright(1), batch_size=8))
    predict_slices_tta(predictor, inputs, [[], [2], [3], [2, 3]])
    assert predictor.calls == [8, 8, 8, 8, 8]  # 2 slices x 4 flips per run, 10 slices → 5 runs (not 4 x 10 / 8)


def test_native_grid_masks_match_the_truth_and_volumes_count_voxels():
    volume = np.where(np.ones((32, 32, 4)), 100.0, 0.0).astype(np.float32)
    truth = np.zeros((32, 32, 4), dtype=np.uint8)
    truth[4:14, 18:30, 1:3] = 2
    truth[6:12, 20:28, 1:3] = 1
    truth[8:10, 22:26, 1:3] = 4
    volume[truth > 0] = 500.0
    volume[np.isin(truth, (1, 4))] = 900.0
    volume[truth == 4] = 2000.0
    z = zscore_volume(volume)  # Bright's levels: halfway between the z-scores of brain, oedema, core, ET
    brain, oedema, core, et = (float(z[np.nonzero(truth == label)][0]) for label in (0, 2, 1, 4))
    levels = ((brain + oedema) / 2, (oedema + core) / 2, (core + et) / 2)
    result = predict_volume(TorchPredictor(Bright(levels=levels)), [volume], 32)
    np.testing.assert_array_equal(result.masks, regions_from_labels(truth))
    np.testing.assert_array_equal(result.label_map, truth)
    volumes = result.region_volumes_cm3((1.0, 1.5, 2.0))
    assert volumes == pytest.approx({r: float(m.sum()) * 3.0 / 1000 for r, m in zip("wt tc et".split(),
                                                                                    regions_from_labels(truth))})


def test_missing_modalities_are_zero_channels():
    flair = asymmetric_volume()
    inputs = prepare_channels([flair, None, None, None], 16)
    assert inputs.shape == (6, 4, 16, 16) and not inputs[:, 1:].any() and inputs[:, 0].any()
    np.testing.assert_array_equal(prepare_channels([flair], 16)[:, 0], inputs[:, 0])


def test_uncertainty_is_entropy_and_peaks_at_one_half():
    assert binary_entropy(np.array([0.0, 0.5, 1.0])) == pytest.approx([0.0, 1.0, 0.0], abs=1e-5)
    probability = np.zeros((1, 2, 8, 8), dtype=np.float32)
    probability[0, 1, 2, 3] = 0.5  # a coin flip in the second region only
    masks, uncertainty = to_volume_grid(probability, (8, 8, 1))
    assert uncertainty.max() == pytest.approx(1.0, abs=1e-4)
    x, y = np.unravel_index(np.argmax(uncertainty[:, :, 0]), (8, 8))
    assert axial_slice(uncertainty, 0)[2, 3] == pytest.approx(1.0, abs=1e-4) and (x, y) != (2, 3)


def test_bad_flips_are_refused():
    with pytest.raises(ValueError, match="axes must be among"):
        check_flips([[1]])
    with pytest.raises(ValueError, match="at least one flip"):
        check_flips([])


def test_prediction_type_is_returned():
    prediction = predict_slices_tta(TorchPredictor(Bright(1)), np.zeros((3, 1, 8, 8), np.float32), [[], [3]])
    assert isinstance(prediction, Prediction) and prediction.region_probability.shape == (3, 1, 8, 8)


def test_uncertainty_is_zero_outside_the_brain():
    volume = np.zeros((20, 24, 6), dtype=np.float32)
    volume[2:18, 3:21, 1:] = 100.0  # slice 0 has no brain
    volume[4:9, 5:12, 2:5] = 400.0
    # at z = 0 (the background after preprocessing) region 1's probability is sigmoid(-2) = 0.12: 0.53 bits
    result = predict_volume(TorchPredictor(Bright(levels=(0.05, 5.0, 6.0))), [volume], 16)
    outside = (volume == 0) & ~result.whole_tumour
    assert outside[:, :, 0].all() and not result.uncertainty[outside].any()
    assert result.uncertainty[volume > 0].max() > 0.3


def test_predict_volume_drops_a_speck_far_smaller_than_the_tumour():
    """The served volume is cleaned (tasks/inference/postprocess.py): a bright voxel alone is not a second tumour,
    unless the clean-up is turned off."""
    volume = np.full((24, 24, 8), 100.0, dtype=np.float32)
    volume[4:14, 4:14, 1:7] = 400.0  # the tumour: 600 voxels
    volume[20, 20, 4] = 400.0  # a speck far from it
    predictor = TorchPredictor(Bright(regions=1, levels=(1.0,)))
    truth = volume > 200
    cleaned = predict_volume(predictor, [volume], image_size=24)
    assert not cleaned.whole_tumour[20, 20, 4] and cleaned.whole_tumour[4:14, 4:14, 1:7].all()
    raw = predict_volume(predictor, [volume], image_size=24, min_component_share=0)
    assert raw.whole_tumour[20, 20, 4]
    # ... and the answer says so: the tumour kept, the speck on slice 4 dropped for its size
    assert [(c.voxels, c.planes, c.kept) for c in cleaned.components] == [(600, (1, 6), True), (1, (4, 4), False)]
    assert cleaned.components[1].reason.startswith("dropped: 1 voxel < 0.30 x 600")
    assert [c.kept for c in raw.components] == [True, True]
    # the slice overlays (model grid, display orientation) follow the same rule: only the speck's pixel goes
    speck = np.zeros((24, 24), dtype=bool)
    speck[20, 20] = True
    np.testing.assert_array_equal(raw.slice_masks[4, 0] & ~cleaned.slice_masks[4, 0], np.rot90(speck))
    np.testing.assert_array_equal(cleaned.slice_masks[:, 0], raw.slice_masks[:, 0] & ~np.rot90(speck)[None])
    # and where the dropped speck was is kept apart, for a viewer to show it: that pixel on slice 4, nothing else
    expected = np.zeros_like(cleaned.slice_dropped)
    expected[4] = np.rot90(speck)
    np.testing.assert_array_equal(cleaned.slice_dropped, expected)
    assert not raw.slice_dropped.any()  # nothing dropped without the clean-up
    np.testing.assert_array_equal(raw.whole_tumour & ~truth, np.zeros_like(truth))


def test_the_dropped_overlay_follows_the_components_the_answer_lists(monkeypatch):
    """The overlays are cleaned on the model's grid and the volume on the input's, whose connectivity can differ
    (a one-pixel gap there may be bridged here): a speck the returned volume kept, and `components` lists as kept,
    is not drawn as dropped."""
    import tasks.inference.volume as volume_module

    volume = np.full((24, 24, 8), 100.0, dtype=np.float32)
    volume[4:14, 4:14, 1:7] = 400.0
    volume[20, 20, 4] = 400.0
    explained = volume_module.clean_regions_explained

    def native_keeps_everything(masks, *args, **kwargs):
        kept, components = explained(masks, *args, **kwargs)
        return masks, tuple(replace(c, kept=True, reason="kept") for c in components)

    monkeypatch.setattr(volume_module, "clean_regions_explained", native_keeps_everything)
    result = predict_volume(TorchPredictor(Bright(regions=1, levels=(1.0,))), [volume], image_size=24)
    assert all(c.kept for c in result.components) and result.whole_tumour[20, 20, 4]
    assert not result.slice_masks[4, 0].all() and not result.slice_dropped.any()


class SecondChannelSays(torch.nn.Module):
    """Segments where channel 0 is bright; the classifier looks only at channel 1 (tumour when it is bright)."""

    def forward(self, x):
        return {"seg": 40.0 * (x[:, :1] - 0.5), "cls": 10.0 * (x[:, 1].amax(dim=(1, 2)) - 1.0)}


def test_predict_volume_drops_a_lesion_the_classifier_does_not_confirm():
    """A bright lesion larger than the tumour, on slices the classifier calls tumour-free, is not returned: not in
    the native-grid masks, not in the slice overlays (tasks/inference/postprocess.py)."""
    seg = np.full((24, 24, 12), 100.0, dtype=np.float32)
    seg[3:8, 3:8, 1:4] = 400.0  # the tumour: 75 voxels on slices 1-3
    seg[12:22, 12:22, 6:11] = 400.0  # a false lesion: 500 voxels on slices 6-10
    evidence = np.full_like(seg, 100.0)
    evidence[:, :, 1:4] = 400.0  # the classifier's channel is bright on the tumour's slices only
    predictor = TorchPredictor(SecondChannelSays())
    result = predict_volume(predictor, [seg, evidence], image_size=24)
    assert result.tumour_probability[1:4].min() > 0.5 and result.tumour_probability[6:11].max() < 0.5
    assert result.whole_tumour[3:8, 3:8, 1:4].all() and result.whole_tumour.sum() == 75
    assert not result.slice_masks[6:11].any() and result.slice_masks[1:4].any()
    sized_only = predict_volume(predictor, [seg, evidence], image_size=24, min_slice_evidence=0)
    assert sized_only.whole_tumour[12:22, 12:22, 6:11].all() and not sized_only.whole_tumour[3:8, 3:8, 1:4].any()


def test_a_fused_slice_score_does_not_let_a_false_lesion_vouch_for_itself():
    """With the fused slice score the false lesion's own pixels would lift its slices' tumour probability to about
    0.5, but the clean-up still asks the classifier alone, so the lesion goes as before; and once it is gone, its
    slices are not called tumour on its strength either."""
    seg = np.full((24, 24, 12), 100.0, dtype=np.float32)
    seg[3:8, 3:8, 1:4] = 400.0
    seg[12:22, 12:22, 6:11] = 400.0
    evidence = np.full_like(seg, 100.0)
    evidence[:, :, 1:4] = 400.0
    plain = predict_volume(TorchPredictor(SecondChannelSays()), [seg, evidence], image_size=24)
    fused = predict_volume(TorchPredictor(SecondChannelSays(), slice_score="fused"), [seg, evidence], image_size=24)
    kept = predict_volume(TorchPredictor(SecondChannelSays(), slice_score="fused"), [seg, evidence], image_size=24,
                          min_slice_evidence=0)  # no veto: the lesion stays, and its slices' fused score with it
    assert kept.tumour_probability[6:11].min() > plain.tumour_probability[6:11].max() + 0.4
    np.testing.assert_allclose(fused.tumour_probability[6:11], plain.tumour_probability[6:11] / 2, atol=0.01)
    assert fused.tumour_probability[1:4].min() > 0.9  # the tumour's slices: both heads agree
    np.testing.assert_array_equal(fused.masks, plain.masks)
    np.testing.assert_array_equal(fused.slice_masks, plain.slice_masks)
    tta = predict_slices_tta(TorchPredictor(Bright(1), slice_score="fused"), np.zeros((3, 1, 8, 8), np.float32),
                             [[], [3]])
    assert tta.slice_score == "fused"


def test_a_model_judged_on_slices_alone_gets_each_slices_own_score_in_a_volume():
    """A model evaluated with `evaluate.slices_in_volume: false` had its threshold chosen on each slice's own score:
    its volume answers (slices_in_volume=False) read those scores, the dropped lesion's slices included, while the
    masks are cleaned as for any model."""
    seg = np.full((24, 24, 12), 100.0, dtype=np.float32)
    seg[3:8, 3:8, 1:4] = 400.0
    seg[12:22, 12:22, 6:11] = 400.0  # the false lesion the classifier does not confirm
    evidence = np.full_like(seg, 100.0)
    evidence[:, :, 1:4] = 400.0
    predictor = TorchPredictor(SecondChannelSays(), slice_score="fused")
    after = predict_volume(predictor, [seg, evidence], image_size=24)
    alone = predict_volume(predictor, [seg, evidence], image_size=24, slices_in_volume=False)
    own = predict_slices_tta(predictor, prepare_channels([seg, evidence], 24)).tumour_probability
    np.testing.assert_array_equal(alone.tumour_probability, own)
    assert alone.tumour_probability[6:11].min() > after.tumour_probability[6:11].max() + 0.4  # the lesion's own pixels
    np.testing.assert_array_equal(alone.masks, after.masks)
    np.testing.assert_array_equal(alone.slice_masks, after.slice_masks)
    assert alone.whole_tumour.sum() == 75  # the lesion is dropped from the answer's masks all the same


def test_volume_grid_is_each_slice_resized_back_and_laid_out_x_y_z():
    """to_volume_grid fills z-major buffers and lays them out once: the result must be, voxel for voxel, each slice
    brought back by slice_to_grid, thresholded, and the largest entropy over the regions, in C order (X, Y, Z)."""
    probability = np.random.default_rng(3).random((5, 3, 16, 16), dtype=np.float32)
    masks, uncertainty = to_volume_grid(probability, (20, 24, 5), threshold=0.4)
    assert masks.shape == (3, 20, 24, 5) and uncertainty.shape == (20, 24, 5)
    assert masks.flags.c_contiguous and uncertainty.flags.c_contiguous
    for z in range(5):
        native = [slice_to_grid(probability[z, r], 20, 24) for r in range(3)]
        for r in range(3):
            np.testing.assert_array_equal(masks[r, :, :, z], native[r] >= 0.4)
        np.testing.assert_array_equal(uncertainty[:, :, z], np.max([binary_entropy(n) for n in native], axis=0))


def test_a_volume_without_predicted_tumour_has_no_uncertainty_inside_it():
    """mean_in_tumour was 0.0 when nothing was predicted: a perfectly certain tumour that is not there."""
    from dataclasses import replace

    from tasks.inference.volume import VolumePrediction

    z = 3
    empty = VolumePrediction(regions=("wt",), masks=np.zeros((1, 4, 4, z), bool),
                             label_map=np.zeros((4, 4, z), np.uint8), uncertainty=np.full((4, 4, z), 0.3, np.float32),
                             tumour_probability=np.zeros(z, np.float32),
                             slice_probability=np.zeros((z, 1, 4, 4), np.float32),
                             slice_masks=np.zeros((z, 1, 4, 4), bool), flips=((),))
    summary = empty.uncertainty_summary()
    assert summary["mean_in_tumour"] is None and summary["mean"] == pytest.approx(0.3)
    masks = empty.masks.copy()
    masks[0, 1, 1, 1] = True
    assert replace(empty, masks=masks).uncertainty_summary()["mean_in_tumour"] == pytest.approx(0.3)
