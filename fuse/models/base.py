"""What every fusion model shares: its output type, the metadata description, training defaults,
masked tensor operations, the metadata encoder, the classification head and loss selection.

Conventions every model follows (and tests check):
- Inputs come only from `fuse.batch.Batch`. Padding is described by masks; a model never reads a
  padded position, so appending padding changes nothing (in eval mode).
- A missing modality (`present` False, mask row all False) contributes exactly zero: masked means
  over no frames are 0, and a softmax over no allowed positions gives all-zero weights, not NaN.
- `forward(batch)` returns a `ModelOutput`; `loss` is computed whenever the batch carries the
  labels of the model's task (`label` for single-label, `labels_multi` for multi-label).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fuse.batch import MODALITIES, Batch, MetadataSpec, ModalityInput
from fuse.losses import focal_loss, weighted_bce

TASKS = ("single_label", "multi_label")


# --------------------------------------------------------------------------------------------
# Output, metadata description, training defaults
# --------------------------------------------------------------------------------------------


@dataclass
class ModelOutput:
    """What a fusion model returns (in the spirit of transformers' ModelOutput).

    logits: (B, C). Single-label: class scores for softmax. Multi-label: per-class logits for sigmoid.
    loss: scalar total loss, or None when the batch has no labels for the model's task.
    loss_parts: named, detached loss terms for logging (weighted as they enter `loss`).
    attentions: named attention maps, e.g. "text_to_audio": (B, heads, T_text, T_audio).
    gate_weights: (B, n_modalities) modality weights (rows sum to 1 over present modalities,
        exactly 0 for missing ones), for models that gate; else None.
    modality_names: names of the columns of `gate_weights` (and of the model's modalities).
    fused: (B, H) the representation the classifier reads, when the model has a single one.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    loss_parts: dict[str, torch.Tensor] = field(default_factory=dict)
    attentions: dict[str, torch.Tensor] = field(default_factory=dict)
    gate_weights: torch.Tensor | None = None
    modality_names: tuple[str, ...] = ()
    fused: torch.Tensor | None = None


@dataclass(frozen=True)
class TrainingDefaults:
    """Optimisation defaults a model's seed prescribes; the training loop may override any.

    Every model config class carries one as `default_training` (a class attribute, not a
    config field). `lr_decay_per_epoch` multiplies the learning rate after every epoch on top
    of the warmup schedule (None: no decay). `threshold` is the multi-label decision
    threshold on sigmoid scores (None: single-label models, argmax).

    Optimiser and schedule (arguments of `fuse.training.optim.build_optimizer` / `build_scheduler`; the
    optimiser is always AdamW): `scheduler` is "linear" (transformers' linear warmup/decay),
    "bert_adam" (warmup then inverse square root, seed 2 3.5.1), "constant" or "plateau" (warmup in
    one epoch, then halved on a dev stall; independent of the epochs cap);
    `exclude_norm_and_bias` turns off weight decay for biases and normalisation parameters;
    parameters whose names start with a prefix in `coef_lr_group` train at lr * `coef_lr`.

    Data: `max_len` maps a modality to the number of frames the data layer keeps
    (None = keep every frame); a modality not in the mapping gets the data layer's default
    (`fuse.data.DEFAULT_MAX_LEN`). Seed 1 training (Table 3) also fixes the loader:
    `drop_last` (drop the last incomplete training batch), `num_workers`, `pin_memory`.
    """

    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    patience: int
    warmup_ratio: float
    grad_clip: float
    amp: bool
    scheduler: str = "linear"
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    exclude_norm_and_bias: bool = False
    coef_lr: float = 1.0
    coef_lr_group: tuple[str, ...] = ()
    lr_decay_per_epoch: float | None = None
    threshold: float | None = None
    max_len: Mapping[str, int | None] = field(default_factory=dict)
    drop_last: bool = False
    num_workers: int = 0
    pin_memory: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Seed 1, Tables 1 and 3 (cma, agf, cmaf): AdamW, linear schedule with warmup, loader with
# drop last, 2 workers, pinned memory. Seed 1 does not say whether biases and LayerNorm are
# decayed; plain AdamW (torch's and Table 3's) decays every parameter, so we keep that.
SEED1_TRAINING = TrainingDefaults(
    lr=5.61e-5,
    weight_decay=3.75e-4,
    batch_size=4,
    epochs=15,
    patience=5,
    warmup_ratio=0.222,
    grad_clip=1.0,
    amp=True,
    scheduler="linear",
    drop_last=True,
    num_workers=2,
    pin_memory=True,
)

# Light baselines (late, context): not specified by either seed. Small heads on frozen
# features train well with a larger learning rate and batch than seed 1's fine-tuning setup.
# Schedule "plateau" (warmup over 0.1 of the first epoch, lr halved when dev stalls): early
# stopping decides their length, so their schedule must not depend on the epochs cap (MELD,
# benchmarks/README.md: 0.575 +- 0.009 with a cap of 50, within noise of the linear schedule
# tuned to 10 epochs, 0.579 +- 0.013; linear spread over a cap of 50 lost up to 0.05).
BASELINE_TRAINING = TrainingDefaults(
    lr=1e-3,
    weight_decay=1e-4,
    batch_size=32,
    epochs=30,
    patience=5,
    warmup_ratio=0.1,
    grad_clip=1.0,
    amp=True,
    scheduler="plateau",
)


@dataclass
class ClassifierLossConfig:
    """Loss fields shared by the models with a single classification loss (all but carat).

    loss: "focal" or "cross_entropy" (single-label only; multi-label always uses BCE with logits).
    focal_alpha, focal_gamma: seed 1, Table 1.
    class_weights: optional per-class weights, length n_classes. Single-label: weights of the
        cross-entropy / focal terms. Multi-label: positive weights (`pos_weight`) of the BCE.
    """

    loss: str = "focal"
    focal_alpha: float = 1.148
    focal_gamma: float = 1.582
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.loss not in ("focal", "cross_entropy"):
            raise ValueError(f"loss must be 'focal' or 'cross_entropy', got {self.loss!r}")
        if self.class_weights is not None:
            self.class_weights = tuple(float(w) for w in self.class_weights)


# --------------------------------------------------------------------------------------------
# Masked tensor operations
# --------------------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of (B, T, D) values at mask-True positions; 0 where the mask row is empty."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    total = (values * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1.0)
    return total / count


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over `dim` restricted to mask-True entries (mask broadcastable to scores).

    Disallowed entries get weight exactly 0, and a slice with no allowed entry is all zeros
    (not NaN): filling with the dtype's most negative finite value keeps exp() finite, and the
    final multiplication by the mask removes the uniform weights of an empty slice.
    """
    mask = mask.expand_as(scores)
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim) * mask.to(scores.dtype)


def masked_max(values: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over `dim` at mask-True entries; where no entry is allowed, the unmasked max."""
    mask = mask.expand_as(values)
    filled = values.masked_fill(~mask, torch.finfo(values.dtype).min)
    masked = filled.max(dim=dim).values
    unmasked = values.max(dim=dim).values
    return torch.where(mask.any(dim=dim), masked, unmasked)


# --------------------------------------------------------------------------------------------
# Shared modules
# --------------------------------------------------------------------------------------------


class MetadataEncoder(nn.Module):
    """m = [embedding(cat_1); ...; embedding(cat_k); Linear(numeric)], seed 1 Algorithm 2 step 11.

    With no metadata (spec None or empty) `output_dim` is 0 and forward returns a (B, 0) tensor,
    so callers can always concatenate m.
    """

    def __init__(self, spec: MetadataSpec | None, embedding_dim: int = 16, numeric_dim: int = 16):
        super().__init__()
        self.spec = spec if spec is not None else MetadataSpec()
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinality + 1, embedding_dim) for _, cardinality in self.spec.categorical
        )
        self.numeric = nn.Linear(self.spec.n_numeric, numeric_dim) if self.spec.n_numeric else None
        self.output_dim = len(self.spec.categorical) * embedding_dim + (numeric_dim if self.numeric else 0)

    def forward(self, batch: Batch) -> torch.Tensor:
        parts = []
        if self.spec.categorical:
            categorical = batch.metadata_categorical
            n_cat = len(self.spec.categorical)
            if categorical is None or categorical.ndim != 2 or categorical.shape[1] != n_cat:
                got = None if categorical is None else tuple(categorical.shape)
                raise ValueError(
                    f"metadata: the model was built for {n_cat} categorical columns "
                    f"{[name for name, _ in self.spec.categorical]}, batch.metadata_categorical is {got}"
                )
            cardinalities = torch.tensor([c for _, c in self.spec.categorical], device=categorical.device)
            bad = (categorical < 0) | (categorical > cardinalities)
            if bool(bad.any()):
                row, column = (int(i) for i in bad.nonzero()[0])
                name, cardinality = self.spec.categorical[column]
                raise ValueError(
                    f"metadata column {name!r}: value {int(categorical[row, column])} for utterance row "
                    f"{int(batch.index[row])} is outside 0..{cardinality} (0 = unknown)"
                )
            parts.extend(embedding(categorical[:, i]) for i, embedding in enumerate(self.embeddings))
        if self.numeric is not None:
            numeric = batch.metadata_numeric
            if numeric is None or numeric.ndim != 2 or numeric.shape[1] != self.spec.n_numeric:
                got = None if numeric is None else tuple(numeric.shape)
                raise ValueError(
                    f"metadata: the model was built for {self.spec.n_numeric} numeric columns, "
                    f"batch.metadata_numeric is {got}"
                )
            parts.append(self.numeric(numeric.to(self.numeric.weight.dtype)))
        if not parts:
            return batch.index.new_zeros((batch.size, 0), dtype=torch.float32)
        return torch.cat(parts, dim=-1)


