"""Training as several DDP processes (tasks/training/distributed.py): shares of a batch add up to the batch, and under
`torchrun` (gloo, 2 CPU processes, the real CLI) the processes end with the same weights, which are the weights a
single process learns from the same data within TOLERANCE."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from models.unet import MultitaskUNet
from tasks import paths, train_cls, train_seg
from tasks.data.batch_sampling import share_bounds
from tasks.errors import SliceWiseError
from tasks.inference.checkpoints import load_checkpoint, model_config_for, weights_digest
from tasks.training.distributed import Ranks, launched_rank
from tasks.training.steps import StageLoss
from tests.conftest import REPO, make_tiny_processed, with_epochs, with_section

# Max abs weight difference allowed between the DDP and the single-process run after 2 epochs (6 Adam steps, fp32);
# measured: 1.0e-7, float rounding of sums taken in another order.
TOLERANCE = 1e-4
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_rank_without_a_world_is_a_single_process_run(monkeypatch):
    """A stage tracks its MLflow run on rank 0 only. RANK set without WORLD_SIZE > 1 (a cluster shell's environment)
    trains in one process, which must track its run: it was rank 3 and ran untracked."""
    monkeypatch.setenv("RANK", "3")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_rank() == 0
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launched_rank() == 0
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun's processes: each its own rank
    assert launched_rank() == 3


def test_shares_cover_the_global_batch_and_their_loss_sums_give_its_loss(tiny_settings):
    torch.manual_seed(0)
    labels = torch.tensor([0.0, 1, 2, 4])[torch.randint(0, 4, (8, 1, 16, 16))]  # BraTS label maps
    batch = {"image": torch.zeros(8, 1, 16, 16), "mask": labels,
             "has_mask": torch.tensor([True, False] * 4), "label": torch.tensor([1.0, 0] * 4)}
    out = {"seg": torch.randn(8, 3, 16, 16), "cls": torch.randn(8)}  # WT, TC, ET logits
    shares = [slice(*share_bounds(8, rank, 3)) for rank in range(3)]  # 8 samples over 3 processes: 2, 3, 3
    assert [s.stop - s.start for s in shares] == [2, 3, 3]
    assert torch.equal(torch.cat([batch["label"][s] for s in shares]), batch["label"])
    options = [{"dice_over": over} for over in ("batch", "slice", "both")]
    options += [{"negative_photos_as_empty_masks": True}, {"peak_weight": 0.5}]
    for option in options:
        loss = StageLoss("joint", tiny_settings.train_joint.model_copy(update=option))
        summed = sum(loss.sums({k: v[s] for k, v in out.items()}, {k: v[s] for k, v in batch.items()}) for s in shares)
        torch.testing.assert_close(loss.from_sums(summed), loss(out, batch))


def test_a_batch_that_does_not_split_evenly_is_a_clear_error():
    with pytest.raises(SliceWiseError, match="batch_size 8 does not split evenly over 3 processes"):
        Ranks(0, 3).check_batch(8, samples=100)
    Ranks(0, 4).check_batch(8, samples=100)


def _project(root: Path, settings) -> Path:
    """Tiny processed data and a params.yaml of `settings`: all `python -m tasks train_seg` needs in its folder."""
    make_tiny_processed(root)
    (root / "params.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return root


def _run(command: list[str], cwd: Path) -> list[dict]:
    """Run the CLI in `cwd` on this repository's code; the JSON results it printed (one per process), by rank."""
    scratch = cwd / "tmp"  # torchrun leaves its log folders (torchelastic_*) in the temporary folder: keep them here
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    decoder, text, results = json.JSONDecoder(), done.stdout.strip(), []
    while text:
        result, end = decoder.raw_decode(text)
        results.append(result)
        text = text[end:].lstrip()
    return sorted(results, key=lambda result: result["rank"])


def with_norm(settings, norm: str):
    profile = settings.active.model_copy(update={"model": settings.active.model.model_copy(update={"norm": norm})})
    return settings.model_copy(update={"profiles": {**settings.profiles, settings.profile: profile}})


@pytest.mark.slow
def test_torchrun_processes_agree_and_learn_what_one_process_learns(tmp_path, tiny_settings, monkeypatch):
    # fp32: under bf16 autocast each process's weight gradients are rounded to bf16 before DDP averages them, where a
    # single process rounds the whole batch's once; Adam turns that into weight differences up to the learning rate
    # (measured 1.0e-3 here), which says nothing about the sharding. Augmentation stays on: it is part of the rule.
    # Instance norm: batch norm would normalise each process's share with its own statistics on CPU, where
    # SyncBatchNorm does not exist (on CUDA, tasks/training/distributed.py converts batch norm to SyncBatchNorm).
    settings = with_section(with_epochs(with_norm(tiny_settings, "instance"), seg=2, cls=1, joint=1), "train",
                            amp_bf16=False)
    ddp, single = _project(tmp_path / "ddp", settings), _project(tmp_path / "single", settings)

    ranks = _run([*TORCHRUN, "-m", "tasks", "train_seg"], ddp)
    monkeypatch.chdir(single)
    alone = train_seg.main(settings)  # what `python -m tasks train_seg` runs, in this process

    assert [(r["rank"], r["processes"], r["epochs_run"]) for r in ranks] == [(0, 2, 2), (1, 2, 2)]
    assert alone["epochs_run"] == 2 and alone["processes"] == 1
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"]
    ddp_weights = load_checkpoint(ddp / paths.last_checkpoint("seg"))["model"]
    assert weights_digest(ddp_weights) == ranks[0]["weights_digest"]  # what rank 0 saved is what every rank holds
    single_weights = load_checkpoint(single / paths.last_checkpoint("seg"))["model"]
    assert max((ddp_weights[k] - single_weights[k]).abs().max().item() for k in single_weights) <= TOLERANCE
    torch.manual_seed(settings.seed)  # the weights training starts from: the match is not one of untouched weights
    start = MultitaskUNet(model_config_for(settings)).state_dict()
    assert max((ddp_weights[k] - start[k]).abs().max().item() for k in start) > 10 * TOLERANCE
    columns = ["epoch", "train_loss", "val_loss"]
    histories = [pd.read_csv(root / paths.history_file("seg"))[columns] for root in (ddp, single)]
    pd.testing.assert_frame_equal(*histories, check_exact=False, atol=TOLERANCE)

    # joint trains everything on mixed BraTS/Kaggle batches (shares with and without masks) with dropout drawn per
    # process, so it matches one process only in distribution; the processes must still agree.
    monkeypatch.chdir(ddp)
    train_cls.main(settings)  # joint starts from cls's best.pt
    ranks = _run([*TORCHRUN, "-m", "tasks", "train_joint"], ddp)
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"] and ranks[0]["epochs_run"] == 1
    assert weights_digest(load_checkpoint(ddp / paths.last_checkpoint("joint"))["model"]) == ranks[0]["weights_digest"]
