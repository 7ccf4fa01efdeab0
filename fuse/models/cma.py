"""`cma`: cross-modal attention between text and audio (seed 1, Algorithm 1).

Seed step -> code:
- Steps 2-5 (BERT / Wav2Vec2 features) happen in stage 1; this model reads the cached token and
  frame sequences (`batch.modalities["text"]`, `["audio"]`).
- Steps 7-8: per-modality projections W_Q, W_K, W_V (input dim -> heads * d_k), `QueryKeyValueProjection`.
  The seed writes them as plain matrices, so they have no bias.
- Steps 10-18 (text-to-audio) and 20-28 (audio-to-text): multi-head scaled dot-product attention,
  `CrossModalAttention`, written as batched einsums rather than the seed's per-token loops. Padded
  keys get weight 0; a query whose keys are all padding (missing modality) gets all-zero weights,
  so its attended feature is 0, not NaN.
- Step 30: mean pooling, masked (padding and missing modalities excluded).
- Step 31: H_fused = [T_att; A_att; T_raw; A_raw]. T_att is the attended text seen from the audio
  frames (audio-to-text, pooled over audio frames); A_att is the attended audio seen from the text
  tokens (text-to-audio, pooled over text tokens); T_raw / A_raw are the pooled input features.
- Steps 33-35: FC -> ReLU -> dropout -> FC.
- Loss: focal (seed 1 Table 3, alpha 1.148, gamma 1.582) for single-label; BCE for multi-label.

Choices where the seed is vague: the heads' outputs are concatenated without an output projection
W_O (the seed has none); d_k defaults to 64 so that heads * d_k = 768 = the seed's feature size.
Only text and audio are read; a video stream in the data is ignored (use `cmaf` for three).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fuse.batch import Batch
from fuse.models.base import (
    SEED1_TRAINING,
    ClassificationHead,
    ClassifierLossConfig,
    FusionModel,
    ModelOutput,
    TrainingDefaults,
    masked_mean,
    masked_softmax,
)


@dataclass
class CMAConfig(ClassifierLossConfig):
    num_heads: int = 12
    head_dim: int = 64  # d_k; heads * d_k = 768
    hidden_size: int = 512  # seed 1 Table 1, "Hidden Layer Size"
    dropout: float = 0.185  # seed 1 Table 1
    attention_dropout: float = 0.0
    output_attentions: bool = True  # False: no maps, memory-efficient scaled_dot_product_attention

    default_training: ClassVar[TrainingDefaults] = SEED1_TRAINING


class QueryKeyValueProjection(nn.Module):
    """W_Q, W_K, W_V of one modality, split into heads: (B, T, D) -> 3 x (B, heads, T, d_k)."""

    def __init__(self, input_dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.query = nn.Linear(input_dim, inner, bias=False)
        self.key = nn.Linear(input_dim, inner, bias=False)
        self.value = nn.Linear(input_dim, inner, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            self._split_heads(self.query(values)),
            self._split_heads(self.key(values)),
            self._split_heads(self.value(values)),
        )


class CrossModalAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_k)) V with a key padding mask (seed 1 Algorithm 1 steps 14-17).

    query (B, heads, T_query, d_k), key / value (B, heads, T_key, d_k), key_mask (B, T_key),
    query_mask (B, T_query). Returns the attended features (B, T_query, heads * d_k) and the
    attention weights (B, heads, T_query, T_key), or None for them with `need_weights=False`.
    Padded queries and queries whose keys are all padding (missing modality) get attended
    features 0 (and all-zero weight rows).

    Two computations, equal up to float rounding (tested): with `need_weights` the weights are
    materialised (einsum + masked softmax); without, `torch.nn.functional.scaled_dot_product_attention`
    is used, which never materialises the (T_query, T_key) matrix on CUDA (flash /
    memory-efficient kernels) or on CPU (its flash kernel processes query blocks), so memory
    grows linearly with the sequence lengths; see bench/attention_memory.py.
    """

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_mask: torch.Tensor,
        query_mask: torch.Tensor,
        need_weights: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        head_dim = query.shape[-1]
        if not need_weights:
            return self._fused(query, key, value, key_mask.bool(), query_mask.bool()), None
        scores = torch.einsum("bhqd,bhkd->bhqk", query, key) / math.sqrt(head_dim)
        allowed = key_mask[:, None, None, :] & query_mask[:, None, :, None]
        weights = masked_softmax(scores, allowed, dim=-1)
        attended = torch.einsum("bhqk,bhkd->bhqd", self.dropout(weights), value)
        batch, heads, length, _ = attended.shape
        return attended.transpose(1, 2).reshape(batch, length, heads * head_dim), weights

    def _fused(self, query, key, value, key_mask, query_mask) -> torch.Tensor:
        """scaled_dot_product_attention with a (B, 1, 1, T_key) key mask. A row with no real key
        would be a softmax over nothing (NaN in SDPA): it attends to every key and is zeroed after."""
        has_key = key_mask.any(dim=1)  # (B,)
        safe_key_mask = key_mask | ~has_key.unsqueeze(1)
        attended = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=safe_key_mask[:, None, None, :],
            dropout_p=self.dropout.p if self.training else 0.0,
        )
        keep = (query_mask & has_key.unsqueeze(1)).to(attended.dtype)  # (B, T_query)
        attended = attended * keep[:, None, :, None]
        batch, heads, length, head_dim = attended.shape
        return attended.transpose(1, 2).reshape(batch, length, heads * head_dim)


