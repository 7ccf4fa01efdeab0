"""Video decoding: a clip -> ``n_frames`` RGB frames, resized and normalised for an image model.

Table 2 of the design doc fixes 8 frames at 2 fps, 224 x 224, ImageNet statistics. It does not
say where in the clip the frames come from; we decide (see :func:`sample_frame_timestamps`):

* The clip is ``[start, end]`` (default: the whole file). Its ``n_frames`` timestamps are the
  centres of ``n_frames`` equal, adjacent slots laid over the clip:
  - clip at least ``n_frames / fps`` long (4 s for 8 frames at 2 fps): slots are ``1/fps`` wide
    (0.5 s) and the 4 s window of slots is centred in the clip, i.e.
    ``t_k = mid + (k - (n_frames - 1) / 2) / fps``;
  - shorter clip: the slots split the whole clip, ``t_k = start + (k + 0.5) * length / n_frames``
    (spacing below 0.5 s; the rate target cannot be met, coverage of the clip is kept).
* A timestamp ``t`` maps to the frame that is showing at ``t``: the last frame whose
  presentation time (pts) is ``<= t``, from decord's ``get_frame_timestamp`` (OpenCV: the
  position in ms of each grabbed frame). So a variable frame rate is handled exactly; nothing
  assumes ``index = t * average fps``. The video lasts until the last frame stops showing (its
  end time, else its pts + the median frame gap). Indices are clamped into the clip's frames;
  when the clip has fewer than ``n_frames`` frames, frames repeat. An ``end`` up to 0.5 s past
  the end is clamped to it; further is a MediaError (as for audio). Likewise a header that
  promises frames that cannot be decoded (file cut short) is a MediaError when the clip reaches
  more than 0.5 s past the last decodable frame (header frame counts are estimates).
* Frames are resized to ``size x size`` with ``cv2.resize(INTER_AREA)`` without cropping
  (ViTImageProcessor and VideoMAEImageProcessor also resize the whole frame to 224 x 224), then
  scaled to [0, 1] and normalised with ImageNet mean/std.
* Reader: ``decord.VideoReader`` with one ``get_batch`` call on the sorted unique indices (no
  per-frame random seeking). If decord fails in any way (cannot open the file, odd timestamps,
  or cannot decode/copy the frames, as for videos narrower than about 32 px), OpenCV
  (``cv2.VideoCapture``) reads it sequentially: once for the frames' timestamps, once for the
  chosen frames. Both decode with FFmpeg and resize with the same cv2 call, so the result is the
  same frames; which reader ran (and decord's error) is logged and returned in the info dict,
  with ``frame_times``, the pts of each returned frame.
"""
from __future__ import annotations

import logging
import math
import os
import re

import av
import cv2
import numpy as np

from . import MediaError, check_readable_file

log = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
READERS = ("auto", "decord", "opencv")
# An ``end`` this far past the last frame is an error; closer, it is clamped (annotation jitter).
END_TOLERANCE_SECONDS = 0.5


def sample_frame_timestamps(clip_start: float, clip_end: float, n_frames: int = 8, fps: float = 2.0) -> np.ndarray:
    """The ``n_frames`` sampling times (seconds) for the clip ``[clip_start, clip_end]``.

    Centres of ``n_frames`` slots: ``1/fps`` wide and centred in the clip when the clip is at
    least ``n_frames / fps`` long, otherwise ``length / n_frames`` wide covering the clip.
    """
    if n_frames < 1 or fps <= 0:
        raise ValueError(f"need n_frames >= 1 and fps > 0, got {n_frames}, {fps}")
    length = clip_end - clip_start
    slots = np.arange(n_frames, dtype=np.float64) - (n_frames - 1) / 2.0
    if length >= n_frames / fps:
        return (clip_start + clip_end) / 2.0 + slots / fps
    return (clip_start + clip_end) / 2.0 + slots * (length / n_frames)


