"""The objective: one trial = one training run, scored by its dev metric (never test).

Each trial samples the search space, trains with `fuse.training.train` into
`<tune folder>/trials/trial-<n>` (an ordinary run folder: `fuse evaluate` works on it) and
returns the best epoch's dev metric. After every epoch the dev metric is reported to Optuna
through the recipe's `on_epoch_end` hook and the pruner may stop the trial (`TrialPruned`).

A trial re-queued after its worker was killed keeps the killed trial's number for its folder
and continues from its last checkpoint (`fuse.sweep.state.run_state`, as a resumed sweep run
does). Each worker keeps one `fuse.sweep.execute.SharedData`, so trials that read the same
data configuration share one FeatureData (with `in_memory: true`, one float16 copy of each feature set per process).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from fuse.tune.space import SearchSpace

TRIALS_DIR = "trials"
TRIAL_LOG = "train.log"


class TrialError(RuntimeError):
    """A trial's training failed (recorded in the study with its error; the study goes on)."""


def trial_dir(out: Path, number: int) -> Path:
    return Path(out) / TRIALS_DIR / f"trial-{number:04d}"


def trial_options(space: SearchSpace, params: dict[str, Any], cache: str, run_dir: Path, metric: str) -> dict[str, Any]:
    """A trial's options: base, the sampled values, and what the tune sets."""
    options = space.options_for(params)
    options.setdefault("progress", False)
    options.setdefault("tensorboard", False)
    options.update(cache=str(Path(cache).resolve()), out=str(Path(run_dir).resolve()), metric=metric)
    return options


def train_run(options: dict[str, Any], shared, echo: Callable[[str], None], on_epoch_end=None) -> dict[str, Any]:
    """Train (or continue, or just read) the run in options['out']; returns its metrics.json."""
    from fuse.jsonio import read_json
    from fuse.options import parse_options, resolve_options
    from fuse.runs.folders import METRICS_FILE, clear_run_folder
    from fuse.runs.lock import RunLock
    from fuse.sweep.state import run_state
    from fuse.training import train

    run_dir = Path(options["out"])
    state = run_state(run_dir, options)
    if state == "finished":
        return read_json(run_dir / METRICS_FILE)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir).acquire()
    try:
        if state == "restart":  # killed before its first checkpoint: start over (its log kept)
            clear_run_folder(run_dir, keep=(".lock", TRIAL_LOG))
        if state == "resume":
            echo(f"continuing {run_dir} from its last checkpoint")
            return train(parse_options(options), resume=True, echo=echo, on_epoch_end=on_epoch_end).metrics
        resolved = resolve_options(parse_options(options))
        return train(resolved, data=shared.data_for(resolved), echo=echo, on_epoch_end=on_epoch_end).metrics
    finally:
        lock.release()


class Objective:
    """Callable for `study.optimize`: sample, train, report per epoch, return the dev metric."""

    def __init__(self, space: SearchSpace, cache: str, out: Path, metric: str, shared, echo: Callable[[str], None] = print):
        self.space, self.cache, self.out, self.metric, self.shared, self.echo = space, cache, Path(out), metric, shared, echo

    def __call__(self, trial) -> float:
        import optuna

        from cache_schema import CacheError
        from fuse.data import DataError
        from fuse.options import OptionsError
        from fuse.runs import RunError
        from fuse.sweep.grid import SweepError
        from fuse.training import TrainingError

        params = self.space.sample(trial)
        # A retry of a killed trial inherits its user attributes, so it finds the killed run's folder.
        run_dir = self.out / trial.user_attrs["run"] if "run" in trial.user_attrs else trial_dir(self.out, trial.number)
        trial.set_user_attr("run", str(run_dir.relative_to(self.out)))
        trial.set_user_attr("pid", os.getpid())
        options = trial_options(self.space, params, self.cache, run_dir, self.metric)
        run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        log = open(run_dir / TRIAL_LOG, "a", encoding="utf-8")

        def say(message: str) -> None:
            log.write(message + "\n")
            log.flush()

        def report(epoch: int, row: dict[str, Any]) -> None:
            value = row[f"dev_{self.metric}"]
            trial.report(value, epoch + 1)
            trial.set_user_attr("epochs", epoch + 1)
            if trial.should_prune():
                say(f"pruned after epoch {epoch + 1}: dev {self.metric} {value:.4f} is below the median of earlier trials")
                raise optuna.TrialPruned(f"epoch {epoch + 1}: dev {self.metric} {value:.4f}")

        try:
            metrics = train_run(options, self.shared, say, on_epoch_end=report)
        except optuna.TrialPruned:
            self.echo(f"trial {trial.number}: pruned after epoch {trial.user_attrs.get('epochs')} ({_params_text(params)})")
            raise
        except (TrainingError, DataError, RunError, CacheError, OptionsError, SweepError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            say(f"error: {error}")
            trial.set_user_attr("error", error)
            self.echo(f"trial {trial.number}: failed ({error})")
            raise TrialError(error) from None
        finally:
            log.close()
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
        from fuse import metrics as M

        dev = metrics["splits"]["dev"]
        trial.set_user_attr("dev", {k: dev[k] for k in M.headline(metrics["task"]) if k in dev})
        trial.set_user_attr("best_epoch", metrics["best_epoch"])
        trial.set_user_attr("stop_reason", metrics["stop_reason"])
        value = float(dev[self.metric])  # the dev split only: test never reaches the study
        if not math.isfinite(value):
            raise TrialError(f"dev {self.metric} is {value}")
        self.echo(f"trial {trial.number}: dev {self.metric} {value:.4f} ({_params_text(params)}; {time.perf_counter() - started:.1f} s)")
        return value


def _params_text(params: dict[str, Any]) -> str:
    from fuse.sweep.grid import _format_value

    return ", ".join(f"{k}={_format_value(v)}" for k, v in params.items())
