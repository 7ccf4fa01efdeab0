"""Training data-path benchmark: an epoch streamed from the Zarr cache vs from prebuilt tensors, and peak memory.

    nice python bench/train.py [--out bench/results/train.json]

(a) Epoch time, for `late` and `cmaf` (`--models`), on one synthetic cache of >= 20k
    utterances (`--time-dialogues` x 10): the same model, from the same initial weights, trains
    one epoch (the recipe's step: forward, backward, clip, AdamW) twice per round on the same
    batches: once streaming them from the cache (`FeatureData.batches`, the library's default
    loader settings, read-ahead thread included when the policy turns it on), once from a
    list of those batches prebuilt as tensors in RAM before the clock starts (the fastest a
    data path can be). The order of the two alternates by round. Round 0 is *cold*: the page
    cache of every file of the cache is dropped (fdatasync + posix_fadvise(DONTNEED)) just
    before the streaming epoch; later rounds are *warm*. Reported per model: the ratio of
    totals (sum of streaming epoch seconds / sum of prebuilt epoch seconds) over the cold
    round and over the warm rounds, and every epoch's wall and CPU time. Target <= 1.2
    (moonshot 1.05).
(b) Peak memory: one epoch of real streaming training (`fuse.training.train`, `late`) from a
    cache and from a cache with 4x the utterances (same dimensions), each in a fresh process;
    reported is the peak resident memory (VmHWM) *above the process's resident memory after
    its imports* (torch and emofuse alone are ~450 MB, which would hide the data path).
    Target: the larger cache's figure within 10% of the smaller one's, judged on the ratio of
    sums over `--memory-repeats` runs per cache (peaks vary by a few percent run to run; each
    repeat's ratio is recorded too; the arms below use the first repeat). The same two runs are
    repeated with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_, an A/B arm recorded
    beside the default one: peak, ratio and epoch seconds), to tell allocator behaviour from
    data the loader keeps. Two more arms tell where growth comes from: the small cache trained
    for 4 epochs (as many training batches as the large cache's one epoch: if its peak matches
    the large cache's, memory follows the batches processed, not the cache's size), and both
    caches with tracemalloc on (the peak of the Python and numpy heap above the baseline: the
    arrays the loader and the run hold; torch's tensors and the allocator's retention are not
    traced; tracemalloc slows the run, so those epoch seconds are not comparable). Small streaming blocks
    (`--memory-block-mb`) and a small cache of 20k utterances (`--memory-dialogues` x 10; the
    large one 80k) so that every split spans many pools, as on a real corpus. Setup is in the
    figure: fitting the normaliser reads (and CRC-checks) every training chunk once.

Caches are synthetic (fuse.testing.synthetic_cache: Gaussian features with class and speaker
shifts), written through cache_schema into a temporary folder that is removed afterwards.
The JSON records the commit, machine, sizes and the command.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET, MOONSHOT, MEMORY_TARGET = 1.2, 1.05, 1.10
FIXED_MMAP_THRESHOLD = 4 * 2**20  # bytes; the memory runs' streaming block is 4 MB


def feature_sets(args) -> dict:
    # BERT-like tokens, eGeMAPS/COVAREP-like frames at 50 Hz (1-3 s), 8 video frames.
    return {
        "text.bench": ("text", args.text_dim, 8, 24),
        "audio.bench": ("audio", args.audio_dim, 50, 150),
        "video.bench": ("video", args.video_dim, 8, 8),
    }


def build(path: Path, dialogues: int, args) -> dict:
    from cache_schema import open_cache
    from fuse.testing.synthetic_cache import make_synthetic_cache

    t0 = time.perf_counter()
    make_synthetic_cache(path, n_dialogues=dialogues, turns=10, feature_sets=feature_sets(args), missing_every={}, seed=1)
    cache = open_cache(path)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {
        "utterances": cache.n_utterances,
        "feature_sets": {n: {"rows": int(fs.values.shape[0]), "dim": fs.dim, "dtype": fs.dtype} for n, fs in cache.feature_sets().items()},
        "size_mb": round(size / 2**20, 1),
        "build_s": round(time.perf_counter() - t0, 1),
    }


def memory_status() -> dict:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: round(int(fields[key].split()[0]) / 1024, 1) for key in ("VmRSS", "VmHWM")}


def child(args) -> None:
    """Runs in a fresh process: `--epochs` streaming training epochs, prints a JSON line."""
    import tracemalloc

    from fuse.training import TrainOptions, train
    import fuse.models  # noqa: F401  (every import the run needs, before the baseline)

    baseline = memory_status()["VmRSS"]
    if args.trace_heap:
        tracemalloc.start()
    options = TrainOptions(
        cache=args.cache, model="late", out=args.run_dir, epochs=args.epochs, patience=args.epochs, batch_size=args.batch_size,
        lr=1e-4, progress=False, tensorboard=False, metadata=[], block_mb=args.memory_block_mb,
    )  # fmt: skip
    result = train(options, echo=lambda *a: None)
    peak = memory_status()["VmHWM"]
    record = {"epochs": len(result.history), "train_seconds": [r["train_seconds"] for r in result.history], "baseline_rss_mb": baseline, "peak_rss_mb": peak, "peak_above_baseline_mb": round(peak - baseline, 1)}
    if args.trace_heap:
        record["python_heap_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    print(json.dumps(record))


def spawn(cache: Path, run_dir: Path, args, extra_env: dict | None = None, epochs: int = 1, trace_heap: bool = False) -> dict:
    from bench.probe import run_json_child

    shutil.rmtree(run_dir, ignore_errors=True)
    return run_json_child([
        __file__, "--child", "--cache", str(cache), "--run-dir", str(run_dir), "--epochs", str(epochs),
        "--batch-size", str(args.batch_size), "--memory-block-mb", str(args.memory_block_mb), *(["--trace-heap"] if trace_heap else []),
    ], "memory run", extra_env)  # fmt: skip


def cache_files(path: Path) -> list[Path]:
    return [f for f in path.rglob("*") if f.is_file()]


def epoch_setup(cache_path: Path, model_name: str):
    """(data, training rows, epoch): `epoch(batches)` trains `model_name` one epoch over
    `batches` from the same initial weights each time (the recipe's step: forward, backward,
    clip, AdamW) and returns its (wall, CPU) seconds, fetching included."""
    import torch

    from cache_schema import open_cache
    from fuse.data import FeatureData
    from fuse.device import seed_everything
    from fuse.models import MODELS, build_model

    seed_everything(0, deterministic=True)
    data = FeatureData.for_training(open_cache(cache_path), {}, metadata=[], normalisation="global")
    model = build_model(model_name, data.input_dims, data.n_classes, data.spec.task, None)
    defaults = MODELS[model_name][0].default_training
    initial = copy.deepcopy(model.state_dict())
    model.train()

    def epoch(batches) -> tuple[float, float]:
        model.load_state_dict(initial)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=defaults.weight_decay)
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            output = model(batch)
            output.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), defaults.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - wall, time.process_time() - cpu

    return data, data.indices("train"), epoch


def epoch_times(cache_path: Path, model_name: str, args, observe_streaming=None) -> dict:
    """(a) for one model: streaming vs prebuilt epochs, cold round then warm rounds.

    `observe_streaming`: wraps each streamed epoch's batch iterator (bench/streaming_probe.py
    times what happens inside it); None in this benchmark."""
    from bench.cache_io import drop_page_cache

    data, rows, epoch = epoch_setup(cache_path, model_name)
    rounds = []
    for r in range(1 + args.warm_rounds):
        kwargs = dict(shuffle=True, seed=0, epoch=r)
        prebuilt = list(data.batches(rows, args.batch_size, **kwargs))  # in RAM before the clock starts
        times = {}
        for mode in ("streaming", "prebuilt") if r % 2 == 0 else ("prebuilt", "streaming"):
            if mode == "streaming":
                if r == 0:
                    drop_page_cache(cache_files(cache_path))
                streamed = data.batches(rows, args.batch_size, **kwargs)
                times[mode] = epoch(streamed if observe_streaming is None else observe_streaming(streamed))
            else:
                times[mode] = epoch(prebuilt)
        del prebuilt
        rounds.append({"round": r, "page_cache": "cold" if r == 0 else "warm", **{f"{m}_wall_s": round(t[0], 3) for m, t in times.items()}, **{f"{m}_cpu_s": round(t[1], 3) for m, t in times.items()}})

    def ratio(selected) -> float | None:
        if not selected:
            return None
        return round(sum(x["streaming_wall_s"] for x in selected) / sum(x["prebuilt_wall_s"] for x in selected), 3)

    cold, warm = ratio(rounds[:1]), ratio(rounds[1:])
    return {
        "model": model_name,
        "read_ahead_thread": data.prefetch,
        "train_utterances": int(len(rows)),
        "batches_per_epoch": data.n_batches(rows, args.batch_size, True, 0, 0),
        "cold_streaming_over_prebuilt": cold,
        "warm_streaming_over_prebuilt": warm,
        "all_rounds_streaming_over_prebuilt": ratio(rounds),
        "meets_target": all(x is not None and x <= TARGET for x in (cold, warm)),
        "meets_moonshot": all(x is not None and x <= MOONSHOT for x in (cold, warm)),
        "rounds": rounds,
    }


def commit() -> str:
    from bench.provenance import commit_label

    return commit_label()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.json"))
    ap.add_argument("--models", default="late,cmaf")
    ap.add_argument("--text-dim", type=int, default=768)
    ap.add_argument("--audio-dim", type=int, default=64)
    ap.add_argument("--video-dim", type=int, default=256)
    ap.add_argument("--time-dialogues", type=int, default=2000, help="dialogues (x10 utterances) of the epoch-time cache")
    ap.add_argument("--memory-dialogues", type=int, default=2000, help="dialogues of the small memory cache (large: 4x)")
    ap.add_argument("--warm-rounds", type=int, default=2, help="warm rounds after the cold one (each: a streaming and a prebuilt epoch)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--memory-block-mb", type=float, default=4.0, help="streaming block size of (b)")
    ap.add_argument("--memory-repeats", type=int, default=2, help="runs of (b)'s default arm per cache (interleaved)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--notes", default="", help="free text stored in the JSON (e.g. the cause of a missed target)")
    # child mode (internal): one peak-memory run
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--trace-heap", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    from benchmarks.common import machine

    measured_commit = commit()  # taken at the start: the code that ran
    work = Path(args.workdir or tempfile.mkdtemp(prefix="emofuse-bench-train-"))
    started = time.perf_counter()
    try:
        time_cache = work / "time.zarr"
        time_setup = build(time_cache, args.time_dialogues, args)
        timing = {name: epoch_times(time_cache, name, args) for name in args.models.split(",")}
        shutil.rmtree(time_cache, ignore_errors=True)

        small, large = work / "small.zarr", work / "large.zarr"
        small_setup = build(small, args.memory_dialogues, args)
        large_setup = build(large, 4 * args.memory_dialogues, args)
        # Peaks vary by a few percent from run to run: the default arm, which the target is
        # judged on, runs `--memory-repeats` times per cache, small and large interleaved.
        small_runs, large_runs = [], []
        for _ in range(args.memory_repeats):
            small_runs.append(spawn(small, work / "run-small", args))
            large_runs.append(spawn(large, work / "run-large", args))
        small_mem, large_mem = small_runs[0], large_runs[0]
        # A/B: glibc with a fixed mmap threshold (blocks of the streaming size and up go to
        # mmap and back to the OS on free; glibc's default threshold adapts upwards and keeps
        # them in the heap): does the growth with cache size come from the allocator?
        fixed = {"MALLOC_MMAP_THRESHOLD_": str(FIXED_MMAP_THRESHOLD)}
        small_fixed = spawn(small, work / "run-small-fixed", args, fixed)
        large_fixed = spawn(large, work / "run-large-fixed", args, fixed)
        small_long = spawn(small, work / "run-small-4-epochs", args, epochs=4)
        small_traced = spawn(small, work / "run-small-traced", args, trace_heap=True)
        large_traced = spawn(large, work / "run-large-traced", args, trace_heap=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    memory_ratio = sum(r["peak_above_baseline_mb"] for r in large_runs) / sum(r["peak_above_baseline_mb"] for r in small_runs)
    report = {
        "benchmark": "bench/train.py",
        "command": "python bench/train.py " + " ".join(sys.argv[1:]),
        "commit": measured_commit,
        "machine": {**machine(), "device": "cpu", "load_average_at_end": os.getloadavg()},
        "setup": {
            "batch_size": args.batch_size,
            "feature_sets": {k: {"modality": v[0], "dim": v[1], "frames": [v[2], v[3]]} for k, v in feature_sets(args).items()},
            "dtype": "float16",
            "normalisation": "global",
            "loader": "library defaults (block_mb 16, pool_blocks 4, read-ahead by default_prefetch)",
        },
        "epoch_time": {
            "cache": time_setup,
            "target": f"<= {TARGET} (moonshot {MOONSHOT}), ratio of totals, cold and warm, per model",
            **timing,
        },
        "peak_memory": {
            "model": "late",
            "memory_block_mb": args.memory_block_mb,
            "small_cache": {**small_setup, "runs": small_runs},
            "large_cache": {**large_setup, "runs": large_runs},
            "large_over_small_above_baseline": round(memory_ratio, 3),
            "ratio_of": "sums over the repeats of peak_above_baseline_mb (large / small)",
            "per_repeat_large_over_small": [round(lg["peak_above_baseline_mb"] / sm["peak_above_baseline_mb"], 3) for sm, lg in zip(small_runs, large_runs)],
            "target": f"within 10% (<= {MEMORY_TARGET})",
            "meets_target": memory_ratio <= MEMORY_TARGET,
            "fixed_mmap_threshold": {
                "env": fixed,
                "what": "the same two runs with glibc's mmap threshold fixed (the A/B arm; the target is judged on the default arm above, what a user gets)",
                "small_cache": small_fixed,
                "large_cache": large_fixed,
                "large_over_small_above_baseline": round(large_fixed["peak_above_baseline_mb"] / small_fixed["peak_above_baseline_mb"], 3),
                "train_seconds_fixed_over_default": round(
                    sum(small_fixed["train_seconds"] + large_fixed["train_seconds"]) / sum(small_mem["train_seconds"] + large_mem["train_seconds"]), 3),
            },
            "growth_source": {
                "what": "where the large cache's extra peak comes from (default allocator): the small cache for 4 epochs (the large cache's "
                        "training batches in one epoch), and the traced Python + numpy heap of both caches (tracemalloc; torch tensors and "
                        "allocator retention untraced)",
                "small_cache_4_epochs": small_long,
                "large_over_small_4_epochs_above_baseline": round(large_mem["peak_above_baseline_mb"] / small_long["peak_above_baseline_mb"], 3),
                "small_cache_traced": small_traced,
                "large_cache_traced": large_traced,
                "python_heap_large_over_small": round(large_traced["python_heap_peak_mb"] / small_traced["python_heap_peak_mb"], 3),
            },
        },
        "notes": args.notes,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
