"""Training data-path benchmark: streaming from the Zarr cache vs in memory, and peak memory.

    python bench/train.py [--out bench/results/train.json]

(a) Epoch time. One process, one model (`--model`, default cmaf with its seed-1
    configuration), two views of the same synthetic cache built with the same seed: one
    streaming every epoch from Zarr, one `in_memory` (prepared features kept after a warm-up
    pass). In round r both train epoch r, so both see exactly the same batches, with the
    training step of the recipe (forward, backward, clip, AdamW) on the same model. Wall time
    and process CPU time are summed per epoch. The two modes run in lockstep: step k of the
    streaming epoch and step k of the in-memory epoch (each including fetching its batch) run
    back to back, in alternating order, so load from other processes on a shared machine
    lands on both alike. Reported: the median over epochs of streaming / in-memory
    (target <= 1.15), and every epoch's times.
(b) Peak memory. One epoch of real streaming training (`fuse.training.train`, `--memory-model`,
    default late: the data path is what could grow with the cache, not the model) from a
    cache, and from a cache 4x larger (4x the utterances, same dimensions), each in a fresh
    process; peak resident memory is the process's VmHWM from /proc/self/status. (ru_maxrss is
    reported too, but Linux carries it over from the parent across exec, so here it shows the
    parent's peak, not the child's.) Target: the larger cache within 10% of the smaller one.
    Streaming keeps at most two pools of blocks in memory, so memory should not grow with the
    cache; (b) uses 4 MB blocks so that even the small cache's splits span several pools
    (with a split smaller than a pool the small run would never reach the plateau). The pair
    is run again with glibc's mmap threshold fixed, which removes heap-fragmentation growth.

Caches are synthetic (fuse.testing.synthetic_cache: Gaussian features with class and speaker shifts)
written through cache_schema into a temporary folder that is removed afterwards. Their page
cache is warm: the figures measure decoding and batching, not the disk.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def feature_sets(dim: int) -> dict:
    # BERT-like tokens, wav2vec2-like frames at 50 Hz (2-4 s), 8 video frames (seed 1).
    return {
        "text.bench": ("text", dim, 10, 30),
        "audio.bench": ("audio", dim, 100, 200),
        "video.bench": ("video", dim, 8, 8),
    }


def build(path: Path, dialogues: int, dim: int) -> dict:
    from cache_schema import open_cache
    from fuse.testing.synthetic_cache import make_synthetic_cache

    t0 = time.perf_counter()
    make_synthetic_cache(path, n_dialogues=dialogues, turns=10, feature_sets=feature_sets(dim), missing_every={}, seed=1)
    cache = open_cache(path)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {
        "utterances": cache.n_utterances,
        "feature_rows": {n: int(fs.values.shape[0]) for n, fs in cache.feature_sets().items()},
        "size_mb": round(size / 2**20, 1),
        "build_s": round(time.perf_counter() - t0, 1),
    }


def peak_memory_mb() -> dict:
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return {"vmhwm_mb": round(hwm / 1024, 1), "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def child(args) -> None:
    """Runs in a fresh process: one streaming training run, prints a JSON line."""
    from fuse.training import TrainOptions, train

    options = TrainOptions(
        cache=args.cache,
        model=args.memory_model,
        out=args.run_dir,
        epochs=1,
        batch_size=args.batch_size,
        lr=1e-4,
        progress=False,
        tensorboard=False,
        metadata=[],
        block_mb=args.block_mb,
    )
    result = train(options, echo=lambda *a: None)
    print(json.dumps({"train_seconds": [r["train_seconds"] for r in result.history], **peak_memory_mb()}))


def spawn(cache: Path, run_dir: Path, args, extra_env: dict | None = None) -> dict:
    command = [
        sys.executable, __file__, "--child", "--cache", str(cache), "--run-dir", str(run_dir),
        "--memory-model", args.memory_model, "--batch-size", str(args.batch_size), "--block-mb", str(args.memory_block_mb),
    ]  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"memory run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def epoch_times(cache_path: Path, args) -> dict:
    """(a): alternate streaming and in-memory epochs of the same model on the same batches."""
    import copy

    import torch

    from cache_schema import open_cache
    from fuse.data import FeatureData
    from fuse.models import MODELS, build_model
    from fuse.device import seed_everything

    seed_everything(0, deterministic=True)
    cache = open_cache(cache_path)
    views = {
        mode: FeatureData.for_training(cache, {}, metadata=[], block_mb=args.block_mb, in_memory=(mode == "in_memory"))
        for mode in ("streaming", "in_memory")
    }
    data = views["streaming"]
    rows = data.indices("train")
    model = build_model(args.model, data.input_dims, data.n_classes, data.spec.task, None)
    defaults = MODELS[args.model][0].default_training
    initial_model = copy.deepcopy(model.state_dict())
    for _ in views["in_memory"].batches(rows, args.batch_size, shuffle=True, seed=0, epoch=0):
        pass  # warm-up: fills the in-memory store

    def step(batch) -> None:
        output = model(batch)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), defaults.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Lockstep: step k of both modes runs back to back (order alternating), so load from
    # other processes lands on both alike; each step's time includes fetching its batch.
    model.load_state_dict(initial_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=defaults.weight_decay)
    model.train()
    times = {"streaming": [], "in_memory": []}
    for r in range(args.rounds):
        iterators = {mode: iter(view.batches(rows, args.batch_size, shuffle=True, seed=0, epoch=r)) for mode, view in views.items()}
        spent = {mode: [0.0, 0.0] for mode in views}
        for k in range(data.n_batches(rows, args.batch_size, True, 0, r)):
            for mode in ("streaming", "in_memory") if k % 2 == 0 else ("in_memory", "streaming"):
                wall, cpu = time.perf_counter(), time.process_time()
                step(next(iterators[mode]))
                spent[mode][0] += time.perf_counter() - wall
                spent[mode][1] += time.process_time() - cpu
        for mode in views:
            times[mode].append(tuple(spent[mode]))
    ratios = [s[0] / m[0] for s, m in zip(times["streaming"], times["in_memory"])]
    return {
        "prefetch_thread": data.prefetch,
        "train_utterances": int(len(rows)),
        "batches_per_epoch": data.n_batches(rows, args.batch_size, True, 0, 0),
        "rounds": args.rounds,
        "streaming_epoch_s": round(statistics.median(t[0] for t in times["streaming"]), 3),
        "in_memory_epoch_s": round(statistics.median(t[0] for t in times["in_memory"]), 3),
        "streaming_epoch_cpu_s": round(statistics.median(t[1] for t in times["streaming"]), 3),
        "in_memory_epoch_cpu_s": round(statistics.median(t[1] for t in times["in_memory"]), 3),
        "per_round_ratio": [round(x, 3) for x in ratios],
        "streaming_over_in_memory": round(statistics.median(ratios), 3),
        "all_streaming_wall_s": [round(t[0], 3) for t in times["streaming"]],
        "all_in_memory_wall_s": [round(t[0], 3) for t in times["in_memory"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.json"))
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--time-dialogues", type=int, default=30, help="dialogues (x10 utterances) of the epoch-time cache")
    ap.add_argument("--memory-dialogues", type=int, default=60, help="dialogues of the small memory cache (large: 4x)")
    ap.add_argument("--model", default="cmaf", help="model of the epoch-time runs")
    ap.add_argument("--memory-model", default="late", help="model of the peak-memory runs (the data path is what grows)")
    ap.add_argument("--rounds", type=int, default=10, help="epoch pairs (streaming + in-memory) timed")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--block-mb", type=float, default=16.0, help="streaming block size of (a) (the library default)")
    ap.add_argument(
        "--memory-block-mb", type=float, default=4.0,
        help="streaming block size of (b): small enough that even the small cache spans several pools",
    )  # fmt: skip
    ap.add_argument("--workdir", default=None)
    # child mode (internal): one peak-memory run
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    import torch

    work = Path(args.workdir or tempfile.mkdtemp(prefix="emofuse-bench-train-"))
    started = time.perf_counter()
    try:
        # (a) epoch time, streaming vs in memory
        time_cache = work / "time.zarr"
        time_setup = build(time_cache, args.time_dialogues, args.dim)
        timing = epoch_times(time_cache, args)

        # (b) peak memory, cache vs 4x cache, streaming
        small, large = work / "small.zarr", work / "large.zarr"
        small_setup = build(small, args.memory_dialogues, args.dim)
        large_setup = build(large, 4 * args.memory_dialogues, args.dim)
        small_mem = spawn(small, work / "run-small", args)
        large_mem = spawn(large, work / "run-large", args)
        # The same with glibc's mmap threshold fixed (no dynamic raise): large temporary arrays
        # are then returned to the OS when freed, which separates heap fragmentation from data
        # the loader holds.
        fixed = {"MALLOC_MMAP_THRESHOLD_": "131072"}
        small_fixed = spawn(small, work / "run-small", args, fixed)
        large_fixed = spawn(large, work / "run-large", args, fixed)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    ratio = timing["streaming_over_in_memory"]
    memory_ratio = large_mem["vmhwm_mb"] / small_mem["vmhwm_mb"]
    report = {
        "command": "python bench/train.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": "cpu"},
        "setup": {
            "model": args.model,
            "memory_model": args.memory_model,
            "batch_size": args.batch_size,
            "block_mb": args.block_mb,
            "memory_block_mb": args.memory_block_mb,
            "pool_blocks": 4,
            "dim": args.dim,
            "dtype": "float16",
            "lengths": {"text": [10, 30], "audio": [100, 200], "video": [8, 8]},
        },
        "epoch_time": {
            "cache": time_setup,
            **timing,
            "target": "<= 1.15",
            "meets_target": ratio <= 1.15,
        },
        "peak_memory": {
            "small_cache": {**small_setup, **small_mem},
            "large_cache": {**large_setup, **large_mem},
            "large_over_small": round(memory_ratio, 3),
            "with_fixed_mmap_threshold": {
                "env": "MALLOC_MMAP_THRESHOLD_=131072",
                "small_vmhwm_mb": small_fixed["vmhwm_mb"],
                "large_vmhwm_mb": large_fixed["vmhwm_mb"],
                "large_over_small": round(large_fixed["vmhwm_mb"] / small_fixed["vmhwm_mb"], 3),
            },
            "target": "within 10% (<= 1.10)",
            "meets_target": memory_ratio <= 1.10,
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
