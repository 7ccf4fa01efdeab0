"""Sweeps: many training runs against one feature cache, sharing what they can.

    fuse sweep --cache data/feats.zarr --grid grid.yaml --out runs/sweep [--jobs N] [--metric NAME]

    grid.py         grid files -> planned runs (validation, expansion, names, identities)
    state.py        where each run stands (new, finished, resume, restart)
    execute.py      running the runs, in-process or in worker processes, sharing data
    leaderboard.py  leaderboard.csv/.md and the mean ± std over seeds
"""
from fuse.sweep.execute import SweepInterrupted, SweepResult, run_sweep
from fuse.sweep.grid import PlannedRun, SweepError, SweepPlan, expand, identity_of, load_grid, run_name
from fuse.sweep.leaderboard import leaderboard, write_leaderboards
from fuse.sweep.state import run_state

__all__ = [
    "PlannedRun",
    "SweepError",
    "SweepInterrupted",
    "SweepPlan",
    "SweepResult",
    "expand",
    "identity_of",
    "leaderboard",
    "load_grid",
    "run_name",
    "run_state",
    "run_sweep",
    "write_leaderboards",
]
