"""`fuse explain`: plot a cross-modal attention map of one utterance (see fuse/explain.py)."""
from __future__ import annotations

from pathlib import Path

import click

from fuse.cli.common import fail


@click.command("explain")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder written by fuse train.")
@click.option("--cache", type=click.Path(), help="Cache holding the utterance [the run's cache].")
@click.option("--utterance", "utterance_id", required=True, help="Utterance id (the table's `id` column).")
@click.option("--attention", "attention_name", help="Attention map to draw [text_to_audio when the model has it].")
@click.option("--out", type=click.Path(dir_okay=False), help="PNG to write [<run>/attention_<id>_<map>.png].")
@click.option("--allow-changed-features", is_flag=True, help="Use the cache although its feature sets changed since training (recorded).")
@click.option("--device", default="cpu", show_default=True)
def explain(run_dir, cache, utterance_id, attention_name, out, device, allow_changed_features) -> None:
    """Plot the cross-modal attention map of one utterance (e.g. text tokens vs audio frames)."""
    from cache_schema import CacheError
    from fuse import explain as E, runs
    from fuse.data import DataError

    try:
        loaded = runs.load_run(run_dir, cache, device=device, allow_changed_features=allow_changed_features)
        row = int(loaded.data.rows_of_ids([utterance_id])[0])
        name = loaded.checkpoint.model["name"]
        result = E.attention_map(loaded.model, loaded.data, row, loaded.device, attention_name, model_name=name)
    except (runs.RunError, DataError, CacheError, E.ExplainError) as exc:
        fail(str(exc))
    if loaded.data.accepted_feature_changes:
        click.echo("warning: changed features used: " + "; ".join(loaded.data.accepted_feature_changes), err=True)
    target = Path(out) if out else Path(run_dir) / f"attention_{E.safe_name(utterance_id)}_{result.name}.png"
    E.draw(result, target, utterance_id, name)
    click.echo(f"wrote {target} ({result.name}: {result.weights.shape[0]} x {result.weights.shape[1]})")
