"""Every option of a training run, defined once.

Four typed groups (pydantic v2 dataclasses, so values are validated and coerced on
construction and an unknown key is refused):

    RunPlace        where a run reads and writes, and how it reports (no effect on results)
    LearningOptions what is learned: model, task, hyperparameters, seed
    DataOptions     what data is read: feature sets, normalisation, metadata, context, lengths
    LoadingOptions  how it is read: streaming blocks, in-memory copy

`TrainOptions` inherits all four, so a run's options are one flat mapping (the `--config`
YAML, a sweep's `base:`/`grid:` entries and a run folder's `config.yaml` use the same keys).
Everything else is derived from these definitions: the click options of `fuse train`
(`fuse.cli.options_from_schema`), the validation of `--config` files and sweep grids
(`parse_options`, one error format everywhere), which options change a run's results
(`RESULT_NEUTRAL`, used for sweep run identities) and which ones choose its data (the
FeatureData a sweep shares between runs).

`None` for a hyperparameter means "the model's `default_training`" (its seed's value);
`resolve_options` fills those in, and the resolved options are what a run records.
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from fuse.data.spec import DEFAULT_BLOCK_MB, DEFAULT_POOL_BLOCKS

STRICT = ConfigDict(extra="forbid")
DEFAULT_CONTEXT_TURNS = 10  # seed 1 Table 1 "Max Dialogue Length"
NORMALISATIONS = ("auto", "global", "speaker", "none")
# The `epochs` cap when none is given: generous, so that early stopping on dev (the model's
# patience) decides how long a run trains, not the cap (issue 18: on MELD the seed's 15 and the
# benchmark's 10 epochs stopped every run at its last epoch). The warmup and decay of the
# `linear` and `bert_adam` schedules are fractions of the cap's steps; `plateau` (the light
# baselines' default) does not depend on the cap.
DEFAULT_MAX_EPOCHS = 50


class OptionsError(ValueError):
    """An option is unknown or has a value of the wrong kind; the message is one line."""


@dataclass(config=STRICT)
class RunPlace:
    """Where a run reads and writes, and how it reports; never changes its numbers."""

    cache: str | None = Field(None, description="Feature cache (Zarr) to train from.")
    out: str | None = Field(None, description="Run folder [runs/<model>, or runs/<model>-2, -3 ... when taken; with --resume the latest].")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    progress: bool = Field(True, description="Progress bars.")
    tensorboard: bool = Field(True, description="Write TensorBoard events when tensorboard is installed.")
    allow_changed_features: bool = Field(
        False, description="With --resume: continue although the cache's feature sets changed since training (recorded in the run)."
    )
    overwrite: bool = Field(False, description="Replace what --out holds (a finished run, or other files) instead of refusing.")


@dataclass(config=STRICT)
class LearningOptions:
    """What is learned: the model, its task and every hyperparameter of the optimisation."""

    model: str = Field("cmaf", description="Model name (cma, agf, cmaf, carat, late, context).")
    task: Literal["auto", "single_label", "multi_label"] = Field("auto", description="auto: the one the cache's labels allow.")
    epochs: int | None = Field(
        None, ge=1, description=f"Maximum epochs, a cap: early stopping (--patience on dev) normally ends training first [{DEFAULT_MAX_EPOCHS}]."
    )
    batch_size: int | None = Field(None, ge=1, description="[model default]")
    lr: float | None = Field(None, gt=0, description="Peak learning rate [model default].")
    weight_decay: float | None = Field(None, ge=0, description="AdamW's decoupled weight decay [model default].")
    l2: float = Field(
        0.0, ge=0,
        description="L2 penalty l2/2 * sum of squared weights (the weight-decayed parameters) added to the training loss: the "
        "penalty logistic regression and ridge minimise, which decoupled weight_decay does not converge to; 0 = off.",
    )  # fmt: skip
    select_epoch: Literal["best", "last"] = Field(
        "best",
        description="The weights a run keeps: best = the best dev epoch (early stopping on); last = the last epoch of --epochs "
        "(early stopping off), for a strongly regularised head trained to convergence, where a small dev set's peak overfits.",
    )
    fit_on: Literal["train", "train+dev"] = Field(
        "train",
        description="Rows trained on: train+dev refits on both (needs select_epoch last; dev scores are then in-sample and "
        "say so), the last step of choosing settings on dev.",
    )
    warmup_ratio: float | None = Field(None, ge=0, le=1, description="Fraction of the steps (plateau: of one epoch's steps) of linear warmup [model default].")
    grad_clip: float | None = Field(None, ge=0, description="Max gradient norm, 0 = off [model default].")
    patience: int | None = Field(None, ge=1, description="Early-stopping patience in epochs [model default].")
    amp: bool | None = Field(None, description="Mixed precision on CUDA [model default].")
    scheduler: Literal["linear", "bert_adam", "constant", "plateau"] | None = Field(
        None,
        description="linear: warmup then linear decay over the epochs cap; bert_adam: warmup then 1/sqrt (seed 2); "
        "plateau: warmup over part of one epoch, then halved when dev stalls for half the patience (independent of the cap) [model default].",
    )
    adam_betas: tuple[float, float] | None = Field(None, description="AdamW betas, e.g. 0.9,0.98 [model default].")
    adam_eps: float | None = Field(None, gt=0, description="AdamW epsilon [model default].")
    exclude_norm_and_bias: bool | None = Field(None, description="No weight decay on biases and normalisation layers [model default].")
    coef_lr: float | None = Field(None, gt=0, description="Learning-rate factor of the coef_lr_group parameters (seed 2: 0.1) [model default].")
    coef_lr_group: list[str] | None = Field(None, description="Comma-separated parameter-name prefixes trained at lr * coef_lr [model default].")
    lr_decay_per_epoch: float | None = Field(None, gt=0, le=1, description="Multiply the learning rate by this after every epoch, 1 = off [model default].")
    drop_last: bool | None = Field(None, description="Drop each pool's incomplete training batch (seed 1 Table 3) [model default].")
    seed: int = Field(0, description="Seed of initialisation and batch order.")
    deterministic: bool = Field(True, description="Deterministic algorithms (same numbers on every run).")
    metric: str | None = Field(None, description="Validation metric for early stopping [weighted_f1 / micro_f1].")
    threshold: float | None = Field(None, ge=0, le=1, description="Multi-label decision threshold [model default, else 0.5].")
    tune_threshold: bool = Field(False, description="Multi-label: pick the threshold on dev after training.")
    model_config: dict[str, Any] = Field(default_factory=dict, description="Model config override KEY=VALUE (repeatable).", json_schema_extra={"cli": "--set"})
    class_weights: Literal["none", "balanced"] = Field(
        "none",
        description="Single-label loss weights: balanced = inverse class frequency of the train split, n/(k*count) (sklearn's); "
        "none = the model's (model_config.class_weights, else equal).",
    )
    max_bad_steps: int = Field(5, ge=1, description="Stop after this many NaN/inf steps in a row.")
    modality_dropout: float = Field(
        0.0, ge=0, le=1, description="Training: hide each modality of each utterance with this probability (never all of them), 0 = off."
    )


@dataclass(config=STRICT)
class DataOptions:
    """What data is read: feature sets, normalisation, metadata, dialogue context, frame limits."""

    text: str | None = Field(None, description="Text feature set (or 'none') [the cache's only one].")
    audio: str | None = Field(None, description="Audio feature set (or 'none') [the cache's only one].")
    video: str | None = Field(None, description="Video feature set (or 'none') [the cache's only one].")
    normalisation: Literal["auto", "global", "speaker", "none"] = Field(
        "auto", description="auto: speaker when every training speaker has >= 20 training utterances, else global."
    )
    metadata: list[str] | None = Field(None, description="Comma-separated metadata columns, or 'none' [speaker when present].")
    max_len: dict[Literal["text", "audio", "video"], Annotated[int, Field(ge=1)] | None] = Field(
        default_factory=dict,
        description="Frames kept per modality, e.g. audio=2000,video=500; null keeps every frame [model default, else text 512, audio/video 1500].",
        json_schema_extra={"cli": "--max-len"},
    )
    context_turns: int | None = Field(None, ge=0, description="Preceding dialogue turns in Batch.context [10 for context models, else 0].")


@dataclass(config=STRICT)
class LoadingOptions:
    """How the data is read: streaming blocks (they fix the batch order) and an in-memory copy."""

    in_memory: bool = Field(False, description="Read each feature set into memory once, as stored (float16 stays float16; one copy per process).")
    num_workers: int | None = Field(None, ge=0, description="0: read in line; > 0: build the next batches in a background thread [when a core is free, or on CUDA].")
    pin_memory: bool | None = Field(None, description="Pin batches in page-locked memory for non-blocking copies (CUDA only) [on CUDA].")
    block_mb: float = Field(DEFAULT_BLOCK_MB, ge=0.01, description="Streaming block size in MB.")
    pool_blocks: int = Field(DEFAULT_POOL_BLOCKS, ge=1, description="Blocks shuffled together.")
    block_rows: int | None = Field(None, ge=1, description="Frames per block (overrides --block-mb).", json_schema_extra={"hidden": True})


@dataclass(config=STRICT)
class TrainOptions(LoadingOptions, DataOptions, LearningOptions, RunPlace):
    """Every option of a training run (the four groups above, as one flat record)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def group(self, group: type) -> dict[str, Any]:
        """The options of one group, e.g. `options.group(DataOptions)`."""
        return {name: getattr(self, name) for name in field_names(group)}

    def replace(self, **changes: Any) -> "TrainOptions":
        return parse_options({**self.to_dict(), **changes})


