"""Data-parallel training (torch.distributed DDP on gloo): sharded batches, same metrics as one process."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fuse.testing.synthetic_cache import make_synthetic_cache
from fuse.training.inputs import build_training_data
from fuse.options import parse_options, resolve_options


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("ddp") / "c.zarr", n_dialogues=20)


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_parts_partition_each_global_batch(cache_path, world_size):
    data = build_training_data(resolve_options(parse_options({"cache": str(cache_path), "model": "late"})))
    rows = data.indices("train")
    batch_size = len(rows) - 1  # the second batch holds one utterance: some ranks get none
    kwargs = dict(shuffle=True, seed=3, epoch=1)
    whole = [b.index.numpy() for b in data.batches(rows, batch_size, **kwargs)]
    parts = [[b.index.numpy() for b in data.batches(rows, batch_size, shard=(r, world_size), **kwargs)] for r in range(world_size)]
    assert all(len(p) == len(whole) for p in parts)  # every rank takes every step
    for step, batch in enumerate(whole):
        pieces = [parts[r][step] for r in range(world_size)]
        assert sorted(np.concatenate(pieces).tolist()) == sorted(batch.tolist())
        assert sum(len(p) for p in pieces) == len(batch)  # disjoint
    assert min(len(parts[r][-1]) for r in range(world_size)) == 0  # the 1-utterance batch


def _run_fuse(args, world_size, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if world_size == 1:
        command = [sys.executable, "-m", "fuse", *args]
    else:  # --standalone: a free local rendezvous port, so parallel test runs do not collide
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}", "-m", "fuse", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _log(run_dir):
    with open(run_dir / "log.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(cache_path, tmp_path):
    """Same seed and global batch size: the same losses and metrics as a single process.

    The batch size leaves a one-utterance batch per epoch, so one rank runs its stand-in with
    weight 0; dropout is off so both runs draw no random masks.
    """
    n_train = len(build_training_data(resolve_options(parse_options({"cache": str(cache_path), "model": "late"}))).indices("train"))
    common = [
        "train", "--cache", str(cache_path), "--model", "late", "--epochs", "3", "--batch-size", str(n_train // 2),
        "--no-drop-last", "--lr", "3e-3", "--set", "dropout=0", "--no-progress",
    ]  # fmt: skip
    single, parallel = tmp_path / "single", tmp_path / "ddp"
    _run_fuse([*common, "--out", str(single)], 1, tmp_path)
    printed = _run_fuse([*common, "--out", str(parallel)], 2, tmp_path)

    assert printed.count("epoch 1/3") == 1  # only rank 0 prints
    for a, b in zip(_log(single), _log(parallel), strict=True):
        for key in ("train_loss", "dev_loss", "dev_weighted_f1", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6), key
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (single, parallel))
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    for split in ("dev", "test"):
        for key, value in m1["splits"][split].items():
            if isinstance(value, float):
                assert m2["splits"][split][key] == pytest.approx(value, abs=1e-6), (split, key)
    assert m1["best_epoch"] == m2["best_epoch"]
    # Rank 0's checkpoint is an ordinary run: evaluated by one process like any other.
    evaluated = _run_fuse(["evaluate", "--run", str(parallel), "--split", "test"], 1, tmp_path)
    assert "weighted_f1" in evaluated
