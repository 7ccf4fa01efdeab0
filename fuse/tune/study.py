"""The Optuna study: storage (a real database), sampler, pruner, and resuming it.

* **Storage.** `sqlite:///<tune folder>/study.db` by default; any SQLAlchemy URL
  (`postgresql://user:pass@host/db`, `mysql+pymysql://...`) via `--storage`, so workers on many
  nodes share one study. SQLite gets a long lock timeout because `--workers N` processes
  write to the same file.
* **Killed workers.** The storage records a heartbeat of every running trial; a trial whose
  heartbeat is older than the grace period (2 x interval) is marked FAIL by the next worker
  that starts a trial, and `RetryHeartbeatStaleTrialCallback` queues its parameters again
  (WAITING, picked before any new sample), so a kill -9 loses no trial. The retry reuses the
  killed trial's run folder and continues from its last checkpoint.
* **Sampler / pruner.** TPE by default, seeded (`fuse.tune.runner` offsets the seed by worker
  and by the trials the study holds, so parallel workers and a resumed study do not redraw
  earlier points); MedianPruner by default: a trial whose dev metric
  after an epoch is worse than the median of earlier trials at that epoch is stopped, after
  5 trials have finished and from epoch 2 on (`n_warmup_steps=2`).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from fuse.tune.space import TuneError

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
DEFAULT_HEARTBEAT_S = 10
MAX_RETRY = 3


def default_storage(out: str | Path) -> str:
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def _quiet_experimental():
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def make_storage(url: str, heartbeat_s: int = DEFAULT_HEARTBEAT_S):
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    _quiet_experimental()
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}
    try:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_s,
            grace_period=2 * heartbeat_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=True),
        )
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as exc:
        raise TuneError(f"--storage {url}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    except Exception as exc:  # SQLAlchemy's errors for unreachable servers, bad URLs, missing drivers
        if type(exc).__module__.startswith("sqlalchemy"):
            raise TuneError(f"--storage {url}: {str(exc).splitlines()[0]}") from None
        raise


def make_sampler(kind: str, seed: int):
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise TuneError(f"--sampler {kind!r}: choose from {', '.join(SAMPLERS)}")


def make_pruner(kind: str):
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise TuneError(f"--pruner {kind!r}: choose from {', '.join(PRUNERS)}")


def open_study(storage, name: str, direction: str, space_record: dict[str, Any], sampler=None, pruner=None):
    """Create the study, or load it when it exists (refusing one made for another space)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler, pruner=pruner, load_if_exists=True)
    saved = study.user_attrs.get("space")
    if saved is None:
        study.set_user_attr("space", space_record)
    elif saved != _jsonable(space_record):
        raise TuneError(
            f"study {name!r} in {_shown(storage)} was made for another search space or metric; "
            f"use another --study or --out (or the space it was made with)"
        )
    if study.direction.name.lower() != direction:
        raise TuneError(f"study {name!r} {study.direction.name.lower()}s; this metric needs {direction}")
    return study


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


def _shown(storage) -> str:
    url = getattr(storage, "url", str(storage))
    return url.split("@")[-1] if "@" in url else url  # no passwords in messages
