"""Each training stage's loss, computed from sums so that it splits across the processes of a DDP run, and the
region targets (WT, TC, ET) it builds from the label maps in a batch."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.data.regions import REGION_LABELS, REGIONS

STAGE_HEADS = {"seg": ("seg",), "cls": ("cls",), "joint": ("seg", "cls")}


def region_targets(labels: Tensor, regions: int = len(REGIONS)) -> Tensor:
    """(N, 1, H, W) BraTS 2020 label maps (0/1/2/4, any dtype) → (N, regions, H, W) float masks WT, TC, ET: the
    torch twin of tasks/data/regions.py's regions_from_labels, run on the batch's device after augmentation (nearest
    neighbour keeps the labels exact). Plain comparisons: `torch.isin` was 7x slower (1.5 s of a quick train_seg)."""
    codes = labels[:, 0].round()
    masks = [functools.reduce(torch.logical_or, [codes == code for code in REGION_LABELS[name]])
             for name in REGIONS[:regions]]
    return torch.stack(masks, dim=1).float()


class StageLoss:
    """seg: Dice + BCE on the region channels; cls: BCE on the labels; joint: L_seg (masked samples only) + λ·L_cls.

    The seg term is MONAI's DiceLoss(sigmoid=True, batch=True) + BCE over the R region channels (WT, TC, ET: one
    sigmoid each, nnU-Net's region-based training for BraTS and its DC_and_BCE_loss): per region a Dice pooled over
    the batch, so slices without tumour do not each add an ill-defined Dice term, averaged over the regions, plus BCE
    over every pixel and region. (MONAI's DiceCELoss is this for one channel, but takes a softmax cross-entropy for
    several, which nested regions do not fit.)
    `dice_over: slice` (a stage param) takes the Dice per slice instead: one Dice per slice and region that has the
    region, averaged over those slices, so a slice with a small tumour cap weighs what a slice with a large tumour does,
    as in the evaluation's mean Dice over the tumour slices (a batch Dice lets the large tumours drown the caps).
    Slices without the region add no Dice term (their Dice is ill-defined); BCE alone covers them, as in batch mode.
    `dice_over: both` takes the mean of the two Dice terms.
    `negative_photos_as_empty_masks` (train_joint) also gives the photos labelled "no tumour" a seg term against an
    empty mask: their mask is known even without a drawing. Without it the seg head never sees a photo and fires on
    whole brains in them, which the fused slice score then reads (docs/recipes.md).
    `peak_weight` (train_joint) adds peak_weight × BCE(largest WT logit of a sample, its label) over every sample,
    photos included: the quantity the fused slice score reads (the largest pixel), trained on the slice labels as a
    multiple-instance max-pooling does; a bright distractor on a tumour-free slice then costs what it costs the score.
    The targets are built from the batch's label maps (`region_targets`). Everything is computed from sums over the
    batch (overlaps, areas, BCE terms and their counts), because sums add up over the shares of a DDP run: the loss
    of a whole batch is `from_sums(sums(out, batch))` and equally `from_sums(sum of sums(out, share) over shares)`.
    """

    SMOOTH = 1e-5  # MONAI's smooth_nr and smooth_dr

    def __init__(self, stage: str, params):
        self.heads = STAGE_HEADS[stage]
        self.cls_weight = getattr(params, "cls_weight", 1.0)
        self.dice_over = getattr(params, "dice_over", "batch")
        self.negative_photos_as_empty_masks = getattr(params, "negative_photos_as_empty_masks", False)
        self.peak_weight = getattr(params, "peak_weight", 0.0)

    def __call__(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        return self.from_sums(self.sums(out, batch))

    def sums(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """[cls BCE sum, cls samples, peak BCE sum, peak samples, seg BCE sum, seg elements, overlap × R,
        predicted area × R, true area × R, slice Dice losses × R, slices × R] (the last two over the slices that have
        the region)."""
        zero = torch.zeros((), device=batch["image"].device)
        cls, seg, peak = [zero] * 2, [zero] * 2, [zero] * 2
        if "seg" in out and self.peak_weight > 0:  # not computed when unused, as the slice Dice
            # the largest WT logit of each sample against its label: every sample, photos too, has a known label
            largest = out["seg"][:, 0].float().amax(dim=(1, 2))
            peak = [F.binary_cross_entropy_with_logits(largest, batch["label"], reduction="sum"),
                    torch.full((), float(len(largest)), device=zero.device)]
        if "cls" in out:
            cls = [F.binary_cross_entropy_with_logits(out["cls"].float(), batch["label"], reduction="sum"),
                   torch.full((), float(len(batch["label"])), device=zero.device)]
        if "seg" in out:  # samples without a mask (Kaggle) get weight 0: no segmentation term from them
            logits = out["seg"].float()
            known = batch["has_mask"]
            if self.negative_photos_as_empty_masks:  # a tumour-free photo's mask is known: empty (collated as zeros)
                known = known | (batch["label"] == 0)
            weight = known.view(-1, 1, 1, 1).to(logits.dtype)
            truth = region_targets(batch["mask"], logits.shape[1]) * weight
            probability = torch.sigmoid(logits) * weight
            bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none") * weight
            per_region = [(probability * truth).sum(dim=(0, 2, 3)), probability.sum(dim=(0, 2, 3)),
                          truth.sum(dim=(0, 2, 3)), *self._slice_dice(probability, truth)]
            seg = [bce.sum(), weight.sum() * logits[0].numel(), *torch.cat(per_region).unbind()]
        return torch.stack(cls + peak + seg)

    def _slice_dice(self, probability: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
        """Per region: the sum of the Dice losses of the slices that have it, and how many slices that is."""
        if self.dice_over == "batch":  # not computed when unused: the batch sums stay as they were, bit for bit
            return torch.zeros(2, truth.shape[1], device=truth.device).unbind()
        overlap, predicted, actual = [x.sum(dim=(2, 3)) for x in (probability * truth, probability, truth)]
        present = actual > 0  # (N, R): the slices that have each region (never a mask-less one: its truth is 0)
        losses = torch.where(present, self._dice_loss(overlap, predicted, actual), 0.0)
        return losses.sum(0), present.to(losses.dtype).sum(0)

    def _dice_loss(self, overlap: Tensor, predicted: Tensor, actual: Tensor) -> Tensor:
        return 1 - (2 * overlap + self.SMOOTH) / (predicted + actual + self.SMOOTH)

    def from_sums(self, sums: Tensor) -> Tensor:
        cls_bce, samples, peak_bce, peak_samples, seg_bce, elements = sums[:6].unbind()
        loss = self.cls_weight * cls_bce / samples.clamp(min=1) if "cls" in self.heads else torch.zeros_like(cls_bce)
        if self.peak_weight > 0 and "seg" in self.heads:
            loss = loss + self.peak_weight * peak_bce / peak_samples.clamp(min=1)
        if "seg" in self.heads:  # with no masked sample: 1 - SMOOTH / SMOOTH = 0 and 0 / 1, no segmentation term
            overlap, predicted, actual, slice_dice, slices = sums[6:].view(5, -1)
            by_batch = self._dice_loss(overlap, predicted, actual)
            by_slice = slice_dice / slices.clamp(min=1)  # a region no slice of the batch has: no Dice term
            # both: the batch Dice still charges false positives on slices without tumour
            dice = {"batch": by_batch, "slice": by_slice, "both": (by_batch + by_slice) / 2}[self.dice_over]
            loss = loss + dice.mean() + seg_bce / elements.clamp(min=1)
        return loss
