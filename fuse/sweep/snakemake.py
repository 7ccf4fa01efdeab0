"""Running a sweep as a Snakemake workflow (`fuse sweep --executor snakemake`), e.g. on SLURM.

    fuse sweep --grid grid.yaml --cache data/feats.zarr --out runs/sweep --executor snakemake --cores 2
    fuse sweep ... --executor snakemake --profile profiles/slurm            # one SLURM job per run
    fuse sweep ... --executor snakemake --profile profiles/slurm --dry-run  # what would be submitted

The driver does what the local executor does before training (the same `prepare_sweep`: grid
checked against the cache, plan.json), writes `snakemake_config.yaml` beside it and runs
Snakemake on `sweep.smk` with the sweep folder as its working directory. Each job calls back
into this module (`python -m fuse.sweep.snakemake run ...`), which trains the run with the
same `run_task` as a local worker, so run folders, `sweep_run.json` and the leaderboard are the
local sweep's. What is lost is the in-process data sharing: every job opens the cache and
builds its own FeatureData.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from fuse.jsonio import read_json, write_json
from fuse.sweep.execute import SWEEP_RECORD, SharedData, plan_from_record, prepare_sweep, run_options, run_task
from fuse.sweep.grid import SweepError, SweepPlan
from fuse.sweep.leaderboard import RUN_RECORD, leaderboard, write_leaderboards

WORKFLOW = Path(__file__).with_name("sweep.smk")
CONFIG_FILE = "snakemake_config.yaml"
# Per-run resources unless a profile's `set-resources: sweep_run:` says otherwise (MB, minutes).
DEFAULT_RESOURCES = {"mem_mb": 8000, "runtime": 240}


@dataclass
class SnakemakeSweep:
    returncode: int  # Snakemake's exit status
    failed: list[str]  # runs whose record says failed
    out: Path


def run_with_snakemake(
    plan: SweepPlan,
    cache: str | Path,
    out: str | Path,
    *,
    cores: int | None = None,
    profile: str | None = None,
    threads: int | None = None,
    metric: str | None = None,
    dry_run: bool = False,
    extra_args: tuple[str, ...] = (),
    echo: Callable[[str], None] = print,
) -> SnakemakeSweep:
    """Check and plan the sweep, then let Snakemake run every run not finished yet."""
    out = Path(out)
    prepared = prepare_sweep(plan, cache, out)
    retried = _forget_failures(out, plan)
    if retried:
        echo(f"{len(retried)} failed run(s) will be retried: {', '.join(retried)}")
    config = {
        "python": sys.executable,
        "run_record": RUN_RECORD,
        "runs": [r.name for r in plan.runs],
        "threads": threads or 1,
        "resources": DEFAULT_RESOURCES,
        "metric": metric or plan.metric,
    }
    _write_if_changed(out / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    command = [
        _snakemake_executable(),
        "--snakefile", str(WORKFLOW),
        "--directory", str(out.resolve()),
        "--configfile", str((out / CONFIG_FILE).resolve()),
        "--keep-going",
    ]
    if profile:
        command += ["--profile", str(Path(profile).resolve()) if Path(profile).is_dir() else profile]
    if cores or not profile:  # a local run needs --cores; a cluster profile sets `jobs:`
        command += ["--cores", str(cores or 1)]
    if dry_run:
        command += ["--dry-run"]
    command += list(extra_args)
    counts = {s: sum(v == s for v in prepared.states.values()) for s in ("new", "finished", "resume", "restart")}
    echo(
        f"sweep of {len(plan.runs)} run(s) on {prepared.cache} -> {out} with Snakemake"
        + (f" (profile {profile})" if profile else "")
        + f": {len(plan.runs) - counts['finished']} to run"
        + (f", {counts['finished']} finished before" if counts["finished"] else "")
    )
    echo("$ " + " ".join(command))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_source_root()), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    returncode = subprocess.run(command, env=env).returncode
    failed = [] if dry_run else _failed_runs(out, plan)
    if not dry_run:
        _write_record(out, plan, prepared.cache, profile, time.perf_counter() - started, returncode)
    return SnakemakeSweep(returncode, failed, out)


def _snakemake_executable() -> str:
    """The snakemake beside this interpreter (a venv not on PATH), else the one on PATH."""
    beside = Path(sys.executable).with_name("snakemake")
    found = str(beside) if beside.is_file() else shutil.which("snakemake")
    if not found:
        raise SweepError("--executor snakemake needs Snakemake (pip install 'snakemake>=9')")
    return found


def _source_root() -> Path:
    """The folder holding the `fuse` package, so jobs import this code (a checkout not installed too)."""
    return Path(__file__).resolve().parents[2]


def _write_if_changed(path: Path, text: str) -> None:
    # Rewriting an unchanged file would still be harmless (it is no rule's input), but keeping
    # its mtime shows when the sweep's settings last changed.
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def _forget_failures(out: Path, plan: SweepPlan) -> list[str]:
    """Delete the records of failed runs: Snakemake then runs them again (the local sweep retries them too)."""
    retried = []
    for run in plan.runs:
        record = out / run.name / RUN_RECORD
        if record.is_file() and read_json(record).get("status") == "failed":
            record.unlink()
            retried.append(run.name)
    return retried


def _failed_runs(out: Path, plan: SweepPlan) -> list[str]:
    failed = []
    for run in plan.runs:
        record = out / run.name / RUN_RECORD
        if not record.is_file() or read_json(record).get("status") != "finished":
            failed.append(run.name)
    return failed


def _write_record(out: Path, plan: SweepPlan, cache: str, profile: str | None, seconds: float, returncode: int) -> None:
    runs = {}
    for run in plan.runs:
        record = out / run.name / RUN_RECORD
        if record.is_file():
            r = read_json(record)
            runs[run.name] = {k: r.get(k) for k in ("status", "error", "seconds", "pid")}
        else:
            runs[run.name] = {"status": "not run"}
    write_json(out / SWEEP_RECORD, {
        "source": plan.source,
        "cache": cache,
        "executor": "snakemake",
        "profile": profile,
        "snakemake_returncode": returncode,
        "wall_seconds": round(seconds, 3),
        "runs": runs,
    })


# ---------------------------------------------------------------------------------------------
# Job entry points (called by sweep.smk's shell commands)
# ---------------------------------------------------------------------------------------------


def run_one(out: Path, name: str, threads: int) -> int:
    """A `sweep_run` job: train (or resume) one run; 0 unless the job itself could not work."""
    import torch

    from fuse.sweep.state import run_state

    torch.set_num_threads(threads)
    plan = plan_from_record(out)  # plan.json, read once
    run = plan.by_name().get(name)
    if run is None:
        print(f"error: {out}/plan.json has no run {name!r}", file=sys.stderr)
        return 2
    options = run_options(run, plan.cache, out)
    task = {"name": name, "identity": run.identity, "options": options, "state": run_state(out / name, options)}
    if task["state"] == "finished":  # finished by a local sweep that did not get to write its record
        write_json(out / name / RUN_RECORD, {"name": name, "identity": run.identity, "options": options, "state_at_start": "finished", "status": "finished", "error": None, "seconds": 0.0, "feature_data": None, "pid": os.getpid()})
        return 0
    outcome = run_task(task, SharedData(), print)
    print(json.dumps({k: outcome.get(k) for k in ("name", "status", "error", "seconds")}))
    return 0  # a failed run is a result (in its sweep_run.json and the leaderboard), not a job error


def write_leaderboard(out: Path, metric: str | None) -> int:
    plan = plan_from_record(out)
    board, chosen = leaderboard(plan, out, metric)
    for path in write_leaderboards(plan, out, board, chosen, plan.cache):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fuse.sweep.snakemake", description="Jobs of the Snakemake sweep workflow (fuse/sweep/sweep.smk).")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train one run of the sweep")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--name", required=True)
    run.add_argument("--threads", type=int, default=1)
    board = commands.add_parser("leaderboard", help="write the leaderboards")
    board.add_argument("--out", type=Path, required=True)
    board.add_argument("--metric")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # `--out .` from the workflow: names (leaderboard titles) need the folder's own
    try:
        if args.command == "run":
            return run_one(args.out, args.name, args.threads)
        return write_leaderboard(args.out, args.metric)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
