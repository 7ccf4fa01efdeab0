"""Media decoding for stage 1: audio waveforms and sampled video frames.

Every decoding problem (missing file, no audio stream, zero samples, NaN samples, a video
with no frames, ...) is raised as one exception type, :class:`MediaError`, which carries the
path and a short reason, so the job runner can record a per-utterance failure and go on.
"""
from __future__ import annotations

import os


class MediaError(Exception):
    """A media file could not be turned into what was asked for.

    ``path`` is the file, ``reason`` a short human-readable cause ("file not found",
    "no audio stream", "NaN samples", ...). ``str(error)`` is ``"<path>: <reason>"``.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when crossing DataLoader worker processes
        return (type(self), (self.path, self.reason))


def check_readable_file(path: str | os.PathLike) -> str:
    """Return ``path`` as a string, or raise MediaError if it is missing, a folder, unreadable or empty."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(path, "file not found")
    if os.path.isdir(path):
        raise MediaError(path, "is a directory, not a media file")
    if not os.access(path, os.R_OK):
        raise MediaError(path, "permission denied (file is not readable)")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "empty file (0 bytes)")
    return path


# Imported after MediaError so the submodules can import it from here.
from .audio import audio_duration, audio_sample_rate, iter_audio_windows, load_audio  # noqa: E402
from .video import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_video_frames,
    sample_frame_timestamps,
)

__all__ = [
    "MediaError",
    "check_readable_file",
    "load_audio",
    "iter_audio_windows",
    "audio_duration",
    "audio_sample_rate",
    "load_video_frames",
    "sample_frame_timestamps",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
