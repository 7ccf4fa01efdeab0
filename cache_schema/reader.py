"""Reading caches lazily: opening loads only metadata; arrays are read on demand.

Batch reads fetch the row ranges of all requested utterances concurrently in one round trip
on zarr's event loop; looping over utterances one synchronous zarr call at a time costs
milliseconds per call, and zarr's orthogonal (fancy) indexing was slower still (measured:
0.50 s vs 0.09 s per 64-utterance batch of 768-d rows).
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import zarr

from . import layout as L
from .errors import CacheError, FeatureSetNotFound, NotACacheError
from .root import read_root_attrs
from .store import cache_path, is_url, zarr_store
from .ragged import pad
from .table import UtteranceTable
from .writer import read_table


class FeatureSet:
    """One feature set: `values` (rows x dim), `offsets` (N+1), `present` (N)."""

    def __init__(self, name: str, directory):
        self.name = name
        self.directory = cache_path(directory)  # a Path, or a UPath for a cache on object storage
        # A replacement swaps the folder at this path; its inode tells us it happened. Object
        # stores have no inodes (nor folder swaps): a remote cache is read as immutable.
        self._inode = None if is_url(self.directory) else os.stat(self.directory).st_ino
        with self._reading():
            self.group = zarr.open_group(zarr_store(self.directory), mode="r")
            self.attrs: dict[str, Any] = dict(self.group.attrs)
            self.values: zarr.Array = self.group[L.VALUES]
            self.dim = int(self.values.shape[1])
            self.dtype = str(self.values.dtype)
        self._ram: np.ndarray | None = None
        self._ram_lock = threading.Lock()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Turn any failure into a CacheError naming the set, and refuse reads that a
        replacement of the set could have mixed (checked before and after the read)."""
        self._check_not_replaced()
        try:
            yield
        except CacheError as exc:
            if type(exc) is CacheError and str(self.directory) not in str(exc):
                raise CacheError(f"{self.directory}: feature set {self.name!r} is damaged ({exc})") from exc
            raise
        except Exception as exc:
            raise CacheError(f"{self.directory}: feature set {self.name!r} cannot be read ({type(exc).__name__}: {exc})") from exc
        self._check_not_replaced()

    def _check_not_replaced(self) -> None:
        if self._inode is None:
            return
        try:
            inode = os.stat(self.directory).st_ino
        except FileNotFoundError:
            inode = None
        if inode != self._inode:
            raise CacheError(
                f"{self.directory}: feature set {self.name!r} was replaced or deleted after it was opened; "
                "reopen the cache (Cache.refresh()) to read the new one"
            )

    def __repr__(self) -> str:
        return f"FeatureSet({self.name!r}, dim={self.dim}, dtype={self.dtype}, utterances={len(self)})"

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def offsets(self) -> np.ndarray:
        with self._reading():
            return self.group[L.OFFSETS][...]

    @cached_property
    def present(self) -> np.ndarray:
        with self._reading():
            return self.group[L.PRESENT][...]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def shard_rows(self) -> int:
        shards = getattr(self.values, "shards", None)
        return int(shards[0]) if shards else int(self.values.chunks[0])

    @property
    def frame_rate(self):
        return self.attrs.get("frame_rate")

    @property
    def fingerprint(self) -> str | None:
        """``"sha256:<hex>"`` over everything that determined the values (schema 1.1), or None
        when unknown (a set written before 1.1, or by `write_feature_set` without one)."""
        value = self.attrs.get("fingerprint")
        return value if isinstance(value, str) and value else None

    @property
    def fingerprint_params(self) -> dict | None:
        """The parameters the fingerprint hashes (a JSON object), or None when unknown.

        Compare two with `cache_schema.diff_params(expected, actual)`."""
        value = self.attrs.get("fingerprint_params")
        return value if isinstance(value, dict) and self.fingerprint is not None else None

    def get(self, index: int) -> np.ndarray:
        """The (T, dim) array of utterance `index` (T = 0 when missing)."""
        start, stop = self.offsets[index], self.offsets[index + 1]
        with self._reading():
            return self.values[start:stop]

    def rows(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated rows of the given utterances (in the given order) and their lengths.

        The utterances' row ranges are sorted, ranges closer than one inner chunk are merged
        (reading the gap is cheaper than another request), and all ranges are fetched
        concurrently in one round trip on zarr's event loop.
        """
        indices = np.asarray(indices, dtype=np.int64)
        starts, stops = self.offsets[indices], self.offsets[indices + 1]
        lengths = stops - starts
        flat = np.empty((int(lengths.sum()), self.dim), dtype=self.values.dtype)
        if flat.shape[0] == 0:
            return flat, lengths
        ranges = _merge_ranges(starts[lengths > 0], stops[lengths > 0], gap=int(self.values.chunks[0]))
        with self._reading():
            blocks = _read_ranges(self.values, ranges)
        range_starts = np.array([r[0] for r in ranges], dtype=np.int64)
        owner = np.searchsorted(range_starts, starts, side="right") - 1
        pos = 0
        for k in range(len(indices)):
            n = int(lengths[k])
            if n:
                lo = int(starts[k] - range_starts[owner[k]])
                flat[pos : pos + n] = blocks[owner[k]][lo : lo + n]
                pos += n
        return flat, lengths

    def batch(self, indices: Sequence[int] | np.ndarray, max_len: int | None = None, as_torch: bool = False):
        """Zero-padded (B, T_max, dim) values and (B,) lengths for the given utterances.

        `max_len` truncates longer utterances (their lengths are clipped to match).
        """
        flat, lengths = self.rows(indices)
        padded = pad(flat, lengths, max_len)
        if max_len is not None:
            lengths = np.minimum(lengths, max_len)
        if as_torch:
            import torch

            return torch.from_numpy(padded), torch.from_numpy(lengths)
        return padded, lengths

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Values of utterances start..stop-1 as one contiguous read, with offsets from 0."""
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        return self.block_rows(lo, hi), self.offsets[start : stop + 1] - lo

    def block_rows(self, lo: int, hi: int) -> np.ndarray:
        """Raw rows lo..hi-1 of `values`, regardless of utterance boundaries."""
        with self._reading():
            if self._direct is not None:  # straight from the shard files (cache_schema/direct.py)
                return self._direct.read_rows(int(lo), int(hi))
            return self.values[lo:hi]

    def in_ram(self) -> np.ndarray:
        """Every row of `values` in memory as stored (float16 stays float16), read once.

        Kept on this object: every reader of one opened cache (all of a sweep's runs in a
        process, whatever their normalisation or frame limits) shares the one copy. Read
        shard by shard into one preallocated array, so the peak is the copy plus one shard.
        """
        with self._ram_lock:
            if self._ram is None:
                rows = int(self.values.shape[0])
                out = np.empty((rows, self.dim), dtype=self.values.dtype)
                for lo in range(0, rows, self.shard_rows):
                    hi = min(rows, lo + self.shard_rows)
                    out[lo:hi] = self.block_rows(lo, hi)
                self._ram = out
            return self._ram

    @cached_property
    def _direct(self):
        from .direct import DirectValues

        # Local folders only: on object storage every read goes through zarr's fsspec store.
        return None if is_url(self.directory) else DirectValues.eligible(self.directory / L.VALUES)

    def iter_blocks(self, target_rows: int | None = None) -> Iterator[tuple[int, int]]:
        """(start, stop) utterance ranges of about one shard of rows each, for streaming."""
        target = target_rows or self.shard_rows
        offsets, n = self.offsets, len(self)
        start = 0
        while start < n:
            stop = int(np.searchsorted(offsets, offsets[start] + target, side="right")) - 1
            stop = min(max(stop, start + 1), n)
            yield start, stop
            start = stop

    def to_dask(self):
        """A dask array over `values`, chunked by shard (the efficient unit to read)."""
        import dask.array as da

        return da.from_zarr(self.values, chunks=(self.shard_rows, self.dim))

    def failures(self) -> list[dict[str, Any]]:
        with self._reading():
            if L.FAILURES not in self.group:
                return []
            fg = self.group[L.FAILURES]
            cols = {c: fg[c][...] for c in L.FAILURE_COLUMNS}
        return [
            {"feature_set": self.name, **{c: (int(cols[c][i]) if c == "row" else str(cols[c][i])) for c in L.FAILURE_COLUMNS}}
            for i in range(len(cols["row"]))
        ]

    def disk_usage(self) -> tuple[int, int]:
        """(bytes, files) this feature set occupies on disk (or on the object store)."""
        if is_url(self.directory):  # one listing request instead of a stat per object
            listing = self.directory.fs.find(self.directory.path, detail=True)
            sizes = [entry["size"] for entry in listing.values() if entry.get("type") != "directory"]
            return sum(sizes), len(sizes)
        files = [f for f in self.directory.rglob("*") if f.is_file()]
        return sum(f.stat().st_size for f in files), len(files)


def _merge_ranges(starts: np.ndarray, stops: np.ndarray, gap: int) -> list[tuple[int, int]]:
    order = np.argsort(starts, kind="stable")
    merged: list[list[int]] = []
    for lo, hi in zip(starts[order].tolist(), stops[order].tolist()):
        if merged and lo <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def _read_ranges(values: zarr.Array, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
    """Read row ranges concurrently. zarr's sync API would serialise one call per range."""
    from zarr.core.sync import sync  # zarr's own event loop, shared with its sync API

    async_values = values._async_array

    async def gather():
        return await asyncio.gather(*(async_values.getitem((slice(lo, hi),)) for lo, hi in ranges))

    return list(sync(gather()))


class Cache:
    """An opened cache. Cheap to open: nothing but metadata is read until asked for."""

    def __init__(self, path: str | os.PathLike, storage_options: dict[str, Any] | None = None):
        # A local folder (Path) or a URL (UPath; read-only, see cache_schema.store).
        self.path = cache_path(path, storage_options)
        self.attrs = read_root_attrs(self.path)
        try:
            self.root = zarr.open_group(zarr_store(self.path), mode="r")
        except Exception as exc:
            raise NotACacheError(f"{self.path}: cannot open the cache ({type(exc).__name__}: {exc})") from exc
        self._feature_sets: dict[str, FeatureSet] = {}

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, utterances={self.n_utterances}, feature_sets={self.feature_names()})"

    @property
    def schema_version(self) -> int:
        return int(self.attrs["schema_version"])

    @property
    def schema_minor(self) -> int:
        """Minor schema version (0 for caches written before 1.1; see layout.SCHEMA_MINOR)."""
        value = self.attrs.get("schema_minor", 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @contextmanager
    def _reading_table(self) -> Iterator[None]:
        try:
            yield
        except CacheError as exc:
            if type(exc) is CacheError and str(self.path) not in str(exc):  # e.g. "duplicate utterance ids": say where
                raise CacheError(f"{self.path}: the utterance table is damaged ({exc})") from exc
            raise
        except Exception as exc:
            raise CacheError(f"{self.path}: the utterance table cannot be read ({type(exc).__name__}: {exc})") from exc

    @property
    def n_utterances(self) -> int:
        with self._reading_table():
            return int(self.root[L.UTTERANCES].attrs["n"])

    @property
    def label_names(self) -> list[str]:
        """Class names of the `label` column, from the table's attributes (no column is read)."""
        with self._reading_table():
            return list(self.root[L.UTTERANCES].attrs.get("label_names", []))

    @property
    def labels_multi_names(self) -> list[str]:
        """Names of the `labels_multi` columns, from the table's attributes (no column is read)."""
        with self._reading_table():
            return list(self.root[L.UTTERANCES].attrs.get("labels_multi_names", []))

    @cached_property
    def table(self) -> UtteranceTable:
        with self._reading_table():
            return read_table(self.root[L.UTTERANCES])

    def column(self, name: str) -> np.ndarray:
        """One utterance-table column, without loading the others."""
        with self._reading_table():
            group = self.root[L.UTTERANCES]
            if name not in group:
                raise CacheError(f"{self.path}: utterance table has no column {name!r}")
            data = group[name][...]
        if data.dtype.kind not in "UTO":
            return data
        return _shared_strings(np.asarray(data, dtype=object))

    def feature_names(self) -> list[str]:
        folder = self.path / L.FEATURES
        if is_url(folder):
            return list(self._remote_feature_names)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / "zarr.json").is_file())

    @cached_property
    def _remote_feature_names(self) -> list[str]:
        folder = self.path / L.FEATURES
        # One listing of features/*/zarr.json (object stores have prefixes, not folders).
        try:
            found = folder.fs.glob(f"{folder.path}/*/zarr.json")
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise CacheError(f"{folder}: cannot list the feature sets ({type(exc).__name__}: {exc})") from exc
        names = (p.rstrip("/").split("/")[-2] for p in found)
        return sorted(n for n in names if not n.startswith("."))

    def __contains__(self, name: str) -> bool:
        return name in self.feature_names()

    def __getitem__(self, name: str) -> FeatureSet:
        if name not in self._feature_sets:
            if name not in self.feature_names():
                available = ", ".join(self.feature_names()) or "none"
                raise FeatureSetNotFound(f"{self.path}: no feature set {name!r} (available: {available})")
            self._feature_sets[name] = FeatureSet(name, self.path / L.FEATURES / name)
        return self._feature_sets[name]

    def feature_sets(self) -> dict[str, FeatureSet]:
        return {name: self[name] for name in self.feature_names()}

    def failures(self) -> list[dict[str, Any]]:
        return [f for fs in self.feature_sets().values() for f in fs.failures()]

    def refresh(self) -> "Cache":
        """Forget cached handles so feature sets added or replaced since opening are seen."""
        self._feature_sets.clear()
        self.__dict__.pop("table", None)
        self.__dict__.pop("_remote_feature_names", None)
        self.attrs = read_root_attrs(self.path)
        return self


def open_cache(path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Cache:
    """Open a cache read-only: a local folder or any fsspec URL (`s3://bucket/feats.zarr`).

    `storage_options` go to fsspec for a URL (e.g. `{"endpoint_url": ...}`); by default
    fsspec's configuration and the backend's standard credentials apply (cache_schema.store)."""
    return Cache(path, storage_options)


def _shared_strings(values: np.ndarray) -> np.ndarray:
    """The object array `values` with each run of equal strings made one Python object.

    Decoding gives every element its own `str` (~60 bytes each); split, speaker, dataset and
    dialogue columns repeat a few values, so sharing them makes a run's per-utterance memory a
    pointer per column instead of a string object each.
    """
    shared: dict = {}
    out = np.empty(values.shape, dtype=object)
    out.ravel()[:] = [shared.setdefault(v, v) for v in values.ravel().tolist()]
    return out
