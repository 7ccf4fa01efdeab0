"""Optimiser and learning-rate schedule builders for the training loop.

    from fuse.training.optim import build_optimizer, build_scheduler
    optimizer = build_optimizer(model, lr=3e-5, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6,
                                exclude_norm_and_bias=True, coef_lr=0.1, coef_lr_group=("encoders.",))
    scheduler = build_scheduler(optimizer, "bert_adam", warmup_ratio=0.2, total_steps=n_steps)
    # per optimiser step: optimizer.step(); scheduler.step()
    # per epoch, after scoring dev: end_epoch(scheduler, improved)   ("plateau" only)

Both read their defaults from nothing: the trainer passes the values it resolved from the
model's `TrainingDefaults` (fuse/models/base.py) and the user's options.

Optimiser: `torch.optim.AdamW` (decoupled weight decay) over up to four parameter groups,
{decay, no decay} x {main, coef_lr group}; empty groups are left out.
- `exclude_norm_and_bias=True`: biases (every parameter whose name ends in "bias") and the
  parameters of normalisation layers (LayerNorm, BatchNorm, GroupNorm, ... found by module type,
  not by name) get weight decay 0, as BERT-style code does. False: every parameter is decayed,
  which is what `torch.optim.AdamW(model.parameters())` does.
- `coef_lr` (seed 2, 3.5.2: 0.1): parameters whose name starts with one of the prefixes in
  `coef_lr_group` get lr * coef_lr; all others get lr. `coef_lr=1` or an empty group: one lr.
  Every prefix must match at least one trainable parameter (a typo is an error, not a no-op).

BertAdam (seed 2, 3.5.1) differs from AdamW in one respect we do not reproduce: it omits Adam's
bias correction. torch's AdamW always corrects; the difference is confined to the first
~1 / (1 - beta2) steps, which fall inside the warmup where the learning rate is small.

Schedules (`torch.optim.lr_scheduler.LambdaLR` multipliers of each group's lr, per optimiser step):
- "linear": transformers' `get_linear_schedule_with_warmup`: step / w for step < w, then linear
  decay to 0 at `total_steps` (w = round(warmup_ratio * total_steps)). Seed 1, Table 3.
- "bert_adam": seed 2, 3.5.1: min(step / w, sqrt(w / step)), i.e. linear warmup to the peak at
  step w, then inverse-square-root decay; w = max(1, round(warmup_ratio * total_steps)). At step 0
  the factor is 0 (as for "linear").
- "constant": factor 1 (no warmup, no decay), for ablations.
- "plateau": a schedule that does not depend on how many epochs the run may last, for
  training whose length early stopping decides: linear warmup over `warmup_ratio` of one
  epoch's steps, then factor 1, halved (PLATEAU_FACTOR) each time the dev metric has gone
  `plateau_patience` epochs without a gain (`end_epoch`), as torch's ReduceLROnPlateau and
  Keras' recipe (reduce on plateau, then stop early) do. "linear" and "bert_adam" spread over
  the `epochs` cap instead: with a generous cap the learning rate is still near its peak when
  early stopping ends the run (issue 18, MELD seeds 1, 2: 0.524 / 0.570 with a cap of 50, against
  0.578 mean with a 10-epoch cap; plateau with the cap of 50: 0.575, benchmarks/README.md).
A per-epoch decay (seed 2's 0.98, `TrainingDefaults.lr_decay_per_epoch`) is applied by the
trainer on top, by multiplying `scheduler.base_lrs` after each epoch; it keeps the ratio
between groups (coef_lr) because every base lr is multiplied by the same factor.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

SCHEDULERS = ("linear", "bert_adam", "constant", "plateau")
PLATEAU_FACTOR = 0.5  # torch's ReduceLROnPlateau's default is 0.1; halving is the usual choice with early stopping

# Module types whose parameters count as normalisation parameters.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def norm_and_bias_names(model: nn.Module) -> set[str]:
    """Names of the parameters that BERT-style optimisers exclude from weight decay:
    biases and every parameter of a normalisation module."""
    names = set()
    for module_name, module in model.named_modules():
        for parameter_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{parameter_name}" if module_name else parameter_name
            if isinstance(module, NORM_TYPES) or parameter_name.endswith("bias"):
                names.add(full)
    return names


def parameter_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    *,
    exclude_norm_and_bias: bool = False,
    coef_lr: float = 1.0,
    coef_lr_group: Sequence[str] = (),
) -> list[dict]:
    """The AdamW parameter groups (see module docstring). Each group dict has `params`, `lr`,
    `weight_decay` and `name` ("decay", "no_decay", "coef_decay", "coef_no_decay")."""
    if coef_lr <= 0:
        raise ValueError(f"coef_lr must be > 0, got {coef_lr}")
    if isinstance(coef_lr_group, str):
        coef_lr_group = (coef_lr_group,)
    prefixes = tuple(coef_lr_group) if coef_lr != 1.0 else ()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n, _ in trainable):
            raise ValueError(
                f"coef_lr_group prefix {prefix!r} matches no trainable parameter of {type(model).__name__}; "
                f"top-level modules: {sorted({n.split('.')[0] for n, _ in trainable})}"
            )
    no_decay = norm_and_bias_names(model) if exclude_norm_and_bias else set()
    buckets: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "coef_decay": [], "coef_no_decay": []}
    for name, parameter in trainable:
        key = "no_decay" if name in no_decay else "decay"
        if prefixes and name.startswith(prefixes):
            key = "coef_" + key
        buckets[key].append(parameter)
    groups = []
    for key, params in buckets.items():
        if params:
            groups.append(
                {
                    "name": key,
                    "params": params,
                    "lr": lr * (coef_lr if key.startswith("coef_") else 1.0),
                    "weight_decay": 0.0 if key.endswith("no_decay") else weight_decay,
                }
            )
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    *,
    exclude_norm_and_bias: bool = False,
    coef_lr: float = 1.0,
    coef_lr_group: Sequence[str] = (),
) -> torch.optim.AdamW:
    """AdamW over `parameter_groups(model, ...)`. With the keyword defaults this is exactly
    `torch.optim.AdamW(model.parameters(), lr, betas, eps, weight_decay)` (one group)."""
    groups = parameter_groups(
        model, lr, weight_decay, exclude_norm_and_bias=exclude_norm_and_bias, coef_lr=coef_lr, coef_lr_group=coef_lr_group
    )
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def warmup_steps_for(kind: str, warmup_ratio: float, total_steps: int) -> int:
    """Number of warmup steps `build_scheduler` uses."""
    steps = int(round(warmup_ratio * total_steps))
    return max(1, steps) if kind == "bert_adam" else steps


def bert_adam_factor(step: int, warmup_steps: int) -> float:
    """Seed 2, 3.5.1: min(step / warmup_steps, sqrt(warmup_steps / step)); 0 at step 0."""
    if step <= 0:
        return 0.0
    return min(step / warmup_steps, math.sqrt(warmup_steps / step))


class PlateauFactor:
    """The "plateau" multiplier: warmup over `warmup_steps`, times `scale`, which `epoch_end`
    halves after `patience` epochs without a dev gain. A callable object rather than a
    function, so that LambdaLR's state_dict saves its fields and `--resume` restores them."""

    def __init__(self, warmup_steps: int, patience: int, factor: float = PLATEAU_FACTOR):
        self.warmup_steps, self.patience, self.factor = int(warmup_steps), max(1, int(patience)), float(factor)
        self.scale, self.epochs_without_gain = 1.0, 0

    def __call__(self, step: int) -> float:
        warm = 1.0 if self.warmup_steps <= 0 else min(1.0, step / self.warmup_steps)
        return warm * self.scale

    def epoch_end(self, improved: bool) -> bool:
        """Count an epoch; True when it reduced the learning rate."""
        self.epochs_without_gain = 0 if improved else self.epochs_without_gain + 1
        if self.epochs_without_gain < self.patience:
            return False
        self.scale *= self.factor
        self.epochs_without_gain = 0
        return True


