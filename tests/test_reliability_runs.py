"""Reliability of whole runs: interrupted extraction and training, numerically hostile data.

* `snakemake extract` killed with SIGKILL (the whole process group, as when a login session
  dies) at two points of a run on the real mini CMU-MOSEI files; after `--unlock` a plain rerun
  finishes and the cache equals an uninterrupted run's: the same utterance table, and
  bit-identical values/offsets/present/failures.
* `fuse train` killed with SIGKILL in the middle of an epoch, and while writing its checkpoint;
  `fuse train --resume` ends with exactly the metrics and log of an uninterrupted run.
* Numerical safety of training on data that invites NaN: utterances with no modality at all
  (all-masked inputs, batch size 1 so whole batches are masked), a class absent from the
  training split, and feature scales of 1e30 and 3e38: no NaN/inf gradient ever reaches the
  optimiser, no step is skipped, and everything written is finite.

Already proven by the owners' tests (referenced, not repeated):
  test_workflow.py::test_killed_run_resumes_to_an_identical_cache (a part job killed, then the
  whole snakemake killed; values/offsets/present bit-identical, text features),
  test_train.py::test_resumed_run_ends_like_an_uninterrupted_one (KeyboardInterrupt at an epoch
  end, in-process), test_train.py::test_a_poisoned_batch_is_skipped_and_never_reaches_the_optimiser,
  test_train.py::test_persistent_non_finite_loss_stops_with_a_reason,
  test_models.py::test_fully_masked_batch_gives_finite_loss and
  ::test_missing_modalities_give_finite_outputs (every model, on hand-made batches).
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from cache_schema import open_cache, validate, write_feature_set

REPO_ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    # one thread per child: identical float reductions in every process, and no oversubscription
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- snakemake extract


def _snakemake(workdir: Path, config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "extract", "-s", str(REPO_ROOT / "Snakefile"), "-d", str(workdir),
            "--cores", "2", "--configfile", str(config), *extra]


def _mosei_config(folder: Path, mosei_dir: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "corpus": {"kind": "mosei_csd", "root": str(mosei_dir)},
        "cache": str(folder / "mosei.zarr"),
        "work_dir": str(folder / "work"),
        "shard_size": 12,
        "features": [
            {"name": "audio.covarep", "encoder": {"kind": "csd", "modality": "covarep"}, "dtype": "float32", "threads": 1},
        ],
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run_to_completion(workdir: Path, config: Path) -> None:
    proc = subprocess.run(_snakemake(workdir, config), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=child_env())
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def _kill_snakemake_when(workdir: Path, config: Path, pattern: str, timeout: float = 120) -> str:
    """Start snakemake in its own session, SIGKILL the whole group once `pattern` shows in its log."""
    proc = subprocess.Popen(_snakemake(workdir, config), cwd=REPO_ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    seen: list[str] = []

    def pump() -> None:
        while chunk := os.read(proc.stderr.fileno(), 65536):
            seen.append(chunk.decode("utf-8", "replace"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.time() + timeout
    try:
        while pattern not in "".join(seen):
            if proc.poll() is not None:
                raise AssertionError(f"snakemake ended before {pattern!r} appeared:\n{''.join(seen)[-3000:]}")
            if time.time() > deadline:
                raise AssertionError(f"{pattern!r} never appeared:\n{''.join(seen)[-3000:]}")
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    return "".join(seen)


def _assert_same_cache(got: Path, expected: Path) -> None:
    a, b = validate(got, deep=True), validate(expected, deep=True)
    assert a.table.label_names == b.table.label_names and a.table.labels_multi_names == b.table.labels_multi_names
    assert sorted(a.table.columns) == sorted(b.table.columns)
    for name, column in b.table.columns.items():
        other = a.table.columns[name]
        assert other.dtype == column.dtype, name
        if column.dtype.kind == "f":
            assert np.array_equal(other, column, equal_nan=True), name
        else:
            assert np.array_equal(other, column), name
    assert a.feature_names() == b.feature_names()
    for name in b.feature_names():
        for array in ("values", "offsets", "present"):
            x, y = a[name].group[array][...], b[name].group[array][...]
            assert x.dtype == y.dtype and np.array_equal(x, y), (name, array)  # bit-identical
        assert a[name].failures() == b[name].failures(), name


@pytest.mark.slow
def test_killed_snakemake_extract_reruns_to_the_same_cache(tmp_path, mini_mosei_dir):
    reference = tmp_path / "reference"
    reference_config = _mosei_config(reference, mini_mosei_dir)
    _run_to_completion(reference, reference_config)

    killed = tmp_path / "killed"
    config = _mosei_config(killed, mini_mosei_dir)
    # 1. killed while the first part jobs run (right after the table checkpoint)
    _kill_snakemake_when(killed, config, "rule part")
    subprocess.run(_snakemake(killed, config, "--unlock"), cwd=REPO_ROOT, env=child_env(), capture_output=True, timeout=120)
    # 2. killed again as soon as a merge job starts
    _kill_snakemake_when(killed, config, "rule merge")
    subprocess.run(_snakemake(killed, config, "--unlock"), cwd=REPO_ROOT, env=child_env(), capture_output=True, timeout=120)
    # 3. a plain rerun finishes the work
    _run_to_completion(killed, config)
    _assert_same_cache(killed / "mosei.zarr", reference / "mosei.zarr")


# --------------------------------------------------------------------------- fuse train

TRAIN_SCRIPT = """
    import os, signal, sys
    import torch
    import fuse.data

    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "kill-mid-epoch":       # SIGKILL at step 4 of the second epoch
        batches = fuse.data.FeatureData.batches
        def killing_batches(self, *a, **k):
            for step, batch in enumerate(batches(self, *a, **k)):
                if k.get("shuffle") and k.get("epoch") == 1 and step == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield batch
        fuse.data.FeatureData.batches = killing_batches
    elif mode == "kill-while-saving":  # SIGKILL once last.pt.tmp of epoch 3 is written, before its rename
        save = torch.save
        def killing_save(obj, f, *a, **k):
            save(obj, f, *a, **k)
            if str(f).endswith("last.pt.tmp") and obj.get("epoch") == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        torch.save = killing_save
    from fuse.cli import main
    main(["train", *args])
