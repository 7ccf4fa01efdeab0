"""Training a fusion model from a feature cache, start to finish, in one readable function.

`train(options)` reads top to bottom like nanoGPT's train.py: options -> seed -> data ->
model -> optimiser/schedule -> epochs (train, validate, checkpoint, early stop) -> final
evaluation with the best model -> metrics.json and plots.

Choices:
* Hyperparameters default to the model's `default_training` (its seed's values); a YAML
  `--config` file overrides them and CLI flags override the file.
* AdamW over all parameters, the transformers linear warmup/decay schedule
  (`get_linear_schedule_with_warmup`) over the exact number of optimiser steps of the run.
  Models with `lr_decay_per_epoch` (CARAT's 0.98) also multiply the schedule's base learning
  rate by that factor after every epoch, as CARAT's BertAdam code does.
* Gradient clipping (model default 1.0); AMP on CUDA only (bfloat16 where supported, else
  float16 with a GradScaler).
* Non-finite loss (or gradient norm): the step is skipped before anything reaches the
  optimiser, and counted; `max_bad_steps` (5) in a row stops the run with the reason.
* Determinism: seeds for python/numpy/torch, `torch.use_deterministic_algorithms(True,
  warn_only=True)`, cuDNN benchmark off. Batch order depends only on (seed, epoch), and
  `last.pt` holds model, optimiser, scheduler, scaler, RNG states, epoch, best score and
  the log, so `--resume` ends with the same metrics as an uninterrupted run.
* Early stopping on the validation metric (weighted F1 single-label, micro F1 multi-label by
  default) with the model's patience; `best.pt` keeps the best epoch.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from cache_schema import CacheError, open_cache
from fuse import metrics as M
from fuse import runs
from fuse.data import DataError, FeatureData, MetadataEncoding, inspect_task
from fuse.normalisation import Normaliser

DEFAULT_CONTEXT_TURNS = 10  # seed 1 Table 1 "Max Dialogue Length"


class TrainingError(RuntimeError):
    """Training could not start or had to stop; the message says why."""


class TrainingDiverged(TrainingError):
    """The loss stayed NaN/inf for `max_bad_steps` steps in a row."""


@dataclass
class TrainOptions:
    """Every option of a training run. None: use the model's default_training."""

    cache: str
    model: str = "cmaf"
    out: str | None = None  # default: runs/<model>, or runs/<model>-N when taken (runs.default_run_dir)
    text: str | None = None
    audio: str | None = None
    video: str | None = None
    task: str = "auto"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_ratio: float | None = None
    grad_clip: float | None = None
    patience: int | None = None
    amp: bool | None = None
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    metric: str | None = None
    threshold: float | None = None
    tune_threshold: bool = False
    normalisation: str = "auto"
    metadata: list[str] | None = None  # None: speaker when present
    max_len: dict[str, int] = field(default_factory=dict)
    context_turns: int | None = None  # None: 10 for models that read dialogue context, else 0
    in_memory: bool = False
    block_mb: float = 16.0
    pool_blocks: int = 4
    block_rows: int | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    max_bad_steps: int = 5
    progress: bool = True
    tensorboard: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainingError(f"unknown option(s) {unknown}; valid: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# Helpers the loop uses
# ---------------------------------------------------------------------------------------------


def model_classes(name: str):
    from fuse.models import MODELS

    if name not in MODELS:
        raise TrainingError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def resolve_options(options: TrainOptions) -> TrainOptions:
    """Fill every None hyperparameter from the model's default_training."""
    config_class, model_class = model_classes(options.model)
    defaults = config_class.default_training
    resolved = dataclasses.replace(options)
    for name in ("epochs", "batch_size", "lr", "weight_decay", "warmup_ratio", "grad_clip", "patience", "amp"):
        if getattr(resolved, name) is None:
            setattr(resolved, name, getattr(defaults, name))
    if resolved.threshold is None:
        resolved.threshold = defaults.threshold if defaults.threshold is not None else 0.5
    if resolved.out is None:
        resolved.out = str(runs.default_run_dir(options.model))
    if resolved.cache:  # absolute, so --resume/evaluate work from any working directory
        resolved.cache = str(Path(resolved.cache).resolve())
    if resolved.context_turns is None:
        reads_context = "max_context_turns" in {f.name for f in dataclasses.fields(config_class)}
        resolved.context_turns = DEFAULT_CONTEXT_TURNS if reads_context else 0
    return resolved


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: CUDA is not available on this machine")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def autocast_for(device: torch.device, amp: bool):
    """(autocast context factory, GradScaler) for the device; AMP only on CUDA."""
    if not (amp and device.type == "cuda"):
        return (lambda: torch.autocast(device.type, enabled=False)), torch.amp.GradScaler("cuda", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def make_scheduler(optimizer, warmup_ratio: float, total_steps: int):
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, int(round(warmup_ratio * total_steps)), max(1, total_steps))


def save_plots(run_dir: Path, history, metrics_by_split, predictions_by_split, labels, class_names, task) -> list[str]:
    from fuse import plots

    written = [plots.training_curves(history, run_dir / "training_curves.png")]
    for split, m in metrics_by_split.items():
        written.append(plots.confusion(m, class_names, task, run_dir / f"confusion_{split}.png", title=split))
    for split, pred in predictions_by_split.items():
        if pred.gate_weights is not None:
            written.append(
                plots.modality_weights_per_class(
                    pred.gate_weights, pred.modality_names, labels[pred.indices], class_names, task, run_dir / f"modality_weights_{split}.png", title=split
                )
            )
    return [str(p) for p in written if p]


def save_attention_example(run_dir: Path, model, data: FeatureData, rows: np.ndarray, device, model_name: str) -> str | None:
    """Draw the default cross-modal map of the first utterance in `rows` with every modality present.

    Models without cross-modal attention (late, context, ...) get no map; `fuse explain` draws
    any other utterance or map.
    """
    from fuse import explain as E

    complete = np.ones(len(rows), dtype=bool)
    for fs in data.feature_sets.values():
        complete &= fs.present[rows]
    if len(data.feature_sets) < 2 or not complete.any():
        return None
    row = int(rows[np.argmax(complete)])
    try:
        result = E.attention_map(model, data, row, device, model_name=model_name)
    except E.ExplainError:  # the model records no cross-modal maps
        return None
    utterance_id = str(data.columns["id"][row])
    path = run_dir / f"attention_{E.safe_name(utterance_id)}_{result.name}.png"
    return str(E.draw(result, path, utterance_id, model_name))


def open_tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def train(
    options: TrainOptions,
    *,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    echo: Callable[[str], None] = print,
) -> RunResult:
    """Train (or with `resume`, continue) one run; see the module docstring.

    `on_epoch_end(epoch, log_row)` is called after each epoch's checkpoint is written (tests
    use it to interrupt a run). Torch's process-wide determinism flags are restored on return.
    """
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    try:
        return _train(options, resume=resume, on_epoch_end=on_epoch_end, echo=echo)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]


