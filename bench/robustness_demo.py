"""Missing-modality robustness on the demo: cmaf trained with and without modality dropout,
scored on every non-empty subset of its three modalities.

    snakemake extract --cores 2                      # the demo cache, data/feats.zarr
    python bench/robustness_demo.py [--cache data/feats.zarr] [--seeds 0,1,2] [--p 0.3] [--jobs 2]

For each modality-dropout probability (0 and --p) and seed, `fuse train --cache data/feats.zarr
--seed S --modality-dropout P` (the demo's default model, cmaf, with its default training: the
epochs cap and early stopping of `fuse.options`), then `fuse robustness` on the test split:
the modalities left out of a subset are treated as missing for every test utterance, through the
same mask/`present` path as real missing data. Runs go to runs/robustness_demo/ (not kept in git).

Writes bench/results/robustness_demo.json: per run the table and its best epoch and stop
reason; per (p, subset) the mean and sample standard deviation (ddof=1) over the seeds, and
the markdown table that docs/demo.md shows. Excludes extraction time; the seconds are wall
time of each run's training + robustness scoring (machine shared with other jobs).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench.provenance
RESULT = ROOT / "bench" / "results" / "robustness_demo.json"


def train_and_score(cache: str, out: str, seed: int, p: float) -> dict:
    """One run (its own process, one thread): train, then the robustness table on test."""
    import torch

    torch.set_num_threads(1)
    from fuse.robustness import robustness_table
    from fuse.runs import load_run
    from fuse.training import TrainOptions, train

    started = time.perf_counter()
    options = TrainOptions(cache=cache, out=out, seed=seed, modality_dropout=p, progress=False, tensorboard=False, overwrite=True, device="cpu")
    result = train(options, echo=lambda *_: None)
    table = robustness_table(load_run(out, device="cpu"), "test")
    return {
        "seed": seed,
        "modality_dropout": p,
        "run": out,
        "best_epoch": result.metrics["best_epoch"],
        "epochs_trained": len(result.history),
        "stop_reason": result.metrics["stop_reason"],
        "dev_weighted_f1": result.metrics["splits"]["dev"]["weighted_f1"],
        "table": table,
        "seconds": round(time.perf_counter() - started, 1),
    }


def summarise(runs: list[dict], probabilities: list[float]) -> tuple[list[dict], str]:
    metrics = runs[0]["table"]["metrics"]
    subsets = [tuple(e["kept"]) for e in runs[0]["table"]["subsets"]]
    rows = []
    for kept in subsets:
        row = {"kept": list(kept)}
        for p in probabilities:
            for metric in metrics:
                values = [next(e[metric] for e in r["table"]["subsets"] if tuple(e["kept"]) == kept) for r in runs if r["modality_dropout"] == p]
                row[f"p={p}"] = row.get(f"p={p}", {})
                row[f"p={p}"][metric] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "values": values}
        rows.append(row)
    headline = metrics[0]
    header = "| modalities kept | " + " | ".join(f"{headline}, modality dropout {p}" for p in probabilities) + " | difference |"
    lines = [header, "| --- | " + " | ".join("---" for _ in probabilities) + " | --- |"]
    for row in rows:
        cells = [f"{row[f'p={p}'][headline]['mean']:.3f} ± {row[f'p={p}'][headline]['std']:.3f}" for p in probabilities]
        difference = row[f"p={probabilities[-1]}"][headline]["mean"] - row[f"p={probabilities[0]}"][headline]["mean"]
        name = " + ".join(row["kept"])
        name = f"**{name}**" if len(row["kept"]) == len(subsets[0]) else name
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {difference:+.3f} |")
    return rows, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default="data/feats.zarr")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--p", type=float, default=0.3, help="modality dropout of the second arm")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once (one thread each)")
    parser.add_argument("--runs", default="runs/robustness_demo")
    args = parser.parse_args()
    from bench.provenance import UNCOMMITTED, commit_label

    label = commit_label()
    commit, dirty = label.removesuffix(UNCOMMITTED), label.endswith(UNCOMMITTED)
    seeds = [int(s) for s in args.seeds.split(",")]
    probabilities = [0.0, args.p]
    cache = str(Path(args.cache).resolve())
    jobs = [(cache, str(Path(args.runs) / f"p{p}-seed{s}"), s, p) for p in probabilities for s in seeds]
    load_before = os.getloadavg()
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(train_and_score, *zip(*jobs)))
    for r in runs:
        print(f"p={r['modality_dropout']} seed {r['seed']}: best epoch {r['best_epoch']} of {r['epochs_trained']} ({r['stop_reason']}), {r['seconds']} s", flush=True)
    rows, markdown = summarise(runs, probabilities)
    from fuse.jsonio import write_json

    write_json(
        RESULT,
        {
            "command": "python " + " ".join(["bench/robustness_demo.py", *sys.argv[1:]]),
            "commit": label,
            "machine": {
                "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
                "platform": platform.platform(), "load_average_before": [round(x, 1) for x in load_before],
                "note": "shared with other jobs (loaded); the seconds are not a speed measurement",
            },  # fmt: skip
            "cache": args.cache,
            "model": "cmaf (the demo's default) with its default training options",
            "split": "test",
            "n_test_utterances": runs[0]["table"]["n"],
            "seeds": seeds,
            "modality_dropout": probabilities,
            "what": "test metrics with the modalities not kept treated as missing for every utterance (fuse robustness); "
            "mean and sample std (ddof=1) over the seeds; excludes extraction",
            "summary": rows,
            "markdown": markdown,
            "runs": runs,
            "wall_seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(markdown)
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
