"""`fuse train`: train a fusion model from a feature cache (see docs/training.md).

Option precedence: command-line flags > the YAML `--config` file > the model's
`default_training`. The YAML file uses the option names with underscores, e.g.

    cache: data/feats.zarr
    model: cmaf
    lr: 5.0e-5
    seeds: [1, 2, 3]
    max_len: {audio: 1000}
    model_config: {dropout: 0.1}
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
import yaml
from click.core import ParameterSource

from cache_schema import CacheError

# Option name -> TrainOptions field, for options whose CLI value maps straight onto a field.
_DIRECT = (
    "cache", "model", "out", "text", "audio", "video", "task", "epochs", "batch_size", "lr", "weight_decay",
    "warmup_ratio", "grad_clip", "patience", "amp", "seed", "device", "deterministic", "metric", "threshold",
    "tune_threshold", "normalisation", "context_turns", "in_memory", "block_mb", "pool_blocks", "progress",
    "tensorboard",
)  # fmt: skip


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def parse_pairs(values, what: str, convert=lambda v: yaml.safe_load(v)) -> dict:
    """["a=1", "b=x,c=2"] -> {"a": 1, "b": "x", "c": 2}; values parsed as YAML scalars."""
    pairs = {}
    for item in values:
        for part in _split_top_level(item) if what == "--max-len" else [item]:
            if "=" not in part:
                raise click.BadParameter(f"expected KEY=VALUE, got {part!r}", param_hint=what)
            key, value = part.split("=", 1)
            try:
                pairs[key.strip()] = convert(value.strip())
            except (ValueError, yaml.YAMLError) as exc:
                raise click.BadParameter(f"{part!r}: {exc}", param_hint=what) from None
    return pairs


def _split_top_level(item: str) -> list[str]:
    return [p for p in item.split(",") if p.strip()]


def load_yaml_config(path: str) -> dict:
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from None
    if not isinstance(loaded, dict):
        raise click.BadParameter(f"{path}: expected a mapping of option names to values", param_hint="--config")
    return {k.replace("-", "_"): v for k, v in loaded.items()}


@click.command("train")
@click.option("--cache", type=click.Path(), help="Feature cache (Zarr) to train from.")
@click.option("--model", default="cmaf", show_default=True, help="Model name (cma, agf, cmaf, carat, late, context).")
@click.option("--out", type=click.Path(), help="Run folder [default: runs/<model>, or runs/<model>-2, -3 ... when taken; with --resume the latest].")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="YAML file of options; flags override it.")
@click.option("--text", help="Text feature set (or 'none').")
@click.option("--audio", help="Audio feature set (or 'none').")
@click.option("--video", help="Video feature set (or 'none').")
@click.option("--task", type=click.Choice(["auto", "single_label", "multi_label"]), default="auto", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), help="Maximum epochs [model default].")
@click.option("--batch-size", type=click.IntRange(min=1), help="[model default]")
@click.option("--lr", type=float, help="Peak learning rate [model default].")
@click.option("--weight-decay", type=float, help="[model default]")
@click.option("--warmup-ratio", type=click.FloatRange(0, 1), help="Fraction of steps of linear warmup [model default].")
@click.option("--grad-clip", type=float, help="Max gradient norm, 0 = off [model default].")
@click.option("--patience", type=click.IntRange(min=1), help="Early-stopping patience in epochs [model default].")
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA [model default].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--seeds", help="Comma-separated seeds: one run per seed in <out>/seed-<s>, then mean ± std.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--deterministic/--no-deterministic", default=True, show_default=True)
@click.option("--metric", help="Validation metric for early stopping [weighted_f1 / micro_f1].")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Multi-label decision threshold [model default, else 0.5].")
@click.option("--tune-threshold", is_flag=True, help="Multi-label: pick the threshold on dev after training.")
@click.option(
    "--normalisation", type=click.Choice(["auto", "global", "speaker", "none"]), default="auto", show_default=True,
    help="auto: speaker when every training speaker has >= 20 training utterances, else global.",
)
@click.option("--metadata", help="Comma-separated metadata columns, or 'none' [speaker when present].")
@click.option("--max-len", "max_len", multiple=True, help="Frames kept per modality, e.g. audio=2000,video=500.")
@click.option("--context-turns", type=click.IntRange(min=0), help="Preceding dialogue turns in Batch.context [10 for context models, else 0].")
@click.option("--in-memory", is_flag=True, help="Keep prepared features in memory after the first epoch.")
@click.option("--block-mb", type=click.FloatRange(min=0.01), default=16.0, show_default=True, help="Streaming block size.")
@click.option("--pool-blocks", type=click.IntRange(min=1), default=4, show_default=True, help="Blocks shuffled together.")
@click.option("--set", "overrides", multiple=True, help="Model config override KEY=VALUE (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--tensorboard/--no-tensorboard", default=True, show_default=True, help="Write TensorBoard events when installed.")
@click.pass_context
def train(ctx: click.Context, config_file, seeds, metadata, max_len, overrides, resume, **flags) -> None:
    """Train a fusion model from a feature cache."""
    from fuse.data import DataError
    from fuse.runs import RunError
    from fuse.train import TrainingDiverged, TrainingError, TrainOptions, train_seeds
    from fuse.train import train as run_training

    explicit = {name for name in ctx.params if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    file_options = load_yaml_config(config_file) if config_file else {}
    seed_list = file_options.pop("seeds", None)
    options = {k: v for k, v in flags.items() if k in _DIRECT}
    options.update({k: v for k, v in file_options.items() if k not in explicit})
    if seeds:
        seed_list = [int(s) for s in str(seeds).split(",") if s.strip()]
    if metadata is not None:
        options["metadata"] = [] if metadata.strip().lower() == "none" else [c.strip() for c in metadata.split(",") if c.strip()]
    if max_len:
        options["max_len"] = {**options.get("max_len", {}), **parse_pairs(max_len, "--max-len", int)}
    if overrides:
        options["model_config"] = {**options.get("model_config", {}), **parse_pairs(overrides, "--set")}

    if resume:
        allowed = {"out", "model", "device", "progress", "resume", "seeds"}
        extra = sorted(explicit - allowed)
        if extra:
            fail(f"--resume continues a run with its saved options; do not pass {', '.join('--' + e.replace('_', '-') for e in extra)}")
    elif not options.get("cache"):
        fail("--cache is required (or give `cache:` in --config)")
    if not options.get("out"):  # decided here so that messages name the folder actually used
        from fuse.runs import default_run_dir

        options["out"] = str(default_run_dir(options.get("model") or "cmaf", latest=resume))
    try:
        train_options = TrainOptions.from_dict({"cache": options.pop("cache", None) or "", **options})
        if seed_list:
            train_seeds(train_options, seed_list, resume=resume, echo=click.echo)
        else:
            run_training(train_options, resume=resume, echo=click.echo)
    except TrainingDiverged as exc:
        fail(str(exc), code=1)
    except (TrainingError, DataError, RunError, CacheError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"interrupted; continue with: fuse train --resume --out {options['out']}", code=130)