def _train(options: TrainOptions, *, resume: bool, on_epoch_end, echo) -> RunResult:
    # ---- options and run folder -----------------------------------------------------------
    if resume:
        run_dir = Path(options.out or runs.default_run_dir(options.model, latest=True))
        saved = runs.load_config(run_dir)
        options = TrainOptions.from_dict({**saved, "device": options.device, "progress": options.progress})
        state = runs.load_checkpoint(run_dir / runs.LAST)
        if state["finished"]:
            echo(f"{run_dir}: already finished ({state['stop_reason']}); nothing to resume")
            return RunResult(run_dir, runs.read_json(run_dir / runs.METRICS_FILE), state["history"])
    else:
        options = resolve_options(options)
        run_dir = Path(options.out)
        if (run_dir / runs.LAST).exists():
            raise TrainingError(f"{run_dir} already holds a run; continue it with --resume or choose another --out")
        state = None
    config_class, model_class = model_classes(options.model)
    defaults = config_class.default_training
    metric = options.metric
    device = pick_device(options.device)
    seed_everything(options.seed, options.deterministic)

    # ---- data -----------------------------------------------------------------------------
    try:
        cache = open_cache(options.cache)
    except CacheError as exc:
        raise TrainingError(str(exc)) from None
    if resume:
        data_record = runs.read_json(run_dir / runs.DATA_FILE)
        runs.check_provenance(data_record["provenance"], cache)
        data = FeatureData.for_run(
            cache,
            _spec(data_record),
            Normaliser.load(run_dir / runs.NORMALISATION_FILE),
            MetadataEncoding.from_state(data_record["metadata_encoding"]),
            in_memory=options.in_memory,
        )
    else:
        requested = {"text": options.text, "audio": options.audio, "video": options.video}
        if model_class.uses_only is not None:  # e.g. `context` reads text only: do not load the rest
            for m in requested:
                if m not in model_class.uses_only:
                    if requested[m] not in (None, "none"):
                        raise TrainingError(f"model {options.model!r} reads only {sorted(model_class.uses_only)}; drop --{m}")
                    requested[m] = "none"
        try:
            task = inspect_task(cache, options.task, model_class.supports_tasks)
            data = FeatureData.for_training(
                cache,
                requested,
                task=task,
                max_len=options.max_len,
                normalisation=options.normalisation,
                metadata=options.metadata,
                context_turns=options.context_turns,
                in_memory=options.in_memory,
                block_mb=options.block_mb,
                pool_blocks=options.pool_blocks,
                block_rows=options.block_rows,
            )
        except DataError as exc:
            raise TrainingError(str(exc)) from None
    data.prefetch = data.prefetch or device.type == "cuda"
    task, class_names = data.spec.task, data.spec.class_names
    metric = metric or M.DEFAULT_METRIC[task]
    if metric not in M.headline(task):
        raise TrainingError(f"--metric {metric!r} is not a {task} metric (choose from {', '.join(M.headline(task))})")
    train_rows, dev_rows, test_rows = data.indices("train"), data.indices("dev"), data.indices("test")
    if len(train_rows) == 0 or len(dev_rows) == 0:
        raise TrainingError(f"{cache.path}: need labelled train and dev utterances (have {len(train_rows)} and {len(dev_rows)})")

    # ---- model ----------------------------------------------------------------------------
    from fuse.models import build_model

    try:
        model = build_model(options.model, data.input_dims, data.n_classes, task, data.metadata.spec(), **options.model_config)
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"model {options.model!r} cannot be built for this data: {exc}") from None
    model.to(device)

    # ---- optimiser and schedule -----------------------------------------------------------
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=options.lr, weight_decay=options.weight_decay, betas=tuple(defaults.adam_betas), eps=defaults.adam_eps
    )
    steps_per_epoch = [data.n_batches(train_rows, options.batch_size, True, options.seed, e) for e in range(options.epochs)]
    scheduler = make_scheduler(optimizer, options.warmup_ratio, sum(steps_per_epoch))
    autocast, scaler = autocast_for(device, options.amp)

    history: list[dict[str, Any]] = []
    start_epoch, best_value, best_epoch, epochs_without_gain, skipped_total = 0, None, -1, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        runs.set_rng_state(state["rng"])
        start_epoch, best_value, best_epoch = state["epoch"] + 1, state["best_value"], state["best_epoch"]
        epochs_without_gain, skipped_total, history = state["epochs_without_gain"], state["skipped_steps"], state["history"]
        echo(f"resuming {run_dir} after epoch {state['epoch'] + 1} of {options.epochs}")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.save_config(run_dir, options.to_dict())
        data.normaliser.training_only().save(run_dir / runs.NORMALISATION_FILE)
        data_record = {
            "spec": data.spec.to_dict(),
            "summary": data.summary(),
            "metadata_encoding": data.metadata.state(),
            "provenance": runs.provenance(cache, data.spec.feature_sets),
        }
        runs.write_json(run_dir / runs.DATA_FILE, data_record)
        _write_log(run_dir, [])
    summary = data_record["summary"]
    echo(
        f"{options.model} on {cache.path}: {task}, {len(class_names)} classes, features {summary['feature_sets']}; "
        f"train/dev/test {len(train_rows)}/{len(dev_rows)}/{len(test_rows)} labelled utterances; {summary['dev_split']}; "
        f"normalisation {summary['normalisation']} ({summary.get('normalisation_note', 'as stored in the run')})"
    )
    tensorboard = open_tensorboard(run_dir, options.tensorboard)

    # ---- epochs ---------------------------------------------------------------------------
    stop_reason = f"completed {options.epochs} epochs"
    bad_in_a_row = 0
    for epoch in range(start_epoch, options.epochs):
        model.train()
        started, losses, parts, skipped = time.time(), [], {}, 0
        batches = data.batches(train_rows, options.batch_size, shuffle=True, seed=options.seed, epoch=epoch)
        bar = tqdm(batches, total=steps_per_epoch[epoch], desc=f"epoch {epoch + 1}/{options.epochs}", disable=None if options.progress else True, leave=False)
        for step, batch in enumerate(bar):
            batch = batch.to(device, non_blocking=True)
            with autocast():
                output = model(batch)
            loss = output.loss
            if loss is None:
                raise TrainingError(f"model {options.model!r} returned no loss for a labelled batch")
            if not torch.isfinite(loss):
                skipped, bad_in_a_row = skipped + 1, bad_in_a_row + 1
                optimizer.zero_grad(set_to_none=True)
                if bad_in_a_row >= options.max_bad_steps:
                    raise TrainingDiverged(
                        f"stopped at epoch {epoch + 1}, step {step + 1}: loss was NaN/inf for {bad_in_a_row} steps in a row "
                        f"({skipped_total + skipped} skipped in total); check the features (fuse cache validate --deep), "
                        f"the normalisation statistics and the learning rate"
                    )
                continue
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip if options.grad_clip > 0 else math.inf)
            if not torch.isfinite(grad_norm) and not scaler.is_enabled():
                skipped, bad_in_a_row = skipped + 1, bad_in_a_row + 1
                optimizer.zero_grad(set_to_none=True)
                if bad_in_a_row >= options.max_bad_steps:
                    raise TrainingDiverged(f"stopped at epoch {epoch + 1}, step {step + 1}: gradient norm NaN/inf for {bad_in_a_row} steps in a row")
                continue
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bad_in_a_row = 0
            losses.append(loss.item())
            for name, value in output.loss_parts.items():
                parts.setdefault(name, []).append(float(value))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        train_seconds = time.time() - started
        if defaults.lr_decay_per_epoch:
            scheduler.base_lrs = [lr * defaults.lr_decay_per_epoch for lr in scheduler.base_lrs]
        skipped_total += skipped

        # ---- validate, log, checkpoint --------------------------------------------------
        dev_pred = runs.infer(model, data, dev_rows, options.batch_size, device, options.amp)
        dev_metrics = M.compute_metrics(task, data.labels[dev_rows], dev_pred.probabilities, class_names, options.threshold)
        value = dev_metrics[metric]
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            **{f"train_{k}": float(np.mean(v)) for k, v in sorted(parts.items())},
            "dev_loss": dev_pred.loss,
            **{f"dev_{k}": dev_metrics[k] for k in M.headline(task)},
            "lr": scheduler.get_last_lr()[0],
            "train_seconds": round(train_seconds, 3),
            "seconds": round(time.time() - started, 3),
            "skipped_steps": skipped,
        }
        history.append(row)
        _write_log(run_dir, history)
        if tensorboard is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, float) and math.isfinite(v):
                    tensorboard.add_scalar(k.replace("_", "/", 1), v, epoch + 1)
        improved = M.is_better(metric, value, best_value)
        if improved:
            best_value, best_epoch, epochs_without_gain = value, epoch, 0
            runs.save_checkpoint(run_dir / runs.BEST, _best_payload(model, options, data, data_record, epoch, metric, value))
        else:
            epochs_without_gain += 1
        echo(
            f"epoch {epoch + 1}/{options.epochs}: train loss {row['train_loss']:.4f}, dev {metric} {value:.4f}"
            + (" (best)" if improved else f" (best {best_value:.4f} at epoch {best_epoch + 1})")
            + (f", {skipped} step(s) skipped (NaN/inf loss)" if skipped else "")
        )
        finished = epochs_without_gain >= options.patience or epoch + 1 == options.epochs
        if epochs_without_gain >= options.patience:
            stop_reason = f"early stop: no {metric} gain on dev for {options.patience} epochs"
        runs.save_checkpoint(
            run_dir / runs.LAST,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": runs.rng_state(),
                "epoch": epoch,
                "best_value": best_value,
                "best_epoch": best_epoch,
                "epochs_without_gain": epochs_without_gain,
                "skipped_steps": skipped_total,
                "history": runs.plain(history),
                "finished": False,
                "stop_reason": None,
            },
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if finished:
            break

    # ---- final evaluation with the best model ---------------------------------------------
    best = runs.load_checkpoint(run_dir / runs.BEST, map_location=device)
    model.load_state_dict(best["model_state"])
    threshold, tuned = options.threshold, None
    predictions = {"dev": runs.infer(model, data, dev_rows, options.batch_size, device, options.amp)}
    if len(test_rows):
        predictions["test"] = runs.infer(model, data, test_rows, options.batch_size, device, options.amp)
    if task == "multi_label" and options.tune_threshold:
        threshold, score = M.tune_threshold(data.labels[dev_rows], predictions["dev"].probabilities, metric)
        tuned = {"threshold": threshold, f"dev_{metric}": score}
        best["threshold"] = threshold
        runs.save_checkpoint(run_dir / runs.BEST, best)
    by_split = {
        split: M.compute_metrics(task, data.labels[pred.indices], pred.probabilities, class_names, threshold)
        for split, pred in predictions.items()
    }
    metrics = {
        "splits": by_split,
        "task": task,
        "metric": metric,
        "best_epoch": best_epoch + 1,
        "best_dev_value": best_value,
        "threshold": threshold if task == "multi_label" else None,
        "threshold_tuned_on_dev": tuned,
        "stop_reason": stop_reason,
        "skipped_steps": skipped_total,
        "dev_split": summary["dev_split"],
        "seed": options.seed,
    }
    runs.write_json(run_dir / runs.METRICS_FILE, metrics)
    plots = save_plots(run_dir, history, by_split, predictions, data.labels, class_names, task)
    example = save_attention_example(run_dir, model, data, test_rows if len(test_rows) else dev_rows, device, options.model)
    if example:
        plots.append(example)
    last = runs.load_checkpoint(run_dir / runs.LAST)
    last.update(finished=True, stop_reason=stop_reason)
    runs.save_checkpoint(run_dir / runs.LAST, last)
    if tensorboard is not None:
        tensorboard.close()
    echo(f"{stop_reason}; best epoch {best_epoch + 1} ({metric} {best_value:.4f} on dev)")
    echo(M.format_table(by_split, task))
    echo(f"metrics: {run_dir / runs.METRICS_FILE}")
    echo("plots:\n" + "\n".join(f"  {p}" for p in plots))
    return RunResult(run_dir, metrics, history)


