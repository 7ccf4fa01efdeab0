"""The commit a benchmark measured, as its result file records it: one definition for bench/.

A figure measured with uncommitted *code* is not the commit's figure, so the label says so.
Result files and docs are not code (bench.report.code_files): writing one benchmark's
JSON must not mark the next benchmark of the same session "uncommitted".
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from bench.report import code_files

ROOT = Path(__file__).resolve().parent.parent
UNCOMMITTED = " (with uncommitted changes)"  # bench.report.recorded_commit strips it


def code_changes(root: Path = ROOT) -> list[str]:
    """Tracked files changed since HEAD that are code (untracked files are not looked at)."""
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True)
    changed = [line[3:] for line in done.stdout.splitlines() if line.strip()]
    return code_files(changed)


def commit_label(root: Path = ROOT) -> str:
    """HEAD's hash, plus UNCOMMITTED when code differs from it; "unknown" outside a git checkout."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        return "unknown"
    return done.stdout.strip() + (UNCOMMITTED if code_changes(root) else "")
