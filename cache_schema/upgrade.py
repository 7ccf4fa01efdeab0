"""`upgrade_cache(path)`: rewrite a cache written by an older layout version in place.

Schema 1.2 changed only how `values` is chunked (LAYOUT.md, "Chunking"), so an upgrade
rewrites each feature set whose `values` has the old chunking and leaves everything else
(the utterance table, offsets, failures, provenance) as it was. Each set is rewritten into
`.staging/` and swapped in atomically, exactly like a merge, holding the cache lock: a
failure or a kill at any moment leaves the old set readable.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import zarr

from .store import require_local
from . import layout as L
from .errors import CacheError
from .root import read_root_attrs
from .writer import _remove_stale, _touch_root, _write_feature_set_locked, cache_lock, values_layout_is_current


def _minor(attrs: dict) -> int:
    value = attrs.get("schema_minor", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _feature_names(path: Path) -> list[str]:
    folder = path / L.FEATURES
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / "zarr.json").is_file())


def outdated_feature_sets(path: str | os.PathLike) -> list[str]:
    """Names of the feature sets whose `values` chunking is older than this version writes."""
    path = Path(path)
    return [n for n in _feature_names(path) if not values_layout_is_current(zarr.open_array(str(path / L.FEATURES / n / L.VALUES), mode="r"))]


def upgrade_cache(path: str | os.PathLike, progress: Callable[[str], None] | None = None) -> list[str]:
    """Rewrite the outdated feature sets of the cache at `path`; return their names.

    Raises CacheError (one line) when the cache is already current or another process is
    writing it (the lock is taken without waiting).
    """
    path = require_local(path, "upgrading a cache")
    attrs = read_root_attrs(path)  # one-line errors for non-caches and unknown versions
    with cache_lock(path, wait=False):
        _remove_stale(path)
        names = outdated_feature_sets(path)
        if not names and _minor(attrs) >= L.SCHEMA_MINOR:
            raise CacheError(f"{path}: already at schema {L.SCHEMA_VERSION}.{L.SCHEMA_MINOR} with every feature set in the current layout; nothing to upgrade")
        for name in names:
            if progress:
                progress(name)
            _rewrite(path, name)
        _touch_root(zarr.open_group(str(path), mode="a"))
    return names


def _rewrite(cache: Path, name: str) -> None:
    group = zarr.open_group(str(cache / L.FEATURES / name), mode="r")
    values = group[L.VALUES]
    meta = dict(group.attrs)
    compression = meta.get("compression") or "none"
    if compression not in ("none", "zstd"):
        raise CacheError(f"{cache}: feature set {name!r} records compression {compression!r}, which this emofuse cannot write")
    meta["layout_upgraded"] = {"from_inner_chunk_rows": int(values.chunks[0]), "to_schema_minor": L.SCHEMA_MINOR}

    def rows() -> Iterator[np.ndarray]:
        shards = getattr(values, "shards", None)
        step = int(shards[0]) if shards else int(values.chunks[0])
        for lo in range(0, values.shape[0], step):  # one old shard at a time: bounded memory
            yield values[lo : lo + step]

    failures = []
    if L.FAILURES in group:
        fg = group[L.FAILURES]
        cols = {c: fg[c][...] for c in L.FAILURE_COLUMNS}
        failures = [{c: (int(cols[c][i]) if c == "row" else str(cols[c][i])) for c in L.FAILURE_COLUMNS} for i in range(len(cols["row"]))]
    _write_feature_set_locked(
        cache,
        name,
        rows(),
        group[L.OFFSETS][...],
        group[L.PRESENT][...],
        failures,
        meta,
        int(values.shape[1]),
        str(values.dtype),
        None if compression == "none" else compression,
    )
