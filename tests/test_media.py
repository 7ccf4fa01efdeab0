"""extract.media: audio decoding/resampling and video frame sampling on files the tests write.

Media fixtures are written with PyAV (and the stdlib ``wave`` module) into a temporary folder,
so the expected samples/frames are known exactly.
"""
from __future__ import annotations

import logging
import os
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import soxr

from extract.media import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MediaError,
    audio_duration,
    iter_audio_windows,
    load_audio,
    load_video_frames,
    sample_frame_timestamps,
)

# --------------------------------------------------------------------------- writers


def write_wav(path: Path, samples: np.ndarray, rate: int, codec: str = "pcm_s16le") -> Path:
    """samples: (n, channels) float in [-1, 1]; codec pcm_s16le (int16) or pcm_f32le (float)."""
    samples = np.asarray(samples, dtype=np.float32)
    channels = samples.shape[1]
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono" if channels == 1 else "stereo"
        if codec == "pcm_s16le":
            data, sample_format = np.round(samples * 32767).astype(np.int16), "s16"
        else:
            data, sample_format = samples, "flt"
        frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format=sample_format, layout=stream.layout.name)
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_flac(path: Path, samples: np.ndarray, rate: int) -> Path:
    data = np.round(np.asarray(samples) * 32767).astype(np.int16)
    with av.open(str(path), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate)
        stream.layout = "stereo" if data.shape[1] == 2 else "mono"
        frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout=stream.layout.name)
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_video(path: Path, colours, fps: int = 25, audio_seconds: float | None = None,
                size=(64, 48), container_format: str | None = None, codec: str = "libx264") -> Path:
    """One frame per RGB colour in ``colours``; optional AAC stereo 440 Hz track."""
    container = av.open(str(path), "w", format=container_format)
    video = container.add_stream(codec, rate=fps)
    video.width, video.height = size
    video.pix_fmt = "yuv420p"
    if codec == "libx264":
        video.options = {"crf": "0"}
    if audio_seconds:
        audio = container.add_stream("aac", rate=44100)
        audio.layout = "stereo"
        n = int(44100 * audio_seconds)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 44100)).astype(np.float32)
        for offset in range(0, n, 1024):
            chunk = np.ascontiguousarray(np.stack([tone[offset:offset + 1024]] * 2))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 44100, offset
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)
    for colour in colours:
        image = np.empty((size[1], size[0], 3), np.uint8)
        image[...] = colour
        for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in video.encode(None):
        container.mux(packet)
    container.close()
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    files: dict[str, Path] = {}
    seconds = np.arange(int(22050 * 2.0)) / 22050
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * seconds), 0.25 * np.sin(2 * np.pi * 660 * seconds)], axis=1)
    files["stereo_wav"] = write_wav(folder / "stereo_22k.wav", stereo, 22050)
    files["flac"] = write_flac(folder / "stereo_22k.flac", stereo, 22050)
    files["long_float_wav"] = write_wav(folder / "long.wav", rng.uniform(-0.5, 0.5, (22050 * 8, 2)), 22050, "pcm_f32le")
    nan = np.zeros((16000, 1), np.float32)
    nan[1234] = np.nan
    files["nan_wav"] = write_wav(folder / "nan.wav", nan, 16000, "pcm_f32le")
    files["zero_wav"] = folder / "zero_length.wav"
    with wave.open(str(files["zero_wav"]), "wb") as handle:  # a valid header and no samples
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(b"")
    files["junk_wav"] = folder / "junk.wav"
    files["junk_wav"].write_bytes(b"definitely not RIFF audio, just text " * 50)
    # 125 frames at 25 fps (5 s) whose grey level encodes the frame index (2 * index).
    files["ramp_mp4"] = write_video(folder / "ramp.mp4", [(2 * i,) * 3 for i in range(125)], audio_seconds=5.0)
    files["constant_mp4"] = write_video(folder / "constant.mp4", [(200, 100, 50)] * 25)
    files["silent_mp4"] = write_video(folder / "no_audio.mp4", [(10, 10, 10)] * 10)
    files["three_frames_mp4"] = write_video(folder / "three.mp4", [(0,) * 3, (100,) * 3, (200,) * 3])
    files["zero_frames_mkv"] = write_video(folder / "zero_frames.mkv", [], audio_seconds=0.1, codec="mpeg4")
    return files


def grey_index(frames_0_1: np.ndarray) -> np.ndarray:
    """Frame index encoded in the ramp video's grey level."""
    return frames_0_1.mean(axis=(1, 2, 3)) * 255.0 / 2.0


# --------------------------------------------------------------------------- audio