GROUPS = (RunPlace, LearningOptions, DataOptions, LoadingOptions)
# Options that never change a run's numbers: left out of a sweep run's identity.
RESULT_NEUTRAL = (*(f.name for f in dataclasses.fields(RunPlace)), "in_memory", "num_workers", "pin_memory")
# Options a resumed run may change (everything else comes from its checkpoint).
RESUME_OVERRIDES = ("out", "model", "device", "progress", "tensorboard", "allow_changed_features")
NESTED = ("model_config", "max_len")
# Options whose None means "the model's default_training value" (resolve_options fills them).
MODEL_DEFAULTED = (
    "batch_size", "lr", "weight_decay", "warmup_ratio", "grad_clip", "patience", "amp", "scheduler",
    "adam_betas", "adam_eps", "exclude_norm_and_bias", "coef_lr", "coef_lr_group", "drop_last",
)  # fmt: skip  # options whose keys a sweep may set one by one (model_config.dropout)


def field_names(group: type = TrainOptions) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(group))


def fields_info(group: type = TrainOptions):
    """name -> pydantic FieldInfo (annotation, default, constraints, description, extras)."""
    return dict(group.__pydantic_fields__)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_option(key: str) -> str:
    """The one message for an unknown option, wherever it was given."""
    valid = field_names()
    return f"{key!r} is not a training option{suggest(key, valid)}; valid options: {', '.join(valid)}"


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(p) for p in error["loc"])
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return unknown_option(location)
    return f"option {location}: {error['msg']} (got {error.get('input')!r})"


