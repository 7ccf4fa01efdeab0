"""Speech-like audio for the demo corpus: a source-filter vowel synthesiser with emotional prosody.

Not speech recognisable as words, but it has what emotion-from-voice models key on:
a harmonic voiced source whose pitch level, contour and range depend on the emotion
(joy high and rising, sadness low and falling, fear high with a 7 Hz tremor), a syllable-rate
amplitude envelope (speaking rate), loudness, spectral tilt (tense voices have stronger
high harmonics), breathiness (aspiration noise), consonant-like noise bursts at syllable
onsets, and three formant resonances per vowel scaled by the speaker's vocal-tract length.

Numbers follow the direction of the classic acoustic findings (Scherer 2003; Banse & Scherer
1996: anger/joy/fear raise F0 and rate, sadness lowers F0, rate and intensity); the exact
values are ours and only need to make emotions separable, not realistic.
Each `Prosody` value is the full-intensity target; an utterance with intensity i in [0, 1]
uses neutral + i * (target - neutral), so weak expressions sit close to neutral.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16_000
MIN_DURATION_S = 1.0
MAX_DURATION_S = 4.0
SYLLABLES_PER_WORD = 1.3
_EDGE_SILENCE_S = 0.1          # leading/trailing silence inside each clip
_HARMONIC_CEILING_HZ = 4_500   # harmonics above this are left out (keeps us far from 8 kHz Nyquist)
_BACKGROUND_NOISE_RMS = 0.002  # room noise, about -54 dBFS


@dataclass(frozen=True)
class Voice:
    """A speaker's voice: base pitch and vocal-tract length (formant scale, 1.0 = adult male)."""

    base_f0_hz: float
    formant_scale: float
    loudness: float = 1.0


@dataclass(frozen=True)
class Prosody:
    pitch_factor: float      # F0 level relative to the speaker's base pitch
    pitch_slope_oct: float   # F0 change over the utterance, in octaves (+ rising)
    pitch_range_st: float    # per-syllable accent excursions, in semitones
    syllable_rate_hz: float  # speaking rate
    rms: float               # loudness of voiced parts (linear, full scale = 1)
    spectral_tilt: float     # harmonic k has amplitude k**-tilt (low = bright, tense)
    breathiness: float       # aspiration noise relative to the voiced source
    tremor_depth_st: float   # depth of a 7 Hz pitch tremor, in semitones


PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(1.00, -0.10, 1.5, 4.0, 0.060, 1.6, 0.05, 0.0),
    "joy": Prosody(1.30, 0.25, 4.0, 4.8, 0.095, 1.3, 0.05, 0.0),
    "surprise": Prosody(1.40, 0.60, 5.0, 4.4, 0.100, 1.3, 0.08, 0.0),
    "anger": Prosody(1.20, -0.20, 3.5, 5.6, 0.180, 0.9, 0.03, 0.0),
    "sadness": Prosody(0.85, -0.35, 0.8, 2.8, 0.035, 2.1, 0.20, 0.0),
    "disgust": Prosody(0.92, -0.25, 2.0, 3.2, 0.070, 1.8, 0.12, 0.0),
    "fear": Prosody(1.35, 0.10, 2.5, 5.2, 0.055, 1.5, 0.18, 0.6),
}

# (F1, F2, F3) in Hz for an adult male vocal tract (Peterson & Barney 1952, rounded).
VOWEL_FORMANTS_HZ = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))
_FORMANT_BANDWIDTHS_HZ = (90, 110, 160)


def prosody_for(emotion: str, intensity: float) -> Prosody:
    """Prosody of `emotion` at `intensity` (0 = neutral, 1 = the full PROSODY target)."""
    if emotion not in PROSODY:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {sorted(PROSODY)}")
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"intensity {intensity} is outside [0, 1]")
    neutral, target = PROSODY["neutral"], PROSODY[emotion]
    return Prosody(**{
        f.name: getattr(neutral, f.name) + intensity * (getattr(target, f.name) - getattr(neutral, f.name))
        for f in fields(Prosody)
    })


