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

Options (defaults keep the model above):
- `context_window="both"`: bidirectional dialogue context. The following turns,
  `batch.context["text_future"]` (B, F, D; the data layer provides them with the context,
  right-padded, next turn first), up to `max_future_turns`, are appended after the current
  utterance and a bidirectional GRU reads the whole window; the context state is its output at
  the current utterance (forward half: past and current, backward half: future and current),
  2 x `context_hidden_size`. This is what BiDialogueRNN, DialogueGCN and COSMIC do for offline
  MELD / IEMOCAP evaluation: they read the whole dialogue, future turns included. It is not
  usable for online (causal) recognition.
- `context_projection_size > 0`: turn features go through Linear -> ReLU -> dropout to that
  size before the GRU (a smaller recurrent input, regularised); 0 feeds them as they are.
- `layer_weights=True`: the text feature is `layers` encoder layers concatenated (an hf-text
  feature set extracted with `layer_pooling: concat`; `fuse train` reads the count from the
  feature set's attrs when `layers` is 0). A learned softmax-weighted sum of the layers
  (`fuse.models.layer_mix.LayerMix`, SUPERB-style, times a learned scale unless
  `layer_scale=False`) turns every (K x D)-dim token and context-turn vector into a D-dim one
  before anything else reads it; one mix is shared by tokens and turns.

Loss: cross-entropy by default (`loss="focal"` for seed 1's focal loss), BCE for multi-label.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fuse.batch import Batch, ModalityInput, future_key
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
from fuse.models.layer_mix import LayerMix


@dataclass
class ContextConfig(ClassifierLossConfig):
    loss: str = "cross_entropy"
    pooling: str = "attention"  # "attention" or "mean" over the current utterance's tokens
    context_hidden_size: int = 256
    context_layers: int = 1
    max_context_turns: int = 10  # seed 1 Table 1 "Max Dialogue Length", current turn included
    hidden_size: int = 256
    dropout: float = 0.2
    context_window: str = "past"  # "past": preceding turns + current; "both": also following turns
    max_future_turns: int = 10  # following turns read with context_window="both"
    context_projection_size: int = 0  # > 0: Linear -> ReLU -> dropout before the GRU
    layer_weights: bool = False  # learned weighted sum over the text feature's concatenated layers
    layers: int = 0  # how many layers the text feature concatenates (0: from the feature set's attrs)
    layer_scale: bool = True  # with layer_weights: also learn one scale for the mixed vector

    default_training: ClassVar[TrainingDefaults] = BASELINE_TRAINING

    def __post_init__(self):
        super().__post_init__()
        if self.pooling not in ("attention", "mean"):
            raise ValueError(f"pooling must be 'attention' or 'mean', got {self.pooling!r}")
        check_context_options(self.context_window, self.max_context_turns, self.max_future_turns, self.context_projection_size)
        if self.layers < 0:
            raise ValueError(f"layers must be >= 0, got {self.layers}")
        if self.layer_weights and self.layers == 0:
            raise ValueError(
                "layer_weights needs `layers`, the number of layers the text feature concatenates; "
                "`fuse train` reads it from the feature set (extracted with layer_pooling: concat)"
            )


CONTEXT_WINDOWS = ("past", "both")


def check_context_options(window: str, max_past: int, max_future: int, projection: int) -> None:
    if window not in CONTEXT_WINDOWS:
        raise ValueError(f"context_window must be one of {CONTEXT_WINDOWS}, got {window!r}")
    if max_past < 1:
        raise ValueError(f"max_context_turns must be >= 1, got {max_past}")
    if max_future < 0:
        raise ValueError(f"max_future_turns must be >= 0, got {max_future}")
    if projection < 0:
        raise ValueError(f"context_projection_size must be >= 0, got {projection}")


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


def keep_first_turns(mask: torch.Tensor, max_turns: int) -> torch.Tensor:
    """Restrict a (B, F) turn mask to each row's first `max_turns` real turns."""
    rank = mask.long().cumsum(dim=1)
    return mask & (rank <= max_turns)


def context_inputs(batch: Batch, modality: str, dim: int, future: bool) -> tuple[ModalityInput, ModalityInput | None]:
    """`batch.context[modality]` (and its following turns when `future`), checked."""
    past = _context_entry(
        batch, modality, dim, "K",
        f"this model needs batch.context[{modality!r}] (utterance-level features of the preceding "
        "turns and the current one); build the data with dialogue context enabled (--context-turns N)",
    )  # fmt: skip
    if not future:
        return past, None
    key = future_key(modality)
    following = _context_entry(
        batch, key, dim, "F",
        f"context_window='both' needs the following turns, batch.context[{key!r}]; "
        "the data layer provides them with dialogue context (context_future_turns > 0)",
    )  # fmt: skip
    return past, following


def _context_entry(batch: Batch, key: str, dim: int, turns: str, missing: str) -> ModalityInput:
    if batch.context is None or key not in batch.context:
        raise ValueError(missing)
    entry = batch.context[key]
    if entry.values.ndim != 3 or entry.values.shape[-1] != dim:
        raise ValueError(f"context[{key!r}] has shape {tuple(entry.values.shape)}, expected (B, {turns}, {dim})")
    return entry


def encode_dialogue(
    gru: nn.GRU,
    past: ModalityInput,
    following: ModalityInput | None,
    max_past: int,
    max_future: int,
    projection: nn.Module | None = None,
) -> torch.Tensor:
    """Context state of each utterance from its turn window; 0 without a real current/past turn.

    past: (B, K, D) preceding turns and the current one (last real turn), any padding.
    following: (B, F, D) next turns (first real turn = next), any padding; None: past only.
    A unidirectional `gru` returns its state after the current turn (B, H); a bidirectional one
    (with `following`) its output at the current turn, both directions (B, 2H).
    """
    mask = keep_last_turns(past.mask.bool(), max_past)
    values = past.values if projection is None else projection(past.values)
    if following is None:
        values, lengths = compact_to_front(values, mask)
        has_context = lengths > 0
        packed = pack_padded_sequence(values, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, last_hidden = gru(packed)
        state = last_hidden[-1]  # top layer, (B, hidden), in the batch's original order
        return state * has_context.unsqueeze(-1).to(state.dtype)
    future_mask = keep_first_turns(following.mask.bool(), max_future)
    future_values = following.values if projection is None else projection(following.values)
    window = torch.cat([values, future_values.to(values.dtype)], dim=1)
    window_mask = torch.cat([mask, future_mask], dim=1)
    window, lengths = compact_to_front(window, window_mask)  # past real turns, then future ones
    n_past = mask.sum(dim=1)
    packed = pack_padded_sequence(window, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
    outputs, _ = pad_packed_sequence(gru(packed)[0], batch_first=True, total_length=window.shape[1])
    current = (n_past - 1).clamp(min=0)
    state = outputs[torch.arange(outputs.shape[0], device=outputs.device), current]
    return state * (n_past > 0).unsqueeze(-1).to(state.dtype)


def context_projection(input_dim: int, size: int, dropout: float) -> nn.Module | None:
    if size <= 0:
        return None
    return nn.Sequential(nn.Linear(input_dim, size), nn.ReLU(), nn.Dropout(dropout))


class ContextModel(FusionModel):
    """Current-utterance text + GRU over the dialogue context; see module docstring."""

    config_class = ContextConfig
    requires = frozenset({"text"})
    uses_only = frozenset({"text"})

    def __init__(self, config: ContextConfig, input_dims, n_classes, task, metadata=None):
        super().__init__(config, input_dims, n_classes, task, metadata)
        text_dim = self.input_dims["text"]
        self.layer_mix = LayerMix(config.layers, text_dim, config.layer_scale) if config.layer_weights else None
        if self.layer_mix is not None:
            text_dim = self.layer_mix.layer_dim  # everything after the mix reads one layer's width
        self.token_pooling = None
        if config.pooling == "attention":
            self.token_pooling = AttentionPooling(text_dim, config.context_hidden_size)
        self.bidirectional = config.context_window == "both"
        self.context_projection = context_projection(text_dim, config.context_projection_size, config.dropout)
        self.context_encoder = nn.GRU(
            config.context_projection_size or text_dim,
            config.context_hidden_size,
            num_layers=config.context_layers,
            batch_first=True,
            bidirectional=self.bidirectional,
        )
        context_size = config.context_hidden_size * (2 if self.bidirectional else 1)
        self.head = ClassificationHead(text_dim + context_size, config.hidden_size, n_classes, config.dropout)
        self.register_class_weights(config.class_weights)

    def encode_context(self, batch: Batch) -> torch.Tensor:
        """(B, context size) context state at the current turn; 0 without any real turn."""
        past, following = context_inputs(batch, "text", self.input_dims["text"], self.bidirectional)
        past, following = self.mix_layers(past), None if following is None else self.mix_layers(following)
        return encode_dialogue(
            self.context_encoder,
            past,
            following,
            self.config.max_context_turns,
            self.config.max_future_turns,
            self.context_projection,
        )

    def mix_layers(self, entry: ModalityInput) -> ModalityInput:
        """`entry` with its (..., K x D) values mixed to (..., D); unchanged without layer_weights."""
        return entry if self.layer_mix is None else replace(entry, values=self.layer_mix(entry.values))

    def forward(self, batch: Batch) -> ModelOutput:
        text = self.mix_layers(self.modality_inputs(batch)["text"])
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
