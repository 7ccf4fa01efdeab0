"""bench/report.py marks a result stale when the code it measures changed after its commit."""
from __future__ import annotations

import json

import pytest

from tests.bench_helpers import load_bench_script
from tests.git_helpers import commit, git


@pytest.fixture(scope="module")
def report():
    return load_bench_script("report")


def test_result_goes_stale_when_its_code_changes(report, tmp_path):
    repo = tmp_path
    git(repo, "init", "-q")
    (repo / "cache_schema").mkdir()
    (repo / "cache_schema" / "reader.py").write_text("x = 1\n")
    (repo / "bench" / "results").mkdir(parents=True)
    (repo / "bench" / "cache_io.py").write_text("print('bench')\n")
    measured = commit(repo, "code")
    result_path = repo / "bench" / "results" / "cache_io.json"
    result = {"commit": measured, "command": "python bench/cache_io.py --utterances 20000"}
    result_path.write_text(json.dumps(result))
    commit(repo, "result")

    fresh, line = report.freshness(result_path, result, root=repo)
    assert fresh and line.startswith("current") and "uncommitted" not in line
    dirty = {**result, "commit": f"{measured} (with uncommitted changes)"}
    fresh, line = report.freshness(result_path, dirty, root=repo)
    assert fresh and "uncommitted changes" in line  # judged by its commit, the dirt said aloud

    (repo / "cache_schema" / "LAYOUT.md").write_text("docs only\n")
    commit(repo, "docs")
    assert report.freshness(result_path, result, root=repo)[0]  # docs do not make it stale

    (repo / "fuse").mkdir()
    (repo / "fuse" / "loader.py").write_text("y = 2\n")  # code it does not measure
    commit(repo, "other code")
    assert report.freshness(result_path, result, root=repo)[0]

    (repo / "bench" / "cache_io.py").write_text("print('changed bench')\n")  # its own script
    changed = commit(repo, "script")
    fresh, line = report.freshness(result_path, result, root=repo)
    assert not fresh and changed[:10] in line and "bench/cache_io.py" in line

    assert report.freshness(result_path, {**result, "commit": changed}, root=repo)[0]
    assert not report.freshness(result_path, {"command": result["command"]}, root=repo)[0]  # no commit recorded
    assert "does not have" in report.freshness(result_path, {**result, "commit": "0" * 40}, root=repo)[1]


def test_commit_in_the_machine_record_counts(report):
    assert report.recorded_commit({"machine": {"commit": "abc"}}) == "abc"
    assert report.recorded_commit({"commit": "def", "machine": {}}) == "def"
    assert report.recorded_commit({"machine": {}}) is None
    assert report.recorded_commit({"commit": "abc (with uncommitted changes)"}) == "abc"
    assert report.recorded_commit({"commit": "abc+uncommitted"}) == "abc"


def test_commit_label_ignores_written_results_but_not_code(tmp_path):
    from bench.provenance import UNCOMMITTED, commit_label

    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "fuse").mkdir()
    (tmp_path / "bench" / "results" / "a.json").write_text("{}\n")
    (tmp_path / "fuse" / "m.py").write_text("x = 1\n")
    git(tmp_path, "init", "-q")
    head = commit(tmp_path, "start")
    (tmp_path / "bench" / "results" / "a.json").write_text('{"new": 1}\n')  # an earlier benchmark's output
    (tmp_path / "NOTES.md").write_text("untracked\n")
    assert commit_label(tmp_path) == head
    (tmp_path / "fuse" / "m.py").write_text("x = 2\n")
    assert commit_label(tmp_path) == head + UNCOMMITTED
    assert commit_label(tmp_path / "fuse").startswith(head)  # any folder of the checkout
    outside = tmp_path.parent / f"{tmp_path.name}-not-a-checkout"
    outside.mkdir()
    assert commit_label(outside) == "unknown"


def test_recorded_commit_reads_every_label_style(report):
    assert report.recorded_commit({"commit": "abc-dirty"}) == "abc"
    assert report._dirty_note({"commit": "abc-dirty"}) and report._dirty_note({"commit": "abc (with uncommitted changes)"})
    assert not report._dirty_note({"commit": "abc"})


def test_an_equivalence_record_is_about_its_two_commits_and_never_stale(report, tmp_path):
    record = {"before": {"commit": "aaaaaaa"}, "after": {"commit": "bbbbbbb"}, "identical": True, "commit": "bbbbbbb"}
    current, why = report.freshness(tmp_path / "x.json", record, root=tmp_path)
    assert current and "aaaaaaa -> bbbbbbb, identical numbers" in why
    assert "numbers differ" in report.freshness(tmp_path / "x.json", {**record, "identical": False}, root=tmp_path)[1]
    assert not report.freshness(tmp_path / "x.json", {"commit": "aaaaaaa"}, root=tmp_path)[0]  # an ordinary result with an unknown commit
