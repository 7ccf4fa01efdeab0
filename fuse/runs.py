"""Run folders: what a training run writes, checkpoints, and provenance checks.

A run folder (`runs/<name>/`) holds

    config.yaml          every option the run used (resolved: CLI > --config file > model defaults)
    data.json            the data spec (feature sets, task, classes, max lengths, metadata
                         vocabularies, dev split) and the provenance of every feature set used
    normalisation.npz/.json   the per-feature-set (and per-speaker) mean/std fit on train
    last.pt              full training state after the latest epoch (for --resume)
    best.pt              the best epoch's model, with everything needed to rebuild it
    log.csv              one row per epoch: losses, validation metrics, lr, time, skipped steps
    metrics.json         per split: the metrics of the best model (and the threshold used)
    *.png                confusion matrices, training curves, modality weights, an attention map
    tensorboard/         TensorBoard events, when tensorboard is installed

Checkpoints are plain dicts of tensors and JSON-like values so `torch.load(weights_only=True)`
can read them: nothing in a run folder executes code when it is loaded.

Provenance: a checkpoint records the cache schema version and, per feature set, the
attributes that decide what its numbers mean (checkpoint, revision, weights_sha256, dim,
encoder_kind). Evaluating or predicting with a cache whose feature set differs in any of
them is refused, naming the feature set and the field: a model trained on BERT-base
features must never silently score BERT-large ones.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cache_schema import Cache

PROVENANCE_FIELDS = ("checkpoint", "revision", "weights_sha256", "dim", "encoder_kind")
CONFIG_FILE, DATA_FILE, NORMALISATION_FILE = "config.yaml", "data.json", "normalisation"
LAST, BEST, LOG_FILE, METRICS_FILE = "last.pt", "best.pt", "log.csv", "metrics.json"


def default_run_dir(model: str, latest: bool = False, root: str | Path = "runs") -> Path:
    """The run folder when --out is not given: runs/<model>, else runs/<model>-2, -3, ...

    A new run takes the first folder that does not exist or is empty, so training twice never
    overwrites nor refuses (as `runs/train`, `runs/train2` in ultralytics); `latest=True`
    (for --resume) returns the highest-numbered existing one.
    """
    root = Path(root)

    def candidate(n: int) -> Path:
        return root / (model if n == 1 else f"{model}-{n}")

    n = 1
    while candidate(n).is_dir() and any(candidate(n).iterdir()):
        n += 1
    if latest:
        return candidate(max(1, n - 1))
    return candidate(n)


class RunError(ValueError):
    """A run folder is missing, incomplete, or does not fit the cache it is used with."""


class ProvenanceMismatch(RunError):
    """The cache's feature sets are not the ones the run was trained on."""


# ---------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------


def provenance(cache: Cache, feature_sets: dict[str, str]) -> dict[str, Any]:
    """What the run must find again in any cache it is used with."""
    sets = {}
    for modality, name in feature_sets.items():
        attrs = cache[name].attrs
        sets[name] = {"modality": modality, **{f: _jsonable(attrs.get(f)) for f in PROVENANCE_FIELDS}}
        sets[name]["dim"] = int(cache[name].dim)
    return {"schema_version": cache.schema_version, "feature_sets": sets}


def check_provenance(saved: dict[str, Any], cache: Cache) -> None:
    """Raise ProvenanceMismatch naming the first differing feature set and field(s)."""
    if int(saved["schema_version"]) != cache.schema_version:
        raise ProvenanceMismatch(
            f"{cache.path}: cache schema version {cache.schema_version} differs from the run's ({saved['schema_version']})"
        )
    for name, expected in saved["feature_sets"].items():
        if name not in cache:
            raise ProvenanceMismatch(
                f"{cache.path}: no feature set {name!r}, which the run was trained on (available: {', '.join(cache.feature_names()) or 'none'})"
            )
        fs = cache[name]
        actual = {f: _jsonable(fs.attrs.get(f)) for f in PROVENANCE_FIELDS}
        actual["dim"] = int(fs.dim)
        diffs = [f"{f} is {actual[f]!r}, the run was trained with {expected[f]!r}" for f in PROVENANCE_FIELDS if actual[f] != expected.get(f)]
        if diffs:
            raise ProvenanceMismatch(f"{cache.path}: feature set {name!r} differs from the run's: " + "; ".join(diffs))


def _jsonable(value):
    return json.loads(json.dumps(value, default=_json_default))


def plain(value):
    """`value` with numpy scalars/arrays turned into JSON types (checkpoints stay weights_only-safe)."""
    return _jsonable(value)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def save_config(run_dir: Path, options: dict[str, Any]) -> None:
    (Path(run_dir) / CONFIG_FILE).write_text(yaml.safe_dump(options, sort_keys=False))


def load_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
    return yaml.safe_load(path.read_text()) or {}


