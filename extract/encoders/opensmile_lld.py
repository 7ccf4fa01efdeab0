"""eGeMAPS acoustic descriptors through audEERING's ``opensmile`` package.

A knowledge-based baseline next to Wav2Vec2 (eGeMAPS is the standard minimal set for
affective speech, Eyben et al. 2016):

* ``feature_level="lld"``: the 25 low-level descriptors (loudness, F0, jitter, shimmer,
  formants, ...) at 100 Hz (10 ms hop; 20/60 ms windows), ``frame_rate = 100.0``.
  About 196 frames for 2 s of audio.
* ``feature_level="functionals"``: the 88 utterance-level functionals, one row per
  utterance, ``frame_rate = "utterance"``, ``pooling = "functionals"``.

The waveform is the utterance's audio decoded by :func:`extract.media.load_audio` to mono at
the file's own sample rate (``sample_rate="native"``, the default): openSMILE's feature sets
are defined on the signal as recorded, and resampling EmoDB's 22.05 kHz files to 16 kHz moved
some eGeMAPS values many-fold and cost an eGeMAPS+SVM baseline UAR on unseen speakers
(issue 18). ``sample_rate=16000`` (any positive integer) resamples first, as Wav2Vec2's input
is, with ``resampler``. ``Smile.process_signal`` runs inside ``prepare`` because it is pure
CPU work that DataLoader workers can parallelise; ``encode_batch`` only hands the arrays over.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..media import audio_duration, audio_sample_rate, load_audio
from .base import Encoder, EncoderInputError, PreparedItem, library_versions, sha256_file, utterance_field

FEATURE_LEVELS = ("lld", "functionals")
NATIVE = "native"  # sample_rate: the file's own rate, no resampling


class OpenSmileEncoder(Encoder):
    """eGeMAPSv02 LLDs (T, 25) at 100 Hz or functionals (1, 88).

    Args:
        feature_level: "lld" or "functionals".
        feature_set: an ``opensmile.FeatureSet`` member name ("eGeMAPSv02" default,
            "GeMAPSv01b", "ComParE_2016", ...).
        name: feature-set name; default ``audio.<feature_set lowercased>-<feature_level>``.
        sample_rate: "native" (default: the file's own rate, no resampling) or a rate in Hz
            the audio is resampled to first (e.g. 16000).
        max_audio_seconds: refuse longer utterances (load_audio guard).
        resampler: "soxr" or "torchaudio".
    """

    encoder_kind = "opensmile"
    modality = "audio"
    default_max_cost = 600.0  # seconds of audio per batch (no padding, cost is only I/O)
    default_max_batch = 64
    _worker_excluded = ()

    def __init__(
        self,
        feature_level: str = "lld",
        feature_set: str = "eGeMAPSv02",
        name: str | None = None,
        sample_rate: int | str = NATIVE,
        max_audio_seconds: float = 3600.0,
        resampler: str = "soxr",
    ):
        super().__init__()
        import opensmile

        if feature_level not in FEATURE_LEVELS:
            raise ValueError(f"feature_level must be one of {FEATURE_LEVELS}, got {feature_level!r}")
        if not hasattr(opensmile.FeatureSet, feature_set):
            known = [member.name for member in opensmile.FeatureSet]
            raise ValueError(f"unknown opensmile feature_set {feature_set!r}; known: {known}")
        level = opensmile.FeatureLevel.LowLevelDescriptors if feature_level == "lld" else opensmile.FeatureLevel.Functionals
        self.smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set), feature_level=level)
        self.feature_level = feature_level
        self.feature_set = feature_set
        if sample_rate != NATIVE and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1):
            raise ValueError(f"sample_rate must be {NATIVE!r} (the file's own rate) or a positive integer in Hz, got {sample_rate!r}")
        self.sample_rate = sample_rate
        self.max_audio_seconds = max_audio_seconds
        self.resampler = resampler
        self.feature_names = list(self.smile.feature_names)
        self.dim = len(self.feature_names)
        self.frame_rate = 100.0 if feature_level == "lld" else "utterance"
        self.name = name or f"audio.{feature_set.lower()}-{feature_level}"
        self.config = {"kind": self.encoder_kind, "feature_level": feature_level, "feature_set": feature_set,
                       "name": self.name, "sample_rate": self.sample_rate,
                       "max_audio_seconds": max_audio_seconds, "resampler": resampler}

    def length_hint(self, utterance: Any) -> float:
        start, end = utterance_field(utterance, "start"), utterance_field(utterance, "end")
        if start is not None and end is not None:
            return max(0.0, float(end) - float(start))
        try:
            return audio_duration(utterance_field(utterance, "audio_path")) or 1.0
        except Exception:  # reported properly by prepare()
            return 1.0

    def prepare(self, utterance: Any) -> PreparedItem:
        utterance_id = utterance_field(utterance, "utterance_id")
        path = utterance_field(utterance, "audio_path")
        if not path:
            raise EncoderInputError(utterance_id, "no audio_path")
        # Native: decoding at the header's rate makes load_audio pass the samples through unresampled.
        rate = audio_sample_rate(path) if self.sample_rate == NATIVE else self.sample_rate
        waveform = load_audio(path, start=utterance_field(utterance, "start"), end=utterance_field(utterance, "end"),
                              sample_rate=rate, resampler=self.resampler,
                              max_seconds=self.max_audio_seconds)
        features = self.smile.process_signal(waveform, rate).to_numpy(dtype=np.float32)
        if features.shape[0] == 0:
            raise EncoderInputError(utterance_id, f"{path}: audio of {len(waveform)} samples is too short "
                                                  "for one openSMILE frame (60 ms)")
        if not np.isfinite(features).all():
            raise EncoderInputError(utterance_id, f"{path}: openSMILE returned non-finite values")
        return PreparedItem(utterance_id, np.ascontiguousarray(features),
                            {"n_samples": len(waveform), "n_frames": features.shape[0], "sample_rate": rate})

    def encode_batch(self, items: list[PreparedItem]) -> list[np.ndarray]:
        self.run_stats["utterances"] += len(items)
        return [item.payload for item in items]

    def provenance(self) -> dict:
        record = super().provenance()
        if self.feature_level == "functionals":
            record["pooling"] = "functionals"
        return record

    def _provenance(self) -> dict:
        import opensmile

        return {
            "checkpoint": f"opensmile:{self.feature_set}/{self.feature_level}",
            "revision": opensmile.__version__,
            "weights_sha256": None,
            "layers": None,
            "feature_names": self.feature_names,
            "config_file": os.path.basename(self.smile.config_path),
            "config_sha256": sha256_file(self.smile.config_path),
            "sample_rate": self.sample_rate,
            "libraries": library_versions("opensmile", "av", "soxr"),
        }
