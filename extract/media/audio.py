"""Audio decoding: any file with an audio track -> float32 mono waveform at a target rate.

Choices (the seeds only say "Wav2Vec 2.0 at 16,000 Hz"):

* One reader for every container: PyAV (FFmpeg). It decodes WAV, FLAC and the audio track
  of an MP4 (MELD clips) alike, so the result never depends on which optional readers happen
  to be installed. ``soundfile`` is not used.
* Integer PCM is scaled to [-1, 1) by its full-scale value (int16 / 32768, ...), as
  soundfile/librosa do. Channels are averaged to mono (``librosa.to_mono`` does the same).
* Resampling: ``soxr`` (default, "HQ" quality) in streaming mode (``soxr.ResampleStream``), so
  a long file is decoded and resampled frame by frame and never held at its native rate.
  ``resampler="torchaudio"`` uses ``torchaudio.functional.resample`` on the whole segment
  instead (optional extra; if torchaudio is missing that is an error, never a quiet switch
  back to soxr).
* Bounded memory: :func:`load_audio` refuses segments longer than ``max_seconds`` (default
  one hour = 230 MB at 16 kHz float32) with a MediaError that points to
  :func:`iter_audio_windows`, which yields fixed-length windows of a clip of any length.
* Cutting: ``start``/``end`` are seconds from the beginning of the file. The decoder seeks
  near ``start`` when the container supports it and trims to the exact sample using frame
  timestamps; if timestamps are missing it decodes from the beginning (same samples, slower).
  An ``end`` past the end of the file by more than ``end_tolerance`` seconds is an error
  (annotations that overshoot by a few frames are normal; a wrong time base is not).
* Bad data is rejected, not repaired: NaN or infinite samples raise MediaError("NaN samples"
  / "infinite samples") instead of being zeroed.
* Truncated WAV files: PCM has no framing, so FFmpeg decodes a WAV that was cut short without
  any error, and when the data-chunk size in the RIFF header points past the end of the file
  it estimates the duration from the file size instead (PyAV's ``stream.duration`` then agrees
  with the short waveform). We therefore read the 8-byte RIFF chunk headers ourselves (the
  stdlib ``wave`` module only reads integer PCM) and, when decoding runs into the end of the
  file, raise MediaError("truncated file: header promises X samples, found Y"). Segments that
  end before the cut decode normally. Streamed WAVs that leave the size unknown (0 or
  0xFFFFFFFF) are not checked. Other containers frame their data (FLAC frames, MP4 packets),
  and a cut there surfaces as an "audio decode error".

Compressed tracks (AAC in MP4) can carry a few milliseconds of encoder padding at the end;
we keep every decoded sample, as FFmpeg returns them.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator

import av
import numpy as np

from . import MediaError, check_readable_file

RESAMPLERS = ("soxr", "torchaudio")
DEFAULT_MAX_SECONDS = 3600.0
# Seeking only pays off when the segment starts well into the file.
_SEEK_THRESHOLD_SECONDS = 2.0
_INT_FULL_SCALE = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}
_WAV_PROBE = {"probesize": "32"}  # FFmpeg's minimum: the RIFF header and the first chunk


def _frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame -> float32 mono samples in [-1, 1]."""
    samples = frame.to_ndarray()
    n_channels = len(frame.layout.channels)
    if not frame.format.is_planar:  # packed formats come as (1, samples * channels), interleaved
        samples = samples.reshape(-1, n_channels).T
    sample_format = frame.format.name.rstrip("p")  # "s16p" and "s16" scale the same
    if sample_format == "u8":
        samples = (samples.astype(np.float32) - 128.0) / 128.0
    elif sample_format in _INT_FULL_SCALE:
        samples = (samples.astype(np.float64) / _INT_FULL_SCALE[sample_format]).astype(np.float32)
    else:  # flt, dbl
        samples = samples.astype(np.float32, copy=False)
    return samples.mean(axis=0, dtype=np.float32) if samples.shape[0] > 1 else samples[0]


def _check_finite(path: str, block: np.ndarray) -> None:
    if not np.isfinite(block).all():
        raise MediaError(path, "NaN samples" if np.isnan(block).any() else "infinite samples")


