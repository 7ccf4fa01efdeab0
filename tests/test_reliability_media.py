"""Reliability of stage-1 media handling: bad files fail alone, with the file and the reason.

Every fault is a real file written into tmp_path (PyAV, the stdlib `wave` module, raw bytes),
decoded by the real loaders (extract.media) and pushed through `encode_utterances` with tiny
random transformers encoders saved to tmp_path, so that one bad utterance is shown to fail
alone while its batch neighbours are encoded exactly as on their own.

Already proven elsewhere (referenced, not repeated): loader-level errors for a missing file,
a WAV with a header and no samples, junk bytes named .wav, NaN samples and an MP4 without
audio (test_media.py::test_bad_audio_raises_media_error_naming_the_file); a missing file,
a 0-frame video, a WAV given as video and junk (test_media.py::
test_bad_video_raises_media_error_naming_the_file); the max_seconds guard and windows that
concatenate to the whole clip (test_media.py::test_max_seconds_guard_refuses_long_audio,
::test_windows_concatenate_to_the_whole_clip); one failing batch retried one by one
(test_encoders.py::test_a_failing_batch_is_retried_one_by_one).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from extract.batching import encode_utterances
from extract.encoders import Utterance, build_encoder
from extract.media import MediaError, iter_audio_windows, load_audio, load_video_frames

REPO_ROOT = Path(__file__).resolve().parent.parent
HIDDEN = 32

# --------------------------------------------------------------------------- writers


def write_pcm_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def write_float_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """32-bit float PCM (the only WAV flavour that can carry NaN)."""
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_f32le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32).reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_video(path: Path, n_frames: int, audio_seconds: float | None = None, faststart: bool = False,
                fps: int = 25, codec: str = "mpeg4") -> Path:
    """Grey frames (level 2*i) and, optionally, an AAC 440 Hz track. faststart puts the index first."""
    container = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    video = container.add_stream(codec, rate=fps)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    if audio_seconds:
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        n = int(16000 * audio_seconds)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)).astype(np.float32)
        for offset in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[None, offset:offset + 1024]),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, offset
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)
    for i in range(n_frames):
        image = np.full((48, 64, 3), (2 * i) % 256, np.uint8)
        for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in video.encode(None):
        container.mux(packet)
    container.close()
    return path


def truncated_copy(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def write_long_flac(path: Path, minutes: float, rate: int = 8000) -> Path:
    """Silence with a 1 s 440 Hz tone every 5 minutes, encoded 10 s at a time (never all in memory)."""
    chunk = rate * 10
    tone = np.round(0.5 * 32767 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.int16)
    with av.open(str(path), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate)
        stream.layout = "mono"
        for k in range(int(minutes * 6)):
            block = np.zeros(chunk, np.int16)
            if k % 30 == 0:
                block[:rate] = tone
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, k * chunk
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_media")
    rng = np.random.default_rng(0)
    files = {
        "good_wav": write_pcm_wav(folder / "good.wav", rng.normal(0, 0.1, 16000)),
        "good_wav_2": write_pcm_wav(folder / "good_2.wav", rng.normal(0, 0.1, 24000), rate=22050),
        "good_mp4": write_video(folder / "good.mp4", 75, audio_seconds=3.0),
        "faststart_mp4": write_video(folder / "faststart.mp4", 125, audio_seconds=5.0, faststart=True),
        "no_audio_mp4": write_video(folder / "no_audio.mp4", 25),
        "zero_frames_mkv": write_video(folder / "zero_frames.mkv", 0, audio_seconds=0.2),
        "header_only_wav": write_pcm_wav(folder / "header_only.wav", np.zeros(0)),
        "nan_wav": write_float_wav(folder / "nan.wav", np.where(np.arange(16000) == 777, np.nan, 0.1)),
        "long_flac": write_long_flac(folder / "thirty_minutes.flac", 30),
    }
    files["truncated_mp4"] = truncated_copy(files["good_mp4"], folder / "truncated.mp4", 0.5)
    files["truncated_faststart_mp4"] = truncated_copy(files["faststart_mp4"], folder / "truncated_faststart.mp4", 0.3)
    files["truncated_wav"] = truncated_copy(files["good_wav"], folder / "truncated.wav", 0.5)
    files["zero_byte_wav"] = folder / "zero_bytes.wav"
    files["zero_byte_wav"].write_bytes(b"")
    files["zero_byte_mp4"] = folder / "zero_bytes.mp4"
    files["zero_byte_mp4"].write_bytes(b"")
    files["junk_wav"] = folder / "junk.wav"
    files["junk_wav"].write_bytes(b"<html>404 Not Found</html>\n" * 40)
    files["missing"] = folder / "does_not_exist.wav"
    return files


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder = tmp_path_factory.mktemp("tiny_w2v")
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True,
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTModel

    folder = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=224, patch_size=32)).save_pretrained(folder)
    return folder


def run_and_split(encoder, utterances, **kwargs):
    results = {r.index: r for r in encode_utterances(encoder, utterances, progress=False, **kwargs)}
    assert sorted(results) == list(range(len(utterances)))  # every utterance comes back exactly once
    return results


# --------------------------------------------------------------------------- audio through the encoder

# (file key, reason the MediaError must give); every one must name its file
BAD_AUDIO = [
    ("truncated_mp4", "not a readable media file"),  # index (moov) at the end was cut off
    ("truncated_faststart_mp4", "audio decode error"),  # index first, data cut off
    ("no_audio_mp4", "no audio stream"),
    ("zero_byte_wav", "empty file (0 bytes)"),
    ("header_only_wav", "zero audio samples"),
    ("nan_wav", "NaN samples"),
    ("junk_wav", "not a readable media file"),
    ("missing", "file not found"),
    ("long_flac", "max_seconds=60"),  # over the encoder's max_audio_seconds guard
]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_each_bad_audio_file_fails_alone_and_the_rest_are_encoded(media, tiny_wav2vec2, num_workers):
    encoder = build_encoder({"kind": "hf-audio", "checkpoint": str(tiny_wav2vec2), "max_audio_seconds": 60},
                            device="cpu")
    good = ["good_wav", "good_mp4", "good_wav_2"]
    keys = [good[0]] + [k for k, _ in BAD_AUDIO[:5]] + [good[1]] + [k for k, _ in BAD_AUDIO[5:]] + [good[2]]
    utterances = [Utterance(f"utt-{key}", audio_path=str(media[key])) for key in keys]
    results = run_and_split(encoder, utterances, num_workers=num_workers, max_cost=20.0, max_batch=4)
    reasons = dict(BAD_AUDIO)
    for index, key in enumerate(keys):
        result = results[index]
        if key in good:
            assert result.ok, result.reason
            alone = encoder.encode([utterances[index]])[0]
            np.testing.assert_allclose(result.features, alone, atol=1e-4)
        else:
            assert not result.ok and isinstance(result.error, MediaError), (key, result.reason)
            assert result.error.path == str(media[key])
            assert str(media[key]) in result.reason and reasons[key] in result.reason, (key, result.reason)


def test_each_bad_video_file_fails_alone_and_the_rest_are_encoded(media, tiny_vit):
    encoder = build_encoder({"kind": "hf-video", "checkpoint": str(tiny_vit)}, device="cpu")
    cases = [
        ("good_mp4", None),
        ("truncated_mp4", "not a readable media file"),
        ("zero_frames_mkv", "video has zero frames"),
        ("good_wav", "no video stream"),
        ("zero_byte_mp4", "empty file (0 bytes)"),
        ("junk_wav", "not a readable media file"),
        ("missing", "file not found"),
        ("faststart_mp4", None),
    ]
    utterances = [Utterance(f"utt-{key}", video_path=str(media[key])) for key, _ in cases]
    results = run_and_split(encoder, utterances, max_cost=4, max_batch=4)
    for index, (key, reason) in enumerate(cases):
        result = results[index]
        if reason is None:
            assert result.ok and result.features.shape == (8, HIDDEN), result.reason
            np.testing.assert_allclose(result.features, encoder.encode([utterances[index]])[0], atol=1e-4)
        else:
            assert not result.ok and isinstance(result.error, MediaError), (key, result.reason)
            assert str(media[key]) in result.reason and reason in result.reason, (key, result.reason)


# --------------------------------------------------------------------------- truncation FFmpeg does not report


def test_truncated_video_with_index_first_is_an_error(media):
    path = media["truncated_faststart_mp4"]  # header still says 125 frames; only ~30% of the data is there
    with pytest.raises(MediaError, match="truncated|past the end|frames") as caught:
        load_video_frames(path)
    assert caught.value.path == str(path) and "could not be decoded" in caught.value.reason


def test_truncated_wav_is_an_error(media):
    assert len(load_audio(media["good_wav"])) == 16000
    with pytest.raises(MediaError, match="truncated|shorter") as caught:
        load_audio(media["truncated_wav"])
    assert caught.value.path == str(media["truncated_wav"])
    assert caught.value.reason == "truncated file: header promises 16000 samples, found 7989"
    with pytest.raises(MediaError, match="header promises 16000 samples"):  # streaming reader too
        list(iter_audio_windows(media["truncated_wav"], window_seconds=0.1))
    assert len(load_audio(media["truncated_wav"], end=0.25)) == 4000  # a segment before the cut is intact


# --------------------------------------------------------------------------- permissions

PERMISSION_SCRIPT = """
    import json, sys
    import numpy as np
    from extract.batching import encode_utterances
    from extract.encoders import Encoder, PreparedItem, Utterance
    from extract.media import MediaError, load_audio, load_video_frames

    class WaveformStats(Encoder):  # the real loader in prepare(); no model needed to test isolation
        encoder_kind, modality = "test", "audio"
        def __init__(self):
            super().__init__()
            self.name, self.dim, self.frame_rate, self.config = "audio.stats", 2, "utterance", {}
        def prepare(self, utterance):
            waveform = load_audio(utterance.audio_path)
            return PreparedItem(utterance.utterance_id, waveform)
        def encode_batch(self, items):
            return [np.array([[item.payload.mean(), item.payload.std()]], np.float32) for item in items]
        def _provenance(self):
            return {}

    good, locked = sys.argv[1:3]
    out = {}
    for name, load in (("audio", load_audio), ("video", load_video_frames)):
        try:
            load(locked)
            out[name] = "no error"
        except MediaError as error:
            out[name] = str(error)
    utterances = [Utterance("good", audio_path=good), Utterance("locked", audio_path=locked)]
    results = {r.index: r for r in encode_utterances(WaveformStats(), utterances, progress=False)}
    out["encode"] = [[r.ok, r.reason] for _, r in sorted(results.items())]
    print(json.dumps(out))
