"""`fuse`: the stage-2 command line. Each subcommand lives in its own module here."""
from __future__ import annotations

import importlib

import click

# (module, command name) pairs; a module is imported only when its command runs, so
# `fuse cache info` does not pay for importing torch.
_COMMANDS = {
    "cache": ("fuse.cli.cache", "cache"),
    "train": ("fuse.cli.train", "train"),
    "evaluate": ("fuse.cli.evaluate", "evaluate"),
    "predict": ("fuse.cli.predict", "predict"),
    "explain": ("fuse.cli.explain", "explain"),
    "sweep": ("fuse.cli.sweep", "sweep"),
    "ablate": ("fuse.cli.ablate", "ablate"),
    "tune": ("fuse.cli.tune", "tune"),
    "robustness": ("fuse.cli.robustness", "robustness"),
}

_HELP = {
    "cache": "Inspect and validate a feature cache.",
    "train": "Train a fusion model from a feature cache.",
    "evaluate": "Evaluate a trained run on a split of its cache.",
    "predict": "Write per-utterance predictions of a trained run.",
    "explain": "Plot cross-modal attention for one utterance.",
    "sweep": "Run a grid of training configs against one cache.",
    "ablate": "Fused model vs each modality alone, same seeds.",
    "tune": "Search hyperparameters with Optuna (dev split only).",
    "robustness": "Score a run with each subset of its modalities missing.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name, (mod, _) in _COMMANDS.items() if importlib.util.find_spec(mod) is not None]

    def get_command(self, ctx, name):
        if name not in _COMMANDS:
            return None
        module_name, attr = _COMMANDS[name]
        if importlib.util.find_spec(module_name) is None:
            return None
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, _HELP[name]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="emofuse", message="emofuse %(version)s")
def main() -> None:
    """emofuse stage 2: train fusion heads on cached frozen-encoder features.

    Extract once with `snakemake extract --cores 8`, then run as many experiments as you
    like from the cache, e.g. `fuse train --cache data/feats.zarr`.
    """
