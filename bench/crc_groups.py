"""A/B of the direct reader's read groups: one `preadv` per whole shard vs `group_bytes` groups.

    python bench/crc_groups.py [--utterances 100000] [--rounds 6] [--out bench/results/crc_groups.json]

cache_schema/direct.py reads a shard's inner chunks in groups of at most
`DirectValues.group_bytes` (4 MiB) and checks each group's CRC32Cs right after its `preadv`,
while the bytes are still in the L3 cache. This writes bench/cache_io.py's 100k-utterance set
(5..45 frames of 768-d fp16, 1.2 layout), syncs it, and in each round times, on a warm page
cache: `np.fromfile` of the shard files (raw), then a block scan by a freshly opened reader
(every CRC checked: a run's first pass) and a second scan by the same reader (chunks trusted:
later epochs), once with whole-shard groups (`group_bytes` = the shard's size: how the reader
worked before fab5f40) and once with the default, the two orders alternating between rounds.
Reported: each arm's scan seconds, totals over the rounds; scan / raw per arm and pass (raw
pooled over both arms: the same reads); and whole-shard seconds / default seconds per pass.
Excludes: writing the set, opening the cache, interpreter start-up.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.cache_io import block_scan, raw_read, shard_files, synthetic_parts, timed  # noqa: E402
from bench.probe import write_report  # noqa: E402


def build(work: Path, n: int) -> Path:
    from cache_schema import UtteranceTable, create_cache, merge_parts

    cache = work / "feats.zarr"
    create_cache(cache, UtteranceTable.from_records([{"id": f"utt{i:06d}", "split": "train"} for i in range(n)]))
    _, parts, _ = synthetic_parts(work / "parts", n, 5, 45, 768, 2000, np.random.default_rng(0))
    merge_parts(cache, "audio.bench", parts, {"modality": "audio", "encoder_kind": "synthetic"})
    shutil.rmtree(work / "parts")
    os.sync()
    return cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "crc_groups.json"))
    args = ap.parse_args()

    from bench.provenance import commit_label
    from cache_schema import open_cache

    commit, started = commit_label(), time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="emofuse-crc-groups-"))
    try:
        cache = build(work, args.utterances)
        fs = open_cache(cache)["audio.bench"]
        files, payload = shard_files(fs), int(fs.offsets[-1]) * fs.dim * 2
        shard_bytes = fs._direct.chunks_per_shard * (fs._direct.chunk_bytes + 4)  # a whole shard in one group
        arms = {"whole_shard": shard_bytes, "default_groups": fs._direct.group_bytes}
        totals = {arm: {"raw_s": 0.0, "first_pass_s": 0.0, "repeat_pass_s": 0.0} for arm in arms}
        raw_read(files)
        for r in range(args.rounds):
            for arm in list(arms) if r % 2 == 0 else list(arms)[::-1]:
                totals[arm]["raw_s"] += timed(lambda: raw_read(files))
                fresh = open_cache(cache)["audio.bench"]
                fresh.offsets
                fresh._direct.group_bytes = arms[arm]
                totals[arm]["first_pass_s"] += timed(lambda: block_scan(fresh))
                totals[arm]["repeat_pass_s"] += timed(lambda: block_scan(fresh))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Raw reads are the same operation in both arms, so both divide by the pooled raw time
    # (per-arm raw times differ by up to ~25 % on this VM from round to round).
    raw = sum(t["raw_s"] for t in totals.values()) / len(totals)
    result = {
        arm: {"group_bytes": arms[arm], **{k: round(v, 3) for k, v in t.items()},
              "first_pass_over_raw": round(raw / t["first_pass_s"], 3), "repeat_pass_over_raw": round(raw / t["repeat_pass_s"], 3)}
        for arm, t in totals.items()
    }
    result["whole_shard_over_default_seconds"] = {
        p: round(totals["whole_shard"][p] / totals["default_groups"][p], 3) for p in ("first_pass_s", "repeat_pass_s")
    }
    write_report(__file__, args.out, commit, started, {
        "set": {"utterances": args.utterances, "frames": [5, 45], "dim": 768, "dtype": "float16", "payload_mb": round(payload / 2**20, 1)},
        "rounds": args.rounds, "arms": result,
        "excludes": "writing the set, opening the cache, interpreter start-up",
    })
    print(result)


if __name__ == "__main__":
    main()
