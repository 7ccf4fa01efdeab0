"""The one checkpoint format of a run (`last.pt` and `best.pt`).

A checkpoint is a single versioned payload holding everything needed to rebuild, continue
or evaluate the run: the resolved options, the model (name, config, input dims, classes,
task, metadata spec, weights), the data record (spec, summary, metadata encoding,
provenance), the normaliser, the epoch and best score, and, in `last.pt`, the optimiser,
schedule, scaler and RNG states, the epoch log and, once finished, the final metrics.
`best.pt` is the same payload at the best epoch, without the training state.

Payloads hold only tensors and JSON-like values so `torch.load(weights_only=True)` reads
them: nothing in a run folder executes code when it is loaded. Writes are atomic (temporary
file + rename), so a run killed mid-save keeps its previous checkpoint.

Format 1 (emofuse 0.1: `best.pt` with `model_state`, `last.pt` with `model`, options in
`config.yaml`, the normaliser in `normalisation.npz`) still loads for evaluation, prediction
and explanation; resuming such a run is refused with the command that re-runs it.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse.jsonio import to_jsonable
from fuse.runs.folders import CONFIG_FILE, RunError, read_config

FORMAT = "emofuse-run"
VERSION = 2


@dataclass
class Checkpoint:
    """A run's state at the end of an epoch (see the module docstring)."""

    options: dict[str, Any]  # resolved TrainOptions.to_dict()
    model: dict[str, Any]  # name, config, input_dims, n_classes, task, metadata_spec, state
    data: dict[str, Any]  # spec, summary, metadata_encoding, provenance
    normaliser: dict[str, Any]  # Normaliser.to_payload()
    epoch: int  # epochs completed
    best: dict[str, Any]  # {"epoch": 1-based best epoch (0: none yet), "metric": name, "value": float | None}
    threshold: float | None  # multi-label decision threshold (tuned on dev when asked)
    training: dict[str, Any] | None = None  # last.pt: optimizer, scheduler, scaler, rng, counters, history
    metrics: dict[str, Any] | None = None  # last.pt of a finished run: what metrics.json shows

    @property
    def finished(self) -> bool:
        return bool(self.training and self.training.get("finished"))

    def to_payload(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path) -> "Checkpoint":
        if payload.get("format") == FORMAT:
            if payload.get("version") != VERSION:
                raise RunError(f"{path}: checkpoint format version {payload.get('version')}; this emofuse reads version {VERSION}")
            return cls(**{f.name: payload.get(f.name) for f in dataclasses.fields(cls)})
        if payload.get("format") == 1 and "model_state" in payload:
            return _from_format_1(payload, path)
        raise RunError(
            f"{path}: a checkpoint of emofuse 0.1's format that cannot be continued; evaluate its best.pt, "
            f"or re-run it with: fuse train --config {path.parent / CONFIG_FILE} --out NEW_FOLDER"
        )


def _from_format_1(payload: dict[str, Any], path: Path) -> Checkpoint:
    """A format-1 best.pt: options from the folder's config.yaml, everything else inside."""
    model = {k: payload[k] for k in ("model_config", "input_dims", "n_classes", "task", "metadata_spec")}
    model = {"name": payload["model_name"], "config": model.pop("model_config"), **model, "state": payload["model_state"]}
    return Checkpoint(
        options=read_config(path.parent),
        model=model,
        data=payload["data"],
        normaliser=payload["normaliser"],
        epoch=int(payload["epoch"]),
        best={"epoch": int(payload["epoch"]), "metric": payload["metric"], "value": payload["value"]},
        threshold=payload.get("threshold"),
    )


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically; a full disk or unwritable folder is a RunError naming the file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(checkpoint.to_payload(), tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise RunError(f"{path}: cannot write the checkpoint ({exc})") from None


def load_checkpoint(path: Path, map_location="cpu") -> Checkpoint:
    """Read a checkpoint; a missing, damaged or code-carrying file is a one-line RunError."""
    path = Path(path)
    if not path.is_file():
        if not (path.parent / CONFIG_FILE).is_file():
            raise RunError(f"{path.parent}: not a run folder (no {path.name} nor {CONFIG_FILE})")
        raise RunError(f"{path.parent}: no checkpoint {path.name} (did the run finish an epoch?)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or hostile files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{path}: not a readable emofuse checkpoint ({first_line})") from None
    if not isinstance(payload, dict):
        raise RunError(f"{path}: not an emofuse checkpoint (holds a {type(payload).__name__})")
    return Checkpoint.from_payload(payload, path)


def model_record(name: str, model, input_dims, n_classes: int, task: str, metadata_spec) -> dict[str, Any]:
    """The `model` entry of a checkpoint (config dataclass as JSON-like values)."""
    return {
        "name": name,
        "config": to_jsonable(dataclasses.asdict(model.config)),
        "input_dims": dict(input_dims),
        "n_classes": int(n_classes),
        "task": task,
        "metadata_spec": None if metadata_spec is None else metadata_spec.to_dict(),
        "state": model.state_dict(),
    }


# ---------------------------------------------------------------------------------------------
# RNG state (stored as tensors/lists so checkpoints stay weights_only-loadable)
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": _listify(random.getstate()),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _listify(value):
    return [_listify(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value
