"""CMU-MOSEI .csd path benchmark (SYNTHETIC values): extraction, carat and late, end to end.

    python benchmarks/mini_mosei/run.py [--data ../shared/data/mini_mosei] [--seeds 1,2,3] [--fresh]

1. Extraction: `snakemake extract --cores 2` on config.yaml's `extract` block: the GloVe,
   COVAREP and FACET computational sequences cut to every labelled segment of the labels file,
   into benchmarks/mini_mosei/work/mosei.zarr (reused when up to date; `--fresh` redoes it).
   Cache and runs are reused only while the code that made them is unchanged
   (benchmarks.common.reuse_or_clear; results.json's `work_reuse` says what was cleared and why).
2. Training: config.yaml's `train` runs x --seeds as one `fuse sweep` on the cache's own
   splits (the adapter's hash split of the video ids), multi-label (an emotion is present when
   its intensity is > 0), early stopping on micro F1 over the dev split.
3. results.json beside this file: the multi-label metrics (sample accuracy, micro/macro F1,
   Hamming loss) on test and dev, mean ± std over seeds, timings and machine.

The .csd files in ../shared/data/mini_mosei hold random values with a weak label-dependent
shift: the figures prove that the path works and how fast it runs, not how accurate the models
are on CMU-MOSEI.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine, reuse_or_clear, run_extraction, run_record  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mini_mosei"
REPORTED = ("micro_f1", "macro_f1", "sample_accuracy", "hamming_loss")


def summary(values: list[float]) -> str:
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return f"{array.mean():.4f} ± {std:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the CMU_MOSEI_*.csd files")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--jobs", type=int, default=1, help="sweep worker processes")
    parser.add_argument("--fresh", action="store_true", help="delete work/ first (re-extract, retrain)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not (args.data / "CMU_MOSEI_Labels.csd").is_file():
        raise SystemExit(f"CMU_MOSEI_Labels.csd not found in {args.data} (give --data)")
    config = yaml.safe_load((HERE / "config.yaml").read_text())
    work = HERE / "work"
    if args.fresh and work.exists():
        shutil.rmtree(work)
    provenance = run_record()
    reuse = reuse_or_clear(work, provenance, trained=[work / "sweep"], benchmark=HERE)

    started = time.perf_counter()
    extraction = run_extraction(config, args.data, work, "mosei.zarr")
    print(f"extraction: {extraction['wall_seconds']} s ({'ran' if extraction['ran'] else 'cache up to date'})", flush=True)

    from cache_schema import open_cache
    from fuse.sweep import expand, run_sweep

    cache = open_cache(extraction["cache"])
    split_counts = {str(s): int(c) for s, c in zip(*np.unique(cache.column("split"), return_counts=True))}
    entries = [{**entry, "seed": seed} for entry in config["train"]["runs"] for seed in seeds]
    plan = expand({"base": config["train"]["base"], "runs": entries}, source=str(HERE / "config.yaml"))
    train_started = time.perf_counter()
    result = run_sweep(plan, extraction["cache"], work / "sweep", jobs=args.jobs)
    train_seconds = time.perf_counter() - train_started
    if result.failed:
        raise SystemExit(f"runs failed: {result.failed}")

    record = json.loads((work / "sweep" / "sweep.json").read_text())
    collected: dict[str, dict] = {}
    for entry, run in zip(entries, plan.runs):
        metrics = json.loads((work / "sweep" / run.name / "metrics.json").read_text())
        c = collected.setdefault(entry["model"], {"test": {m: [] for m in REPORTED}, "dev": {m: [] for m in REPORTED}, "seconds": [], "threshold": metrics["threshold"]})
        for split in ("test", "dev"):
            for m in REPORTED:
                c[split][m].append(metrics["splits"][split][m])
        c["seconds"].append(record["runs"][run.name]["seconds"])
    results = {
        model: {
            **{f"{m} (test)": summary(c["test"][m]) for m in REPORTED},
            **{f"{m} (dev)": summary(c["dev"][m]) for m in ("micro_f1", "macro_f1")},
            "decision_threshold": c["threshold"],
            "train_seconds_per_run": round(float(np.mean(c["seconds"])), 1),
        }
        for model, c in collected.items()
    }
    out = {
        **provenance,
        "work_reuse": reuse,
        "machine": machine(),
        "data": (
            f"SYNTHETIC feature values in CMU-MOSEI-shaped .csd files written by the CMU-MultimodalSDK ({args.data}); "
            f"{extraction['n_utterances']} labelled segments, splits {split_counts}"
        ),
        "note": "values are synthetic: this proves the .csd path and measures its speed, not accuracy",
        "protocol": f"multi-label (present = intensity > 0), early stopping on dev micro F1, mean ± sample std over seeds {seeds}",
        "results": results,
        "timings_seconds": {
            "extraction_wall": extraction["wall_seconds"],
            "extraction_ran": extraction["ran"],
            "extraction_per_feature_set": extraction["encode_seconds"],
            "training_sweep_wall": round(train_seconds, 1),
            "total_wall": round(time.perf_counter() - started, 1),
        },
    }
    (HERE / "results.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(out["results"], indent=1, ensure_ascii=False))
    print(f"wrote {HERE / 'results.json'}")


if __name__ == "__main__":
    main()
