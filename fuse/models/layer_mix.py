"""Learned layer weights over a feature that is several encoder layers concatenated.

An hf-text (or hf-audio) feature set extracted with `layers: [l_1, ..., l_K]` and
`layer_pooling: concat` stores, per frame, the K hidden states side by side: a (K x D)-dim
vector [h_1; ...; h_K]. `LayerMix` turns it into one D-dim vector

    mix(x) = scale * sum_k softmax(w)_k * h_k

with K learned scalars w (initialised to 0: the plain average of the layers) and an optional
learned `scale` (initialised to 1). This is the weighted sum SUPERB trains over a frozen
upstream's layers (Yang et al. 2021, as ELMo's scalar mix): which layers carry the task's
signal is learned from the labels instead of fixed at extraction, and the model downstream
reads D inputs instead of K x D (six times fewer first-layer weights for MiniLM layers 1-6),
which regularises a small head on a small corpus.

The mix is linear in x, so it commutes with masked mean pooling: mixing token vectors and
then pooling equals pooling and then mixing, and a model may apply the same mix to token
features and to mean-pooled dialogue-context turns.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class LayerMix(nn.Module):
    """(..., n_layers * layer_dim) -> (..., layer_dim): softmax-weighted sum of the layers.

    The input's last dimension is read as n_layers consecutive blocks of layer_dim, in the
    order the extraction concatenated them (the feature set's `layers` list).
    """

    def __init__(self, n_layers: int, input_dim: int, learn_scale: bool = True):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"layer mix needs at least one layer, got {n_layers}")
        if input_dim % n_layers:
            raise ValueError(
                f"a {input_dim}-dim feature cannot be {n_layers} concatenated layers "
                f"({input_dim} is not a multiple of {n_layers}); set `layers` to the length of the "
                "feature set's `layers` list (extracted with layer_pooling: concat)"
            )
        self.n_layers = n_layers
        self.layer_dim = input_dim // n_layers
        self.layer_logits = nn.Parameter(torch.zeros(n_layers))
        self.scale = nn.Parameter(torch.ones(())) if learn_scale else None

    def weights(self) -> torch.Tensor:
        """(n_layers,) the current layer weights, non-negative and summing to 1."""
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        layers = values.unflatten(-1, (self.n_layers, self.layer_dim))  # (..., K, D)
        mixed = torch.einsum("...kd,k->...d", layers, self.weights().to(values.dtype))
        return mixed if self.scale is None else mixed * self.scale.to(values.dtype)


def concatenated_layers(attrs: Mapping[str, Any]) -> int | None:
    """How many encoder layers each vector of a feature set concatenates, from its attrs.

    The hf encoders record their `layers` list and `layer_pooling` in the feature set's attrs
    (extract/encoders/text_hf.py provenance); None when the attrs do not say the vectors are
    several layers concatenated (one layer, layers averaged, or another encoder).
    """
    layers = attrs.get("layers")
    if attrs.get("layer_pooling") == "concat" and isinstance(layers, (list, tuple)) and len(layers) > 1:
        return len(layers)
    return None


def with_layer_count(model_config: Mapping[str, Any], feature_sets: Mapping[str, Any], modality: str = "text") -> dict[str, Any]:
    """`model_config` with `layers` filled from the `modality` feature set's attrs when
    `layer_weights` is on and `layers` is unset (0 or absent); otherwise unchanged.

    Filled here, before the model is built, so the count lands in the model's config and the
    checkpoint rebuilds the same model without the cache.
    """
    config = dict(model_config)
    if not config.get("layer_weights") or config.get("layers"):
        return config
    feature_set = feature_sets.get(modality)
    count = None if feature_set is None else concatenated_layers(getattr(feature_set, "attrs", {}))
    if count is None:
        name = getattr(feature_set, "name", None)
        raise ValueError(
            f"layer_weights: the {modality} feature set {name!r} does not record several concatenated layers "
            "(extract it with an hf encoder, `layers: [...]` and `layer_pooling: concat`), or set `layers`"
        )
    config["layers"] = count
    return config
