"""Evaluation metrics, all computed by scikit-learn.

Single-label (MELD, EmoDB): accuracy, weighted precision/recall/F1 (MELD's standard metric is
weighted F1), macro F1, unweighted average recall (UAR = macro recall, EmoDB's standard), a
per-class report and the confusion matrix.

Multi-label (CMU-MOSEI emotions): sample accuracy (Jaccard index averaged over samples, as
CARAT and most MOSEI work report "accuracy"), micro precision/recall/F1, macro F1, Hamming
loss and per-emotion F1. Predictions are `probability >= threshold`; the threshold is the
model's default (CARAT: 0.2) unless tuned on the validation split with `tune_threshold`.

`zero_division=0` everywhere: a class never predicted scores 0 rather than raising a warning,
which is what the literature's tables assume. A class absent from the evaluated split (EmoDB
speaker 08 has no disgust utterance, so a leave-one-speaker-out fold lacks it) is left out of
UAR, which averages recall over the classes that occur (sklearn's `balanced_accuracy_score`);
counting it as recall 0 would cap that fold's UAR at 6/7. Macro F1 averages over the classes
that occur in the truth or the predictions (sklearn's default), so predicting an absent class
still costs.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    hamming_loss,
    jaccard_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    recall_score,
)

SINGLE_LABEL_METRICS = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1", "macro_f1", "uar")
MULTI_LABEL_METRICS = ("sample_accuracy", "micro_precision", "micro_recall", "micro_f1", "macro_f1", "hamming_loss")
DEFAULT_METRIC = {"single_label": "weighted_f1", "multi_label": "micro_f1"}
LOWER_IS_BETTER = {"hamming_loss", "loss"}
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def single_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Headline metrics plus `per_class` (precision/recall/f1/support) and `confusion_matrix`."""
    labels = list(range(len(class_names)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="weighted", zero_division=0
    )
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=class_names, output_dict=True, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "weighted_precision": float(precision),
        "weighted_recall": float(recall),
        "weighted_f1": float(f1),
        "macro_f1": float(f1_score(y_true, y_pred, labels=np.union1d(y_true, y_pred), average="macro", zero_division=0)),
        "uar": float(recall_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)),
        "per_class": {name: _floats(report[name]) for name in class_names},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n": int(len(y_true)),
    }


def multi_label_metrics(y_true: np.ndarray, probabilities: np.ndarray, class_names: list[str], threshold: float) -> dict:
    """Metrics of `probabilities >= threshold` against 0/1 `y_true` (both N x C)."""
    y_true = np.asarray(y_true).astype(int)
    y_pred = (np.asarray(probabilities) >= threshold).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    per_class_f1 = f1_score(y_true, y_pred, average=None, zero_division=0)
    p_c, r_c, _, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    return {
        "sample_accuracy": float(jaccard_score(y_true, y_pred, average="samples", zero_division=0)),
        "micro_precision": float(precision),
        "micro_recall": float(recall),
        "micro_f1": float(f1),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "per_class": {
            name: {"precision": float(p_c[i]), "recall": float(r_c[i]), "f1-score": float(per_class_f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrices": multilabel_confusion_matrix(y_true, y_pred).tolist(),  # per class [[tn, fp], [fn, tp]]
        "threshold": float(threshold),
        "n": int(len(y_true)),
    }


def compute_metrics(task: str, y_true: np.ndarray, probabilities: np.ndarray, class_names: list[str], threshold: float | None = None) -> dict:
    """Metrics for `task` from class probabilities (softmax or sigmoid outputs)."""
    if task == "single_label":
        return single_label_metrics(np.asarray(y_true), np.asarray(probabilities).argmax(axis=1), class_names)
    return multi_label_metrics(y_true, probabilities, class_names, 0.5 if threshold is None else threshold)


def tune_threshold(y_true: np.ndarray, probabilities: np.ndarray, metric: str = "micro_f1", grid=THRESHOLD_GRID) -> tuple[float, float]:
    """(threshold, score): the grid threshold with the best `metric` on these (validation) data.

    One threshold for all classes, as CARAT uses; ties go to the threshold nearest 0.5.
    """
    best = None
    names = [str(i) for i in range(np.asarray(y_true).shape[1])]
    for t in sorted(grid, key=lambda t: abs(t - 0.5)):
        score = multi_label_metrics(y_true, probabilities, names, float(t))[metric]
        better = best is None or (score < best[1] if metric in LOWER_IS_BETTER else score > best[1])
        if better:
            best = (float(t), float(score))
    return best


def is_better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric in LOWER_IS_BETTER else new > old


def headline(task: str) -> tuple[str, ...]:
    return SINGLE_LABEL_METRICS if task == "single_label" else MULTI_LABEL_METRICS


def format_table(metrics_by_split: dict[str, dict], task: str) -> str:
    """A plain-text table: one row per metric, one column per split."""
    splits = [s for s in metrics_by_split if metrics_by_split[s]]
    names = headline(task)
    width = max(len(n) for n in names) + 2
    lines = ["metric".ljust(width) + "".join(s.rjust(10) for s in splits)]
    for name in names:
        row = name.ljust(width)
        for s in splits:
            value = metrics_by_split[s].get(name)
            row += (f"{value:10.4f}" if isinstance(value, (int, float)) else "-".rjust(10))
        lines.append(row)
    return "\n".join(lines)


def _floats(d: dict) -> dict:
    return {k: (int(v) if k == "support" else float(v)) for k, v in d.items()}
