"""Evaluation figures (PNG, matplotlib Agg) and the CSV files that `dvc plots show` renders.

Every function writes into a given folder and returns the paths it wrote; none of them computes a metric that
the report relies on (those live in tasks/evaluation/metrics.py).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from tasks.data.shards import read_shard  # noqa: E402
from tasks.evaluation.metrics import CALIBRATION_BINS, MASK_THRESHOLD  # noqa: E402
from tasks.io import atomic_write  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    """The figure as `path` (its suffix names the format), written whole or not at all."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    return path


def roc_plot(labels: np.ndarray, probabilities: np.ndarray, auc: float | None, out_dir: Path) -> list[Path]:
    fpr, tpr, _ = roc_curve(labels, probabilities)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"ROC (AUC = {auc:.3f})" if auc is not None else "ROC")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate (sensitivity)", title="ROC, test split")
    ax.legend(loc="lower right")
    return [_save(fig, out_dir / "roc.png"), _write_csv(pd.DataFrame({"fpr": fpr, "tpr": tpr}), out_dir / "roc.csv")]


def pr_plot(labels: np.ndarray, probabilities: np.ndarray, ap: float | None, out_dir: Path) -> list[Path]:
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.step(recall, precision, where="post", label=f"PR (AP = {ap:.3f})" if ap is not None else "PR")
    ax.axhline(float(np.mean(labels)), linestyle="--", color="grey", label="prevalence")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall, test split", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    frame = pd.DataFrame({"recall": recall, "precision": precision})
    return [_save(fig, out_dir / "pr.png"), _write_csv(frame, out_dir / "pr.csv")]


def confusion_plot(labels: np.ndarray, predicted: np.ndarray, matrix: list[list[int]], threshold: float,
                   out_dir: Path, photo_threshold: float | None = None) -> list[Path]:
    """Counts [[tn, fp], [fn, tp]] as a heat map, and one row per slice for DVC's `confusion` template."""
    matrix_array = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(matrix_array, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix_array):
        colour = "white" if count > matrix_array.max() / 2 else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=13)
    names = ["no tumour", "tumour"]
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="actual",
           title=f"Confusion matrix, test split (threshold {threshold:.2f}"
                 + ("" if photo_threshold in (None, threshold) else f"; photos {photo_threshold:.2f}") + ")")
    frame = pd.DataFrame({"actual": np.asarray(labels, dtype=int), "predicted": np.asarray(predicted, dtype=int)})
    return [_save(fig, out_dir / "confusion.png"), _write_csv(frame, out_dir / "confusion.csv")]


