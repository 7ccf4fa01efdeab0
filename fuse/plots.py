"""PNG figures for a run folder, drawn with matplotlib's non-interactive Agg backend.

confusion_<split>.png          single-label: the confusion matrix (rows true, columns predicted,
                               row-normalised colours, counts printed); multi-label: one 2x2
                               matrix per emotion
training_curves.png            train/dev loss and the dev metrics per epoch
modality_weights_<split>.png   mean gate weight of each modality per true class (gated models)
attention_<utterance>.png      `fuse explain`: one cross-modal attention map (mean over heads)
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed, safe in threads and on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def confusion(metrics: dict, class_names: list[str], task: str, path: Path, title: str = "") -> Path:
    if task == "single_label":
        counts = np.asarray(metrics["confusion_matrix"])
        size = max(4.0, 0.7 * len(class_names) + 2)
        fig, ax = plt.subplots(figsize=(size, size))
        ConfusionMatrixDisplay(counts, display_labels=class_names).plot(ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45)
        ax.set_title(f"confusion matrix ({title}, n={int(counts.sum())})")
        return _save(fig, path)
    matrices = np.asarray(metrics["confusion_matrices"])
    cols = min(3, len(class_names))
    rows = int(np.ceil(len(class_names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name, counts in zip(axes.flat, class_names, matrices):
        ConfusionMatrixDisplay(counts, display_labels=["absent", "present"]).plot(ax=ax, cmap="Blues", colorbar=False)
        ax.set_title(name)
    for ax in list(axes.flat)[len(class_names) :]:
        ax.axis("off")
    fig.suptitle(f"per-emotion confusion ({title}, threshold {metrics.get('threshold')})")
    return _save(fig, path)


def training_curves(history: list[dict], path: Path) -> Path | None:
    if not history:
        return None
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("dev_loss", "dev")):
        values = [row.get(key) for row in history]
        if any(v is not None for v in values):
            loss_ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_ax.legend()
    for key in history[-1]:
        if key.startswith("dev_") and key != "dev_loss":
            metric_ax.plot(epochs, [row.get(key, np.nan) for row in history], marker=".", label=key[4:])
    metric_ax.set(xlabel="epoch", title="dev metrics")
    metric_ax.legend(fontsize="small")
    return _save(fig, path)


def mean_weights_per_class(gate_weights: np.ndarray, labels: np.ndarray, n_classes: int, task: str) -> np.ndarray:
    """(C, M) mean gate weights over the utterances of each true class (NaN for an empty class)."""
    out = np.full((n_classes, gate_weights.shape[1]), np.nan)
    for c in range(n_classes):
        rows = labels == c if task == "single_label" else labels[:, c] > 0
        if rows.any():
            out[c] = gate_weights[rows].mean(axis=0)
    return out


def modality_weights_per_class(gate_weights, modality_names, labels, class_names, task, path: Path, title: str = "") -> Path:
    means = mean_weights_per_class(np.asarray(gate_weights), np.asarray(labels), len(class_names), task)
    fig, ax = plt.subplots(figsize=(1.2 * len(modality_names) + 3, 0.45 * len(class_names) + 2))
    image = ax.imshow(means, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(modality_names)), modality_names)
    ax.set_yticks(range(len(class_names)), class_names)
    for (i, j), v in np.ndenumerate(means):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black")
    fig.colorbar(image, ax=ax, label="mean gate weight")
    ax.set_title(f"modality weights per true class ({title})")
    return _save(fig, path)


def attention_map(weights: np.ndarray, query_labels: list[str], key_labels: list[str], path: Path, title: str, query_name: str, key_name: str) -> Path:
    """Heatmap of a (T_query, T_key) attention matrix; tick labels thinned to at most ~40."""
    weights = np.asarray(weights)
    fig, ax = plt.subplots(figsize=(min(16, 3 + 0.12 * weights.shape[1]), min(12, 2.5 + 0.3 * weights.shape[0])))
    image = ax.imshow(weights, aspect="auto", cmap="magma", interpolation="nearest")
    for axis, labels, setter in ((0, query_labels, ax.set_yticks), (1, key_labels, ax.set_xticks)):
        step = max(1, int(np.ceil(len(labels) / 40)))
        ticks = list(range(0, len(labels), step))
        setter(ticks, [labels[i] for i in ticks], fontsize=7, rotation=90 if axis == 1 else 0)
    ax.set(xlabel=key_name, ylabel=query_name, title=title)
    fig.colorbar(image, ax=ax, label="attention weight (mean over heads)")
    return _save(fig, path)
