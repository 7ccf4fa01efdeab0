"""Batch standardisation: the four broadcast passes used before fab5f40 vs `Normaliser.apply_padded`'s two.

    python bench/standardise_passes.py [--rounds 4] [--out bench/results/standardise_passes.json]

Before fab5f40 a padded (B, T, D) float32 batch was standardised as x * scale, - shift, * mask,
+ 0.0 (four passes); `fuse.data.normalisation.Normaliser.apply_padded` now does x * scale, then
one `addcmul_` (x + mask * -shift), bit for bit the same. Timed here, on one core, over an
epoch of `late`'s batches as bench/train.py's cache shapes them (12,000 utterances in batches
of 32 sorted by length; 768-d text of ~16 frames, 64-d audio of ~100, 256-d video of 8): the
gather + float32 cast alone (`cache_schema.ragged.gather_padded`, as the loader does it), and
gather + cast + each standardisation, the two arms alternating per round. Reported: seconds per
epoch (totals over the rounds / rounds), the standardisation's share, and old / new.
Excludes: reading the cache, the rest of batch assembly, the model.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.probe import write_report  # noqa: E402
from cache_schema.ragged import gather_padded  # noqa: E402

SETS = {"text": (768, 16), "audio": (64, 100), "video": (256, 8)}  # dim, mean frames


def four_passes(values, mask, scale, shift):
    values.mul_(scale)
    values.sub_(shift)
    return values.mul_(mask[..., None]).add_(0.0)


def two_passes(values, mask, scale, shift):
    values.mul_(scale)
    return values.addcmul_(mask[..., None].to(values.dtype), -shift)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "standardise_passes.json"))
    args = ap.parse_args()
    from bench.provenance import commit_label

    commit, started = commit_label(), time.perf_counter()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    arms = {"gather_cast_only": None, "four_passes": four_passes, "two_passes": two_passes}
    seconds = {arm: 0.0 for arm in arms}
    identical = True
    for name, (dim, mean_frames) in SETS.items():
        lengths = np.maximum(1, rng.poisson(mean_frames, 20000)).astype(np.int64)
        values = rng.standard_normal((int(lengths.sum()), dim)).astype(np.float16)
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        order = np.argsort(lengths[:12000], kind="stable")
        batches = [order[i : i + 32] for i in range(0, len(order), 32)]
        scale = torch.rand(1, 1, dim) + 0.5
        shift = torch.randn(1, 1, dim)
        for r in range(args.rounds):
            for arm in list(arms) if r % 2 == 0 else list(arms)[::-1]:
                t0 = time.perf_counter()
                for b in batches:
                    padded, mask = gather_padded(values, starts[b], lengths[b])
                    out = torch.from_numpy(padded).float()
                    if arms[arm] is not None:
                        arms[arm](out, torch.from_numpy(mask), scale, shift)
                seconds[arm] += time.perf_counter() - t0
        b = batches[len(batches) // 2]
        padded, mask = gather_padded(values, starts[b], lengths[b])
        old = four_passes(torch.from_numpy(padded).float(), torch.from_numpy(mask), scale, shift)
        new = two_passes(torch.from_numpy(padded).float(), torch.from_numpy(mask), scale, shift)
        identical &= bool(torch.equal(old.view(torch.int32), new.view(torch.int32)))
    per_epoch = {arm: round(s / args.rounds, 4) for arm, s in seconds.items()}
    base = per_epoch["gather_cast_only"]
    result = {
        "seconds_per_epoch": per_epoch,
        "standardise_only_seconds_per_epoch": {a: round(per_epoch[a] - base, 4) for a in ("four_passes", "two_passes")},
        "four_over_two_with_gather": round(seconds["four_passes"] / seconds["two_passes"], 3),
        "bitwise_identical": identical,
    }
    write_report(__file__, args.out, commit, started, {
        "sets": {k: {"dim": d, "mean_frames": f} for k, (d, f) in SETS.items()}, "utterances_per_epoch": 12000, "batch_size": 32,
        "rounds": args.rounds, **result, "excludes": "reading the cache, the rest of batch assembly, the model",
    })
    print(result)


if __name__ == "__main__":
    main()
