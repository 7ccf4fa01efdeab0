"""benchmarks/common.reuse_or_clear: a benchmark's work/ is reused only while the code that made it is unchanged."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import STAMP, reuse_or_clear  # noqa: E402
from tests.git_helpers import commit, git


def _repo(tmp_path: Path) -> tuple[Path, Path, Path]:
    repo = tmp_path / "repo"
    for folder, text in (("extract", "e = 1\n"), ("fuse", "f = 1\n"), ("benchmarks/emodb", "run = 1\n")):
        (repo / folder).mkdir(parents=True)
        (repo / folder / "code.py").write_text(text)
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text("work/\n")
    benchmark = repo / "benchmarks" / "emodb"
    return repo, benchmark, benchmark / "work"


def _fill(work: Path) -> None:
    (work / "cache.zarr").mkdir(parents=True, exist_ok=True)
    (work / "folds" / "run").mkdir(parents=True, exist_ok=True)
    (work / "folds" / "run" / "metrics.json").write_text("{}")


def _reuse(repo, benchmark, work, commit, dirty=()):
    return reuse_or_clear(work, {"commit": commit, "dirty": list(dirty)}, trained=[work / "folds"], benchmark=benchmark, root=repo)


def test_work_made_at_this_commit_or_unchanged_code_is_reused(tmp_path):
    repo, benchmark, work = _repo(tmp_path)
    first = commit(repo, "code")
    assert _reuse(repo, benchmark, work, first)["why"] == "work/ was empty"
    _fill(work)
    assert _reuse(repo, benchmark, work, first)["reused_from"] == first
    (repo / "README.md").write_text("docs only\n")
    second = commit(repo, "docs")
    outcome = _reuse(repo, benchmark, work, second)
    assert outcome["cleared"] == "nothing" and outcome["reused_from"] == first
    assert (work / "folds" / "run" / "metrics.json").is_file()
    assert json.loads((work / STAMP).read_text())["commit"] == second
    # a results file the last run wrote (tracked, not yet committed) is not code: still reused
    assert _reuse(repo, benchmark, work, second, dirty=["benchmarks/emodb/results.json"])["cleared"] == "nothing"


def test_a_trainer_change_retrains_and_an_extraction_change_re_extracts(tmp_path):
    repo, benchmark, work = _repo(tmp_path)
    first = commit(repo, "code")
    _reuse(repo, benchmark, work, first)
    _fill(work)
    (repo / "fuse" / "code.py").write_text("f = 2\n")
    second = commit(repo, "trainer")
    outcome = _reuse(repo, benchmark, work, second)
    assert outcome["cleared"] == "training" and "fuse/code.py" in outcome["why"]
    assert (work / "cache.zarr").is_dir() and not (work / "folds").exists()
    _fill(work)
    (repo / "extract" / "code.py").write_text("e = 2\n")
    third = commit(repo, "extraction")
    assert _reuse(repo, benchmark, work, third)["cleared"] == "everything"
    assert not (work / "cache.zarr").exists()


def test_unknown_provenance_or_uncommitted_code_clears_everything(tmp_path):
    repo, benchmark, work = _repo(tmp_path)
    first = commit(repo, "code")
    _fill(work)  # made before stamps existed
    assert _reuse(repo, benchmark, work, first)["cleared"] == "everything"
    _fill(work)
    outcome = _reuse(repo, benchmark, work, first, dirty=["fuse/code.py"])
    assert outcome["cleared"] == "everything" and "fuse/code.py" in outcome["why"]
    _fill(work)  # made with that dirt: the next clean run cannot trust it either
    assert _reuse(repo, benchmark, work, first)["cleared"] == "everything"
