"""What every real-data benchmark script shares: the machine record and the extraction step.

Each `benchmarks/<name>/run.py` puts the repository root on sys.path and imports this module.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_extraction(config: dict, data: Path, work: Path, cache_name: str) -> dict:
    """Run `snakemake extract --cores 2` on config['extract'] with corpus.root = `data`, the
    cache at work/<cache_name> and Snakemake's work folder in work/extract (log in
    work/extract.log). Returns the cache path, wall time, whether anything ran, and per
    feature set its encode seconds and coverage; exits with the log's tail on failure."""
    spec = dict(config["extract"])
    spec["corpus"] = {**spec["corpus"], "root": str(Path(data).resolve())}
    spec["cache"] = str(work / cache_name)
    spec["work_dir"] = str(work / "extract")
    work.mkdir(parents=True, exist_ok=True)
    (work / "extract.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    command = [str(Path(sys.executable).parent / "snakemake"), "extract", "--cores", "2", "-s", str(ROOT / "Snakefile"),
               "-d", str(work), "--configfile", str(work / "extract.yaml")]
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    with open(work / "extract.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    log_text = (work / "extract.log").read_text()
    if done.returncode != 0:
        raise SystemExit(f"extraction failed; see {work / 'extract.log'}:\n" + log_text[-3000:])
    report = json.loads((work / "extract" / "validated.json").read_text())
    feature_sets = {f["feature"]: {"encode_seconds": round(float(f["encode_seconds"]), 2), "coverage": f["coverage"]}
                    for f in report["features"]}
    return {
        "cache": spec["cache"],
        "wall_seconds": round(seconds, 1),
        "ran": "Nothing to be done" not in log_text,
        "encode_seconds": {name: f["encode_seconds"] for name, f in feature_sets.items()},
        "feature_sets": feature_sets,
        "n_utterances": report["n_utterances"],
    }


def run_record(argv: list[str] | None = None) -> dict:
    """The commit a benchmark ran at and the command that ran it, for its results.json.

    `dirty` lists files changed since the commit (git status --porcelain, this folder's own
    work/ excluded by .gitignore): a figure from a dirty tree is not the commit's figure.
    """
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else None
    command = shlex.join(["python", str(script.relative_to(ROOT)) if script and script.is_relative_to(ROOT) else (argv[0] if argv else "?"), *argv[1:]])  # quoted: pastes back into a shell

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    # not git(): its strip() would eat the status column of the first line (" M path")
    status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout
    dirty = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": dirty, "command": command}
