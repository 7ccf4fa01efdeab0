"""Options defined once (fuse.options): the CLI, --config files, sweep grids and saved configs
are all derived from TrainOptions and give the same one-line error; the one checkpoint format
(fuse.runs.checkpoint) and old (format 1) run folders."""
from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
import yaml
from click.testing import CliRunner

from fuse import options as O
from fuse import runs
from fuse.cli import main
from fuse.training.optim import SCHEDULERS
from fuse.cli.train import train as train_command
from fuse.sweep import SweepError, expand
from fuse.testing.synthetic_cache import make_synthetic_cache
from fuse.training import TrainingError, TrainOptions, train

NOT_OPTIONS = {"config_file", "seeds", "resume", "storage_option"}  # flags of `fuse train` that are not run options


def test_every_option_is_a_flag_of_fuse_train_and_nothing_else_is():
    flags = {p.name for p in train_command.params if p.name not in NOT_OPTIONS and p.name != "help"}
    assert flags == set(O.field_names()), "fuse train's flags drifted from fuse.options.TrainOptions"


def test_flag_types_and_help_come_from_the_schema():
    params = {p.name: p for p in train_command.params}
    assert list(params["task"].type.choices) == ["auto", "single_label", "multi_label"]
    assert params["epochs"].type.min == 1
    assert params["lr"].type.min == 0 and params["lr"].type.min_open
    assert params["model_config"].opts == ["--set"] and params["model_config"].multiple
    assert params["amp"].secondary_opts == ["--no-amp"]
    assert params["block_rows"].hidden
    for name, info in O.fields_info().items():
        assert info.description, f"option {name} has no help text"


def test_the_sweep_accepts_every_option_but_cache_and_out():
    sweepable = set(O.field_names()) - {"cache", "out"}
    for name in sweepable:
        with pytest.raises(SweepError) as info:
            expand({"grid": {name: []}}, source="g.yaml")  # an empty list is refused for being empty, not for the key
        assert "must be a non-empty list" in str(info.value)
    for name in ("cache", "out"):
        with pytest.raises(SweepError, match="is set by the sweep"):
            expand({"grid": {name: ["x"]}}, source="g.yaml")


def test_an_unknown_option_gets_the_same_message_everywhere(tmp_path):
    expected = O.unknown_option("lrr")
    assert "did you mean 'lr'" in expected and "valid options: cache, out" in expected
    with pytest.raises(O.OptionsError) as direct:
        O.parse_options({"lrr": 1})
    with pytest.raises(SweepError) as sweep:
        expand({"grid": {"lrr": [1]}}, source="g.yaml")
    config = tmp_path / "c.yaml"
    config.write_text("cache: x.zarr\nlrr: 0.1\n")
    cli = CliRunner().invoke(main, ["train", "--config", str(config)])
    assert cli.exit_code == 2 and cli.output.count("\n") == 1
    for message in (str(direct.value), str(sweep.value), cli.output):
        assert expected in message


def test_values_are_validated_and_coerced_once():
    options = O.parse_options({"lr": "1e-3", "epochs": "3", "model": "late", "model_config": {"dropout": "5e-1"}})
    assert options.lr == 0.001 and options.epochs == 3 and options.model_config == {"dropout": 0.5}
    with pytest.raises(O.OptionsError, match="option epochs: Input should be greater than or equal to 1"):
        O.parse_options({"epochs": 0})
    with pytest.raises(O.OptionsError, match="option max_len.speech"):
        O.parse_options({"max_len": {"speech": 10}})
    with pytest.raises(O.OptionsError, match="unknown model 'lat' \\(did you mean 'late'\\?\\)"):
        O.parse_options({"model": "lat"})


def test_groups_partition_the_options_and_neutral_options_are_run_placement():
    names = [n for group in O.GROUPS for n in O.field_names(group)]
    assert sorted(names) == sorted(O.field_names()) and len(names) == len(set(names))
    assert set(O.RESULT_NEUTRAL) == set(O.field_names(O.RunPlace)) | {"in_memory", "num_workers", "pin_memory"}
    data = TrainOptions(text="text.x").group(O.DataOptions)
    assert data["text"] == "text.x" and "lr" not in data


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    cache = make_synthetic_cache(root / "c.zarr")
    options = TrainOptions(cache=str(cache), out=str(root / "run"), model="late", epochs=2, batch_size=8, lr=3e-3, progress=False, tensorboard=False)
    return train(options, echo=lambda *_: None), root


def test_the_run_folder_files_are_derived_from_the_checkpoint(trained):
    result, root = trained
    run = root / "run"
    last = runs.load_checkpoint(run / "last.pt")
    assert yaml.safe_load((run / "config.yaml").read_text()) == last.options
    assert O.parse_options(last.options) == TrainOptions(**last.options), "the saved config is a valid --config file"
    assert runs.read_config(run) == last.options
    import json

    assert json.loads((run / "metrics.json").read_text()) == last.metrics == json.loads(json.dumps(result.metrics))
    assert json.loads((run / "data.json").read_text()) == last.data
    assert last.finished and last.training["history"] == json.loads(json.dumps(result.history))
    assert not list(run.glob("normalisation.*")), "the normaliser lives in the checkpoint only"
    best = runs.load_checkpoint(run / "best.pt")
    assert best.normaliser["mode"] == last.normaliser["mode"] and best.training is None


