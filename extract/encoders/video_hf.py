"""Video features: 8 frames at 2 fps, 224 x 224, ImageNet statistics (design doc, Table 2).

The design doc's video encoder ("MIMAMO Net", a transformer) is not a published checkpoint,
so stage 1 stores frozen features that a fusion head can attend over:

* Image models (``model_type`` other than videomae; e.g. ViT, DeiT, DINOv2, CLIP vision):
  each of the 8 sampled frames is encoded alone and reduced to one vector, giving ``(8, D)``
  per utterance at ``frame_rate = fps`` (2 Hz; clips shorter than 4 s are sampled more
  densely, see extract.media.video). ``frame_pooling``: "cls" (the [CLS] row, default),
  "mean_patch" (mean of the patch rows, [CLS] excluded) or "pooler" (the model's pooler_output).
* Video models (``model_type == "videomae"``): the 8 frames go in as one clip and the full
  token sequence comes out, ``(T/tubelet * (H/patch)^2, D)`` = 784 tokens for 8 frames,
  ``frame_rate = "token"``. The checkpoint's ``num_frames`` must equal ``n_frames``.
* ``checkpoint="random-vit-small:seed=0"`` builds a small ViT (hidden 192, 4 layers, 3 heads,
  MLP 768, patch 16, image 224) whose weights are RANDOM, initialised under
  ``torch.manual_seed(seed)``: an offline stand-in for demos and tests, not a pretrained
  model; provenance says so and records a sha256 of the generated weights.
* Normalisation: ImageNet mean/std (``normalize="imagenet"``, the table's choice) even when a
  checkpoint was trained with other statistics (google/vit-* use 0.5/0.5); a warning is
  logged and the checkpoint's statistics are recorded. ``normalize="checkpoint"`` uses the
  statistics of the checkpoint folder's preprocessor_config.json instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Any

import numpy as np

from ..media import IMAGENET_MEAN, IMAGENET_STD, load_video_frames
from .base import (
    Encoder,
    EncoderInputError,
    PreparedItem,
    TorchEncoderMixin,
    hf_checkpoint_provenance,
    library_versions,
    pick_device,
    resolve_checkpoint,
    resolve_hub_revision,
    utterance_field,
)
from .text_hf import _short_name

log = logging.getLogger(__name__)

FRAME_POOLINGS = ("cls", "mean_patch", "pooler")
NORMALIZATIONS = ("imagenet", "checkpoint")
RANDOM_VIT_RE = re.compile(r"^random-vit-small(?::seed=(\d+))?$")
RANDOM_VIT_SMALL = dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768,
                        patch_size=16, image_size=224, num_channels=3)


def build_random_vit_small(seed: int = 0):
    """The seeded random ViT behind ``random-vit-small:seed=N`` (global RNG state is restored)."""
    import torch
    from transformers import ViTConfig, ViTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ViTModel(ViTConfig(**RANDOM_VIT_SMALL), add_pooling_layer=False)


def state_dict_sha256(model) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class HFVideoEncoder(TorchEncoderMixin, Encoder):
    """Per-frame image-model embeddings (n_frames, D) or a VideoMAE token sequence (tokens, D).

    Args:
        checkpoint: hub id, local folder, ``package:<distribution>`` or ``random-vit-small:seed=N``.
        name: feature-set name; default ``video.<checkpoint folder name>``.
        n_frames, fps, size: frame sampling (8 frames, 2 fps, 224 px; see extract.media.video).
        frame_pooling: image models only: "cls", "mean_patch" or "pooler".
        normalize: "imagenet" or "checkpoint".
        reader: "auto", "decord" or "opencv" (passed to load_video_frames).
        revision, device, precision: as for HFTextEncoder.
    """

    encoder_kind = "hf-video"
    modality = "video"
    default_max_cost = 16.0  # utterances (every utterance is n_frames frames)
    default_max_batch = 16

    def __init__(
        self,
        checkpoint: str,
        name: str | None = None,
        n_frames: int = 8,
        fps: float = 2.0,
        size: int = 224,
        frame_pooling: str = "cls",
        normalize: str = "imagenet",
        reader: str = "auto",
        revision: str | None = None,
        device: str | None = None,
        precision: str = "auto",
    ):
        super().__init__()
        if frame_pooling not in FRAME_POOLINGS:
            raise ValueError(f"frame_pooling must be one of {FRAME_POOLINGS}, got {frame_pooling!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.checkpoint = str(checkpoint)
        self.revision = revision
        self.device = pick_device(device)
        self.precision = precision
        random_match = RANDOM_VIT_RE.match(self.checkpoint)
        self.random_seed = None if random_match is None else int(random_match.group(1) or 0)
        self.commit = None
        if random_match is not None:
            self.resolved = self.checkpoint
            model = build_random_vit_small(self.random_seed)
        else:
            from transformers import AutoModel

            self.resolved = resolve_checkpoint(self.checkpoint)
            load_revision, self.commit = resolve_hub_revision(self.resolved, revision)
            model = AutoModel.from_pretrained(self.resolved, revision=load_revision)
        self.model = self._freeze(model)
        model_config = self.model.config
        self.is_video_model = model_config.model_type == "videomae"
        self.n_frames, self.fps, self.size = int(n_frames), float(fps), int(size)
        self._check_geometry(model_config)
        self.frame_pooling = None if self.is_video_model else frame_pooling
        if frame_pooling == "pooler" and not self.is_video_model and getattr(self.model, "pooler", None) is None:
            raise ValueError(f"{self.checkpoint}: frame_pooling='pooler' but the model has no pooler")
        self.checkpoint_stats = self._checkpoint_normalisation()
        self.normalize = normalize
        if normalize == "checkpoint":
            if self.checkpoint_stats is None:
                raise ValueError(f"{self.checkpoint}: normalize='checkpoint' but no image_mean/image_std "
                                 "found in the checkpoint folder's preprocessor_config.json")
            self.pixel_stats = self.checkpoint_stats
        else:
            self.pixel_stats = (IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist())
            if self.checkpoint_stats is not None and not np.allclose(self.checkpoint_stats, self.pixel_stats, atol=1e-3):
                log.warning("%s was trained with mean/std %s; normalising with ImageNet statistics as configured",
                            self.checkpoint, self.checkpoint_stats)
        self.reader = reader
        self.dim = model_config.hidden_size
        self.frame_rate = "token" if self.is_video_model else self.fps
        self.name = name or f"video.{_short_name(self.checkpoint)}"
        self.config = {"kind": self.encoder_kind, "checkpoint": self.checkpoint, "name": self.name,
                       "n_frames": self.n_frames, "fps": self.fps, "size": self.size,
                       "frame_pooling": self.frame_pooling, "normalize": normalize, "reader": reader,
                       "revision": revision, "precision": precision}

    def _check_geometry(self, model_config) -> None:
        image_size = getattr(model_config, "image_size", self.size)
        if image_size != self.size:
            raise ValueError(f"{self.checkpoint}: model expects {image_size}px images, size={self.size}")
        if self.is_video_model and model_config.num_frames != self.n_frames:
            raise ValueError(f"{self.checkpoint}: VideoMAE checkpoint takes num_frames={model_config.num_frames}, "
                             f"n_frames={self.n_frames}")

    def _checkpoint_normalisation(self):
        config_file = os.path.join(self.resolved, "preprocessor_config.json")
        if not os.path.isfile(config_file):
            return None
        with open(config_file) as handle:
            processor = json.load(handle)
        if "image_mean" not in processor or "image_std" not in processor:
            return None
        return (list(processor["image_mean"]), list(processor["image_std"]))

    # -- CPU side -------------------------------------------------------------------------
    def prepare(self, utterance: Any) -> PreparedItem:
        utterance_id = utterance_field(utterance, "utterance_id")
        path = utterance_field(utterance, "video_path")
        if not path:
            raise EncoderInputError(utterance_id, "no video_path")
        frames, info = load_video_frames(path, n_frames=self.n_frames, fps=self.fps, size=self.size,
                                         start=utterance_field(utterance, "start"),
                                         end=utterance_field(utterance, "end"),
                                         normalize=self.pixel_stats, reader=self.reader, return_info=True)
        info["clip"] = list(info["clip"])
        return PreparedItem(utterance_id, frames, info)

    # -- model side -----------------------------------------------------------------------
    def encode_batch(self, items: list[PreparedItem]) -> list[np.ndarray]:
        import torch

        if not items:
            return []
        pixels = torch.from_numpy(np.stack([item.payload for item in items])).to(self.device)
        with self._inference():
            if self.is_video_model:  # (B, T, 3, H, W) -> (B, tokens, D)
                hidden = self.model(pixel_values=pixels).last_hidden_state
            else:  # every frame alone: (B*T, 3, H, W) -> (B*T, D) -> (B, T, D)
                output = self.model(pixel_values=pixels.flatten(0, 1))
                if self.frame_pooling == "cls":
                    per_frame = output.last_hidden_state[:, 0]
                elif self.frame_pooling == "mean_patch":
                    per_frame = output.last_hidden_state[:, 1:].mean(dim=1)
                else:
                    per_frame = output.pooler_output
                hidden = per_frame.reshape(len(items), self.n_frames, -1)
        hidden = hidden.float().cpu().numpy()
        self.run_stats["utterances"] += len(items)
        for item in items:
            self.run_stats[f"reader_{item.info.get('reader')}"] += 1
        return [np.ascontiguousarray(hidden[row]) for row in range(len(items))]

    def _provenance(self) -> dict:
        if self.random_seed is not None:
            record = {
                "checkpoint": self.checkpoint,
                "revision": None,
                "weights_sha256": state_dict_sha256(self.model),
                "pretrained": False,
                "weights": f"RANDOM (not pretrained): ViTConfig({RANDOM_VIT_SMALL}) initialised under "
                           f"torch.manual_seed({self.random_seed})",
            }
        else:
            record = hf_checkpoint_provenance(self.checkpoint, self.resolved, self.revision, self.commit,
                                              self.model.config)
            record["pretrained"] = True
        record.update({
            "layers": [-1],
            "model_type": self.model.config.model_type,
            "frames": {"n_frames": self.n_frames, "fps": self.fps, "size": self.size,
                       "sampling": "slot centres; 1/fps slots centred in clips >= n_frames/fps, else spread over the clip"},
            "frame_pooling": self.frame_pooling,
            "normalization": {"mean": list(self.pixel_stats[0]), "std": list(self.pixel_stats[1]),
                              "source": self.normalize},
            "checkpoint_normalization": self.checkpoint_stats,
            "compute_dtype": self._compute_dtype(),
            "device": self.device,
            "libraries": library_versions("torch", "transformers", "decord", "opencv-python-headless", "av"),
        })
        return record
