"""`fuse sweep --executor snakemake` (fuse/sweep/snakemake.py, fuse/sweep/sweep.smk).

The same grid through the local executor and through Snakemake (real `snakemake` processes,
`--cores 2`) gives the same run folders' metrics and the same leaderboards; a second invocation
finds nothing to do; a failed run is listed, and retried by the next invocation; the SLURM
profile's dry run plans one job per run with the profile's resources.
"""
from __future__ import annotations

import json
import importlib.util

import pytest
import yaml
from click.testing import CliRunner

from fuse.cli import main as fuse_cli
from fuse.sweep import expand, load_grid, run_sweep
from fuse.sweep.leaderboard import RUN_RECORD
from fuse.testing.synthetic_cache import make_synthetic_cache

BASE = {"epochs": 2, "batch_size": 8, "model_config": {"hidden_size": 16}}
LEADERBOARDS = ("leaderboard.csv", "leaderboard.md", "leaderboard_seeds.csv", "leaderboard_seeds.md")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("smk") / "c.zarr", n_dialogues=10, turns=5)


def _grid_file(tmp_path, spec) -> str:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _normalised(text: str, folder: str) -> str:
    return text.replace(f"({folder})", "(SWEEP)")  # the title names the sweep folder


def test_snakemake_sweep_matches_the_local_sweep_and_resumes(tmp_path, cache_path):
    spec = {"base": BASE, "grid": {"model": ["late"], "lr": [3e-3, 1e-2], "model_config.dropout": [0.1, 0.3], "seed": [1, 2]}}
    grid = _grid_file(tmp_path, spec)
    plan = load_grid(grid)
    assert len(plan.runs) == 8
    local = run_sweep(plan, cache_path, tmp_path / "local", threads=1, echo=lambda *_: None)
    assert local.failed == []

    command = ["sweep", "--cache", str(cache_path), "--grid", grid, "--out", str(tmp_path / "smk"), "--executor", "snakemake", "--cores", "2", "--threads", "1"]
    result = CliRunner().invoke(fuse_cli, command)
    assert result.exit_code == 0, result.output
    for name in LEADERBOARDS:
        assert _normalised((tmp_path / "smk" / name).read_text(), "smk") == _normalised((tmp_path / "local" / name).read_text(), "local"), name
    for run in plan.runs:
        ours = json.loads((tmp_path / "smk" / run.name / "metrics.json").read_text())
        theirs = json.loads((tmp_path / "local" / run.name / "metrics.json").read_text())
        assert ours["splits"] == theirs["splits"], run.name
        assert (tmp_path / "smk" / "logs" / f"{run.name}.log").is_file()
        assert (tmp_path / "smk" / "benchmarks" / f"{run.name}.tsv").is_file(), "each job has a Snakemake benchmark"
    record = json.loads((tmp_path / "smk" / "sweep.json").read_text())
    assert record["executor"] == "snakemake" and all(r["status"] == "finished" for r in record["runs"].values())

    # Finished runs are outputs: a second invocation trains nothing.
    stamps = {r.name: (tmp_path / "smk" / r.name / "metrics.json").stat().st_mtime_ns for r in plan.runs}
    again = CliRunner().invoke(fuse_cli, command)
    assert again.exit_code == 0, again.output
    assert stamps == {r.name: (tmp_path / "smk" / r.name / "metrics.json").stat().st_mtime_ns for r in plan.runs}


def test_a_failed_run_is_listed_and_retried(tmp_path, cache_path):
    # micro_f1 is not a single-label metric: the run fails when it starts training.
    spec = {"base": BASE, "runs": [{"model": "late"}, {"model": "late", "metric": "micro_f1"}]}
    plan = expand(spec)
    bad = plan.runs[1].name
    command = ["sweep", "--cache", str(cache_path), "--grid", _grid_file(tmp_path, spec), "--out", str(tmp_path / "s"), "--executor", "snakemake", "--cores", "2"]
    result = CliRunner().invoke(fuse_cli, command)
    assert result.exit_code == 1 and f"1 run(s) failed: {bad}" in result.output, result.output
    assert f"`{bad}`: failed" in (tmp_path / "s" / "leaderboard.md").read_text()
    assert json.loads((tmp_path / "s" / bad / RUN_RECORD).read_text())["status"] == "failed"
    again = CliRunner().invoke(fuse_cli, command)
    assert again.exit_code == 1 and f"1 failed run(s) will be retried: {bad}" in again.output, again.output


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None, reason="needs the SLURM executor plugin (pip install -e '.[slurm]')")
def test_slurm_profile_dry_run_plans_one_job_per_run(tmp_path, cache_path, capfd):
    import subprocess
    import sys
    from pathlib import Path

    spec = {"base": BASE, "grid": {"model": ["late"], "lr": [3e-3, 1e-2]}}
    repo = Path(__file__).resolve().parents[1]
    grid = _grid_file(tmp_path, spec)
    # A subprocess, so Snakemake's own output (the planned jobs) can be read.
    done = subprocess.run(
        [sys.executable, "-m", "fuse", "sweep", "--cache", str(cache_path), "--grid", grid, "--out", str(tmp_path / "s"),
         "--executor", "snakemake", "--profile", str(repo / "profiles" / "slurm"), "--dry-run"],
        capture_output=True, text=True, cwd=repo,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "This was a dry-run" in output
    jobs = [line.split() for line in output.splitlines() if line.startswith("sweep_run ")]
    assert jobs and jobs[0][1] == "2", output
    assert "mem_mb=16000" in output, "the profile's set-resources for sweep_run apply"
    assert not any((tmp_path / "s" / r.name / "metrics.json").exists() for r in expand(spec).runs), "nothing ran"
