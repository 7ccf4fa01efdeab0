"""Several seeds of one configuration: one run each, then mean ± std of every headline metric."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fuse import metrics as M
from fuse.jsonio import write_json
from fuse.options import TrainOptions, resolve_options
from fuse.runs.folders import default_run_dir


def train_seeds(options: TrainOptions, seeds: list[int], *, resume: bool = False, echo=print) -> dict[str, Any]:
    """One run per seed in <out>/seed-<s>; returns and writes <out>/seeds.json (mean ± std)."""
    from fuse.training import train

    base = resolve_options(options) if not resume else options
    out = Path(base.out or default_run_dir(base.model, latest=True))
    results = {}
    for seed in seeds:
        echo(f"=== seed {seed} ===")
        results[seed] = train(base.replace(seed=seed, out=str(out / f"seed-{seed}")), resume=resume, echo=echo).metrics
    summary = summarise_seeds(results)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "seeds.json", summary)
    echo(format_seed_summary(summary))
    return summary


def summarise_seeds(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """mean and sample std (ddof=1; 0 for one seed) of every headline metric per split."""
    first = next(iter(results.values()))
    task = first["task"]
    summary: dict[str, Any] = {"seeds": list(results), "task": task, "splits": {}}
    for split in first["splits"]:
        stats = {}
        for name in M.headline(task):
            values = np.array([r["splits"][split][name] for r in results.values()], dtype=np.float64)
            stats[name] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "values": values.tolist(),
            }
        summary["splits"][split] = stats
    return summary


def format_seed_summary(summary: dict[str, Any]) -> str:
    splits = list(summary["splits"])
    names = M.headline(summary["task"])
    width = max(map(len, names)) + 2
    lines = [f"{len(summary['seeds'])} seeds {summary['seeds']}: mean ± std", "metric".ljust(width) + "".join(s.rjust(20) for s in splits)]
    for name in names:
        cells = "".join(f"{summary['splits'][s][name]['mean']:.4f} ± {summary['splits'][s][name]['std']:.4f}".rjust(20) for s in splits)
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)
