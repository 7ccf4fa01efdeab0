"""`fuse predict`: per-utterance predictions of a trained run, as CSV.

Columns: id, split, prob_<class> for every class, predicted, true, and weight_<modality>
for models with modality gates. Single-label: `predicted`/`true` are class names.
Multi-label: the names of the classes at or above the threshold, joined by ';' (empty when
none). `true` is empty for unlabelled utterances, which are predicted like the rest.
"""
from __future__ import annotations

import csv
from pathlib import Path

import click
import numpy as np

from fuse.cli.common import fail, refuse_run_file


@click.command("predict")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder written by fuse train.")
@click.option("--cache", type=click.Path(), help="Cache to predict [the run's cache].")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV file to write.")
@click.option("--split", default="all", show_default=True, help="all, train, dev or test.")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Multi-label threshold [the run's].")
@click.option("--batch-size", type=click.IntRange(min=1), help="[the run's]")
@click.option("--allow-changed-features", is_flag=True, help="Use the cache although its feature sets changed since training (recorded).")
@click.option("--device", default="auto", show_default=True)
def predict(run_dir, cache, out, split, threshold, batch_size, device, allow_changed_features) -> None:
    """Write per-utterance predictions of a trained run to a CSV file."""
    from cache_schema import CacheError
    from fuse import runs
    from fuse.data import DataError, canonical_split
    from fuse.device import pick_device

    refuse_run_file(Path(out))
    try:
        loaded = runs.load_run(run_dir, cache, device=str(pick_device(device)), allow_changed_features=allow_changed_features)
        data = loaded.data
        if split == "all":
            rows = np.arange(data.n)
        else:
            rows = data.indices(canonical_split(split), labelled=False)
        pred = runs.infer(
            loaded.model, data, rows, batch_size or loaded.options.get("batch_size") or 32, loaded.device,
            bool(loaded.options.get("amp")), with_labels=False,
        )
    except (runs.RunError, DataError, CacheError, ValueError) as exc:
        fail(str(exc))
    if loaded.data.accepted_feature_changes:
        click.echo("warning: changed features used: " + "; ".join(loaded.data.accepted_feature_changes), err=True)
    names = data.spec.class_names
    threshold = threshold if threshold is not None else loaded.threshold
    ids, splits = data.columns["id"], data.columns["split"]
    header = ["id", "split", *[f"prob_{c}" for c in names], "predicted", "true"]
    if pred.gate_weights is not None:
        header += [f"weight_{m}" for m in pred.modality_names]
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for k, row in enumerate(pred.indices):
            probs = pred.probabilities[k]
            if data.spec.task == "single_label":
                predicted = names[int(probs.argmax())]
                true = names[int(data.labels[row])] if data.labelled[row] else ""
            else:
                predicted = ";".join(c for c, p in zip(names, probs) if p >= threshold)
                true = ";".join(c for c, y in zip(names, data.labels[row]) if y > 0) if data.labelled[row] else ""
            line = [ids[row], splits[row], *[f"{p:.6f}" for p in probs], predicted, true]
            if pred.gate_weights is not None:
                line += [f"{w:.6f}" for w in pred.gate_weights[k]]
            writer.writerow(line)
    tmp.replace(out)
    click.echo(f"wrote {len(pred.indices)} predictions to {out}")
