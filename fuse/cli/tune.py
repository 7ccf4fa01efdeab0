"""`fuse tune`: hyperparameter search with Optuna over a YAML search space (see docs/tuning.md).

    fuse tune --cache data/feats.zarr --space space.yaml --out runs/tune --trials 20 [--workers N]
              [--storage URL] [--study NAME] [--seeds 0,1,2]

The objective is the dev split's metric; a test-split objective is refused. Running the same
command again continues the study. Exit status: 0 done, 2 bad space, cache, storage or
folder (nothing was trained), 130 interrupted (run it again to continue).
"""
from __future__ import annotations

import click

from fuse.cli.common import fail


@click.command("tune")
@click.option("--cache", type=click.Path(), help="Feature cache (Zarr) every trial trains from [or `cache:` in the space file].")
@click.option("--space", "space_file", required=True, type=click.Path(exists=True, dir_okay=False), help="YAML search space (`space:`, optional `base:`).")
@click.option("--out", default="runs/tune", show_default=True, type=click.Path(file_okay=False), help="Tune folder: study.db, trial run folders, leaderboard, plots.")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True, help="Completed or pruned trials the study should have (counted across runs and workers).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Local worker processes sharing the study.")
@click.option("--storage", help="SQLAlchemy URL of the study database [sqlite:///<out>/study.db]; e.g. postgresql://user@host/db for many nodes.")
@click.option("--study", "study_name", help="Study name in the storage [the space file's name].")
@click.option("--metric", help="Dev metric to optimise [space file's metric:, else the task's default].")
@click.option("--split", default="dev", show_default=True, help="Split the objective is scored on: dev only (test is refused).")
@click.option("--sampler", type=click.Choice(["tpe", "random"]), default="tpe", show_default=True)
@click.option("--pruner", type=click.Choice(["median", "none"]), default="median", show_default=True, help="Stop poor trials early by their per-epoch dev metric.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampler seed (offset by worker and by the trials the study holds).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Re-run the best trial (and the default config) with these seeds for mean ± std; 'none' to skip.")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="Also run the default config (base: only) with the same seeds and compare.")
@click.option("--heartbeat", "heartbeat_s", type=click.IntRange(min=1), default=10, show_default=True, help="Seconds between trial heartbeats; a trial silent for twice that is failed and retried.")
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads per process [torch's default; cores/workers with --workers].")
def tune(cache, space_file, out, trials, workers, storage, study_name, metric, split, sampler, pruner, seed, seeds, baseline, heartbeat_s, threads) -> None:
    """Search hyperparameters with Optuna, scored on the dev split."""
    from pathlib import Path

    from fuse.tune import TuneConfig, TuneError, default_storage, load_space, preflight, refuse_test_split, run_tune

    try:
        refuse_test_split(split, "--split")
        if metric and metric.startswith("test"):
            refuse_test_split("test", f"--metric {metric}")
        space = load_space(space_file)
        cache = cache or space.cache
        if not cache:
            fail("--cache is required (or give `cache:` in the space file)", 2)
        if not Path(cache).exists():
            fail(f"{cache}: no such feature cache", 2)
        try:
            seed_list = [] if seeds.strip().lower() == "none" else [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            fail(f"--seeds {seeds!r}: expected comma-separated integers or 'none'", 2)
        metric, direction = preflight(space, cache, metric or space.metric)
        config = TuneConfig(
            space=space, cache=str(Path(cache).resolve()), out=str(Path(out).resolve()), trials=trials, metric=metric, direction=direction,
            storage=storage or default_storage(out), study_name=study_name or Path(space_file).stem,
            sampler=sampler, pruner=pruner, seed=seed, heartbeat_s=heartbeat_s, threads=threads,
        )  # fmt: skip
        Path(out).mkdir(parents=True, exist_ok=True)
        run_tune(config, workers=workers, seeds=seed_list, baseline=baseline, echo=click.echo)
    except TuneError as exc:
        fail(str(exc), 2)
    except KeyboardInterrupt:
        fail(f"interrupted; run the same command again to continue the study ({out})", 130)
