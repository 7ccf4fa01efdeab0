"""Runs you can trust (stage 2): locked run folders, nothing overwritten without being asked,
sweep workers that die with their sweep, bounded file names, per-cache evaluation files and
one-line errors. Each test injects the fault and asserts the outcome (docs/reliability.md)."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from fuse import runs
from fuse.cli import main
from fuse.explain import safe_name
from fuse.runs.lock import RunLock, RunLocked
from fuse.testing.synthetic_cache import make_synthetic_cache
from fuse.training import TrainingError, TrainOptions, train

REPO_ROOT = Path(__file__).resolve().parent.parent
QUIET = {"progress": False, "tensorboard": False}


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("safety") / "c.zarr", n_dialogues=8, turns=5)


def _options(cache, out, **kw):
    return TrainOptions(**{"cache": str(cache), "out": str(out), "model": "late", "epochs": 1, "batch_size": 8, "lr": 3e-3, **QUIET, **kw})


def _train(cache, out, **kw):
    return train(_options(cache, out, **kw), echo=lambda *_: None)


@pytest.fixture(scope="module")
def finished_run(cache_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    _train(cache_path, out)
    return out


def test_a_second_writer_is_refused_naming_the_holder(cache_path, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from fuse.runs.lock import RunLock
            RunLock({str(run)!r}).acquire()
            print("locked", flush=True)
            time.sleep(60)
        """)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"being written by process {holder.pid}"):
            _train(cache_path, run)
    finally:
        holder.kill()
        holder.wait()
    _train(cache_path, run)  # the kernel released the dead holder's lock
    assert (run / "metrics.json").is_file()


def test_the_lock_is_reentrant_within_a_process_and_released(tmp_path):
    with RunLock(tmp_path / "r"):
        with RunLock(tmp_path / "r"):
            pass
    with RunLock(tmp_path / "r"):  # released: can be taken again
        pass


