"""One writer per run folder: an OS file lock held while a run (or a sweep worker) writes it.

The lock is `fcntl.flock` on `<run>/.lock`, so the kernel releases it when the holder dies,
however it dies (SIGKILL included): a stale lock file never blocks a later run. The file
holds the holder's pid, which a refused second writer is told. Within one process the lock
is re-entrant (a sweep worker holds it across its own restart of a run and the recipe's
setup).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from fuse.runs.folders import RunError

LOCK_FILE = ".lock"
_held: dict[str, list] = {}  # realpath -> [open file, depth], this process's locks


class RunLocked(RunError):
    """Another process is writing this run folder."""


class RunLock:
    """`with RunLock(run_dir):` ... ; raises RunLocked naming the holder's pid."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.run_dir)
        if key in _held:
            _held[key][1] += 1
            return self
        handle = open(self.run_dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunLocked(f"{self.run_dir} is being written by process {holder} (a fuse train or sweep worker); wait for it or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _held[key] = [handle, 1]
        return self

    def release(self) -> None:
        key = os.path.realpath(self.run_dir)
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            entry[0].close()  # closing the file releases the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
