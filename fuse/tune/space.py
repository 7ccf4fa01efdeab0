"""Search-space files -> Optuna suggestions: validation against the training options schema.

    # space.yaml
    base:                          # fixed options of every trial (like a sweep's base:)
      epochs: 10
      in_memory: true
    space:                         # option -> a range or a list of choices
      lr: {low: 1.0e-5, high: 1.0e-2, log: true}
      weight_decay: {low: 0.0, high: 0.1}
      batch_size: {choices: [16, 32, 64]}
      model: {choices: [cmaf, late]}
      text: {choices: [text.minilm, none]}
      model_config.dropout: {low: 0.0, high: 0.5}
      model_config.hidden_size: {low: 32, high: 256, step: 32}
    metric: weighted_f1            # the dev metric to optimise [the cache task's default]
    split: dev                     # the only split an objective may use (test is refused)

Keys are the fields of `fuse.options.TrainOptions` (checked by the sweep's `_check_key`, so
errors read like a grid's), with dotted `model_config.<key>` / `max_len.<modality>`. A range
is an integer range when `low` and `high` are integers and the option is an integer (or, for
dotted keys, when both bounds are integers), else a float range; `log: true` samples on a log
scale, `step` quantises. Both bounds of a range and every choice are validated by the same
`parse_options` as `fuse train`'s flags, once with every model the space can pick, so a bad
value is found before the first trial. Errors are one line naming the file and the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from fuse.options import OptionsError, fields_info, parse_options, suggest
from fuse.sweep.grid import SweepError, _check_key, _merge

TOP_LEVEL_KEYS = ("base", "space", "metric", "split", "cache")
RANGE_KEYS = ("low", "high", "log", "step")


class TuneError(ValueError):
    """The search space, the study or the tune folder is not usable; the message is one line."""


@dataclass(frozen=True)
class Dimension:
    """One searched option: a float/int range or a list of choices."""

    name: str  # option name, dotted for model_config / max_len
    kind: str  # "float", "int" or "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step, "kind": self.kind}


@dataclass
class SearchSpace:
    dimensions: list[Dimension]
    base: dict[str, Any]
    source: str
    metric: str | None = None
    cache: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def options_for(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's options (not yet validated): base, then the sampled values."""
        options: dict[str, Any] = {}
        for key, value in self.base.items():
            _merge(options, key, value)
        for key, value in params.items():
            _merge(options, key, value)
        return options

    def sample(self, trial) -> dict[str, Any]:
        return {d.name: d.suggest(trial) for d in self.dimensions}

    def to_dict(self) -> dict[str, Any]:
        """What identifies the space (stored with the study, compared when it is resumed)."""
        return {"base": self.base, "space": {d.name: d.to_dict() for d in self.dimensions}, "metric": self.metric}


def refuse_test_split(split: Any, source: str) -> None:
    """The objective is the dev split's metric, never test's (test must stay unseen by selection)."""
    if split is None or split == "dev":
        return
    if str(split).lower() in ("test", "valid_test", "eval"):
        raise TuneError(
            f"{source}: split {split!r}: fuse tune optimises the dev split only; tuning on test selects "
            f"hyperparameters on the test set and its score stops being an unbiased estimate"
        )
    raise TuneError(f"{source}: split {split!r}: the objective is the dev split's metric (split: dev)")


def _is_int_option(name: str) -> bool:
    if "." in name:
        return False
    annotation = str(fields_info()[name].annotation)
    return "int" in annotation and "float" not in annotation


