"""`fuse evaluate`: score a trained run's best model on one split of a cache.

Without `--cache` the run's own cache is used and the split's entry in the run's
metrics.json is updated; with another cache the metrics go to
`metrics_<cache folder name>-<hash of its path and feature-set fingerprints>.json` in the run folder (or
`--out FILE`), so scores on different caches never overwrite each other, even when two
caches share a folder name. The cache's feature sets must match the
run's provenance; a mismatch is refused, naming the feature set and the field.

`--drop audio[,video]` scores the run with those modalities treated as missing for every
utterance (`fuse.robustness`); the scores then go to a file of their own,
`metrics_without-<modalities>.json` (or `metrics_<cache>-<hash>_without-<modalities>.json`),
which records what was dropped, so the run's own scores are never replaced by them.
"""
from __future__ import annotations

from pathlib import Path

import click

from fuse.cli.common import apply_storage_options, fail, refuse_run_file, storage_option_flag


def metrics_file_for(cache, feature_sets) -> str:
    """The run-folder file holding scores on another cache, keyed by the cache's identity:
    its absolute path and the fingerprints of the feature sets the run reads."""
    import hashlib

    from cache_schema.store import identity as cache_identity

    where = cache_identity(cache.path)  # a resolved path, or the URL of a cache on object storage
    identity = [where, *(f"{name}={cache[name].fingerprint}" for name in sorted(feature_sets))]
    return f"metrics_{cache.path.name}-{hashlib.sha1(chr(10).join(identity).encode()).hexdigest()[:8]}.json"


@click.command("evaluate")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder written by fuse train.")
@click.option("--split", default="test", show_default=True, help="train, dev (valid/val) or test.")
@click.option("--cache", type=click.Path(), help="Cache to evaluate on [the run's cache].")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Multi-label threshold [the run's].")
@click.option("--batch-size", type=click.IntRange(min=1), help="[the run's]")
@click.option("--allow-changed-features", is_flag=True, help="Use the cache although its feature sets changed since training (recorded).")
@click.option("--device", default="auto", show_default=True)
@click.option("--drop", help="Modalities treated as missing at test time, comma-separated (e.g. audio,video).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the metrics here instead.")
@storage_option_flag
def evaluate(run_dir, split, cache, threshold, batch_size, device, out, allow_changed_features, drop, storage_option) -> None:
    """Evaluate a trained run on a split of its cache (or of another cache; a folder or a URL)."""
    from cache_schema import CacheError
    from cache_schema.store import identity as cache_identity
    from fuse import metrics as M
    from fuse import runs
    from fuse.jsonio import read_json, write_json
    from fuse.data import DataError, canonical_split
    from fuse.device import pick_device
    from fuse.robustness import check_drop, parse_drop

    if storage_option and cache is None:
        fail("--storage-option applies to --cache URL; give --cache")
    apply_storage_options(cache, storage_option)
    try:
        loaded = runs.load_run(run_dir, cache, device=str(pick_device(device)), allow_changed_features=allow_changed_features)
        data = loaded.data
        drop = check_drop(parse_drop(drop), tuple(data.feature_sets))
        rows = data.indices(canonical_split(split))
        if len(rows) == 0:
            fail(f"{data.cache.path}: no labelled utterances in split {split!r}")
        task = data.spec.task
        threshold = threshold if threshold is not None else loaded.threshold
        pred = runs.infer(
            loaded.model, data, rows, batch_size or loaded.options.get("batch_size") or 32, loaded.device, bool(loaded.options.get("amp")), drop=drop
        )
        result = M.compute_metrics(task, data.labels[rows], pred.probabilities, data.spec.class_names, threshold)
        if drop:  # recorded with the scores, and they go to a file of their own (below)
            result = {**result, "dropped": list(drop), "modalities_kept": [m for m in data.feature_sets if m not in drop]}
    except (runs.RunError, DataError, CacheError, ValueError) as exc:
        fail(str(exc))
    split = canonical_split(split)
    if data.accepted_feature_changes:  # --allow-changed-features: say so and keep it with the scores
        click.echo("warning: changed features used: " + "; ".join(data.accepted_feature_changes), err=True)
        result = {**result, "accepted_feature_changes": data.accepted_feature_changes}
    own_cache = cache is None or cache_identity(cache) == cache_identity(loaded.options["cache"])
    dropped_suffix = "without-" + "-".join(drop) if drop else ""
    if out:
        target = Path(out)
        refuse_run_file(target)
        write_json(target, {"cache": str(data.cache.path), "splits": {split: result}, "task": task, "dropped": list(drop)})
    elif own_cache and not drop:
        target = Path(run_dir) / runs.METRICS_FILE
        existing = read_json(target) if target.is_file() else {"task": task, "splits": {}}
        existing.setdefault("splits", {})[split] = result
        write_json(target, existing)
    else:
        if own_cache:
            name = f"metrics_{dropped_suffix}.json"
        else:
            name = metrics_file_for(data.cache, data.spec.feature_sets.values())
            name = name.replace(".json", f"_{dropped_suffix}.json") if drop else name
        target = Path(run_dir) / name
        existing = read_json(target) if target.is_file() else {"cache": str(data.cache.path), "task": task, "splits": {}}
        if drop:
            existing["dropped"] = list(drop)
        existing["splits"][split] = result
        write_json(target, existing)
    dropped_note = f", {', '.join(drop)} treated as missing" if drop else ""
    click.echo(f"{loaded.checkpoint.model['name']} (epoch {loaded.checkpoint.epoch}) on {data.cache.path}, split {split}, {len(rows)} utterances{dropped_note}")
    click.echo(M.format_table({split: result}, task))
    click.echo(f"wrote {target}")
