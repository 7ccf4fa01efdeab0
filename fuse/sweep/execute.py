"""Running a sweep: every planned run not finished yet, in one process or in worker processes.

* **One cache, one FeatureData per data configuration, per process.** Each process keeps a
  `SharedData`: the cache opened once per path, and a FeatureData built once per distinct
  `fuse.training.feature_data_arguments` (feature sets, task, max lengths, normalisation,
  metadata, dialogue context, block layout) and handed to every later run with the same
  arguments through the recipe's `data=` parameter. Building one reads the table, fits the
  normalisation statistics and, for context models, the per-utterance means. With
  `in_memory: true` each feature set is read into RAM once, as stored (float16), and kept on
  the shared opened cache (`FeatureSet.in_ram`), so every FeatureData on it, whatever its
  normalisation or frame limits, uses that one copy per process rather than reading Zarr once
  per run and epoch.
* **Failures.** A run that fails (a TrainingError, or anything else, e.g. running out of
  memory) is recorded with its error in its `train.log`, `sweep_run.json` and the leaderboard;
  the other runs go on. Problems that would fail every run (unknown options, feature sets the
  cache lacks, a model that cannot handle the cache's task) are found before the first run.
* **Parallel runs** (`jobs > 1`): worker processes started with `spawn` (forking after zarr's
  event-loop thread and torch's thread pools exist is unsafe) take runs from one queue, each
  with its own SharedData; runs are queued grouped by data configuration so a worker tends to
  reuse its FeatureData. Torch threads per worker default to cores / jobs.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fuse.jsonio import write_json
from fuse.sweep.grid import SweepError, SweepPlan
from fuse.sweep.leaderboard import RUN_RECORD, leaderboard, write_leaderboards
from fuse.sweep.state import run_state

SWEEP_RECORD = "sweep.json"
PLAN_FILE = "plan.json"
TRAIN_LOG = "train.log"


class SweepInterrupted(RuntimeError):
    """The sweep was interrupted (Ctrl-C); running it again resumes."""


class SharedData:
    """Per-process memo: one opened Cache per path, one FeatureData per data configuration (LRU)."""

    def __init__(self, max_feature_data: int = 4):
        self.max_feature_data = max_feature_data
        self.caches: dict[str, Any] = {}
        self.feature_data: OrderedDict[str, Any] = OrderedDict()
        self.built = self.reused = 0

    def adopt(self, cache) -> None:
        """Use an already opened cache."""
        from cache_schema.store import identity

        self.caches.setdefault(identity(cache.path), cache)

    def data_for(self, options):
        """The FeatureData for resolved `options`, built on first use."""
        from cache_schema import CacheError, open_cache
        from cache_schema.store import identity
        from fuse.training import TrainingError, build_training_data, feature_data_arguments

        path = identity(options.cache)
        key = json.dumps([path, feature_data_arguments(options)], sort_keys=True, default=str)
        if key in self.feature_data:
            self.feature_data.move_to_end(key)
            self.reused += 1
            return self.feature_data[key]
        if path not in self.caches:
            try:
                self.caches[path] = open_cache(path)
            except CacheError as exc:
                raise TrainingError(str(exc)) from None
        data = self.feature_data[key] = build_training_data(options, self.caches[path])
        self.built += 1
        while len(self.feature_data) > self.max_feature_data:
            self.feature_data.popitem(last=False)
        return data

    def stats(self) -> dict[str, int]:
        return {"caches_opened": len(self.caches), "feature_data_built": self.built, "feature_data_reused": self.reused}


def run_task(task: dict[str, Any], shared: SharedData, echo: Callable[[str], None] | None) -> dict[str, Any]:
    """Train (or resume) one run; never raises for a failing run, returns its outcome."""
    from cache_schema import CacheError
    from fuse.data import DataError
    from fuse.options import OptionsError, parse_options, resolve_options
    from fuse.runs import RunError
    from fuse.training import TrainingError, train

    from fuse.runs.folders import clear_run_folder
    from fuse.runs.lock import RunLock

    run_dir = Path(task["options"]["out"])
    try:
        lock = RunLock(run_dir).acquire()  # held across the restart and the run (re-entrant)
    except RunError as exc:
        return {"name": task["name"], "identity": task["identity"], "status": "failed", "error": str(exc), "seconds": 0.0, "metrics": None}
    if task["state"] == "restart":
        clear_run_folder(run_dir)
    record = {"name": task["name"], "identity": task["identity"], "options": task["options"], "state_at_start": task["state"]}
    started = time.perf_counter()
    built_before, reused_before = shared.built, shared.reused
    log = open(run_dir / TRAIN_LOG, "a", encoding="utf-8")

    def say(message: str) -> None:
        log.write(message + "\n")
        log.flush()
        if echo is not None:
            echo(message)

    try:
        options = parse_options(task["options"])
        if task["state"] == "resume":
            result = train(options, resume=True, echo=say)
        else:
            options = resolve_options(options)
            result = train(options, data=shared.data_for(options), echo=say)
        status, error, metrics = "finished", None, result.metrics
    except (TrainingError, DataError, RunError, CacheError, OptionsError) as exc:  # the run's own, explained failure
        status, error, metrics = "failed", f"{type(exc).__name__}: {exc}", None
        say(f"error: {error}")
    except Exception as exc:  # anything else (a bug, out of memory): record it, go on with the others
        status, error, metrics = "failed", f"{type(exc).__name__}: {exc}", None
        say(f"error: {error}\n{traceback.format_exc()}")
    finally:
        log.close()
        lock.release()
    if shared.built > built_before:
        data = "built"
    elif shared.reused > reused_before:
        data = "reused"
    else:
        data = "from the run (resumed)"
    record.update(status=status, error=error, seconds=round(time.perf_counter() - started, 3), feature_data=data, pid=os.getpid())
    write_json(run_dir / RUN_RECORD, record)
    return {**record, "metrics": _headline_only(metrics)}


def _headline_only(metrics: dict | None) -> dict | None:
    if metrics is None:
        return None
    from fuse import metrics as M

    names = M.headline(metrics["task"])
    return {
        "task": metrics["task"],
        "metric": metrics["metric"],
        "splits": {s: {n: m[n] for n in names if n in m} for s, m in metrics["splits"].items()},
    }


def _worker(tasks, results, threads: int) -> None:
    """A worker process: runs tasks from the queue until it reads None."""
    import torch

    _die_with_parent()
    torch.set_num_threads(threads)
    shared = SharedData()
    while (task := tasks.get()) is not None:
        results.put(run_task(task, shared, None))


def _die_with_parent() -> None:
    """Linux: the kernel sends this worker SIGTERM when the sweep process dies (even by SIGKILL).

    Otherwise a killed sweep would leave its workers training, racing the sweep re-run.
    """
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not Linux: workers end when they next read the closed queue
        return
    parent = os.getppid()
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _run_in_workers(todo: list[dict[str, Any]], jobs: int, threads: int, report: Callable[[dict], None]) -> None:
    context = multiprocessing.get_context("spawn")
    tasks, results = context.Queue(), context.Queue()
    for task in todo:
        tasks.put(task)
    workers = [context.Process(target=_worker, args=(tasks, results, threads), daemon=True) for _ in range(min(jobs, len(todo)))]
    for worker in workers:
        tasks.put(None)
        worker.start()
    try:
        for _ in todo:
            while True:
                try:
                    report(results.get(timeout=1.0))
                    break
                except queue.Empty:
                    dead = [w for w in workers if w.exitcode not in (None, 0)]
                    if dead:
                        raise SweepError(f"a sweep worker process died (exit code {dead[0].exitcode}); run the sweep again to resume") from None
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join()


def _data_order_key(options: dict[str, Any]) -> str:
    """Runs with the same data configuration next to each other (so FeatureData is reused)."""
    from fuse.options import parse_options, resolve_options
    from fuse.training import feature_data_arguments

    return json.dumps(feature_data_arguments(resolve_options(parse_options(options))), sort_keys=True, default=str)


def _preflight(plan: SweepPlan, cache_path: str):
    """Refuse, before any training, a grid whose feature sets or tasks the cache cannot serve."""
    from cache_schema import CacheError, open_cache
    from fuse.data import DataError, inspect_task, select_feature_sets
    from fuse.options import parse_options
    from fuse.training import TrainingError, feature_data_arguments
    from fuse.training.inputs import model_classes

    try:
        cache = open_cache(cache_path)
        cache.n_utterances
    except CacheError as exc:
        raise SweepError(str(exc)) from None
    checked: set[str] = set()
    for run in plan.runs:
        options = parse_options(run.options)
        try:
            arguments = feature_data_arguments(options)
            supported = model_classes(options.model)[1].supports_tasks
            key = json.dumps([arguments["requested"], options.task, sorted(supported)], sort_keys=True)
            if key in checked:
                continue
            checked.add(key)
            select_feature_sets(cache, arguments["requested"])
            inspect_task(cache, options.task, supported)
        except (DataError, CacheError, TrainingError) as exc:
            raise SweepError(f"run {run.name}: {exc}") from None
    return cache


@dataclass
class PreparedSweep:
    cache: str  # absolute path or URL, as every run's `cache` option
    cache_handle: Any  # the Cache opened by the checks
    options: dict[str, dict[str, Any]]  # run name -> its full options (cache and out set)
    states: dict[str, str]  # run name -> run_state


def run_options(run, cache: str, out: Path) -> dict[str, Any]:
    """A planned run's full options: the sweep's cache and the run's folder set, no progress bars."""
    options = {**run.options, "cache": cache, "out": str((Path(out) / run.name).resolve())}
    options.setdefault("progress", False)
    return options


