"""`fuse robustness`: a trained run scored on every non-empty subset of its modalities.

The modalities left out of a subset are treated as missing for every utterance, through the
same mask/`present` path as real missing data (`fuse.robustness`). Writes
`robustness_<split>.json`, `robustness_<split>.md` and `robustness_<split>.png` in the run
folder and prints the table.
"""
from __future__ import annotations

from pathlib import Path

import click

from fuse.cli.common import fail


@click.command("robustness")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder written by fuse train.")
@click.option("--split", default="test", show_default=True, help="train, dev (valid/val) or test.")
@click.option("--cache", type=click.Path(), help="Cache to evaluate on [the run's cache].")
@click.option("--batch-size", type=click.IntRange(min=1), help="[the run's]")
@click.option("--device", default="auto", show_default=True)
def robustness(run_dir, split, cache, batch_size, device) -> None:
    """Score a run with each subset of its modalities missing (table, JSON, PNG)."""
    from cache_schema import CacheError
    from fuse import runs
    from fuse.data import DataError, canonical_split
    from fuse.device import pick_device
    from fuse.jsonio import write_json
    from fuse.robustness import plot_table, robustness_table, table_markdown

    try:
        split = canonical_split(split)
        loaded = runs.load_run(run_dir, cache, device=str(pick_device(device)))
        if len(loaded.data.feature_sets) < 2:
            fail(f"{run_dir}: the run reads one modality ({', '.join(loaded.data.feature_sets)}); nothing to drop")
        table = robustness_table(loaded, split, batch_size)
    except (runs.RunError, DataError, CacheError, ValueError) as exc:
        fail(str(exc))
    folder = Path(run_dir)
    stem = f"robustness_{split}"
    markdown = table_markdown(table)
    write_json(folder / f"{stem}.json", table)
    (folder / f"{stem}.md").write_text(markdown)
    plot = plot_table(table, folder / f"{stem}.png")
    click.echo(markdown.rstrip())
    click.echo(f"wrote {folder / f'{stem}.json'}, {folder / f'{stem}.md'}, {plot}")
