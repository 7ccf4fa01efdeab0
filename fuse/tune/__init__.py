"""Hyperparameter search with Optuna: `fuse tune --cache C --space space.yaml` (docs/tuning.md).

    space.py      search-space YAML -> Optuna suggestions, validated against fuse.options
    study.py      storage (SQLite or any SQLAlchemy URL), heartbeat/retry, sampler, pruner
    objective.py  one trial = one training run scored on dev, pruned per epoch
    report.py     leaderboard.csv/.md and Optuna's plots (PNG)
    runner.py     run_tune: workers, the best trial re-run over seeds vs the default config
"""
from fuse.tune.runner import TuneConfig, TuneResult, preflight, run_tune, run_worker
from fuse.tune.space import SearchSpace, TuneError, load_space, parse_space, refuse_test_split
from fuse.tune.study import default_storage

__all__ = [
    "SearchSpace",
    "TuneConfig",
    "TuneError",
    "TuneResult",
    "default_storage",
    "load_space",
    "parse_space",
    "preflight",
    "refuse_test_split",
    "run_tune",
    "run_worker",
]
