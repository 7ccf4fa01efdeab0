"""Which `values` layout reads fastest? Block-scan MB/s of candidate zarr-3 layouts vs raw reads.

    nice python bench/cache_layout.py [--rows 700000] [--dim 768] [--out bench/results/cache_layout.json]

One synthetic fp16 (rows, dim) array is written once per candidate layout (inner chunk rows,
sharding or not, CRC32C per inner chunk or not, compressor). Each is then read the way the
loader streams it: one `array[lo:hi]` call per shard-sized block of rows, warm (page cache hot)
and cold (page cache dropped with posix_fadvise(DONTNEED) on every file first). The baseline
is `np.fromfile` of the same files, in the same state, in the same run: the ratio
scan MB/s / raw MB/s is the figure to compare (MB are payload bytes, i.e. decoded values, for
both; for compressed layouts raw reads fewer bytes). Each figure is the total over `--rounds`.
Layouts that cache_schema/direct.py can read (uncompressed, CRC32C per inner chunk) are also
scanned through it (`direct_*`: preadv straight into the output, CRC checked). Excludes:
opening the array (metadata) and any per-utterance work.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs as zc

from cache_schema.direct import DirectValues
from cache_io import drop_page_cache  # bench/ is on sys.path when a bench script runs

MB = 1024 * 1024
SHARD_BYTES = 64 * MB


def candidates(dim: int) -> dict[str, dict]:
    row = dim * 2
    shard = SHARD_BYTES // row
    crc = [zc.Crc32cCodec()]
    zstd = [zc.ZstdCodec(level=1), zc.Crc32cCodec()]
    lz4 = [zc.BloscCodec(cname="lz4", clevel=1, shuffle="shuffle", typesize=2), zc.Crc32cCodec()]
    out = {}
    for inner in (64, 1024, 4096, 16384):
        s = shard // inner * inner
        out[f"shard64M/inner{inner}/crc32c"] = dict(chunks=inner, shards=s, compressors=crc)
    for inner in (64, 1024, 4096):
        s = shard // inner * inner
        out[f"shard64M/inner{inner}/none"] = dict(chunks=inner, shards=s, compressors=[])
    s = shard // 4096 * 4096
    out["shard64M/inner4096/zstd1+crc32c"] = dict(chunks=4096, shards=s, compressors=zstd)
    out["shard64M/inner4096/blosc-lz4+crc32c"] = dict(chunks=4096, shards=s, compressors=lz4)
    out["unsharded/chunk64M/crc32c"] = dict(chunks=shard, shards=None, compressors=crc)
    out["unsharded/chunk64M/none"] = dict(chunks=shard, shards=None, compressors=[])
    return out


def files_of(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")


def raw_read(files: list[Path]) -> int:
    return sum(np.fromfile(f, dtype=np.uint8).nbytes for f in files)


def scan(arr: zarr.Array, block: int) -> int:
    total = 0
    for lo in range(0, arr.shape[0], block):
        total += arr[lo : lo + block].nbytes
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=700_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help="candidate names to run (default: all)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cache_layout.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.provenance import commit_label

    commit = commit_label()
    rng = np.random.default_rng(0)
    # Embedding-like values: a random pool, rows sliced from it (realistic fp16 entropy).
    pool = rng.standard_normal((8192, args.dim), dtype=np.float32).astype(np.float16)
    data = pool[rng.integers(0, 8192, size=args.rows)]
    payload = data.nbytes
    work = Path(args.workdir or tempfile.mkdtemp(prefix="emofuse-layout-", dir="/work" if Path("/work").is_dir() else None))
    results = {}
    for name, spec in candidates(args.dim).items():
        if args.only and name not in args.only:
            continue
        path = work / name.replace("/", "_")
        arr = zarr.create_array(
            str(path), shape=data.shape, dtype="float16", chunks=(spec["chunks"], args.dim),
            shards=(spec["shards"], args.dim) if spec["shards"] else None,
            compressors=spec["compressors"], fill_value=np.nan,
        )
        arr[...] = data
        block = spec["shards"] or spec["chunks"]  # read whole shards, as FeatureSet.iter_blocks does
        files = files_of(path)
        disk = sum(f.stat().st_size for f in files)
        np.testing.assert_array_equal(arr[:1000], data[:1000])
        row = {"inner_rows": spec["chunks"], "shard_rows": spec["shards"], "files": len(files), "disk_over_payload": round(disk / payload, 4)}
        for state in ("warm", "cold"):
            t_raw = t_scan = 0.0
            for _ in range(args.rounds):
                if state == "cold":
                    drop_page_cache(files)
                else:
                    raw_read(files)
                t0 = time.perf_counter()
                raw_read(files)
                t_raw += time.perf_counter() - t0
                if state == "cold":
                    drop_page_cache(files)
                t0 = time.perf_counter()
                scan(arr, block)
                t_scan += time.perf_counter() - t0
            scan_mbs = args.rounds * payload / MB / t_scan
            raw_mbs = args.rounds * payload / MB / t_raw
            row[state] = {"scan_mb_per_s": round(scan_mbs, 1), "raw_mb_per_s": round(raw_mbs, 1), "ratio": round(scan_mbs / raw_mbs, 3)}
            direct = DirectValues.eligible(path)
            if direct is not None:  # the same scan through cache_schema/direct.py
                t_direct = 0.0
                for _ in range(args.rounds):
                    drop_page_cache(files) if state == "cold" else raw_read(files)
                    t0 = time.perf_counter()
                    for lo in range(0, arr.shape[0], block):
                        direct.read_rows(lo, lo + block)
                    t_direct += time.perf_counter() - t0
                d_mbs = args.rounds * payload / MB / t_direct
                row[state].update({"direct_mb_per_s": round(d_mbs, 1), "direct_ratio": round(d_mbs / raw_mbs, 3)})
        results[name] = row
        print(name, json.dumps(row), flush=True)
        shutil.rmtree(path)
    out = {
        "command": "python bench/cache_layout.py " + " ".join(f"--{k} {v}" for k, v in (("rows", args.rows), ("dim", args.dim), ("rounds", args.rounds))),
        "commit": commit,  # taken at the start: the code that ran
        "machine": {
            "platform": platform.platform(), "cpus": os.cpu_count(), "zarr": zarr.__version__,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "note": "1/5/15-minute load averages: above the core count, other work shared the machine; compare ratios within this run",
        },
        "setup": {"rows": args.rows, "dim": args.dim, "dtype": "float16", "payload_mb": round(payload / MB, 1),
                  "rounds": args.rounds,
                  "read": "one array[lo:hi] per shard (unsharded: per chunk) of rows; raw: np.fromfile of every file of the array"},
        "layouts": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
