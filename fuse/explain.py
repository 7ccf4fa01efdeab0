"""Cross-modal attention maps of single utterances (`fuse explain`, and one per `fuse train` run).

The model is applied to the utterance (features read, truncated and normalised exactly as in
training); the chosen attention map ("<query>_to_<key>", default text_to_audio) is averaged
over heads and cut to the utterance's real positions.

Axis labels: text positions are the utterance's tokens when the text feature set's
`checkpoint_path` (the resolved folder) or `checkpoint` attribute is a local tokenizer folder whose tokenisation of the utterance has
exactly as many tokens as the stored features, else its whitespace words when their count
matches, else token numbers. Positions of other modalities are labelled with their time
in seconds when the feature set has a numeric `frame_rate`, else with frame numbers.
Nothing is ever downloaded.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ExplainError(ValueError):
    """The model has no such map, or the utterance lacks one of its modalities."""


@dataclass
class AttentionMap:
    name: str  # "<query>_to_<key>"
    weights: np.ndarray  # (T_query, T_key), mean over heads
    query_labels: list[str]
    key_labels: list[str]


def position_labels(fs, length: int, text: str) -> list[str]:
    """Tick labels for `length` positions of feature set `fs` (see the module docstring)."""
    modality = fs.attrs.get("modality") or fs.name.split(".", 1)[0]
    if modality == "text":
        tokens = _tokenizer_tokens(fs.attrs.get("checkpoint_path"), text) or _tokenizer_tokens(fs.attrs.get("checkpoint"), text)
        if tokens is not None and len(tokens) == length:
            return tokens
        words = text.split()
        if len(words) == length:
            return words
        return [f"tok {i}" for i in range(length)]
    rate = fs.attrs.get("frame_rate")
    if isinstance(rate, (int, float)) and rate > 0:
        return [f"{i / rate:.2f}s" for i in range(length)]
    return [f"frame {i}" for i in range(length)]


def _tokenizer_tokens(checkpoint, text: str) -> list[str] | None:
    if not checkpoint or not Path(str(checkpoint)).is_dir():
        return None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
        return tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    except Exception:  # no usable tokenizer there: fall back to words / numbers (documented)
        return None


def cross_modal_maps(attentions: dict) -> dict:
    """The model output's per-utterance cross-modal maps: "<a>_to_<b>" -> (B, heads, Tq, Tk)."""
    return {k: v for k, v in attentions.items() if re.fullmatch(r"[a-z]+_to_[a-z]+", k) and v.ndim == 4}


def attention_map(model, data, row: int, device, attention_name: str | None = None, model_name: str = "model") -> AttentionMap:
    """One utterance's cross-modal attention map (see the module docstring)."""
    import torch

    batch = data.batch_for_rows(np.array([row]), with_labels=False).to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model(batch)
    model.train(was_training)
    maps = cross_modal_maps(output.attentions)
    if not maps:
        raise ExplainError(f"model {model_name!r} records no cross-modal attention maps (it reports: {', '.join(output.attentions) or 'none'})")
    if attention_name is None:
        attention_name = "text_to_audio" if "text_to_audio" in maps else sorted(maps)[0]
    if attention_name not in maps:
        raise ExplainError(f"no attention map {attention_name!r}; this model has {', '.join(sorted(maps))}")
    query, key = attention_name.split("_to_")
    q_len = int(batch.modalities[query].mask[0].sum())
    k_len = int(batch.modalities[key].mask[0].sum())
    utterance_id = str(data.columns["id"][row])
    if q_len == 0 or k_len == 0:
        missing = query if q_len == 0 else key
        raise ExplainError(f"utterance {utterance_id!r} has no {missing} features, so {attention_name} is empty")
    weights = maps[attention_name][0].float().mean(dim=0).cpu().numpy()[:q_len, :k_len]
    text = str(data.cache.column("text")[row])
    return AttentionMap(
        attention_name, weights,
        position_labels(data.feature_sets[query], q_len, text),
        position_labels(data.feature_sets[key], k_len, text),
    )


def draw(result: AttentionMap, path: Path, utterance_id: str, model_name: str) -> Path:
    from fuse import plots

    query, key = result.name.split("_to_")
    return plots.attention_map(
        result.weights, result.query_labels, result.key_labels, path,
        title=f"{utterance_id}: {result.name} ({model_name})", query_name=f"{query} positions", key_name=f"{key} positions",
    )


def safe_name(utterance_id: str, max_chars: int = 80) -> str:
    """A file-name-safe form of an utterance id; long ids become a prefix plus a short hash.

    File names are limited to 255 bytes, and ids come from user data.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", utterance_id)
    if len(name) <= max_chars:
        return name
    digest = hashlib.sha1(utterance_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{name[: max_chars - 11]}-{digest}"