def write_json(path: Path, payload: Any) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_json_default))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (temp file + rename): a run killed mid-save keeps its previous file."""
    tmp = Path(str(path) + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, map_location="cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path.parent}: no checkpoint {path.name} (did the run finish an epoch?)")
    return torch.load(path, map_location=map_location, weights_only=True)


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


# ---------------------------------------------------------------------------------------------
# Model configs and normalisers inside checkpoints
# ---------------------------------------------------------------------------------------------


def config_dict(config) -> dict[str, Any]:
    """A model config dataclass as JSON-like values (tuples become lists)."""
    import dataclasses

    return _jsonable(_listify(dataclasses.asdict(config)))


def normaliser_payload(normaliser) -> dict[str, Any]:
    return {
        "mode": normaliser.mode,
        "feature_sets": {
            name: {
                "groups": list(n.groups),
                "mean": torch.from_numpy(np.asarray(n.mean, dtype=np.float64)),
                "std": torch.from_numpy(np.asarray(n.std, dtype=np.float64)),
                "counts": [float(c) for c in n.counts],
                "fit_on": list(n.fit_on),
            }
            for name, n in normaliser.norms.items()
        },
    }


def normaliser_from_payload(payload: dict[str, Any]):
    from fuse.normalisation import FeatureNorm, Normaliser

    norms = {
        name: FeatureNorm(list(p["groups"]), p["mean"].numpy(), p["std"].numpy(), np.asarray(p["counts"]), list(p["fit_on"]))
        for name, p in payload["feature_sets"].items()
    }
    return Normaliser(payload["mode"], norms)


# ---------------------------------------------------------------------------------------------
# Inference and loading a trained run
# ---------------------------------------------------------------------------------------------


class Predictions:
    """Model outputs for a set of rows, in row order."""

    def __init__(self, indices, probabilities, gate_weights, modality_names, loss):
        self.indices: np.ndarray = indices
        self.probabilities: np.ndarray = probabilities  # (N, C) softmax or sigmoid
        self.gate_weights: np.ndarray | None = gate_weights  # (N, M) or None
        self.modality_names: tuple[str, ...] = tuple(modality_names)
        self.loss: float | None = loss


@torch.no_grad()
def infer(model, data, indices, batch_size: int, device, amp: bool = False, with_labels: bool = True) -> Predictions:
    """Probabilities (and gate weights) of `indices`, batched by length, returned in row order."""
    device = torch.device(device)
    use_amp = amp and device.type == "cuda"
    dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    model.eval()
    rows, probs, gates, names, loss_sum, loss_n = [], [], [], (), 0.0, 0
    for batch in data.batches(np.asarray(indices), batch_size, shuffle=False, bucket=True, with_labels=with_labels):
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            out = model(batch)
        logits = out.logits.float()
        probs.append((torch.softmax(logits, -1) if data.spec.task == "single_label" else torch.sigmoid(logits)).cpu().numpy())
        rows.append(batch.index.cpu().numpy())
        if out.gate_weights is not None:
            gates.append(out.gate_weights.float().cpu().numpy())
            names = out.modality_names
        if out.loss is not None and torch.isfinite(out.loss):
            loss_sum += float(out.loss) * batch.size
            loss_n += batch.size
    if not rows:
        n_classes = data.n_classes
        return Predictions(np.zeros(0, dtype=np.int64), np.zeros((0, n_classes), dtype=np.float32), None, (), None)
    rows = np.concatenate(rows)
    order = np.argsort(rows, kind="stable")
    gate_weights = np.concatenate(gates)[order] if gates else None
    return Predictions(rows[order], np.concatenate(probs)[order], gate_weights, names, loss_sum / loss_n if loss_n else None)


class LoadedRun:
    """A trained run ready to use on a cache: model (eval mode), data view, checkpoint, options."""

    def __init__(self, run_dir: Path, model, data, checkpoint: dict[str, Any], options: dict[str, Any], device):
        self.run_dir, self.model, self.data, self.checkpoint, self.options, self.device = run_dir, model, data, checkpoint, options, device

    @property
    def threshold(self) -> float | None:
        return self.checkpoint.get("threshold")


def load_run(run_dir: str | Path, cache_path: str | Path | None = None, device: str = "cpu", in_memory: bool = False) -> LoadedRun:
    """Rebuild a run's best model and its data view on `cache_path` (default: the run's cache).

    Refuses (ProvenanceMismatch) a cache whose feature sets differ from the run's.
    """
    from cache_schema import CacheError, open_cache
    from fuse.data import DataError, DataSpec, FeatureData, MetadataEncoding
    from fuse.models import MetadataSpec, build_model

    run_dir = Path(run_dir)
    options = load_config(run_dir)
    checkpoint = load_checkpoint(run_dir / BEST, map_location=device)
    cache_path = cache_path or options["cache"]
    try:
        cache = open_cache(cache_path)
    except CacheError as exc:
        raise RunError(str(exc)) from None
    record = checkpoint["data"]
    check_provenance(record["provenance"], cache)
    try:
        data = FeatureData.for_run(
            cache,
            DataSpec.from_dict(record["spec"]),
            normaliser_from_payload(checkpoint["normaliser"]),
            MetadataEncoding.from_state(record["metadata_encoding"]),
            in_memory=in_memory,
        )
    except DataError as exc:
        raise RunError(str(exc)) from None
    meta = checkpoint["metadata_spec"]
    spec = None if meta is None else MetadataSpec(tuple(tuple(c) for c in meta["categorical"]), int(meta["n_numeric"]))
    model = build_model(checkpoint["model_name"], checkpoint["input_dims"], checkpoint["n_classes"], checkpoint["task"], spec, **checkpoint["model_config"])
    model.load_state_dict(checkpoint["model_state"])
    model.to(device).eval()
    return LoadedRun(run_dir, model, data, checkpoint, options, device)
