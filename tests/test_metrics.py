"""fuse.metrics against direct scikit-learn calls on fixed arrays."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from fuse import metrics as M

Y_TRUE = np.array([0, 0, 1, 1, 2, 2, 2, 0, 1, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0, 2, 0, 2, 2])
NAMES = ["neutral", "joy", "anger"]

MULTI_TRUE = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 1], [0, 0, 0]])
MULTI_PROB = np.array(
    [[0.9, 0.1, 0.3], [0.6, 0.15, 0.1], [0.1, 0.25, 0.7], [0.3, 0.8, 0.1], [0.4, 0.05, 0.9], [0.1, 0.1, 0.22]]
)


def test_single_label_metrics_match_sklearn():
    m = M.single_label_metrics(Y_TRUE, Y_PRED, NAMES)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(Y_TRUE, Y_PRED))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(Y_TRUE, Y_PRED, average="weighted"))
    assert m["weighted_precision"] == pytest.approx(skm.precision_score(Y_TRUE, Y_PRED, average="weighted"))
    assert m["weighted_recall"] == pytest.approx(skm.recall_score(Y_TRUE, Y_PRED, average="weighted"))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert m["uar"] == pytest.approx(skm.balanced_accuracy_score(Y_TRUE, Y_PRED))
    assert m["confusion_matrix"] == skm.confusion_matrix(Y_TRUE, Y_PRED).tolist()
    per_class = skm.f1_score(Y_TRUE, Y_PRED, average=None)
    assert [m["per_class"][n]["f1-score"] for n in NAMES] == pytest.approx(per_class.tolist())
    assert m["per_class"]["anger"]["support"] == 4


def test_single_label_class_absent_from_the_split():
    # A perfect prediction on a split without class c scores 1, not 2/3.
    m = M.single_label_metrics(np.array([0, 0, 1]), np.array([0, 0, 1]), ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert m["macro_f1"] == 1.0 and m["uar"] == 1.0
    assert m["per_class"]["c"]["support"] == 0
    # Predicting the absent class: UAR averages recall over the classes present (as
    # balanced accuracy does); macro F1 counts the absent class's F1 of 0.
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    m = M.single_label_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["uar"] == pytest.approx(0.75) == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_multi_label_metrics_match_sklearn():
    m = M.multi_label_metrics(MULTI_TRUE, MULTI_PROB, ["happy", "sad", "anger"], threshold=0.2)
    pred = (MULTI_PROB >= 0.2).astype(int)
    assert m["sample_accuracy"] == pytest.approx(skm.jaccard_score(MULTI_TRUE, pred, average="samples", zero_division=0))
    assert m["micro_f1"] == pytest.approx(skm.f1_score(MULTI_TRUE, pred, average="micro"))
    assert m["micro_precision"] == pytest.approx(skm.precision_score(MULTI_TRUE, pred, average="micro"))
    assert m["micro_recall"] == pytest.approx(skm.recall_score(MULTI_TRUE, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(MULTI_TRUE, pred, average="macro", zero_division=0))
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(MULTI_TRUE, pred))
    assert [m["per_class"][n]["f1-score"] for n in ("happy", "sad", "anger")] == pytest.approx(
        skm.f1_score(MULTI_TRUE, pred, average=None).tolist()
    )
    assert m["threshold"] == 0.2
    assert m["confusion_matrices"] == skm.multilabel_confusion_matrix(MULTI_TRUE, pred).tolist()
    # the threshold matters
    assert M.multi_label_metrics(MULTI_TRUE, MULTI_PROB, ["a", "b", "c"], 0.5)["micro_f1"] != m["micro_f1"]


def test_compute_metrics_dispatches_on_task():
    probs = np.eye(3)[Y_PRED] * 0.8 + 0.1
    assert M.compute_metrics("single_label", Y_TRUE, probs, NAMES)["weighted_f1"] == pytest.approx(
        skm.f1_score(Y_TRUE, Y_PRED, average="weighted")
    )
    assert M.compute_metrics("multi_label", MULTI_TRUE, MULTI_PROB, NAMES)["threshold"] == 0.5


def test_tune_threshold_finds_the_best_grid_point():
    threshold, score = M.tune_threshold(MULTI_TRUE, MULTI_PROB, "micro_f1")
    scores = {t: skm.f1_score(MULTI_TRUE, (MULTI_PROB >= t).astype(int), average="micro") for t in M.THRESHOLD_GRID}
    assert score == pytest.approx(max(scores.values()))
    assert scores[threshold] == pytest.approx(score)
    low, _ = M.tune_threshold(MULTI_TRUE, MULTI_PROB, "hamming_loss")
    assert skm.hamming_loss(MULTI_TRUE, (MULTI_PROB >= low).astype(int)) == pytest.approx(
        min(skm.hamming_loss(MULTI_TRUE, (MULTI_PROB >= t).astype(int)) for t in M.THRESHOLD_GRID)
    )


def test_is_better_respects_direction_and_table_lists_splits():
    assert M.is_better("micro_f1", 0.5, 0.4) and not M.is_better("micro_f1", 0.4, 0.5)
    assert M.is_better("hamming_loss", 0.1, 0.2) and M.is_better("weighted_f1", 0.1, None)
    table = M.format_table({"dev": M.single_label_metrics(Y_TRUE, Y_PRED, NAMES), "test": {}}, "single_label")
    assert table.splitlines()[0].split() == ["metric", "dev"]
    assert any(line.startswith("uar") for line in table.splitlines())
