"""Cache I/O benchmark: block scan vs raw reads (warm and cold), merge vs raw writes, old vs new layout.

    nice python bench/cache_io.py [--out bench/results/cache_io.json]

For each size (default: 20k utterances of 10..300 frames, audio-like, and 100k utterances of
5..45 frames, text-token-like; 768-d fp16 both) it writes synthetic features the way stage 1
does (parts from jobs, then one merge), once in the layout of schema 1.1 (64-row inner chunks)
and once in the current one, into one cache. Then, per layout:

* block scan: `FeatureSet.iter_blocks()` + `FeatureSet.block()` over the whole set (what the
  streaming loader reads), divided by `np.fromfile` of the same shard files, in the same page
  cache state: warm (files read just before) and cold (page cache dropped with
  posix_fadvise(POSIX_FADV_DONTNEED) on each file, after fdatasync). Warm and cold scans use
  a freshly opened feature set, so every inner chunk's CRC32C is checked (a run's first
  epoch); `warm_repeat` scans again with the same one, which trusts the chunks it already
  checked while their files are unchanged (`cache_schema/direct.py`; a run's later epochs).
  MB are payload bytes for both; ratios are of totals over `--rounds` passes. The machine's
  CRC32C and memcpy speeds are recorded to explain the gap.
* merge: payload MB/s of `merge_parts` (reading the parts, writing the set) divided by the MB/s
  of `np.ndarray.tofile` writing the same number of bytes as 64 MiB files (page cache, no fsync
  for either).
  The merged set is then synced to disk (untimed), so the kernel's write-back of it does not
  run during the timed reads.
  `of_which_reading_parts_s` times reading the parts alone (they are zarr arrays written by
  `FeaturePartWriter`, zarr's default zstd), to show where a merge spends its time.
* random 64-utterance batches (`FeatureSet.rows`), since larger inner chunks make them decode more.

100k utterances at the 20k set's lengths would be ~24 GB per layout; this machine's disk and
time do not allow it, hence the shorter sequences at 100k. Excludes: interpreter start-up,
opening the cache, per-utterance training work.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cache_schema import FeaturePartWriter, UtteranceTable, create_cache, merge_parts, open_cache
from cache_schema import layout as L

MB = 1024 * 1024
TARGETS = {"scan_warm": 0.5, "scan_warm_moonshot": 0.8, "scan_cold": 0.5, "merge": 0.5}


def shard_files(fs) -> list[Path]:
    return sorted(p for p in (fs.directory / L.VALUES / "c").rglob("*") if p.is_file())


def drop_page_cache(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(files: list[Path]) -> None:
    for f in files:
        np.fromfile(f, dtype=np.uint8)


def block_scan(fs) -> int:
    total = 0
    for start, stop in fs.iter_blocks():
        values, _ = fs.block(start, stop)
        total += values.nbytes
    return total


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_scan(reopen, payload: int, rounds: int) -> dict:
    """Scan / raw per page-cache state; `reopen()` gives a freshly opened feature set."""
    files = shard_files(reopen())
    out = {}
    for state in ("warm", "warm_repeat", "cold"):
        t_raw = t_scan = 0.0
        for _ in range(rounds):
            if state == "cold":
                drop_page_cache(files)
            else:
                raw_read(files)  # bring every file into the page cache
            t_raw += timed(lambda: raw_read(files))
            if state == "cold":
                drop_page_cache(files)
            fs = reopen()
            fs.offsets  # opening the set (its offsets read through zarr) is not part of the scan
            if state == "warm_repeat":
                block_scan(fs)  # checks every chunk; the timed scan below re-reads them
            t_scan += timed(lambda: block_scan(fs))
        scan, raw = rounds * payload / MB / t_scan, rounds * payload / MB / t_raw
        out[state] = {"scan_mb_per_s": round(scan, 1), "raw_mb_per_s": round(raw, 1), "ratio": round(scan / raw, 3),
                      "scan_s": round(t_scan, 2), "raw_s": round(t_raw, 2)}
    return out


def raw_write_mb_per_s(folder: Path, payload: int) -> float:
    """np.ndarray.tofile of `payload` bytes as 64 MiB files (as many as the merge writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    block = np.random.default_rng(1).integers(0, 255, size=64 * MB, dtype=np.uint8)
    t0 = time.perf_counter()
    written, k = 0, 0
    while written < payload:
        n = min(len(block), payload - written)
        block[:n].tofile(folder / f"raw{k}")
        written, k = written + n, k + 1
    seconds = time.perf_counter() - t0
    shutil.rmtree(folder)
    return payload / MB / seconds


def memory_speeds() -> dict:
    """GB/s of CRC32C (the check every first read of a chunk pays) and of a memcpy, on 64 MiB."""
    import google_crc32c

    data = np.random.default_rng(0).integers(0, 256, 64 * MB, dtype=np.uint8)
    crc = min(timed(lambda: google_crc32c.value(data)) for _ in range(5))
    copy = min(timed(lambda: data.copy()) for _ in range(5))
    return {"crc32c_gb_per_s": round(64 / 1024 / crc, 2), "memcpy_gb_per_s": round(64 / 1024 / copy, 2), "crc32c_implementation": google_crc32c.implementation}


def random_batches(fs, n: int, rng, batches: int = 20, size: int = 64) -> dict:
    nbytes, t0 = 0, time.perf_counter()
    for _ in range(batches):
        flat, _ = fs.rows(rng.choice(n, size=size, replace=False))
        nbytes += flat.nbytes
    seconds = time.perf_counter() - t0
    return {"batches_per_s": round(batches / seconds, 2), "mb_per_s": round(nbytes / MB / seconds, 1)}


def synthetic_parts(folder: Path, n: int, min_len: int, max_len: int, dim: int, part_size: int, rng) -> tuple[np.ndarray, list[Path], float]:
    """(lengths, parts, seconds writing them): n utterances of min_len..max_len frames of `dim`-d
    fp16, written the way stage 1's part jobs write them, `part_size` utterances a part."""
    lengths = rng.integers(min_len, max_len + 1, size=n)
    # Rows are slices of one random pool, so the timing measures writing, not random numbers.
    pool = rng.standard_normal((max_len + 4096, dim), dtype=np.float32).astype(np.float16)
    shifts = rng.integers(0, 4096, size=n)
    t0 = time.perf_counter()
    parts = []
    for start in range(0, n, part_size):
        stop = min(n, start + part_size)
        writer = FeaturePartWriter(folder / f"{start}.zarr", start, stop, dim=dim, dtype="float16")
        for row in range(start, stop):
            writer.put(row, pool[shifts[row] : shifts[row] + lengths[row]])
        parts.append(writer.close())
    return lengths, parts, time.perf_counter() - t0


def run_size(work: Path, n: int, min_len: int, max_len: int, dim: int, part_size: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    cache = work / "feats.zarr"
    create_cache(cache, UtteranceTable.from_records([{"id": f"utt{i:06d}", "split": "train"} for i in range(n)]))
    lengths, parts, t_parts = synthetic_parts(work / "parts", n, min_len, max_len, dim, part_size, rng)
    payload = int(lengths.sum()) * dim * 2
    # How much of a merge is reading (decoding) the parts: the same reads, nothing written.
    import zarr

    def read_parts() -> None:
        for p in parts:
            values = zarr.open_group(str(p), mode="r")[L.VALUES]
            for lo in range(0, values.shape[0], values.chunks[0]):
                values[lo : lo + values.chunks[0]]

    t_read_parts = timed(read_parts)
    result = {
        "utterances": n, "dim": dim, "dtype": "float16", "length_range": [min_len, max_len], "rows": int(lengths.sum()),
        "payload_mb": round(payload / MB, 1), "utterances_per_part": part_size, "parts_write_mb_per_s": round(payload / MB / t_parts, 1),
        "parts_read_mb_per_s": round(payload / MB / t_read_parts, 1),
        "layouts": {},
    }
    for label, minor in (("old (1.1)", 1), (f"new (1.{L.SCHEMA_MINOR})", L.SCHEMA_MINOR)):
        name = f"audio.minor{minor}"
        raw_w = raw_write_mb_per_s(work / "rawwrite", payload)
        t_merge = timed(lambda: merge_parts(cache, name, parts, {"modality": "audio", "encoder_kind": "synthetic"}, layout_minor=minor))
        merge = payload / MB / t_merge
        os.sync()  # the merge's dirty pages written back now, not by the kernel during the timed reads
        fs = open_cache(cache)[name]
        files = shard_files(fs)
        disk = sum(p.stat().st_size for p in files)
        entry = {
            "inner_chunk_rows": int(fs.values.chunks[0]), "shard_rows": fs.shard_rows, "shard_files": len(files),
            "disk_over_payload": round(disk / payload, 4),
            "merge": {"merge_mb_per_s": round(merge, 1), "raw_write_mb_per_s": round(raw_w, 1), "ratio": round(merge / raw_w, 3),
                      "merge_s": round(t_merge, 2), "of_which_reading_parts_s": round(t_read_parts, 2)},
            "scan": measure_scan(lambda: open_cache(cache)[name], payload, rounds),
            "random_batch64": random_batches(fs, n, rng),
        }
        result["layouts"][label] = entry
        print(json.dumps({f"{n} utterances, {label}": entry}), flush=True)
        shutil.rmtree(fs.directory)  # keep the disk footprint at one set plus the parts
    shutil.rmtree(work / "parts")
    shutil.rmtree(cache)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["20000:10:300", "100000:5:45"], help="utterances:min_len:max_len")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--part-size", type=int, default=2000, help="utterances per extraction job part")
    ap.add_argument("--rounds", type=int, default=2, help="passes per scan figure (totals are divided)")
    ap.add_argument("--workdir", default=None, help="where to write (default: a temp dir under /work, removed afterwards)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cache_io.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    base = Path(args.workdir or tempfile.mkdtemp(prefix="emofuse-cacheio-", dir="/work" if Path("/work").is_dir() else None))
    sizes = []
    for spec in args.sizes:
        n, lo, hi = (int(x) for x in spec.split(":"))
        sizes.append(run_size(base / f"n{n}", n, lo, hi, args.dim, args.part_size, args.rounds))
    if not args.workdir:
        shutil.rmtree(base, ignore_errors=True)
    new = f"new (1.{L.SCHEMA_MINOR})"
    targets = {}
    for s in sizes:
        got = s["layouts"][new]
        targets[f"{s['utterances']} utterances"] = {
            "scan_warm_ratio": got["scan"]["warm"]["ratio"], "scan_warm_met": got["scan"]["warm"]["ratio"] >= TARGETS["scan_warm"],
            "scan_warm_moonshot_met": got["scan"]["warm"]["ratio"] >= TARGETS["scan_warm_moonshot"],
            "scan_warm_repeat_ratio": got["scan"]["warm_repeat"]["ratio"],
            "scan_warm_repeat_met": got["scan"]["warm_repeat"]["ratio"] >= TARGETS["scan_warm"],
            "scan_cold_ratio": got["scan"]["cold"]["ratio"], "scan_cold_met": got["scan"]["cold"]["ratio"] >= TARGETS["scan_cold"],
            "merge_ratio": got["merge"]["ratio"], "merge_met": got["merge"]["ratio"] >= TARGETS["merge"],
        }
    import zarr

    result = {
        "command": "python bench/cache_io.py " + " ".join(sys.argv[1:]),
        "commit": commit,  # taken at the start: the code that ran
        "machine": {
            "platform": platform.platform(), "cpus": os.cpu_count(), "zarr": zarr.__version__, "numpy": np.__version__,
            **memory_speeds(),
            "load_average_at_start": load_at_start, "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "note": "1/5/15-minute load averages: above the core count, other work shared the machine; the ratios compare passes of the same run",
        },
        "excludes": "interpreter start-up, opening the cache, per-utterance training work; raw writes/reads and merges go to the page cache (no fsync)",
        "targets": TARGETS,
        "sizes": sizes,
        "summary": targets,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