def _dimension(name: str, spec: Any, source: str) -> Dimension:
    where = f"{source}: space key {name!r}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, Mapping):
        raise TuneError(f"{where}: expected {{low: .., high: ..[, log: true]}} or {{choices: [..]}}, got {spec!r} (fixed options go under base:)")
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise TuneError(f"{where}: a choice takes only `choices:`, not {', '.join(extra)}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise TuneError(f"{where}: `choices:` must be a non-empty list")
        for choice in choices:
            if not (choice is None or isinstance(choice, (bool, int, float, str))):
                raise TuneError(f"{where}: choice {choice!r} is not a number, string, boolean or null (Optuna stores only those)")
        return Dimension(name, "categorical", choices=tuple(choices))
    unknown = sorted(set(spec) - set(RANGE_KEYS))
    if unknown:
        raise TuneError(f"{where}: unknown setting {unknown[0]!r}{suggest(unknown[0], RANGE_KEYS + ('choices',))}; a range takes low, high, log, step")
    if "low" not in spec or "high" not in spec:
        raise TuneError(f"{where}: a range needs `low:` and `high:` (or give `choices:`)")
    try:
        low, high = (v if isinstance(v, int) and not isinstance(v, bool) else float(v) for v in (spec["low"], spec["high"]))
        step = spec.get("step")
        step = None if step is None else (step if isinstance(step, int) else float(step))
    except (TypeError, ValueError):
        raise TuneError(f"{where}: low/high/step must be numbers, got {spec!r}") from None
    if not low < high:
        raise TuneError(f"{where}: low ({low}) must be below high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise TuneError(f"{where}: `log:` must be true or false")
    if log and low <= 0:
        raise TuneError(f"{where}: a log range needs low > 0 (got {low})")
    if log and step is not None:
        raise TuneError(f"{where}: `step:` and `log: true` cannot be combined (Optuna samples either)")
    integral = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
    kind = "int" if integral and (_is_int_option(name) or "." in name) else "float"
    if kind == "float":
        low, high = float(low), float(high)
    return Dimension(name, kind, low=low, high=high, log=log, step=step)


def _check_values(space: SearchSpace) -> None:
    """Validate each range bound and each choice with every model the space can pick."""
    models = next((d.choices for d in space.dimensions if d.name == "model"), None) or (space.base.get("model", "cmaf"),)
    for dim in space.dimensions:
        values = dim.choices if dim.kind == "categorical" else (dim.low, dim.high)
        for model in models if dim.name != "model" else (None,):
            for value in values:
                params = {dim.name: value} if model is None else {"model": model, dim.name: value}
                try:
                    parse_options(space.options_for(params), source="")
                except OptionsError as exc:
                    detail = str(exc).removeprefix(": ")
                    with_model = f" with model {model!r}" if model is not None and "model" in {d.name for d in space.dimensions} else ""
                    raise TuneError(f"{space.source}: space key {dim.name!r} value {value!r}{with_model}: {detail}") from None


def parse_space(spec: Any, source: str = "space") -> SearchSpace:
    """Validate a search-space mapping (as loaded from YAML); TuneError (one line) otherwise."""
    if not isinstance(spec, Mapping):
        raise TuneError(f"{source}: expected a mapping with `space:` (and optional base:, metric:, split:, cache:)")
    unknown = [k for k in spec if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise TuneError(
            f"{source}: unknown top-level key {unknown[0]!r}{suggest(str(unknown[0]), TOP_LEVEL_KEYS)}; "
            f"allowed: {', '.join(TOP_LEVEL_KEYS)} (training options go under base: or space:)"
        )
    refuse_test_split(spec.get("split"), source)
    base = spec.get("base") or {}
    if not isinstance(base, Mapping):
        raise TuneError(f"{source}: `base:` must be a mapping of option -> value")
    searched = spec.get("space")
    if not isinstance(searched, Mapping) or not searched:
        raise TuneError(f"{source}: `space:` must be a non-empty mapping of option -> range or choices")
    try:
        for key in base:
            _check_key(str(key), "base", source)
        for key in searched:
            _check_key(str(key), "space", source)
    except SweepError as exc:
        raise TuneError(str(exc)) from None
    both = sorted(set(map(str, base)) & set(map(str, searched)))
    if both:
        raise TuneError(f"{source}: key {both[0]!r} is both fixed (base:) and searched (space:); keep one")
    if "seed" in searched:
        raise TuneError(f"{source}: space key 'seed' is not a hyperparameter; fix it under base: (the best trial is re-run with --seeds)")
    metric = spec.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise TuneError(f"{source}: `metric:` must be a metric name")
    if isinstance(metric, str) and metric.startswith("test"):
        refuse_test_split("test", f"{source}: metric {metric!r}")
    flat_base: dict[str, Any] = {}
    for key, value in base.items():
        _merge(flat_base, str(key), value)
    space = SearchSpace([_dimension(str(k), v, source) for k, v in searched.items()], flat_base, source, metric, spec.get("cache"))
    try:
        parse_options(space.base, source=f"{source}: base")
    except OptionsError as exc:
        raise TuneError(str(exc)) from None
    _check_values(space)
    return space


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TuneError(f"{path}: unreadable ({first})") from None
    return parse_space(loaded or {}, source=str(path))
