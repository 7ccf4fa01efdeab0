"""Stage-2 equivalence check: the numbers a refactor of `fuse/` must leave unchanged.

    python bench/stage2_equivalence.py --cache data/feats.zarr --out /tmp/eq-before.json

Runs, in the current tree, on an already extracted demo cache (`snakemake extract --cores 2`):

1. `fuse train --cache CACHE` (the second command of `make demo`): its printed metric table;
2. `fuse ablate --cache CACHE --seeds 0,1,2`: every arm's per-seed dev/test metrics;
3. a 3-config `fuse sweep` (late, agf, cmaf with one changed hyperparameter each);
4. `python benchmarks/mini_mosei/run.py` (carat and late on the .csd path, 3 seeds);
5. loader variants (`fuse train`): late with `--in-memory` and speaker normalisation, cmaf
   with truncated audio, small streaming blocks (several pools) and `--drop-last`; each
   run's per-epoch train/dev losses are kept as well as its metrics.

`--parts` picks a subset (e.g. `--parts train,sweep,variants` on a loaded machine).

and writes every metric (no timings) to --out, so two trees can be compared with `diff`. The
runs are deterministic (fixed seeds, deterministic algorithms), so a behaviour-preserving
change gives an identical file. The stdout of each command is kept beside the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "late-in-memory-speaker": ["--model", "late", "--epochs", "4", "--in-memory", "--normalisation", "speaker"],
    "cmaf-small-blocks": ["--model", "cmaf", "--epochs", "3", "--max-len", "audio=40", "--block-rows", "300", "--drop-last"],
}
PARTS = ("train", "ablate", "sweep", "mosei", "variants")
GRID = {
    "base": {"epochs": 6, "normalisation": "global"},
    "runs": [{"model": "late", "lr": 0.002}, {"model": "agf", "batch_size": 16}, {"model": "cmaf", "weight_decay": 0.001}],
}


def run(command: list[str], log: Path) -> str:
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}); see {log}")
    return result.stdout


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["splits"]


def losses_of(run_dir: Path) -> list[dict]:
    """Per-epoch losses and dev metrics of log.csv (timings left out)."""
    import csv

    with open(run_dir / "log.csv") as fh:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(fh)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--skip-mosei", action="store_true")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = parser.parse_args()
    parts = set(args.parts.split(",")) - ({"mosei"} if args.skip_mosei else set())
    fuse = str(Path(sys.executable).parent / "fuse")
    work = Path(tempfile.mkdtemp(prefix="stage2-eq-"))
    logs = args.out.with_suffix(".logs")
    logs.mkdir(parents=True, exist_ok=True)
    cache = str(args.cache.resolve())
    record: dict = {"command": " ".join(sys.argv)}

    if "train" in parts:
        stdout = run([fuse, "train", "--cache", cache, "--out", str(work / "train"), "--no-progress"], logs / "train.txt")
        table = stdout[stdout.index("metric "):stdout.index("metrics: ")]
        record["train"] = {"table": table.splitlines(), "metrics": metrics_of(work / "train")}

    if "ablate" in parts:
        run([fuse, "ablate", "--cache", cache, "--seeds", "0,1,2", "--out", str(work / "ablate")], logs / "ablate.txt")
        record["ablate"] = {
            d.name: metrics_of(d) for d in sorted((work / "ablate").rglob("*")) if (d / "metrics.json").is_file()
        }

    if "sweep" in parts:
        grid = work / "grid.yaml"
        grid.write_text(yaml.safe_dump(GRID))
        run([fuse, "sweep", "--cache", cache, "--grid", str(grid), "--out", str(work / "sweep")], logs / "sweep.txt")
        record["sweep"] = {
            "leaderboard": (work / "sweep" / "leaderboard.csv").read_text().splitlines(),
            "runs": {d.name: metrics_of(d) for d in sorted((work / "sweep").iterdir()) if (d / "metrics.json").is_file()},
        }

    if "variants" in parts:
        record["variants"] = {}
        for name, flags in VARIANTS.items():
            out = work / "variants" / name
            run([fuse, "train", "--cache", cache, "--out", str(out), "--no-progress", *flags], logs / f"variant-{name}.txt")
            record["variants"][name] = {"flags": flags, "metrics": metrics_of(out), "epochs": losses_of(out)}

    if "mosei" in parts:
        run([sys.executable, "benchmarks/mini_mosei/run.py"], logs / "mini_mosei.txt")
        results = json.loads((ROOT / "benchmarks" / "mini_mosei" / "results.json").read_text())["results"]
        record["mini_mosei"] = {m: {k: v for k, v in r.items() if "seconds" not in k} for m, r in results.items()}

    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} (logs in {logs}, runs in {work})")


if __name__ == "__main__":
    main()
