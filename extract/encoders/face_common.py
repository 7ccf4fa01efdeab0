"""What the face encoders (face-expression, image-cnn with region: face) share.

The options of :func:`extract.media.faces.find_faces` as constructor arguments, the
per-utterance call (an utterance with no face in any sampled frame is an EncoderInputError,
so the job records it as a failed/missing utterance for that feature set), and the counts
that go into ``run_stats`` (frames seen, frames without a face, how the speaker was chosen).
"""
from __future__ import annotations

from typing import Any

from ..media.faces import SPEAKER_POLICIES, FaceDetector, FaceFrames, find_faces
from .base import EncoderInputError, utterance_field


class FaceOptionsMixin:
    """Face-pipeline settings; subclasses call ``_init_faces`` in ``__init__``."""

    run_stats: Any

    def _init_faces(self, n_frames, fps, speaker, margin, min_face, min_neighbors, scale_factor, detect_height, reader):
        if speaker not in SPEAKER_POLICIES:
            raise ValueError(f"speaker must be one of {SPEAKER_POLICIES}, got {speaker!r}")
        if not 0.0 <= float(margin) <= 1.0:
            raise ValueError(f"margin must be in [0, 1] (fraction of the face box per side), got {margin}")
        if detect_height is not None and int(detect_height) < 32:
            raise ValueError(f"detect_height must be >= 32 pixels or null, got {detect_height}")
        self.n_frames, self.fps = int(n_frames), float(fps)
        self.speaker, self.margin = speaker, float(margin)
        self.detect_height = None if detect_height is None else int(detect_height)
        self.reader = reader
        self.detector = FaceDetector(scale_factor=float(scale_factor), min_neighbors=int(min_neighbors),
                                     min_face=float(min_face))
        return {"n_frames": self.n_frames, "fps": self.fps, "speaker": speaker, "margin": self.margin,
                "min_face": float(min_face), "min_neighbors": int(min_neighbors), "scale_factor": float(scale_factor),
                "detect_height": self.detect_height, "reader": reader}

    def _faces(self, utterance: Any) -> tuple[str | None, FaceFrames]:
        utterance_id = utterance_field(utterance, "utterance_id")
        path = utterance_field(utterance, "video_path")
        if not path:
            raise EncoderInputError(utterance_id, "no video_path")
        faces = find_faces(path, utterance_id, n_frames=self.n_frames, fps=self.fps,
                           start=utterance_field(utterance, "start"), end=utterance_field(utterance, "end"),
                           reader=self.reader, detector=self.detector, speaker=self.speaker, margin=self.margin,
                           detect_height=self.detect_height, audio_path=utterance_field(utterance, "audio_path"))
        if not faces.found.any():
            raise EncoderInputError(utterance_id, f"no face found in any of the {self.n_frames} sampled frames of {path}")
        return utterance_id, faces

    def _count_faces(self, info: dict) -> None:
        found = int(info.get("faces_found", 0))
        self.run_stats["frames"] += self.n_frames
        self.run_stats["frames_without_face"] += self.n_frames - found
        if found < self.n_frames:
            self.run_stats["utterances_with_faceless_frames"] += 1
        self.run_stats[f"speaker_choice: {info.get('speaker_choice')}"] += 1

    def _face_provenance(self) -> dict:
        return {
            "face_pipeline": {
                **self.detector.describe(),
                "speaker": self.speaker,
                "margin": self.margin,
                "detect_height": self.detect_height,
                "no_face_frame": "zero row (all features 0); counted in run_stats.frames_without_face",
                "no_face_utterance": "recorded as a failed utterance (EncoderInputError: no face found)",
            },
            "frames": {"n_frames": self.n_frames, "fps": self.fps,
                       "sampling": "extract.media.video.load_video_frames (slot centres)"},
        }