"""

TRAIN_ARGS = ["--model", "cmaf", "--epochs", "4", "--batch-size", "8", "--lr", "0.003", "--device", "cpu",
              "--no-progress", "--no-tensorboard", "--set", "fusion_dim=16", "--set", "num_heads=2",
              "--set", "hidden_size=16", "--set", "metadata_embedding_dim=4", "--set", "metadata_numeric_dim=4"]


def _fuse_train(script: Path, mode: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), mode, *args], cwd=REPO_ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=300)


def _log_without_timings(run: Path) -> list[dict]:
    rows = list(csv.DictReader(open(run / "log.csv")))
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


@pytest.mark.slow
def test_killed_fuse_train_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    from fuse import runs
    from fuse.testing.synthetic_cache import make_synthetic_cache

    cache = make_synthetic_cache(tmp_path / "c.zarr")
    script = tmp_path / "train_child.py"
    script.write_text(textwrap.dedent(TRAIN_SCRIPT))
    straight, run = tmp_path / "straight", tmp_path / "run"
    proc = _fuse_train(script, "none", "--cache", str(cache), "--out", str(straight), *TRAIN_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # 1. SIGKILL in the middle of epoch 2: last.pt still holds epoch 1
    killed = _fuse_train(script, "kill-mid-epoch", "--cache", str(cache), "--out", str(run), *TRAIN_ARGS)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert runs.load_checkpoint(run / "last.pt").epoch == 1 and not (run / "metrics.json").exists()
    # 2. the resumed run is killed while writing epoch 3's checkpoint: the previous one survives
    killed = _fuse_train(script, "kill-while-saving", "--resume", "--out", str(run), "--device", "cpu", "--no-progress")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "after epoch 1 of 4" in killed.stdout
    assert (run / "last.pt.tmp").exists() and runs.load_checkpoint(run / "last.pt").epoch == 2
    # 3. a second resume finishes exactly like the uninterrupted run
    resumed = _fuse_train(script, "none", "--resume", "--out", str(run), "--device", "cpu", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 2 of 4" in resumed.stdout
    expected, got = json.loads((straight / "metrics.json").read_text()), json.loads((run / "metrics.json").read_text())
    assert got["splits"] == expected["splits"] and got["best_epoch"] == expected["best_epoch"]
    assert _log_without_timings(run) == _log_without_timings(straight)


# --------------------------------------------------------------------------- numerical safety


def _strict_json(path: Path):
    """Parse JSON refusing NaN/Infinity (invalid JSON that other tools choke on)."""
    def refuse(token):
        raise AssertionError(f"{path.name} holds {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def optimiser_watch(monkeypatch):
    """Record, for every AdamW step, whether every gradient handed to it was finite."""
    seen: list[bool] = []
    step = torch.optim.AdamW.step

    def watched(self, *args, **kwargs):
        seen.extend(bool(torch.isfinite(p.grad).all()) for g in self.param_groups for p in g["params"] if p.grad is not None)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", watched)
    return seen


def _train(cache: Path, out: Path, **options):
    from fuse.training import TrainOptions, train

    options = {"model": "late", "epochs": 2, "batch_size": 8, "lr": 3e-3, "progress": False, "tensorboard": False, **options}
    return train(TrainOptions(cache=str(cache), out=str(out), **options), echo=lambda *_: None)


def _assert_clean_run(result, run: Path, seen: list[bool]) -> None:
    assert seen and all(seen), "a non-finite gradient reached AdamW"
    assert all(row["skipped_steps"] == 0 for row in result.history)
    assert all(math.isfinite(row["train_loss"]) and math.isfinite(row["dev_loss"]) for row in result.history)
    _strict_json(run / "metrics.json")
    from fuse import runs

    state = runs.load_checkpoint(run / "last.pt")
    assert all(torch.isfinite(v).all() for v in state.model["state"].values() if v.is_floating_point())


SMALL_CMAF = {"fusion_dim": 16, "num_heads": 2, "hidden_size": 16, "metadata_embedding_dim": 4, "metadata_numeric_dim": 4}


@pytest.mark.slow
@pytest.mark.parametrize("model, config", [("late", {}), ("cmaf", SMALL_CMAF)])
def test_utterances_without_any_modality_train_without_nan(tmp_path, optimiser_watch, model, config):
    from fuse.testing.synthetic_cache import make_synthetic_cache

    # text missing for every 2nd utterance, audio for every 3rd: every 6th has no modality at all
    sets = {"text.synthetic": ("text", 8, 3, 12), "audio.synthetic": ("audio", 6, 10, 40)}
    cache = make_synthetic_cache(tmp_path / "c.zarr", feature_sets=sets, missing_every={"text.synthetic": 2, "audio.synthetic": 3})
    opened = open_cache(cache)
    nothing = ~opened["text.synthetic"].present & ~opened["audio.synthetic"].present
    assert (nothing & (opened.column("split") == "train")).sum() >= 5
    result = _train(cache, tmp_path / "run", model=model, model_config=config, batch_size=1, epochs=1)  # all-masked batches
    _assert_clean_run(result, tmp_path / "run", optimiser_watch)


def test_a_class_absent_from_training_trains_and_reports_finite_metrics(tmp_path, optimiser_watch):
    from fuse.testing.synthetic_cache import make_synthetic_cache

    cache = make_synthetic_cache(tmp_path / "c.zarr")
    labels = zarr.open_group(str(cache / "utterances"), mode="a")
    label, split = labels["label"][...], labels["split"][...]
    label[(split == "train") & (label == 2)] = 0  # "anger" only in dev/test
    labels["label"][...] = label
    result = _train(cache, tmp_path / "run")
    _assert_clean_run(result, tmp_path / "run", optimiser_watch)
    per_class = result.metrics["splits"]["test"]["per_class"]
    assert "anger" in per_class


def _scaled_cache(tmp_path: Path, scale: float) -> Path:
    from fuse.testing.synthetic_cache import make_synthetic_cache

    cache = make_synthetic_cache(tmp_path / "c.zarr", dtype="float32")
    audio = open_cache(cache)["audio.synthetic"]
    scaled = [np.clip(audio.get(i) * scale, -3.4e38, 3.4e38) if audio.present[i] else None for i in range(len(audio))]
    write_feature_set(cache, "audio.synthetic", scaled, dict(audio.attrs), dtype="float32")
    assert np.abs(open_cache(cache)["audio.synthetic"].values[...]).max() > scale / 10
    return cache


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("scale", [1e30, 3e38])
def test_extreme_feature_scales_never_put_nan_into_the_optimiser(tmp_path, optimiser_watch, scale):
    """The guard holds whatever the normaliser does: clean steps, or a stop that says why."""
    from fuse.training import TrainingDiverged

    cache = _scaled_cache(tmp_path, scale)
    try:
        _train(cache, tmp_path / "run", model="cmaf", model_config=SMALL_CMAF)
    except TrainingDiverged as stop:
        assert "NaN/inf" in str(stop) and "steps in a row" in str(stop)
    assert all(optimiser_watch), "a non-finite gradient reached AdamW"


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("scale", [1e30, 3e38])
def test_extreme_feature_scales_are_normalised_and_train_cleanly(tmp_path, optimiser_watch, scale):
    cache = _scaled_cache(tmp_path, scale)
    result = _train(cache, tmp_path / "run", model="cmaf", model_config=SMALL_CMAF)
    _assert_clean_run(result, tmp_path / "run", optimiser_watch)
    assert result.metrics["splits"]["dev"]["weighted_f1"] > 0.2