def _spec(record: dict[str, Any]):
    from fuse.data import DataSpec

    return DataSpec.from_dict(record["spec"])


def _best_payload(model, options: TrainOptions, data: FeatureData, data_record, epoch: int, metric: str, value: float) -> dict[str, Any]:
    spec = data.metadata.spec()
    return {
        "format": 1,
        "model_name": options.model,
        "model_config": runs.config_dict(model.config),
        "input_dims": data.input_dims,
        "n_classes": data.n_classes,
        "task": data.spec.task,
        "metadata_spec": None if spec is None else {"categorical": [list(c) for c in spec.categorical], "n_numeric": spec.n_numeric},
        "model_state": model.state_dict(),
        "epoch": epoch + 1,
        "metric": metric,
        "value": float(value),
        "threshold": options.threshold,
        "data": runs.plain(data_record),
        "normaliser": runs.normaliser_payload(data.normaliser.training_only()),
    }


LOG_FIELDS_FIRST = ("epoch", "train_loss", "dev_loss")


def _write_log(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite log.csv from the history (so a resumed run's log has each epoch once)."""
    fields = list(LOG_FIELDS_FIRST)
    for row in history:
        fields.extend(k for k in row if k not in fields)
    path = run_dir / runs.LOG_FILE
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


# ---------------------------------------------------------------------------------------------
# Several seeds
# ---------------------------------------------------------------------------------------------


def train_seeds(options: TrainOptions, seeds: list[int], *, resume: bool = False, echo=print) -> dict[str, Any]:
    """One run per seed in <out>/seed-<s>; returns and writes <out>/seeds.json (mean ± std)."""
    base = resolve_options(options) if not resume else options
    out = Path(base.out or runs.default_run_dir(base.model, latest=True))
    results = {}
    for seed in seeds:
        echo(f"=== seed {seed} ===")
        run_options = dataclasses.replace(base, seed=seed, out=str(out / f"seed-{seed}"))
        results[seed] = train(run_options, resume=resume, echo=echo).metrics
    summary = summarise_seeds(results)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "seeds.json", summary)
    echo(format_seed_summary(summary))
    return summary


def summarise_seeds(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """mean and sample std (ddof=1; 0 for one seed) of every headline metric per split."""
    first = next(iter(results.values()))
    task = first["task"]
    summary: dict[str, Any] = {"seeds": list(results), "task": task, "splits": {}}
    for split in first["splits"]:
        stats = {}
        for name in M.headline(task):
            values = np.array([r["splits"][split][name] for r in results.values()], dtype=np.float64)
            stats[name] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "values": values.tolist(),
            }
        summary["splits"][split] = stats
    return summary


def format_seed_summary(summary: dict[str, Any]) -> str:
    splits = list(summary["splits"])
    names = M.headline(summary["task"])
    width = max(map(len, names)) + 2
    lines = [f"{len(summary['seeds'])} seeds {summary['seeds']}: mean ± std", "metric".ljust(width) + "".join(s.rjust(20) for s in splits)]
    for name in names:
        cells = "".join(f"{summary['splits'][s][name]['mean']:.4f} ± {summary['splits'][s][name]['std']:.4f}".rjust(20) for s in splits)
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)
