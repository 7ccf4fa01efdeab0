"""Diagnostic for issue 14's streaming target on `late`: does the allocator or the read-ahead thread cost the time?

    python bench/streaming_probe.py [--dialogues 2000] [--warm-rounds 3] [--repeats 2] [--out bench/results/streaming_probe.json]

bench/train.py times a streamed epoch against one from prebuilt in-RAM tensors; for `late`
(a ~1.5 ms step) streaming costs ~1.5x. This probe repeats that measurement
(`bench.train.epoch_times`, same cache, model and batches) in a fresh process per variant,
each variant changing one thing before the run starts (a diagnostic, not how the library is
built):

* `default`: the library as it is;
* `malloc_keep`: glibc told to keep freed memory for reuse instead of returning it
  (`mallopt`: mmap threshold 64 MiB, trim threshold 256 MiB, top pad 64 MiB), so the batches'
  multi-MB arrays are recycled rather than mapped, zero-filled and faulted in each time;
* `no_read_ahead`: batches built in line (`fuse.data.loader.default_prefetch` -> False);
* `malloc_keep_no_read_ahead`: both;
* `dataloader_worker`: every `FeatureData.batches` iterator (prebuilt lists included) served by
  a `torch.utils.data.DataLoader` with one worker process (`batch_size=None`, the loader's own
  read-ahead inside the worker) instead of the read-ahead thread: no GIL shared with the step,
  but each batch's tensors cross into the training process through shared memory;
* `shared_ring_worker`: the streamed epochs' batches (not the prebuilt lists) through a ring of
  4 preallocated, prefaulted batch slots in memory shared with a forked worker process: the
  worker builds each batch in line, copies it into a free slot and sends its tensors' shapes
  down a `multiprocessing.Pipe`; the trainer wraps the slot as tensors and hands the slot back
  when it asks for the next batch. No GIL shared and no per-batch shared-memory setup, one
  extra copy of each batch in the worker (a prototype to size that design, not how the
  library builds batches);
* `short_switch_interval`: `sys.setswitchinterval(0.0002)` (default 0.005 s): a thread that
  wants the GIL asks its holder to drop it after 0.2 ms instead of 5 ms, so the training step
  waits less for it when the read-ahead thread holds it between its C calls;
* `breakdown`: the library as it is, timing where a streamed epoch's time goes: how long the
  training loop waits for the read-ahead queue, and how long the read-ahead threads spend
  assembling batches (`FeatureData._assemble`) and reading pools (`FeatureData._read_frames`).
  If the wait is small while the streamed epoch is still slower than the prebuilt one, the
  model's step itself runs slower beside the batch building (GIL or memory bandwidth), rather
  than waiting for batches. (Its own timers add a little to its epochs.)
* `contention`: which of those two slows the step. The same prebuilt epoch is timed alone and
  beside a background thread that never holds the GIL while it works, one memory-bound
  (`memory_copy`: a 16 MB tensor copied over and over, far beyond the caches) and one
  compute-bound within a core's cache (`cache_compute`: SHA-256 of a 256 KB buffer), and
  beside the loader's own batch assembly (`batch_assembly`: `FeatureData._assemble` over the
  epoch's pools, already read, over and over: the read-ahead thread's work, without its
  pauses), and the same assembly in a forked process (`batch_assembly_process`: the same
  memory traffic without a GIL shared with the step, so the gap between the two is what
  handing the GIL back and forth costs the step). Reported: seconds beside / seconds alone,
  ratio of totals over `--warm-rounds` rounds of each, alone and beside alternating. A
  memory-bound ratio well above 1 with a compute-bound one near 1 means the two cores share
  memory bandwidth, so a thread that moves batches through memory slows the step even while
  it holds no GIL; what `batch_assembly` adds over `batch_assembly_process` is the GIL. A fourth
  load (`l3_copy`: a 2 MB copy, within the shared L3 but beyond a core's L2) tells DRAM
  bandwidth (it then stays near 1) from contention in the shared cache (it slows the step too).

Reported per variant: each repeat's rounds, and the ratio of totals of streaming over prebuilt
wall seconds over all repeats, cold (round 0, page cache dropped) and warm. Target of issue 14:
<= 1.2. Excludes: cache building, data setup, interpreter start-up. glibc only (Linux).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.probe import chosen_variants, probe_parser, run_child, write_report  # noqa: E402

VARIANTS = ("default", "malloc_keep", "no_read_ahead", "malloc_keep_no_read_ahead", "dataloader_worker", "shared_ring_worker", "short_switch_interval", "breakdown", "contention")
TIMERS = {"consumer_wait_s": 0.0, "assemble_s": 0.0, "read_frames_s": 0.0}
# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def apply_variant(variant: str) -> None:
    if variant.startswith("malloc_keep"):
        mallopt = ctypes.CDLL("libc.so.6").mallopt
        for parameter, value in ((M_MMAP_THRESHOLD, 64 << 20), (M_TRIM_THRESHOLD, 256 << 20), (M_TOP_PAD, 64 << 20)):
            if mallopt(parameter, value) != 1:
                raise SystemExit(f"mallopt({parameter}, {value}) failed")
    if variant.endswith("no_read_ahead"):
        import fuse.data.loader as loader

        loader.default_prefetch = lambda: False
    if variant == "dataloader_worker":
        _batches_from_a_worker_process()
    if variant == "shared_ring_worker":
        _batches_from_a_shared_ring()
    if variant == "short_switch_interval":
        sys.setswitchinterval(0.0002)
    if variant == "breakdown":
        _time_streaming()


def _batches_from_a_worker_process() -> None:
    import torch

    import fuse.data.loader as loader

    in_process = loader.FeatureData.batches

    class Epoch(torch.utils.data.IterableDataset):
        def __init__(self, data, args, kwargs):
            self.data, self.args, self.kwargs = data, args, kwargs

        def __iter__(self):
            return in_process(self.data, *self.args, **self.kwargs)

    def batches(self, *args, **kwargs):
        return iter(torch.utils.data.DataLoader(Epoch(self, args, kwargs), batch_size=None, num_workers=1, prefetch_factor=4))

    loader.FeatureData.batches = batches


RING_SLOTS = 4
RING = {"streaming": False}  # set while a streamed epoch runs (`_ring_streaming`)


def _ring_streaming(batches):
    """epoch_times' hook around each streamed epoch: only those go through the ring (the
    generator bodies run lazily, so the flag is set when `batches` starts)."""
    RING["streaming"] = True
    try:
        yield from batches
    finally:
        RING["streaming"] = False


def _batch_tensors(batch) -> list[tuple[tuple, "torch.Tensor"]]:
    """(where, tensor) for every tensor of a Batch this probe's model reads."""
    out = [(("index",), batch.index)]
    for name in ("label", "labels_multi"):
        if getattr(batch, name) is not None:
            out.append(((name,), getattr(batch, name)))
    for m, inputs in batch.modalities.items():
        out += [(("modality", m, f), getattr(inputs, f)) for f in ("values", "mask", "present")]
    return out


