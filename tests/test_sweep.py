"""`fuse sweep` (fuse.sweep): grid expansion, shared data, leaderboards, resume, parallel runs."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import fuse.training.recipe
from cache_schema import open_cache
from fuse.cli import main as fuse_cli
from fuse.testing.synthetic_cache import make_synthetic_cache
from fuse.data import DataError
from fuse.data.split_view import split_view
from fuse.sweep import SweepError, expand, load_grid, run_state, run_sweep
from fuse.sweep.leaderboard import RUN_RECORD
from fuse.options import parse_options
from fuse.training import train

# Tiny, fast runs: 2 epochs of a small late-fusion head.
BASE = {"epochs": 2, "batch_size": 8, "model_config": {"hidden_size": 16}}


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("sweep") / "c.zarr", n_dialogues=10, turns=5)


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """Plots cost ~1 s per run and are the recipe's business (tested there), not the sweep's."""
    monkeypatch.setattr(fuse.training.recipe, "save_plots", lambda *args, **kwargs: [])


def _quiet(*_):
    pass


def _grid(**grid):
    return expand({"base": BASE, "grid": grid}, source="test-grid")


# ---------------------------------------------------------------------------------------------
# Grid files
# ---------------------------------------------------------------------------------------------


def test_grid_is_the_cartesian_product_with_base_and_dotted_keys():
    plan = expand(
        {
            "base": {"epochs": 3, "model_config": {"hidden_size": 16, "dropout": 0.5}},
            "grid": {"model": ["late", "context"], "lr": ["1e-3", 3.0e-4], "model_config.dropout": [0.1], "seed": [1, 2]},
        },
        source="g.yaml",
    )
    assert len(plan.runs) == 2 * 2 * 1 * 2
    first = plan.runs[0]
    assert first.options["lr"] == 0.001, "YAML 1.1 reads 1e-3 as a string; float options accept it"
    assert first.options["model_config"] == {"hidden_size": 16, "dropout": 0.1}, "dotted keys override base's nested values"
    assert first.options["epochs"] == 3
    assert first.label == {"model": "late", "lr": 0.001, "model_config.dropout": 0.1, "seed": 1}
    assert first.name.startswith("late_lr-0.001_dropout-0.1_seed-1_")
    reordered = expand({"base": {"epochs": 3, "model_config": {"hidden_size": 16, "dropout": 0.5}}, "grid": {"seed": [1, 2], "lr": ["1e-3", 3.0e-4], "model_config.dropout": [0.1], "model": ["late", "context"]}})
    assert sorted(r.name for r in reordered.runs) == sorted(r.name for r in plan.runs), "names ignore the grid's key order"
    combos = {(r.options["model"], r.options["lr"], r.options["seed"]) for r in plan.runs}
    assert len(combos) == 8
    assert len({r.name for r in plan.runs}) == 8


def test_run_names_are_stable_and_depend_on_every_relevant_option():
    plan = _grid(model=["late"], lr=[1e-3, 3e-4])
    again = _grid(model=["late"], lr=[1e-3, 3e-4])
    assert [r.name for r in plan.runs] == [r.name for r in again.runs]
    wider = _grid(model=["late"], lr=[1e-3, 3e-4, 1e-4])
    assert [r.name for r in wider.runs][:2] == [r.name for r in plan.runs], "adding values keeps existing names"
    other_base = expand({"base": {**BASE, "epochs": 5}, "grid": {"model": ["late"], "lr": [1e-3, 3e-4]}})
    assert not {r.name for r in other_base.runs} & {r.name for r in plan.runs}, "another base is another run"
    device_only = expand({"base": {**BASE, "device": "cpu", "progress": True}, "grid": {"model": ["late"], "lr": [1e-3, 3e-4]}})
    assert [r.name for r in device_only.runs] == [r.name for r in plan.runs], "device/progress do not change results"


def test_explicit_runs_list(tmp_path):
    path = tmp_path / "runs.yaml"
    path.write_text(
        yaml.safe_dump(
            {"base": BASE, "metric": "macro_f1", "runs": [{"model": "late", "lr": 0.01}, {"model": "context", "context_turns": 3, "model_config": {"hidden_size": 8}}]}
        )
    )
    plan = load_grid(path)
    assert plan.metric == "macro_f1"
    assert [r.options["model"] for r in plan.runs] == ["late", "context"]
    assert plan.runs[1].options["model_config"] == {"hidden_size": 8}
    assert plan.runs[1].label == {"model": "context", "context_turns": 3, "model_config.hidden_size": 8}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {"lrr": [0.1]}}, "grid key 'lrr' is not a training option (did you mean 'lr'?)"),
        ({"base": {"epoch": 3}, "grid": {"lr": [0.1]}}, "base key 'epoch' is not a training option (did you mean 'epochs'?)"),
        ({"grids": {"lr": [0.1]}}, "unknown top-level key 'grids' (did you mean 'grid'?)"),
        ({"grid": {"lr": 0.1}}, "grid key 'lr' must be a non-empty list of values"),
        ({"grid": {"lr": []}}, "grid key 'lr' must be a non-empty list of values"),
        ({"grid": {"cache": ["x.zarr"]}}, "grid key 'cache' is set by the sweep"),
        ({"grid": {"epochs": ["ten"]}}, "option epochs: Input should be a valid integer"),
        ({"grid": {"model": ["lat"]}}, "unknown model 'lat' (did you mean 'late'?)"),
        ({"grid": {"model": ["late"], "model_config.num_heads": [2]}}, "model_config key 'num_heads' is not a setting of model 'late'"),
        ({"grid": {"max_len.speech": [10]}}, "max_len is per modality"),
        ({"grid": {"lr": [0.1]}, "runs": [{"lr": 0.1}]}, "give exactly one of `grid:`"),
        ({"runs": [{"lr": 0.1}, {"lr": 0.1}]}, "is the same run as run 1"),
    ],
)
def test_bad_grids_are_refused_with_a_clear_message(spec, message):
    with pytest.raises(SweepError) as info:
        expand(spec, source="bad.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("bad.yaml: ")


def test_cli_reports_a_bad_grid_key_and_exits_2(tmp_path, cache_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  learning_rate: [0.1]\n")
    result = CliRunner().invoke(fuse_cli, ["sweep", "--cache", str(cache_path), "--grid", str(grid), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "grid key 'learning_rate' is not a training option" in result.output
    assert not (tmp_path / "out").exists(), "nothing runs before the grid is valid"


def test_a_feature_set_missing_from_the_cache_is_refused_before_training(tmp_path, cache_path):
    plan = _grid(model=["late"], text=["text.synthetic", "text.bert"])
    with pytest.raises(SweepError, match="no feature set 'text.bert'"):
        run_sweep(plan, cache_path, tmp_path / "out", echo=_quiet)
    assert not any((tmp_path / "out").glob("*/config.yaml"))


# ---------------------------------------------------------------------------------------------
# Running, sharing, leaderboard
# ---------------------------------------------------------------------------------------------


def test_sweep_shares_data_ranks_runs_and_matches_standalone_training(tmp_path, cache_path, monkeypatch):
    built = []
    original = fuse.training.recipe.FeatureData.for_training.__func__

    def counting(cls, *args, **kwargs):
        built.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(fuse.training.recipe.FeatureData, "for_training", classmethod(counting))
    plan = _grid(model=["late"], lr=[3e-3, 1e-2], seed=[1, 2])
    result = run_sweep(plan, cache_path, tmp_path / "sweep", echo=_quiet)

    assert result.failed == []
    assert len(built) == 1, "four runs with the same data configuration build FeatureData once"
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert record["data_sharing"]["process"] == {"caches_opened": 1, "feature_data_built": 1, "feature_data_reused": 3}

    # The leaderboard is sorted by the dev metric, best first, and lists test beside it.
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "leaderboard.csv")))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    dev = [float(r["dev_weighted_f1"]) for r in rows]
    assert dev == sorted(dev, reverse=True)
    assert all(r["test_weighted_f1"] for r in rows)
    markdown = (tmp_path / "sweep" / "leaderboard.md").read_text()
    assert markdown.index(rows[0]["run"]) < markdown.index(rows[-1]["run"])
    assert "dev weighted_f1" in markdown and "test weighted_f1" in markdown
    seeds = list(csv.DictReader(open(tmp_path / "sweep" / "leaderboard_seeds.csv")))
    assert len(seeds) == 2 and {r["seeds"] for r in seeds} == {"1 2"}

    # A run of the sweep ends exactly like the same options trained on their own.
    run = plan.runs[0]
    alone = train(parse_options({**run.options, "cache": str(cache_path), "out": str(tmp_path / "alone"), "progress": False}), echo=_quiet)
    swept = json.loads((tmp_path / "sweep" / run.name / "metrics.json").read_text())
    assert swept["splits"]["dev"]["weighted_f1"] == alone.metrics["splits"]["dev"]["weighted_f1"]
    assert swept["splits"]["test"]["confusion_matrix"] == alone.metrics["splits"]["test"]["confusion_matrix"]


def test_leaderboard_metric_can_be_chosen_and_is_checked(tmp_path, cache_path):
    plan = _grid(model=["late"], lr=[3e-3, 1e-2])
    result = run_sweep(plan, cache_path, tmp_path / "s", metric="macro_f1", echo=_quiet)
    values = [r["metrics"]["splits"]["dev"]["macro_f1"] for r in result.leaderboard]
    assert values == sorted(values, reverse=True) and result.metric == "macro_f1"
    with pytest.raises(SweepError, match="not a single_label metric"):
        run_sweep(plan, cache_path, tmp_path / "s", metric="micro_f1", echo=_quiet)


def test_a_failing_run_is_reported_and_the_others_still_run(tmp_path, cache_path):
    plan = expand({"base": BASE, "runs": [{"model": "late"}, {"model": "late", "metric": "micro_f1"}]})
    result = run_sweep(plan, cache_path, tmp_path / "s", echo=_quiet)
    bad = plan.runs[1].name
    assert result.failed == [bad]
    assert "not a single_label metric" in result.outcomes[bad]["error"]
    assert (tmp_path / "s" / plan.runs[0].name / "metrics.json").is_file()
    assert f"`{bad}`: failed" in (tmp_path / "s" / "leaderboard.md").read_text()
    cli = CliRunner().invoke(fuse_cli, ["sweep", "--cache", str(cache_path), "--grid", str(_write(tmp_path, plan_spec={"base": BASE, "runs": [{"model": "late"}, {"model": "late", "metric": "micro_f1"}]})), "--out", str(tmp_path / "s")])
    assert cli.exit_code == 1 and "1 run(s) failed" in cli.output


def _write(tmp_path, plan_spec) -> str:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(plan_spec))
    return str(path)


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------


def test_resume_skips_finished_runs_and_redoes_a_run_without_metrics(tmp_path, cache_path):
    plan = _grid(model=["late"], lr=[3e-3, 1e-2], seed=[1])
    out = tmp_path / "s"
    run_sweep(plan, cache_path, out, echo=_quiet)
    kept, redone = plan.runs
    kept_mtime = (out / kept.name / "metrics.json").stat().st_mtime_ns
    before = json.loads((out / redone.name / "metrics.json").read_text())
    (out / redone.name / "metrics.json").unlink()

    lines = []
    result = run_sweep(plan, cache_path, out, echo=lines.append)
    assert "1 to run, 1 finished before (skipped)" in lines[0]
    assert result.outcomes[kept.name]["status"] == "skipped (finished before)"
    assert result.outcomes[redone.name]["status"] == "finished"
    assert (out / kept.name / "metrics.json").stat().st_mtime_ns == kept_mtime, "a finished run is not touched"
    after = json.loads((out / redone.name / "metrics.json").read_text())
    assert after["splits"]["dev"]["weighted_f1"] == before["splits"]["dev"]["weighted_f1"]
    assert len(list(csv.DictReader(open(out / "leaderboard.csv")))) == 2


def test_a_run_killed_mid_way_continues_from_its_checkpoint(tmp_path, cache_path):
    plan = _grid(model=["late"], lr=[3e-3], epochs=[4])
    run = plan.runs[0]
    straight = run_sweep(plan, cache_path, tmp_path / "straight", echo=_quiet)

    out = tmp_path / "killed"
    options = {**run.options, "cache": str(cache_path.resolve()), "out": str((out / run.name).resolve()), "progress": False}

    class Killed(Exception):
        pass

    def kill_after_two(epoch, row):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(parse_options(options), on_epoch_end=kill_after_two, echo=_quiet)
    assert run_state(out / run.name, options) == "resume"
    result = run_sweep(plan, cache_path, out, echo=_quiet)
    assert result.outcomes[run.name]["state_at_start"] == "resume"
    log = (out / run.name / "train.log").read_text()
    assert "resuming" in log and "after epoch 2 of 4" in log
    ours = json.loads((out / run.name / "metrics.json").read_text())
    reference = straight.leaderboard[0]["metrics"]
    assert ours["splits"]["dev"]["weighted_f1"] == reference["splits"]["dev"]["weighted_f1"]
    assert ours["splits"]["test"]["confusion_matrix"] == reference["splits"]["test"]["confusion_matrix"]


def test_a_run_folder_with_other_options_is_refused(tmp_path, cache_path):
    plan = _grid(model=["late"], lr=[3e-3])
    out = tmp_path / "s"
    run_sweep(plan, cache_path, out, echo=_quiet)
    config = out / plan.runs[0].name / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    saved["lr"] = 0.5
    config.write_text(yaml.safe_dump(saved))
    with pytest.raises(SweepError, match=r"holds a run with other options \(lr: the run has 0.5"):
        run_sweep(plan, cache_path, out, echo=_quiet)


# ---------------------------------------------------------------------------------------------
# Parallel
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_jobs_write_the_same_leaderboard_as_one(tmp_path, cache_path):
    # Worker processes plot (the no_plots patch does not reach them); two short runs each.
    plan = _grid(model=["late"], lr=[3e-3, 1e-2], seed=[1, 2])
    one = run_sweep(plan, cache_path, tmp_path / "one" / "sweep", jobs=1, threads=1, echo=_quiet)
    two = run_sweep(plan, cache_path, tmp_path / "two" / "sweep", jobs=2, echo=_quiet)
    assert one.failed == [] and two.failed == []
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard_seeds.csv", "leaderboard_seeds.md"):
        assert (tmp_path / "one" / "sweep" / name).read_text() == (tmp_path / "two" / "sweep" / name).read_text(), name
    record = json.loads((tmp_path / "two" / "sweep" / "sweep.json").read_text())
    assert record["data_sharing"]["worker_processes"] == 2
    assert record["data_sharing"]["feature_data_built"] == 2, "each worker builds its FeatureData once"
    pids = {json.loads((tmp_path / "two" / "sweep" / r.name / RUN_RECORD).read_text())["pid"] for r in plan.runs}
    assert len(pids) == 2


# ---------------------------------------------------------------------------------------------
# Split views
# ---------------------------------------------------------------------------------------------


def test_split_view_shares_features_under_new_splits(tmp_path, cache_path):
    source = open_cache(cache_path)
    n = source.n_utterances
    splits = np.array(["train"] * n, dtype=object)
    splits[: n // 5] = "test"
    splits[n // 5 : 2 * n // 5] = "dev"
    view = open_cache(split_view(cache_path, tmp_path / "view.zarr", splits.tolist()))
    assert view.column("split").tolist() == splits.tolist()
    assert view.feature_names() == source.feature_names()
    np.testing.assert_array_equal(view["audio.synthetic"].get(3), source["audio.synthetic"].get(3))
    assert (tmp_path / "view.zarr" / "features" / "audio.synthetic").is_symlink(), "nothing is copied"
    assert source.column("split").tolist() != splits.tolist(), "the source is untouched"
    split_view(cache_path, tmp_path / "view.zarr", ["train"] * n)  # a view may be replaced
    assert set(open_cache(tmp_path / "view.zarr").column("split")) == {"train"}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("x")
    with pytest.raises(DataError, match="not a split view"):
        split_view(cache_path, tmp_path / "other", ["train"] * n)
    with pytest.raises(DataError, match="split values for"):
        split_view(cache_path, tmp_path / "v2.zarr", ["train"])


def test_dry_run_lists_names_and_states(tmp_path, cache_path):
    spec = {"base": BASE, "grid": {"model": ["late"], "lr": [3e-3, 1e-2]}}
    grid = _write(tmp_path, spec)
    plan = expand(spec)
    run_sweep(expand({"base": BASE, "grid": {"model": ["late"], "lr": [3e-3]}}), cache_path, tmp_path / "s", echo=_quiet)
    result = CliRunner().invoke(fuse_cli, ["sweep", "--cache", str(cache_path), "--grid", grid, "--out", str(tmp_path / "s"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"{plan.runs[0].name}\tfinished" in result.output
    assert f"{plan.runs[1].name}\tnew" in result.output
    assert not (tmp_path / "s" / plan.runs[1].name).exists()


def test_long_names_drop_whole_options():
    label = {"model": "context", **{f"model_config.option_{i}": 0.5 for i in range(20)}}
    from fuse.sweep import run_name

    name = run_name(label, "abc123")
    assert len(name) <= 120 + len("_abc123")
    assert re.fullmatch(r"context(_option_\d+-0\.5)+_abc123", name), name
    assert "option_19" not in name


def test_names_always_keep_the_seed_and_the_options_that_differ():
    from fuse.sweep import run_name
    from fuse.sweep.grid import differing_options

    # Twenty long fixed options fill the name; the seed and the option that varies come last in
    # name order but are still written, or runs differing by them would differ by hash only.
    label = {"model": "context", **{f"model_config.option_{i:02d}": 0.5 for i in range(20)}, "weight_decay": 0.01, "seed": 3}
    name = run_name(label, "abc123", keep={"weight_decay"})
    assert name.endswith("_weight_decay-0.01_seed-3_abc123"), name
    assert "option_19" not in name and len(name) <= 120 + len("_abc123")

    plan = expand({"base": BASE, "grid": {"model": ["late"], "lr": [1e-3], "weight_decay": [0.0, 0.01], "seed": [1, 2]}})
    assert differing_options([r.label for r in plan.runs]) == {"weight_decay", "seed"}
    assert len({r.name for r in plan.runs}) == 4