"""


def _without_file_permission_override() -> list[str] | None:
    """Command prefix under which this process's user cannot read a mode-000 file, or None."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    probe = subprocess.run(prefix + ["true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


@pytest.mark.slow
def test_unreadable_file_fails_alone_naming_the_file(media, tmp_path):
    prefix = _without_file_permission_override()
    if prefix is None:
        pytest.skip("running as root without a usable `setpriv` to drop CAP_DAC_OVERRIDE: root reads mode-000 files")
    locked = tmp_path / "locked.wav"
    shutil.copy(media["good_wav"], locked)
    locked.chmod(0)
    script = tmp_path / "permission_check.py"
    script.write_text(textwrap.dedent(PERMISSION_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(prefix + [sys.executable, str(script), str(media["good_wav"]), str(locked)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("audio", "video"):
        assert out[name] == f"{locked}: permission denied (file is not readable)"
    (good_ok, good_reason), (locked_ok, locked_reason) = out["encode"]
    assert good_ok, good_reason
    assert not locked_ok and str(locked) in locked_reason and "permission denied" in locked_reason


# --------------------------------------------------------------------------- a 30-minute clip, bounded memory

MEMORY_SCRIPT = """
    import json, resource, sys
    import numpy as np
    from extract.media import MediaError, audio_duration, iter_audio_windows, load_audio

    path = sys.argv[1]
    peak_mb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.zeros(1)
    base = peak_mb()
    try:
        load_audio(path, max_seconds=60)
        guard = "no error"
    except MediaError as error:
        guard = str(error)
    after_guard = peak_mb()
    n_samples, loud_windows, n_windows = 0, [], 0
    for index, window in enumerate(iter_audio_windows(path, window_seconds=30.0)):
        n_samples += len(window)
        n_windows += 1
        if np.abs(window).max() > 0.1:
            loud_windows.append(index)
    print(json.dumps({"duration": audio_duration(path), "guard": guard, "guard_growth_mb": after_guard - base,
                      "windows_growth_mb": peak_mb() - base, "n_samples": n_samples, "n_windows": n_windows,
                      "loud_windows": loud_windows}))
"""


@pytest.mark.slow
def test_thirty_minute_clip_streams_in_bounded_memory(media, tmp_path):
    script = tmp_path / "memory_check.py"
    script.write_text(textwrap.dedent(MEMORY_SCRIPT))
    proc = subprocess.run([sys.executable, str(script), str(media["long_flac"])], cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["duration"] == pytest.approx(1800.0)
    # the guard refuses early: it never holds more than ~60 s of audio (3.8 MB at 16 kHz float32)
    assert str(media["long_flac"]) in out["guard"] and "max_seconds=60" in out["guard"]
    assert out["guard_growth_mb"] < 20
    # every sample comes out, in 30 s windows, at 16 kHz, with the tones where they were written
    assert out["n_samples"] == 1800 * 16000 and out["n_windows"] == 60
    assert out["loud_windows"] == [0, 10, 20, 30, 40, 50]
    # the whole waveform would be 115 MB; streaming stays far below
    assert out["windows_growth_mb"] < 40, out