def _as_format_1(run, dest):
    """The emofuse 0.1 layout of the same run (best.pt keys as 0.1 wrote them)."""
    shutil.copytree(run, dest)
    best = runs.load_checkpoint(dest / "best.pt")
    payload = {
        "format": 1,
        "model_name": best.model["name"],
        "model_config": best.model["config"],
        "input_dims": best.model["input_dims"],
        "n_classes": best.model["n_classes"],
        "task": best.model["task"],
        "metadata_spec": best.model["metadata_spec"],
        "model_state": best.model["state"],
        "epoch": best.epoch,
        "metric": best.best["metric"],
        "value": best.best["value"],
        "threshold": best.threshold,
        "data": best.data,
        "normaliser": best.normaliser,
    }
    torch.save(payload, dest / "best.pt")
    torch.save({"model": best.model["state"], "epoch": best.epoch - 1, "finished": False}, dest / "last.pt")
    return dest


def test_format_1_runs_still_evaluate_and_are_refused_for_resume(trained):
    _, root = trained
    old = _as_format_1(root / "run", root / "old")
    new_run, old_run = runs.load_run(root / "run"), runs.load_run(old)
    rows = new_run.data.indices("test")
    a = runs.infer(new_run.model, new_run.data, rows, 8, "cpu").probabilities
    b = runs.infer(old_run.model, old_run.data, rows, 8, "cpu").probabilities
    assert (a == b).all() and old_run.checkpoint.options == new_run.checkpoint.options
    with pytest.raises(runs.RunError, match="cannot be continued.*fuse train --config .*config.yaml"):
        train(TrainOptions(out=str(old)), resume=True, echo=lambda *_: None)


def test_damaged_and_hostile_checkpoints_are_one_line_errors(trained, tmp_path):
    _, root = trained
    damaged = tmp_path / "run"
    shutil.copytree(root / "run", damaged)
    (damaged / "best.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(runs.RunError, match="best.pt: not a readable emofuse checkpoint") as info:
        runs.load_run(damaged)
    assert "\n" not in str(info.value)

    class Payload:  # a pickle that would run code if loaded without weights_only
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"x": Payload()}, damaged / "best.pt")
    with pytest.raises(runs.RunError, match="not a readable emofuse checkpoint") as info:
        runs.load_run(damaged)
    assert "\n" not in str(info.value)
    result = CliRunner().invoke(main, ["evaluate", "--run", str(damaged)])
    assert result.exit_code == 2 and result.output.count("\n") == 1


def test_a_sweep_run_is_the_recipe_given_shared_data(trained, tmp_path):
    """`data=` hands a FeatureData in: same numbers as building it (no patching)."""
    from fuse.training import build_training_data

    result, root = trained
    options = O.resolve_options(TrainOptions(**{**runs.read_config(root / "run"), "out": str(tmp_path / "again")}))
    shared = build_training_data(options)
    again = train(options, data=shared, echo=lambda *_: None)
    assert again.metrics["splits"] == result.metrics["splits"]
    with pytest.raises(TrainingError, match="already holds a run"):
        train(options, data=shared, echo=lambda *_: None)
    assert dataclasses.is_dataclass(options)


# --------------------------------------------------------------------------- seed-fidelity options


def test_model_defaults_fill_the_optimiser_schedule_and_length_options():
    carat = O.resolve_options(O.parse_options({"model": "carat", "cache": "x.zarr"}))
    assert (carat.scheduler, carat.coef_lr, carat.coef_lr_group, carat.exclude_norm_and_bias) == ("bert_adam", 0.1, ["encoders."], True)
    assert carat.max_len == {"text": None, "audio": None, "video": None} and carat.lr_decay_per_epoch == 0.98
    late = O.resolve_options(O.parse_options({"model": "late", "cache": "x.zarr", "max_len": {"audio": 7}, "scheduler": "constant"}))
    assert late.scheduler == "constant" and late.max_len == {"audio": 7} and late.lr_decay_per_epoch == 1.0
    params = {p.name: p for p in train_command.params}
    assert list(params["scheduler"].type.choices) == list(SCHEDULERS)  # the option lists every schedule optim builds
    assert O.resolve_options(O.parse_options({"model": "late", "cache": "x.zarr"})).scheduler == "plateau", "baselines: a schedule independent of the cap"


def test_drop_last_and_unlimited_lengths_in_the_loader(tmp_path):
    from cache_schema import open_cache
    from fuse.data import FeatureData

    cache = open_cache(make_synthetic_cache(tmp_path / "c.zarr", n_dialogues=10, turns=5))
    data = FeatureData.for_training(cache, {}, metadata=[], max_len={"audio": None, "text": 4})
    rows = data.indices("train")
    sizes = [b.size for b in data.batches(rows, 8, shuffle=True, seed=1, drop_last=True)]
    assert set(sizes) == {8} and len(sizes) == data.n_batches(rows, 8, True, 1, drop_last=True) == len(rows) // 8
    assert sum(b.size for b in data.batches(rows, 8, shuffle=True, seed=1)) == len(rows)
    audio = cache["audio.synthetic"]
    batch = data.batch_for_rows(rows[:4])
    assert batch.modalities["audio"].lengths.tolist() == [int(audio.lengths[r]) for r in rows[:4]], "None keeps every frame"
    assert int(batch.modalities["text"].lengths.max()) <= 4
    assert data.summary()["truncated_utterances"]["audio"] == 0
