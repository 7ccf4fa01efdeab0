"""Training: the recipe that turns options and a cache into a trained run.

    recipe.py  TrainingRecipe (setup / train / evaluate / save_checkpoint / cleanup), train()
    report.py  the plots a finished run draws
    seeds.py   several seeds of one configuration, mean ± std
"""
from __future__ import annotations

from typing import Callable

from fuse.device import DeterminismFlags
from fuse.options import TrainOptions
from fuse.training.errors import TrainingDiverged, TrainingError
from fuse.training.inputs import build_training_data, feature_data_arguments
from fuse.training.recipe import RunResult, TrainingRecipe
from fuse.training.seeds import format_seed_summary, summarise_seeds, train_seeds


def train(
    options: TrainOptions,
    *,
    resume: bool = False,
    data=None,
    echo: Callable[[str], None] = print,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> RunResult:
    """Train (or with `resume`, continue) one run: setup, train, cleanup.

    `data`: a FeatureData from `build_training_data` to use instead of building one (new runs
    only). Torch's process-wide determinism flags are restored on return.
    """
    recipe = TrainingRecipe(echo=echo, on_epoch_end=on_epoch_end)
    with DeterminismFlags():
        try:
            recipe.setup(options, data, resume=resume)
            return recipe.train()
        finally:
            recipe.cleanup()


__all__ = [
    "RunResult",
    "TrainOptions",
    "TrainingDiverged",
    "TrainingError",
    "TrainingRecipe",
    "build_training_data",
    "feature_data_arguments",
    "format_seed_summary",
    "summarise_seeds",
    "train",
    "train_seeds",
]
