"""Faces in the sampled video frames: detect, choose one per frame, crop with a margin.

The frames are exactly the ones :func:`extract.media.video.load_video_frames` samples (8 at
2 fps by default; this module does not sample on its own). Steps per utterance:

1. **Detect** faces in every sampled frame with OpenCV's bundled Haar cascade
   ``haarcascade_frontalface_default.xml`` (Viola-Jones, frontal faces; ships in
   ``cv2.data.haarcascades`` of opencv-python-headless 4.x; OpenCV 5 dropped the cascades,
   hence the ``<5`` bound in setup.cfg). Detection runs on the grayscale frame at
   ``detect_height`` pixels high (default: native height up to 480 px) with the video's
   native aspect ratio, ``scaleFactor`` 1.1, ``minNeighbors`` 5 and a smallest face of
   ``min_face`` x the frame's shorter side (default 0.1).
2. **Choose** one face per frame (``speaker``):

   * ``largest`` (default): the largest box in each frame, independently per frame.
   * ``active``: the face whose mouth moves with the sound. Detections are linked across the
     sampled frames into tracks (a box joins the track whose last box centre is within 0.5 of
     that box's width; otherwise it starts a track). For each track and each pair of
     consecutive sampled frames k-1, k the *mouth activity* is the mean absolute difference of
     the mouth region (lower 40 % of the box, middle 60 % of its width, grayscale, resized to
     32 x 16) between the two frames; the *audio energy* of that pair is the RMS of the
     utterance's audio between the two timestamps. The track whose mouth activity has the
     highest Pearson correlation with the audio energy is the speaker. Tracks seen in fewer
     than 3 consecutive pairs cannot be scored. With one scorable track, that track is used;
     with none, or without audio, or with flat audio, the choice falls back to ``largest`` and
     ``info["speaker_choice"]`` says why (counted in the encoder's ``run_stats``).

     Limits: 8 frames 0.5 s apart see mouth *states*, not lip motion, so this measures "mouth
     region changes while there is sound"; it needs at least ~4 frames where the track is
     found and audio that is loud in some intervals and quiet in others. A listener who nods
     or chews in time with the speech, a speaker turned away from the camera (the cascade
     finds frontal faces only), off-screen or dubbed voices and a moving camera all defeat it.
     It is a heuristic for clips with a few frontal faces, not an active-speaker model.

3. **Crop** the chosen box enlarged by ``margin`` (default 0.2 of its width/height on each
   side), made square around its centre and clipped to the frame.

A frame where no face is found (or, with ``active``, where the chosen track has no box) is
marked ``found = False``; encoders write a zero row there and count it. An utterance with no
face in any sampled frame is an ``EncoderInputError`` for the face feature sets (recorded as a
failed/missing utterance like any other bad input).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from . import MediaError, load_audio, load_video_frames

SPEAKER_POLICIES = ("largest", "active")
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
MAX_DETECT_HEIGHT = 480
MOUTH_PATCH = (32, 16)          # width, height of the mouth region compared between frames
MIN_SCORED_PAIRS = 3            # consecutive frame pairs a track needs for the active-speaker score
TRACK_LINK_DISTANCE = 0.5       # box centre distance, in box widths, that links detections


def haar_cascade_path() -> str:
    """The bundled frontal-face cascade; FileNotFoundError when this OpenCV has none (OpenCV 5)."""
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = os.path.join(folder, HAAR_CASCADE) if folder else None
    if path is None or not os.path.isfile(path) or not hasattr(cv2, "CascadeClassifier"):
        raise FileNotFoundError(
            f"OpenCV {cv2.__version__} has no {HAAR_CASCADE} / CascadeClassifier (OpenCV 5 removed them); "
            "install opencv-python-headless>=4.9,<5")
    return path


@functools.cache
def _cascade(path: str):
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise FileNotFoundError(f"{path}: OpenCV could not load the Haar cascade")
    return cascade


@dataclass
class FaceDetector:
    """OpenCV's Haar frontal-face cascade with this project's settings."""

    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_face: float = 0.1       # smallest face side, as a fraction of the frame's shorter side

    def __post_init__(self) -> None:
        if self.scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {self.scale_factor}")
        if self.min_neighbors < 0:
            raise ValueError(f"min_neighbors must be >= 0, got {self.min_neighbors}")
        if not 0.0 < self.min_face < 1.0:
            raise ValueError(f"min_face must be in (0, 1), got {self.min_face}")
        self.cascade_path = haar_cascade_path()

    def detect(self, gray: np.ndarray) -> np.ndarray:
        """(N, 4) int boxes ``x, y, w, h`` in a uint8 grayscale image, largest first."""
        side = max(1, int(round(self.min_face * min(gray.shape[:2]))))
        boxes = _cascade(self.cascade_path).detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side))
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        return boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")]

    def describe(self) -> dict:
        return {"detector": f"opencv haar {HAAR_CASCADE}", "opencv": cv2.__version__,
                "scale_factor": self.scale_factor, "min_neighbors": self.min_neighbors, "min_face": self.min_face}


@dataclass
class FaceFrames:
    """One utterance's sampled frames and the face chosen in each.

    ``frames``: (n, H, W, 3) uint8 RGB at detection size; ``boxes``: (n, 4) ``x, y, w, h`` of
    the crop (with margin), meaningful where ``found``; ``n_detected``: faces per frame.
    """

    frames: np.ndarray
    boxes: np.ndarray
    found: np.ndarray
    n_detected: list[int]
    info: dict = field(default_factory=dict)

    def crops(self, size: int, gray: bool) -> np.ndarray:
        """(n, size, size) uint8 grayscale or (n, size, size, 3) RGB crops; zeros where no face."""
        shape = (len(self.frames), size, size) if gray else (len(self.frames), size, size, 3)
        out = np.zeros(shape, dtype=np.uint8)
        for k in np.flatnonzero(self.found):
            x, y, w, h = self.boxes[k]
            patch = self.frames[k, y:y + h, x:x + w]
            if gray:
                patch = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
            out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if w > size else cv2.INTER_LINEAR)
        return out


def _native_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the container header, or None."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            return int(stream.codec_context.width), int(stream.codec_context.height)
    except (av.error.FFmpegError, IndexError, OSError):
        return None


def detection_frames(path: str, n_frames: int, fps: float, start, end, reader: str, detect_height: int | None):
    """The sampled frames as uint8 RGB at the native aspect ratio, ``detect_height`` px high."""
    native = _native_size(path)
    height = min(native[1], MAX_DETECT_HEIGHT) if native else MAX_DETECT_HEIGHT
    if detect_height is not None:
        height = int(detect_height)
    # load_video_frames resizes to a square; sample at `height` and restore the aspect ratio.
    frames, info = load_video_frames(path, n_frames=n_frames, fps=fps, size=height, start=start, end=end,
                                     normalize="none", reader=reader, return_info=True)
    frames = np.round(frames.transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)
    width = height if not native else max(1, int(round(height * native[0] / native[1])))
    if width != height:
        frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in frames])
    info["detect_size"] = [width, height]
    return frames, info


def crop_box(box, margin: float, width: int, height: int) -> np.ndarray:
    """The detection box enlarged by `margin` per side, squared about its centre, clipped to the frame."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(max(0.0, cx - side / 2))), int(round(max(0.0, cy - side / 2)))
    x1, y1 = int(round(min(float(width), cx + side / 2))), int(round(min(float(height), cy + side / 2)))
    return np.array([x0, y0, max(1, x1 - x0), max(1, y1 - y0)], dtype=np.int64)


