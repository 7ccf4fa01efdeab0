"""Grid files -> planned runs: validation, expansion, run names and identities.

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

Options are those of `fuse.options.TrainOptions` (what `fuse train --config` accepts) except
`cache` and `out`, which the sweep sets; each run's options are validated by the same
`parse_options` as `fuse train`'s, so errors read the same.

Run names are derived from the options the grid (or the run entry) sets, in a fixed order
(model, text, audio, video, then alphabetical), plus six hex digits of a hash of every
result-relevant option (`base` included), e.g. `late_text-minilm_lr-0.001_seed-1_3fa2c1`:
readable, stable across invocations and key orders, unchanged when other values are added
to the grid, and different whenever the run would differ. A name longer than `MAX_NAME`
characters leaves out whole options, but never `seed` nor an option whose value differs
between runs of the sweep: two runs' names always show what tells them apart.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from fuse.batch import MODALITIES
from fuse.options import NESTED, RESULT_NEUTRAL, OptionsError, field_names, parse_options, suggest, unknown_option

TOP_LEVEL_KEYS = ("base", "grid", "runs", "cache", "metric")
MAX_NAME = 120  # characters before the hash; beyond it, options that name no difference are left out
SET_BY_SWEEP = ("cache", "out")


class SweepError(ValueError):
    """The grid, the cache or the sweep folder is not usable; the message says why."""


@dataclass(frozen=True)
class PlannedRun:
    name: str
    options: dict[str, Any]  # the options set for this run (nested dicts merged), without cache/out
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


def _check_key(key: str, where: str, source: str) -> None:
    """Raise SweepError unless `key` is a sweepable option or a dotted nested option."""
    head, _, tail = key.partition(".")
    if tail:
        if head not in NESTED:
            raise SweepError(f"{source}: {where} key {key!r}: only {' and '.join(NESTED)} take dotted keys")
        if head == "max_len" and tail not in MODALITIES:
            raise SweepError(f"{source}: {where} key {key!r}: max_len is per modality ({', '.join(MODALITIES)})")
        return
    if key in SET_BY_SWEEP:
        raise SweepError(f"{source}: {where} key {key!r} is set by the sweep (use --{key} / the sweep's --out)")
    if key not in field_names():
        raise SweepError(f"{source}: {where} key {unknown_option(key)} (and model_config.<key>, max_len.<modality>)")


def _merge(options: dict[str, Any], key: str, value: Any) -> None:
    head, _, tail = key.partition(".")
    if tail:
        nested = dict(options.get(head) or {})
        nested[tail] = value
        options[head] = nested
    elif key in NESTED and isinstance(value, Mapping) and isinstance(options.get(key), Mapping):
        options[key] = {**options[key], **value}
    else:
        options[key] = value


def _flat_label(entry: Mapping[str, Any]) -> dict[str, Any]:
    label = {}
    for key, value in entry.items():
        if key in NESTED and isinstance(value, Mapping):
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
    relevant = {k: v for k, v in options.items() if k not in RESULT_NEUTRAL and v is not None}
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


def differing_options(labels: list[Mapping[str, Any]]) -> set[str]:
    """The label keys whose value is not the same in every run (a key some runs lack differs)."""
    keys = {k for label in labels for k in label}
    return {k for k in keys if len({json.dumps(label.get(k), sort_keys=True, default=str) for label in labels}) > 1}


def run_name(label: Mapping[str, Any], identity: str, max_len: int = MAX_NAME, keep: set[str] | frozenset = frozenset()) -> str:
    """`late_text-minilm_lr-0.001_seed-1_3fa2c1`: the grid entry's options, then the hash.

    Options that would make the name longer than `max_len` characters are left out whole,
    except `seed` and the options in `keep` (those that differ between the sweep's runs),
    which are always written.
    """
    parts = []
    for key, value in label.items():
        if key == "model":
            text = str(value)
        else:
            if key in MODALITIES and isinstance(value, str) and value.startswith(key + "."):
                value = value[len(key) + 1 :]  # text: text.minilm -> text-minilm
            text = f"{key.rsplit('.', 1)[-1]}-{_format_value(value)}"
        text = re.sub(r"[^A-Za-z0-9_.+=-]+", "-", text).strip("-")
        if text:
            parts.append((text, key == "seed" or key in keep))
    budget = max_len - len("_".join(text for text, required in parts if required))
    kept = []
    for text, required in parts:
        if required:
            kept.append(text)
        elif len(text) + 1 <= budget:
            kept.append(text)
            budget -= len(text) + 1
    return "_".join(kept + [identity])


def _validate_run(options: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    """The run's options as validated (types coerced: YAML 1.1 reads 1e-3 as a string)."""
    try:
        validated = parse_options(options, source=f"{source}: {where}").to_dict()
    except OptionsError as exc:
        raise SweepError(str(exc)) from None
    return {key: validated[key] for key in options}


def expand(spec: Mapping[str, Any], source: str = "grid") -> SweepPlan:
    """Validate a grid mapping (as loaded from YAML) and expand it into planned runs."""
    if not isinstance(spec, Mapping):
        raise SweepError(f"{source}: expected a mapping with `grid:` or `runs:` (and optional `base:`)")
    unknown = [k for k in spec if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise SweepError(
            f"{source}: unknown top-level key {unknown[0]!r}{suggest(str(unknown[0]), TOP_LEVEL_KEYS)}; "
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

    validated: list[tuple[dict[str, Any], dict[str, Any], str]] = []
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
        validated.append((options, label, where))

    differing = differing_options([label for _, label, _ in validated])
    planned: list[PlannedRun] = []
    seen: dict[str, int] = {}
    for i, (options, label, where) in enumerate(validated):
        identity = identity_of(options)
        name = run_name(label, identity, keep=differing)
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


