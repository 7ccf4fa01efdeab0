"""The batch every fusion model consumes.

The data layer (`fuse.data`) turns cache rows into a `Batch`; models read only this, so
they never know whether the features came from BERT tokens, COVAREP frames or a ViT.
Padding is always zero and always described by a mask, so a model can be checked for
padding invariance.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

MODALITIES = ("text", "audio", "video")


@dataclass
class ModalityInput:
    """One modality for a batch of B utterances, padded to the longest (T)."""

    values: torch.Tensor  # (B, T, D) float, zero at padding
    mask: torch.Tensor  # (B, T) bool, True at real frames/tokens
    present: torch.Tensor  # (B,) bool; False: modality missing for that utterance (mask row all False)

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def to(self, device, non_blocking: bool = False) -> "ModalityInput":
        return ModalityInput(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))


@dataclass
class Batch:
    """A padded batch. Absent parts are None."""

    modalities: dict[str, ModalityInput]
    index: torch.Tensor  # (B,) row indices in the cache's utterance table
    label: torch.Tensor | None = None  # (B,) long class index (single-label tasks)
    labels_multi: torch.Tensor | None = None  # (B, C) float 0/1 (multi-label tasks)
    metadata_categorical: torch.Tensor | None = None  # (B, n_cat) long, 0 = unknown/unseen
    metadata_numeric: torch.Tensor | None = None  # (B, n_num) float, standardised
    # Dialogue context: per modality, (B, K, D) utterance-level (mean-pooled) features of up to
    # K-1 preceding turns followed by the current utterance last; mask marks real turns.
    context: dict[str, ModalityInput] | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.index.shape[0])

    def to(self, device, non_blocking: bool = False) -> "Batch":
        def move(x):
            if x is None:
                return None
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            return x.to(device, non_blocking=non_blocking)

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})