def calibration_plot(labels: np.ndarray, probabilities: np.ndarray, ece: float, out_dir: Path) -> list[Path]:
    fraction_positive, mean_predicted = calibration_curve(labels, probabilities, n_bins=CALIBRATION_BINS)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(mean_predicted, fraction_positive, "o-", label=f"model (ECE = {ece:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.set(xlabel="mean predicted probability", ylabel="fraction of tumour slices", title="Calibration, test split")
    ax.legend(loc="upper left")
    frame = pd.DataFrame({"mean_predicted": mean_predicted, "fraction_positive": fraction_positive})
    return [_save(fig, out_dir / "calibration.png"), _write_csv(frame, out_dir / "calibration.csv")]


def patients_csv(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The per-patient scores (`report.per_patient_scores`) as reports/plots/patients.csv: which test patients pull
    a mean down (dvc.yaml plots its volume Dice as sorted bars)."""
    return [_write_csv(table, out_dir / "patients.csv")]


def training_curves_plot(histories: dict[str, Path], out_dir: Path) -> list[Path]:
    """Loss and validation metrics per epoch of each training stage found (a missing history is skipped)."""
    found = {stage: pd.read_csv(path) for stage, path in histories.items() if path.exists()}
    if not found:
        return []
    fig, axes = plt.subplots(2, len(found), figsize=(4.2 * len(found), 6.5), squeeze=False)
    for col, (stage, history) in enumerate(found.items()):
        x = history["epoch"] if "epoch" in history else np.arange(1, len(history) + 1)
        loss_ax, metric_ax = axes[0, col], axes[1, col]
        for column in ("train_loss", "val_loss"):
            if column in history:
                loss_ax.plot(x, history[column], "o-", label=column)
        loss_ax.set(title=f"{stage}: loss", xlabel="epoch")
        for ax in (loss_ax, metric_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        loss_ax.legend()
        for column in history.columns:
            if column.startswith("val_") and column != "val_loss":
                metric_ax.plot(x, history[column], "o-", label=column)
        metric_ax.set(title=f"{stage}: validation metrics", xlabel="epoch")
        if metric_ax.lines:
            metric_ax.legend()
    fig.tight_layout()
    return [_save(fig, out_dir / "training_curves.png")]


def overlay_grid_plot(images: np.ndarray, truths: np.ndarray, predictions: np.ndarray, titles: list[str],
                      out_dir: Path) -> list[Path]:
    """One row per example: image, ground truth over the image, predicted mask over the image."""
    if len(images) == 0:
        return []
    fig, axes = plt.subplots(len(images), 3, figsize=(7.5, 2.6 * len(images)), squeeze=False)
    for row, (image, truth, prediction, title) in enumerate(zip(images, truths, predictions, titles)):
        for col, (mask, name, colour) in enumerate([(None, "image", None), (truth, "ground truth", "Greens"),
                                                     (prediction, "prediction", "Reds")]):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray")
            if mask is not None:
                ax.imshow(np.ma.masked_where(mask == 0, mask), cmap=colour, alpha=0.55, vmin=0, vmax=1)
            ax.set_title(f"{title}\n{name}" if col == 0 else name, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return [_save(fig, out_dir / "overlays.png")]


def gradcam_grid_plot(images: np.ndarray, maps: np.ndarray, titles: list[str], out_dir: Path) -> list[Path]:
    """Image and Grad-CAM heat map of the classification head side by side, one row per example."""
    if len(images) == 0:
        return []
    fig, axes = plt.subplots(len(images), 2, figsize=(5.2, 2.6 * len(images)), squeeze=False)
    for row, (image, heat, title) in enumerate(zip(images, maps, titles)):
        axes[row, 0].imshow(image, cmap="gray")
        axes[row, 0].set_title(title, fontsize=8)
        axes[row, 1].imshow(image, cmap="gray")
        axes[row, 1].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[row, 1].set_title("Grad-CAM (tumour logit)", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    return [_save(fig, out_dir / "gradcam.png")]


# --- example grids: a few test slices, chosen reproducibly -------------------------------------------------------


def pick_overlay_examples(slices: pd.DataFrame, count: int) -> pd.DataFrame:
    """The largest tumour slice of each BraTS patient first, then the second largest, ... up to `count`."""
    tumour = slices[(slices["source"] == "brats") & (slices["tumour_area_px"] > 0)]
    ranked = tumour.assign(rank=tumour.groupby("patient")["tumour_area_px"].rank(method="first", ascending=False))
    return ranked.sort_values(["rank", "patient"]).head(count)


def pick_gradcam_examples(slices: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """A seeded sample of tumour and tumour-free slices (BraTS and Kaggle alike), about half each."""
    positives, negatives = slices[slices["label"] == 1], slices[slices["label"] == 0]
    n_pos = min(len(positives), max(count - len(negatives), (count + 1) // 2))
    n_neg = min(len(negatives), count - n_pos)
    return pd.concat([positives.sample(n_pos, random_state=seed), negatives.sample(n_neg, random_state=seed)])


def read_examples(processed: Path, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, C, H, W) float32 and masks (n, H, W) of a few manifest rows, in the rows' order."""
    images, masks, shards = [], [], {}
    for shard_name, row in zip(rows["shard"], rows["row"]):
        shard = shards.setdefault(shard_name, read_shard(processed / shard_name))
        images.append(shard.images[row].astype(np.float32))
        masks.append(shard.masks[row] > 0)  # whole tumour: shards hold BraTS labels 0/1/2/4
    return np.stack(images), np.stack(masks)


def _title(row) -> str:
    where = f" z={row.slice_index}" if row.slice_index >= 0 else ""
    return f"{row.patient}{where} label={row.label} p={row.probability:.2f}"


def overlay_examples_plot(slices: pd.DataFrame, processed: Path, predictor, count: int, out_dir: Path,
                          mask_threshold: float = MASK_THRESHOLD) -> list[Path]:
    """Overlays of `count` tumour slices; `slices` are manifest rows with a `probability` column."""
    rows = pick_overlay_examples(slices, count)
    if rows.empty:
        return []
    images, truths = read_examples(processed, rows)
    predicted = predictor.predict(images).mask_probability >= mask_threshold
    return overlay_grid_plot(images[:, 0], truths, predicted, [_title(r) for r in rows.itertuples()], out_dir)


def gradcam_examples_plot(slices: pd.DataFrame, processed: Path, model, count: int, seed: int, out_dir: Path,
                          device: str = "cpu") -> list[Path]:
    """Grad-CAM of the classification head on `count` slices, tumour and tumour-free."""
    from tasks.inference.gradcam import GradCamExplainer  # torch and MONAI only when this figure is drawn

    rows = pick_gradcam_examples(slices, count, seed)
    if rows.empty:
        return []
    images, _ = read_examples(processed, rows)
    maps = GradCamExplainer(model, device=device).explain(images)
    return gradcam_grid_plot(images[:, 0], maps, [_title(r) for r in rows.itertuples()], out_dir)
