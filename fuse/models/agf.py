"""`agf`: adaptive gated fusion of pooled modality features and metadata (seed 1, Algorithm 2).

Seed step -> code:
- Steps 2-10 (frozen BERT / Wav2Vec2 / video encoders) happen in stage 1. Here h_i is the masked
  mean of modality i's cached sequence, projected by a per-modality Linear to the common fusion
  dimension (504, seed 1 Table 2 "Fusion Layer Output Dimension").
- Step 11: m = MetadataEncoder(M): an embedding per categorical column and a Linear over the
  numeric columns, concatenated (`fuse.models.base.MetadataEncoder`); empty without metadata.
- Steps 13, 16-18: one scalar gate per modality, g_i = sigmoid(W_i [h_i; m] + b_i).
- Step 19: alpha = softmax over the PRESENT modalities of g_i; a missing modality gets exactly 0.
  Because g_i lies in (0, 1), this softmax is close to uniform (ratio at most e); that is what the
  seed specifies. `gate_temperature` (default 1, the seed) divides g before the softmax for anyone
  who wants sharper gates.
- Step 21: h_fusion = sum_i alpha_i h_i.
- Step 22, "enhanced fusion" H = softmax(W_f) (.) [h_v, h_a, h_t] + b. Our reading: W_f is a
  learnable (n_modalities, dim) matrix, softmaxed over modalities (again over present ones only),
  i.e. one learned modality mixture per feature dimension; the product is summed over modalities
  and b added. The seed computes h_fusion in step 21 and then never uses it; we keep both paths
  and add them, H = h_fusion + sum_i softmax(W_f)_i (.) h_i + b, so the sample-adaptive gates
  (step 21) and the learned per-feature scaling (step 22) both reach the classifier, and H keeps
  the 504 dimensions the seed's classification head expects (Table 2). W_f starts at zero
  (uniform mixture).
- Steps 24-25: FC (504 -> 512) -> ReLU -> dropout -> FC.
- Loss: focal (alpha 1.148, gamma 1.582) for single-label, BCE for multi-label.
`gate_weights` in the output are alpha.

Option (seed 1 Algorithm 2 steps 4 and 10, default off): `video_encoder_blocks > 0` runs the
trainable temporal video encoder (`fuse.models.video_encoder`) over the video frame embeddings
before pooling; the seed preset uses 6 blocks, embedding 504, 12 heads, dropout 0.185.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fuse.batch import Batch
from fuse.models.base import (
    SEED1_TRAINING,
    ClassificationHead,
    ClassifierLossConfig,
    FusionModel,
    MetadataEncoder,
    ModelOutput,
    TrainingDefaults,
    masked_mean,
    masked_softmax,
    stack_present,
)
from fuse.models.video_encoder import VideoEncoderConfig, build_video_encoder, encode_video, encoded_dims


@dataclass
class AGFConfig(ClassifierLossConfig, VideoEncoderConfig):
    fusion_dim: int = 504  # seed 1 Table 2
    hidden_size: int = 512  # seed 1 Table 1
    dropout: float = 0.185  # seed 1 Table 1
    metadata_embedding_dim: int = 16
    metadata_numeric_dim: int = 16
    gate_temperature: float = 1.0

    default_training: ClassVar[TrainingDefaults] = SEED1_TRAINING

    def __post_init__(self):
        super().__post_init__()
        self.check_video_encoder()


class AdaptiveGatedFusion(nn.Module):
    """Seed 1 Algorithm 2 steps 13-22 on per-modality vectors (B, M, dim) -> H (B, dim), alpha (B, M)."""

    def __init__(self, n_modalities: int, dim: int, metadata_dim: int, gate_temperature: float = 1.0):
        super().__init__()
        self.gate_temperature = gate_temperature
        gate_input = dim + metadata_dim
        # W_i, b_i for all modalities at once: gate logit_i = <W_i, [h_i; m]> + b_i.
        self.gate_weight = nn.Parameter(torch.empty(n_modalities, gate_input))
        self.gate_bias = nn.Parameter(torch.zeros(n_modalities))
        nn.init.uniform_(self.gate_weight, -1 / math.sqrt(gate_input), 1 / math.sqrt(gate_input))
        self.fusion_weight = nn.Parameter(torch.zeros(n_modalities, dim))  # W_f
        self.fusion_bias = nn.Parameter(torch.zeros(dim))  # b_bias

    def forward(
        self, features: torch.Tensor, present: torch.Tensor, metadata: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, M, dim), zero for missing modalities; present (B, M) bool; metadata (B, m)."""
        batch, n_modalities, _ = features.shape
        metadata = metadata.to(features.dtype).unsqueeze(1).expand(batch, n_modalities, -1)
        gate_input = torch.cat([features, metadata], dim=-1)
        gates = torch.sigmoid(torch.einsum("bmd,md->bm", gate_input, self.gate_weight) + self.gate_bias)
        alpha = masked_softmax(gates / self.gate_temperature, present, dim=1)
        gated = torch.einsum("bm,bmd->bd", alpha, features)
        per_feature_mix = masked_softmax(
            self.fusion_weight.to(features.dtype).expand(batch, -1, -1), present.unsqueeze(-1), dim=1
        )
        enhanced = (per_feature_mix * features).sum(dim=1) + self.fusion_bias
        return gated + enhanced, alpha


class AGFModel(FusionModel):
    """Adaptive gated fusion over pooled modality features (seed 1 Algorithm 2); see module docstring."""

    config_class = AGFConfig

    def __init__(self, config: AGFConfig, input_dims, n_classes, task, metadata=None):
        super().__init__(config, input_dims, n_classes, task, metadata)
        self.video_encoder = build_video_encoder(config, self.input_dims)
        dims = encoded_dims(self.input_dims, self.video_encoder)
        self.modality_projections = nn.ModuleDict(
            {m: nn.Linear(dims[m], config.fusion_dim) for m in self.modality_names}
        )
        self.metadata_encoder = MetadataEncoder(metadata, config.metadata_embedding_dim, config.metadata_numeric_dim)
        self.gated_fusion = AdaptiveGatedFusion(
            len(self.modality_names), config.fusion_dim, self.metadata_encoder.output_dim, config.gate_temperature
        )
        self.head = ClassificationHead(config.fusion_dim, config.hidden_size, n_classes, config.dropout)
        self.register_class_weights(config.class_weights)

    def forward(self, batch: Batch) -> ModelOutput:
        inputs = self.modality_inputs(batch)
        present = stack_present(inputs, self.modality_names)
        sequences = encode_video(self.video_encoder, inputs)
        features = torch.stack(
            [
                self.modality_projections[m](masked_mean(sequences[m], inputs[m].mask.bool()))
                for m in self.modality_names
            ],
            dim=1,
        )
        features = features * present.unsqueeze(-1).to(features.dtype)  # a missing modality is exactly 0
        fused, alpha = self.gated_fusion(features, present, self.metadata_encoder(batch))
        logits = self.head(fused)
        return self.output_with_loss(
            logits, batch, gate_weights=alpha, modality_names=self.modality_names, fused=fused
        )
