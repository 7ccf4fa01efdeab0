"""Where each planned run of a sweep stands, so running the sweep again resumes it.

A run folder whose `config.yaml` disagrees with the sweep's options is an error (never
overwritten). A run with `metrics.json` is finished and skipped; one whose last checkpoint
is not finished was killed mid-way and continues with the recipe's resume (which ends with
the metrics of an uninterrupted run); one without a usable checkpoint is started again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from fuse.jsonio import to_jsonable
from fuse.options import NESTED, RESULT_NEUTRAL
from fuse.runs.folders import CONFIG_FILE, LAST, METRICS_FILE, RunError
from fuse.sweep.grid import SweepError


def config_differences(requested: Mapping[str, Any], saved: Mapping[str, Any]) -> list[str]:
    """Options the sweep sets that a run folder's config.yaml has with another value."""
    diffs = []
    for key, value in requested.items():
        if value is None or (key in RESULT_NEUTRAL and key != "cache"):
            continue
        have = saved.get(key)
        if key in NESTED and isinstance(value, Mapping) and isinstance(have, Mapping):
            have = {k: have.get(k) for k in value}  # the trainer may add resolved keys
        if to_jsonable(have) != to_jsonable(value):
            diffs.append(f"{key}: the run has {have!r}, the sweep asks for {value!r}")
    return diffs


def run_state(run_dir: Path, requested: Mapping[str, Any]) -> str:
    """'new', 'finished', 'resume' (killed after an epoch), 'restart' (killed before one)."""
    from fuse.runs.checkpoint import load_checkpoint

    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"  # an empty folder too: Snakemake creates a job's output folder before it runs
    config = run_dir / CONFIG_FILE
    if not config.is_file():
        return "restart"
    try:
        saved = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SweepError(f"{config}: unreadable ({exc}); delete the run folder to redo the run") from None
    diffs = config_differences(requested, saved)
    if diffs:
        raise SweepError(
            f"{run_dir} holds a run with other options ({'; '.join(diffs)}); "
            f"use another --out, or delete the folder to redo it with the sweep's options"
        )
    if (run_dir / METRICS_FILE).is_file():
        return "finished"
    if (run_dir / LAST).is_file():
        try:
            checkpoint = load_checkpoint(run_dir / LAST)
        except RunError:  # a damaged or old-format checkpoint: the run cannot be continued
            return "restart"
        if checkpoint.training is None:
            return "restart"
        # Marked finished but without metrics.json (deleted by hand): nothing left to resume.
        return "restart" if checkpoint.finished else "resume"
    return "restart"
