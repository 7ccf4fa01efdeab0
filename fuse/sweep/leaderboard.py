"""Leaderboards of a sweep: `leaderboard.csv` (every headline metric of dev and test) and
`leaderboard.md`, ranked by the chosen dev metric (default: the runs' early-stopping metric),
ties broken by name, failed runs listed after. When runs differ only by `seed`,
`leaderboard_seeds.{csv,md}` give mean ± std over seeds per configuration. Timings live in
`sweep.json`, so two sweeps of the same grid in deterministic mode write identical
leaderboards whatever `jobs` was.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from fuse import metrics as M
from fuse.jsonio import read_json
from fuse.runs.folders import METRICS_FILE
from fuse.sweep.grid import SweepError, SweepPlan, _format_value

RUN_RECORD = "sweep_run.json"




def leaderboard(plan: SweepPlan, out: str | Path, metric: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Rows (one per planned run) sorted by dev `metric`; unfinished/failed runs last."""

    out = Path(out)
    rows, tasks, own_metrics = [], set(), set()
    for run in plan.runs:
        run_dir = out / run.name
        row: dict[str, Any] = {"run": run.name, "label": run.label, "status": "not run", "metrics": None}
        if (run_dir / METRICS_FILE).is_file():
            metrics = read_json(run_dir / METRICS_FILE)
            row.update(status="finished", metrics=metrics)
            tasks.add(metrics["task"])
            own_metrics.add(metrics["metric"])
        elif (run_dir / RUN_RECORD).is_file():
            record = read_json(run_dir / RUN_RECORD)
            row.update(status=record.get("status", "unknown"), error=record.get("error"))
        rows.append(row)
    if len(tasks) > 1:
        raise SweepError(f"{out}: runs of different tasks ({', '.join(sorted(tasks))}) cannot share one leaderboard")
    task = next(iter(tasks), None)
    if metric is None:
        metric = own_metrics.pop() if len(own_metrics) == 1 else (M.DEFAULT_METRIC[task] if task else None)
    if task is not None and metric not in M.headline(task):
        raise SweepError(f"--metric {metric!r} is not a {task} metric (choose from {', '.join(M.headline(task))})")
    sign = 1.0 if metric in M.LOWER_IS_BETTER else -1.0
    finished = [r for r in rows if r["status"] == "finished"]
    others = [r for r in rows if r["status"] != "finished"]
    finished.sort(key=lambda r: (sign * r["metrics"]["splits"]["dev"][metric], r["run"]))
    for rank, row in enumerate(finished, 1):
        row["rank"] = rank
    return finished + others, metric


def _label_columns(plan: SweepPlan) -> list[str]:
    columns: list[str] = []
    for run in plan.runs:
        columns.extend(k for k in run.label if k not in columns)
    return columns


def _fmt(value: Any) -> str:
    """A metric: 4 decimals."""
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def _fmt_option(value: Any) -> str:
    """An option value as written in names (0.0003, 1e-05, true); blank when unset."""
    return "" if value is None else _format_value(value)