def _clip_frames(path: str, starts: np.ndarray, duration: float, start, end, n_frames: int, fps: float):
    """Sampling times and the frame showing at each of them, from the frames' presentation times.

    ``starts``: every frame's presentation time (seconds, increasing); ``duration``: when the last
    frame stops showing. The frame for time t is the last one with ``start <= t``, so a variable
    frame rate is handled exactly (no ``t * average fps``).
    """
    if len(starts) == 0:
        raise MediaError(path, "video has zero frames")
    clip_start = 0.0 if start is None else float(start)
    if end is not None and float(end) > duration + END_TOLERANCE_SECONDS:
        raise MediaError(path, f"requested end {float(end):.3f} s is past the end of the video ({duration:.3f} s)")
    clip_end = duration if end is None else min(float(end), duration)
    if clip_start < 0 or clip_start >= duration:
        raise MediaError(path, f"start={clip_start:.3f} s is outside the video (duration {duration:.3f} s)")
    if clip_end <= clip_start:
        raise MediaError(path, f"empty clip: end ({end}) <= start ({clip_start})")
    timestamps = sample_frame_timestamps(clip_start, clip_end, n_frames, fps)
    showing = lambda t: np.searchsorted(starts, np.asarray(t) + 1e-6, side="right") - 1  # noqa: E731
    first = int(max(showing(clip_start), 0))
    last = int(max(first, np.searchsorted(starts, clip_end - 1e-6, side="left") - 1))  # last frame starting in the clip
    indices = np.clip(showing(timestamps), first, last).astype(np.int64)
    return timestamps, indices, (clip_start, clip_end)


def _timeline_duration(starts: np.ndarray, last_end: float | None = None) -> float:
    """When the last frame stops showing: its own end time if known, else start + median frame gap."""
    if last_end is not None and last_end > starts[-1]:
        return float(last_end)
    gap = float(np.median(np.diff(starts))) if len(starts) > 1 else 0.04
    return float(starts[-1] + gap)


def _read_with_decord(path: str, start, end, n_frames, fps):
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0))  # raises if it cannot open the file
    total = len(reader)
    if total <= 0:
        raise MediaError(path, "video has zero frames")
    times = np.asarray(reader.get_frame_timestamp(np.arange(total)), dtype=np.float64).reshape(total, 2)
    starts = times[:, 0]
    if not (np.isfinite(starts).all() and (np.diff(starts) > 0).all()):
        raise RuntimeError("decord reports presentation times that are not increasing")
    timestamps, indices, clip = _clip_frames(path, starts, _timeline_duration(starts, times[-1, 1]), start, end, n_frames, fps)
    unique = np.unique(indices)  # sorted: one forward pass through the file
    decoded = reader.get_batch(unique.tolist()).asnumpy()  # (n, H, W, 3) RGB uint8; decord errors -> fallback
    frames = decoded[np.searchsorted(unique, indices)]
    return frames, {"reader": "decord", "native_fps": float(reader.get_avg_fps()), "total_frames": total,
                    "timestamps": timestamps.tolist(), "frame_indices": indices.tolist(),
                    "frame_times": starts[indices].tolist(), "clip": clip}