def parse_options(values: Mapping[str, Any], source: str = "options") -> TrainOptions:
    """Validate a flat mapping of options into TrainOptions; OptionsError (one line) otherwise.

    This is the one check behind `fuse train` flags, `--config` files, sweep grids and saved
    run configs. It also checks that the model exists and that `model_config` names settings
    of that model (with YAML's "1e-3" strings read as numbers where the setting is a float).
    """
    if not isinstance(values, Mapping):
        raise OptionsError(f"{source}: expected a mapping of option names to values, got {type(values).__name__}")
    try:
        options = TypeAdapter(TrainOptions).validate_python(dict(values))
    except ValidationError as exc:
        raise OptionsError(f"{source}: " + "; ".join(_describe(e) for e in exc.errors()[:3])) from None
    options.model_config = _check_model_config(options.model, options.model_config, source)
    if options.class_weights == "balanced":
        _check_balanced_weights(options, source)
    if options.fit_on == "train+dev" and options.select_epoch != "last":
        raise OptionsError(f"{source}: fit_on train+dev trains on the dev rows, so dev cannot choose the epoch; set select_epoch last")
    return options


def _check_balanced_weights(options: TrainOptions, source: str) -> None:
    """`class_weights: balanced` computes the model's class_weights setting: never both."""
    from fuse.models import MODELS

    if "class_weights" not in {f.name for f in dataclasses.fields(MODELS[options.model][0])}:
        raise OptionsError(f"{source}: class_weights balanced: model {options.model!r} has no class weights (its loss has its own weighting)")
    if options.model_config.get("class_weights") is not None:
        raise OptionsError(f"{source}: class_weights balanced computes the weights; drop model_config.class_weights or set class_weights none")


