"""Fusion model registry.

    from fuse.models import MODELS, build_model
    model = build_model("cmaf", {"text": 768, "audio": 768}, n_classes=7, task="single_label",
                        dropout=0.1)

`MODELS` maps a model name to its (config dataclass, model class). Every config class carries
`default_training` (a `TrainingDefaults`) with the optimisation settings its seed prescribes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from fuse.models.agf import AGFConfig, AGFModel
from fuse.batch import MetadataSpec
from fuse.models.base import FusionModel, ModelOutput, TrainingDefaults
from fuse.models.carat import CARATConfig, CARATModel
from fuse.models.cma import CMAConfig, CMAModel
from fuse.models.cmaf import CMAFConfig, CMAFModel
from fuse.models.context import ContextConfig, ContextModel
from fuse.models.late import LateFusionConfig, LateFusionModel

MODELS: dict[str, tuple[type, type[FusionModel]]] = {
    "cma": (CMAConfig, CMAModel),
    "agf": (AGFConfig, AGFModel),
    "cmaf": (CMAFConfig, CMAFModel),
    "carat": (CARATConfig, CARATModel),
    "late": (LateFusionConfig, LateFusionModel),
    "context": (ContextConfig, ContextModel),
}


def build_model(
    name: str,
    input_dims: Mapping[str, int],
    n_classes: int,
    task: str,
    metadata: MetadataSpec | None = None,
    **config_overrides: Any,
) -> FusionModel:
    """Build model `name` for features of `input_dims` ({modality: feature dim}).

    `config_overrides` replace fields of the model's config dataclass. Raises ValueError for
    an unknown model, an unknown config key, or data/task the model cannot handle (e.g.
    carat on a single-label task, cma without audio).
    """
    config_class, model_class = _lookup(name)
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(config_overrides) - known)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} for model {name!r}; valid keys: {sorted(known)}")
    model_class.check_compatible(input_dims, n_classes, task)
    config = config_class(**config_overrides)
    return model_class(config, input_dims, n_classes, task, metadata)


def _lookup(name: str) -> tuple[type, type[FusionModel]]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(MODELS)}")
    return MODELS[name]


__all__ = ["MODELS", "build_model", "FusionModel", "MetadataSpec", "ModelOutput", "TrainingDefaults"]
