"""`fuse train`: train a fusion model from a feature cache (see docs/training.md).

Every flag but --config, --seeds and --resume is derived from `fuse.options.TrainOptions`.
Option precedence: command-line flags > the YAML `--config` file > the model's
`default_training`. The YAML file uses the option names with underscores, e.g.

    cache: data/feats.zarr
    model: cmaf
    lr: 5.0e-5
    seeds: [1, 2, 3]
    max_len: {audio: 1000}
    model_config: {dropout: 0.1}

A run folder's `config.yaml` is such a file: `fuse train --config runs/x/config.yaml --out y`
repeats run x.
"""
from __future__ import annotations

from pathlib import Path

import click
import yaml

from fuse.cli.common import apply_storage_options, fail, flag_name, given_options, options_from_schema, storage_option_flag
from fuse.options import RESUME_OVERRIDES, TrainOptions


def load_yaml_config(path: str) -> dict:
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        fail(f"{path}: unreadable ({str(exc).splitlines()[0]})")
    if not isinstance(loaded, dict):
        fail(f"{path}: expected a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in loaded.items()}


@click.command("train")
@options_from_schema(TrainOptions)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="YAML file of options; flags override it.")
@click.option("--seeds", help="Comma-separated seeds: one run per seed in <out>/seed-<s>, then mean ± std.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@storage_option_flag
def train(config_file, seeds, resume, storage_option, **params) -> None:
    """Train a fusion model from a feature cache."""
    from cache_schema import CacheError
    from fuse.data import DataError
    from fuse.options import OptionsError, parse_options
    from fuse.runs import RunError, default_run_dir
    from fuse.training import TrainingDiverged, TrainingError, train_seeds
    from fuse.training import train as run_training

    explicit = given_options(TrainOptions, params)
    options = load_yaml_config(config_file) if config_file else {}
    seed_list = options.pop("seeds", None)
    if seeds:
        try:
            seed_list = [int(s) for s in str(seeds).split(",") if s.strip()]
        except ValueError:
            fail(f"--seeds {seeds!r}: expected comma-separated integers")
    for key in ("max_len", "model_config"):  # flags add to the file's mapping
        if key in explicit and isinstance(options.get(key), dict):
            explicit[key] = {**options[key], **explicit[key]}
    options.update(explicit)
    if resume:
        extra = sorted(set(explicit) - set(RESUME_OVERRIDES))
        if extra:
            fail(f"--resume continues a run with its saved options; do not pass {', '.join(flag_name(e) for e in extra)}")
    elif not options.get("cache"):
        fail("--cache is required (or give `cache:` in --config)")
    if storage_option:  # fsspec options for a cache URL (not training options: never saved with the run)
        if not options.get("cache"):
            fail("--storage-option applies to a --cache URL; with --resume, set them in the environment (docs/scaling.md)")
        apply_storage_options(options["cache"], storage_option)
    if not options.get("out"):  # decided here so that messages name the folder actually used
        options["out"] = str(default_run_dir(options.get("model") or "cmaf", latest=resume))
    try:
        train_options = parse_options(options, source=config_file or "fuse train")
        if seed_list:
            train_seeds(train_options, seed_list, resume=resume, echo=click.echo)
        else:
            run_training(train_options, resume=resume, echo=click.echo)
    except TrainingDiverged as exc:
        fail(str(exc), code=1)
    except (TrainingError, DataError, RunError, CacheError, OptionsError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"interrupted; continue with: fuse train --resume --out {options['out']}", code=130)
