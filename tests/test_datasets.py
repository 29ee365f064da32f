"""Streaming training data (tasks/data/datasets.py, loaders.py, shards.py): rows read in place, a bounded cache for
compressed shards, memory that does not grow with the data, and the same augmented batches with any number of
loader workers."""

import math
import subprocess
import sys
import textwrap
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch

from tasks import paths
from tasks.config import Augment
from tasks.data.datasets import ShardSlices, collate_slices, load_slices, stage_data, stream_slices
from tasks.data.loaders import batches_in_order, training_loader
from tasks.data.shards import MANIFEST_COLUMNS, Shard, ShardRowReader, manifest_rows, read_shard, write_shard
from tasks.data.splits import read_split
from tests.conftest import REPO, with_section


def _shard(rows: int, channels: int = 2, size: int = 16, seed: int = 0) -> Shard:
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 2, (rows, size, size)).astype(np.uint8)
    return Shard(images=rng.normal(size=(rows, channels, size, size)).astype(np.float16), masks=masks,
                 has_mask=np.ones(rows, bool), labels=masks.reshape(rows, -1).max(1).astype(np.uint8),
                 slice_index=np.arange(rows, dtype=np.int16), spacing=np.ones(3, np.float32))


def _processed(root, shards: int, rows: int, compress: bool, **shape) -> tuple:
    """`shards` patients in data/processed under root, and their names."""
    processed, manifest, patients = root / "processed", [], []
    for p in range(shards):
        patient, shard = f"P{p:03d}", _shard(rows, seed=p, **shape)
        write_shard(processed / "brats" / f"{patient}.npz", shard, compress=compress)
        manifest += manifest_rows(patient, "brats", f"brats/{patient}.npz", shard)
        patients.append(patient)
    pd.DataFrame(manifest, columns=MANIFEST_COLUMNS).to_csv(processed / paths.MANIFEST.name, index=False)
    return processed, patients


@pytest.mark.parametrize("compress", [False, True])
def test_rows_read_in_place_are_the_rows_of_the_shard(tmp_path, compress):
    shard = _shard(7, channels=3, size=8)
    write_shard(tmp_path / "a.npz", shard, compress=compress)
    reader = ShardRowReader(cache_bytes=2**20)
    for row in (0, 3, 6):
        image, mask = reader.row(tmp_path / "a.npz", row)
        assert np.array_equal(image, shard.images[row]) and np.array_equal(mask, shard.masks[row])
    assert (reader.members(tmp_path / "a.npz")["images"].offset is None) == compress
    assert (reader.cached_bytes > 0) == compress  # only a compressed shard is decompressed into the cache
    assert np.array_equal(read_shard(tmp_path / "a.npz").images, shard.images)  # read_shard reads both formats


def test_more_shards_than_open_files_are_read_right(tmp_path):
    processed, patients = _processed(tmp_path, shards=5, rows=3, compress=False)
    reader = ShardRowReader(cache_bytes=0, max_open=2)
    for p in (0, 3, 1, 4, 0, 2):
        image, mask = reader.row(processed / "brats" / f"P{p:03d}.npz", 2)
        assert np.array_equal(image, _shard(3, seed=p).images[2]) and np.array_equal(mask, _shard(3, seed=p).masks[2])
    assert len(reader._files) == 2


