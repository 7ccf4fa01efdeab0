"""Cache I/O benchmark: write, random reads, batch reads, block scans, disk footprint.

    python bench/cache_io.py [--utterances 20000] [--dim 768] [--out bench/results/cache_io.json]

Synthetic fp16 features, T uniform in 10..500, written the way stage 1 writes them (parts
from jobs, then one merge). All figures come from one run on one machine; the page cache is
warm for reads (the store is written just before), so read figures measure zarr decoding and
indexing, not the disk.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cache_schema import FeaturePartWriter, UtteranceTable, create_cache, merge_parts, open_cache, validate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--min-len", type=int, default=10)
    ap.add_argument("--max-len", type=int, default=500)
    ap.add_argument("--part-size", type=int, default=1000, help="utterances per extraction job part")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workdir", default=None, help="where to write (default: a temp dir, removed afterwards)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cache_io.json"))
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    n, dim = args.utterances, args.dim
    lengths = rng.integers(args.min_len, args.max_len + 1, size=n)
    payload = int(lengths.sum()) * dim * 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="emofuse-bench-"))
    cache = work / "feats.zarr"
    table = UtteranceTable.from_records([{"id": f"utt{i:06d}", "split": "train"} for i in range(n)])
    create_cache(cache, table)

    # Rows are slices of one random pool, so the timing measures writing, not random numbers.
    pool = rng.standard_normal((args.max_len + 4096, dim), dtype=np.float32).astype(np.float16)
    shifts = rng.integers(0, 4096, size=n)

    # Stage-1 jobs: each writes its own part.
    t0 = time.perf_counter()
    parts = []
    for start in range(0, n, args.part_size):
        stop = min(n, start + args.part_size)
        writer = FeaturePartWriter(work / "parts" / f"{start}.zarr", start, stop, dim=dim, dtype="float16")
        for row in range(start, stop):
            writer.put(row, pool[shifts[row] : shifts[row] + lengths[row]])
        parts.append(writer.close())
    t_parts = time.perf_counter() - t0
    t0 = time.perf_counter()
    merge_parts(cache, "audio.bench", parts, {"modality": "audio", "encoder_kind": "synthetic"})
    t_merge = time.perf_counter() - t0
    shutil.rmtree(work / "parts")

    t0 = time.perf_counter()
    opened = validate(cache)
    t_open_validate = time.perf_counter() - t0
    fs = opened["audio.bench"]

    # Random single-utterance reads.
    picks = rng.integers(0, n, size=300)
    t0 = time.perf_counter()
    single_bytes = 0
    for i in picks:
        single_bytes += fs.get(int(i)).nbytes
    t_single = time.perf_counter() - t0

    # Random 64-utterance batches (padded, as training reads them).
    n_batches = 40
    batch_bytes = 0
    t0 = time.perf_counter()
    for _ in range(n_batches):
        idx = rng.choice(n, size=args.batch, replace=False)
        flat, lens = fs.rows(idx)
        batch_bytes += flat.nbytes
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_batches):
        fs.batch(rng.choice(n, size=args.batch, replace=False))
    t_batch_padded = time.perf_counter() - t0

    # Sequential block scan, shard by shard.
    scan_bytes = 0
    t0 = time.perf_counter()
    for start, stop in fs.iter_blocks():
        values, _ = fs.block(start, stop)
        scan_bytes += values.nbytes
    t_scan = time.perf_counter() - t0

    # Dask view: shard-sized chunks vs 128-row chunks, summing every value.
    import dask.array as da

    t0 = time.perf_counter()
    fs.to_dask().sum(dtype="float64").compute()
    t_dask_shard = time.perf_counter() - t0
    t0 = time.perf_counter()
    da.from_zarr(fs.values, chunks=(128, dim)).sum(dtype="float64").compute()
    t_dask_small = time.perf_counter() - t0

    files = [p for p in cache.rglob("*") if p.is_file()]
    disk = sum(p.stat().st_size for p in files)
    mb = 1024 * 1024
    batch_mbs = batch_bytes / mb / t_batch
    scan_mbs = scan_bytes / mb / t_scan
    result = {
        "command": "python bench/cache_io.py " + f"--utterances {n} --dim {dim}",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": __import__("os").cpu_count()},
        "setup": {
            "utterances": n,
            "dim": dim,
            "dtype": "float16",
            "length_range": [args.min_len, args.max_len],
            "rows": int(lengths.sum()),
            "payload_mb": round(payload / mb, 1),
            "inner_chunk_rows": int(fs.values.chunks[0]),
            "shard_rows": fs.shard_rows,
        },
        "write": {
            "parts_mb_per_s": round(payload / mb / t_parts, 1),
            "merge_mb_per_s": round(payload / mb / t_merge, 1),
            "end_to_end_mb_per_s": round(payload / mb / (t_parts + t_merge), 1),
        },
        "open_and_validate_s": round(t_open_validate, 3),
        "random_single_reads_per_s": round(len(picks) / t_single, 1),
        "random_single_read_mb_per_s": round(single_bytes / mb / t_single, 1),
        "random_batch64_reads_per_s": round(n_batches / t_batch, 2),
        "random_batch64_mb_per_s": round(batch_mbs, 1),
        "random_batch64_padded_reads_per_s": round(n_batches / t_batch_padded, 2),
        "block_scan_mb_per_s": round(scan_mbs, 1),
        "batch_vs_scan_ratio": round(batch_mbs / scan_mbs, 3),
        "dask_shard_chunks_s": round(t_dask_shard, 2),
        "dask_128row_chunks_s": round(t_dask_small, 2),
        "dask_shard_vs_128row_speedup": round(t_dask_small / t_dask_shard, 2),
        "bytes_on_disk": disk,
        "disk_over_payload": round(disk / payload, 4),
        "files_on_disk": len(files),
        "payload_mb_per_file": round(payload / mb / len(files), 1),
        "targets": {
            "batch_mb_per_s_at_least_half_of_scan": bool(batch_mbs >= 0.5 * scan_mbs),
            "at_most_one_file_per_32mb": bool(len(files) <= payload / (32 * mb)),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