def test_stereo_22k_wav_becomes_16k_mono_of_the_right_length(media):
    waveform = load_audio(media["stereo_wav"])
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert len(waveform) == 32000  # 2.0 s at 16 kHz
    seconds = np.arange(44100) / 22050
    mono_22k = ((0.5 * np.sin(2 * np.pi * 440 * seconds) + 0.25 * np.sin(2 * np.pi * 660 * seconds)) / 2)
    expected = soxr.resample(mono_22k.astype(np.float32), 22050, 16000, quality="HQ")
    np.testing.assert_allclose(waveform, expected, atol=2e-4)  # int16 quantisation


def test_flac_and_wav_decode_to_the_same_samples(media):
    np.testing.assert_allclose(load_audio(media["flac"]), load_audio(media["stereo_wav"]), atol=1e-6)
    assert audio_duration(media["flac"]) == pytest.approx(2.0)


def test_start_end_cut_is_sample_exact_with_and_without_seeking(media):
    path = media["long_float_wav"]
    full = load_audio(path, sample_rate=22050)  # native rate: no resampling, exact comparison
    assert len(full) == 22050 * 8
    early = load_audio(path, start=0.5, end=1.25, sample_rate=22050)  # decoded from the start
    np.testing.assert_array_equal(early, full[round(0.5 * 22050):round(1.25 * 22050)])
    late = load_audio(path, start=5.3, end=7.1, sample_rate=22050)  # seeks (start >= 2 s)
    np.testing.assert_array_equal(late, full[round(5.3 * 22050):round(7.1 * 22050)])
    assert len(load_audio(path, start=5.3, end=7.1)) == pytest.approx(1.8 * 16000, abs=1)


def test_windows_concatenate_to_the_whole_clip(media):
    path = media["long_float_wav"]
    windows = list(iter_audio_windows(path, window_seconds=3.0))
    assert [len(w) for w in windows] == [48000, 48000, 32000]
    np.testing.assert_array_equal(np.concatenate(windows), load_audio(path))


def test_max_seconds_guard_refuses_long_audio(media):
    with pytest.raises(MediaError, match="max_seconds"):
        load_audio(media["long_float_wav"], max_seconds=5.0)
    with pytest.raises(MediaError, match="max_seconds"):
        load_audio(media["long_float_wav"], start=0.0, end=7.0, max_seconds=5.0)


def test_bad_segments_are_errors(media):
    path = media["long_float_wav"]
    with pytest.raises(MediaError, match="past the end"):
        load_audio(path, start=1.0, end=12.0)
    with pytest.raises(MediaError, match="no audio samples"):
        load_audio(path, start=9.0)
    with pytest.raises(MediaError, match="empty segment"):
        load_audio(path, start=3.0, end=2.0)
    assert len(load_audio(path, start=7.0, end=8.3)) == 16000  # small overshoot is clamped


def test_torchaudio_resampler_is_never_replaced_silently(media):
    try:
        import torchaudio  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torchaudio"):
            load_audio(media["stereo_wav"], resampler="torchaudio")
    else:
        assert len(load_audio(media["stereo_wav"], resampler="torchaudio")) == 32000
    with pytest.raises(ValueError, match="resampler"):
        load_audio(media["stereo_wav"], resampler="librosa")


def test_audio_track_of_an_mp4(media):
    waveform = load_audio(media["ramp_mp4"])
    assert abs(len(waveform) - 5.0 * 16000) < 0.05 * 16000  # AAC adds a few ms of padding
    spectrum = np.abs(np.fft.rfft(waveform[16000:32000]))
    assert np.argmax(spectrum) == pytest.approx(440, abs=2)  # 1 s window: bin = Hz
    assert np.abs(waveform).max() == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("missing", "file not found"),
        ("zero_wav", "zero audio samples"),
        ("junk_wav", "not a readable media file"),
        ("nan_wav", "NaN samples"),
        ("silent_mp4", "no audio stream"),
    ],
)
def test_bad_audio_raises_media_error_naming_the_file(media, tmp_path, name, reason):
    path = tmp_path / "missing.wav" if name == "missing" else media[name]
    with pytest.raises(MediaError) as caught:
        load_audio(path)
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value) and reason in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without read permission")
def test_unreadable_file(media, tmp_path):
    path = tmp_path / "locked.wav"
    path.write_bytes(media["stereo_wav"].read_bytes())
    path.chmod(0)
    with pytest.raises(MediaError, match="permission denied"):
        load_audio(path)


@pytest.mark.parametrize("name", ["stereo_wav", "long_float_wav", "zero_wav"])
def test_wav_small_probe_reads_what_ffmpegs_default_probe_reads(media, name, monkeypatch):
    """WAVs open with FFmpeg's smallest probe (their header holds every stream parameter): the
    duration and every decoded, resampled sample must equal those of the default 5 MB probe."""
    import extract.media.audio as audio

    def read():
        samples = load_audio(media[name]) if name != "zero_wav" else None
        return audio_duration(media[name]), audio.audio_sample_rate(media[name]), samples

    small = read()
    monkeypatch.setattr(audio, "_WAV_PROBE", {})
    default = read()
    assert small[:2] == default[:2]
    assert (small[2] is None and default[2] is None) or np.array_equal(small[2], default[2])


