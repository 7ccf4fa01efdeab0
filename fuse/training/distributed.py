"""Data-parallel training over processes (`torch.distributed` DDP), launched by torchrun.

    torchrun --nproc-per-node 2 --no-python fuse train --cache data/feats.zarr --batch-size 32
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        --no-python fuse train --cache /shared/feats.zarr

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; with WORLD_SIZE > 1 the recipe joins the
process group (NCCL when training on CUDA, gloo on CPU) and splits the work so that W
processes give the metrics one process gives at the same (global) `batch_size`:

* **Batches.** Every rank builds the same plan of global batches from (seed, epoch) and reads
  only its part of each (`FeatureData.batches(shard=(rank, W))`: utterances rank, rank+W, ...
  of the global batch). The number of optimiser steps is the single-process one.
* **Loss.** DDP averages gradients over ranks. Each rank's mean loss is weighted by
  `W * n_rank / n_global`, so that average is the gradient of the global batch's mean loss,
  also when the parts differ in size. A rank whose part is empty (a global batch with fewer
  utterances than ranks) runs a stand-in utterance with weight 0, so every rank takes part in
  every gradient all-reduce. Exact for losses that are means over utterances (every model's
  classification loss); batch-level terms (CARAT's supervised contrastive loss and its
  queue, which DDP's buffer broadcast keeps equal to rank 0's) are computed per rank.
* **Skipped steps.** Whether a step's loss is finite is decided on the all-reduced global
  loss, so all ranks skip the same steps.
* **Evaluation.** Each rank predicts a contiguous chunk of the split's rows; predictions are
  gathered on every rank (`gather_predictions`), so metrics and early stopping agree.
* **Files.** Rank 0 alone takes the run lock and writes the run folder (checkpoints, metrics,
  plots); the others wait at a barrier where it matters and print nothing.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands in the job: rank `rank` of `world_size`."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """`(rank, world_size)` for `FeatureData.batches`, or None for a single process."""
        return (self.rank, self.world_size) if self.enabled else None

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value):
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over ranks (a new tensor)."""
        if not self.enabled:
            return tensor.clone()
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


SINGLE_PROCESS = ProcessGroup()


def join_from_environment(device: torch.device) -> ProcessGroup:
    """The process group torchrun describes in the environment (joined once per process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE_PROCESS
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for_rank(device: torch.device, group: ProcessGroup) -> torch.device:
    """One GPU per local rank on CUDA; the CPU is shared."""
    if group.enabled and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
    return device


def wrap_model(model: torch.nn.Module, group: ProcessGroup, device: torch.device) -> torch.nn.Module:
    """The module to train: DDP around `model` when distributed, else `model` itself.

    find_unused_parameters: a batch may leave parts of a model unused (an absent modality's
    branch, a loss term switched off), which plain DDP would wait for forever.
    """
    if not group.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def rank_chunk(rows: np.ndarray, group: ProcessGroup) -> np.ndarray:
    """This rank's contiguous chunk of `rows` for inference."""
    return np.array_split(np.asarray(rows), group.world_size)[group.rank] if group.enabled else rows


def gather_predictions(local, group: ProcessGroup):
    """Every rank's `Predictions` (of its `rank_chunk`) joined in row order, on every rank."""
    if not group.enabled:
        return local
    from fuse.runs.inference import Predictions

    parts = [None] * group.world_size
    dist.all_gather_object(parts, local)
    indices = np.concatenate([p.indices for p in parts])
    order = np.argsort(indices, kind="stable")
    gates = [p.gate_weights for p in parts if p.gate_weights is not None and len(p.indices)]
    weighted = [(p.loss, len(p.indices)) for p in parts if p.loss is not None and len(p.indices)]
    n = sum(count for _, count in weighted)
    return Predictions(
        indices=indices[order],
        probabilities=np.concatenate([p.probabilities for p in parts])[order],
        gate_weights=np.concatenate(gates)[order] if gates else None,
        modality_names=next((p.modality_names for p in parts if p.modality_names), ()),
        loss=sum(loss * count for loss, count in weighted) / n if n else None,
    )
