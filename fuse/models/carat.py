"""`carat`: contrastive feature reconstruction and aggregation for multi-label emotions (seed 2).

Seed 2 describes CARAT (Peng et al., AAAI 2024, "CARAT: Contrastive Feature Reconstruction and
Aggregation for Multi-Modal Multi-Label Emotion Recognition") with variable-length inputs.
Where the seed is vague we follow the published CARAT code (github.com/chengzju/CARAT,
`models/models.py`); each such choice is marked "published" below.

Per modality m (any >= 2 of text / audio / video; Facet is "video" here):
1. Input normalisation: LayerNorm over the feature dimension ("Normalize", seed 3.2.2).
2. Length limit: the learned position embeddings hold 600 (text) / 1200 (audio, video)
   positions, one of them used by a prepended CLS token. A sequence longer than the limit - 1
   is shortened by strided average pooling (per utterance, stride ceil(len / (limit - 1)), over
   real frames only), never truncated or rejected (`bound_length`). This happens before
   alignment: seed 3.3.2 ties the compression to the position limits, and it bounds the cost
   of the sequential LSTM below (COVAREP sequences reach 10,891 frames; the published code
   only ever saw 500-frame unaligned inputs).
3. Adaptive CTC alignment (seed 3.3.2), `AdaptiveCTCAlignment`, for `aligned_modalities`
   (default text, audio and video: seed 3.3.2 aligns every modality to the common resolution
   `ctc_target_length` and lists the text limit among the constraints; the published code
   aligned only audio and video to the text). A 2-layer LSTM predicts, for every input frame,
   a distribution over `ctc_target_length` + 1 classes (class 0 = blank); the aligned sequence
   is P^T x (published `CTCModule`). Adaptive length (seed 3.3.2): each utterance gets its own
   target length min(max(round(len * ratio_m), ctc_min_target_length), max_len_m), with
   max_len_m = min(ctc_target_length, position limit of m - 1) and, by default
   (`ctc_compression_ratio=None`), ratio_m = ctc_target_length / position limit of m, i.e. 2/3
   for text (600) and 1/3 for audio and video (1200): a sequence that fills its modality's
   position table is compressed to the common resolution. A number for
   `ctc_compression_ratio` uses that fixed ratio for every modality (the behaviour before
   issue 16). Position classes beyond an utterance's target length are masked out of its
   softmax, so an utterance's alignment does not depend on the rest of the batch. Alignment
   before the encoders is the published order; it also keeps self-attention over long audio
   affordable. The LSTM runs in float32 even under autocast.
   CTC training (seed 3.1.4, MulT's unaligned setting): "ctc_<m>" = ctc_weight *
   `torch.nn.CTCLoss` of the LSTM's log-probabilities against the monotone target sequence
   1, 2, ..., L_b (every target position once, in order), input length = real frames; the
   loss is divided by L_b and averaged over utterances that have the modality (as
   CTCLoss(reduction="mean")). An utterance whose target is longer than its input
   (len < ctc_min_target_length) has no monotone alignment; its term is 0 (zero_infinity).
4. Transformer encoder ("TfModel"): Linear input embedding + learned position embedding +
   LayerNorm + dropout, then post-norm GELU transformer layers (BERT style, as published) with
   a key padding mask; text 4 layers, audio and video 3, hidden 512. Seed 2 says 12 heads, but
   512 is not divisible by 12; we use 8 (as the published configs do). Feed-forward size =
   hidden size and dropout 0.3 follow the published configs.
5. TfPooler: tanh(W h_CLS + b) over the prepended CLS token. The published code computes the
   pooler but never uses it; here the pooled vector is prepended to the token sequence that the
   label attention reads, so it is trained and gives a present-but-short sequence a summary token.
6. Label-specific attention ("MLAttention", 3.3.3): for each of the C emotions a softmax over
   tokens, giving label-specific representations lsr (B, C, H).

Across modalities (published forward, vectorised over batch, modality and label):
7. proj (H -> H/2 -> 64) and de_proj (64 -> H/2 -> H), "MLLinear"; recon = de_proj(proj(lsr)).
8. Label prototypes: per modality and label, a positive and a negative prototype (EMA of
   normalised latents, momentum 0.99, registered buffers). The latent's cosine similarity to
   the two gives a soft (training) or hard (eval) choice, de-projected into a "padding" stand-in.
9. Reconstruction (tv2a, ta2v, va2t; "reconstruct[m]" here, generalised to any set of
   modalities): the stand-in for m plus the reconstructions of the others predict m ("aug").
   A missing modality's reconstruction is replaced by its prototype stand-in, which is how
   CARAT fills in absent modalities. A second pass over all aug features gives "beta".
10. Per-modality linear classifiers (one (C, H) weight per modality) on lsr / recon / aug /
    beta, max-pooled over modalities (lsr and recon over present modalities only), and the
    aggregation head MLLinear(C*H -> H -> C) on beta per modality.
11. Prediction (published): score = (mean_m sigmoid(agg_m) + sigmoid(max-pooled beta logits)) / 2;
    `logits` = logit(score), so sigmoid(logits) is CARAT's score; threshold 0.2 (seed 3.5.3).

Losses (`loss_parts` names in quotes; a term whose weight is 0 is not computed):
- Seed 3.4.4 terms with the seed's weights: "lsr_clf" 0.01 (weighted BCE on lsr logits),
  "recon_clf" 0.0 (on recon logits), "aug_clf" 0.1 (on aug logits), "contrastive" 1.0
  (SupCon), "recon_mse" 1.0 (MSE(recon, lsr)) and "aug_mse" 1.0 (MSE(aug, lsr)), MSEs summed
  over present modalities. With these weights the classification terms are small next to the
  contrastive and MSE terms; that is the seed's setting and we keep it.
- Terms in the published loss that the seed's formula omits, without which the prediction
  heads of step 11 would receive no gradient: "final_clf" 1.0 (BCE on the max-pooled beta
  logits; unweighted in the published code), "agg_clf" 1.0 (published total_aug_clf_weight),
  "shuffle_clf" 0.1 (published shuffle_aug_clf_weight; training only) and "beta_mse" 0.0.
  Set final_clf_weight = agg_clf_weight = shuffle_clf_weight = 0 for the seed's formula alone.
- Weighted BCE: pos_weight 1.0, 1.1, 1.2, 2.5, 1.3, 3.0 (seed 3.4.1, for Happy, Sad, Anger,
  Surprise, Disgust, Fear), applied to every classification term, mean over entries.
- Augmentation branch: the published code's augmentations are (a) the prototype-padded
  reconstructions above and (b) "shuffle": for every label, beta features are permuted across
  samples and modalities (with their labels) and classified by the aggregation head.
- Supervised contrastive loss (temperature 0.07, 64-d projections): anchors are the
  normalised projections of lsr (present modalities only), aug and beta; a sample's class for
  the loss is (modality, label, positive or negative), 6C classes as published. A MoCo-style
  queue of 8192 past projections (registered buffers) provides extra contrast samples. Unlike
  the published code, queue rows are contrast samples only, not anchors (they carry no
  gradient), and empty queue slots are left out rather than initialised with random vectors.
- "ctc_text", "ctc_audio", "ctc_video" (ctc_weight 1.0 each; step 3): the CTC alignment
  loss of seed 3.1.4. Seed 3.4.4's combined loss omits it; we follow 3.1.4 / 3.3.2 (the blank
  class and "CTC" alignment only mean something when a CTC loss trains the position predictor)
  and MulT, whose CTCModule CARAT reuses and which adds the CTC loss with weight 1 for
  unaligned data. ctc_weight = 0 gives the 3.4.4 list alone (the aligners then learn only
  through the classification and contrastive terms).
Queue and prototypes are updated in training mode only, after the loss is computed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fuse.batch import MODALITIES, Batch, ModalityInput
from fuse.losses import supervised_contrastive_loss, weighted_bce
from fuse.models.base import (
    FusionModel,
    ModelOutput,
    TrainingDefaults,
    masked_max,
    masked_softmax,
    stack_present,
)

# Seed 2, 3.5: BertAdam (AdamW with betas 0.9/0.999, eps 1e-6, weight decay 0.01; biases and
# LayerNorm parameters not decayed, as BERT-style code groups them), lr 3e-5, schedule
# lr * min(step / w, sqrt(w / step)) with w = 20% of the steps (3.5.1), 0.98 decay per epoch,
# coef_lr 0.1 (3.5.2) on the per-modality transformer encoders (`encoders.*`: the BERT-style
# backbone part of CARAT; with frozen stage-1 features there is no pretrained encoder in the
# model, see docs/models.md), batch 64, 15 epochs, clip 1.0, threshold 0.2. The published code
# keeps the best epoch without early stopping: patience = epochs. Seed 2 does not mention mixed
# precision (the published code trains in float32). Sequences are not truncated by the data
# layer (max_len None per modality): seed 3.7 keeps the natural lengths and the model bounds
# them itself (`bound_length`).
CARAT_TRAINING = TrainingDefaults(
    lr=3e-5,
    weight_decay=0.01,
    batch_size=64,
    epochs=15,
    patience=15,
    warmup_ratio=0.2,
    grad_clip=1.0,
    amp=False,
    scheduler="bert_adam",
    adam_eps=1e-6,
    exclude_norm_and_bias=True,
    coef_lr=0.1,
    coef_lr_group=("encoders.",),
    lr_decay_per_epoch=0.98,
    threshold=0.2,
    max_len={"text": None, "audio": None, "video": None},
)

SEED2_POS_WEIGHT = (1.0, 1.1, 1.2, 2.5, 1.3, 3.0)  # Happy, Sad, Anger, Surprise, Disgust, Fear


@dataclass
class CARATConfig:
    hidden_size: int = 512
    num_heads: int = 8  # seed says 12, which does not divide 512; published configs use 8
    intermediate_size: int = 512  # published: feed-forward size = hidden size
    dropout: float = 0.3  # published configs
    text_layers: int = 4
    audio_layers: int = 3
    video_layers: int = 3
    text_max_positions: int = 600
    audio_max_positions: int = 1200
    video_max_positions: int = 1200
    aligned_modalities: tuple[str, ...] = ("text", "audio", "video")  # seed 3.3.2
    ctc_target_length: int = 400
    # None: seed 3.3.2, ctc_target_length / position limit per modality; a number: fixed ratio.
    ctc_compression_ratio: float | None = None
    # Weight of the CTC alignment loss per aligned modality (seed 3.1.4; MulT adds it with 1).
    ctc_weight: float = 1.0
    ctc_min_target_length: int = 16
    ctc_lstm_layers: int = 2
    proj_size: int = 64
    temperature: float = 0.07
    prototype_momentum: float = 0.99
    queue_size: int = 8192
    pos_weight: tuple[float, ...] | None = SEED2_POS_WEIGHT
    # Seed 3.4.4 loss weights.
    lsr_clf_weight: float = 0.01
    recon_clf_weight: float = 0.0
    aug_clf_weight: float = 0.1
    cl_weight: float = 1.0
    recon_mse_weight: float = 1.0
    aug_mse_weight: float = 1.0
    # Published-code loss terms the seed's formula leaves out (see module docstring).
    final_clf_weight: float = 1.0
    agg_clf_weight: float = 1.0
    shuffle_clf_weight: float = 0.1
    beta_mse_weight: float = 0.0
    output_attentions: bool = True

    default_training: ClassVar[TrainingDefaults] = CARAT_TRAINING

    def __post_init__(self):
        self.aligned_modalities = tuple(self.aligned_modalities)
        unknown = set(self.aligned_modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"aligned_modalities: unknown modalities {sorted(unknown)}")
        if self.pos_weight is not None:
            self.pos_weight = tuple(float(w) for w in self.pos_weight)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.hidden_size < 2:
            raise ValueError("hidden_size must be >= 2")
        if self.ctc_target_length < 1 or self.ctc_min_target_length < 1:
            raise ValueError("ctc_target_length and ctc_min_target_length must be >= 1")
        if self.ctc_compression_ratio is not None and self.ctc_compression_ratio <= 0:
            raise ValueError(f"ctc_compression_ratio must be > 0 or None, got {self.ctc_compression_ratio}")
        if self.ctc_weight < 0:
            raise ValueError(f"ctc_weight must be >= 0, got {self.ctc_weight}")
        if not 0.0 <= self.prototype_momentum < 1.0:
            raise ValueError(f"prototype_momentum must be in [0, 1), got {self.prototype_momentum}")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {self.queue_size}")

    def layers(self, modality: str) -> int:
        return getattr(self, f"{modality}_layers")

    def max_positions(self, modality: str) -> int:
        return getattr(self, f"{modality}_max_positions")

    def compression_ratio(self, modality: str) -> float:
        """Seed 3.3.2: the common resolution over the modality's position limit, unless fixed."""
        if self.ctc_compression_ratio is not None:
            return float(self.ctc_compression_ratio)
        return self.ctc_target_length / self.max_positions(modality)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class MultiLayerLinear(nn.Module):
    """CARAT's MLLinear: Linear+ReLU through `sizes`, then a Linear to `output_size`."""

    def __init__(self, sizes: list[int], output_size: int):
        super().__init__()
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.output = nn.Linear(sizes[-1], output_size)
        for linear in [*self.hidden, self.output]:
            nn.init.xavier_uniform_(linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear in self.hidden:
            x = F.relu(linear(x))
        return self.output(x)


def bound_length(values: torch.Tensor, mask: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shorten sequences longer than `limit` real frames by strided average pooling.

    Per utterance, the stride is ceil(length / limit); window k averages real frames
    k*stride .. (k+1)*stride - 1 (counted among real frames). Utterances within the limit keep
    their frames unchanged. Returns (B, min(T, limit), D) values and mask.
    """
    batch, length, dim = values.shape
    if length <= limit:
        return values, mask
    lengths = mask.sum(dim=1)
    stride = torch.div(lengths + limit - 1, limit, rounding_mode="floor").clamp(min=1)
    rank = mask.long().cumsum(dim=1) - 1
    # Padding frames go to an extra bucket `limit` that is dropped.
    bucket = torch.where(mask, torch.div(rank, stride.unsqueeze(1), rounding_mode="floor"), limit)
    weights = mask.to(values.dtype)
    sums = values.new_zeros(batch, limit + 1, dim).scatter_add_(
        1, bucket.unsqueeze(-1).expand(-1, -1, dim), values * weights.unsqueeze(-1)
    )
    counts = values.new_zeros(batch, limit + 1).scatter_add_(1, bucket, weights)
    pooled = sums[:, :limit] / counts[:, :limit].clamp(min=1).unsqueeze(-1)
    return pooled, counts[:, :limit] > 0


class AdaptiveCTCAlignment(nn.Module):
    """Soft alignment of a sequence to an adaptive target length (seed 3.3.2, published CTCModule).

    forward(values (B, T, D), mask (B, T)) -> aligned (B, L, D), aligned mask (B, L),
    position probabilities (B, L, T); L is the largest per-utterance target length.
    forward(..., with_ctc_loss=True) adds a 4th output, the CTC loss (scalar, see
    `ctc_loss`). The mask must be a prefix mask (real frames first), as the data layer pads.
    """

    def __init__(
        self, input_dim: int, max_target_length: int, compression_ratio: float, min_target_length: int, num_layers: int
    ):
        super().__init__()
        self.max_target_length = max_target_length
        self.compression_ratio = compression_ratio
        self.min_target_length = min(min_target_length, max_target_length)
        # One output per target position plus the blank class (index 0).
        self.position_predictor = nn.LSTM(input_dim, max_target_length + 1, num_layers=num_layers, batch_first=True)

    def target_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        target = torch.round(lengths.float() * self.compression_ratio).long()
        target = target.clamp(min=self.min_target_length, max=self.max_target_length)
        return torch.where(lengths > 0, target, torch.zeros_like(target))

    def forward(self, values: torch.Tensor, mask: torch.Tensor, with_ctc_loss: bool = False):
        lengths = mask.sum(dim=1)
        targets = self.target_lengths(lengths)
        out_length = max(int(targets.max()), 1)
        # The position predictor runs in float32 even under autocast: half-precision LSTMs are
        # not supported on every backend (oneDNN on CPU), and alignment is cheap next to attention.
        with torch.autocast(device_type=values.device.type, enabled=False):
            position_logits, _ = self.position_predictor(values.float())
        position_logits = position_logits[..., : out_length + 1]
        positions = torch.arange(out_length, device=values.device)
        aligned_mask = positions.unsqueeze(0) < targets.unsqueeze(1)  # (B, L)
        allowed_classes = torch.cat([aligned_mask.new_ones(mask.shape[0], 1), aligned_mask], dim=1)
        probabilities = masked_softmax(position_logits, allowed_classes.unsqueeze(1), dim=-1)
        # Drop the blank class and padded input frames.
        position_probs = probabilities[..., 1:] * mask.unsqueeze(-1).to(probabilities.dtype)
        aligned = torch.einsum("btl,btd->bld", position_probs, values)
        if not with_ctc_loss:
            return aligned, aligned_mask, position_probs.transpose(1, 2)
        loss = self.ctc_loss(position_logits, allowed_classes, lengths, targets)
        return aligned, aligned_mask, position_probs.transpose(1, 2), loss

    @staticmethod
    def ctc_loss(
        position_logits: torch.Tensor, allowed_classes: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """CTC loss of the position predictor against the monotone targets 1..L_b (seed 3.1.4).

        position_logits (B, T, L + 1) float32, class 0 = blank; allowed_classes (B, L + 1) bool;
        lengths (B,) real input frames; targets (B,) target lengths L_b. Returns the mean over
        utterances with L_b > 0 of CTC / L_b (0 when there is none); infeasible utterances
        (L_b > length) contribute 0.
        """
        log_probs = torch.log_softmax(
            position_logits.float().masked_fill(~allowed_classes.unsqueeze(1), torch.finfo(torch.float32).min), dim=-1
        )
        has_target = targets > 0
        if not bool(has_target.any()):
            return position_logits.sum() * 0.0
        rows = has_target.nonzero().squeeze(1)
        target_lengths = targets[rows]
        # Concatenated targets 1..L_b per utterance (CTCLoss's 1-D target format).
        positions = torch.arange(1, int(target_lengths.max()) + 1, device=targets.device)
        flat_targets = positions.expand(len(rows), -1)[positions.unsqueeze(0) <= target_lengths.unsqueeze(1)]
        with torch.autocast(device_type=position_logits.device.type, enabled=False):
            per_utterance = F.ctc_loss(
                log_probs[rows].transpose(0, 1),
                flat_targets,
                lengths[rows],
                target_lengths,
                blank=0,
                reduction="none",
                zero_infinity=True,
            )
        return (per_utterance / target_lengths.float()).mean()


class TransformerSequenceEncoder(nn.Module):
    """CARAT's TfModel: embedding + CLS + learned positions, post-norm transformer, TfPooler."""

    def __init__(self, input_dim: int, config: CARATConfig, num_layers: int, max_positions: int):
        super().__init__()
        hidden = config.hidden_size
        self.input_embedding = nn.Linear(input_dim, hidden)
        self.cls_embedding = nn.Parameter(torch.empty(hidden))
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            hidden,
            config.num_heads,
            config.intermediate_size,
            config.dropout,
            activation="gelu",
            batch_first=True,
            layer_norm_eps=1e-12,
        )
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.pooler = nn.Linear(hidden, hidden)
        nn.init.normal_(self.cls_embedding, std=0.02)
        nn.init.normal_(self.position_embeddings.weight, std=0.02)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """values (B, L, D), mask (B, L) -> token outputs (B, L, H) and pooled CLS (B, H)."""
        batch = values.shape[0]
        embedded = self.input_embedding(values)
        cls = self.cls_embedding.to(embedded.dtype).expand(batch, 1, -1)
        hidden = torch.cat([cls, embedded], dim=1)
        positions = torch.arange(hidden.shape[1], device=values.device)
        hidden = self.dropout(self.embedding_norm(hidden + self.position_embeddings(positions)))
        padding = ~torch.cat([mask.new_ones(batch, 1), mask], dim=1)
        hidden = self.layers(hidden, src_key_padding_mask=padding)
        pooled = torch.tanh(self.pooler(hidden[:, 0]))
        return hidden[:, 1:], pooled


class LabelAttention(nn.Module):
    """CARAT's MLAttention: one softmax over tokens per label -> (B, C, H) and weights (B, C, L)."""

    def __init__(self, n_labels: int, hidden_size: int):
        super().__init__()
        self.scores = nn.Linear(hidden_size, n_labels, bias=False)
        nn.init.xavier_uniform_(self.scores.weight)

    def forward(self, sequence: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.scores(sequence).transpose(1, 2)
        weights = masked_softmax(scores, mask.unsqueeze(1), dim=-1)
        return weights @ sequence, weights


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Sum over modalities of the MSE over present utterances; tensors (B, M, C, H), present (B, M)."""
    per_item = (prediction.float() - target.float()).pow(2).mean(dim=(-1, -2))
    weights = present.float()
    return ((per_item * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1.0)).sum()


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class CARATModel(FusionModel):
    """CARAT for multi-label emotion recognition (seed 2); see module docstring."""

    config_class = CARATConfig
    min_modalities = 2
    supports_tasks = frozenset({"multi_label"})

    def __init__(self, config: CARATConfig, input_dims, n_classes, task, metadata=None):
        super().__init__(config, input_dims, n_classes, task, metadata)
        names = self.modality_names
        hidden, n_modalities = config.hidden_size, len(names)
        if config.pos_weight is not None and len(config.pos_weight) != n_classes:
            raise ValueError(
                f"CARAT: pos_weight has {len(config.pos_weight)} entries (seed 2's six emotions) but n_classes is "
                f"{n_classes}; pass pos_weight=None or {n_classes} weights"
            )
        self.input_norms = nn.ModuleDict({m: nn.LayerNorm(self.input_dims[m]) for m in names})
        self.aligners = nn.ModuleDict(
            {
                m: AdaptiveCTCAlignment(
                    self.input_dims[m],
                    min(config.ctc_target_length, config.max_positions(m) - 1),
                    config.compression_ratio(m),
                    config.ctc_min_target_length,
                    config.ctc_lstm_layers,
                )
                for m in names
                if m in config.aligned_modalities
            }
        )
        self.encoders = nn.ModuleDict(
            {
                m: TransformerSequenceEncoder(self.input_dims[m], config, config.layers(m), config.max_positions(m))
                for m in names
            }
        )
        self.label_attention = nn.ModuleDict({m: LabelAttention(n_classes, hidden) for m in names})
        self.project = nn.ModuleDict({m: MultiLayerLinear([hidden, hidden // 2], config.proj_size) for m in names})
        self.deproject = nn.ModuleDict({m: MultiLayerLinear([config.proj_size, hidden // 2], hidden) for m in names})
        # reconstruct["audio"] is the paper's tv2a, ["video"] ta2v, ["text"] va2t.
        self.reconstruct = nn.ModuleDict({m: MultiLayerLinear([n_modalities * hidden], hidden) for m in names})
        self.classifier_weight = nn.Parameter(torch.empty(n_modalities, n_classes, hidden))
        for weight in self.classifier_weight:
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.aggregate = MultiLayerLinear([hidden * n_classes, hidden], n_classes)

        prototype_shape = (n_modalities, n_classes, config.proj_size)
        self.register_buffer("positive_prototypes", torch.zeros(prototype_shape))
        self.register_buffer("negative_prototypes", torch.zeros(prototype_shape))
        self.register_buffer("queue", torch.zeros(config.queue_size, config.proj_size))
        self.register_buffer("queue_labels", torch.full((config.queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_pointer", torch.zeros(1, dtype=torch.long))
        pos_weight = None if config.pos_weight is None else torch.tensor(config.pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    # ---- per-modality encoding ------------------------------------------------------------

    def encode_modality(
        self, name: str, item: ModalityInput, ctc_losses: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalise, bound, align and encode one modality -> tokens (B, L, H), mask (B, L), pooled (B, H).

        With a dict `ctc_losses` and an aligned modality, its CTC loss is stored under `name`."""
        mask = item.mask.bool()
        values = self.input_norms[name](item.values) * mask.unsqueeze(-1).to(item.values.dtype)
        if values.shape[1] == 0:  # no frames at all in this batch: one padding frame keeps shapes valid
            values = values.new_zeros(values.shape[0], 1, values.shape[2])
            mask = mask.new_zeros(mask.shape[0], 1)
        # Bound first, so the sequential LSTM of the aligner never runs over more frames than
        # the position limit; alignment output (<= ctc_target_length) then fits the encoder.
        limit = self.config.max_positions(name) - 1
        values, mask = bound_length(values, mask, limit)
        if name in self.aligners:
            if ctc_losses is not None:
                values, mask, _, ctc_losses[name] = self.aligners[name](values, mask, with_ctc_loss=True)
            else:
                values, mask, _ = self.aligners[name](values, mask)
            values, mask = bound_length(values, mask, limit)
        tokens, pooled = self.encoders[name](values, mask)
        return tokens, mask, pooled

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Per-modality label classifiers: (B, M, C, H) -> (B, M, C) logits."""
        return torch.einsum("bmch,mch->bmc", features, self.classifier_weight.to(features.dtype))

    # ---- forward ----------------------------------------------------------------------------

    def forward(self, batch: Batch) -> ModelOutput:
        inputs = self.modality_inputs(batch)
        names = self.modality_names
        present = stack_present(inputs, names)  # (B, M)
        batch_size, n_modalities, n_classes = present.shape[0], len(names), self.n_classes

        label_representations, attentions = [], {}
        wants_ctc = self.config.ctc_weight > 0 and batch.labels_multi is not None
        ctc_losses: dict[str, torch.Tensor] | None = {} if wants_ctc else None
        for index, name in enumerate(names):
            tokens, token_mask, pooled = self.encode_modality(name, inputs[name], ctc_losses)
            keys = torch.cat([pooled.unsqueeze(1), tokens], dim=1)
            key_mask = torch.cat([present[:, index : index + 1], token_mask], dim=1)
            representation, weights = self.label_attention[name](keys, key_mask)
            label_representations.append(representation)
            if self.config.output_attentions:
                attentions[f"{name}_label_attention"] = weights
        lsr = torch.stack(label_representations, dim=1)  # (B, M, C, H)

        latent = self._per_modality(self.project, lsr)  # (B, M, C, P)
        recon = self._per_modality(self.deproject, latent)
        latent_unit = F.normalize(latent, dim=-1)
        padding = self._per_modality(self.deproject, self._prototype_stand_in(latent_unit))

        # Reconstruct every modality from the others (missing ones replaced by their stand-ins).
        available = torch.where(present[:, :, None, None], recon, padding)
        aug = torch.stack(
            [
                self.reconstruct[name](
                    torch.cat([padding[:, j] if j == i else available[:, j] for j in range(n_modalities)], dim=-1)
                )
                for i, name in enumerate(names)
            ],
            dim=1,
        )
        all_aug = aug.permute(0, 2, 1, 3).reshape(batch_size, n_classes, -1)
        beta = torch.stack([self.reconstruct[name](all_aug) for name in names], dim=1)

        beta_logits = self.classify(beta).max(dim=1).values  # (B, C)
        aggregated = self.aggregate(beta.reshape(batch_size, n_modalities, -1))  # (B, M, C)
        scores = (torch.sigmoid(aggregated.float()).mean(dim=1) + torch.sigmoid(beta_logits.float())) / 2
        logits = torch.logit(scores, eps=1e-6)

        loss, loss_parts = None, {}
        targets = batch.labels_multi
        if targets is not None:
            if targets.shape != (batch_size, n_classes):
                raise ValueError(
                    f"CARAT: labels_multi has shape {tuple(targets.shape)}, expected ({batch_size}, {n_classes})"
                )
            targets = targets.float()
            contrastive = None
            if self.config.cl_weight:
                contrastive = self._contrastive_samples(latent, aug, beta, present, targets)
            terms = self._loss_terms(targets, present, lsr, recon, aug, beta, beta_logits, aggregated, contrastive)
            for name, value in (ctc_losses or {}).items():
                terms[f"ctc_{name}"] = self.config.ctc_weight * value
            loss = torch.stack(list(terms.values())).sum()
            loss_parts = {name: value.detach() for name, value in terms.items()}
            if self.training:
                self._update_memory(latent_unit, present, targets, contrastive)
        return ModelOutput(
            logits=logits, loss=loss, loss_parts=loss_parts, attentions=attentions, modality_names=names
        )

    def _per_modality(self, modules: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([modules[name](x[:, i]) for i, name in enumerate(self.modality_names)], dim=1)

    def _prototype_stand_in(self, latent_unit: torch.Tensor) -> torch.Tensor:
        """Latent stand-ins from the label prototypes: soft mixture (training) or nearest (eval)."""
        prototypes = torch.stack([self.positive_prototypes, self.negative_prototypes]).to(latent_unit.dtype)
        similarity = torch.softmax(torch.einsum("bmcp,kmcp->bmck", latent_unit, prototypes), dim=-1)
        if self.training:
            return torch.einsum("bmck,kmcp->bmcp", similarity, prototypes)
        nearer_positive = (similarity[..., 0] > similarity[..., 1]).unsqueeze(-1)
        return torch.where(nearer_positive, prototypes[0], prototypes[1])

    # ---- losses ---------------------------------------------------------------------------

    def _loss_terms(self, targets, present, lsr, recon, aug, beta, beta_logits, aggregated, contrastive):
        config = self.config
        terms: dict[str, torch.Tensor] = {}

        def bce(logits, y):
            return weighted_bce(logits, y, pos_weight=self.pos_weight)

        present_labels = present.unsqueeze(-1)
        if config.lsr_clf_weight:
            lsr_logits = masked_max(self.classify(lsr), present_labels, dim=1)
            terms["lsr_clf"] = config.lsr_clf_weight * bce(lsr_logits, targets)
        if config.recon_clf_weight:
            recon_logits = masked_max(self.classify(recon), present_labels, dim=1)
            terms["recon_clf"] = config.recon_clf_weight * bce(recon_logits, targets)
        if config.aug_clf_weight:
            terms["aug_clf"] = config.aug_clf_weight * bce(self.classify(aug).max(dim=1).values, targets)
        if config.final_clf_weight:
            terms["final_clf"] = config.final_clf_weight * bce(beta_logits, targets)
        if config.agg_clf_weight:
            terms["agg_clf"] = config.agg_clf_weight * bce(aggregated, targets.unsqueeze(1).expand_as(aggregated))
        if config.shuffle_clf_weight and self.training:
            terms["shuffle_clf"] = config.shuffle_clf_weight * self._shuffled_aggregate_loss(beta, targets)
        if contrastive is not None:
            features, labels = contrastive
            queue_features, queue_labels = self._queue_contents()
            terms["contrastive"] = config.cl_weight * supervised_contrastive_loss(
                features, labels, config.temperature, queue_features=queue_features, queue_labels=queue_labels
            )
        if config.recon_mse_weight:
            terms["recon_mse"] = config.recon_mse_weight * masked_mse(recon, lsr, present)
        if config.aug_mse_weight:
            terms["aug_mse"] = config.aug_mse_weight * masked_mse(aug, lsr, present)
        if config.beta_mse_weight:
            terms["beta_mse"] = config.beta_mse_weight * masked_mse(beta, lsr, present)
        if not terms:
            raise ValueError("CARAT: every loss weight is 0")
        return terms

    def _shuffled_aggregate_loss(self, beta: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Published shuffle augmentation: per label, permute beta across samples and modalities."""
        batch_size, n_modalities, n_classes, _ = beta.shape
        device = beta.device
        # sample_index[b, m, c]: a permutation of the batch for every (modality, label) pair.
        sample_index = torch.rand(n_classes, n_modalities, batch_size, device=device).argsort(dim=-1).permute(2, 1, 0)
        # modality_index[b, m, c]: a permutation of the modalities for every (sample, label) pair.
        modality_index = torch.rand(n_classes, batch_size, n_modalities, device=device).argsort(dim=-1)
        modality_index = modality_index.permute(1, 2, 0)
        label_index = torch.arange(n_classes, device=device).expand(batch_size, n_modalities, n_classes)
        shuffled = beta[sample_index, modality_index, label_index]
        shuffled_targets = targets.unsqueeze(1).expand(batch_size, n_modalities, n_classes)[
            sample_index, modality_index, label_index
        ]
        logits = self.aggregate(shuffled.reshape(batch_size, n_modalities, -1))
        return weighted_bce(logits, shuffled_targets, pos_weight=self.pos_weight)

    def _contrastive_samples(self, latent, aug, beta, present, targets):
        """Rows (features, class ids) for SupCon; class = (modality, label, positive/negative)."""
        batch_size, n_modalities, n_classes, _ = latent.shape
        views = torch.stack(
            [latent, self._per_modality(self.project, aug), self._per_modality(self.project, beta)], dim=1
        )  # (B, 3, M, C, P)
        device = latent.device
        label_index = torch.arange(n_classes, device=device).view(1, 1, 1, n_classes)
        modality_index = torch.arange(n_modalities, device=device).view(1, 1, n_modalities, 1)
        negative = (targets < 0.5).long().view(batch_size, 1, 1, n_classes)
        class_ids = label_index + n_classes * (2 * modality_index + negative)  # (B, 1, M, C)
        class_ids = class_ids.expand(batch_size, 3, n_modalities, n_classes)
        # The lsr view of a missing modality is all zeros, not a sample; aug and beta always exist.
        valid = torch.stack([present, torch.ones_like(present), torch.ones_like(present)], dim=1)
        valid = valid.unsqueeze(-1).expand(batch_size, 3, n_modalities, n_classes)
        return F.normalize(views[valid].float(), dim=-1), class_ids[valid]

    def _queue_contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        filled = self.queue_labels >= 0
        return self.queue[filled], self.queue_labels[filled]

    # ---- memory updates (training only) -------------------------------------------------------

    @torch.no_grad()
    def _update_memory(self, latent_unit, present, targets, contrastive) -> None:
        if contrastive is not None and self.config.queue_size:
            features, labels = contrastive
            self._enqueue(features.detach(), labels)
        self._update_prototypes(latent_unit, present, targets)

    @torch.no_grad()
    def _enqueue(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        size = self.queue.shape[0]
        if features.shape[0] > size:
            features, labels = features[-size:], labels[-size:]
        slots = (self.queue_pointer + torch.arange(features.shape[0], device=features.device)) % size
        self.queue[slots] = features.to(self.queue.dtype)
        self.queue_labels[slots] = labels.to(self.queue_labels.dtype)
        self.queue_pointer.copy_((self.queue_pointer + features.shape[0]) % size)

    @torch.no_grad()
    def _update_prototypes(self, latent_unit: torch.Tensor, present: torch.Tensor, targets: torch.Tensor) -> None:
        """Published EMA update, vectorised.

        The published loop applies p <- m p + (1 - m) f_i for each selected sample i in batch
        order. Unrolled over n selected samples that is p m^n + sum_i (1 - m) m^(n_after(i)) f_i,
        where n_after(i) counts selected samples after i; this computes it in one pass.
        """
        momentum = self.config.prototype_momentum
        latent = latent_unit.float()
        positive = targets >= 0.5
        for is_positive, prototypes in ((positive, self.positive_prototypes), (~positive, self.negative_prototypes)):
            selected = (is_positive.unsqueeze(1) & present.unsqueeze(-1)).float()  # (B, M, C)
            n_after = selected.flip(0).cumsum(0).flip(0) - selected
            weights = selected * (1 - momentum) * torch.pow(momentum, n_after)
            prototypes.mul_(torch.pow(momentum, selected.sum(0)).unsqueeze(-1))
            prototypes.add_(torch.einsum("bmc,bmcp->mcp", weights, latent))
