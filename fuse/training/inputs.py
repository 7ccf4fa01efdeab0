"""What a new run reads: the FeatureData its options ask for.

`feature_data_arguments` is the single derivation of the data a run reads from its options,
so two runs with equal arguments read identical data (a sweep builds that FeatureData once
and hands it to each run through the recipe's `data=`).
"""
from __future__ import annotations

from typing import Any

from cache_schema import CacheError, open_cache
from fuse.data import DataError, FeatureData, inspect_task
from fuse.options import TrainOptions
from fuse.training.errors import TrainingError


def model_classes(name: str):
    from fuse.models import MODELS

    if name not in MODELS:
        raise TrainingError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def feature_data_arguments(options: TrainOptions) -> dict[str, Any]:
    """The arguments of `FeatureData.for_training` that `options` (resolved) ask for.

    Two runs with equal arguments read identical data (a sweep shares one FeatureData).
    """
    model_class = model_classes(options.model)[1]
    requested = {"text": options.text, "audio": options.audio, "video": options.video}
    if model_class.uses_only is not None:  # e.g. `context` reads text only: do not load the rest
        for m in requested:
            if m not in model_class.uses_only:
                if requested[m] not in (None, "none"):
                    raise TrainingError(f"model {options.model!r} reads only {sorted(model_class.uses_only)}; drop --{m}")
                requested[m] = "none"
    return {
        "requested": requested,
        "task": options.task,
        "max_len": options.max_len,
        "normalisation": options.normalisation,
        "metadata": options.metadata,
        "context_turns": options.context_turns,
        "in_memory": options.in_memory,
        "block_mb": options.block_mb,
        "pool_blocks": options.pool_blocks,
        "block_rows": options.block_rows,
    }


def build_training_data(options: TrainOptions, cache=None) -> FeatureData:
    """FeatureData for a new run of `options` (resolved), on `cache` (default: options.cache)."""
    try:
        cache = cache if cache is not None else open_cache(options.cache)
        arguments = feature_data_arguments(options)
        task = inspect_task(cache, arguments.pop("task"), model_classes(options.model)[1].supports_tasks)
        return FeatureData.for_training(cache, arguments.pop("requested"), task=task, **arguments)
    except (CacheError, DataError) as exc:
        raise TrainingError(str(exc)) from None
