"""The training recipe: one fusion model trained from a feature cache, start to finish.

    recipe = TrainingRecipe(echo=print)
    recipe.setup(options)            # seed, data, model, optimiser, schedule (or resume state)
    result = recipe.train()          # epochs, then the best model scored on dev and test
    recipe.cleanup()

`train(options)` does exactly that. `setup(options, data=...)` takes a `FeatureData` built
by `build_training_data` (a sweep shares one between runs with the same data options); its
batches depend only on (seed, epoch), so a shared one gives the batches a fresh one would.

Choices:
* Hyperparameters default to the model's `default_training` (its seed's values); a YAML
  `--config` file overrides them and CLI flags override the file (`fuse.options`).
* AdamW (`fuse.training.optim.build_optimizer`: optionally no weight decay on biases and
  norms, and `coef_lr` for a parameter group) and a per-step schedule (`build_scheduler`:
  `linear` warmup/decay as transformers', or seed 2's `bert_adam`) over the exact number of
  optimiser steps of the `epochs` cap, or `plateau` (warmup over part of one epoch, then the
  learning rate halved whenever dev stalls for half the patience), which does not depend on
  the cap; all from the model's `default_training` unless set. Models with
  `lr_decay_per_epoch` (CARAT's 0.98) also multiply the schedule's base learning rate by that
  factor after every epoch, as CARAT's BertAdam code does.
* Gradient clipping (model default 1.0); AMP on CUDA only (bfloat16 where supported, else
  float16 with a GradScaler).
* Non-finite loss (or gradient norm): the step is skipped before anything reaches the
  optimiser, and counted; `max_bad_steps` (5) in a row stops the run with the reason.
* Determinism: seeds for python/numpy/torch, `torch.use_deterministic_algorithms(True,
  warn_only=True)`, cuDNN benchmark off. Batch order depends only on (seed, epoch), and
  `last.pt` holds the whole training state, so `--resume` ends with the same metrics as an
  uninterrupted run.
* Early stopping on the validation metric (weighted F1 single-label, micro F1 multi-label by
  default) with the model's patience; `best.pt` keeps the best epoch. `select_epoch: last`
  keeps the last epoch instead and trains every epoch of the cap (early stopping off): for a
  convex, strongly regularised head (`l2`) trained to convergence, picking the peak of a small
  dev set picks noise (EmoDB, one dev speaker: benchmarks/README.md). `fit_on: train+dev`
  then refits on both, the last step of choosing settings on dev (its dev scores are in-sample).
* `l2`: a penalty l2/2 * ||w||^2 over the weight-decayed parameters, added to the loss and
  so coupled to the gradient (what logistic regression and ridge minimise); AdamW's decoupled
  `weight_decay` shrinks weights by lr * wd per step instead and does not reach that optimum.
* Launched by torchrun with several processes, the run is data-parallel (DDP) with the
  single-process metrics at the same global batch size (`fuse.training.distributed`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from cache_schema import CacheError, open_cache
from fuse import metrics as M
from fuse.data import FeatureData
from fuse.jsonio import to_jsonable
from fuse.device import autocast_for, pick_device, seed_everything
from fuse.options import RESUME_OVERRIDES, OptionsError, TrainOptions, parse_options, resolve_options
from fuse.runs import checkpoint as C
from fuse.runs.folders import BEST, KEPT_BESIDE_RUN, LAST, RunError, clear_run_folder, default_run_dir, other_files, write_derived_files
from fuse.runs.lock import RunLock
from fuse.runs.inference import Predictions, data_for_checkpoint, infer
from fuse.runs.provenance import provenance
from fuse.training import distributed
from fuse.training.errors import TrainingDiverged, TrainingError
from fuse.training.inputs import build_training_data
from fuse.training.modality_dropout import ModalityDropout
from fuse.training.optim import build_optimizer, build_scheduler, end_epoch, plateau_patience_for
from fuse.training.report import save_attention_example, save_plots


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


class TrainingRecipe:
    """setup -> train -> cleanup for one run (see the module docstring).

    `on_epoch_end(epoch, log_row)` is called after each epoch's checkpoint is written (tests
    use it to interrupt a run).
    """

    def __init__(self, echo: Callable[[str], None] = print, on_epoch_end: Callable[[int, dict], None] | None = None):
        self.echo, self.on_epoch_end = echo, on_epoch_end
        self.tensorboard = self.lock = None

    # -- setup --------------------------------------------------------------------------------
    def setup(self, options: TrainOptions, data: FeatureData | None = None, *, resume: bool = False) -> None:
        try:
            device = pick_device(options.device)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        self.group = distributed.join_from_environment(device)
        self.device = distributed.device_for_rank(device, self.group)
        if not self.group.is_main:  # rank 0 speaks for the job
            self.echo = lambda message: None
        state = self._setup_run(options, resume)
        if self.finished_before is not None:
            return
        seed_everything(self.options.seed, self.options.deterministic)
        self._setup_data(data, state)
        self.modality_dropout = ModalityDropout(self.options.modality_dropout, self.options.seed, self.data.n, tuple(self.data.feature_sets))
        self._setup_model()
        self._setup_optimizer()
        if state is not None:
            self._restore(state)
        elif self.group.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_derived_files(self.run_dir, self._checkpoint(epoch=0))
        summary = self.data_record["summary"]
        self.echo(
            f"{self.options.model} on {self.data.cache.path}: {self.task}, {len(self.class_names)} classes, features {summary['feature_sets']}; "
            f"train/dev/test {len(self.rows['train'])}/{len(self.rows['dev'])}/{len(self.rows['test'])} labelled utterances; "
            f"{summary['dev_split']}; normalisation {summary['normalisation']} ({summary.get('normalisation_note', 'as stored in the run')})"
        )
        self.tensorboard = _open_tensorboard(self.run_dir, self.options.tensorboard) if self.group.is_main else None

    def _setup_run(self, options: TrainOptions, resume: bool) -> C.Checkpoint | None:
        """Options and run folder; for a resumed run, its last checkpoint.

        Distributed, rank 0 chooses the folder (a default one depends on what exists), takes
        the lock and clears it; the other ranks wait for it and use the same folder.
        """
        self.finished_before = None
        main = self.group.is_main
        if not resume:
            try:
                self.options = self.group.broadcast(resolve_options(options) if main else None)
            except OptionsError as exc:
                raise TrainingError(str(exc)) from None
            self.run_dir = Path(self.options.out)
            self.history, self.start_epoch, self.best_value, self.best_epoch = [], 0, None, -1
            self.epochs_without_gain, self.skipped_total, self.threshold = 0, 0, self.options.threshold
            if main:
                self._claim_new_run_folder()
            self.group.barrier()
            return None
        self.run_dir = Path(self.group.broadcast(options.out or default_run_dir(options.model, latest=True) if main else None))
        if not self.run_dir.is_dir():
            raise RunError(f"{self.run_dir}: no such run folder to resume")
        if main:
            self.lock = RunLock(self.run_dir).acquire()
        state = C.load_checkpoint(self.run_dir / LAST)
        if state.training is None:
            raise RunError(f"{self.run_dir / LAST}: holds no training state to resume")
        overrides = {k: getattr(options, k) for k in RESUME_OVERRIDES if k not in ("out", "model")}
        self.options = parse_options({**state.options, **overrides}, source=str(self.run_dir / LAST))
        if state.finished:
            self.echo(f"{self.run_dir}: already finished ({state.training['stop_reason']}); nothing to resume")
            self.finished_before = RunResult(self.run_dir, state.metrics, state.training["history"])
        return state

    def _claim_new_run_folder(self) -> None:
        """Lock the new run's folder; refuse one holding other work unless --overwrite."""
        self.lock = RunLock(self.run_dir).acquire()
        existing = other_files(self.run_dir)
        if existing and not self.options.overwrite:
            if (self.run_dir / LAST).exists():
                raise TrainingError(f"{self.run_dir} already holds a run; continue it with --resume, choose another --out, or pass --overwrite")
            shown = ", ".join(p.name for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
            raise TrainingError(f"{self.run_dir} is not empty ({shown}); choose another --out, or pass --overwrite to replace its contents")
        if existing:
            clear_run_folder(self.run_dir, keep=KEPT_BESIDE_RUN)

    def _setup_data(self, data: FeatureData | None, state: C.Checkpoint | None) -> None:
        if state is not None:
            try:
                self.data = data_for_checkpoint(state, open_cache(self.options.cache), self.options.in_memory, self.options.allow_changed_features)
            except CacheError as exc:
                raise TrainingError(str(exc)) from None
            self.data_record = state.data
            if self.data.accepted_feature_changes:  # --allow-changed-features: say so, and keep it in the run
                self.echo("resuming with changed features: " + "; ".join(self.data.accepted_feature_changes))
                self.data_record = {**state.data, "accepted_feature_changes": [*state.data.get("accepted_feature_changes", []), *self.data.accepted_feature_changes]}
        else:
            self.data = data if data is not None else build_training_data(self.options)
            self.data_record = {
                "spec": self.data.spec.to_dict(),
                "summary": self.data.summary(),
                "metadata_encoding": self.data.metadata.state(),
                "provenance": provenance(self.data.cache, self.data.spec.feature_sets),
            }
        workers = self.options.num_workers
        self.data.prefetch = (self.data.prefetch or self.device.type == "cuda") if workers is None else workers > 0
        # Page-locked batches only help host-to-GPU copies; pinning for a CPU model is a wasted copy.
        self.pin_memory = self.device.type == "cuda" and self.options.pin_memory is not False
        self.task, self.class_names = self.data.spec.task, self.data.spec.class_names
        self.metric = self.options.metric or M.DEFAULT_METRIC[self.task]
        if self.metric not in M.headline(self.task):
            raise TrainingError(f"--metric {self.metric!r} is not a {self.task} metric (choose from {', '.join(M.headline(self.task))})")
        self.rows = {split: self.data.indices(split) for split in ("train", "dev", "test")}
        # The rows the optimiser sees: train, or train and dev for a refit (fit_on).
        self.rows["fit"] = np.sort(np.concatenate([self.rows["train"], self.rows["dev"]])) if self.options.fit_on == "train+dev" else self.rows["train"]
        if state is None and self.task == "single_label":
            classes = np.unique(self.data.labels[self.rows["train"]])
            if len(classes) == 1:
                raise TrainingError(
                    f"{self.data.cache.path}: every labelled training utterance is {self.class_names[int(classes[0])]!r}; "
                    "a classifier needs at least two classes in the train split"
                )
        if len(self.rows["train"]) == 0 or len(self.rows["dev"]) == 0:
            raise TrainingError(
                f"{self.data.cache.path}: need labelled train and dev utterances (have {len(self.rows['train'])} and {len(self.rows['dev'])})"
            )

    def _setup_model(self) -> None:
        from fuse.models import build_model
        from fuse.models.layer_mix import with_layer_count

        data = self.data
        self.metadata_spec = data.metadata.spec()
        settings = dict(self.options.model_config)
        if self.options.class_weights == "balanced":
            settings["class_weights"] = self._balanced_class_weights()
        try:
            model_config = with_layer_count(settings, data.feature_sets)
            self.model = build_model(self.options.model, data.input_dims, data.n_classes, self.task, self.metadata_spec, **model_config)
        except (ValueError, TypeError) as exc:
            raise TrainingError(f"model {self.options.model!r} cannot be built for this data: {exc}") from None
        self.model.to(self.device)
        self.train_model = distributed.wrap_model(self.model, self.group, self.device)
        # A rank whose part of a global batch is empty runs this utterance with weight 0.
        self.stand_in = self.data.batch_for_rows(self.rows["train"][:1], with_labels=True) if self.group.enabled else None

    def _balanced_class_weights(self) -> tuple[float, ...]:
        """`class_weights: balanced` from the training split's labels (the same on --resume: the
        split is deterministic); the model record of every checkpoint keeps the values."""
        from fuse.losses import balanced_class_weights

        if self.task != "single_label":
            raise TrainingError("class_weights balanced is defined for single-label tasks; for multi-label give BCE positive weights as model_config.class_weights")
        weights = balanced_class_weights(self.data.labels[self.rows["fit"]], self.data.n_classes)
        self.echo(f"class weights (balanced, {self.options.fit_on} rows): " + ", ".join(f"{c} {w:.3f}" for c, w in zip(self.class_names, weights)))
        return weights

    def _setup_optimizer(self) -> None:
        options = self.options
        try:
            self.optimizer = build_optimizer(
                self.model, options.lr, options.weight_decay, options.adam_betas, options.adam_eps,
                exclude_norm_and_bias=options.exclude_norm_and_bias, coef_lr=options.coef_lr, coef_lr_group=options.coef_lr_group,
            )  # fmt: skip
        except ValueError as exc:
            raise TrainingError(f"optimiser: {exc}") from None
        self.steps_per_epoch = [
            self.data.n_batches(self.rows["fit"], options.batch_size, True, options.seed, e, drop_last=options.drop_last) for e in range(options.epochs)
        ]
        self.scheduler = build_scheduler(
            self.optimizer, options.scheduler, options.warmup_ratio, sum(self.steps_per_epoch),
            steps_per_epoch=self.steps_per_epoch[0], patience=plateau_patience_for(options.patience),
        )  # fmt: skip
        self.autocast, self.scaler = autocast_for(self.device, options.amp)
        # `l2` penalises what weight decay would decay (not biases and norms when those are excluded).
        self.l2_parameters = [p for g in self.optimizer.param_groups if not g["name"].endswith("no_decay") for p in g["params"]]

    def _restore(self, state: C.Checkpoint) -> None:
        t = state.training
        self.model.load_state_dict(state.model["state"])
        self.optimizer.load_state_dict(t["optimizer"])
        self.scheduler.load_state_dict(t["scheduler"])
        self.scaler.load_state_dict(t["scaler"])
        C.set_rng_state(t["rng"])
        self.start_epoch, self.best_value, self.best_epoch = state.epoch, state.best["value"], state.best["epoch"] - 1
        self.epochs_without_gain, self.skipped_total, self.history = t["epochs_without_gain"], t["skipped_steps"], t["history"]
        self.threshold = state.threshold
        self.echo(f"resuming {self.run_dir} after epoch {state.epoch} of {self.options.epochs}")

    # -- the loop -----------------------------------------------------------------------------
    def train(self) -> RunResult:
        if self.finished_before is not None:
            return self.finished_before
        options = self.options
        keep_last = options.select_epoch == "last"
        self.stop_reason = (
            f"ran all {options.epochs} epochs (select_epoch last: early stopping off)" if keep_last
            else f"stopped by the epochs cap ({options.epochs}), not by early stopping (patience {options.patience})"
        )  # fmt: skip
        for epoch in range(self.start_epoch, options.epochs):
            started = time.time()
            losses, parts, skipped = self.train_epoch(epoch)
            train_seconds = time.time() - started
            if options.lr_decay_per_epoch != 1.0:  # CARAT's BertAdam code: x0.98 after every epoch
                self.scheduler.base_lrs = [lr * options.lr_decay_per_epoch for lr in self.scheduler.base_lrs]
            self.skipped_total += skipped
            dev_metrics, dev_pred = self.evaluate("dev")
            value = dev_metrics[self.metric]
            row = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                **{f"train_{k}": float(np.mean(v)) for k, v in sorted(parts.items())},
                "dev_loss": dev_pred.loss,
                **{f"dev_{k}": dev_metrics[k] for k in M.headline(self.task)},
                "lr": self.scheduler.get_last_lr()[0],
                "train_seconds": round(train_seconds, 3),
                "seconds": round(time.time() - started, 3),
                "skipped_steps": skipped,
            }
            self.history.append(row)
            self._log_tensorboard(row)
            improved = M.is_better(self.metric, value, self.best_value)
            if improved:
                self.best_value, self.best_epoch, self.epochs_without_gain = value, epoch, 0
            else:
                self.epochs_without_gain += 1
            kept = improved or keep_last  # best.pt holds the weights the run reports
            reduced = end_epoch(self.scheduler, improved)  # "plateau": halve the lr after a stall
            self.echo(
                f"epoch {epoch + 1}/{options.epochs}: train loss {row['train_loss']:.4f}, dev {self.metric} {value:.4f}"
                + (" (best)" if improved else f" (best {self.best_value:.4f} at epoch {self.best_epoch + 1})")
                + (f", {skipped} step(s) skipped (NaN/inf loss)" if skipped else "")
                + (f", learning rate reduced to {self.optimizer.param_groups[0]['lr']:.3g}" if reduced else "")
            )
            stop = not keep_last and self.epochs_without_gain >= options.patience
            if stop:
                self.stop_reason = f"early stop: no {self.metric} gain on dev for {options.patience} epochs"
            if self.group.is_main:
                self.save_checkpoint(epoch + 1, best=kept)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, row)
            if stop:
                break
        return self.finish()

    def train_epoch(self, epoch: int) -> tuple[list[float], dict[str, list[float]], int]:
        """One pass over the training batches: (losses, named loss parts, skipped steps)."""
        options, model = self.options, self.model
        model.train()
        losses, parts, skipped, bad_in_a_row = [], {}, 0, 0
        batches = self.data.batches(
            self.rows["fit"], options.batch_size, shuffle=True, seed=options.seed, epoch=epoch, drop_last=options.drop_last,
            shard=self.group.shard, pin_memory=self.pin_memory,
        )  # fmt: skip
        bar = tqdm(
            batches, total=self.steps_per_epoch[epoch], desc=f"epoch {epoch + 1}/{options.epochs}",
            disable=None if options.progress and self.group.is_main else True, leave=False,
        )  # fmt: skip
        for step, batch in enumerate(bar):
            n_here = batch.size
            batch = batch if n_here else self.stand_in
            batch = self.modality_dropout(batch, epoch)
            batch = batch.to(self.device, non_blocking=self.pin_memory)  # pinned by the loader's read-ahead thread
            with self.autocast():
                output = self.train_model(batch)
            if output.loss is None:
                raise TrainingError(f"model {options.model!r} returned no loss for a labelled batch")
            loss, loss_for_backward, loss_parts = self._global_loss(output, n_here)
            if options.l2:  # the same on every rank, so DDP's gradient average leaves it as is
                penalty = 0.5 * options.l2 * sum(p.float().square().sum() for p in self.l2_parameters)
                loss, loss_for_backward = loss + penalty.detach(), loss_for_backward + penalty
                loss_parts = {**loss_parts, "l2": float(penalty.detach())}
            problem = None if torch.isfinite(loss) else "loss was"
            if problem is None:
                self.scaler.scale(loss_for_backward).backward()
                self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip if options.grad_clip > 0 else math.inf)
                if not torch.isfinite(grad_norm) and not self.scaler.is_enabled():  # a scaler skips such steps itself
                    problem = "gradient norm was"
            if problem is not None:  # skipped before anything reaches the optimiser
                skipped, bad_in_a_row = skipped + 1, bad_in_a_row + 1
                self.optimizer.zero_grad(set_to_none=True)
                if bad_in_a_row >= options.max_bad_steps:
                    raise TrainingDiverged(
                        f"stopped at epoch {epoch + 1}, step {step + 1}: {problem} NaN/inf for {bad_in_a_row} steps in a row "
                        f"({self.skipped_total + skipped} skipped in total); check the features (fuse cache validate --deep), "
                        f"the normalisation statistics and the learning rate"
                    )
                continue
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            bad_in_a_row = 0
            losses.append(loss.item())
            for name, value in loss_parts.items():
                parts.setdefault(name, []).append(float(value))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        return losses, parts, skipped

    def _global_loss(self, output, n_here: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """(the global batch's mean loss, the loss to back-propagate here, the loss parts).

        One process: the model's loss. Distributed: rank means weighted by their share of the
        batch, so DDP's gradient average is the gradient of the global mean (module docstring
        of `fuse.training.distributed`).
        """
        if not self.group.enabled:
            return output.loss.detach(), output.loss, {k: float(v) for k, v in output.loss_parts.items()}
        names = sorted(output.loss_parts)
        here = torch.stack([output.loss.detach().float(), *(torch.tensor(float(output.loss_parts[k])) for k in names)]).cpu()
        weighted = here * n_here if n_here else torch.zeros_like(here)  # a stand-in's NaN must not leak
        totals = self.group.all_sum(torch.cat([weighted, torch.tensor([float(n_here)])]).to(self.device)).cpu()
        n_total = totals[-1]
        means = totals[:-1] / n_total
        weight = self.group.world_size * n_here / float(n_total)
        return means[0], output.loss * weight, {k: float(v) for k, v in zip(names, means[1:])}

    def evaluate(self, split: str, threshold: float | None = None) -> tuple[dict[str, Any], Predictions]:
        """Metrics and predictions of the current model on a split's labelled rows."""
        rows = self.rows[split]
        pred = infer(self.model, self.data, distributed.rank_chunk(rows, self.group), self.options.batch_size, self.device, self.options.amp)
        pred = distributed.gather_predictions(pred, self.group)
        threshold = self.threshold if threshold is None else threshold
        return M.compute_metrics(self.task, self.data.labels[rows], pred.probabilities, self.class_names, threshold), pred

    def finish(self) -> RunResult:
        """Score the best epoch's model on dev (and test), then write metrics and plots."""
        self.group.barrier()  # rank 0 has written best.pt
        best = C.load_checkpoint(self.run_dir / BEST, map_location=self.device)
        self.model.load_state_dict(best.model["state"])
        splits = ["dev"] + (["test"] if len(self.rows["test"]) else [])
        predictions = {s: self.evaluate(s)[1] for s in splits}
        tuned = None
        if self.task == "multi_label" and self.options.tune_threshold:
            self.threshold, score = M.tune_threshold(self.data.labels[self.rows["dev"]], predictions["dev"].probabilities, self.metric)
            tuned = {"threshold": self.threshold, f"dev_{self.metric}": score}
            best.threshold = self.threshold
            if self.group.is_main:
                C.save_checkpoint(self.run_dir / BEST, best)
        by_split = {
            s: M.compute_metrics(self.task, self.data.labels[p.indices], p.probabilities, self.class_names, self.threshold)
            for s, p in predictions.items()
        }
        metrics = {
            "splits": by_split,
            "task": self.task,
            "metric": self.metric,
            "best_epoch": self.best_epoch + 1,
            "best_dev_value": self.best_value,
            "select_epoch": self.options.select_epoch,
            "kept_epoch": len(self.history) if self.options.select_epoch == "last" else self.best_epoch + 1,
            "fit_on": self.options.fit_on,
            "dev_in_sample": self.options.fit_on == "train+dev",
            "threshold": self.threshold if self.task == "multi_label" else None,
            "threshold_tuned_on_dev": tuned,
            "stop_reason": self.stop_reason,
            "stopped_by": "early_stopping" if self.stop_reason.startswith("early stop") else "epochs_cap",
            "skipped_steps": self.skipped_total,
            "dev_split": self.data_record["summary"]["dev_split"],
            "seed": self.options.seed,
            "world_size": self.group.world_size,
        }
        if not self.group.is_main:
            self.group.barrier()  # rank 0 writes the run's files
            return RunResult(self.run_dir, metrics, self.history)
        last = C.load_checkpoint(self.run_dir / LAST)
        last.training.update(finished=True, stop_reason=self.stop_reason)
        last.metrics, last.threshold = metrics, self.threshold
        C.save_checkpoint(self.run_dir / LAST, last)
        write_derived_files(self.run_dir, last)
        plots = save_plots(self.run_dir, self.history, by_split, predictions, self.data.labels, self.class_names, self.task)
        shown = self.rows["test"] if len(self.rows["test"]) else self.rows["dev"]
        example = save_attention_example(self.run_dir, self.model, self.data, shown, self.device, self.options.model)
        self.echo(f"{self.stop_reason}; best epoch {self.best_epoch + 1} ({self.metric} {self.best_value:.4f} on dev)"
                  + (f"; kept the last epoch ({len(self.history)})" if self.options.select_epoch == "last" else ""))
        if self.options.fit_on == "train+dev":
            self.echo("note: trained on train+dev (fit_on): the dev scores below are in-sample, not a validation")
        if self.stop_reason.startswith("stopped by the epochs cap") and self.epochs_without_gain == 0:
            self.echo(f"warning: the best epoch is the last allowed one ({self.options.epochs}); dev was still improving, raise --epochs")
        self.echo(M.format_table(by_split, self.task))
        self.echo(f"metrics: {self.run_dir / 'metrics.json'}")
        self.echo("plots:\n" + "\n".join(f"  {p}" for p in plots + ([example] if example else [])))
        self.group.barrier()
        return RunResult(self.run_dir, metrics, self.history)

    # -- checkpoints --------------------------------------------------------------------------
    def _checkpoint(self, epoch: int, training: bool = True) -> C.Checkpoint:
        data = self.data
        return C.Checkpoint(
            options=self.options.to_dict(),
            model=C.model_record(self.options.model, self.model, data.input_dims, data.n_classes, self.task, self.metadata_spec),
            data=to_jsonable(self.data_record),
            normaliser=data.normaliser.training_only().to_payload(),
            epoch=epoch,
            best={"epoch": self.best_epoch + 1, "metric": self.metric, "value": None if self.best_value is None else float(self.best_value)},
            threshold=self.threshold,
            training=None
            if not training
            else {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": C.rng_state(),
                "epochs_without_gain": self.epochs_without_gain,
                "skipped_steps": self.skipped_total,
                "history": to_jsonable(self.history),
                "finished": False,
                "stop_reason": None,
            },
        )

    def save_checkpoint(self, epoch: int, best: bool = False) -> None:
        """last.pt (and best.pt when this epoch is the best so far), then the derived files."""
        if best:
            C.save_checkpoint(self.run_dir / BEST, self._checkpoint(epoch, training=False))
        last = self._checkpoint(epoch)
        C.save_checkpoint(self.run_dir / LAST, last)
        write_derived_files(self.run_dir, last)

    # -- reporting and cleanup ----------------------------------------------------------------
    def _log_tensorboard(self, row: dict[str, Any]) -> None:
        if self.tensorboard is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, float) and math.isfinite(v):
                    self.tensorboard.add_scalar(k.replace("_", "/", 1), v, row["epoch"])

    def cleanup(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _open_tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
