"""Diagnostic for issue 14's memory target: which candidate change bounds peak RSS as the cache grows?

    python bench/memory_probe.py [--dialogues 2000] [--repeats 2] [--out bench/results/memory_probe.json]

bench/train.py shows the growth (1x vs 4x cache: peak RSS above the post-import baseline) and
that it is not the Python/numpy heap nor the number of training batches. This probe tries the
candidate fixes *before* they go into the library: each variant patches the run in its own
fresh process (this is a diagnostic, not how the library is built), trains `late` for one epoch
on the bench/train.py caches (1x = `--dialogues` x 10 utterances, 4x), and records the peak
(VmHWM) above the post-import baseline and the training seconds. Variants:

* `default`: the library as it is;
* `infer_preallocated`: `fuse.runs.inference.infer` writes each batch's probabilities and rows
  into arrays allocated once for the split, so no small per-batch torch tensor outlives its
  batch between the large, short-lived ones;
* `trim_phases`: that, plus glibc `malloc_trim(0)` after data setup, each training pass and
  each evaluation (free memory inside the heap back to the OS);
* `trim_pools`: `infer_preallocated`, plus `malloc_trim(0)` after each pool of blocks is read;
* `trim_batches`: `infer_preallocated`, plus `malloc_trim(0)` before each batch is assembled.

Reported per variant: each repeat's peaks and seconds, and the ratio of the mean 4x peak to the
mean 1x peak (target of issue 14: <= 1.10). Excludes: cache building, interpreter start-up.
glibc only (Linux).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.probe import chosen_variants, probe_parser, run_child, write_report  # noqa: E402

VARIANTS = ("default", "infer_preallocated", "trim_phases", "trim_pools", "trim_batches")


def _infer_preallocated():
    import numpy as np
    import torch

    import fuse.runs.inference as inference
    import fuse.training.recipe as recipe
    from fuse.device import autocast_for
    from fuse.robustness import without_modalities

    @torch.no_grad()
    def infer(model, data, indices, batch_size, device, amp=False, with_labels=True, drop=()):
        autocast, _ = autocast_for(torch.device(device), amp)
        model.eval()
        n = len(indices)
        rows, probs = np.empty(n, dtype=np.int64), np.empty((n, data.n_classes), dtype=np.float32)
        gates, names, loss_sum, loss_n, at = None, (), 0.0, 0, 0
        for batch in data.batches(np.asarray(indices), batch_size, shuffle=False, bucket=True, with_labels=with_labels):
            batch = without_modalities(batch, drop).to(device)
            with autocast():
                out = model(batch)
            b, logits = batch.size, out.logits.float()
            probs[at : at + b] = (torch.softmax(logits, -1) if data.spec.task == "single_label" else torch.sigmoid(logits)).cpu().numpy()
            rows[at : at + b] = batch.index.cpu().numpy()
            if out.gate_weights is not None:
                gates = np.empty((n, out.gate_weights.shape[1]), dtype=np.float32) if gates is None else gates
                gates[at : at + b], names = out.gate_weights.float().cpu().numpy(), out.modality_names
            if out.loss is not None and torch.isfinite(out.loss):
                loss_sum, loss_n = loss_sum + float(out.loss) * b, loss_n + b
            at += b
        order = np.argsort(rows[:at], kind="stable")
        gate_weights = gates[:at][order] if gates is not None else None
        return inference.Predictions(rows[:at][order], probs[:at][order], gate_weights, tuple(names), loss_sum / loss_n if loss_n else None)

    inference.infer = recipe.infer = infer


def _trim_after(cls, name: str, trim) -> None:
    original = getattr(cls, name)

    def patched(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        finally:
            trim(0)

    setattr(cls, name, patched)


def apply_variant(variant: str) -> None:
    if variant == "default":
        return
    import fuse.data.loader as loader
    import fuse.training.recipe as recipe

    _infer_preallocated()
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    if variant == "trim_phases":
        for name in ("_setup_data", "train_epoch", "evaluate"):
            _trim_after(recipe.TrainingRecipe, name, trim)
    elif variant == "trim_pools":
        pool_frames = loader.FeatureData._pool_frames

        def trimmed_pools(self, pools):
            for item in pool_frames(self, pools):
                trim(0)
                yield item

        loader.FeatureData._pool_frames = trimmed_pools
    elif variant == "trim_batches":
        assemble = loader.FeatureData._assemble

        def trimmed_assemble(self, *args, **kwargs):
            trim(0)
            return assemble(self, *args, **kwargs)

        loader.FeatureData._assemble = trimmed_assemble


def child(args) -> None:
    from bench.train import memory_status
    from fuse.training import TrainOptions, train
    import fuse.models  # noqa: F401  (every import the run needs, before the baseline)

    apply_variant(args.variant)
    baseline = memory_status()["VmRSS"]
    options = TrainOptions(
        cache=args.cache, model="late", out=args.run_dir, epochs=1, batch_size=32, lr=1e-4,
        progress=False, tensorboard=False, metadata=[], block_mb=4.0,
    )  # fmt: skip
    started = time.perf_counter()
    train(options, echo=lambda *a: None)
    seconds = time.perf_counter() - started
    peak = memory_status()["VmHWM"]
    print(json.dumps({"peak_above_baseline_mb": round(peak - baseline, 1), "run_seconds": round(seconds, 2)}))


def spawn(variant: str, cache: Path, run_dir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_child(__file__, variant, cache, "--run-dir", str(run_dir))


def main() -> None:
    ap = probe_parser(__doc__, ROOT / "bench" / "results" / "memory_probe.json", VARIANTS)
    ap.add_argument("--dialogues", type=int, default=2000, help="dialogues (x10 utterances) of the 1x cache; the 4x has 4 times as many")
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    from bench.provenance import commit_label
    from bench.train import build

    measured_commit = commit_label()
    variants = chosen_variants(args.variants, VARIANTS)
    dims = argparse.Namespace(text_dim=768, audio_dim=64, video_dim=256)  # bench/train.py's feature sets
    work = Path(tempfile.mkdtemp(prefix="emofuse-memory-probe-"))
    started = time.perf_counter()
    results: dict = {v: {"1x": [], "4x": []} for v in variants}
    try:
        caches = {"1x": work / "1x.zarr", "4x": work / "4x.zarr"}
        sizes = {"1x": build(caches["1x"], args.dialogues, dims), "4x": build(caches["4x"], 4 * args.dialogues, dims)}
        for repeat in range(args.repeats):  # variants interleaved, so drift on the machine hits all alike
            for variant in variants:
                for size, cache in caches.items():
                    results[variant][size].append(spawn(variant, cache, work / f"run-{variant}-{size}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def mean(runs, key):
        return sum(r[key] for r in runs) / len(runs)

    summary = {
        v: {
            "runs": r,
            "peak_4x_over_1x": round(mean(r["4x"], "peak_above_baseline_mb") / mean(r["1x"], "peak_above_baseline_mb"), 3),
            "run_seconds_over_default": round(sum(mean(r[s], "run_seconds") for s in r) / sum(mean(results["default"][s], "run_seconds") for s in r), 3)
            if "default" in results else None,
        }
        for v, r in results.items()
    }
    write_report(__file__, args.out, measured_commit, started, {
        "sizes": sizes,
        "model": "late, 1 epoch, batch 32, block_mb 4 (bench/train.py's memory runs)",
        "target": "peak_4x_over_1x <= 1.10",
        "variants": summary,
        "excludes": "cache building, interpreter start-up",
    })
    print(json.dumps({v: {k: s[k] for k in ("peak_4x_over_1x", "run_seconds_over_default")} for v, s in summary.items()}, indent=2))


if __name__ == "__main__":
    main()
