"""Loss functions shared by the fusion models.

All three are plain functions of tensors so they can be unit-tested against direct
reference formulas (tests/test_losses.py) and reused outside the models.

- `focal_loss`: multi-class focal loss (Lin et al., 2017), used by the seed-1 models
  (cma, agf, cmaf) with alpha 1.148 and gamma 1.582. Seed 1 gives alpha as a single number
  larger than 1, so here alpha is a scalar scale on the loss, not Lin et al.'s per-class
  balance in [0, 1]; per-class balance goes through `class_weights`.
- `supervised_contrastive_loss`: SupCon (Khosla et al., 2020), used by CARAT. It accepts an
  optional memory queue (MoCo-style) whose rows act as extra contrast samples but never as
  anchors, because queue rows carry no gradient.
- `weighted_bce`: binary cross-entropy with per-class positive weights (CARAT's weighted BCE).
- `balanced_class_weights`: the per-class weights of the `class_weights: balanced` training
  option, scikit-learn's `class_weight="balanced"`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    gamma: float = 2.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-class focal loss, FL = -alpha * (1 - p_t)^gamma * log(p_t), averaged over the batch.

    Args:
        logits: (B, C) unnormalised scores.
        target: (B,) long class indices in [0, C).
        alpha: scalar scale (see module docstring).
        gamma: focusing parameter; gamma = 0 and alpha = 1 give plain cross-entropy.
        class_weights: optional (C,) weights. As in `torch.nn.functional.cross_entropy`, the
            batch mean is then weighted: sum_i w[y_i] FL_i / sum_i w[y_i], so that
            gamma = 0, alpha = 1 reproduces `cross_entropy(..., weight=class_weights)`.
    """
    if logits.ndim != 2 or target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"focal_loss expects logits (B, C) and target (B,), got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    n_classes = logits.shape[1]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n_classes):
        raise ValueError(
            f"focal_loss: class index out of range [0, {n_classes}): min {int(target.min())}, max {int(target.max())}"
        )
    # Compute in float32: (1 - p_t)^gamma with a non-integer gamma is fragile in half precision.
    log_probs = F.log_softmax(logits.float(), dim=-1)
    log_p_target = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
    p_target = log_p_target.exp()
    modulating = (1.0 - p_target).clamp(min=0.0).pow(gamma)
    per_sample = -alpha * modulating * log_p_target
    if class_weights is None:
        return per_sample.mean()
    weights = class_weights.to(per_sample)[target]
    return (weights * per_sample).sum() / weights.sum().clamp(min=torch.finfo(per_sample.dtype).tiny)


def balanced_class_weights(labels, n_classes: int) -> tuple[float, ...]:
    """Inverse class frequency, w_c = n / (k * count_c), scikit-learn's "balanced" formula.

    `labels`: the training split's class indices (values < 0, unlabelled, are left out); n is
    their number and k the number of classes among them, so the weights equal
    `sklearn.utils.class_weight.compute_class_weight("balanced", classes=np.unique(y), y=y)`
    and a sample's mean weight is 1. A class absent from training has no term to weight; it
    gets 1.0 (neutral) so that dev/test utterances of it still count in the dev loss.
    """
    import numpy as np

    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    y = y[y >= 0]
    if len(y) == 0:
        raise ValueError("balanced class weights need labelled training utterances, found none")
    if int(y.max()) >= n_classes:
        raise ValueError(f"balanced class weights: label {int(y.max())} is out of range for {n_classes} classes")
    counts = np.bincount(y, minlength=n_classes)
    k = int((counts > 0).sum())
    weights = np.where(counts > 0, len(y) / (k * np.maximum(counts, 1)), 1.0)
    return tuple(float(w) for w in weights)


def weighted_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy with logits and optional per-class positive weights, mean over all entries.

    loss = -mean_{b,c} [ w_c * y_bc * log sigmoid(x_bc) + (1 - y_bc) * log(1 - sigmoid(x_bc)) ]

    Args:
        logits: (..., C) scores.
        targets: same shape, values in [0, 1].
        pos_weight: optional (C,) weight on the positive term of each class.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"weighted_bce: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    if pos_weight is not None:
        pos_weight = pos_weight.to(device=logits.device, dtype=torch.float32)
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=pos_weight)


def _positive_pairs(anchor_labels: torch.Tensor, contrast_labels: torch.Tensor) -> torch.Tensor:
    """(N, M) bool: anchor i and contrast j share a label.

    Single-label (1-D long labels): equal class. Multi-label (2-D 0/1 labels): at least one
    label in common, the usual multi-label extension of SupCon.
    """
    if anchor_labels.ndim == 1:
        return anchor_labels.unsqueeze(1) == contrast_labels.unsqueeze(0)
    anchor_hot = (anchor_labels > 0.5).float()
    contrast_hot = (contrast_labels > 0.5).float()
    return (anchor_hot @ contrast_hot.T) > 0


def supervised_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.07,
    queue_features: torch.Tensor | None = None,
    queue_labels: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020, the L_out form).

    For each anchor i with positives P(i) (other samples sharing its label) and contrast set
    A(i) (every sample but i):

        L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / T) / sum_{a in A(i)} exp(z_i.z_a / T) )

    and the loss is the mean of L_i over anchors that have at least one positive (anchors
    without positives contribute no signal and are left out rather than producing 0/0). If no
    anchor has a positive the loss is 0 (still attached to the graph).

    Args:
        features: (N, P) anchor features; they are also part of the contrast set.
        labels: (N,) long class ids, or (N, C) multi-hot; with multi-hot labels, samples
            sharing at least one label are positives.
        temperature: T.
        queue_features: optional (Q, P) extra contrast samples (a memory queue); treated as
            constants (detached), never anchors.
        queue_labels: labels of the queue rows, same format as `labels`.
        normalize: L2-normalise features (and queue) first, as SupCon assumes unit vectors.
    """
    if features.ndim != 2 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"supervised_contrastive_loss: features (N, P) and labels (N, ...) expected, "
            f"got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    if (queue_features is None) != (queue_labels is None):
        raise ValueError("supervised_contrastive_loss: give both queue_features and queue_labels, or neither")
    anchors = features.float()
    if normalize:
        anchors = F.normalize(anchors, dim=-1)
    contrast, contrast_labels = anchors, labels
    if queue_features is not None and queue_features.shape[0] > 0:
        queue = queue_features.detach().float()
        if normalize:
            queue = F.normalize(queue, dim=-1)
        contrast = torch.cat([anchors, queue], dim=0)
        contrast_labels = torch.cat([labels, queue_labels.to(labels)], dim=0)

    n_anchors = anchors.shape[0]
    logits = anchors @ contrast.T / temperature  # (N, N + Q)
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self[:, :n_anchors].fill_diagonal_(False)
    positives = _positive_pairs(labels, contrast_labels) & not_self

    # Subtracting the row max is exact for log-softmax and keeps exp() finite.
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    log_denominator = torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator
    n_positives = positives.sum(dim=1)
    has_positive = n_positives > 0
    if not bool(has_positive.any()):
        return features.sum() * 0.0
    mean_log_prob_pos = (log_prob * positives).sum(dim=1)[has_positive] / n_positives[has_positive]
    return -mean_log_prob_pos.mean()