class ClassificationHead(nn.Module):
    """FC -> ReLU -> dropout -> FC (seed 1 Algorithm 1 steps 33-35); `hidden_size=0` gives a
    linear head, dropout -> FC."""

    def __init__(self, input_dim: int, hidden_size: int, n_classes: int, dropout: float):
        super().__init__()
        self.hidden = nn.Linear(input_dim, hidden_size) if hidden_size else None
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size or input_dim, n_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.hidden is not None:
            features = F.relu(self.hidden(features))
        return self.output(self.dropout(features))


# --------------------------------------------------------------------------------------------
# Base model
# --------------------------------------------------------------------------------------------


class FusionModel(nn.Module):
    """Base class: input validation, modality access and the standard classification loss.

    Subclasses set `config_class`, `requires` (modalities that must be among `input_dims`),
    `min_modalities`, `supports_tasks`, optionally `uses_only`, and implement
    `forward(batch) -> ModelOutput`. `check_compatible` is a classmethod so `build_model` can
    reject a model/data/task mismatch before building anything.
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    min_modalities: ClassVar[int] = 1
    supports_tasks: ClassVar[frozenset[str]] = frozenset(TASKS)
    # Modalities the model can read at all (None: any). Others in input_dims are ignored.
    uses_only: ClassVar[frozenset[str] | None] = None

    def __init__(
        self,
        config,
        input_dims: Mapping[str, int],
        n_classes: int,
        task: str,
        metadata: MetadataSpec | None = None,
    ):
        super().__init__()
        self.check_compatible(input_dims, n_classes, task)
        self.config = config
        # Canonical modality order (text, audio, video) regardless of the dict's order.
        self.modality_names: tuple[str, ...] = tuple(
            m for m in MODALITIES if m in input_dims and (self.uses_only is None or m in self.uses_only)
        )
        self.input_dims = {m: int(input_dims[m]) for m in self.modality_names}
        self.n_classes = int(n_classes)
        self.task = task
        self.metadata_spec = metadata

    @classmethod
    def check_compatible(cls, input_dims: Mapping[str, int], n_classes: int, task: str) -> None:
        """Raise ValueError when this model cannot be built for these inputs and task."""
        name = cls.__name__
        if task not in TASKS:
            raise ValueError(f"{name}: unknown task {task!r}; expected one of {TASKS}")
        if task not in cls.supports_tasks:
            raise ValueError(f"{name} does not support task {task!r} (supports {sorted(cls.supports_tasks)})")
        unknown = set(input_dims) - set(MODALITIES)
        if unknown:
            raise ValueError(f"{name}: unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
        for modality, dim in input_dims.items():
            if int(dim) < 1:
                raise ValueError(f"{name}: input dim of {modality!r} must be >= 1, got {dim}")
        missing = cls.requires - set(input_dims)
        if missing:
            raise ValueError(
                f"{name} needs modalities {sorted(cls.requires)}, but the data has only {sorted(input_dims)}"
                f" (missing {sorted(missing)})"
            )
        if len(input_dims) < cls.min_modalities:
            raise ValueError(
                f"{name} needs at least {cls.min_modalities} modalities, the data has {sorted(input_dims)}"
            )
        minimum_classes = 2 if task == "single_label" else 1
        if int(n_classes) < minimum_classes:
            raise ValueError(f"{name}: n_classes must be >= {minimum_classes} for {task}, got {n_classes}")

    def modality_inputs(self, batch: Batch) -> dict[str, ModalityInput]:
        """The batch's inputs for this model's modalities, checked against the built dims."""
        inputs = {}
        for modality in self.modality_names:
            if modality not in batch.modalities:
                raise ValueError(
                    f"{type(self).__name__} was built with modality {modality!r}, which the batch lacks "
                    f"(batch has {sorted(batch.modalities)}); pass it with present=False where it is missing"
                )
            item = batch.modalities[modality]
            if item.values.ndim != 3 or item.values.shape[-1] != self.input_dims[modality]:
                raise ValueError(
                    f"{type(self).__name__}: {modality} features have shape {tuple(item.values.shape)}, "
                    f"expected (B, T, {self.input_dims[modality]})"
                )
            inputs[modality] = item
        return inputs

    def register_class_weights(self, class_weights: Sequence[float] | None) -> None:
        """Keep per-class loss weights as a buffer so they follow the model across devices."""
        if class_weights is not None and len(class_weights) != self.n_classes:
            raise ValueError(
                f"{type(self).__name__}: class_weights has {len(class_weights)} entries, n_classes is {self.n_classes}"
            )
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def classification_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor | None:
        """The model's loss for `logits`, or None when the batch has no labels for the task.

        Single-label: focal (seed 1) or cross-entropy as `config.loss` says. Multi-label: BCE
        with logits, `class_weights` as positive weights.
        """
        if self.task == "multi_label":
            if batch.labels_multi is None:
                return None
            return weighted_bce(logits, batch.labels_multi, pos_weight=self.class_weights)
        if batch.label is None:
            return None
        if self.config.loss == "focal":
            return focal_loss(
                logits,
                batch.label,
                alpha=self.config.focal_alpha,
                gamma=self.config.focal_gamma,
                class_weights=self.class_weights,
            )
        return F.cross_entropy(logits.float(), batch.label, weight=self.class_weights)

    def output_with_loss(self, logits: torch.Tensor, batch: Batch, **fields) -> ModelOutput:
        """Wrap logits (and extra ModelOutput fields) with the standard classification loss."""
        loss = self.classification_loss(logits, batch)
        loss_parts = {} if loss is None else {"classification": loss.detach()}
        return ModelOutput(logits=logits, loss=loss, loss_parts=loss_parts, **fields)


def is_present(item: ModalityInput) -> torch.Tensor:
    """(B,) bool: the utterance has this modality with at least one real frame.

    A modality flagged present but with an empty mask carries no information, so models treat
    it like a missing one (weight 0 in gating, excluded from pooling over modalities).
    """
    return item.present.bool() & item.mask.any(dim=1)


def stack_present(inputs: Mapping[str, ModalityInput], names: Sequence[str]) -> torch.Tensor:
    """(B, M) bool: which of `names` each utterance has (see `is_present`)."""
    return torch.stack([is_present(inputs[name]) for name in names], dim=1)