def plateau_patience_for(patience: int) -> int:
    """Epochs without a gain before "plateau" halves the learning rate: half the early-stopping
    patience (at least 1), so a run gets at least one reduced-rate try before it stops."""
    return max(1, int(patience) // 2)


def end_epoch(scheduler: LambdaLR, improved: bool) -> bool:
    """After an epoch's dev score: advance a "plateau" schedule (no-op for the others) and
    apply a reduction at once, so the next epoch's first step already uses it. True when the
    learning rate was reduced."""
    reduced = False
    for fn in scheduler.lr_lambdas:
        if isinstance(fn, PlateauFactor):
            reduced = fn.epoch_end(improved) or reduced
    if reduced:
        step = scheduler.last_epoch
        for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * fn(step)
    return reduced


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, warmup_ratio: float, total_steps: int, steps_per_epoch: int | None = None, patience: int = 2
) -> LambdaLR:
    """Per-step learning-rate schedule `kind` ("linear", "bert_adam", "constant" or "plateau")
    over `total_steps` optimiser steps ("plateau": warmup over `warmup_ratio` of
    `steps_per_epoch`, reductions after `patience` epochs without gain); see the module
    docstring. Call `.step()` after each `optimizer.step()`, and `end_epoch` after each epoch."""
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {kind!r}; expected one of {SCHEDULERS}")
    if not 0.0 <= warmup_ratio <= 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
    total_steps = max(1, int(total_steps))
    if kind == "plateau":
        epoch_steps = total_steps if steps_per_epoch is None else max(1, int(steps_per_epoch))
        return LambdaLR(optimizer, [PlateauFactor(warmup_steps_for(kind, warmup_ratio, epoch_steps), patience) for _ in optimizer.param_groups])
    warmup = warmup_steps_for(kind, warmup_ratio, total_steps)
    if kind == "linear":
        from transformers import get_linear_schedule_with_warmup

        return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if kind == "bert_adam":
        return LambdaLR(optimizer, lambda step: bert_adam_factor(step, warmup))
    return LambdaLR(optimizer, lambda step: 1.0)