class CMAModel(FusionModel):
    """Text <-> audio cross-modal attention classifier (seed 1 Algorithm 1); see module docstring."""

    config_class = CMAConfig
    requires = frozenset({"text", "audio"})
    min_modalities = 2
    uses_only = frozenset({"text", "audio"})

    def __init__(self, config: CMAConfig, input_dims, n_classes, task, metadata=None):
        super().__init__(config, input_dims, n_classes, task, metadata)
        self.text_projection = QueryKeyValueProjection(self.input_dims["text"], config.num_heads, config.head_dim)
        self.audio_projection = QueryKeyValueProjection(self.input_dims["audio"], config.num_heads, config.head_dim)
        self.cross_attention = CrossModalAttention(config.attention_dropout)
        attended_dim = config.num_heads * config.head_dim
        fused_dim = 2 * attended_dim + self.input_dims["text"] + self.input_dims["audio"]
        self.head = ClassificationHead(fused_dim, config.hidden_size, n_classes, config.dropout)
        self.register_class_weights(config.class_weights)

    def forward(self, batch: Batch) -> ModelOutput:
        inputs = self.modality_inputs(batch)
        text, audio = inputs["text"], inputs["audio"]
        text_mask, audio_mask = text.mask.bool(), audio.mask.bool()
        text_query, text_key, text_value = self.text_projection(text.values)
        audio_query, audio_key, audio_value = self.audio_projection(audio.values)

        # output_attentions materialises the (T_query, T_key) maps; without it the memory-efficient
        # fused kernel runs (see fuse.models.cma.CrossModalAttention).
        need_weights = self.config.output_attentions
        # Text tokens query audio frames: the audio each token attends to (A_att, one per token).
        attended_audio, text_to_audio = self.cross_attention(
            text_query, audio_key, audio_value, key_mask=audio_mask, query_mask=text_mask, need_weights=need_weights
        )
        # Audio frames query text tokens: the text each frame attends to (T_att, one per frame).
        attended_text, audio_to_text = self.cross_attention(
            audio_query, text_key, text_value, key_mask=text_mask, query_mask=audio_mask, need_weights=need_weights
        )
        fused = torch.cat(
            [
                masked_mean(attended_text, audio_mask),
                masked_mean(attended_audio, text_mask),
                masked_mean(text.values, text_mask),
                masked_mean(audio.values, audio_mask),
            ],
            dim=-1,
        )
        logits = self.head(fused)
        attentions = {"text_to_audio": text_to_audio, "audio_to_text": audio_to_text} if need_weights else {}
        return self.output_with_loss(
            logits, batch, attentions=attentions, modality_names=self.modality_names, fused=fused
        )
