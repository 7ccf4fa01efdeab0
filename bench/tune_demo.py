"""`fuse tune` on the demo cache: does a >= 20-trial search beat the default config on dev?

    python bench/tune_demo.py [--cache data/feats.zarr] [--trials 20] [--seeds 0,1,2] [--out runs/tune_demo]

Runs `nice fuse tune --space bench/tune_demo_space.yaml` (TPE, median pruning, SQLite study in
the tune folder), which re-runs the best trial and the default config (`fuse train --cache
data/feats.zarr`'s options: cmaf with seed 1 Table 3's hyperparameters) with the same seeds.
Selection uses the dev split only; the test metric of both is recorded for information and
played no part in choosing. Writes bench/results/tune_demo.json: commit, machine, command,
trial states, best vs default dev (mean ± std over seeds) and test, wall time.
Excludes: building the demo cache (`snakemake extract --cores 2`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench.provenance
RESULT = ROOT / "bench" / "results" / "tune_demo.json"
SPACE = ROOT / "bench" / "tune_demo_space.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=str(ROOT / "data" / "feats.zarr"))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=str(ROOT / "runs" / "tune_demo"))
    parser.add_argument("--fresh", action="store_true", help="delete --out first (else the study continues)")
    args = parser.parse_args()
    if not Path(args.cache).exists():
        raise SystemExit(f"{args.cache}: no demo cache; build it with `snakemake extract --cores 2`")
    from bench.provenance import UNCOMMITTED, commit_label

    label = commit_label()
    commit, dirty = label.removesuffix(UNCOMMITTED), label.endswith(UNCOMMITTED)
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    fuse = shutil.which("fuse") or str(Path(sys.executable).with_name("fuse"))
    command = ["nice", fuse, "tune", "--cache", args.cache, "--space", str(SPACE), "--out", str(out), "--trials", str(args.trials), "--seeds", args.seeds]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    tune = json.loads((out / "tune.json").read_text())
    metric = tune["metric"]

    def stats(summary, split):
        return {n: tune_round(v) for n, v in summary["splits"][split].items()}

    best, default = tune["best"], tune["default"]
    delta = best["splits"]["dev"][metric]["mean"] - default["splits"]["dev"][metric]["mean"]
    result = {
        "what": "fuse tune on the demo cache: best trial vs the default config (fuse train's options), same seeds; selection on dev only",
        "commit": commit,
        "dirty_worktree": dirty,
        "machine": {
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "note": "shared machine: 2 cores used by several sessions at once (run under nice); timings are loaded",
        },  # fmt: skip
        "command": " ".join(command),
        "cache": args.cache,
        "space": tune["space"],
        "trials_requested": args.trials,
        "trial_states": tune["trial_states"],
        "best_trial": tune["best_trial"],
        "seeds": best["seeds"],
        "metric": metric,
        "dev": {"best": stats(best, "dev")[metric], "default": stats(default, "dev")[metric], "best_minus_default": round(delta, 4)},
        "test_for_information_only": {"best": stats(best, "test")[metric], "default": stats(default, "test")[metric]},
        "beats_default_on_dev": delta > 0,
        "comparison": tune["comparison"],
        "wall_seconds": seconds,
        "excludes": "building the demo cache (snakemake extract); the tune's wall time includes the seed re-runs of best and default",
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def tune_round(value):
    return {"mean": round(value["mean"], 4), "std": round(value["std"], 4)}


if __name__ == "__main__":
    main()