def _wav_sample_counts(path: str) -> tuple[int, int] | None:
    """(samples the data-chunk size promises, samples the file holds) of a RIFF WAV, else None.

    Samples are per channel (frames). None for other formats, RF64, and WAVs whose data size
    is unknown. Reads only chunk headers (a few dozen bytes for an ordinary WAV).
    """
    file_size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        for _ in range(64):  # a WAV has a handful of chunks before "data"
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"fmt ":
                fmt = handle.read(min(size, 16))
                if len(fmt) < 14:
                    return None
                block_align = int.from_bytes(fmt[12:14], "little")  # bytes per frame, all channels
                handle.seek(size - len(fmt) + (size & 1), os.SEEK_CUR)
            elif chunk_id == b"data":
                if not block_align or size in (0, 0xFFFFFFFF):  # streamed WAV: length never written
                    return None
                present = max(0, file_size - handle.tell())
                return size // block_align, min(size, present) // block_align
            else:
                handle.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to even sizes
    return None


def _check_not_truncated(path: str) -> None:
    """MediaError if the file's header promises more samples than the file holds (WAV only)."""
    counts = _wav_sample_counts(path)
    if counts is not None and counts[1] < counts[0]:
        raise MediaError(path, f"truncated file: header promises {counts[0]} samples, found {counts[1]}")