def link_tracks(detections: list[np.ndarray]) -> list[dict[int, np.ndarray]]:
    """Detections per frame -> tracks ``{frame index: box}`` (nearest last centre within 0.5 box widths)."""
    tracks: list[dict[int, np.ndarray]] = []
    for k, boxes in enumerate(detections):
        taken: set[int] = set()
        for box in boxes:
            centre = box[:2] + box[2:] / 2.0
            best, best_distance = None, None
            for t, track in enumerate(tracks):
                if t in taken or k in track:
                    continue
                last = track[max(track)]
                distance = np.linalg.norm(centre - (last[:2] + last[2:] / 2.0))
                if distance <= TRACK_LINK_DISTANCE * max(box[2], last[2]) and (best_distance is None or distance < best_distance):
                    best, best_distance = t, distance
            if best is None:
                tracks.append({k: box})
                taken.add(len(tracks) - 1)
            else:
                tracks[best][k] = box
                taken.add(best)
    return tracks


def mouth_activity(gray_frames: np.ndarray, track: dict[int, np.ndarray]) -> np.ndarray:
    """Per consecutive frame pair (k-1, k): mean |difference| of the mouth patch; NaN where unseen."""
    n = len(gray_frames)
    patches: dict[int, np.ndarray] = {}
    for k, (x, y, w, h) in track.items():
        mx0, mx1 = x + int(0.2 * w), x + int(0.8 * w)
        my0, my1 = y + int(0.6 * h), y + h
        region = gray_frames[k, my0:my1, mx0:mx1]
        if region.size:
            patches[k] = cv2.resize(region, MOUTH_PATCH, interpolation=cv2.INTER_AREA).astype(np.float32)
    activity = np.full(n - 1, np.nan)
    for k in range(1, n):
        if k in patches and k - 1 in patches:
            activity[k - 1] = float(np.mean(np.abs(patches[k] - patches[k - 1])))
    return activity