def test_out_into_a_folder_of_other_work_is_refused_unless_overwrite(cache_path, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: notes\n")
    (mine / "metrics.json").write_text('{"mine": 1}')
    with pytest.raises(TrainingError, match="is not empty .*--overwrite"):
        _train(cache_path, mine)
    assert (mine / "config.yaml").read_text() == "my: notes\n" and (mine / "metrics.json").read_text() == '{"mine": 1}'
    result = CliRunner().invoke(main, ["train", "--cache", str(cache_path), "--out", str(mine), "--model", "late", "--epochs", "1", "--no-progress"])
    assert result.exit_code == 2 and "is not empty" in result.output and result.output.count("\n") == 1
    _train(cache_path, mine, overwrite=True)
    assert "mine" not in json.loads((mine / "metrics.json").read_text())


def test_a_finished_run_is_not_replaced_without_overwrite(cache_path, finished_run):
    before = (finished_run / "metrics.json").read_text()
    with pytest.raises(TrainingError, match="already holds a run.*--overwrite"):
        _train(cache_path, finished_run)
    assert (finished_run / "metrics.json").read_text() == before


def test_predict_never_replaces_a_run_file_and_names_a_missing_folder(finished_run, tmp_path):
    size = (finished_run / "best.pt").stat().st_size
    result = CliRunner().invoke(main, ["predict", "--run", str(finished_run), "--out", str(finished_run / "best.pt")])
    assert result.exit_code == 2 and "refusing to replace a file of the run folder" in result.output
    assert (finished_run / "best.pt").stat().st_size == size and runs.load_checkpoint(finished_run / "best.pt")
    result = CliRunner().invoke(main, ["predict", "--run", str(finished_run), "--out", str(tmp_path / "no" / "such" / "p.csv")])
    assert result.exit_code == 2 and "does not exist" in result.output and result.output.count("\n") == 1


def test_evaluating_two_caches_with_the_same_folder_name_keeps_both(cache_path, finished_run, tmp_path):
    import shutil

    copies = []
    for parent in ("x", "y"):
        (tmp_path / parent).mkdir()
        copies.append(shutil.copytree(cache_path, tmp_path / parent / "feats.zarr"))
    for copy in copies:
        result = CliRunner().invoke(main, ["evaluate", "--run", str(finished_run), "--cache", str(copy), "--split", "test"])
        assert result.exit_code == 0, result.output
    files = sorted(finished_run.glob("metrics_feats.zarr-*.json"))
    assert len(files) == 2
    assert {json.loads(f.read_text())["cache"] for f in files} == {str(c.resolve()) for c in copies}


def test_file_names_from_long_utterance_ids_are_bounded_and_distinct():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(safe_name(a)) <= 80 and len(safe_name(b)) <= 80 and safe_name(a) != safe_name(b)
    assert safe_name("dia1_utt2") == "dia1_utt2" and safe_name("a/b c") == "a_b_c"


def test_a_train_split_with_one_class_is_an_error(tmp_path):
    path = make_synthetic_cache(tmp_path / "one.zarr", classes=("joy",), n_dialogues=6, turns=4)
    with pytest.raises(TrainingError, match="every labelled training utterance is 'joy'"):
        _train(path, tmp_path / "run")


def test_disk_full_while_checkpointing_names_the_file(cache_path, tmp_path, monkeypatch):
    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(runs.RunError, match=r"best.pt: cannot write the checkpoint \(\[Errno 28\] No space left on device\)"):
        _train(cache_path, tmp_path / "run")
    assert not list((tmp_path / "run").glob("*.tmp")), "no half-written checkpoint is left"


def test_a_damaged_config_yaml_is_one_line(finished_run, tmp_path):
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run")
    (run / "config.yaml").write_text("cache: [unclosed\n")
    with pytest.raises(runs.RunError, match="config.yaml: unreadable") as info:
        runs.read_config(run)
    assert "\n" not in str(info.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1\n")
    result = CliRunner().invoke(main, ["train", "--config", str(bad)])
    assert result.exit_code == 2 and "bad.yaml: unreadable" in result.output and result.output.count("\n") == 1


@pytest.mark.slow
def test_a_killed_sweep_takes_its_workers_with_it(cache_path, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": {"model": "late", "epochs": 200, "batch_size": 4}, "grid": {"seed": [1, 2]}}))
    sweep = subprocess.Popen(
        [str(Path(sys.executable).parent / "fuse"), "sweep", "--cache", str(cache_path), "--grid", str(grid), "--out", str(tmp_path / "s"), "--jobs", "2"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def workers() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == sweep.pid:
                found.append(int(stat.parent.name))
        return found

    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "s").glob("*/last.pt")):
        time.sleep(0.5)  # a worker has finished an epoch: workers are running
    children = workers()
    assert children, "the sweep started worker processes"
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] for pid in children):
        time.sleep(0.5)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, f"workers {alive} outlived their sweep"


def _stamp(cache_dir: Path, name: str, params: dict) -> None:
    """Give a feature set the fingerprint attributes extraction writes (cache schema 1.1)."""
    import zarr

    from cache_schema import compute_fingerprint

    group = zarr.open_group(str(cache_dir / "features" / name), mode="a")
    group.attrs.update({"fingerprint": compute_fingerprint(params), "fingerprint_params": params})


def test_changed_features_are_refused_naming_the_parameter_unless_allowed(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c.zarr", n_dialogues=8, turns=5)
    params = {"kind": "hf-text", "encoder": {"layers": [-1], "max_length": 512}, "utterances": {"count": 40, "sha256": "a" * 64}}
    _stamp(cache, "text.synthetic", params)
    run = tmp_path / "run"
    _train(cache, run, epochs=2)
    _stamp(cache, "text.synthetic", {**params, "encoder": {"layers": [-2], "max_length": 512}})  # re-extracted with another layer

    result = CliRunner().invoke(main, ["evaluate", "--run", str(run), "--split", "test"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "feature set 'text.synthetic' differs" in result.output and "encoder.layers: [-1] -> [-2]" in result.output
    assert "--allow-changed-features" in result.output
    before = (run / "metrics.json").read_text()
    result = CliRunner().invoke(main, ["evaluate", "--run", str(run), "--split", "test", "--allow-changed-features"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metrics.json").read_text())["splits"]["test"]["accepted_feature_changes"] == ["text.synthetic: encoder.layers: [-1] -> [-2]"]
    assert before != (run / "metrics.json").read_text()
    for command in (["predict", "--run", str(run), "--out", str(tmp_path / "p.csv")], ["explain", "--run", str(run), "--utterance", "x"]):
        refused = CliRunner().invoke(main, command)
        assert refused.exit_code == 2 and "encoder.layers: [-1] -> [-2]" in refused.output, command


def test_resume_refuses_changed_features_and_records_an_allowed_change(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c.zarr", n_dialogues=8, turns=5)
    params = {"kind": "opensmile", "encoder": {"feature_set": "eGeMAPSv02"}, "utterances": {"count": 40, "sha256": "b" * 64}}
    _stamp(cache, "audio.synthetic", params)
    run = tmp_path / "run"

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_options(cache, run, epochs=3), on_epoch_end=stop, echo=lambda *_: None)
    _stamp(cache, "audio.synthetic", {**params, "utterances": {"count": 40, "sha256": "c" * 64}})  # a clip changed in place
    with pytest.raises(runs.ProvenanceMismatch, match="utterances.sha256"):
        train(TrainOptions(out=str(run), **QUIET), resume=True, echo=lambda *_: None)
    result = train(TrainOptions(out=str(run), allow_changed_features=True, **QUIET), resume=True, echo=lambda *_: None)
    assert len(result.history) == 3
    record = json.loads((run / "data.json").read_text())
    assert record["accepted_feature_changes"] == [f"audio.synthetic: utterances.sha256: {'b' * 64} -> {'c' * 64}"]


def test_another_cache_extracted_the_same_way_is_accepted(tmp_path):
    """Other utterances are expected on another cache; the extraction settings must match."""
    import shutil

    cache = make_synthetic_cache(tmp_path / "c.zarr", n_dialogues=8, turns=5)
    params = {"kind": "hf-text", "encoder": {"layers": [-1]}, "utterances": {"count": 40, "sha256": "d" * 64}}
    _stamp(cache, "text.synthetic", params)
    run = tmp_path / "run"
    _train(cache, run)
    other = shutil.copytree(cache, tmp_path / "other.zarr")
    _stamp(other, "text.synthetic", {**params, "utterances": {"count": 40, "sha256": "e" * 64}})
    assert runs.load_run(run, other).data.accepted_feature_changes == []
