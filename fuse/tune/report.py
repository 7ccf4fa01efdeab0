"""What a study leaves in the tune folder: leaderboard.csv/.md and Optuna's standard plots.

The leaderboard ranks finished trials by their dev metric (the study's objective), then lists
pruned and failed ones; it shows dev metrics only, since trials are selected on dev and the
test split is reported for the best configuration's re-run alone. Plots come from
`optuna.visualization.matplotlib`: optimisation history, parameter importances (fANOVA; it
needs two finished trials that differ) and the per-epoch dev curves the pruner saw.
"""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

from fuse.sweep.leaderboard import _fmt, _fmt_option

PLOTS = {
    "optimization_history.png": "plot_optimization_history",
    "param_importances.png": "plot_param_importances",
    "intermediate_values.png": "plot_intermediate_values",
}


def ranked_trials(study) -> list:
    from optuna.trial import TrialState

    sign = -1.0 if study.direction.name == "MAXIMIZE" else 1.0
    done = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: (sign * t.value, t.number))
    order = {TrialState.PRUNED: 0, TrialState.RUNNING: 1, TrialState.WAITING: 2, TrialState.FAIL: 3}
    others = sorted((t for t in study.trials if t.state != TrialState.COMPLETE), key=lambda t: (order.get(t.state, 4), t.number))
    return done + others


def write_leaderboard(study, out: Path, metric: str) -> list[Path]:
    trials = ranked_trials(study)
    params = []
    for t in trials:
        params.extend(k for k in t.params if k not in params)
    dev_names: list[str] = []
    for t in trials:
        dev_names.extend(k for k in t.user_attrs.get("dev", {}) if k not in dev_names)
    header = ["rank", "trial", "state", *params, f"dev_{metric}", *(f"dev_{n}" for n in dev_names if n != metric), "best_epoch", "epochs", "seconds", "run", "note"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    rank = 0
    for t in trials:
        complete = t.state.name == "COMPLETE"
        rank += complete
        attrs = t.user_attrs
        retry_of = t.system_attrs.get("failed_trial", attrs.get("retry_of"))
        note = attrs.get("error") or (f"retry of trial {retry_of}" if retry_of is not None else "")
        writer.writerow(
            [rank if complete else "", t.number, t.state.name.lower(), *(_fmt_option(t.params.get(p)) for p in params)]
            + [_fmt(t.value) if complete else ""]
            + [_fmt(attrs.get("dev", {}).get(n)) for n in dev_names if n != metric]
            + [attrs.get("best_epoch", ""), attrs.get("epochs", ""), attrs.get("seconds", ""), attrs.get("run", ""), note]
        )
    paths = [out / "leaderboard.csv"]
    paths[0].write_text(buffer.getvalue())

    counts = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    lines = [
        f"# Tuning leaderboard ({study.study_name})",
        "",
        f"{len(trials)} trials ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}), ranked by dev {metric} "
        f"({'higher' if study.direction.name == 'MAXIMIZE' else 'lower'} is better). Dev only: the test split is not used to select.",
        "",
    ]
    cols = ["rank", "trial", *params, f"dev {metric}", "best epoch", "epochs"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rank = 0
    for t in trials:
        if t.state.name != "COMPLETE":
            continue
        rank += 1
        cells = [str(rank), str(t.number), *(_fmt_option(t.params.get(p)) for p in params), _fmt(t.value)]
        cells += [str(t.user_attrs.get("best_epoch", "")), str(t.user_attrs.get("epochs", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    others = [t for t in trials if t.state.name != "COMPLETE"]
    if others:
        lines += ["", "Not completed:", ""]
        for t in others:
            detail = t.user_attrs.get("error") or (f"after epoch {t.user_attrs['epochs']}" if "epochs" in t.user_attrs else "")
            lines.append(f"- trial {t.number}: {t.state.name.lower()}" + (f" ({detail})" if detail else ""))
    paths.append(out / "leaderboard.md")
    paths[1].write_text("\n".join(lines) + "\n")
    return paths


def write_plots(study, out: Path, metric: str) -> tuple[list[Path], dict[str, str]]:
    """Optuna's matplotlib plots as PNG; (written, {file: why it was not drawn})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as ovm

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    written, skipped = [], {}
    for name, function in PLOTS.items():
        if name == "param_importances.png" and (len(complete) < 2 or len({str(t.params) for t in complete}) < 2):
            skipped[name] = "needs two completed trials with different parameters"
            continue
        if name == "intermediate_values.png" and not any(t.intermediate_values for t in study.trials):
            skipped[name] = "no trial reported a per-epoch value"
            continue
        if name == "optimization_history.png" and not complete:
            skipped[name] = "no completed trial"
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs = {"target_name": f"dev {metric}"} if name != "intermediate_values.png" else {}
            ax = getattr(ovm, function)(study, **kwargs)
        figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        figure.tight_layout()
        figure.savefig(out / name, dpi=120)
        plt.close(figure)
        written.append(out / name)
    return written, skipped


def format_comparison(best: dict[str, Any], default: dict[str, Any] | None, metric: str) -> str:
    """'best trial 0.7432 ± 0.0101 vs default config 0.7232 ± 0.0150 on dev: +0.0200 (beats it)'."""
    b = best["splits"]["dev"][metric]
    text = f"best trial dev {metric} {b['mean']:.4f} ± {b['std']:.4f}"
    if default is None:
        return text
    d = default["splits"]["dev"][metric]
    delta = b["mean"] - d["mean"]
    from fuse import metrics as M

    better = delta < 0 if metric in M.LOWER_IS_BETTER else delta > 0
    verdict = "beats the default config" if better else f"does not beat the default config (short by {abs(delta):.4f})"
    return f"{text} vs default config {d['mean']:.4f} ± {d['std']:.4f} ({len(best['seeds'])} seeds): {delta:+.4f}, {verdict}"