def audio_energy(waveform: np.ndarray, sample_rate: int, timestamps, clip_start: float) -> np.ndarray:
    """RMS of the waveform between consecutive timestamps (seconds; waveform starts at clip_start)."""
    edges = np.clip(np.round((np.asarray(timestamps, dtype=float) - clip_start) * sample_rate).astype(np.int64), 0, len(waveform))
    energy = np.zeros(len(edges) - 1)
    for k in range(1, len(edges)):
        segment = waveform[edges[k - 1]:edges[k]]
        energy[k - 1] = float(np.sqrt(np.mean(np.square(segment, dtype=np.float64)))) if segment.size else 0.0
    return energy


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < MIN_SCORED_PAIRS:
        return None
    a, b = a[keep], b[keep]
    if a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def choose_active_speaker(gray_frames: np.ndarray, detections: list[np.ndarray], energy: np.ndarray | None):
    """(track or None, reason, scores): the track whose mouth activity follows the audio energy."""
    tracks = link_tracks(detections)
    if not tracks:
        return None, "no face", []
    if len(tracks) == 1:
        return tracks[0], "one face track", []
    if energy is None:
        return None, "fallback largest: no audio", []
    if energy.std() < 1e-9:
        return None, "fallback largest: audio energy is flat", []
    scores = [_correlation(mouth_activity(gray_frames, track), energy) for track in tracks]
    scored = [(s, t) for t, s in enumerate(scores) if s is not None]
    if not scored:
        return None, "fallback largest: no face track seen in enough consecutive frames", scores
    best = max(scored)[1]
    return tracks[best], "active: mouth activity follows audio energy", scores


def find_faces(
    path: str,
    utterance_id: str | None = None,
    n_frames: int = 8,
    fps: float = 2.0,
    start: float | None = None,
    end: float | None = None,
    reader: str = "auto",
    detector: FaceDetector | None = None,
    speaker: str = "largest",
    margin: float = 0.2,
    detect_height: int | None = None,
    audio_path: str | None = None,
) -> FaceFrames:
    """Sample the clip's frames, detect faces, choose one per frame and compute its crop box.

    ``utterance_id`` is recorded in ``info`` (for messages). ``audio_path`` (default: ``path``) is read only for ``speaker="active"`` with two or more
    face tracks. MediaError for unreadable video; audio problems only cause the documented
    fallback (recorded in ``info["speaker_choice"]``).
    """
    if speaker not in SPEAKER_POLICIES:
        raise ValueError(f"speaker must be one of {SPEAKER_POLICIES}, got {speaker!r}")
    detector = detector or FaceDetector()
    frames, info = detection_frames(path, n_frames, fps, start, end, reader, detect_height)
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    detections = [detector.detect(g) for g in gray]
    height, width = frames.shape[1:3]
    chosen: list[np.ndarray | None] = [d[0] if len(d) else None for d in detections]  # largest
    choice = "largest"
    if speaker == "active":
        energy = None
        if sum(len(d) > 1 for d in detections) > 0:  # only needed when faces compete
            try:
                clip_start, clip_end = info["clip"]
                waveform = load_audio(audio_path or path, start=clip_start, end=clip_end, sample_rate=16000)
                energy = audio_energy(waveform, 16000, info["timestamps"], clip_start)
            except MediaError as error:
                info["audio_error"] = error.reason
        track, choice, scores = choose_active_speaker(gray, detections, energy)
        info["speaker_scores"] = scores
        if track is not None:
            chosen = [track.get(k) for k in range(len(frames))]
    found = np.array([box is not None for box in chosen])
    boxes = np.zeros((len(frames), 4), dtype=np.int64)
    for k, box in enumerate(chosen):
        if box is not None:
            boxes[k] = crop_box(box, margin, width, height)
    info.update({"utterance_id": utterance_id, "speaker_choice": choice, "faces_found": int(found.sum()), "n_detected": [len(d) for d in detections]})
    info["clip"] = list(info["clip"])
    return FaceFrames(frames, boxes, found, [len(d) for d in detections], info)
