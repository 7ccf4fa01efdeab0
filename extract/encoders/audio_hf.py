"""Frame-level audio features from a Hugging Face speech encoder (Wav2Vec2 family).

Design doc: "Wav2Vec 2.0, 16,000 Hz, feature dim 768". Choices:

* Input: the utterance's audio (``audio_path`` with ``start``/``end``) decoded by
  :func:`extract.media.load_audio` to mono at the feature extractor's sampling rate (16 kHz),
  then the feature extractor (zero-mean/unit-variance per utterance when it says so).
* Output: the chosen hidden layer(s) per frame, ~50 Hz for wav2vec2 (one frame per 320
  samples, the product of the conv strides; ``frame_rate`` is computed from the config).
* Long clips are cut into independent windows of ``window_seconds`` (30 s) whose frame
  sequences are concatenated; a trailing piece shorter than ``min_window_seconds`` joins the
  window before it. No context crosses a window boundary. Forward passes are grouped so one
  pass never holds more than ``max_batch_seconds`` of padded audio: memory stays bounded.
* Padding: models whose feature extractor returns an attention mask (``feat_extract_norm=
  "layer"``, e.g. wav2vec2-large-lv60) are batched with padding + mask and give the same frames
  as one-at-a-time. Models without one (wav2vec2-base: group norm over time, trained without
  a mask) would see the zero padding, so by default only windows of identical length share
  a forward pass (``pad_without_attention_mask=False``); set it True to allow padded batches
  whose results then depend slightly on the batch composition.
* Clips shorter than the model's receptive field (400 samples = 25 ms) give no frame: error.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..media import audio_duration, load_audio
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
from .text_hf import _short_name


class HFAudioEncoder(TorchEncoderMixin, Encoder):
    """AutoFeatureExtractor + AutoModel over 16 kHz waveforms; per-frame hidden states.

    Args:
        checkpoint: hub id, local folder or ``package:<distribution>``.
        name: feature-set name; default ``audio.<checkpoint folder name>``.
        layers, layer_pooling: as for HFTextEncoder (0 = output of the feature projection).
        window_seconds: longest piece of audio one forward pass sees (30 s).
        min_window_seconds: a trailing piece shorter than this is merged into the previous window.
        max_batch_seconds: padded seconds of audio per forward pass.
        max_audio_seconds: refuse longer utterances (load_audio's max_seconds guard).
        pad_without_attention_mask: see module docstring.
        resampler: "soxr" or "torchaudio" (passed to load_audio).
        revision, device, precision: as for HFTextEncoder.
    """

    encoder_kind = "hf-audio"
    modality = "audio"
    default_max_cost = 240.0  # padded seconds of audio per batch
    default_max_batch = 32

    def __init__(
        self,
        checkpoint: str,
        name: str | None = None,
        layers: list[int] | int = (-1,),
        layer_pooling: str = "concat",
        window_seconds: float = 30.0,
        min_window_seconds: float = 1.0,
        max_batch_seconds: float = 240.0,
        max_audio_seconds: float = 3600.0,
        pad_without_attention_mask: bool = False,
        resampler: str = "soxr",
        revision: str | None = None,
        device: str | None = None,
        precision: str = "auto",
    ):
        super().__init__()
        from transformers import AutoFeatureExtractor, AutoModel

        if layer_pooling not in LAYER_POOLINGS:
            raise ValueError(f"layer_pooling must be one of {LAYER_POOLINGS}, got {layer_pooling!r}")
        if not 0 < min_window_seconds <= window_seconds <= max_batch_seconds:
            raise ValueError("need 0 < min_window_seconds <= window_seconds <= max_batch_seconds")
        self.checkpoint = str(checkpoint)
        self.resolved = resolve_checkpoint(self.checkpoint)
        self.revision = revision
        self.load_revision, self.commit = resolve_hub_revision(self.resolved, revision)
        self.device = pick_device(device)
        self.precision = precision
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(self.resolved, revision=self.load_revision)
        self.model = self._freeze(AutoModel.from_pretrained(self.resolved, revision=self.load_revision))
        model_config = self.model.config
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.layers = check_layers(layers, model_config.num_hidden_layers + 1, self.checkpoint)
        self.layer_pooling = layer_pooling
        self.uses_attention_mask = bool(getattr(self.feature_extractor, "return_attention_mask", False))
        self.pad_without_attention_mask = bool(pad_without_attention_mask)
        self.hop_samples = int(np.prod(model_config.conv_stride))
        self.receptive_field = _receptive_field(model_config.conv_kernel, model_config.conv_stride)
        self.window_samples = int(round(window_seconds * self.sample_rate))
        self.min_window_samples = int(round(min_window_seconds * self.sample_rate))
        self.max_batch_samples = int(round(max_batch_seconds * self.sample_rate))
        self.max_audio_seconds = max_audio_seconds
        self.resampler = resampler
        hidden = model_config.hidden_size
        self.dim = hidden * len(self.layers) if layer_pooling == "concat" else hidden
        self.frame_rate = self.sample_rate / self.hop_samples
        self.name = name or f"audio.{_short_name(self.checkpoint)}"
        self.config = {"kind": self.encoder_kind, "checkpoint": self.checkpoint, "name": self.name,
                       "layers": self.layers, "layer_pooling": layer_pooling, "window_seconds": window_seconds,
                       "min_window_seconds": min_window_seconds, "max_batch_seconds": max_batch_seconds,
                       "max_audio_seconds": max_audio_seconds,
                       "pad_without_attention_mask": self.pad_without_attention_mask,
                       "resampler": resampler, "revision": revision, "precision": precision}

    # -- CPU side -------------------------------------------------------------------------
    def length_hint(self, utterance: Any) -> float:
        start, end = utterance_field(utterance, "start"), utterance_field(utterance, "end")
        if start is not None and end is not None:
            return max(0.0, float(end) - float(start))
        try:
            duration = audio_duration(utterance_field(utterance, "audio_path"))
        except Exception:  # a bad file fails properly in prepare(); here it only needs a number
            return 1.0
        return max(0.0, (duration or 1.0) - float(start or 0.0))

    def prepare(self, utterance: Any) -> PreparedItem:
        utterance_id = utterance_field(utterance, "utterance_id")
        path = utterance_field(utterance, "audio_path")
        if not path:
            raise EncoderInputError(utterance_id, "no audio_path")
        waveform = load_audio(path, start=utterance_field(utterance, "start"), end=utterance_field(utterance, "end"),
                              sample_rate=self.sample_rate, resampler=self.resampler,
                              max_seconds=self.max_audio_seconds)
        if len(waveform) < self.receptive_field:
            raise EncoderInputError(utterance_id, f"{path}: audio of {len(waveform)} samples is shorter than the "
                                                  f"model's receptive field ({self.receptive_field} samples)")
        info = {"n_samples": len(waveform), "seconds": len(waveform) / self.sample_rate,
                "n_windows": len(self._window_bounds(len(waveform)))}
        return PreparedItem(utterance_id, waveform, info)

    def _window_bounds(self, n_samples: int) -> list[tuple[int, int]]:
        bounds = [(lo, min(lo + self.window_samples, n_samples)) for lo in range(0, n_samples, self.window_samples)]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < self.min_window_samples:
            bounds[-2:] = [(bounds[-2][0], n_samples)]
        return bounds

    # -- model side -----------------------------------------------------------------------
    def encode_batch(self, items: list[PreparedItem]) -> list[np.ndarray]:
        windows = []  # (item index, window index, samples)
        for item_index, item in enumerate(items):
            for window_index, (lo, hi) in enumerate(self._window_bounds(len(item.payload))):
                windows.append((item_index, window_index, item.payload[lo:hi]))
        frames: dict[tuple[int, int], np.ndarray] = {}
        for group in self._forward_groups(windows):
            outputs = self._forward([samples for _, _, samples in group])
            for (item_index, window_index, _), output in zip(group, outputs):
                frames[item_index, window_index] = output
        results = []
        for item_index, item in enumerate(items):
            n_windows = len(self._window_bounds(len(item.payload)))
            results.append(np.concatenate([frames[item_index, w] for w in range(n_windows)], axis=0))
            self.run_stats["utterances"] += 1
            self.run_stats["windows"] += n_windows
        return results

    def _forward_groups(self, windows):
        """Longest-first groups under max_batch_samples of padded audio (equal lengths if no mask)."""
        order = sorted(windows, key=lambda window: -len(window[2]))
        groups, current = [], []
        for window in order:
            longest = len(current[0][2]) if current else len(window[2])
            same_length_needed = not (self.uses_attention_mask or self.pad_without_attention_mask)
            fits = (len(current) + 1) * longest <= self.max_batch_samples
            if current and (not fits or (same_length_needed and len(window[2]) != longest)):
                groups.append(current)
                current = []
            current.append(window)
        if current:
            groups.append(current)
        return groups

    def _forward(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        inputs = self.feature_extractor(waveforms, sampling_rate=self.sample_rate, padding=True,
                                        return_attention_mask=self.uses_attention_mask, return_tensors="pt")
        model_inputs = {"input_values": inputs["input_values"].to(self.device)}
        if self.uses_attention_mask:
            model_inputs["attention_mask"] = inputs["attention_mask"].to(self.device)
        need_all_layers = self.layers != [-1]
        with self._inference():
            output = self.model(**model_inputs, output_hidden_states=need_all_layers)
            hidden = (select_hidden_layers(output.hidden_states, self.layers, self.layer_pooling)
                      if need_all_layers else output.last_hidden_state)
        hidden = hidden.float().cpu().numpy()
        lengths = self.model._get_feat_extract_output_lengths(torch.tensor([len(w) for w in waveforms]))
        return [np.ascontiguousarray(hidden[row, : int(n)]) for row, n in enumerate(lengths)]

    def _provenance(self) -> dict:
        record = hf_checkpoint_provenance(self.checkpoint, self.resolved, self.revision, self.commit,
                                          self.model.config)
        record.update({
            "layers": self.layers,
            "layer_pooling": self.layer_pooling,
            "sample_rate": self.sample_rate,
            "hop_samples": self.hop_samples,
            "attention_mask": self.uses_attention_mask,
            "window_seconds": self.window_samples / self.sample_rate,
            "model_type": self.model.config.model_type,
            "compute_dtype": self._compute_dtype(),
            "device": self.device,
            "libraries": library_versions("torch", "transformers", "av", "soxr"),
        })
        return record


def _receptive_field(kernels, strides) -> int:
    """Samples one output frame of the conv feature encoder sees (400 for wav2vec2)."""
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        field += (kernel - 1) * jump
        jump *= stride
    return field