def prepare_sweep(plan: SweepPlan, cache: str | Path, out: Path) -> PreparedSweep:
    """Check the plan against the cache, fix each run's options and state, write plan.json.

    Shared by both executors (local processes, Snakemake), so their run folders agree.
    """
    from cache_schema.store import absolute

    cache_path = absolute(str(cache))
    cache_handle = _preflight(plan, cache_path)
    out.mkdir(parents=True, exist_ok=True)
    planned = {run.name: run_options(run, cache_path, out) for run in plan.runs}
    states = {name: run_state(Path(options["out"]), options) for name, options in planned.items()}
    record = {"source": plan.source, "cache": cache_path, "runs": {r.name: {"label": r.label, "options": r.options, "identity": r.identity} for r in plan.runs}}
    write_json(out / PLAN_FILE, record)
    return PreparedSweep(cache_path, cache_handle, planned, states)


def plan_from_record(out: Path) -> SweepPlan:
    """The SweepPlan a sweep folder's plan.json holds (a Snakemake job rebuilds it from there)."""
    from fuse.jsonio import read_json
    from fuse.sweep.grid import PlannedRun

    record = read_json(out / PLAN_FILE)
    runs = [PlannedRun(name, r["options"], r["label"], r["identity"]) for name, r in record["runs"].items()]
    return SweepPlan(runs, record["source"], cache=record["cache"])


