"""Seed 1's trainable temporal video encoder ("MIMAMO Net", Algorithm 2 steps 4 and 10).

Stage 1 caches one embedding per video frame (a frozen image encoder). Seed 1 names a
Transformer video encoder on top (Table 1: 6 blocks, embedding 504, 12 heads, dropout 0.185)
whose hyperparameters are tuned with the fusion, so it is part of the fusion model here and
trains with it: frame embeddings (B, T, D) -> Linear(D -> dim) + learned frame positions ->
pre-norm transformer encoder layers with a frame padding mask -> final LayerNorm -> (B, T, dim),
zero at padded frames. A video with no real frame (missing modality) stays all zeros.

Choices the seed leaves open: the feed-forward size is Table 1's "Hidden Layer Size" (512);
pre-norm layers (stable for 6 blocks at the seed's small batch size of 4); GELU; learned
positions for up to `video_encoder_max_frames` frames (more is an error naming the option).

Used by `agf` and `cmaf` through `VideoEncoderConfig` (fields `video_encoder_*`);
`video_encoder_blocks = 0` (default) keeps the models as they were, reading the cached frame
embeddings directly. The encoder applies to the "video" modality when the data has one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class VideoEncoderConfig:
    """Config fields of the seed-1 video encoder (mixed into AGFConfig and CMAFConfig)."""

    video_encoder_blocks: int = 0  # 0: no encoder (cached frame embeddings as they are); seed 1 Table 1: 6
    video_encoder_dim: int = 504  # seed 1 Table 1 "Embedding Dimension"
    video_encoder_heads: int = 12  # seed 1 Table 1
    video_encoder_dropout: float = 0.185  # seed 1 Table 1
    video_encoder_feedforward: int = 512  # seed 1 Table 1 "Hidden Layer Size"
    video_encoder_max_frames: int = 1500  # learned positions; the data layer's default video max_len

    def check_video_encoder(self) -> None:
        if self.video_encoder_blocks < 0:
            raise ValueError(f"video_encoder_blocks must be >= 0, got {self.video_encoder_blocks}")
        if self.video_encoder_blocks and self.video_encoder_dim % self.video_encoder_heads:
            raise ValueError(
                f"video_encoder_dim ({self.video_encoder_dim}) must be divisible by video_encoder_heads "
                f"({self.video_encoder_heads})"
            )
        if self.video_encoder_max_frames < 1:
            raise ValueError(f"video_encoder_max_frames must be >= 1, got {self.video_encoder_max_frames}")


class TemporalVideoEncoder(nn.Module):
    """Transformer over frame embeddings: forward(values (B, T, D), mask (B, T)) -> (B, T, dim),
    zero where mask is False. See the module docstring."""

    def __init__(self, input_dim: int, config: VideoEncoderConfig):
        super().__init__()
        dim = config.video_encoder_dim
        self.max_frames = config.video_encoder_max_frames
        self.output_dim = dim
        self.input_projection = nn.Linear(input_dim, dim)
        self.position_embeddings = nn.Embedding(config.video_encoder_max_frames, dim)
        nn.init.normal_(self.position_embeddings.weight, std=0.02)
        self.dropout = nn.Dropout(config.video_encoder_dropout)
        layer = nn.TransformerEncoderLayer(
            dim,
            config.video_encoder_heads,
            config.video_encoder_feedforward,
            config.video_encoder_dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(
            layer, config.video_encoder_blocks, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = values.shape[1]
        if length > self.max_frames:
            raise ValueError(
                f"video encoder: {length} frames exceed video_encoder_max_frames={self.max_frames}; raise it "
                f"or cap the video frames (max_len video=...)"
            )
        mask = mask.bool()
        positions = torch.arange(length, device=values.device)
        hidden = self.dropout(self.input_projection(values) + self.position_embeddings(positions))
        # A video without real frames would be a softmax over nothing (NaN): let it attend to its
        # padding, then zero it like every padded frame.
        has_frame = mask.any(dim=1, keepdim=True)
        padding = ~(mask | ~has_frame)
        hidden = self.layers(hidden, src_key_padding_mask=padding)
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)


def build_video_encoder(config: VideoEncoderConfig, input_dims: dict[str, int]) -> TemporalVideoEncoder | None:
    """The model's video encoder, or None (no blocks configured, or no video in the data)."""
    if not config.video_encoder_blocks or "video" not in input_dims:
        return None
    return TemporalVideoEncoder(input_dims["video"], config)


def encoded_dims(input_dims: dict[str, int], encoder: TemporalVideoEncoder | None) -> dict[str, int]:
    """Feature size of every modality after the (optional) video encoder."""
    return {**input_dims, "video": encoder.output_dim} if encoder is not None else dict(input_dims)


def encode_video(encoder: TemporalVideoEncoder | None, inputs) -> dict[str, torch.Tensor]:
    """{modality: (B, T, D) sequence}: the inputs' values, video through `encoder` when there is one."""
    sequences = {m: item.values for m, item in inputs.items()}
    if encoder is not None and "video" in inputs:
        sequences["video"] = encoder(inputs["video"].values, inputs["video"].mask)
    return sequences
