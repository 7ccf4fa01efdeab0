"""What a finished run draws: training curves, confusion matrices, modality weights, one attention map."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def save_plots(run_dir: Path, history, metrics_by_split, predictions_by_split, labels, class_names, task) -> list[str]:
    from fuse import plots

    written = [plots.training_curves(history, run_dir / "training_curves.png")]
    for split, m in metrics_by_split.items():
        written.append(plots.confusion(m, class_names, task, run_dir / f"confusion_{split}.png", title=split))
    for split, pred in predictions_by_split.items():
        if pred.gate_weights is not None:
            written.append(
                plots.modality_weights_per_class(
                    pred.gate_weights, pred.modality_names, labels[pred.indices], class_names, task, run_dir / f"modality_weights_{split}.png", title=split
                )
            )
    return [str(p) for p in written if p]


def save_attention_example(run_dir: Path, model, data, rows: np.ndarray, device, model_name: str) -> str | None:
    """Draw the default cross-modal map of the first utterance in `rows` with every modality present.

    Models without cross-modal attention (late, context, ...) get no map; `fuse explain` draws
    any other utterance or map.
    """
    from fuse import explain as E

    complete = np.ones(len(rows), dtype=bool)
    for fs in data.feature_sets.values():
        complete &= fs.present[rows]
    if len(data.feature_sets) < 2 or not complete.any():
        return None
    row = int(rows[np.argmax(complete)])
    try:
        result = E.attention_map(model, data, row, device, model_name=model_name)
    except E.ExplainError:  # the model records no cross-modal maps
        return None
    utterance_id = str(data.columns["id"][row])
    path = run_dir / f"attention_{E.safe_name(utterance_id)}_{result.name}.png"
    return str(E.draw(result, path, utterance_id, model_name))
