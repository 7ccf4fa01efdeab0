"""`context`: a dialogue-context text model.

Seed 1 lists a "Max Dialogue Length" of 10 (Table 1) without saying how the dialogue is used;
this model is our way of using it. It reads
- the current utterance's text tokens, `batch.modalities["text"]` (B, T, D), pooled by masked
  mean or by light attention pooling (score_t = v^T tanh(W x_t), softmax over real tokens);
- the dialogue context, `batch.context["text"]` (B, K, D): utterance-level (mean-pooled) text
  features of up to K-1 preceding turns followed by the current utterance, with a turn mask.
  The last `max_context_turns` real turns (default 10, seed 1 Table 1) are kept, compacted to
  the front (so left- or right-padded context gives the same result) and run through a GRU;
  the GRU state after the last real turn (the current utterance) is the context state.
The classifier is FC -> ReLU -> dropout -> FC on [pooled current utterance; context state].
An utterance with no real context turn gets a zero context state.

Loss: cross-entropy by default (`loss="focal"` for seed 1's focal loss), BCE for multi-label.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from fuse.batch import Batch
from fuse.models.base import (
    BASELINE_TRAINING,
    ClassificationHead,
    ClassifierLossConfig,
    FusionModel,
    ModelOutput,
    TrainingDefaults,
    masked_mean,
    masked_softmax,
)


@dataclass
class ContextConfig(ClassifierLossConfig):
    loss: str = "cross_entropy"
    pooling: str = "attention"  # "attention" or "mean" over the current utterance's tokens
    context_hidden_size: int = 256
    context_layers: int = 1
    max_context_turns: int = 10  # seed 1 Table 1 "Max Dialogue Length", current turn included
    hidden_size: int = 256
    dropout: float = 0.2

    default_training: ClassVar[TrainingDefaults] = BASELINE_TRAINING

    def __post_init__(self):
        super().__post_init__()
        if self.pooling not in ("attention", "mean"):
            raise ValueError(f"pooling must be 'attention' or 'mean', got {self.pooling!r}")
        if self.max_context_turns < 1:
            raise ValueError(f"max_context_turns must be >= 1, got {self.max_context_turns}")


class AttentionPooling(nn.Module):
    """Additive attention pooling: weights = softmax_t(v^T tanh(W x_t)) over real tokens."""

    def __init__(self, input_dim: int, hidden_size: int):
        super().__init__()
        self.projection = nn.Linear(input_dim, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(torch.tanh(self.projection(values))).squeeze(-1)
        weights = masked_softmax(scores, mask, dim=-1)
        return torch.einsum("bt,btd->bd", weights, values), weights


def keep_last_turns(mask: torch.Tensor, max_turns: int) -> torch.Tensor:
    """Restrict a (B, K) turn mask to each row's last `max_turns` real turns."""
    rank = mask.long().cumsum(dim=1)  # 1-based rank of each real turn
    n_real = rank[:, -1:]
    return mask & (rank > n_real - max_turns)


def compact_to_front(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real turns to the front, keeping their order; returns values and lengths."""
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    gathered = values.gather(1, order.unsqueeze(-1).expand_as(values))
    return gathered, mask.sum(dim=1)


class ContextModel(FusionModel):
    """Current-utterance text + GRU over the dialogue context; see module docstring."""

    config_class = ContextConfig
    requires = frozenset({"text"})
    uses_only = frozenset({"text"})

    def __init__(self, config: ContextConfig, input_dims, n_classes, task, metadata=None):
        super().__init__(config, input_dims, n_classes, task, metadata)
        text_dim = self.input_dims["text"]
        self.token_pooling = None
        if config.pooling == "attention":
            self.token_pooling = AttentionPooling(text_dim, config.context_hidden_size)
        self.context_encoder = nn.GRU(
            text_dim, config.context_hidden_size, num_layers=config.context_layers, batch_first=True
        )
        self.head = ClassificationHead(
            text_dim + config.context_hidden_size, config.hidden_size, n_classes, config.dropout
        )
        self.register_class_weights(config.class_weights)

    def encode_context(self, batch: Batch) -> torch.Tensor:
        """(B, context_hidden_size) GRU state after the last real turn; 0 without any real turn."""
        if batch.context is None or "text" not in batch.context:
            raise ValueError(
                "the context model needs batch.context['text'] (utterance-level features of the preceding "
                "turns and the current one); build the data with dialogue context enabled"
            )
        context = batch.context["text"]
        if context.values.ndim != 3 or context.values.shape[-1] != self.input_dims["text"]:
            raise ValueError(
                f"context['text'] has shape {tuple(context.values.shape)}, expected (B, K, {self.input_dims['text']})"
            )
        mask = keep_last_turns(context.mask.bool(), self.config.max_context_turns)
        values, lengths = compact_to_front(context.values, mask)
        has_context = lengths > 0
        packed = pack_padded_sequence(
            values, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        _, last_hidden = self.context_encoder(packed)
        state = last_hidden[-1]  # top layer, (B, hidden), in the batch's original order
        return state * has_context.unsqueeze(-1).to(state.dtype)

    def forward(self, batch: Batch) -> ModelOutput:
        text = self.modality_inputs(batch)["text"]
        text_mask = text.mask.bool()
        attentions = {}
        if self.token_pooling is not None:
            current, token_weights = self.token_pooling(text.values, text_mask)
            attentions["current_token_attention"] = token_weights
        else:
            current = masked_mean(text.values, text_mask)
        context_state = self.encode_context(batch)
        fused = torch.cat([current, context_state.to(current.dtype)], dim=-1)
        return self.output_with_loss(
            self.head(fused), batch, attentions=attentions, modality_names=self.modality_names, fused=fused
        )
