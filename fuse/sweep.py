"""Sweeps: many training runs against one feature cache, sharing what they can.

    fuse sweep --cache data/feats.zarr --grid grid.yaml --out runs/sweep [--jobs N] [--metric NAME]

The grid file holds either a `grid:` (a mapping of option -> list of values; every
combination is one run) or a `runs:` list of explicit configs, plus an optional `base:` of
options every run shares (docs/sweep.md):

    base: {epochs: 10, batch_size: 32, normalisation: global}
    grid:
      model: [late, context]
      text: [text.minilm, text.glove-6b-50d]
      lr: [1.0e-3, 3.0e-4]
      model_config.dropout: [0.1, 0.3]      # dotted keys reach into model_config / max_len
      seed: [1, 2, 3]

Options are the fields of `fuse.train.TrainOptions` (what `fuse train --config` accepts)
except `cache` and `out`, which the sweep sets.

Choices:

* **One cache, one FeatureData per data configuration, per process.** `fuse.train.train()`
  opens its cache and builds its `FeatureData` itself and takes neither as an argument, so
  while a sweep runs, each process that trains installs a per-process memo behind the two
  names `train()` calls (`fuse.train.open_cache` and `fuse.train.FeatureData.for_training`,
  restored afterwards): the cache is opened once per path, and a FeatureData is built once per
  distinct set of arguments (feature sets, task, max lengths, normalisation, metadata, dialogue
  context, block layout) and handed to every later run with the same arguments. Building one
  reads the table, fits the normalisation statistics (a pass over the training features) and,
  for context models, the per-utterance means; with `in_memory: true` the shared FeatureData
  also keeps every prepared utterance, so each feature set is read from Zarr once per process
  rather than once per run and epoch. Its batches depend only on (seed, epoch), so a shared
  FeatureData gives exactly the batches a fresh one would (tests check that a sweep run's
  metrics equal a stand-alone `train()`'s). A `data=` parameter on `train()` would make the
  memo unnecessary.
* **Run names** are derived from the options the grid (or the run entry) sets, in a fixed
  order (model, text, audio, video, then alphabetical), plus six hex digits of a hash of every
  result-relevant option (`base` included), e.g. `late_text-minilm_lr-0.001_seed-1_3fa2c1`:
  readable, stable across invocations and key orders, unchanged when other values are added
  to the grid, and different whenever the run would differ.
* **Resume.** A run folder whose `config.yaml` disagrees with the sweep's options is an error
  (never overwritten). A run with `metrics.json` is finished and skipped; one with `last.pt`
  but no metrics was killed mid-way and continues with the trainer's `resume=True` (which ends
  with the metrics of an uninterrupted run); one without a checkpoint is started again.
* **Failures.** A run that fails (a TrainingError, or anything else, e.g. running out of
  memory) is recorded with its error in its `train.log`, `sweep_run.json` and the leaderboard;
  the other runs go on. Problems that would fail every run (unknown options, feature sets the
  cache lacks, a model that cannot handle the cache's task) are found before the first run.
* **Parallel runs** (`jobs > 1`) use worker processes started with `spawn` (forking after
  zarr's event-loop thread and torch's thread pools exist is unsafe). Each worker opens the
  cache once and serves many runs; runs are handed out grouped by data configuration so a
  worker tends to reuse its FeatureData. Torch threads per worker default to cores / jobs so
  workers do not oversubscribe the CPU.
* **Leaderboard**: `leaderboard.csv` (every headline metric of dev and test) and
  `leaderboard.md`, ranked by the chosen dev metric (default: the runs' early-stopping
  metric), ties broken by name, failed runs listed after. When runs differ only by `seed`,
  `leaderboard_seeds.{csv,md}` give mean ± std over seeds per configuration
  (`fuse.train.summarise_seeds`). Timings live in `sweep.json`, so two sweeps of the same
  grid in deterministic mode write identical leaderboards whatever `jobs` was.
* **Split views** (`split_view`): a cache that shares another cache's feature sets (symbolic
  links, nothing is copied) under a different split column. Cross-validation folds, or
  scoring a corpus's dev split as `test` while early stopping on a part carved from train,
  then need no re-extraction and no change to the trainer.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import difflib
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import yaml

from fuse.batch import MODALITIES

TOP_LEVEL_KEYS = ("base", "grid", "runs", "cache", "metric")
SET_BY_SWEEP = ("cache", "out")
# Options that do not change a run's results: left out of its identity (name hash, resume check).
NOT_RESULT_RELEVANT = ("out", "cache", "progress", "tensorboard", "device", "in_memory")
NESTED_OPTIONS = ("model_config", "max_len")
RUN_RECORD = "sweep_run.json"
SWEEP_RECORD = "sweep.json"
PLAN_FILE = "plan.json"
TRAIN_LOG = "train.log"
VIEW_MARKER = ".emofuse-split-view.json"
_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")  # YAML 1.1 reads 1e-3 as a string


class SweepError(ValueError):
    """The grid, the cache or the sweep folder is not usable; the message says why."""


class SweepInterrupted(RuntimeError):
    """The sweep was interrupted (Ctrl-C); running it again resumes."""


# ---------------------------------------------------------------------------------------------
# Grid files -> planned runs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    name: str
    options: dict[str, Any]  # TrainOptions fields (nested dicts merged), without cache/out
    label: dict[str, Any]  # the options this run's grid entry sets (names it; leaderboard columns)
    identity: str  # hash of the result-relevant options


@dataclass
class SweepPlan:
    runs: list[PlannedRun]
    source: str
    metric: str | None = None  # leaderboard metric from the file (the CLI's --metric wins)
    cache: str | None = None  # from the file (the CLI's --cache wins)

    def by_name(self) -> dict[str, PlannedRun]:
        return {r.name: r for r in self.runs}


def _train_option_fields() -> dict[str, dataclasses.Field]:
    from fuse.train import TrainOptions

    return {f.name: f for f in dataclasses.fields(TrainOptions)}


def _annotation_schema(annotation: Any) -> dict[str, Any]:
    """JSON schema of a dataclass field from its (string) annotation; {} when unknown."""
    kinds = []
    for part in (p.strip() for p in str(annotation).split("|")):
        if part == "None":
            kinds.append({"type": "null"})
        elif part == "str":
            kinds.append({"type": "string"})
        elif part == "int":
            kinds.append({"type": "integer"})
        elif part == "float":
            kinds.append({"type": "number"})
        elif part == "bool":
            kinds.append({"type": "boolean"})
        elif part.startswith("list[str]"):
            kinds.append({"type": "array", "items": {"type": "string"}})
        elif part.startswith("dict[str, int]"):
            kinds.append({"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}})
        elif part.startswith("dict"):
            kinds.append({"type": "object"})
        else:
            return {}
    return kinds[0] if len(kinds) == 1 else {"anyOf": kinds}


def _options_schema() -> dict[str, Any]:
    properties = {name: _annotation_schema(f.type) for name, f in _train_option_fields().items() if name not in SET_BY_SWEEP}
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _coerce_floats(options: dict[str, Any], annotations: Mapping[str, Any]) -> dict[str, Any]:
    """'1e-3' -> 0.001 for float fields: PyYAML (YAML 1.1) reads exponent-only floats as strings."""
    out = dict(options)
    for key, value in options.items():
        if isinstance(value, str) and _SCIENTIFIC.match(value) and "float" in str(annotations.get(key, "")):
            out[key] = float(value)
    return out


def _suggest(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_key(key: str, where: str, source: str) -> None:
    """Raise SweepError unless `key` is a sweepable option or a dotted nested option."""
    fields = _train_option_fields()
    head, _, tail = key.partition(".")
    if tail:
        if head not in NESTED_OPTIONS:
            raise SweepError(f"{source}: {where} key {key!r}: only {' and '.join(NESTED_OPTIONS)} take dotted keys")
        if head == "max_len" and tail not in MODALITIES:
            raise SweepError(f"{source}: {where} key {key!r}: max_len is per modality ({', '.join(MODALITIES)})")
        return
    if key in SET_BY_SWEEP:
        raise SweepError(f"{source}: {where} key {key!r} is set by the sweep (use --{key} / the sweep's --out)")
    if key not in fields:
        valid = sorted(set(fields) - set(SET_BY_SWEEP))
        raise SweepError(
            f"{source}: {where} key {key!r} is not a training option{_suggest(key, valid)}; valid options: {', '.join(valid)}"
            f" (and model_config.<key>, max_len.<modality>)"
        )


def _merge(options: dict[str, Any], key: str, value: Any) -> None:
    head, _, tail = key.partition(".")
    if tail:
        nested = dict(options.get(head) or {})
        nested[tail] = value
        options[head] = nested
    elif key in NESTED_OPTIONS and isinstance(value, Mapping) and isinstance(options.get(key), Mapping):
        options[key] = {**options[key], **value}
    else:
        options[key] = value


def _flat_label(entry: Mapping[str, Any]) -> dict[str, Any]:
    label = {}
    for key, value in entry.items():
        if key in NESTED_OPTIONS and isinstance(value, Mapping):
            label.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            label[key] = value
    return label


def _lookup(options: Mapping[str, Any], key: str) -> Any:
    head, _, tail = key.partition(".")
    return (options.get(head) or {}).get(tail) if tail else options.get(key)


def _label_order(key: str) -> tuple:
    """model, text, audio, video, then the rest alphabetically: names ignore YAML key order."""
    first = ("model",) + MODALITIES
    return (first.index(key), "") if key in first else (len(first), key)


def identity_of(options: Mapping[str, Any]) -> str:
    """Six hex digits of a hash of the options that can change a run's results."""
    relevant = {k: v for k, v in options.items() if k not in NOT_RESULT_RELEVANT and v is not None}
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return "+".join(f"{k}{_format_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "+".join(_format_value(v) for v in value) or "none"
    return str(value)


def run_name(label: Mapping[str, Any], identity: str, max_len: int = 120) -> str:
    """`late_text-minilm_lr-0.001_seed-1_3fa2c1`: the grid entry's options, then the hash.

    Options that would make the name longer than `max_len` characters are left out whole
    (the hash still tells the runs apart).
    """
    parts = []
    for key, value in label.items():
        if key == "model":
            parts.append(str(value))
            continue
        if key in MODALITIES and isinstance(value, str) and value.startswith(key + "."):
            value = value[len(key) + 1 :]  # text: text.minilm -> text-minilm
        parts.append(f"{key.rsplit('.', 1)[-1]}-{_format_value(value)}")
    kept: list[str] = []
    for part in (re.sub(r"[^A-Za-z0-9_.+=-]+", "-", p).strip("-") for p in parts):
        if part and len("_".join(kept + [part])) <= max_len:
            kept.append(part)
    return "_".join(kept + [identity])


def _validate_run(options: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    """Type-check one run's merged options; returns them with float strings coerced."""
    import jsonschema

    from fuse.models import MODELS
    from fuse.train import TrainOptions, TrainingError

    fields = _train_option_fields()
    options = _coerce_floats(options, {k: f.type for k, f in fields.items()})
    model = options.get("model", fields["model"].default)
    if model not in MODELS:
        raise SweepError(f"{source}: {where}: unknown model {model!r}{_suggest(str(model), MODELS)}; available: {', '.join(sorted(MODELS))}")
    config_class = MODELS[model][0]
    if options.get("model_config"):
        model_fields = {f.name: f for f in dataclasses.fields(config_class)}
        if not isinstance(options["model_config"], Mapping):
            raise SweepError(f"{source}: {where}: model_config must be a mapping of setting -> value")
        for key in options["model_config"]:
            if key not in model_fields:
                raise SweepError(
                    f"{source}: {where}: model_config key {key!r} is not a setting of model {model!r}"
                    f"{_suggest(key, model_fields)}; valid: {', '.join(sorted(model_fields))}"
                )
        options["model_config"] = _coerce_floats(dict(options["model_config"]), {k: f.type for k, f in model_fields.items()})
    errors = sorted(jsonschema.Draft202012Validator(_options_schema()).iter_errors(options), key=lambda e: list(e.path))
    if errors:
        problems = "; ".join(f"option {'.'.join(map(str, e.path)) or '?'}: {e.message}" for e in errors[:5])
        raise SweepError(f"{source}: {where}: {problems}")
    try:
        TrainOptions.from_dict({"cache": "", **options})
    except (TrainingError, TypeError) as exc:
        raise SweepError(f"{source}: {where}: {exc}") from None
    return options


def expand(spec: Mapping[str, Any], source: str = "grid") -> SweepPlan:
    """Validate a grid mapping (as loaded from YAML) and expand it into planned runs."""
    if not isinstance(spec, Mapping):
        raise SweepError(f"{source}: expected a mapping with `grid:` or `runs:` (and optional `base:`)")
    unknown = [k for k in spec if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise SweepError(
            f"{source}: unknown top-level key {unknown[0]!r}{_suggest(str(unknown[0]), TOP_LEVEL_KEYS)}; "
            f"allowed: {', '.join(TOP_LEVEL_KEYS)} (training options go under base:, grid: or runs:)"
        )
    if ("grid" in spec) == ("runs" in spec):
        raise SweepError(f"{source}: give exactly one of `grid:` (options -> lists of values) or `runs:` (a list of configs)")
    base = spec.get("base") or {}
    if not isinstance(base, Mapping):
        raise SweepError(f"{source}: `base:` must be a mapping of option -> value")
    for key in base:
        _check_key(str(key), "base", source)

    entries: list[dict[str, Any]] = []
    if "grid" in spec:
        grid = spec["grid"]
        if not isinstance(grid, Mapping) or not grid:
            raise SweepError(f"{source}: `grid:` must be a non-empty mapping of option -> list of values")
        for key, values in grid.items():
            _check_key(str(key), "grid", source)
            if not isinstance(values, list) or not values:
                raise SweepError(
                    f"{source}: grid key {key!r} must be a non-empty list of values, got {values!r} "
                    f"(fixed options go under base:)"
                )
        keys = list(grid)
        entries = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    else:
        runs = spec["runs"]
        if not isinstance(runs, list) or not runs:
            raise SweepError(f"{source}: `runs:` must be a non-empty list of option mappings")
        for i, entry in enumerate(runs):
            if not isinstance(entry, Mapping):
                raise SweepError(f"{source}: runs[{i}] must be a mapping of option -> value, got {entry!r}")
            for key in entry:
                _check_key(str(key), f"runs[{i}]", source)
            entries.append(dict(entry))

    planned: list[PlannedRun] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        options: dict[str, Any] = {}
        for key, value in base.items():
            _merge(options, str(key), value)
        for key, value in entry.items():
            _merge(options, str(key), value)
        label = _flat_label(entry)
        where = f"run {i + 1} ({', '.join(f'{k}={_format_value(v)}' for k, v in label.items())})"
        options = _validate_run(options, where, source)
        label = {k: _lookup(options, k) for k in sorted(label, key=_label_order)}  # validated values
        identity = identity_of(options)
        name = run_name(label, identity)
        if name in seen:
            raise SweepError(f"{source}: {where} is the same run as run {seen[name] + 1} ({name})")
        seen[name] = i
        planned.append(PlannedRun(name, options, label, identity))
    metric = spec.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise SweepError(f"{source}: `metric:` must be a metric name")
    cache = spec.get("cache")
    return SweepPlan(planned, source, metric, None if cache is None else str(cache))


def load_grid(path: str | Path) -> SweepPlan:
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"cannot read grid file {path}: {exc}") from None
    return expand(loaded or {}, source=str(path))


# ---------------------------------------------------------------------------------------------
# Sharing caches and FeatureData between runs of one process
# ---------------------------------------------------------------------------------------------


class SharedData:
    """Per-process memo: one opened Cache per path, one FeatureData per argument set (LRU)."""

    def __init__(self, max_feature_data: int = 4):
        self.max_feature_data = max_feature_data
        self.caches: dict[str, Any] = {}
        self.feature_data: OrderedDict[str, Any] = OrderedDict()
        self.caches_opened = 0
        self.feature_data_built = 0
        self.feature_data_reused = 0

    def open_cache(self, path):
        from cache_schema import open_cache

        key = os.path.realpath(path)
        if key not in self.caches:
            self.caches[key] = open_cache(path)
            self.caches_opened += 1
        return self.caches[key]

    def adopt(self, cache) -> None:
        """Use an already opened cache (counted as this process's one opening)."""
        key = os.path.realpath(cache.path)
        if key not in self.caches:
            self.caches[key] = cache
            self.caches_opened += 1

    def for_training(self, build: Callable, cache, requested, **kwargs):
        key = json.dumps([os.path.realpath(cache.path), requested, kwargs], sort_keys=True, default=str)
        if key in self.feature_data:
            self.feature_data.move_to_end(key)
            self.feature_data_reused += 1
            return self.feature_data[key]
        data = build(cache, requested, **kwargs)
        self.feature_data[key] = data
        self.feature_data_built += 1
        while len(self.feature_data) > self.max_feature_data:
            self.feature_data.popitem(last=False)
        return data

    def stats(self) -> dict[str, int]:
        return {
            "caches_opened": self.caches_opened,
            "feature_data_built": self.feature_data_built,
            "feature_data_reused": self.feature_data_reused,
        }


@contextlib.contextmanager
def sharing(shared: SharedData):
    """Route fuse.train's cache opening and FeatureData building through `shared`."""
    import fuse.train as trainer

    original_open, original_data = trainer.open_cache, trainer.FeatureData

    class SharedFeatureData(original_data):  # only for_training differs
        @classmethod
        def for_training(cls, cache, requested, **kwargs):
            return shared.for_training(original_data.for_training, cache, requested, **kwargs)

    trainer.open_cache, trainer.FeatureData = shared.open_cache, SharedFeatureData
    try:
        yield shared
    finally:
        trainer.open_cache, trainer.FeatureData = original_open, original_data


# ---------------------------------------------------------------------------------------------
# Run folders: state and resume
# ---------------------------------------------------------------------------------------------


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def config_differences(requested: Mapping[str, Any], saved: Mapping[str, Any]) -> list[str]:
    """Options the sweep sets that a run folder's config.yaml has with another value."""
    diffs = []
    for key, value in requested.items():
        if value is None or (key in NOT_RESULT_RELEVANT and key != "cache"):
            continue
        have = saved.get(key)
        if key in NESTED_OPTIONS and isinstance(value, Mapping) and isinstance(have, Mapping):
            have = {k: have.get(k) for k in value}  # the trainer may add resolved keys
        if _plain(have) != _plain(value):
            diffs.append(f"{key}: the run has {have!r}, the sweep asks for {value!r}")
    return diffs


def run_state(run_dir: Path, requested: Mapping[str, Any]) -> str:
    """'new', 'finished', 'resume' (killed after an epoch), 'restart' (killed before one)."""
    from fuse import runs

    if not run_dir.exists():
        return "new"
    config = run_dir / runs.CONFIG_FILE
    if not config.is_file():
        return "restart"
    try:
        saved = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SweepError(f"{config}: unreadable ({exc}); delete the run folder to redo the run") from None
    diffs = config_differences(requested, saved)
    if diffs:
        raise SweepError(
            f"{run_dir} holds a run with other options ({'; '.join(diffs)}); "
            f"use another --out, or delete the folder to redo it with the sweep's options"
        )
    if (run_dir / runs.METRICS_FILE).is_file():
        return "finished"
    if (run_dir / runs.LAST).is_file():
        try:
            finished = bool(runs.load_checkpoint(run_dir / runs.LAST).get("finished"))
        except Exception:  # a damaged checkpoint: the run cannot be continued
            return "restart"
        # Marked finished but without metrics.json (deleted by hand): nothing left to resume.
        return "restart" if finished else "resume"
    return "restart"


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

_WORKER_SHARED: SharedData | None = None
_WORKER_SHARING = None  # the entered `sharing` context; a reference keeps it from being closed


def _init_worker(threads: int | None) -> None:
    """Worker start: torch threads, and the data memo installed for the worker's lifetime."""
    global _WORKER_SHARED, _WORKER_SHARING
    import torch

    if threads:
        torch.set_num_threads(threads)
    _WORKER_SHARED = SharedData()
    _WORKER_SHARING = sharing(_WORKER_SHARED)
    _WORKER_SHARING.__enter__()  # stays installed until the worker exits


def _worker_task(task: dict[str, Any]) -> dict[str, Any]:
    return _run_task(task, _WORKER_SHARED, None)


def _run_task(task: dict[str, Any], shared: SharedData | None, echo: Callable[[str], None] | None) -> dict[str, Any]:
    """Train (or resume) one run; never raises for a failing run, returns its outcome."""
    from cache_schema import CacheError
    from fuse.data import DataError
    from fuse.runs import RunError
    from fuse.train import TrainingError, TrainOptions, train

    run_dir = Path(task["options"]["out"])
    if task["state"] == "restart" and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"name": task["name"], "identity": task["identity"], "options": task["options"], "state_at_start": task["state"]}
    started = time.perf_counter()
    built_before = shared.feature_data_built if shared else 0
    reused_before = shared.feature_data_reused if shared else 0
    log = open(run_dir / TRAIN_LOG, "a", encoding="utf-8")

    def say(message: str) -> None:
        log.write(message + "\n")
        log.flush()
        if echo is not None:
            echo(message)

    try:
        if task["state"] == "resume":
            opts = task["options"]
            result = train(
                TrainOptions(cache=opts["cache"], model=opts.get("model", "cmaf"), out=opts["out"], device=opts.get("device", "auto"), progress=opts.get("progress", False)),
                resume=True,
                echo=say,
            )
        else:
            result = train(TrainOptions.from_dict(task["options"]), echo=say)
        status, error, metrics = "finished", None, result.metrics
    except (TrainingError, DataError, RunError, CacheError) as exc:  # the run's own, explained failure
        status, error, metrics = "failed", f"{type(exc).__name__}: {exc}", None
        say(f"error: {error}")
    except Exception as exc:  # anything else (a bug, out of memory): record it, go on with the others
        status, error, metrics = "failed", f"{type(exc).__name__}: {exc}", None
        say(f"error: {error}\n{traceback.format_exc()}")
    finally:
        log.close()
    seconds = time.perf_counter() - started
    if shared is None:
        data = "not shared"
    elif shared.feature_data_built > built_before:
        data = "built"
    elif shared.feature_data_reused > reused_before:
        data = "reused"
    else:
        data = "from the run (resumed)"
    record.update(status=status, error=error, seconds=round(seconds, 3), feature_data=data, pid=os.getpid())
    from fuse import runs

    runs.write_json(run_dir / RUN_RECORD, record)
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


def _data_order_key(options: Mapping[str, Any]) -> str:
    """Runs with the same data configuration next to each other (so FeatureData is reused)."""
    from fuse.train import TrainOptions, resolve_options

    resolved = resolve_options(TrainOptions.from_dict({"cache": "", **options}))
    fields = ("text", "audio", "video", "task", "max_len", "normalisation", "metadata", "context_turns", "in_memory", "block_mb", "pool_blocks", "block_rows")
    return json.dumps([getattr(resolved, f) for f in fields], sort_keys=True, default=str)


def _preflight(plan: SweepPlan, cache_path: Path):
    """Refuse, before any training, a grid whose feature sets or tasks the cache cannot serve."""
    from cache_schema import CacheError, open_cache
    from fuse.data import DataError, inspect_task, select_feature_sets
    from fuse.models import MODELS

    try:
        cache = open_cache(cache_path)
        cache.n_utterances
    except CacheError as exc:
        raise SweepError(str(exc)) from None
    checked: set[str] = set()
    for run in plan.runs:
        model_class = MODELS[run.options.get("model", "cmaf")][1]
        requested = {m: run.options.get(m) for m in MODALITIES}
        if model_class.uses_only is not None:
            requested = {m: (v if m in model_class.uses_only else "none") for m, v in requested.items()}
        key = json.dumps([requested, run.options.get("task", "auto"), sorted(model_class.supports_tasks)], sort_keys=True)
        if key in checked:
            continue
        checked.add(key)
        try:
            select_feature_sets(cache, requested)
            inspect_task(cache, run.options.get("task", "auto"), model_class.supports_tasks)
        except (DataError, CacheError) as exc:
            raise SweepError(f"run {run.name}: {exc}") from None
    return cache


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
    cache_path = Path(cache).resolve()
    out = Path(out)
    cache_handle = _preflight(plan, cache_path)
    out.mkdir(parents=True, exist_ok=True)
    planned = {}
    for run in plan.runs:
        options = {**run.options, "cache": str(cache_path), "out": str((out / run.name).resolve())}
        options.setdefault("progress", False)
        planned[run.name] = options
    states = {name: run_state(Path(options["out"]), options) for name, options in planned.items()}
    _write_json(out / PLAN_FILE, {"source": plan.source, "cache": str(cache_path), "runs": {r.name: {"label": r.label, "options": r.options, "identity": r.identity} for r in plan.runs}})

    identity = {r.name: r.identity for r in plan.runs}
    todo = [
        {"name": name, "identity": identity[name], "options": planned[name], "state": states[name]}
        for name in sorted((n for n in planned if states[n] != "finished"), key=lambda n: (_data_order_key(planned[n]), list(planned).index(n)))
    ]
    outcomes: dict[str, dict[str, Any]] = {
        name: {"name": name, "status": "skipped (finished before)", "seconds": 0.0} for name in planned if states[name] == "finished"
    }
    n_skipped = len(outcomes)
    echo(
        f"sweep of {len(planned)} run(s) on {cache_path} -> {out}: {len(todo)} to run"
        + (f", {n_skipped} finished before (skipped)" if n_skipped else "")
        + (f", {sum(t['state'] == 'resume' for t in todo)} to resume" if any(t["state"] == "resume" for t in todo) else "")
        + (f", {sum(t['state'] == 'restart' for t in todo)} to restart (unfinished, no usable checkpoint)" if any(t["state"] == "restart" for t in todo) else "")
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
    if jobs <= 1 or len(todo) <= 1:
        shared = SharedData()
        shared.adopt(cache_handle)  # the cache opened for the checks serves every run
        previous_threads = None
        if threads:
            import torch

            previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
        try:
            with sharing(shared):
                for task in todo:
                    report(_run_task(task, shared, echo if verbose else None))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if previous_threads:
                import torch

                torch.set_num_threads(previous_threads)
        stats["data_sharing"] = {"process": shared.stats()}
    else:
        threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        context = multiprocessing.get_context("spawn")
        executor = concurrent.futures.ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=context, initializer=_init_worker, initargs=(threads,))
        try:
            futures = [executor.submit(_worker_task, task) for task in todo]
            for future in concurrent.futures.as_completed(futures):
                report(future.result())
            executor.shutdown(wait=True)
        except KeyboardInterrupt:
            interrupted = True
            executor.shutdown(wait=False, cancel_futures=True)
        except concurrent.futures.process.BrokenProcessPool as exc:
            executor.shutdown(wait=False, cancel_futures=True)
            raise SweepError(f"a sweep worker process died ({exc}); run the sweep again to resume") from None
        pids = {o.get("pid") for o in outcomes.values() if o.get("pid")}
        stats["data_sharing"] = {
            "worker_processes": len(pids),
            "feature_data_built": sum(o.get("feature_data") == "built" for o in outcomes.values()),
            "feature_data_reused": sum(o.get("feature_data") == "reused" for o in outcomes.values()),
        }
    _write_sweep_record(out, plan, cache_path, jobs, threads, outcomes, started, stats)
    if interrupted:
        raise SweepInterrupted(f"sweep interrupted; run the same command again to resume ({out})")
    board, chosen = leaderboard(plan, out, metric or plan.metric)
    files = write_leaderboards(plan, out, board, chosen, cache_path)
    for path in files:
        echo(f"wrote {path}")
    return SweepResult(out, outcomes, board, chosen, files)


def _one_line(outcome: dict[str, Any]) -> str:
    if outcome["status"] != "finished":
        return f"{outcome['name']}: {outcome['status']}" + (f" ({outcome['error']})" if outcome.get("error") else "")
    m = outcome["metrics"]
    metric = m["metric"]
    text = f"{outcome['name']}: dev {metric} {m['splits']['dev'][metric]:.4f}"
    if "test" in m["splits"]:
        text += f", test {m['splits']['test'][metric]:.4f}"
    return text + f" ({outcome['seconds']:.1f} s, data {outcome['feature_data']})"


def _write_json(path: Path, payload: Any) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


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
    _write_json(out / SWEEP_RECORD, record)


# ---------------------------------------------------------------------------------------------
# Leaderboard
# ---------------------------------------------------------------------------------------------


def leaderboard(plan: SweepPlan, out: str | Path, metric: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Rows (one per planned run) sorted by dev `metric`; unfinished/failed runs last."""
    from fuse import metrics as M
    from fuse import runs

    out = Path(out)
    rows, tasks, own_metrics = [], set(), set()
    for run in plan.runs:
        run_dir = out / run.name
        row: dict[str, Any] = {"run": run.name, "label": run.label, "status": "not run", "metrics": None}
        if (run_dir / runs.METRICS_FILE).is_file():
            metrics = runs.read_json(run_dir / runs.METRICS_FILE)
            row.update(status="finished", metrics=metrics)
            tasks.add(metrics["task"])
            own_metrics.add(metrics["metric"])
        elif (run_dir / RUN_RECORD).is_file():
            record = runs.read_json(run_dir / RUN_RECORD)
            row.update(status=record.get("status", "unknown"), error=record.get("error"))
        rows.append(row)
    if len(tasks) > 1:
        raise SweepError(f"{out}: runs of different tasks ({', '.join(sorted(tasks))}) cannot share one leaderboard")
    task = next(iter(tasks), None)
    if metric is None:
        metric = own_metrics.pop() if len(own_metrics) == 1 else (M.DEFAULT_METRIC[task] if task else None)
    if task is not None and metric not in M.headline(task):
        raise SweepError(f"--metric {metric!r} is not a {task} metric (choose from {', '.join(M.headline(task))})")
    sign = 1.0 if metric in M.LOWER_IS_BETTER else -1.0
    finished = [r for r in rows if r["status"] == "finished"]
    others = [r for r in rows if r["status"] != "finished"]
    finished.sort(key=lambda r: (sign * r["metrics"]["splits"]["dev"][metric], r["run"]))
    for rank, row in enumerate(finished, 1):
        row["rank"] = rank
    return finished + others, metric


def _label_columns(plan: SweepPlan) -> list[str]:
    columns: list[str] = []
    for run in plan.runs:
        columns.extend(k for k in run.label if k not in columns)
    return columns


def _fmt(value: Any) -> str:
    """A metric: 4 decimals."""
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def _fmt_option(value: Any) -> str:
    """An option value as written in names (0.0003, 1e-05, true); blank when unset."""
    return "" if value is None else _format_value(value)


def write_leaderboards(plan: SweepPlan, out: str | Path, board: list[dict[str, Any]], metric: str | None, cache_path: Path | None = None) -> list[Path]:
    """leaderboard.csv/.md, and leaderboard_seeds.csv/.md when runs differ only by seed."""
    from fuse import metrics as M

    out = Path(out)
    label_columns = _label_columns(plan)
    finished = [r for r in board if r["status"] == "finished"]
    task = finished[0]["metrics"]["task"] if finished else None
    names = list(M.headline(task)) if task else []
    splits = [s for s in ("dev", "test") if any(s in r["metrics"]["splits"] for r in finished)]

    # CSV: everything.
    header = ["rank", "run", *label_columns, "status", *(f"{s}_{n}" for s in splits for n in names), "best_epoch", "stop_reason"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in board:
        m = row["metrics"] or {}
        values = [row.get("rank", ""), row["run"], *(_fmt_option(row["label"].get(c)) for c in label_columns), row["status"]]
        values += [_fmt(m.get("splits", {}).get(s, {}).get(n)) for s in splits for n in names]
        values += [m.get("best_epoch", ""), m.get("stop_reason", row.get("error") or "")]
        writer.writerow(values)
    paths = [out / "leaderboard.csv"]
    paths[0].write_text(buffer.getvalue())

    # Markdown: the ranking metric and two more, dev and test side by side.
    shown = [metric] + [n for n in _EXTRA_SHOWN.get(task, ()) if n != metric][:2] if metric else []
    lines = [
        f"# Sweep leaderboard ({out.name})",
        "",
        f"{len(plan.runs)} runs from `{Path(plan.source).name}`"
        + (f" on `{cache_path}`" if cache_path else "")
        + (f"; ranked by dev {metric} ({'lower' if metric in M.LOWER_IS_BETTER else 'higher'} is better)" if metric else "")
        + (", test beside" if "test" in splits else "")
        + ".",
        "",
    ]
    cols = ["rank", "run", *label_columns, *(f"{s} {n}" for n in shown for s in splits), "best epoch"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in finished:
        m = row["metrics"]
        cells = [str(row["rank"]), f"`{row['run']}`", *(_fmt_option(row["label"].get(c)) for c in label_columns)]
        cells += [_fmt(m["splits"].get(s, {}).get(n)) for n in shown for s in splits]
        cells.append(str(m.get("best_epoch", "")))
        lines.append("| " + " | ".join(cells) + " |")
    unfinished = [r for r in board if r["status"] != "finished"]
    if unfinished:
        lines += ["", "Not finished:", ""]
        lines += [f"- `{r['run']}`: {r['status']}" + (f" ({r['error']})" if r.get("error") else "") for r in unfinished]
    paths.append(out / "leaderboard.md")
    paths[1].write_text("\n".join(lines) + "\n")

    seeds = seed_groups(plan, board, metric)
    if seeds:
        paths += _write_seed_tables(out, seeds, metric, splits, names, [c for c in label_columns if c != "seed"])
    return paths


_EXTRA_SHOWN = {"single_label": ("accuracy", "macro_f1", "uar"), "multi_label": ("micro_f1", "macro_f1", "sample_accuracy")}


def seed_groups(plan: SweepPlan, board: list[dict[str, Any]], metric: str | None) -> list[dict[str, Any]]:
    """Finished runs grouped by their options without `seed` (only when some group has > 1)."""
    from fuse import metrics as M
    from fuse.train import summarise_seeds

    if metric is None:
        return []
    by_name = plan.by_name()
    groups: dict[str, dict[str, Any]] = {}
    for row in board:
        if row["status"] != "finished":
            continue
        run = by_name[row["run"]]
        options = {k: v for k, v in run.options.items() if k != "seed"}
        key = json.dumps(options, sort_keys=True, default=str)
        group = groups.setdefault(key, {"label": {k: v for k, v in run.label.items() if k != "seed"}, "results": {}, "runs": []})
        group["results"][run.options.get("seed", 0)] = row["metrics"]
        group["runs"].append(run.name)
    if not any(len(g["results"]) > 1 for g in groups.values()):
        return []
    sign = 1.0 if metric in M.LOWER_IS_BETTER else -1.0
    out = []
    for group in groups.values():
        group["summary"] = summarise_seeds(group["results"])
        out.append(group)
    out.sort(key=lambda g: (sign * g["summary"]["splits"]["dev"][metric]["mean"], g["runs"][0]))
    return out


def _write_seed_tables(out: Path, groups, metric: str, splits, names, label_columns) -> list[Path]:
    header = ["rank", *label_columns, "seeds", *(f"{s}_{n}_{stat}" for s in splits for n in names for stat in ("mean", "std"))]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for rank, g in enumerate(groups, 1):
        stats = g["summary"]["splits"]
        row = [rank, *(_fmt_option(g["label"].get(c)) for c in label_columns), " ".join(map(str, g["summary"]["seeds"]))]
        row += [_fmt(stats.get(s, {}).get(n, {}).get(stat)) for s in splits for n in names for stat in ("mean", "std")]
        writer.writerow(row)
    (out / "leaderboard_seeds.csv").write_text(buffer.getvalue())
    cols = ["rank", *label_columns, "seeds", *(f"{s} {metric}" for s in splits)]
    lines = [f"# Mean ± std over seeds ({out.name}), ranked by dev {metric}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rank, g in enumerate(groups, 1):
        stats = g["summary"]["splits"]
        cells = [str(rank), *(_fmt_option(g["label"].get(c)) for c in label_columns), str(len(g["summary"]["seeds"]))]
        cells += [f"{stats[s][metric]['mean']:.4f} ± {stats[s][metric]['std']:.4f}" for s in splits]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "leaderboard_seeds.md").write_text("\n".join(lines) + "\n")
    return [out / "leaderboard_seeds.csv", out / "leaderboard_seeds.md"]


# ---------------------------------------------------------------------------------------------
# Split views: the same feature sets under another split column
# ---------------------------------------------------------------------------------------------


def split_view(source: str | Path, dest: str | Path, splits: Iterable[str]) -> Path:
    """Write a cache at `dest` whose table is `source`'s with split column `splits`.

    Its feature sets are symbolic links to `source`'s (nothing is copied or re-extracted), so
    a run trained on the view records the view's path and provenance identical to the
    source's. `dest` is replaced if it is a view this function wrote; any other existing
    folder is refused. Used for cross-validation folds and for scoring a dev split as test.
    """
    from cache_schema import UtteranceTable, create_cache, open_cache

    source, dest = Path(source).resolve(), Path(dest)
    cache = open_cache(source)
    table = cache.table
    splits = np.asarray(list(splits), dtype=object)
    if len(splits) != len(table):
        raise SweepError(f"split_view: {len(splits)} split values for {len(table)} utterances of {source}")
    if any(not isinstance(s, str) for s in splits):
        raise SweepError("split_view: split values must be strings (train, dev, test, or '' to leave a row out)")
    if dest.exists():
        if not (dest / VIEW_MARKER).is_file():
            raise SweepError(f"{dest}: exists and is not a split view written by fuse.sweep.split_view; refusing to replace it")
        shutil.rmtree(dest)
    columns = dict(table.columns)
    columns["split"] = splits
    create_cache(dest, UtteranceTable(columns, list(table.label_names), list(table.labels_multi_names)))
    features = dest / "features"
    features.mkdir(exist_ok=True)
    for name in cache.feature_names():
        os.symlink(os.path.realpath(source / "features" / name), features / name, target_is_directory=True)
    values, counts = np.unique(splits, return_counts=True)
    (dest / VIEW_MARKER).write_text(json.dumps({"source": str(source), "splits": {str(v): int(c) for v, c in zip(values, counts)}}, indent=1))
    return dest