def _read_with_opencv(path: str, start, end, n_frames, fps):
    """Two sequential passes: presentation times of every decodable frame, then the chosen frames."""
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise MediaError(path, "OpenCV could not open the video")
        native_fps = float(capture.get(cv2.CAP_PROP_FPS))
        header_total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        starts_list = []
        while capture.grab():
            starts_list.append(float(capture.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0)
    finally:
        capture.release()
    if not starts_list:
        raise MediaError(path, "video has zero frames")
    starts = np.asarray(starts_list)
    if not (np.diff(starts) > 0).all():  # no usable timestamps: fall back to the nominal rate
        if not native_fps or not math.isfinite(native_fps) or native_fps <= 0:
            raise MediaError(path, f"video reports no usable frame rate or timestamps ({native_fps!r})")
        starts = np.arange(len(starts)) / native_fps
    n_read = len(starts)
    duration = _timeline_duration(starts)
    # The frame count in a header is an estimate, but one far beyond the decodable frames means a
    # file cut short (a truncated MP4 with its index first still promises every frame): refuse a
    # clip reaching past the last decodable frame rather than repeat that frame.
    if native_fps > 0 and header_total > n_read:
        promised = header_total / native_fps
        wanted_end = promised if end is None else float(end)
        if promised > duration + END_TOLERANCE_SECONDS and wanted_end > duration + END_TOLERANCE_SECONDS:
            raise MediaError(path, f"truncated or damaged video: the header promises {header_total} frames but frames past "
                                   f"{n_read - 1} ({duration:.3f} s) could not be decoded (clip to {wanted_end:.3f} s)")
    timestamps, indices, clip = _clip_frames(path, starts, duration, start, end, n_frames, fps)
    wanted = set(indices.tolist())
    found: dict[int, np.ndarray] = {}
    capture = cv2.VideoCapture(path)
    try:
        for index in range(int(indices.max()) + 1):  # sequential read, no seeking
            if not capture.grab():
                break
            if index in wanted:
                ok, bgr = capture.retrieve()
                if not ok:
                    raise MediaError(path, f"OpenCV could not decode frame {index}")
                found[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    missing = sorted(wanted - set(found))
    if missing:
        raise MediaError(path, f"OpenCV could not decode frame(s) {missing} on the second pass")
    frames = np.stack([found[i] for i in indices.tolist()])
    info = {"reader": "opencv", "native_fps": native_fps, "total_frames": n_read,
            "timestamps": timestamps.tolist(), "frame_indices": indices.tolist(),
            "frame_times": starts[indices].tolist(), "clip": clip}
    return frames, info


def _short_decord_message(error: Exception) -> str:
    """decord's messages start with a timestamp, its source file and the failed C++ check."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^\[[\d:]+\] \S+: ", "", text)
    return text.split(" ERROR ", 1)[-1]


def _probe_video_problem(path: str) -> str | None:
    """After both readers failed: ask PyAV for a precise reason (no stream / no frames)."""
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        return "not a readable media file"
    with container:
        if not container.streams.video:
            return "no video stream"
        try:
            first = next(iter(container.decode(video=0)), None)
        except av.error.FFmpegError:
            return None
        return "video has zero frames" if first is None else None


def _normalisation(normalize) -> tuple[np.ndarray, np.ndarray] | None:
    if normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if normalize in (None, "none"):
        return None
    if isinstance(normalize, (tuple, list)) and len(normalize) == 2:
        mean, std = (np.asarray(v, dtype=np.float32).reshape(3) for v in normalize)
        return mean, std
    raise ValueError(f'normalize must be "imagenet", "none" or a (mean, std) pair, got {normalize!r}')


def load_video_frames(
    path: str | os.PathLike,
    n_frames: int = 8,
    fps: float = 2.0,
    size: int = 224,
    start: float | None = None,
    end: float | None = None,
    normalize="imagenet",
    reader: str = "auto",
    return_info: bool = False,
):
    """Sample ``n_frames`` frames of ``path`` (module docstring has the rule) as a float32 array.

    Returns ``(n_frames, 3, size, size)`` float32, channels RGB, normalised with ImageNet
    mean/std (``normalize="imagenet"``), scaled to [0, 1] only (``"none"``) or with a given
    ``(mean, std)`` pair. ``reader``: "auto" (decord, OpenCV if decord cannot open the file),
    "decord" or "opencv". With ``return_info=True`` returns ``(frames, info)``; ``info`` has
    ``reader``, ``native_fps``, ``total_frames``, ``timestamps``, ``frame_indices``, ``clip``
    and, after a fallback, ``decord_error``. Raises MediaError for unreadable/empty videos.
    """
    path = check_readable_file(path)
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    stats = _normalisation(normalize)
    decord_error = None
    if reader in ("auto", "decord"):
        try:
            frames, info = _read_with_decord(path, start, end, n_frames, fps)
        except MediaError as error:
            if "outside the video" in error.reason or "past the end" in error.reason or "empty clip" in error.reason:
                raise  # the request, not the reader: OpenCV would say the same
            decord_error = error.reason
        except Exception as error:  # decord could not open or decode the file (e.g. frames < 32 px wide)
            decord_error = _short_decord_message(error)
        if decord_error is not None:
            if reader == "decord":
                problem = _probe_video_problem(path) or "decord could not read the video"
                raise MediaError(path, f"{problem} (decord: {decord_error})")
            log.warning("%s: decord could not read the video (%s); reading it with OpenCV", path, decord_error)
    if reader == "opencv" or decord_error is not None:
        try:
            frames, info = _read_with_opencv(path, start, end, n_frames, fps)
        except MediaError as error:
            if decord_error is None and "zero" in error.reason:
                raise
            details = f"opencv: {error.reason}" if decord_error is None else f"decord: {decord_error}; opencv: {error.reason}"
            problem = _probe_video_problem(path) or "cannot decode video"
            raise MediaError(path, f"{problem} ({details})") from error
        if decord_error is not None:
            info["decord_error"] = decord_error

    resized = np.stack([cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA) for frame in frames])
    pixels = resized.astype(np.float32) / 255.0
    if stats is not None:
        pixels = (pixels - stats[0]) / stats[1]
    pixels = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
    return (pixels, info) if return_info else pixels