def _batches_from_a_shared_ring() -> None:
    import mmap
    import multiprocessing

    import numpy as np
    import torch

    import fuse.data.loader as loader
    from fuse.batch import Batch, ModalityInput

    in_process = loader.FeatureData.batches

    def slot_bytes(data, batch_size: int) -> int:
        total = batch_size * 64 + 4096  # index, labels, present flags, alignment
        for m, fs in data.feature_sets.items():
            longest = int(data._kept_lengths(m, np.arange(data.n)).max(initial=1))
            total += batch_size * longest * (fs.dim * 4 + 1) + 64
        return -(-total // mmap.PAGESIZE) * mmap.PAGESIZE

    def batches(self, indices, batch_size, **kwargs):
        if not RING["streaming"]:  # the prebuilt lists: built in this process, kept whole
            yield from in_process(self, indices, batch_size, **kwargs)
            return
        size = slot_bytes(self, batch_size)
        ring = mmap.mmap(-1, RING_SLOTS * size)  # anonymous MAP_SHARED: shared with the fork
        ring.write(bytes(RING_SLOTS * size))  # prefault every page once, before the fork
        headers_in, headers_out = multiprocessing.Pipe(duplex=False)  # worker -> trainer: (slot, layout)
        free_in, free_out = multiprocessing.Pipe(duplex=False)  # trainer -> worker: free slots
        pid = os.fork()
        if pid == 0:  # the worker: build batches, copy each into a free slot
            try:
                self.prefetch = False  # the worker is the read-ahead: one thread, on the free core
                for batch in in_process(self, indices, batch_size, **kwargs):
                    slot = free_in.recv()
                    offset, layout = slot * size, []
                    for where, tensor in _batch_tensors(batch):
                        flat = tensor.contiguous().view(-1).view(torch.uint8).numpy()
                        offset = -(-offset // 64) * 64
                        np.frombuffer(ring, dtype=np.uint8, count=len(flat), offset=offset)[:] = flat
                        layout.append((where, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), offset))
                        offset += len(flat)
                    headers_out.send((slot, layout))
                headers_out.send(None)
            finally:
                os._exit(0)
        try:
            for slot in range(RING_SLOTS):
                free_out.send(slot)
            held = None
            while True:
                header = headers_in.recv()
                if held is not None:  # the step on the previous batch is done: its slot is free
                    free_out.send(held)
                if header is None:
                    return
                held, layout = header
                tensors, modalities = {}, {}
                for where, dtype, shape, offset in layout:
                    count = int(np.prod(shape)) if shape else 1
                    tensor = torch.frombuffer(ring, dtype=getattr(torch, dtype), count=count, offset=offset).view(shape)
                    if where[0] == "modality":
                        modalities.setdefault(where[1], {})[where[2]] = tensor
                    else:
                        tensors[where[0]] = tensor
                yield Batch(modalities={m: ModalityInput(**f) for m, f in modalities.items()}, **tensors)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            for end in (headers_in, headers_out, free_in, free_out):
                end.close()

    loader.FeatureData.batches = batches


def _timed(function, timer: str):
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TIMERS[timer] += time.perf_counter() - started

    return timed


def _time_streaming() -> None:
    import queue
    import types

    import fuse.data.loader as loader
    import fuse.data.readahead as readahead

    timed_get = _timed(queue.Queue.get, "consumer_wait_s")

    class TimedQueue(queue.Queue):
        def get(self, *args, **kwargs):
            # Only the training loop's waits: the batch thread also waits, on the pool reader's queue.
            if threading.current_thread() is threading.main_thread():
                return timed_get(self, *args, **kwargs)
            return super().get(*args, **kwargs)

    readahead.queue = types.SimpleNamespace(Queue=TimedQueue, Full=queue.Full)
    loader.FeatureData._assemble = _timed(loader.FeatureData._assemble, "assemble_s")
    loader.FeatureData._read_frames = _timed(loader.FeatureData._read_frames, "read_frames_s")


def _background(load: str, data, pools, frames):
    """The loop a `contention` background thread runs until its event is set."""
    import hashlib

    import torch

    if load in ("memory_copy", "l3_copy"):
        # memory_copy: 16 MB of float32 copied (32 MB touched: beyond the 32 MB L3 the two cores
        # share, so it streams from DRAM); l3_copy: 2 MB (4 MB touched: beyond a core's 2 MB L2,
        # within L3), which separates DRAM bandwidth from contention in the shared cache.
        source = torch.ones((4 << 20) if load == "memory_copy" else (512 << 10))
        target = torch.empty_like(source)
        return lambda: target.copy_(source)
    if load == "cache_compute":
        buffer = bytes(256 << 10)
        return lambda: hashlib.sha256(buffer).digest()  # releases the GIL for buffers > 2 KB

    def assemble_epoch() -> None:
        for pool, arrays in zip(pools, frames):
            for utts in pool.batches:
                data._assemble(utts, arrays)

    return assemble_epoch


def _run_until(stop: threading.Event, work) -> None:
    while not stop.is_set():
        work()


class _Beside:
    """`work` looped beside the timed epoch: in a thread, or in a forked process (`in_process`)."""

    def __init__(self, work, in_process: bool):
        self.work, self.in_process = work, in_process

    def __enter__(self):
        if self.in_process:
            self.pid = os.fork()
            if self.pid == 0:  # the child: loop until the parent kills it
                try:
                    while True:
                        self.work()
                finally:
                    os._exit(0)
        else:
            self.stop = threading.Event()
            self.thread = threading.Thread(target=_run_until, args=(self.stop, self.work), daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.in_process:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        else:
            self.stop.set()
            self.thread.join()


def contention(args) -> dict:
    from bench.train import epoch_setup

    data, rows, epoch = epoch_setup(Path(args.cache), "late")
    pools = data.plan(rows, 32, shuffle=True, seed=0, epoch=0)
    frames = [{m: data._read_frames(m, pool.rows) for m in data.feature_sets} for pool in pools]
    prebuilt = [data._assemble(utts, arrays) for pool, arrays in zip(pools, frames) for utts in pool.batches]
    result = {}
    for load in ("memory_copy", "l3_copy", "cache_compute", "batch_assembly", "batch_assembly_process"):
        work = _background(load.removesuffix("_process"), data, pools, frames)
        rounds = []
        for r in range(args.warm_rounds):
            seconds = {}
            for where in ("alone", "beside") if r % 2 == 0 else ("beside", "alone"):
                if where == "beside":
                    with _Beside(work, in_process=load.endswith("_process")):
                        seconds[where] = round(epoch(prebuilt)[0], 3)
                else:
                    seconds[where] = round(epoch(prebuilt)[0], 3)
            rounds.append(seconds)
        result[load] = {"beside_over_alone": round(sum(x["beside"] for x in rounds) / sum(x["alone"] for x in rounds), 3), "rounds": rounds}
    return {"contention": result}


def child(args) -> None:
    from bench.train import epoch_times

    apply_variant(args.variant)
    if args.variant == "contention":
        print(json.dumps(contention(args)))
        return
    if args.variant != "breakdown":
        observe = _ring_streaming if args.variant == "shared_ring_worker" else None
        print(json.dumps(epoch_times(Path(args.cache), "late", argparse.Namespace(warm_rounds=args.warm_rounds, batch_size=32), observe_streaming=observe)))
        return
    # The timers count only inside the streamed epochs (epoch_times' hook): the prebuilt list is built unmetered.
    streaming_epochs = []

    def metered(batches):
        for key in TIMERS:
            TIMERS[key] = 0.0
        started = time.perf_counter()
        yield from batches
        streaming_epochs.append({"iterate_s": round(time.perf_counter() - started, 3), **{k: round(v, 3) for k, v in TIMERS.items()}})

    result = epoch_times(Path(args.cache), "late", argparse.Namespace(warm_rounds=args.warm_rounds, batch_size=32), observe_streaming=metered)
    result["breakdown_per_streamed_epoch"] = streaming_epochs
    print(json.dumps(result))


def main() -> None:
    ap = probe_parser(__doc__, ROOT / "bench" / "results" / "streaming_probe.json", VARIANTS)
    ap.add_argument("--dialogues", type=int, default=2000, help="dialogues (x10 utterances) of the cache")
    ap.add_argument("--warm-rounds", type=int, default=3)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    from bench.provenance import commit_label
    from bench.train import build

    measured_commit = commit_label()
    variants = chosen_variants(args.variants, VARIANTS)
    work = Path(tempfile.mkdtemp(prefix="emofuse-streaming-probe-"))
    started = time.perf_counter()
    runs: dict[str, list] = {v: [] for v in variants}
    try:
        cache = work / "cache.zarr"
        size = build(cache, args.dialogues, argparse.Namespace(text_dim=768, audio_dim=64, video_dim=256))
        for _ in range(args.repeats):  # variants interleaved, so drift on the machine hits all alike
            for variant in variants:
                runs[variant].append(run_child(__file__, variant, cache, "--warm-rounds", str(args.warm_rounds)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ratio(results, page_cache: str) -> float:
        rounds = [r for result in results for r in result["rounds"] if r["page_cache"] == page_cache]
        return round(sum(r["streaming_wall_s"] for r in rounds) / sum(r["prebuilt_wall_s"] for r in rounds), 3)

    def contention_ratios(results) -> dict:
        loads = results[0]["contention"]
        return {
            load: round(sum(x["beside"] for r in results for x in r["contention"][load]["rounds"]) / sum(x["alone"] for r in results for x in r["contention"][load]["rounds"]), 3)
            for load in loads
        }

    summary = {
        v: {"step_beside_over_alone": contention_ratios(r), "runs": r}
        if v == "contention"
        else {"cold_streaming_over_prebuilt": ratio(r, "cold"), "warm_streaming_over_prebuilt": ratio(r, "warm"), "read_ahead_thread": r[0]["read_ahead_thread"], "runs": r}
        for v, r in runs.items()
    }
    if "breakdown" in runs:
        epochs = [e for result in runs["breakdown"] for e in result["breakdown_per_streamed_epoch"]]
        summary["breakdown"]["totals_over_streamed_epochs"] = {k: round(sum(e[k] for e in epochs), 3) for k in ("iterate_s", *TIMERS)}
    write_report(__file__, args.out, measured_commit, started, {
        "cache": size,
        "model": "late, batch 32 (bench/train.py's epoch_times)",
        "target": "streaming_over_prebuilt <= 1.2, ratio of totals",
        "variants": summary,
        "excludes": "cache building, data setup, interpreter start-up",
    })
    print(json.dumps({v: {k: x for k, x in s.items() if k != "runs"} for v, s in summary.items()}, indent=2))


if __name__ == "__main__":
    main()