@dataclass
class SweepResult:
    out: Path
    outcomes: dict[str, dict[str, Any]]  # run name -> outcome of this invocation (skipped too)
    leaderboard: list[dict[str, Any]]
    metric: str | None
    files: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [n for n, o in self.outcomes.items() if o["status"] == "failed"]


def run_sweep(
    plan: SweepPlan,
    cache: str | Path,
    out: str | Path,
    *,
    jobs: int = 1,
    metric: str | None = None,
    threads: int | None = None,
    echo: Callable[[str], None] = print,
    verbose: bool = False,
) -> SweepResult:
    """Run every planned run not finished yet, then write the leaderboard. See the module docstring."""
    out = Path(out)
    prepared = prepare_sweep(plan, cache, out)
    cache_path, cache_handle, planned, states = prepared.cache, prepared.cache_handle, prepared.options, prepared.states

    identity = {r.name: r.identity for r in plan.runs}
    order = list(planned)
    todo = [
        {"name": name, "identity": identity[name], "options": planned[name], "state": states[name]}
        for name in sorted((n for n in planned if states[n] != "finished"), key=lambda n: (_data_order_key(planned[n]), order.index(n)))
    ]
    outcomes: dict[str, dict[str, Any]] = {
        name: {"name": name, "status": "skipped (finished before)", "seconds": 0.0} for name in planned if states[name] == "finished"
    }
    counts = {s: sum(t["state"] == s for t in todo) for s in ("resume", "restart")}
    echo(
        f"sweep of {len(planned)} run(s) on {cache_path} -> {out}: {len(todo)} to run"
        + (f", {len(outcomes)} finished before (skipped)" if outcomes else "")
        + (f", {counts['resume']} to resume" if counts["resume"] else "")
        + (f", {counts['restart']} to restart (unfinished, no usable checkpoint)" if counts["restart"] else "")
        + (f"; {jobs} worker processes" if jobs > 1 and len(todo) > 1 else "")
    )
    started = time.perf_counter()
    stats: dict[str, Any] = {}

    def report(outcome: dict[str, Any]) -> None:
        outcomes[outcome["name"]] = outcome
        done = sum(1 for o in outcomes.values() if not o["status"].startswith("skipped"))
        echo(f"[{done}/{len(todo)}] {_one_line(outcome)}")
        _write_sweep_record(out, plan, cache_path, jobs, threads, outcomes, started, stats)

    interrupted = False
    try:
        if jobs <= 1 or len(todo) <= 1:
            shared = SharedData()
            shared.adopt(cache_handle)  # the cache opened for the checks serves every run
            with _torch_threads(threads):
                for task in todo:
                    report(run_task(task, shared, echo if verbose else None))
            stats["data_sharing"] = {"process": shared.stats()}
        else:
            threads = threads or max(1, (os.cpu_count() or 1) // jobs)
            _run_in_workers(todo, jobs, threads, report)
            stats["data_sharing"] = {
                "worker_processes": len({o.get("pid") for o in outcomes.values() if o.get("pid")}),
                "feature_data_built": sum(o.get("feature_data") == "built" for o in outcomes.values()),
                "feature_data_reused": sum(o.get("feature_data") == "reused" for o in outcomes.values()),
            }
    except KeyboardInterrupt:
        interrupted = True
    _write_sweep_record(out, plan, cache_path, jobs, threads, outcomes, started, stats)
    if interrupted:
        raise SweepInterrupted(f"sweep interrupted; run the same command again to resume ({out})")
    board, chosen = leaderboard(plan, out, metric or plan.metric)
    files = write_leaderboards(plan, out, board, chosen, cache_path)
    for path in files:
        echo(f"wrote {path}")
    return SweepResult(out, outcomes, board, chosen, files)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """Set torch's thread count for a block (None: leave it), restoring it afterwards."""
    if not threads:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _one_line(outcome: dict[str, Any]) -> str:
    if outcome["status"] != "finished":
        return f"{outcome['name']}: {outcome['status']}" + (f" ({outcome['error']})" if outcome.get("error") else "")
    m = outcome["metrics"]
    metric = m["metric"]
    text = f"{outcome['name']}: dev {metric} {m['splits']['dev'][metric]:.4f}"
    if "test" in m["splits"]:
        text += f", test {m['splits']['test'][metric]:.4f}"
    return text + f" ({outcome['seconds']:.1f} s, data {outcome['feature_data']})"


def _write_sweep_record(out, plan, cache_path, jobs, threads, outcomes, started, stats) -> None:
    record = {
        "source": plan.source,
        "cache": str(cache_path),
        "jobs": jobs,
        "threads_per_worker": threads,
        "wall_seconds": round(time.perf_counter() - started, 3),
        **stats,
        "runs": {name: {k: v for k, v in o.items() if k not in ("options", "metrics")} for name, o in outcomes.items()},
    }
    write_json(out / SWEEP_RECORD, record)
