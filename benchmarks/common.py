"""What every real-data benchmark script shares: the machine record and the extraction step.

Each `benchmarks/<name>/run.py` puts the repository root on sys.path and imports this module.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.report import NOT_CODE, STAGE_1, STAGE_2, code_files  # noqa: E402  (one definition of "the code a result measures")

STAMP = "produced_at.json"  # in a benchmark's work/: the commit (and dirt) its extraction and runs were made at


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


def reuse_or_clear(work: Path, record: dict, trained: list[Path], benchmark: Path, root: Path = ROOT) -> dict:
    """Keep what work/ holds only if the code that made it is the code at HEAD.

    work/produced_at.json records the commit (and uncommitted files) the previous invocation
    ran at. When the measured code (bench.report's stage-1/stage-2 paths and the benchmark's
    own folder, docs excluded) differs between that commit and HEAD, or either tree was
    dirty, what it made is deleted: a stage-1 change deletes all of work/ (re-extract), a
    stage-2-only change deletes `trained` (retrain). Without this a re-run would report runs
    trained at an older commit under the current one. Returns {"reused_from": commit or None,
    "cleared": "nothing" | "training" | "everything", "why": ...} for results.json.
    """
    stamp_path = work / STAMP
    stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
    holds_anything = work.is_dir() and any(p.name != STAMP for p in work.iterdir())

    def clear(what: str, why: str) -> dict:
        if what == "everything":
            shutil.rmtree(work, ignore_errors=True)
        else:
            for path in trained:
                shutil.rmtree(path, ignore_errors=True)
        print(f"{work.relative_to(root) if work.is_relative_to(root) else work}: cleared {what} ({why})", flush=True)
        return {"reused_from": None, "cleared": what, "why": why}

    if not holds_anything:
        outcome = {"reused_from": None, "cleared": "nothing", "why": "work/ was empty"}
    elif stamp is None:
        outcome = clear("everything", f"no {STAMP}: the commit its contents were made at is unknown")
    elif dirt := code_files(stamp.get("dirty", [])) or code_files(record.get("dirty", [])):
        outcome = clear("everything", "made or run with uncommitted code changes: " + ", ".join(dirt[:3]))
    elif stamp.get("commit") == record.get("commit"):
        outcome = {"reused_from": stamp["commit"], "cleared": "nothing", "why": "made at this commit"}
    else:
        def changed(paths: list[str]) -> list[str]:
            done = subprocess.run(["git", "-C", str(root), "diff", "--name-only", str(stamp.get("commit")), "HEAD", "--", *paths, *NOT_CODE],
                                  capture_output=True, text=True)
            return done.stdout.split() if done.returncode == 0 else ["(commit unknown to git)"]

        own = [str(benchmark.relative_to(root))]
        stage_1, stage_2 = changed(STAGE_1 + own), changed(STAGE_2)
        old = str(stamp.get("commit"))[:10]
        if stage_1:
            outcome = clear("everything", f"made at {old}; since then {', '.join(stage_1[:3])} changed")
        elif stage_2:
            outcome = clear("training", f"trained at {old}; since then {', '.join(stage_2[:3])} changed")
        else:
            outcome = {"reused_from": stamp["commit"], "cleared": "nothing", "why": f"made at {old}; the code it measures is unchanged"}
    work.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps({"commit": record.get("commit"), "dirty": record.get("dirty", [])}) + "\n")
    return outcome
