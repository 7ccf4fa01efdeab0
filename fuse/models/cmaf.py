"""`cmaf`: cross-modal attention feeding adaptive gated fusion (the seed 1 system flowchart).

The flowchart chains Algorithm 1 (cross-modal attention) into Algorithm 2 (adaptive gated
fusion) and a classification head on a 504-d fused vector. Per modality i among the present
ones (text / audio / video, any subset):

1. Algorithm 1 generalised to any number of modalities: W_Q^i, W_K^i, W_V^i (input dim ->
   504 = 12 heads x 42) and, for every ordered pair i -> j of distinct modalities, multi-head
   attention with i's tokens as queries and j's as keys/values (`fuse.models.cma.CrossModalAttention`),
   masked-mean pooled over i's tokens. With two modalities this is exactly text <-> audio of
   Algorithm 1; with one, no attention is computed.
2. "Attended + raw" representation of i (Algorithm 1 step 31 per modality):
   r_i = [pooled raw features of i; attended features from every other modality j], where the
   attended part from a missing j is 0 (its keys are all masked). A per-modality Linear maps r_i
   to h_i in the common 504-d space; a missing i gives h_i = 0.
3. Algorithm 2 on h_i and the metadata m (`fuse.models.agf.AdaptiveGatedFusion`): scalar gates,
   softmax over present modalities (alpha, reported as `gate_weights`), h_fusion + enhanced fusion.
4. Head: 504 -> 512 -> ReLU -> dropout 0.185 -> n_classes (seed 1 Tables 1-2).

Option (not in the seed; default off): `dialogue_context="past"` or `"both"` adds the `context`
model's dialogue encoder (`fuse.models.context.encode_dialogue`) over the utterance-level text
features of the surrounding turns (`batch.context["text"]`, and `"text_future"` for "both";
train with `--context-turns N`): a GRU (bidirectional for "both") over up to
`dialogue_max_past_turns` preceding turns + the current one (+ `dialogue_max_future_turns`
following turns), its state at the current turn concatenated to the fused vector before the
head. On text-only MELD, where cmaf reduces to projection + pooling + head, this is how it sees
the dialogue (bidirectional context as in BiDialogueRNN / DialogueGCN / COSMIC, offline only).

Option (seed 1 Algorithm 2 steps 4 and 10, default off): `video_encoder_blocks > 0` runs the
trainable temporal video encoder (`fuse.models.video_encoder`; seed preset 6 blocks, 504, 12
heads, dropout 0.185) over the video frame embeddings; its output replaces them everywhere
(attention and raw pooling).

Option (seed 1 flowchart, metadata arrow into the cross-modal attention layer, default off):
`metadata_in_attention: true` adds a per-modality linear function of the metadata encoding m to
that modality's queries, Q_i <- Q_i + W^i_m m (one shift per utterance, per head), so which
frames of j a token of i attends to depends on the speaker. Only the query side: a shift of all
keys of an utterance by the same vector adds the same amount to every score of a query and
cancels in the softmax. W^i_m starts at zero, so the option starts from the model without it.
Without metadata (MOSEI has none) m is empty and the option changes nothing.

Loss: focal (alpha 1.148, gamma 1.582) for single-label, BCE for multi-label. Training defaults:
seed 1 Tables 1 and 3 (`CMAFConfig.default_training`). The seed's 7 classes are a dataset property,
so `n_classes` comes from the data. Attention maps are reported as "<query>_to_<key>",
e.g. "text_to_audio" (B, heads, T_text, T_audio).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fuse.batch import Batch
from fuse.models.agf import AdaptiveGatedFusion
from fuse.models.base import (
    SEED1_TRAINING,
    ClassificationHead,
    ClassifierLossConfig,
    FusionModel,
    MetadataEncoder,
    ModelOutput,
    TrainingDefaults,
    masked_mean,
    stack_present,
)
from fuse.models.cma import CrossModalAttention, QueryKeyValueProjection
from fuse.models.context import check_context_options, context_inputs, context_projection, encode_dialogue
from fuse.models.video_encoder import VideoEncoderConfig, build_video_encoder, encode_video, encoded_dims


@dataclass
class CMAFConfig(ClassifierLossConfig, VideoEncoderConfig):
    fusion_dim: int = 504  # seed 1 Table 1 "Embedding Dimension", Table 2 fusion output
    num_heads: int = 12  # seed 1 Table 1
    dropout: float = 0.185  # seed 1 Table 1
    hidden_size: int = 512  # seed 1 Table 1
    attention_dropout: float = 0.0
    metadata_embedding_dim: int = 16
    metadata_numeric_dim: int = 16
    gate_temperature: float = 1.0
    output_attentions: bool = True  # False: no maps, memory-efficient scaled_dot_product_attention
    metadata_in_attention: bool = False  # seed 1 flowchart: metadata also into the attention (see docstring)
    dialogue_context: str = "none"  # "none" (seed), "past" or "both": text dialogue context, see docstring
    dialogue_context_hidden_size: int = 128
    dialogue_max_past_turns: int = 10  # current turn included
    dialogue_max_future_turns: int = 10
    dialogue_context_projection: int = 0  # > 0: Linear -> ReLU -> dropout before the GRU

    default_training: ClassVar[TrainingDefaults] = SEED1_TRAINING

    def __post_init__(self):
        super().__post_init__()
        self.check_video_encoder()
        if self.fusion_dim % self.num_heads:
            raise ValueError(f"fusion_dim ({self.fusion_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.dialogue_context not in ("none", "past", "both"):
            raise ValueError(f"dialogue_context must be 'none', 'past' or 'both', got {self.dialogue_context!r}")
        check_context_options(
            "both", self.dialogue_max_past_turns, self.dialogue_max_future_turns, self.dialogue_context_projection
        )


class CMAFModel(FusionModel):
    """Cross-modal attention + adaptive gated fusion (seed 1 flowchart); see module docstring."""

    config_class = CMAFConfig

    def __init__(self, config: CMAFConfig, input_dims, n_classes, task, metadata=None):
        super().__init__(config, input_dims, n_classes, task, metadata)
        names = self.modality_names
        head_dim = config.fusion_dim // config.num_heads
        self.video_encoder = build_video_encoder(config, self.input_dims)
        dims = encoded_dims(self.input_dims, self.video_encoder)
        if len(names) > 1:
            self.projections = nn.ModuleDict(
                {m: QueryKeyValueProjection(dims[m], config.num_heads, head_dim) for m in names}
            )
            self.cross_attention = CrossModalAttention(config.attention_dropout)
        n_partners = len(names) - 1
        self.modality_projections = nn.ModuleDict(
            {m: nn.Linear(dims[m] + n_partners * config.fusion_dim, config.fusion_dim) for m in names}
        )
        self.metadata_encoder = MetadataEncoder(metadata, config.metadata_embedding_dim, config.metadata_numeric_dim)
        self.gated_fusion = AdaptiveGatedFusion(
            len(names), config.fusion_dim, self.metadata_encoder.output_dim, config.gate_temperature
        )
        head_input = config.fusion_dim
        if config.dialogue_context != "none":
            if "text" not in self.input_dims:
                raise ValueError("dialogue_context needs the text modality (the dialogue is encoded from text)")
            bidirectional = config.dialogue_context == "both"
            self.dialogue_projection = context_projection(
                self.input_dims["text"], config.dialogue_context_projection, config.dropout
            )
            self.dialogue_encoder = nn.GRU(
                config.dialogue_context_projection or self.input_dims["text"],
                config.dialogue_context_hidden_size,
                batch_first=True,
                bidirectional=bidirectional,
            )
            head_input += config.dialogue_context_hidden_size * (2 if bidirectional else 1)
        self.head = ClassificationHead(head_input, config.hidden_size, n_classes, config.dropout)
        self.register_class_weights(config.class_weights)
        # Built last so that, with the option off, every other parameter gets the same initial draw.
        if config.metadata_in_attention and len(names) > 1 and self.metadata_encoder.output_dim:
            self.metadata_queries = nn.ModuleDict(
                {m: nn.Linear(self.metadata_encoder.output_dim, config.fusion_dim) for m in names}
            )
            for linear in self.metadata_queries.values():
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)

    def forward(self, batch: Batch) -> ModelOutput:
        inputs = self.modality_inputs(batch)
        names = self.modality_names
        masks = {m: inputs[m].mask.bool() for m in names}
        present = stack_present(inputs, names)
        sequences = encode_video(self.video_encoder, inputs)
        metadata = self.metadata_encoder(batch)
        projected = {m: self.projections[m](sequences[m]) for m in names} if len(names) > 1 else {}
        if hasattr(self, "metadata_queries"):
            projected = {m: self._condition_queries(m, qkv, metadata) for m, qkv in projected.items()}
        # output_attentions materialises the (T_query, T_key) maps; without it the memory-efficient
        # fused kernel runs (see fuse.models.cma.CrossModalAttention).
        need_weights = self.config.output_attentions

        attentions = {}
        features = []
        for query_modality in names:
            parts = [masked_mean(sequences[query_modality], masks[query_modality])]
            for key_modality in names:
                if key_modality == query_modality:
                    continue
                query, _, _ = projected[query_modality]
                _, key, value = projected[key_modality]
                attended, weights = self.cross_attention(
                    query,
                    key,
                    value,
                    key_mask=masks[key_modality],
                    query_mask=masks[query_modality],
                    need_weights=need_weights,
                )
                parts.append(masked_mean(attended, masks[query_modality]))
                if need_weights:
                    attentions[f"{query_modality}_to_{key_modality}"] = weights
            features.append(self.modality_projections[query_modality](torch.cat(parts, dim=-1)))
        features = torch.stack(features, dim=1) * present.unsqueeze(-1).to(features[0].dtype)

        fused, alpha = self.gated_fusion(features, present, metadata)
        if self.config.dialogue_context != "none":
            both = self.config.dialogue_context == "both"
            past, following = context_inputs(batch, "text", self.input_dims["text"], both)
            state = encode_dialogue(
                self.dialogue_encoder,
                past,
                following,
                self.config.dialogue_max_past_turns,
                self.config.dialogue_max_future_turns,
                self.dialogue_projection,
            )
            fused = torch.cat([fused, state.to(fused.dtype)], dim=-1)
        logits = self.head(fused)
        return self.output_with_loss(
            logits,
            batch,
            attentions=attentions,
            gate_weights=alpha,
            modality_names=names,
            fused=fused,
        )

    def _condition_queries(self, modality: str, qkv, metadata: torch.Tensor):
        """Q_i + W^i_m m: (B, heads, T, d_k) queries shifted per utterance by the metadata."""
        query, key, value = qkv
        batch, heads, _, head_dim = query.shape
        shift = self.metadata_queries[modality](metadata.to(query.dtype)).view(batch, heads, 1, head_dim)
        return query + shift, key, value