def test_streamed_slices_are_the_slices_held_in_memory(tiny_data):
    streamed, _ = stage_data("joint", tiny_data.processed, tiny_data.splits, None, seed=0)
    in_memory = load_slices(tiny_data.processed, read_split("train", tiny_data.splits), ("brats", "kaggle"))
    assert len(streamed) == len(in_memory) > 0 and streamed.image_shape == in_memory.image_shape
    assert torch.equal(streamed.labels, in_memory.labels) and torch.equal(streamed.has_mask, in_memory.has_mask)
    for i in range(len(streamed)):
        a, b = streamed[i], in_memory[i]
        assert torch.equal(a["image"], b["image"]) and a["label"] == b["label"]
        assert (a["mask"] is None and b["mask"] is None) or torch.equal(a["mask"], b["mask"])


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_read_whole_in_order_are_the_samples_read_one_by_one(tiny_data, workers):
    """What validation reads (`batches_in_order`): float16 until the consumer converts it, and then the batches of
    the per-sample reads collated, Kaggle images' unknown masks zero, with or without loader workers."""
    data, _ = stage_data("joint", tiny_data.processed, tiny_data.splits, None, seed=0)
    assert (~data.has_mask).any() and data.has_mask.any()
    batches = list(batches_in_order(data, batch_size=5, num_workers=workers))
    assert [len(b["label"]) for b in batches] == [5] * (len(data) // 5) + ([len(data) % 5] if len(data) % 5 else [])
    rows = iter(range(len(data)))
    for batch in batches:
        assert batch["image"].dtype == torch.float16 and batch["mask"].dtype == torch.float16
        expected = collate_slices([data[next(rows)] for _ in range(len(batch["label"]))])
        assert torch.equal(batch["image"].float(), expected["image"])
        assert torch.equal(batch["mask"].float(), expected["mask"])
        assert torch.equal(batch["has_mask"], expected["has_mask"]) and torch.equal(batch["label"], expected["label"])


def test_compressed_shards_stay_within_the_cache_while_a_larger_set_streams(tmp_path):
    processed, patients = _processed(tmp_path, shards=6, rows=20, compress=True, channels=4, size=32)
    per_shard = 20 * 4 * 32 * 32 * 2 + 20 * 32 * 32  # images float16 + masks uint8
    reader = ShardRowReader(cache_bytes=2 * per_shard)
    data = stream_slices(processed, patients, ("brats",), reader)
    loader = training_loader(data, 8, torch.Generator().manual_seed(0), augment=Augment())
    seen = sum(len(batch["label"]) for _ in range(2) for batch in loader)
    assert seen == 2 * (len(data) // 8) * 8 and 6 * per_shard > 2 * reader.cache_bytes
    assert 0 < reader.peak_cached_bytes <= reader.cache_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads peak RSS from /proc")
def test_streaming_a_set_keeps_memory_flat(tmp_path):
    """A fresh process streams 100 MB of stored shards twice: its peak RSS grows by far less than the data; then it
    keeps every row it reads (what holding the set in RAM costs), and its peak RSS grows by about the data."""
    processed, patients = _processed(tmp_path, shards=14, rows=48, compress=False, channels=4, size=128)
    data_mb = sum(p.stat().st_size for p in processed.rglob("*.npz")) / 2**20
    script = textwrap.dedent(f"""
        from pathlib import Path
        from tasks.data.shards import ShardRowReader, read_manifest
        # VmHWM: this process's peak RSS (ru_maxrss would start from the parent's peak, inherited across exec)
        peak_mb = lambda: int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
        reader, processed = ShardRowReader(0), Path({str(processed)!r})
        rows = [(processed / shard, int(row)) for shard, row in
                read_manifest(processed / "manifest.csv")[["shard", "row"]].to_records(index=False)]
        reader.row(*rows[0])
        start = peak_mb()
        total = sum(float(reader.row(*row)[0][0, 0, 0]) for _ in range(2) for row in rows)
        streamed = peak_mb()
        held = [reader.row(*row) for row in rows]
        print(streamed - start, peak_mb() - streamed)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    streamed_mb, held_mb = map(float, done.stdout.split()[-2:])
    assert data_mb > 90 and streamed_mb < 16 and held_mb > 0.8 * data_mb, (data_mb, streamed_mb, held_mb)


# every augmentation on, so that the loader, its workers, a DDP share and the device must agree on all of them
AUGMENT = Augment(flip=True, rotate_degrees=20, intensity_jitter=0.2, modality_dropout=0.5, bias_field=0.3)
KEYS = ("image", "mask", "label", "has_mask")


def _epochs(processed, patients, workers: int = 0, part: tuple[int, int] = (0, 1), augment=AUGMENT,
            on_device: bool = False) -> tuple:
    """Two epochs of augmented training batches (seed 7), and the run generator's state after them."""
    data = stream_slices(processed, patients, ("brats",), ShardRowReader(0))
    generator = torch.Generator().manual_seed(7)
    loader = training_loader(data, 6, generator, num_workers=workers, foreground_share=0.5, augment=augment, part=part,
                             augment_on_device=on_device)
    return [batch for _ in range(2) for batch in loader], generator.get_state()


def test_same_seed_same_augmented_batches_with_or_without_workers(tmp_path):
    processed, patients = _processed(tmp_path, shards=3, rows=10, compress=False)
    (alone, state), (with_workers, workers_state) = (_epochs(processed, patients, workers) for workers in (0, 2))
    assert len(alone) == 2 * (30 // 6) and torch.equal(state, workers_state)
    for a, b in zip(alone, with_workers):
        assert all(torch.equal(a[key], b[key]) for key in KEYS)
    plain, _ = _epochs(processed, patients, augment=None)
    assert not torch.equal(plain[0]["image"], alone[0]["image"])  # augmentation did change the images
    channels_kept = torch.cat([b["image"] for b in alone]).flatten(2).ne(0).any(2).sum(1)
    assert (channels_kept == 1).any() and (channels_kept == 2).any()  # modality dropout thinned some samples


def test_batches_read_for_augmenting_on_the_device_augment_there_exactly_as_in_the_loader(tmp_path):
    """train.augment_on: device. The loader only reads (float16, untouched) and each batch carries its draws; applied
    after the copy they give the loader-augmented batch sample for sample, modality dropout and a DDP share too."""
    processed, patients = _processed(tmp_path, shards=3, rows=10, compress=False)
    for workers, part in ((0, (0, 1)), (1, (1, 2))):
        augmented, state = _epochs(processed, patients, workers, part)
        read, read_state = _epochs(processed, patients, workers, part, on_device=True)
        assert torch.equal(state, read_state) and len(read) == len(augmented)  # the same draws from the run's generator
        assert read[0]["image"].dtype == torch.float16  # as stored: half the bytes to copy
        assert not torch.equal(read[0]["image"].float(), augmented[0]["image"])  # the loader did not augment
        for a, r in zip(augmented, read):
            images, masks = r.pop("augment").apply(r["image"], r["mask"])
            assert torch.equal(images, a["image"]) and torch.equal(masks, a["mask"])
            assert all(torch.equal(r[key], a[key]) for key in ("label", "has_mask"))


def test_each_ddp_process_reads_its_share_of_the_batch_that_one_process_reads(tmp_path):
    """A process of 2 (training_loader's `part`) reads and augments only its half of each global batch, and the
    halves are exactly the samples one process gets: same rows, augmentation and modality dropout."""
    processed, patients = _processed(tmp_path, shards=3, rows=10, compress=False)
    alone, state = _epochs(processed, patients)
    read, real_batch = [], ShardSlices.batch
    with mock.patch.object(ShardSlices, "batch", lambda self, rows: read.append(list(rows)) or real_batch(self, rows)):
        first, first_state = _epochs(processed, patients, part=(0, 2))
    second, _ = _epochs(processed, patients, workers=1, part=(1, 2))
    assert torch.equal(state, first_state)  # every process draws the whole batch's randomness
    assert len(read) == len(first) and all(len(rows) == 3 for rows in read)  # it read its 3 rows of each 6, no more
    for whole, a, b in zip(alone, first, second):
        assert len(a["label"]) == len(b["label"]) == 3
        assert all(torch.equal(whole[key], torch.cat([a[key], b[key]])) for key in KEYS)
    plain = [_epochs(processed, patients, part=part, augment=None)[0][0] for part in ((0, 1), (0, 2), (1, 2))]
    assert all(torch.equal(plain[0][key], torch.cat([plain[1][key], plain[2][key]])) for key in KEYS)


def test_a_manifest_that_does_not_match_its_shards_is_a_clear_error(tmp_path):
    from tasks.errors import SliceWiseError

    processed, patients = _processed(tmp_path, shards=2, rows=5, compress=False)
    manifest = pd.read_csv(processed / paths.MANIFEST.name)
    manifest.loc[manifest.index[-1], "row"] = 9
    manifest.to_csv(processed / paths.MANIFEST.name, index=False)
    with pytest.raises(SliceWiseError, match="lists row 9 but the shard has 5 rows") as error:
        stream_slices(processed, patients, ("brats",), ShardRowReader(0))
    assert "P001.npz" in str(error.value)
    (processed / "brats" / "P000.npz").unlink()
    with pytest.raises(SliceWiseError, match="missing"):
        stream_slices(processed, patients, ("brats",), ShardRowReader(0))


def test_affine_grid_is_torchs_affine_grid():
    from tasks.data.augment import affine_grid, random_affines

    theta = random_affines(5, Augment(flip=True, rotate_degrees=30), torch.Generator().manual_seed(3))
    theta[:, :, 2] = torch.rand(5, 2)  # a translation too
    expected = torch.nn.functional.affine_grid(theta, [5, 1, 12, 20], align_corners=False)
    torch.testing.assert_close(affine_grid(theta, 12, 20), expected)


def _brain_slices(n: int = 4, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float slices whose brain (non-zero pixels) is a rectangle off the middle, and a tumour mask inside it."""
    rng = np.random.default_rng(seed)
    images, masks = torch.zeros(n, 2, size, size), torch.zeros(n, 1, size, size)
    for k in range(n):
        top, left = rng.integers(0, size // 4, 2)
        images[k, :, top:top + size // 2, left:left + size // 2] = torch.from_numpy(rng.normal(size=(2, size // 2,
                                                                                                     size // 2)))
        masks[k, 0, top + 2:top + 6, left + 3:left + 8] = 1
    return images, masks


def test_crop_windows_are_centred_on_the_brain_and_stay_in_the_image():
    from tasks.data.augment import brain_crop_centres

    images, _ = _brain_slices()
    images[3] = 0  # a slice without brain: the window is the image's middle
    centres = brain_crop_centres(images, 24, torch.zeros(4, 2))
    brain = (images != 0).any(1)
    for k in range(3):
        rows, cols = torch.nonzero(brain[k].any(1))[:, 0], torch.nonzero(brain[k].any(0))[:, 0]
        expected = [float(cols.min() + cols.max()) / 2, float(rows.min() + rows.max()) / 2]
        assert centres[k].tolist() == pytest.approx([min(max(e, 11.5), 19.5) for e in expected])
    assert centres[3].tolist() == [15.5, 15.5]
    moved = brain_crop_centres(images, 24, torch.ones(4, 2))  # a quarter of the room (8 px) = 2 px, then clamped
    assert torch.all(moved - centres <= 2) and torch.all(moved <= 19.5) and torch.all(moved >= 11.5)
    assert torch.equal(moved[3], torch.tensor([17.5, 17.5]))


def test_a_crop_without_rotation_is_the_window_of_pixels_itself():
    from tasks.data.augment import affine_grid, crop_affines

    images, _ = _brain_slices(n=2)
    identity = torch.eye(2, 3).expand(2, 2, 3)
    centres = torch.tensor([[11.5, 14.5], [19.5, 11.5]])  # whole pixels: windows from (0, 3) and (8, 0)
    grid = affine_grid(crop_affines(identity, centres, (32, 32), 24), 24, 24)
    window = torch.nn.functional.grid_sample(images, grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(window[0], images[0, :, 3:27, 0:24])
    torch.testing.assert_close(window[1], images[1, :, 0:24, 8:32])


def test_a_window_wider_than_a_slice_s_shorter_side_is_refused_not_cut_outside_it():
    from tasks.config import Augment
    from tasks.data.augment import augment_batch

    images = torch.ones(2, 1, 12, 24)
    with pytest.raises(ValueError, match="16x16 window does not fit"):
        augment_batch(images, torch.zeros(2, 1, 12, 24), Augment(), torch.Generator().manual_seed(0), crop=16)
    # as wide as the longer side too: no crop at all, the batch keeps its shape
    out, _ = augment_batch(images, torch.zeros(2, 1, 12, 24), Augment(), torch.Generator().manual_seed(0), crop=24)
    assert out.shape == images.shape


def test_cropped_batches_keep_each_tumour_and_mask_with_its_image(tmp_path):
    from tasks.data.augment import augment_batch

    images, masks = _brain_slices(n=6)
    plain = Augment(flip=False, rotate_degrees=0, intensity_jitter=0, modality_dropout=0)
    cut, cut_masks = augment_batch(images, masks, plain, torch.Generator().manual_seed(0), crop=24)
    assert cut.shape == (6, 2, 24, 24) and cut_masks.shape == (6, 1, 24, 24)
    # the 16-pixel brain fits the 24-pixel window wherever the jitter moves it: nothing of brain or tumour is lost
    assert torch.equal(cut_masks.sum((1, 2, 3)), masks.sum((1, 2, 3)))
    brain_pixels = (cut != 0).sum((1, 2, 3))  # a window moved by part of a pixel blurs the brain's edge by one pixel
    assert torch.all(brain_pixels >= 2 * 16 * 16) and torch.all(brain_pixels <= 2 * 17 * 17)
    assert set(cut_masks.unique().tolist()) == {0.0, 1.0}
    again = augment_batch(images, masks, plain, torch.Generator().manual_seed(0), crop=24)
    assert torch.equal(again[0], cut) and torch.equal(again[1], cut_masks)  # seeded: the same windows
    whole = augment_batch(images, masks, AUGMENT, torch.Generator().manual_seed(0))
    no_smaller = augment_batch(images, masks, AUGMENT, torch.Generator().manual_seed(0), crop=32)
    assert all(torch.equal(a, b) for a, b in zip(whole, no_smaller))  # a window the size of the slice is no crop
    rotated, rotated_masks = augment_batch(images, masks, AUGMENT, torch.Generator().manual_seed(0), crop=24)
    assert rotated.shape[2:] == (24, 24) and not torch.equal(rotated_masks, cut_masks)


def test_the_loader_and_the_device_crop_the_same_windows(tmp_path):
    processed, patients = _processed(tmp_path, shards=2, rows=6, compress=False, size=32)
    data = stream_slices(processed, patients, ("brats",), ShardRowReader(0))
    batches = {}
    for on_device in (False, True):
        loader = training_loader(data, 4, torch.Generator().manual_seed(7), foreground_share=0.5, augment=AUGMENT,
                                 augment_on_device=on_device, crop=16)
        batches[on_device] = list(loader)
    for a, r in zip(batches[False], batches[True]):
        assert a["image"].shape[2:] == (16, 16) and r["image"].shape[2:] == (32, 32)
        images, masks = r.pop("augment").apply(r["image"], r["mask"])
        assert torch.equal(images, a["image"]) and torch.equal(masks, a["mask"])


@pytest.mark.parametrize("share, size, side", [(0.75, 128, 96), (0.75, 240, 176), (0.75, 192, 144), (1.0, 128, None),
                                               (0.99, 128, 120), (0.07, 128, 8)])
def test_the_crop_share_becomes_a_side_the_model_takes(share, size, side):
    from tasks.training.plan import crop_side

    assert crop_side(_seg_plan(share), (size, size)) == side


def _seg_plan(crop: float):
    """A `train_seg` plan with `crop` and a depth-4 model (sizes in multiples of 8)."""
    from models.unet import UNetConfig
    from tasks.config import SegStageSettings
    from tasks.training.plan import StagePlan

    return mock.Mock(spec=StagePlan, stage="seg", stage_params=SegStageSettings(crop=crop),
                     model=UNetConfig(in_channels=4, base_channels=8, depth=4))


@pytest.mark.parametrize("own, expected_seg", [(None, 0.15), (0.3, 0.3), (0.0, 0.0)])
def test_train_seg_may_set_its_own_bias_field_and_the_later_stages_keep_the_shared_one(tiny_settings, own,
                                                                                      expected_seg):
    from tasks.training.plan import plan_stage, stage_augment

    shared = tiny_settings.train.augment.model_copy(update={"bias_field": 0.15})
    settings = with_section(with_section(tiny_settings, "train", augment=shared), "train_seg", bias_field=own)
    strengths = {stage: stage_augment(plan_stage(settings, stage)).bias_field for stage in ("seg", "cls", "joint")}
    assert strengths == {"seg": expected_seg, "cls": 0.15, "joint": 0.15}
    # nothing else of the shared augmentation moves
    seg = stage_augment(plan_stage(settings, "seg"))
    assert seg.model_dump(exclude={"bias_field"}) == shared.model_dump(exclude={"bias_field"})


def test_photo_like_samples_show_one_drawn_channel_in_channel_0_and_the_stages_may_set_their_own_share(
        tiny_settings):
    """train.augment.photo_like: a share of the samples become what a photo is to the model (one sequence in channel
    0, the others blank), each with a channel drawn uniformly; masks and the other samples are untouched, a sample
    whose drawn channel is blank (a photo already) stays as it is, and at 0 nothing is drawn at all."""
    from tasks.data.augment import augment_batch
    from tasks.training.plan import plan_stage, stage_augment

    images, masks = _brain_slices(n=32)
    images = torch.cat([images, images.flip(3) * 0.5], 1)  # four channels, each its own picture
    images[30, 1:] = 0  # a photo: channel 0 only
    images[31, 2] = 0  # a missing modality
    plain = Augment(flip=False, rotate_degrees=0, intensity_jitter=0, modality_dropout=0)
    shown, shown_masks = augment_batch(images, masks, plain.model_copy(update={"photo_like": 0.5}),
                                       torch.Generator().manual_seed(2))
    assert torch.equal(shown_masks, masks)
    changed = [i for i in range(32) if not torch.equal(shown[i], images[i])]
    assert 4 < len(changed) < 28  # about half
    for i in changed:
        assert not shown[i, 1:].any()  # the others blank
        assert any(torch.equal(shown[i, 0], images[i, c]) for c in range(4))  # one of its own channels
    assert torch.equal(shown[30], images[30])
    assert len({next(c for c in range(4) if torch.equal(shown[i, 0], images[i, c])) for i in changed}) > 1
    # its draws come last: the flips, rotations, jitter and fields of a run without it are the ones a run with it
    # makes (the samples not shown as photos come out the same)
    moving = Augment(flip=True, rotate_degrees=20, intensity_jitter=0.2, modality_dropout=0, bias_field=0.2)
    without = augment_batch(images, masks, moving, torch.Generator().manual_seed(3))
    with_photos = augment_batch(images, masks, moving.model_copy(update={"photo_like": 0.5}),
                                torch.Generator().manual_seed(3))
    assert torch.equal(with_photos[1], without[1])
    same = [i for i in range(32) if torch.equal(with_photos[0][i], without[0][i])]
    assert 4 < len(same) < 32  # the others were shown as photos
    for i in set(range(32)) - set(same):
        assert not with_photos[0][i, 1:].any()
    # train_cls and train_joint may set their own share; train_seg has no such key and keeps the shared one
    settings = with_section(with_section(tiny_settings, "train_cls", photo_like=0.4), "train_joint", photo_like=0.0)
    shared = with_section(settings, "train", augment=settings.train.augment.model_copy(update={"photo_like": 0.3}))
    shares = {stage: stage_augment(plan_stage(shared, stage)).photo_like for stage in ("seg", "cls", "joint")}
    assert shares == {"seg": 0.3, "cls": 0.4, "joint": 0.0}  # a stage's own 0 is 0, not "the shared one"


def test_a_crop_too_small_for_the_model_is_a_clear_error():
    from tasks.errors import SliceWiseError
    from tasks.training.plan import crop_side

    with pytest.raises(SliceWiseError, match="train_seg.crop 0.05 of 128 pixels") as error:
        crop_side(_seg_plan(0.05), (128, 128))
    assert "params.yaml" in str(error.value)


def test_bias_fields_scale_each_brain_smoothly_about_its_darkest_pixel_and_move_nothing_else():
    from tasks.data.augment import augment_batch

    images, masks = _brain_slices(n=6)
    images[5, 1] = 0  # a channel blanked (as modality dropout does) stays blank
    plain = Augment(flip=False, rotate_degrees=0, intensity_jitter=0, modality_dropout=0)
    biased, biased_masks = augment_batch(images, masks, plain.model_copy(update={"bias_field": 0.3}),
                                         torch.Generator().manual_seed(0))
    brain = images != 0
    assert torch.equal(biased_masks, masks) and torch.equal(biased != 0, brain)  # background 0, brain kept
    darkest = torch.where(brain, images, torch.inf).amin((2, 3), keepdim=True)
    ratio = torch.where(brain, (biased - darkest) / (images - darkest), torch.nan)
    seen = ratio[brain & (images > darkest + 0.5)]  # pixels far enough from the pivot for a ratio to be exact
    assert seen.min() >= math.exp(-0.3 * 1.2) and seen.max() <= math.exp(0.3 * 1.2)  # bicubic overshoots a little
    assert (seen.max() - seen.min()) > 0.1  # a field, not a constant
    assert torch.equal(torch.where(brain, biased, torch.inf).amin((2, 3), keepdim=True)[brain.any((2, 3), True)],
                       darkest[brain.any((2, 3), True)])  # the pivot itself stays
    # smooth: neighbouring pixels' factors differ far less than the field's range
    steps = (ratio[..., 1:] - ratio[..., :-1]).abs()
    assert steps[~steps.isnan()].max() < 0.05
    # the field's draws come after every other draw: rotation, jitter and crop are the ones a run without it gets
    moving = Augment(flip=True, rotate_degrees=20, intensity_jitter=0.2, modality_dropout=0)
    for crop in (None, 24):
        without = augment_batch(images, masks, moving, torch.Generator().manual_seed(3), crop=crop)
        with_field = augment_batch(images, masks, moving.model_copy(update={"bias_field": 0.3}),
                                   torch.Generator().manual_seed(3), crop=crop)
        assert torch.equal(with_field[1], without[1]) and torch.equal(with_field[0] != 0, without[0] != 0)
        assert not torch.equal(with_field[0], without[0])


def test_a_bias_field_share_spares_the_other_samples():
    from tasks.data.augment import augment_batch

    images, masks = _brain_slices(n=16)
    plain = Augment(flip=False, rotate_degrees=0, intensity_jitter=0, modality_dropout=0)
    half = augment_batch(images, masks, plain.model_copy(update={"bias_field": 0.3, "bias_field_share": 0.5}),
                         torch.Generator().manual_seed(1))[0]
    changed = ~torch.isclose(half, images, atol=1e-5).flatten(1).all(1)
    assert 0 < int(changed.sum()) < 16  # some samples got a field, the others none
    spared = augment_batch(images, masks, plain.model_copy(update={"bias_field": 0.3, "bias_field_share": 0.0}),
                           torch.Generator().manual_seed(1))[0]
    assert torch.allclose(spared, images, atol=1e-5)


def test_a_train_split_without_tumour_slices_says_so_when_only_tumour_slices_train(tmp_path, tiny_settings):
    """train_seg.tumour_slices_only with no tumour slice left in the train split: the error said there were no BraTS
    slices at all, where the split had them."""
    from tasks.data.datasets import stage_data
    from tasks.errors import SliceWiseError
    from tests.conftest import make_tiny_processed, strip_tumours

    data = make_tiny_processed(tmp_path)
    strip_tumours(data, [p for p in (data.splits / "train.txt").read_text().split() if p.startswith("BraTS")])
    params = tiny_settings.train_seg.model_copy(update={"tumour_slices_only": True})
    with pytest.raises(SliceWiseError, match=r"no tumour slices in the train split for stage seg "
                                             r"\(train_seg.tumour_slices_only is true\)"):
        stage_data("seg", data.processed, data.splits, params, seed=0)
    train, _ = stage_data("seg", data.processed, data.splits, tiny_settings.train_seg, seed=0)
    assert len(train) > 0 and not bool((train.labels == 1).any())  # the BraTS slices are there, none with tumour
