"""Missing-modality robustness: a trained run scored with modalities treated as absent.

A dropped modality takes the path real missing data takes (`ModalityInput.hidden`): its
values become 0, its mask all False and `present` False for every utterance, and so do its
turns in the dialogue context, exactly what the data layer gives for a cache in which that
modality is missing everywhere. Models never see how an absence came about.

    drop = check_drop(["audio"], run_modalities)        # ValueError (one line) when invalid
    batch = without_modalities(batch, drop)
    table = robustness_table(loaded, "test")            # every non-empty subset kept
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse.batch import Batch, ModalityInput, future_key

# The metrics a robustness table reports per task (the task's headline metric first).
TABLE_METRICS = {"single_label": ("weighted_f1", "accuracy", "uar"), "multi_label": ("micro_f1", "sample_accuracy", "macro_f1")}


def parse_drop(text: str | None) -> tuple[str, ...]:
    """`--drop audio,video` -> ("audio", "video"); empty or None -> ()."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def check_drop(drop: Iterable[str], modalities: Sequence[str]) -> tuple[str, ...]:
    """The modalities to drop, in the run's order; ValueError for unknown names or dropping all."""
    drop = tuple(dict.fromkeys(drop))
    unknown = [m for m in drop if m not in modalities]
    if unknown:
        raise ValueError(f"--drop: {', '.join(map(repr, unknown))} is not a modality of this run (it reads {', '.join(modalities)})")
    if drop and set(drop) == set(modalities):
        raise ValueError(f"--drop: cannot drop every modality of this run ({', '.join(modalities)}); keep at least one")
    return tuple(m for m in modalities if m in drop)


def without_modalities(batch: Batch, drop: Sequence[str]) -> Batch:
    """`batch` with the `drop` modalities missing for every utterance (context turns included)."""
    if not drop:
        return batch
    everyone = torch.ones(batch.size, dtype=torch.bool)
    modalities = {m: (_absent_like(item) if m in drop else item) for m, item in batch.modalities.items()}
    context = batch.context
    if context is not None:
        hidden_keys = {*drop, *(future_key(m) for m in drop)}
        context = {k: (item.hidden(everyone) if k in hidden_keys else item) for k, item in context.items()}
    return dataclasses.replace(batch, modalities=modalities, context=context)


def _absent_like(item: ModalityInput) -> ModalityInput:
    """The modality missing for every utterance, shaped as the data layer pads it (width 1)."""
    batch_size, _, dim = item.values.shape
    return ModalityInput(
        item.values.new_zeros(batch_size, 1, dim), item.mask.new_zeros(batch_size, 1), item.present.new_zeros(batch_size)
    )


def kept_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of `modalities`, largest first, in the run's modality order."""
    return [s for k in range(len(modalities), 0, -1) for s in itertools.combinations(modalities, k)]


def robustness_table(loaded, split: str = "test", batch_size: int | None = None, threshold: float | None = None) -> dict[str, Any]:
    """The run's metrics on `split` for every non-empty subset of its modalities kept."""
    from fuse import metrics as M
    from fuse.runs.inference import infer

    data = loaded.data
    rows = data.indices(split)
    if len(rows) == 0:
        raise ValueError(f"{data.cache.path}: no labelled utterances in split {split!r}")
    modalities = tuple(data.feature_sets)
    task = data.spec.task
    threshold = loaded.threshold if threshold is None else threshold
    batch_size = batch_size or loaded.options.get("batch_size") or 32
    entries = []
    for kept in kept_subsets(modalities):
        dropped = tuple(m for m in modalities if m not in kept)
        pred = infer(loaded.model, data, rows, batch_size, loaded.device, bool(loaded.options.get("amp")), drop=dropped)
        result = M.compute_metrics(task, data.labels[rows], pred.probabilities, data.spec.class_names, threshold)
        entries.append({"kept": list(kept), "dropped": list(dropped), **{k: result[k] for k in TABLE_METRICS[task]}})
    return {
        "run": str(loaded.run_dir),
        "cache": str(data.cache.path),
        "split": split,
        "task": task,
        "n": int(len(rows)),
        "modalities": list(modalities),
        "feature_sets": dict(data.spec.feature_sets),
        "metrics": list(TABLE_METRICS[task]),
        "subsets": entries,
    }


def subset_name(kept: Sequence[str]) -> str:
    return " + ".join(kept)


def table_markdown(table: dict[str, Any]) -> str:
    """The table as markdown: one row per kept subset, one column per metric."""
    metrics = table["metrics"]
    lines = [
        f"{table['split']} split of {table['cache']} ({table['n']} utterances), run {table['run']}",
        "",
        "| modalities kept | " + " | ".join(metrics) + " |",
        "| --- | " + " | ".join("---" for _ in metrics) + " |",
    ]
    for entry in table["subsets"]:
        lines.append(f"| {subset_name(entry['kept'])} | " + " | ".join(f"{entry[m]:.4f}" for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def plot_table(table: dict[str, Any], path: Path) -> Path:
    """A grouped bar chart: one group per kept subset, one bar per metric."""
    from fuse.plots import _save, plt

    metrics, entries = table["metrics"], table["subsets"]
    positions = np.arange(len(entries))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(entries) + 2), 4))
    for k, metric in enumerate(metrics):
        ax.bar(positions + (k - (len(metrics) - 1) / 2) * width, [e[metric] for e in entries], width, label=metric)
    ax.set_xticks(positions, [subset_name(e["kept"]).replace(" + ", "+\n") for e in entries])
    ax.set_ylim(0, 1)
    ax.set_xlabel("modalities kept (the others treated as missing)")
    ax.set_title(f"robustness to missing modalities ({table['split']}, n={table['n']})")
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, path)
