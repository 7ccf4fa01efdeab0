"""Run folders: their names, their files, and the human-readable files derived from checkpoints.

A run folder (`runs/<name>/`) holds

    last.pt              the run's checkpoint after the latest epoch (fuse.runs.checkpoint)
    best.pt              the same payload at the best epoch (what evaluate/predict/explain load)
    config.yaml          every option the run used, resolved     } derived from the
    data.json            the data record: spec, summary, provenance } checkpoint, never read
    metrics.json         per split: the best model's metrics       } back by the trainer
    log.csv              one row per epoch: losses, validation metrics, lr, time, skipped steps
    *.png                confusion matrices, training curves, modality weights, an attention map
    tensorboard/         TensorBoard events, when tensorboard is installed

`config.yaml` can be passed back to `fuse train --config` to repeat a run.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from fuse.jsonio import write_json

CONFIG_FILE, DATA_FILE, LOG_FILE, METRICS_FILE = "config.yaml", "data.json", "log.csv", "metrics.json"
LAST, BEST = "last.pt", "best.pt"
LOG_FIELDS_FIRST = ("epoch", "train_loss", "dev_loss")
# Files that may sit in a run folder before its run starts: the lock, and a sweep's log and record.
KEPT_BESIDE_RUN = (".lock", "train.log", "sweep_run.json")


class RunError(ValueError):
    """A run folder is missing, incomplete, or does not fit the cache it is used with."""


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


def other_files(run_dir: Path) -> list[Path]:
    """What a folder holds besides `KEPT_BESIDE_RUN`: the work a new run would replace."""
    run_dir = Path(run_dir)
    return sorted(p for p in run_dir.iterdir() if p.name not in KEPT_BESIDE_RUN) if run_dir.is_dir() else []


def clear_run_folder(run_dir: Path, keep: tuple[str, ...] = (".lock",)) -> None:
    """Delete a run folder's contents but `keep` (its lock, held by the caller)."""
    import shutil

    for path in Path(run_dir).iterdir():
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def read_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RunError(f"{path}: unreadable ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise RunError(f"{path}: expected a mapping of options, found {type(loaded).__name__}")
    return loaded


def write_derived_files(run_dir: Path, checkpoint) -> None:
    """config.yaml, data.json, log.csv and (once finished) metrics.json from a checkpoint."""
    run_dir = Path(run_dir)
    tmp = run_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(checkpoint.options, sort_keys=False))
    tmp.replace(run_dir / CONFIG_FILE)
    write_json(run_dir / DATA_FILE, checkpoint.data)
    history = (checkpoint.training or {}).get("history", [])
    fields = list(LOG_FIELDS_FIRST)
    for row in history:
        fields.extend(k for k in row if k not in fields)
    with open(run_dir / LOG_FILE, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    if checkpoint.metrics is not None:
        write_json(run_dir / METRICS_FILE, checkpoint.metrics)