def speech_duration(n_words: int, prosody: Prosody) -> float:
    """Clip length for a line of `n_words` words at this speaking rate, within [1, 4] s."""
    speaking = SYLLABLES_PER_WORD * n_words / prosody.syllable_rate_hz
    return float(np.clip(speaking + 2 * _EDGE_SILENCE_S, MIN_DURATION_S, MAX_DURATION_S))


def synthesize_speech(
    rng: np.random.Generator, prosody: Prosody, voice: Voice, duration_s: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Mono float32 waveform in [-1, 1] of `duration_s` seconds of syllables spoken with `prosody`."""
    if not MIN_DURATION_S <= duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration {duration_s} s is outside [{MIN_DURATION_S}, {MAX_DURATION_S}] s")
    n = int(round(duration_s * sample_rate))
    t = np.arange(n) / sample_rate
    syllables = _syllable_schedule(rng, prosody.syllable_rate_hz, duration_s)

    voicing = np.zeros(n)       # amplitude envelope of the vowel nuclei
    onsets = np.zeros(n)        # envelope of consonant-like bursts
    vowel_of_sample = np.zeros(n, dtype=int)
    for start, end, stress, vowel in syllables:
        a, b = int(start * sample_rate), int(end * sample_rate)
        burst = max(1, int(0.2 * (b - a)))
        x = np.linspace(0.0, 1.0, b - a - burst, endpoint=False)
        voicing[a + burst:b] = stress * np.sin(np.pi * x) ** 0.7
        onsets[a:a + burst] = stress * np.hanning(burst)
        vowel_of_sample[a:b] = vowel

    f0 = _pitch_contour(rng, prosody, voice, syllables, t, duration_s)
    source = _harmonic_source(f0, prosody.spectral_tilt, sample_rate)
    source = source / (np.std(source) + 1e-9)
    source += prosody.breathiness * 1.5 * rng.standard_normal(n)
    voiced = _apply_vowel_formants(source * voicing, vowel_of_sample, voice.formant_scale, sample_rate)

    # Consonant-like bursts: high-passed noise (first difference of white noise).
    consonants = np.diff(rng.standard_normal(n + 1)) * onsets * 0.25

    speech_level = np.sqrt(np.mean(voiced[voicing > 0.1] ** 2)) if np.any(voicing > 0.1) else 1.0
    gain = prosody.rms * voice.loudness * rng.uniform(0.9, 1.1) / (speech_level + 1e-9)
    wave = gain * (voiced + consonants) + _BACKGROUND_NOISE_RMS * rng.standard_normal(n)
    return np.clip(wave, -0.99, 0.99).astype(np.float32)


def _syllable_schedule(rng: np.random.Generator, rate_hz: float, duration_s: float) -> list[tuple[float, float, float, int]]:
    """(start_s, end_s, stress, vowel index) per syllable, with short phrase pauses."""
    syllables = []
    t, end = _EDGE_SILENCE_S * rng.uniform(0.6, 1.0), duration_s - _EDGE_SILENCE_S
    phrase_start = True
    while t < end - 0.06:
        length = min(rng.uniform(0.75, 1.25) / rate_hz, end - t)
        stress = 1.0 if phrase_start else rng.uniform(0.55, 0.95)
        syllables.append((t, t + length, stress, int(rng.integers(len(VOWEL_FORMANTS_HZ)))))
        t += length
        phrase_start = rng.random() < 0.18
        if phrase_start:
            t += rng.uniform(0.08, 0.2)
    return syllables


def _pitch_contour(rng, prosody: Prosody, voice: Voice, syllables, t: np.ndarray, duration_s: float) -> np.ndarray:
    """F0 in Hz per sample: level * global slope * syllable accents * tremor * slight jitter."""
    centres = [0.5 * (s + e) for s, e, _, _ in syllables] or [duration_s / 2]
    accents = rng.uniform(-1.0, 1.0, len(centres)) * prosody.pitch_range_st
    semitones = np.interp(t, centres, accents)
    semitones += 12.0 * prosody.pitch_slope_oct * (t / duration_s - 0.5)
    semitones += prosody.tremor_depth_st * np.sin(2 * np.pi * 7.0 * t + rng.uniform(0, 2 * np.pi))
    jitter = _moving_average(rng.standard_normal(len(t)), 400)  # ~25 ms smoothing
    semitones += 2.0 * jitter
    return voice.base_f0_hz * prosody.pitch_factor * 2.0 ** (semitones / 12.0)


def _harmonic_source(f0: np.ndarray, tilt: float, sample_rate: int) -> np.ndarray:
    """Sum of harmonics k*f0 with amplitude k**-tilt, read from a one-period wavetable.

    The table holds as many harmonics as fit under the ceiling at the highest F0 of the
    utterance, so nothing aliases; a wavetable is ~10x faster than summing sines per sample.
    """
    phase = np.mod(2 * np.pi * np.cumsum(f0) / sample_rate, 2 * np.pi)
    n_harmonics = max(1, int(_HARMONIC_CEILING_HZ / f0.max()))
    grid = np.linspace(0.0, 2 * np.pi, 2048, endpoint=False)
    k = np.arange(1, n_harmonics + 1)[:, None]
    table = np.sum(k ** -tilt * np.sin(k * grid[None, :]), axis=0)
    return np.interp(phase, grid, table, period=2 * np.pi)


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average of `width` samples (zero-padded ends), via a cumulative sum."""
    padded = np.concatenate([np.zeros(width // 2 + 1), x, np.zeros(width - width // 2)])
    sums = np.cumsum(padded)
    return (sums[width:width + len(x)] - sums[:len(x)]) / width


def _apply_vowel_formants(excitation: np.ndarray, vowel_of_sample: np.ndarray, formant_scale: float, sample_rate: int) -> np.ndarray:
    """Filter through each vowel's formants and pick, per sample, the syllable's vowel.

    Each vowel's filter is a cascade of three two-pole resonators (Klatt 1980) times a
    first-difference lip-radiation term, applied as its exact frequency response on the FFT
    of the whole clip (zero-padded by 50 ms, far longer than the resonances ring). We do
    this with numpy rather than scipy.signal.lfilter because importing scipy.signal alone
    takes ~1.5 s, as long as generating a small corpus.
    The vowel masks are smoothed over 20 ms so vowel changes glide instead of clicking, and
    each vowel output is normalised to equal RMS so vowel choice does not change loudness.
    """
    n = len(excitation)
    n_fft = 1 << int(np.ceil(np.log2(n + 0.05 * sample_rate)))
    spectrum = np.fft.rfft(excitation, n_fft)
    out = np.zeros_like(excitation)
    for index, response in enumerate(_vowel_responses(formant_scale, n_fft, sample_rate)):
        filtered = np.fft.irfft(spectrum * response, n_fft)[:n]
        filtered /= np.sqrt(np.mean(filtered**2)) + 1e-12
        mask = _moving_average((vowel_of_sample == index).astype(float), int(0.02 * sample_rate))
        out += mask * filtered
    return out


@lru_cache(maxsize=16)  # a few speakers x two FFT sizes; each entry ~1 MB
def _vowel_responses(formant_scale: float, n_fft: int, sample_rate: int) -> tuple[np.ndarray, ...]:
    """Frequency response per vowel on the rfft grid: lip radiation / three formant resonators."""
    delay = np.exp(-2j * np.pi * np.fft.rfftfreq(n_fft, 1.0 / sample_rate) / sample_rate)  # z**-1 on the unit circle
    responses = []
    for formants in VOWEL_FORMANTS_HZ:
        response = 1.0 - delay
        for freq, bandwidth in zip(formants, _FORMANT_BANDWIDTHS_HZ):
            radius = np.exp(-np.pi * bandwidth / sample_rate)
            theta = 2 * np.pi * freq * formant_scale / sample_rate
            response /= 1.0 - 2 * radius * np.cos(theta) * delay + radius**2 * delay**2
        responses.append(response.astype(np.complex64))
    return tuple(responses)
