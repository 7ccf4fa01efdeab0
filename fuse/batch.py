"""The batch every fusion model consumes.

The data layer (`fuse.data`) turns cache rows into a `Batch`; models read only this, so
they never know whether the features came from BERT tokens, COVAREP frames or a ViT.
`MetadataSpec` describes the metadata columns of a batch. This module is the contract both
sides import (data never imports models, models never import data).
Padding is always zero and always described by a mask, so a model can be checked for
padding invariance.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import torch

MODALITIES = ("text", "audio", "video")
FUTURE_SUFFIX = "_future"  # Batch.context key suffix of a modality's following turns


def future_key(modality: str) -> str:
    """The `Batch.context` key of a modality's following turns (e.g. "text_future")."""
    return f"{modality}{FUTURE_SUFFIX}"


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

    def pin_memory(self) -> "ModalityInput":
        return ModalityInput(*(getattr(self, f.name).pin_memory() for f in fields(self)))

    def hidden(self, rows: torch.Tensor, turns: slice = slice(None)) -> "ModalityInput":
        """A copy in which `rows` ((B,) bool) are missing, as real missing data is: values 0,
        mask False (over `turns`, the whole row by default) and `present` False where no real
        frame/turn is left. Used for test-time modality drops and training modality dropout."""
        values, mask = self.values.clone(), self.mask.clone()
        hide = torch.zeros_like(mask)
        hide[:, turns] = True
        rows = rows.to(mask.device, torch.bool)
        hide &= rows.unsqueeze(1)
        mask &= ~hide
        values[hide] = 0
        return ModalityInput(values, mask, torch.where(rows, self.present & mask.any(dim=1), self.present))


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
    # Under future_key(modality): (B, F, D) the following turns, the next one first.
    context: dict[str, ModalityInput] | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.index.shape[0])

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return self._map(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """A copy in page-locked memory, so `.to(cuda, non_blocking=True)` overlaps compute."""
        return self._map(lambda x: x.pin_memory())

    def _map(self, function) -> "Batch":
        def apply(x):
            if x is None:
                return None
            if isinstance(x, dict):
                return {k: apply(v) for k, v in x.items()}
            return function(x)

        return Batch(**{f.name: apply(getattr(self, f.name)) for f in fields(self)})


@dataclass(frozen=True)
class MetadataSpec:
    """The per-utterance metadata a model may condition on (`Batch.metadata_*`).

    categorical: (column name, number of known values) pairs, in the column order of
        `Batch.metadata_categorical`. Index 0 means unknown/unseen; known values are
        1..cardinality, so an embedding table has cardinality + 1 rows.
    n_numeric: number of columns of `Batch.metadata_numeric` (already standardised).
    """

    categorical: tuple[tuple[str, int], ...] = ()
    n_numeric: int = 0

    def __post_init__(self):
        items = self.categorical.items() if isinstance(self.categorical, Mapping) else self.categorical
        normalised = tuple((str(name), int(cardinality)) for name, cardinality in items)
        for name, cardinality in normalised:
            if cardinality < 1:
                raise ValueError(f"MetadataSpec: categorical column {name!r} has cardinality {cardinality} (< 1)")
        if self.n_numeric < 0:
            raise ValueError(f"MetadataSpec: n_numeric must be >= 0, got {self.n_numeric}")
        object.__setattr__(self, "categorical", normalised)

    @property
    def is_empty(self) -> bool:
        return not self.categorical and self.n_numeric == 0

    def to_dict(self) -> dict:
        return {"categorical": [list(c) for c in self.categorical], "n_numeric": self.n_numeric}

    @classmethod
    def from_dict(cls, d: dict | None) -> "MetadataSpec | None":
        return None if d is None else cls(tuple(tuple(c) for c in d["categorical"]), int(d["n_numeric"]))