def write_leaderboards(plan: SweepPlan, out: str | Path, board: list[dict[str, Any]], metric: str | None, cache_path: Path | None = None) -> list[Path]:
    """leaderboard.csv/.md, and leaderboard_seeds.csv/.md when runs differ only by seed."""

    out = Path(out)
    label_columns = _label_columns(plan)
    finished = [r for r in board if r["status"] == "finished"]
    task = finished[0]["metrics"]["task"] if finished else None
    names = list(M.headline(task)) if task else []
    splits = [s for s in ("dev", "test") if any(s in r["metrics"]["splits"] for r in finished)]

    # CSV: everything.
    header = ["rank", "run", *label_columns, "status", *(f"{s}_{n}" for s in splits for n in names), "best_epoch", "stop_reason"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in board:
        m = row["metrics"] or {}
        values = [row.get("rank", ""), row["run"], *(_fmt_option(row["label"].get(c)) for c in label_columns), row["status"]]
        values += [_fmt(m.get("splits", {}).get(s, {}).get(n)) for s in splits for n in names]
        values += [m.get("best_epoch", ""), m.get("stop_reason", row.get("error") or "")]
        writer.writerow(values)
    paths = [out / "leaderboard.csv"]
    paths[0].write_text(buffer.getvalue())

    # Markdown: the ranking metric and two more, dev and test side by side.
    shown = [metric] + [n for n in _EXTRA_SHOWN.get(task, ()) if n != metric][:2] if metric else []
    lines = [
        f"# Sweep leaderboard ({out.name})",
        "",
        f"{len(plan.runs)} runs from `{Path(plan.source).name}`"
        + (f" on `{cache_path}`" if cache_path else "")
        + (f"; ranked by dev {metric} ({'lower' if metric in M.LOWER_IS_BETTER else 'higher'} is better)" if metric else "")
        + (", test beside" if "test" in splits else "")
        + ".",
        "",
    ]
    cols = ["rank", "run", *label_columns, *(f"{s} {n}" for n in shown for s in splits), "best epoch"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in finished:
        m = row["metrics"]
        cells = [str(row["rank"]), f"`{row['run']}`", *(_fmt_option(row["label"].get(c)) for c in label_columns)]
        cells += [_fmt(m["splits"].get(s, {}).get(n)) for n in shown for s in splits]
        cells.append(str(m.get("best_epoch", "")))
        lines.append("| " + " | ".join(cells) + " |")
    unfinished = [r for r in board if r["status"] != "finished"]
    if unfinished:
        lines += ["", "Not finished:", ""]
        lines += [f"- `{r['run']}`: {r['status']}" + (f" ({r['error']})" if r.get("error") else "") for r in unfinished]
    paths.append(out / "leaderboard.md")
    paths[1].write_text("\n".join(lines) + "\n")

    seeds = seed_groups(plan, board, metric)
    if seeds:
        paths += _write_seed_tables(out, seeds, metric, splits, names, [c for c in label_columns if c != "seed"])
    return paths


_EXTRA_SHOWN = {"single_label": ("accuracy", "macro_f1", "uar"), "multi_label": ("micro_f1", "macro_f1", "sample_accuracy")}


def seed_groups(plan: SweepPlan, board: list[dict[str, Any]], metric: str | None) -> list[dict[str, Any]]:
    """Finished runs grouped by their options without `seed` (only when some group has > 1)."""
    from fuse.training.seeds import summarise_seeds

    if metric is None:
        return []
    by_name = plan.by_name()
    groups: dict[str, dict[str, Any]] = {}
    for row in board:
        if row["status"] != "finished":
            continue
        run = by_name[row["run"]]
        options = {k: v for k, v in run.options.items() if k != "seed"}
        key = json.dumps(options, sort_keys=True, default=str)
        group = groups.setdefault(key, {"label": {k: v for k, v in run.label.items() if k != "seed"}, "results": {}, "runs": []})
        group["results"][run.options.get("seed", 0)] = row["metrics"]
        group["runs"].append(run.name)
    if not any(len(g["results"]) > 1 for g in groups.values()):
        return []
    sign = 1.0 if metric in M.LOWER_IS_BETTER else -1.0
    out = []
    for group in groups.values():
        group["summary"] = summarise_seeds(group["results"])
        out.append(group)
    out.sort(key=lambda g: (sign * g["summary"]["splits"]["dev"][metric]["mean"], g["runs"][0]))
    return out


def _write_seed_tables(out: Path, groups, metric: str, splits, names, label_columns) -> list[Path]:
    header = ["rank", *label_columns, "seeds", *(f"{s}_{n}_{stat}" for s in splits for n in names for stat in ("mean", "std"))]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for rank, g in enumerate(groups, 1):
        stats = g["summary"]["splits"]
        row = [rank, *(_fmt_option(g["label"].get(c)) for c in label_columns), " ".join(map(str, g["summary"]["seeds"]))]
        row += [_fmt(stats.get(s, {}).get(n, {}).get(stat)) for s in splits for n in names for stat in ("mean", "std")]
        writer.writerow(row)
    (out / "leaderboard_seeds.csv").write_text(buffer.getvalue())
    cols = ["rank", *label_columns, "seeds", *(f"{s} {metric}" for s in splits)]
    lines = [f"# Mean ± std over seeds ({out.name}), ranked by dev {metric}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rank, g in enumerate(groups, 1):
        stats = g["summary"]["splits"]
        cells = [str(rank), *(_fmt_option(g["label"].get(c)) for c in label_columns), str(len(g["summary"]["seeds"]))]
        cells += [f"{stats[s][metric]['mean']:.4f} ± {stats[s][metric]['std']:.4f}" for s in splits]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "leaderboard_seeds.md").write_text("\n".join(lines) + "\n")
    return [out / "leaderboard_seeds.csv", out / "leaderboard_seeds.md"]


