"""fuse.losses against direct reference formulas on fixed tensors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fuse.losses import balanced_class_weights, focal_loss, supervised_contrastive_loss, weighted_bce

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0], [1.5, 1.5, -2.0]])
TARGET = torch.tensor([0, 2, 1, 1])


def reference_focal(logits, target, alpha, gamma, class_weights=None):
    """FL_i = -alpha (1 - p_t)^gamma log p_t, one sample at a time with math."""
    total, weight_sum = 0.0, 0.0
    for row, t in zip(logits.tolist(), target.tolist()):
        denominator = sum(math.exp(v) for v in row)
        p_t = math.exp(row[t]) / denominator
        weight = 1.0 if class_weights is None else class_weights[t]
        total += weight * -alpha * (1 - p_t) ** gamma * math.log(p_t)
        weight_sum += weight
    return total / weight_sum


def test_focal_loss_matches_the_formula():
    value = focal_loss(LOGITS, TARGET, alpha=1.148, gamma=1.582)
    assert value.item() == pytest.approx(reference_focal(LOGITS, TARGET, 1.148, 1.582), rel=1e-6)


def test_focal_loss_with_class_weights_matches_the_formula():
    weights = [0.5, 2.0, 1.0]
    value = focal_loss(LOGITS, TARGET, alpha=0.7, gamma=2.0, class_weights=torch.tensor(weights))
    assert value.item() == pytest.approx(reference_focal(LOGITS, TARGET, 0.7, 2.0, weights), rel=1e-6)


def test_focal_loss_reduces_to_cross_entropy():
    torch.testing.assert_close(focal_loss(LOGITS, TARGET, alpha=1.0, gamma=0.0), F.cross_entropy(LOGITS, TARGET))
    weights = torch.tensor([0.5, 2.0, 1.0])
    torch.testing.assert_close(
        focal_loss(LOGITS, TARGET, alpha=1.0, gamma=0.0, class_weights=weights),
        F.cross_entropy(LOGITS, TARGET, weight=weights),
    )


def test_focal_loss_down_weights_easy_examples():
    easy = torch.tensor([[6.0, 0.0]])
    target = torch.tensor([0])
    assert focal_loss(easy, target, gamma=2.0) < 0.01 * F.cross_entropy(easy, target)


def test_focal_loss_rejects_bad_targets():
    with pytest.raises(ValueError, match="out of range"):
        focal_loss(LOGITS, torch.tensor([0, 1, 2, 3]))


def test_weighted_bce_matches_the_formula():
    logits = torch.tensor([[0.3, -1.2, 2.0], [-0.5, 0.7, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    pos_weight = [1.0, 2.5, 3.0]
    expected = 0.0
    for row, target_row in zip(logits.tolist(), targets.tolist()):
        for c, (x, y) in enumerate(zip(row, target_row)):
            p = 1 / (1 + math.exp(-x))
            expected += -(pos_weight[c] * y * math.log(p) + (1 - y) * math.log(1 - p))
    expected /= logits.numel()
    value = weighted_bce(logits, targets, torch.tensor(pos_weight))
    assert value.item() == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------------------------
# Supervised contrastive loss
# --------------------------------------------------------------------------------------------


def reference_supcon(features, labels, temperature, queue=None, queue_labels=None):
    """Khosla et al. L_out, anchor by anchor, with plain Python loops."""
    z = F.normalize(features, dim=-1).tolist()
    all_labels = labels.tolist()
    if queue is not None:
        z = z + F.normalize(queue, dim=-1).tolist()
        all_labels = all_labels + queue_labels.tolist()

    def share(a, b):
        if isinstance(a, list):
            return any(x > 0.5 and y > 0.5 for x, y in zip(a, b))
        return a == b

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b)) / temperature

    losses = []
    for i in range(features.shape[0]):
        others = [j for j in range(len(z)) if j != i]
        positives = [j for j in others if share(all_labels[i], all_labels[j])]
        if not positives:
            continue
        log_denominator = math.log(sum(math.exp(dot(z[i], z[a])) for a in others))
        losses.append(-sum(dot(z[i], z[p]) - log_denominator for p in positives) / len(positives))
    return sum(losses) / len(losses)


FEATURES = torch.tensor(
    [[1.0, 0.2, -0.3], [0.9, 0.1, 0.0], [-0.5, 1.0, 0.4], [0.0, -1.0, 1.0], [0.3, 0.3, 0.3], [-1.0, 0.0, 0.2]]
)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_supcon_single_label_matches_the_loop(temperature):
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    value = supervised_contrastive_loss(FEATURES, labels, temperature)
    assert value.item() == pytest.approx(reference_supcon(FEATURES, labels, temperature), rel=1e-5)


def test_supcon_anchor_without_positive_is_left_out():
    labels = torch.tensor([0, 0, 1, 1, 2, 3])  # 2 and 3 have no positive
    value = supervised_contrastive_loss(FEATURES, labels, 0.2)
    assert value.item() == pytest.approx(reference_supcon(FEATURES, labels, 0.2), rel=1e-5)


def test_supcon_multi_label_positives_share_a_label():
    labels = torch.tensor(
        [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.float32
    )
    value = supervised_contrastive_loss(FEATURES, labels, 0.3)
    assert value.item() == pytest.approx(reference_supcon(FEATURES, labels, 0.3), rel=1e-5)


def test_supcon_with_queue_matches_the_loop():
    labels = torch.tensor([0, 1, 1, 2, 0, 3])
    queue = torch.tensor([[0.5, -0.5, 0.1], [1.0, 1.0, 1.0], [0.2, 0.0, -1.0]])
    queue_labels = torch.tensor([3, 0, 2])
    value = supervised_contrastive_loss(FEATURES, labels, 0.1, queue_features=queue, queue_labels=queue_labels)
    expected = reference_supcon(FEATURES, labels, 0.1, queue, queue_labels)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_supcon_queue_gets_no_gradient_and_features_do():
    features = FEATURES.clone().requires_grad_()
    queue = torch.randn(3, 3, requires_grad=True)
    loss = supervised_contrastive_loss(features, torch.tensor([0, 0, 1, 1, 2, 2]), 0.1, queue, torch.tensor([0, 1, 2]))
    loss.backward()
    assert queue.grad is None and torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_supcon_without_any_positive_is_zero_and_finite():
    features = FEATURES.clone().requires_grad_()
    loss = supervised_contrastive_loss(features, torch.arange(6), 0.07)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_supcon_prefers_clustered_features():
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert supervised_contrastive_loss(clustered, labels, 0.1) < supervised_contrastive_loss(mixed, labels, 0.1)


def test_balanced_class_weights_are_n_over_k_counts():
    # 6 labelled utterances of 3 present classes (counts 3, 2, 1; class 3 absent; -1 unlabelled).
    weights = balanced_class_weights([0, 0, 0, 1, 1, 2, -1], n_classes=4)
    assert weights == pytest.approx((6 / (3 * 3), 6 / (3 * 2), 6 / (3 * 1), 1.0))
    sklearn = pytest.importorskip("sklearn.utils.class_weight")
    y = [2, 0, 0, 1, 1, 1, 1, 2, 0, 1]
    expected = sklearn.compute_class_weight("balanced", classes=np.unique(y), y=np.array(y))
    assert balanced_class_weights(y, 3) == pytest.approx(tuple(expected))
    with pytest.raises(ValueError, match="out of range for 2 classes"):
        balanced_class_weights([0, 2], 2)
    with pytest.raises(ValueError, match="found none"):
        balanced_class_weights([-1, -1], 2)
