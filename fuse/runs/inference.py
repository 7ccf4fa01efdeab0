"""Inference with a trained run: rebuild its best model and data view, predict batches of rows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse.device import autocast_for
from fuse.runs.checkpoint import Checkpoint, load_checkpoint
from fuse.runs.folders import BEST, RunError
from fuse.runs.provenance import check_provenance


@dataclass
class Predictions:
    """Model outputs for a set of rows, in row order."""

    indices: np.ndarray  # (N,) cache rows
    probabilities: np.ndarray  # (N, C) softmax or sigmoid
    gate_weights: np.ndarray | None  # (N, M) or None
    modality_names: tuple[str, ...]
    loss: float | None  # mean loss over the labelled rows, when labels were read


@torch.no_grad()
def infer(model, data, indices, batch_size: int, device, amp: bool = False, with_labels: bool = True, drop: tuple[str, ...] = ()) -> Predictions:
    """Probabilities (and gate weights) of `indices`, batched by length, returned in row order.

    `drop`: modalities treated as missing for every utterance (`fuse.robustness.without_modalities`).
    """
    from fuse.robustness import without_modalities

    autocast, _ = autocast_for(torch.device(device), amp)
    model.eval()
    # Outputs go into arrays allocated once for the whole split, not per-batch pieces joined at
    # the end: the pieces and their concatenation were alive together, and glibc kept the freed
    # pieces, so a 4x larger split peaked 1.3-1.6x higher (bench/train.py's memory arms).
    n = len(indices)
    rows, probs = np.empty(n, dtype=np.int64), np.empty((n, data.n_classes), dtype=np.float32)
    gates, names, loss_sum, loss_n, filled = None, (), 0.0, 0, 0
    for batch in data.batches(np.asarray(indices), batch_size, shuffle=False, bucket=True, with_labels=with_labels):
        batch = without_modalities(batch, drop).to(device)
        with autocast():
            out = model(batch)
        size, logits = batch.size, out.logits.float()
        at = slice(filled, filled + size)
        probs[at] = (torch.softmax(logits, -1) if data.spec.task == "single_label" else torch.sigmoid(logits)).cpu().numpy()
        rows[at] = batch.index.cpu().numpy()
        if out.gate_weights is not None:
            if gates is None:
                gates = np.empty((n, out.gate_weights.shape[1]), dtype=np.float32)
            gates[at], names = out.gate_weights.float().cpu().numpy(), out.modality_names
        if out.loss is not None and torch.isfinite(out.loss):
            loss_sum += float(out.loss) * size
            loss_n += size
        filled += size
    if filled == 0:
        return Predictions(np.zeros(0, dtype=np.int64), np.zeros((0, data.n_classes), dtype=np.float32), None, (), None)
    order = np.argsort(rows[:filled], kind="stable")
    gate_weights = gates[:filled][order] if gates is not None else None
    return Predictions(rows[:filled][order], probs[:filled][order], gate_weights, tuple(names), loss_sum / loss_n if loss_n else None)

def build_from_checkpoint(checkpoint: Checkpoint, device):
    """The checkpoint's model with its weights, on `device`, in eval mode."""
    from fuse.batch import MetadataSpec
    from fuse.models import build_model

    record = checkpoint.model
    model = build_model(
        record["name"], record["input_dims"], record["n_classes"], record["task"], MetadataSpec.from_dict(record["metadata_spec"]), **record["config"]
    )
    model.load_state_dict(record["state"])
    return model.to(device).eval()


def data_for_checkpoint(checkpoint: Checkpoint, cache, in_memory: bool = False, allow_changed: bool = False):
    """The checkpoint's data view on `cache` (its statistics, not the cache's); provenance checked.

    With `allow_changed`, feature sets that differ from the run's are accepted and the
    differences kept in `data.accepted_feature_changes`.
    """
    from fuse.data import DataError, DataSpec, FeatureData, MetadataEncoding, Normaliser

    record = checkpoint.data
    accepted = check_provenance(record["provenance"], cache, allow_changed)
    try:
        data = FeatureData.for_run(
            cache,
            DataSpec.from_dict(record["spec"]),
            Normaliser.from_payload(checkpoint.normaliser),
            MetadataEncoding.from_state(record["metadata_encoding"]),
            in_memory=in_memory,
        )
    except DataError as exc:
        raise RunError(str(exc)) from None
    data.accepted_feature_changes = accepted
    return data


@dataclass
class LoadedRun:
    """A trained run ready to use on a cache: model (eval mode), data view, checkpoint, options."""

    run_dir: Path
    model: Any
    data: Any
    checkpoint: Checkpoint
    device: Any

    @property
    def options(self) -> dict[str, Any]:
        return self.checkpoint.options

    @property
    def threshold(self) -> float | None:
        return self.checkpoint.threshold


def load_run(
    run_dir: str | Path, cache_path: str | Path | None = None, device: str = "cpu", in_memory: bool = False, allow_changed_features: bool = False
) -> LoadedRun:
    """Rebuild a run's best model and its data view on `cache_path` (default: the run's cache).

    Refuses (ProvenanceMismatch) a cache whose feature sets differ from the run's, unless
    `allow_changed_features` (then `loaded.data.accepted_feature_changes` lists them).
    """
    from cache_schema import CacheError, open_cache

    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(run_dir / BEST, map_location=device)
    try:
        cache = open_cache(cache_path or checkpoint.options["cache"])
    except CacheError as exc:
        raise RunError(str(exc)) from None
    data = data_for_checkpoint(checkpoint, cache, in_memory, allow_changed_features)
    return LoadedRun(run_dir, build_from_checkpoint(checkpoint, device), data, checkpoint, device)