def test_emodb_files_read_the_same_with_the_small_probe(emodb_dir, monkeypatch):
    import extract.media.audio as audio

    paths = sorted((emodb_dir / "wav").glob("*.wav"))[:5]
    small = [load_audio(p) for p in paths]
    monkeypatch.setattr(audio, "_WAV_PROBE", {})
    assert all(np.array_equal(a, load_audio(p)) for a, p in zip(small, paths))


def test_emodb_file_is_2s_at_16k(emodb_dir):
    path = sorted((emodb_dir / "wav").glob("*.wav"))[0]
    waveform = load_audio(path)
    assert len(waveform) == 32000 and np.isfinite(waveform).all() and waveform.std() > 1e-3


# --------------------------------------------------------------------------- video


def test_timestamps_rule():
    centred = sample_frame_timestamps(0.0, 10.0, 8, 2.0)
    np.testing.assert_allclose(centred, 5.0 + (np.arange(8) - 3.5) * 0.5)
    spread = sample_frame_timestamps(1.0, 3.0, 8, 2.0)  # 2 s < 4 s: spread over the clip
    np.testing.assert_allclose(spread, 1.0 + (np.arange(8) + 0.5) * 2.0 / 8)


def test_long_clip_frames_are_centred_at_2fps(media):
    frames, info = load_video_frames(media["ramp_mp4"], normalize="none", return_info=True)
    assert frames.shape == (8, 3, 224, 224) and frames.dtype == np.float32
    expected = [int(np.floor((2.5 + (k - 3.5) * 0.5) * 25)) for k in range(8)]  # 0.75 s ... 4.25 s
    assert info["frame_indices"] == expected and info["reader"] == "decord"
    np.testing.assert_allclose(grey_index(frames), expected, atol=1.0)  # the decoded frames are those


def test_short_clip_frames_spread_and_repeat(media):
    frames, info = load_video_frames(media["ramp_mp4"], start=1.0, end=2.0, normalize="none", return_info=True)
    expected = [int(np.floor((1.0 + (k + 0.5) / 8) * 25)) for k in range(8)]
    assert info["frame_indices"] == expected
    np.testing.assert_allclose(grey_index(frames), expected, atol=1.0)
    frames, info = load_video_frames(media["three_frames_mp4"], normalize="none", return_info=True)
    assert info["frame_indices"] == [0, 0, 0, 1, 1, 2, 2, 2]  # 3 frames -> repeats
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)) * 255, [0, 0, 0, 100, 100, 200, 200, 200], atol=2)


def test_imagenet_normalisation_of_a_constant_colour(media):
    frames = load_video_frames(media["constant_mp4"])
    expected = (np.array([200, 100, 50]) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(frames.mean(axis=(0, 2, 3)), expected, atol=0.03)
    assert frames.std(axis=(0, 2, 3)).max() < 0.02  # constant image stays constant after resizing


def test_opencv_reader_gives_the_same_frames(media):
    by_decord = load_video_frames(media["ramp_mp4"], start=0.4, end=3.9)
    by_opencv, info = load_video_frames(media["ramp_mp4"], start=0.4, end=3.9, reader="opencv", return_info=True)
    assert info["reader"] == "opencv"
    np.testing.assert_allclose(by_opencv, by_decord, atol=0.05)


def test_fallback_to_opencv_is_logged_and_reported(media, monkeypatch, caplog):
    import decord

    def refuse(*args, **kwargs):
        raise RuntimeError("decord cannot open this")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    with caplog.at_level(logging.WARNING):
        frames, info = load_video_frames(media["constant_mp4"], return_info=True)
    assert info["reader"] == "opencv" and "decord cannot open this" in info["decord_error"]
    assert "reading it with OpenCV" in caplog.text
    assert frames.shape == (8, 3, 224, 224)
    with pytest.raises(MediaError, match="decord"):
        load_video_frames(media["constant_mp4"], reader="decord")


@pytest.mark.parametrize(
    "name, reason",
    [
        ("missing", "file not found"),
        ("zero_frames_mkv", "video has zero frames"),
        ("stereo_wav", "no video stream"),
        ("junk_wav", "not a readable media file"),
    ],
)
def test_bad_video_raises_media_error_naming_the_file(media, tmp_path, name, reason):
    path = tmp_path / "missing.mp4" if name == "missing" else media[name]
    with pytest.raises(MediaError) as caught:
        load_video_frames(path)
    assert str(path) in str(caught.value) and reason in caught.value.reason


def test_clip_outside_the_video_is_an_error(media):
    with pytest.raises(MediaError, match="outside the video"):
        load_video_frames(media["ramp_mp4"], start=6.0)
    with pytest.raises(MediaError, match="past the end"):
        load_video_frames(media["ramp_mp4"], start=1.0, end=9.0)
