"""`run_tune`: check everything, run the study in this process or N worker processes, then
re-run the best trial (and the default config) over several seeds and write the report.

    runs/tune/
      study.db                      the Optuna study (SQLite; or any --storage URL)
      tune.json                     this invocation: command, storage, trial counts, best vs default
      trials/trial-0007/            one ordinary run folder per trial (+ train.log)
      best/seed-<s>/, best/seeds.json      the best trial's options, one run per --seeds seed
      default/seed-<s>/, default/seeds.json   the base config alone (the model's defaults), same seeds
      leaderboard.csv / .md         trials ranked by dev metric
      optimization_history.png, param_importances.png, intermediate_values.png

Running the same command again continues the study (Optuna's `load_if_exists`) until
`--trials` trials have completed or been pruned; finished seed runs are read back, not redone.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fuse.jsonio import write_json
from fuse.tune.space import SearchSpace, TuneError

COUNTED = ("COMPLETE", "PRUNED")  # a trial counts towards --trials when it completed or was pruned


@dataclass
class TuneConfig:
    space: SearchSpace
    cache: str
    out: str
    trials: int
    metric: str
    direction: str
    storage: str
    study_name: str
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    heartbeat_s: int = 10
    threads: int | None = None


@dataclass
class TuneResult:
    out: Path
    counts: dict[str, int]
    best_trial: int | None
    best: dict[str, Any] | None = None
    default: dict[str, Any] | None = None
    comparison: str | None = None
    files: list[Path] = field(default_factory=list)


def _counted(study) -> int:
    return sum(t.state.name in COUNTED for t in study.get_trials(deepcopy=False))


def _study(config: TuneConfig, worker: int = 0):
    from fuse.tune.study import make_pruner, make_sampler, make_storage, open_study

    storage = make_storage(config.storage, config.heartbeat_s)
    study = open_study(storage, config.study_name, config.direction, config.space.to_dict(), pruner=make_pruner(config.pruner))
    # The sampler's random state lives in this process: seeded by worker and by how many trials
    # the study holds, so a resumed study (or another worker) does not redraw earlier points,
    # and the same study state gives the same draws.
    study.sampler = make_sampler(config.sampler, config.seed + 100_003 * worker + len(study.get_trials(deepcopy=False)))
    return study


def run_worker(config: TuneConfig, worker: int = 0, echo: Callable[[str], None] = print) -> None:
    """One worker: trials until the study has `config.trials` completed or pruned ones."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from fuse.sweep.execute import SharedData
    from fuse.tune.objective import Objective, TrialError

    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    study = _study(config, worker)
    if _counted(study) >= config.trials:
        return
    objective = Objective(config.space, config.cache, Path(config.out), config.metric, SharedData(), echo)

    def stop_on_repeated_errors(study, trial) -> None:
        errors = sum("error" in t.user_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        if errors >= max(3, config.trials):
            echo(f"stopping: {errors} trials failed with errors (see the leaderboard)")
            study.stop()

    try:
        study.optimize(
            objective,
            callbacks=[MaxTrialsCallback(config.trials, states=(TrialState.COMPLETE, TrialState.PRUNED)), stop_on_repeated_errors],
            catch=(TrialError,),
            gc_after_trial=False,
        )
    except KeyboardInterrupt:
        _requeue_interrupted(study)
        raise


def _requeue_interrupted(study) -> None:
    """Ctrl-C: Optuna marks the running trial FAIL; queue its parameters again (same run folder)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    requeued = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("pid") == os.getpid() and "error" not in t.user_attrs and t.number not in requeued:
            study.enqueue_trial(t.params, user_attrs={"run": t.user_attrs["run"], "retry_of": t.number})


def _worker_process(config: TuneConfig, worker: int) -> None:
    from fuse.sweep.execute import _die_with_parent

    _die_with_parent()  # a killed `fuse tune` takes its workers with it (they would race its re-run)
    run_worker(config, worker, echo=lambda message: print(f"[worker {worker}] {message}", flush=True))


def _run_workers(config: TuneConfig, workers: int) -> None:
    context = multiprocessing.get_context("spawn")  # no fork after zarr's and torch's threads exist
    if config.threads is None:
        config.threads = max(1, (os.cpu_count() or 1) // workers)
    processes = [context.Process(target=_worker_process, args=(config, i)) for i in range(workers)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
    failed = [p.exitcode for p in processes if p.exitcode not in (0, None)]
    if failed:
        raise TuneError(f"a tune worker process exited with code {failed[0]}; run the same command again to continue the study")


def preflight(space: SearchSpace, cache: str, metric: str | None) -> tuple[str, str]:
    """Refuse, before any trial, feature sets or tasks the cache cannot serve; (metric, direction)."""
    from fuse import metrics as M
    from fuse.data import DataError, inspect_task
    from fuse.sweep.execute import _preflight
    from fuse.sweep.grid import SweepError, expand
    from fuse.training.inputs import model_classes

    categorical = {d.name: list(d.choices) for d in space.dimensions if d.kind == "categorical" and "." not in d.name}
    choices = {k: v for k, v in categorical.items() if k in ("model", "task", "text", "audio", "video")}
    plan = expand({"base": space.base, **({"grid": choices} if choices else {"runs": [{}]})}, source=space.source)
    try:
        cache_handle = _preflight(plan, Path(cache))
    except SweepError as exc:
        raise TuneError(str(exc)) from None
    options = plan.runs[0].options
    try:
        task = inspect_task(cache_handle, options.get("task", "auto"), model_classes(options.get("model", "cmaf"))[1].supports_tasks)
    except DataError as exc:
        raise TuneError(str(exc)) from None
    metric = metric or M.DEFAULT_METRIC[task]
    if metric not in M.headline(task):
        raise TuneError(f"metric {metric!r} is not a {task} metric (choose from {', '.join(M.headline(task))})")
    return metric, "minimize" if metric in M.LOWER_IS_BETTER else "maximize"


def rerun_seeds(options: dict[str, Any], out: Path, seeds: list[int], echo: Callable[[str], None]) -> dict[str, Any]:
    """One run per seed in out/seed-<s> (finished ones read back), then out/seeds.json."""
    from fuse.sweep.execute import SharedData
    from fuse.training import summarise_seeds
    from fuse.tune.objective import train_run

    shared = SharedData()
    results = {}
    for seed in seeds:
        run_dir = out / f"seed-{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "train.log", "a", encoding="utf-8") as log:
            results[seed] = train_run({**options, "seed": seed, "out": str(run_dir.resolve())}, shared, lambda m: (log.write(m + "\n"), log.flush()))
    summary = summarise_seeds(results)
    write_json(out / "seeds.json", {**summary, "options": {k: v for k, v in options.items() if k != "out"}})
    return summary


def run_tune(
    config: TuneConfig,
    *,
    workers: int = 1,
    seeds: list[int] | None = None,
    baseline: bool = True,
    echo: Callable[[str], None] = print,
) -> TuneResult:
    from fuse.training import format_seed_summary
    from fuse.tune.objective import trial_options
    from fuse.tune.report import format_comparison, write_leaderboard, write_plots

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    study = _study(config)  # created here once, so workers only load it
    before = _counted(study)
    echo(
        f"study {config.study_name!r} in {config.storage}: {before} of {config.trials} trials done; "
        f"dev {config.metric} ({config.direction}), {config.sampler} sampler, {config.pruner} pruner"
        + (f", {workers} worker processes" if workers > 1 else "")
    )
    started = time.perf_counter()
    if before < config.trials:
        if workers > 1:
            _run_workers(config, workers)
        else:
            run_worker(config, 0, echo)
    study = _study(config)
    counts: dict[str, int] = {}
    for t in study.trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    files = write_leaderboard(study, out, config.metric)
    plots, not_drawn = write_plots(study, out, config.metric)
    files += plots
    for name, why in not_drawn.items():
        echo(f"not drawn: {name} ({why})")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    result = TuneResult(out, counts, None, files=files)
    record: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "study": config.study_name,
        "storage": config.storage.split("@")[-1],
        "space": config.space.to_dict(),
        "cache": str(Path(config.cache).resolve()),
        "metric": config.metric,
        "direction": config.direction,
        "sampler": config.sampler,
        "pruner": config.pruner,
        "seed": config.seed,
        "trials_requested": config.trials,
        "trial_states": counts,
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 3),
    }
    if complete:
        best_trial = study.best_trial
        result.best_trial = best_trial.number
        record["best_trial"] = {"number": best_trial.number, "params": best_trial.params, f"dev_{config.metric}": best_trial.value}
        echo(f"best trial {best_trial.number}: dev {config.metric} {best_trial.value:.4f} {best_trial.params}")
        if seeds:
            best_options = trial_options(config.space, best_trial.params, config.cache, out, config.metric)
            best_out = out / "best"
            _refuse_other_best(best_out, best_trial.number)
            echo(f"re-running the best trial with seeds {seeds} -> {best_out}")
            result.best = rerun_seeds({**best_options, "progress": False}, best_out, seeds, echo)
            write_json(best_out / "trial.json", {"trial": best_trial.number, "params": best_trial.params})
            echo(format_seed_summary(result.best))
            record["best"] = _summary_record(result.best, best_out)
            if baseline:
                default_out = out / "default"
                echo(f"the default config (base options, the model's defaults) with the same seeds -> {default_out}")
                result.default = rerun_seeds({**trial_options(config.space, {}, config.cache, out, config.metric), "progress": False}, default_out, seeds, echo)
                echo(format_seed_summary(result.default))
                record["default"] = _summary_record(result.default, default_out)
            result.comparison = format_comparison(result.best, result.default, config.metric)
            record["comparison"] = result.comparison
            echo(result.comparison)
    write_json(out / "tune.json", record)
    result.files.append(out / "tune.json")
    for path in result.files:
        echo(f"wrote {path}")
    return result


def _refuse_other_best(best_out: Path, number: int) -> None:
    """best/ holds the re-runs of one trial; a later, better trial gets a fresh folder."""
    import shutil

    from fuse.jsonio import read_json

    marker = best_out / "trial.json"
    if marker.is_file() and read_json(marker).get("trial") != number:
        previous = best_out.with_name(f"best-trial-{read_json(marker)['trial']}")
        shutil.move(str(best_out), str(previous))  # kept, not overwritten: the earlier best's runs


def _summary_record(summary: dict[str, Any], folder: Path) -> dict[str, Any]:
    return {
        "folder": str(folder),
        "seeds": summary["seeds"],
        "splits": {s: {n: {"mean": v["mean"], "std": v["std"]} for n, v in m.items()} for s, m in summary["splits"].items()},
    }
