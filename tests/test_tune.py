"""`fuse tune` (fuse.tune): search-space validation, the dev-only objective, pruning, a small
study with its leaderboard, plots and best-trial re-run, resume after kill -9, shared workers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner

import fuse.training.recipe
from fuse.cli import main as fuse_cli
from fuse.jsonio import read_json
from fuse.sweep.execute import SharedData
from fuse.testing.synthetic_cache import make_synthetic_cache
from fuse.tune import TuneError, parse_space
from fuse.tune.objective import Objective

ROOT = Path(__file__).resolve().parent.parent
BASE = {"model": "late", "epochs": 3, "batch_size": 8, "model_config": {"hidden_size": 16}}
SPACE = {"base": BASE, "space": {"lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "model_config.dropout": {"low": 0.0, "high": 0.5}}}


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("tune") / "c.zarr", n_dialogues=10, turns=5)


def _space_file(folder: Path, spec: dict, name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _study(out: Path, name: str = "space"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


# ---------------------------------------------------------------------------------------------
# The search space file
# ---------------------------------------------------------------------------------------------


def test_space_kinds_log_ranges_and_choices():
    space = parse_space(
        {
            "base": {k: v for k, v in BASE.items() if k not in ("epochs", "model")},
            "space": {
                "lr": {"low": "1e-4", "high": 1.0e-2, "log": True},
                "epochs": {"low": 2, "high": 6},
                "model_config.hidden_size": {"low": 8, "high": 32, "step": 8},
                "model": {"choices": ["late", "context"]},
                "text": ["text.synthetic", "none"],
            },
        },
        source="s.yaml",
    )
    kinds = {d.name: (d.kind, d.log) for d in space.dimensions}
    assert kinds == {
        "lr": ("float", True), "epochs": ("int", False), "model_config.hidden_size": ("int", False),
        "model": ("categorical", False), "text": ("categorical", False),
    }  # fmt: skip
    options = space.options_for({"lr": 1e-3, "model_config.hidden_size": 24})
    assert options["model_config"] == {"hidden_size": 24}, "dotted keys replace base's nested value"
    assert options["batch_size"] == 8 and options["lr"] == 1e-3


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"space": {"lrr": {"low": 1e-4, "high": 1e-2}}}, "space key 'lrr' is not a training option (did you mean 'lr'?)"),
        ({"space": {"lr": {"low": 1e-2, "high": 1e-4}}}, "space key 'lr': low (0.01) must be below high (0.0001)"),
        ({"space": {"lr": {"low": 0.0, "high": 1e-2, "log": True}}}, "space key 'lr': a log range needs low > 0"),
        ({"space": {"lr": {"low": -1.0, "high": 1e-2}}}, "space key 'lr' value -1.0: option lr: Input should be greater than 0"),
        ({"space": {"lr": {"min": 1e-4, "high": 1e-2}}}, "space key 'lr': unknown setting 'min'"),
        ({"space": {"lr": 0.001}}, "space key 'lr': expected {low: .., high: ..[, log: true]} or {choices: [..]}"),
        ({"space": {"model": {"choices": ["late", "lat"]}}}, "space key 'model' value 'lat': unknown model 'lat'"),
        (
            {"space": {"model": {"choices": ["late", "context"]}, "model_config.context_hidden_size": {"choices": [8, 16]}}},
            "space key 'model_config.context_hidden_size' value 8 with model 'late': model_config key 'context_hidden_size' is not a setting of model 'late'",
        ),
        ({"space": {"out": {"choices": ["a", "b"]}}}, "space key 'out' is set by the sweep"),
        ({"space": {"seed": {"choices": [1, 2]}}}, "space key 'seed' is not a hyperparameter"),
        ({"space": {"lr": {"low": 1e-4, "high": 1e-2}}, "base": {"lr": 1e-3}}, "key 'lr' is both fixed (base:) and searched (space:)"),
        ({"space": {"lr": {"low": 1e-4, "high": 1e-2}}, "grid": {}}, "unknown top-level key 'grid'"),
        ({"base": {"epochs": 3}}, "`space:` must be a non-empty mapping"),
    ],
)
def test_space_errors_are_one_line_naming_file_and_key(spec, message):
    with pytest.raises(TuneError) as err:
        base = {k: v for k, v in BASE.items() if k != "model"}
        parse_space({"base": base, **spec} if "base" not in spec else spec, source="s.yaml")
    text = str(err.value)
    assert text.startswith("s.yaml: ") and "\n" not in text
    assert message in text, text


def test_cli_reports_a_bad_space_in_one_line(tmp_path, cache_path):
    path = _space_file(tmp_path, {"base": BASE, "space": {"batch_sise": {"choices": [4, 8]}}})
    result = CliRunner().invoke(fuse_cli, ["tune", "--cache", str(cache_path), "--space", str(path), "--out", str(tmp_path / "t")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {path}: space key 'batch_sise' is not a training option (did you mean 'batch_size'?); valid options: "
        + result.output.split("valid options: ", 1)[1].strip()
    )
    assert not (tmp_path / "t").exists(), "nothing is created for a bad space"


@pytest.mark.parametrize(
    "args, spec_extra",
    [(["--split", "test"], {}), ([], {"split": "test"}), (["--metric", "test_weighted_f1"], {}), ([], {"metric": "test_weighted_f1"})],
)
def test_a_test_split_objective_is_refused(tmp_path, cache_path, args, spec_extra):
    path = _space_file(tmp_path, {**SPACE, **spec_extra})
    result = CliRunner().invoke(fuse_cli, ["tune", "--cache", str(cache_path), "--space", str(path), "--out", str(tmp_path / "t"), *args])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("error: ")
    assert "fuse tune optimises the dev split only" in line
    assert not (tmp_path / "t").exists()


# ---------------------------------------------------------------------------------------------
# The objective: dev metric, per-epoch reports, pruning
# ---------------------------------------------------------------------------------------------


def test_objective_returns_the_dev_metric_and_reports_every_epoch(tmp_path, cache_path, monkeypatch):
    monkeypatch.setattr(fuse.training.recipe, "save_plots", lambda *a, **k: [])
    space = parse_space(SPACE, source="s.yaml")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(Objective(space, str(cache_path), tmp_path, "weighted_f1", SharedData(), echo=lambda m: None), n_trials=1)
    trial = study.trials[0]
    metrics = read_json(tmp_path / trial.user_attrs["run"] / "metrics.json")
    assert trial.value == metrics["splits"]["dev"]["weighted_f1"] != metrics["splits"]["test"]["weighted_f1"]
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    log = (tmp_path / trial.user_attrs["run"] / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 3, "one row per epoch, as reported"
    assert "test" not in json.dumps(trial.user_attrs), "the study never sees the test split"


def test_a_pruned_trial_stops_after_the_epoch_the_pruner_rejects(tmp_path, cache_path, monkeypatch):
    monkeypatch.setattr(fuse.training.recipe, "save_plots", lambda *a, **k: [])
    space = parse_space(SPACE, source="s.yaml")
    # A threshold no weighted F1 reaches: the pruner stops the trial at its first report.
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    study.optimize(Objective(space, str(cache_path), tmp_path, "weighted_f1", SharedData(), echo=lambda m: None), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["epochs"] == 1 and list(trial.intermediate_values) == [1]
    run = tmp_path / trial.user_attrs["run"]
    assert not (run / "metrics.json").exists() and "pruned after epoch 1" in (run / "train.log").read_text()


# ---------------------------------------------------------------------------------------------
# Whole studies through the CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_small_study_writes_leaderboard_plots_and_the_best_trial_over_seeds(tmp_path, cache_path):
    path = _space_file(tmp_path, {**SPACE, "space": {**SPACE["space"], "text": {"choices": ["text.synthetic", "none"]}}})
    out = tmp_path / "tune"
    args = ["tune", "--cache", str(cache_path), "--space", str(path), "--out", str(out), "--trials", "4", "--seeds", "0,1"]
    result = CliRunner().invoke(fuse_cli, args)
    assert result.exit_code == 0, result.output
    study = _study(out)
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"}
    best = study.best_trial
    rows = (out / "leaderboard.csv").read_text().splitlines()
    assert rows[0].startswith("rank,trial,state,lr,model_config.dropout,text,dev_weighted_f1")
    assert rows[1].split(",")[1] == str(best.number) and len(rows) == 5
    assert "test" not in rows[0], "the trials' leaderboard shows dev only"
    for name in ("optimization_history.png", "param_importances.png", "intermediate_values.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    seeds = read_json(out / "best" / "seeds.json")
    assert seeds["seeds"] == [0, 1] and seeds["options"]["lr"] == best.params["lr"]
    for seed in (0, 1):
        run = read_json(out / "best" / f"seed-{seed}" / "metrics.json")
        assert run["seed"] == seed and "test" in run["splits"], "the re-runs are ordinary run folders"
    default = read_json(out / "default" / "seeds.json")
    assert "lr" not in default["options"], "the default config is base: alone"
    record = read_json(out / "tune.json")
    assert record["best_trial"]["number"] == best.number and record["trial_states"] == {s.lower(): states.count(s) for s in set(states)}
    assert ("beats the default config" in record["comparison"]) != ("does not beat" in record["comparison"])
    # Again: the study is complete, nothing is trained, the same best is reported.
    again = CliRunner().invoke(fuse_cli, args)
    assert again.exit_code == 0 and "4 of 4 trials done" in again.output
    assert len(_study(out).trials) == 4


def _tune_process(cache_path, path, out, trials, *extra) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).with_name("fuse")), "tune", "--cache", str(cache_path), "--space", str(path), "--out", str(out)]
    command += ["--trials", str(trials), "--seeds", "none", "--pruner", "none", "--threads", "1", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_study_survives_kill_9_and_resumes_without_losing_a_trial(tmp_path, cache_path):
    # Long enough trials (no early stop) that the kill lands inside the second one.
    spec = {**SPACE, "base": {**BASE, "epochs": 25, "patience": 25}}
    path = _space_file(tmp_path, spec)
    out = tmp_path / "tune"
    process = _tune_process(cache_path, path, out, 3, "--heartbeat", "1")
    deadline = time.time() + 240
    killed = None
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
        if not (out / "study.db").exists():
            continue
        try:
            trials = _study(out).trials
        except KeyError:  # the study is not created yet
            continue
        running = [t for t in trials if t.state.name == "RUNNING" and t.intermediate_values]
        if any(t.state.name == "COMPLETE" for t in trials) and running:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            killed = running[0]
            break
    assert killed is not None, f"never saw a completed and a running trial: {process.communicate()[0][-2000:]}"
    assert _study(out).trials[killed.number].state.name == "RUNNING", "kill -9 leaves the trial RUNNING in the database"
    time.sleep(2.5)  # the heartbeat's grace period (2 x 1 s) passes
    resumed = _tune_process(cache_path, path, out, 3, "--heartbeat", "1")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert f"{sum(t.state.name == 'COMPLETE' for t in _study(out).trials[:killed.number])} of 3 trials done" in output
    trials = _study(out).trials
    assert trials[killed.number].state.name == "FAIL", "the stale trial is failed by the heartbeat check"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == killed.params, "the killed trial is re-run with its parameters"
    assert retries[0].user_attrs["run"] == killed.user_attrs["run"], "in its own run folder"
    log = (out / killed.user_attrs["run"] / "train.log").read_text()
    assert "continuing" in log and "from its last checkpoint" in log, "the retry resumes the killed run"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    assert len(trials) == 4, "3 counted trials plus the killed one: none lost, none extra"


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path, cache_path):
    spec = {**SPACE, "base": {**BASE, "epochs": 12, "patience": 12}}
    path = _space_file(tmp_path, spec)
    out = tmp_path / "tune"
    process = _tune_process(cache_path, path, out, 4, "--workers", "2")
    output = process.communicate(timeout=400)[0]
    assert process.returncode == 0, output
    trials = _study(out).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert 4 <= len(complete) <= 5, "each worker stops once the study has 4 (one may finish a trial in flight)"
    assert len({t.user_attrs["pid"] for t in complete}) == 2, "both worker processes ran trials of the one study"
    assert "[worker 0]" in output and "[worker 1]" in output
    assert len({t.user_attrs["run"] for t in trials}) == len(trials), "one run folder per trial"
    assert (out / "leaderboard.csv").read_text().count("\n") == len(trials) + 1


def test_ctrl_c_queues_the_interrupted_trial_again_with_its_run_folder(tmp_path):
    from fuse.tune.runner import _requeue_interrupted

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")

    def interrupted(trial):
        trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("run", "trials/trial-0000")
        trial.set_user_attr("pid", os.getpid())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        try:
            study.optimize(interrupted)
        except KeyboardInterrupt:
            _requeue_interrupted(study)
            _requeue_interrupted(study)  # twice: still one retry
            raise
    first, retry = study.trials
    assert first.state.name == "FAIL" and retry.state.name == "WAITING"
    assert retry.system_attrs["fixed_params"] == first.params, "a queued trial runs with these parameters"
    assert retry.user_attrs == {"run": "trials/trial-0000", "retry_of": 0}