def _is_riff_wave(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:  # av.open below reports it, as for any unreadable file
        return False
    return len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE"


def _open_audio(path: str):
    # FFmpeg probes up to 5 MB of a file to fill in its streams' parameters. A WAV's header
    # holds them all, and on a 2 s clip that probe took 4 ms, most of the clip's decoding time
    # (bench/extract.py audio-emodb); with the smallest probe the header values and every
    # decoded sample are the same (tests/test_audio_media.py, and all 408 EmoDB files).
    # Other containers keep FFmpeg's default.
    options = _WAV_PROBE if _is_riff_wave(path) else {}
    try:
        container = av.open(path, options=options)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise MediaError(path, f"not a readable media file ({error})") from error
    if not container.streams.audio:
        container.close()
        raise MediaError(path, "no audio stream")
    return container, container.streams.audio[0]


def audio_duration(path: str | os.PathLike) -> float | None:
    """Duration in seconds from the container header (no decoding), or None if it does not say."""
    path = check_readable_file(path)
    container, stream = _open_audio(path)
    with container:
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
    return None


def audio_sample_rate(path: str | os.PathLike) -> int:
    """The audio track's own sample rate from the container header (no decoding)."""
    path = check_readable_file(path)
    container, stream = _open_audio(path)
    container.close()
    rate = int(stream.codec_context.sample_rate or stream.rate or 0)
    if rate <= 0:
        raise MediaError(path, "audio stream has no sample rate")
    return rate


class _MonoBlocks:
    """Decode one audio track into native-rate mono float32 blocks covering [start, end).

    ``sample_rate`` is known after construction; iterate to get the blocks. After iteration
    ``decoded_end_seconds`` is where the decoded audio stopped (file end or ``end``) and
    ``reached_file_end`` says whether decoding ran out of file before ``end``.
    """

    def __init__(self, path: str, start: float | None, end: float | None):
        self.path = path
        self.start = 0.0 if start is None else float(start)
        self.end = None if end is None else float(end)
        container, stream = _open_audio(path)
        container.close()
        self.sample_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        if self.sample_rate <= 0:
            raise MediaError(path, "audio stream has no sample rate")
        self.decoded_end_seconds = 0.0
        self.reached_file_end = False

    def _frames(self, seek: bool) -> Iterator[tuple[int | None, av.AudioFrame]]:
        """Yield (first sample index or None if unknown, frame)."""
        container, stream = _open_audio(self.path)
        with container:
            if seek:
                try:
                    container.seek(int(self.start / stream.time_base), stream=stream, backward=True)
                except av.error.FFmpegError:
                    pass  # not seekable: decoding starts at the beginning; timestamps still place it
            try:
                for frame in container.decode(stream):
                    first = None
                    if frame.pts is not None and frame.time_base is not None:
                        first = round(float(frame.pts * frame.time_base) * self.sample_rate)
                    yield first, frame
            except av.error.FFmpegError as error:
                raise MediaError(self.path, f"audio decode error ({error})") from error

    def __iter__(self) -> Iterator[np.ndarray]:
        rate = self.sample_rate
        start_sample = round(self.start * rate)
        end_sample = None if self.end is None else round(self.end * rate)
        seek = self.start >= _SEEK_THRESHOLD_SECONDS
        frames = self._frames(seek)
        position = None  # sample index of the next decoded sample
        self.reached_file_end = True  # unless the loop stops at ``end`` below
        for first, frame in frames:
            if position is None:
                if seek and (first is None or first > start_sample):
                    # No timestamps, or the seek overshot: decode from the start instead.
                    frames.close()
                    frames, seek = self._frames(False), False
                    first, frame = next(frames, (None, None))
                    if frame is None:
                        break
                position = first if (seek and first is not None) else 0
            if frame.sample_rate != rate:
                raise MediaError(self.path, f"sample rate changes mid-stream ({rate} -> {frame.sample_rate} Hz)")
            block = _frame_to_mono(frame)
            block_start, position = position, position + len(block)
            if position <= start_sample:
                continue
            lo = max(0, start_sample - block_start)
            hi = len(block) if end_sample is None else min(len(block), end_sample - block_start)
            if hi > lo:
                block = block[lo:hi]
                _check_finite(self.path, block)
                yield block
            if end_sample is not None and position >= end_sample:
                self.reached_file_end = False
                break
        frames.close()
        self.decoded_end_seconds = (position or 0) / rate if end_sample is None else min(position or 0, end_sample) / rate


def _validate_segment(path: str, start: float | None, end: float | None) -> None:
    if start is not None and (not math.isfinite(start) or start < 0):
        raise MediaError(path, f"invalid start time {start!r} (must be a finite number >= 0)")
    if end is not None and not math.isfinite(end):
        raise MediaError(path, f"invalid end time {end!r}")
    if end is not None and end <= (start or 0.0):
        raise MediaError(path, f"empty segment: end ({end}) <= start ({start or 0.0})")


def _check_segment_end(path: str, blocks: _MonoBlocks, n_out: int, end_tolerance: float) -> None:
    """Complain about a truncated file, empty output and an ``end`` well past the end of the file."""
    if blocks.reached_file_end:
        _check_not_truncated(path)
    if n_out == 0:
        if blocks.start > 0:
            duration = audio_duration(path)  # header value; decoding stopped early after a seek
            ends = "unknown" if duration is None else f"{duration:.3f} s"
            raise MediaError(path, f"no audio samples at or after start={blocks.start:.3f} s "
                                   f"(audio duration {ends})")
        raise MediaError(path, "zero audio samples")
    if blocks.end is not None and blocks.decoded_end_seconds < blocks.end - end_tolerance:
        raise MediaError(path, f"requested end {blocks.end:.3f} s is past the end of the audio "
                               f"({blocks.decoded_end_seconds:.3f} s)")


def _soxr_stream(in_rate: int, out_rate: int):
    import soxr

    return soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")


def _resampled_blocks(blocks: _MonoBlocks, sample_rate: int) -> Iterator[np.ndarray]:
    """Stream ``blocks`` through soxr; yields float32 blocks at ``sample_rate``."""
    if blocks.sample_rate == sample_rate:
        yield from blocks
        return
    stream = _soxr_stream(blocks.sample_rate, sample_rate)
    for block in blocks:
        out = stream.resample_chunk(block, last=False)
        if len(out):
            yield out
    tail = stream.resample_chunk(np.zeros(0, np.float32), last=True)
    if len(tail):
        yield tail


def load_audio(
    path: str | os.PathLike,
    start: float | None = None,
    end: float | None = None,
    sample_rate: int = 16000,
    resampler: str = "soxr",
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    end_tolerance: float = 0.5,
) -> np.ndarray:
    """Decode the audio track of ``path`` to a float32 mono waveform at ``sample_rate``.

    ``start``/``end``: seconds from the beginning of the file (None = file start / end).
    ``resampler``: "soxr" (streaming, default) or "torchaudio" (optional extra).
    ``max_seconds``: refuse (MediaError) a segment longer than this instead of loading it;
    use :func:`iter_audio_windows` for long recordings. None disables the guard.
    Raises MediaError for every problem with the file (see module docstring).
    """
    path = check_readable_file(path)
    if resampler not in RESAMPLERS:
        raise ValueError(f"resampler must be one of {RESAMPLERS}, got {resampler!r}")
    _validate_segment(path, start, end)
    if max_seconds is not None and end is not None and end - (start or 0.0) > max_seconds:
        raise MediaError(path, f"segment of {end - (start or 0.0):.1f} s exceeds max_seconds={max_seconds}; "
                               "use iter_audio_windows for long recordings")
    blocks = _MonoBlocks(path, start, end)
    if resampler == "torchaudio":
        return _load_with_torchaudio(path, blocks, sample_rate, max_seconds, end_tolerance)

    limit = None if max_seconds is None else int(math.ceil(max_seconds * sample_rate)) + 1
    pieces, n_out = [], 0
    for piece in _resampled_blocks(blocks, sample_rate):
        pieces.append(piece)
        n_out += len(piece)
        if limit is not None and n_out > limit:
            raise MediaError(path, f"audio longer than max_seconds={max_seconds}; "
                                   "use iter_audio_windows for long recordings")
    _check_segment_end(path, blocks, n_out, end_tolerance)
    return np.concatenate(pieces).astype(np.float32, copy=False)


def _load_with_torchaudio(path, blocks, sample_rate, max_seconds, end_tolerance) -> np.ndarray:
    try:
        import torchaudio.functional  # first: fails fast without importing torch
        import torch
    except ImportError as error:
        raise ImportError(
            'resampler="torchaudio" was requested but torchaudio is not installed; '
            'install it (matching your torch version) or use resampler="soxr"'
        ) from error
    limit = None if max_seconds is None else int(math.ceil(max_seconds * blocks.sample_rate)) + 1
    pieces, n_in = [], 0
    for block in blocks:
        pieces.append(block)
        n_in += len(block)
        if limit is not None and n_in > limit:
            raise MediaError(path, f"audio longer than max_seconds={max_seconds}; "
                                   "use iter_audio_windows for long recordings")
    _check_segment_end(path, blocks, n_in, end_tolerance)
    native = torch.from_numpy(np.concatenate(pieces))
    if blocks.sample_rate == sample_rate:
        return native.numpy()
    return torchaudio.functional.resample(native, blocks.sample_rate, sample_rate).numpy().astype(np.float32)


def iter_audio_windows(
    path: str | os.PathLike,
    window_seconds: float = 30.0,
    start: float | None = None,
    end: float | None = None,
    sample_rate: int = 16000,
    end_tolerance: float = 0.5,
) -> Iterator[np.ndarray]:
    """Yield consecutive windows of ``window_seconds`` of 16 kHz mono audio (last one shorter).

    Memory stays bounded by one window plus one decoded frame, whatever the file length.
    Concatenating the windows gives exactly ``load_audio(path, start, end, sample_rate)``
    (streaming soxr). Errors as in :func:`load_audio`, raised when reached.
    """
    path = check_readable_file(path)
    if window_seconds <= 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
    _validate_segment(path, start, end)
    window = int(round(window_seconds * sample_rate))
    blocks = _MonoBlocks(path, start, end)
    buffer: list[np.ndarray] = []
    buffered = n_out = 0
    for piece in _resampled_blocks(blocks, sample_rate):
        buffer.append(piece)
        buffered += len(piece)
        n_out += len(piece)
        while buffered >= window:
            joined = np.concatenate(buffer)
            yield joined[:window]
            rest = joined[window:]
            buffer, buffered = [rest], len(rest)
    _check_segment_end(path, blocks, n_out, end_tolerance)
    if buffered:
        yield np.concatenate(buffer)