def _check_model_config(model: str, settings: dict[str, Any], source: str) -> dict[str, Any]:
    from fuse.models import MODELS

    if model not in MODELS:
        raise OptionsError(f"{source}: unknown model {model!r}{suggest(model, MODELS)}; available: {', '.join(sorted(MODELS))}")
    config_fields = {f.name: f for f in dataclasses.fields(MODELS[model][0])}
    checked = {}
    for key, value in settings.items():
        if key not in config_fields:
            raise OptionsError(
                f"{source}: model_config key {key!r} is not a setting of model {model!r}{suggest(key, config_fields)}; "
                f"valid: {', '.join(sorted(config_fields))}"
            )
        annotation = str(config_fields[key].type)
        if isinstance(value, str) and "float" in annotation:
            try:
                value = float(value)
            except ValueError:
                raise OptionsError(f"{source}: model_config.{key}: expected a number, got {value!r}") from None
        checked[key] = value
    return checked


def resolve_options(options: TrainOptions) -> TrainOptions:
    """Fill every None hyperparameter from the model's default_training; fix out and cache.

    The cache path becomes absolute (so --resume and evaluate work from any directory),
    `epochs` defaults to the generous cap DEFAULT_MAX_EPOCHS (early stopping decides; the
    models' `default_training.epochs` is their seed's length, for `--epochs` to reproduce) and
    `context_turns` defaults to 10 for models that read dialogue context, else 0.
    """
    from cache_schema import store as cache_store
    from fuse.models import MODELS
    from fuse.runs.folders import default_run_dir

    config_class = MODELS[options.model][0]
    defaults = config_class.default_training
    changes: dict[str, Any] = {}
    for name in MODEL_DEFAULTED:
        if getattr(options, name) is None:
            changes[name] = _plain(getattr(defaults, name))
    if options.epochs is None:
        changes["epochs"] = DEFAULT_MAX_EPOCHS
    if options.lr_decay_per_epoch is None:
        changes["lr_decay_per_epoch"] = defaults.lr_decay_per_epoch or 1.0
    changes["max_len"] = {**defaults.max_len, **options.max_len}
    if options.threshold is None:
        changes["threshold"] = defaults.threshold if defaults.threshold is not None else 0.5
    if options.out is None:
        changes["out"] = str(default_run_dir(options.model))
    if options.cache:
        changes["cache"] = cache_store.absolute(options.cache)  # a URL stays as given
    if options.context_turns is None:
        reads_context = "max_context_turns" in {f.name for f in dataclasses.fields(config_class)}
        changes["context_turns"] = DEFAULT_CONTEXT_TURNS if reads_context else 0
    return options.replace(**changes)
