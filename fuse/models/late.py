"""`late`: the simplest multimodal baseline: pool each modality, concatenate, MLP.

Each modality's sequence is masked-mean pooled; the pooled vectors are concatenated in the
canonical order (text, audio, video), with zeros for a missing modality, and classified by
FC -> ReLU -> dropout -> FC. Not described by either seed; it is the reference point the fusion
models must beat. `hidden_size=0` makes the head linear (dropout -> FC), the usual choice for
a few hundred utterances with thousands of inputs such as ComParE functionals, where linear
SVMs are the field's baseline. Loss: cross-entropy by default (`loss="focal"` to use seed 1's focal loss),
BCE for multi-label.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fuse.batch import Batch
from fuse.models.base import (
    BASELINE_TRAINING,
    ClassificationHead,
    ClassifierLossConfig,
    FusionModel,
    ModelOutput,
    TrainingDefaults,
    masked_mean,
)


@dataclass
class LateFusionConfig(ClassifierLossConfig):
    loss: str = "cross_entropy"
    hidden_size: int = 256  # 0: a linear head (dropout -> FC)
    dropout: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        if self.hidden_size < 0:
            raise ValueError(f"hidden_size must be >= 0 (0: a linear head), got {self.hidden_size}")

    default_training: ClassVar[TrainingDefaults] = BASELINE_TRAINING


class LateFusionModel(FusionModel):
    """Concatenation of masked-mean-pooled modalities -> MLP."""

    config_class = LateFusionConfig

    def __init__(self, config: LateFusionConfig, input_dims, n_classes, task, metadata=None):
        super().__init__(config, input_dims, n_classes, task, metadata)
        concatenated = sum(self.input_dims.values())
        self.head = ClassificationHead(concatenated, config.hidden_size, n_classes, config.dropout)
        self.register_class_weights(config.class_weights)

    def forward(self, batch: Batch) -> ModelOutput:
        inputs = self.modality_inputs(batch)
        # masked_mean is already 0 for a missing modality (empty mask).
        fused = torch.cat([masked_mean(inputs[m].values, inputs[m].mask.bool()) for m in self.modality_names], dim=-1)
        return self.output_with_loss(self.head(fused), batch, modality_names=self.modality_names, fused=fused)
