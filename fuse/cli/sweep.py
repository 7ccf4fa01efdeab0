"""`fuse sweep`: run a grid of training configs against one cache (see docs/sweep.md).

    fuse sweep --cache data/feats.zarr --grid grid.yaml --out runs/sweep [--jobs N] [--metric NAME]
    fuse sweep ... --executor snakemake [--cores N] [--profile profiles/slurm] [--dry-run]

Exit status: 0 when every run finished, 1 when some run failed (the others still ran and the
leaderboard lists the failures), 2 for a bad grid, cache or sweep folder, 130 when interrupted
(run the same command again to resume).
"""
from __future__ import annotations

import click

from fuse.cli.common import fail



@click.command("sweep")
@click.option("--cache", type=click.Path(), help="Feature cache (Zarr) every run trains from [or `cache:` in the grid file].")
@click.option("--grid", "grid_file", required=True, type=click.Path(exists=True, dir_okay=False), help="YAML file with `grid:` or `runs:` (and `base:`).")
@click.option("--out", default="runs/sweep", show_default=True, type=click.Path(file_okay=False), help="Sweep folder: one run folder per config, leaderboards.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes running configs in parallel.")
@click.option("--metric", help="Dev metric ranking the leaderboard [the runs' early-stopping metric].")
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads per process [torch's default; cores/jobs with --jobs].")
@click.option("--dry-run", is_flag=True, help="List the runs (name and state) and stop [snakemake: its dry run].")
@click.option("--verbose", is_flag=True, help="Also print every run's training output (always in <run>/train.log).")
@click.option("--executor", type=click.Choice(["local", "snakemake"]), default="local", show_default=True, help="local: this process or --jobs workers; snakemake: one Snakemake job per run (docs/scaling.md).")
@click.option("--cores", type=click.IntRange(min=1), help="snakemake: cores for local jobs [1; a --profile sets its own jobs].")
@click.option("--profile", help="snakemake: a Snakemake profile folder, e.g. profiles/slurm.")
def sweep(cache, grid_file, out, jobs, metric, threads, dry_run, verbose, executor, cores, profile) -> None:
    """Run a grid of training configs against one cache."""
    from pathlib import Path

    from cache_schema.store import absolute
    from fuse.sweep import SweepError, SweepInterrupted, load_grid, run_state, run_sweep
    from fuse.sweep.execute import run_options

    if executor == "local" and (cores or profile):
        fail("--cores and --profile are options of --executor snakemake (the local executor takes --jobs)", 2)
    if executor == "snakemake" and jobs > 1:
        fail("--jobs is the local executor's; with --executor snakemake use --cores (or a profile's jobs:)", 2)
    try:
        plan = load_grid(grid_file)
        cache = cache or plan.cache
        if not cache:
            fail("--cache is required (or give `cache:` in the grid file)", 2)
        if executor == "snakemake":
            from fuse.sweep.snakemake import run_with_snakemake

            outcome = run_with_snakemake(plan, cache, out, cores=cores, profile=profile, threads=threads, metric=metric, dry_run=dry_run, echo=click.echo)
            if outcome.returncode != 0:
                fail(f"snakemake exited with status {outcome.returncode} (logs: {Path(out) / 'logs'}); run the same command again to resume", 1)
            if outcome.failed:
                fail(f"{len(outcome.failed)} run(s) failed: {', '.join(outcome.failed)} (see their train.log)", 1)
            return
        if dry_run:
            cache_path = absolute(str(cache))
            for run in plan.runs:
                options = run_options(run, cache_path, Path(out))
                click.echo(f"{run.name}\t{run_state(Path(options['out']), options)}")
            click.echo(f"{len(plan.runs)} run(s)")
            return
        result = run_sweep(plan, cache, out, jobs=jobs, metric=metric, threads=threads, echo=click.echo, verbose=verbose)
    except SweepInterrupted as exc:
        fail(str(exc), 130)
    except SweepError as exc:
        fail(str(exc), 2)
    except KeyboardInterrupt:
        fail(f"interrupted; run the same command again to resume ({out})", 130)
    if result.failed:
        fail(f"{len(result.failed)} run(s) failed: {', '.join(result.failed)} (see their train.log)", 1)
