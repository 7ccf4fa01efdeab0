"""Trained runs: their folders, their one checkpoint format, provenance and inference.

    folders.py     run-folder names and files; config.yaml / data.json / metrics.json derived
    checkpoint.py  the versioned checkpoint payload (last.pt, best.pt), RNG state, format 1
    provenance.py  which feature sets a run was trained on; refusing a cache that differs
    inference.py   rebuilding a run's best model and data view; batched predictions
"""
from fuse.runs.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fuse.runs.folders import BEST, CONFIG_FILE, DATA_FILE, LAST, LOG_FILE, METRICS_FILE, RunError, default_run_dir, read_config
from fuse.runs.inference import LoadedRun, Predictions, infer, load_run
from fuse.runs.provenance import ProvenanceMismatch, check_provenance, provenance

__all__ = [
    "BEST",
    "CONFIG_FILE",
    "Checkpoint",
    "DATA_FILE",
    "LAST",
    "LOG_FILE",
    "LoadedRun",
    "METRICS_FILE",
    "Predictions",
    "ProvenanceMismatch",
    "RunError",
    "check_provenance",
    "default_run_dir",
    "infer",
    "load_checkpoint",
    "load_run",
    "provenance",
    "read_config",
    "save_checkpoint",
]
