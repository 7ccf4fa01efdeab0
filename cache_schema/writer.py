"""Writing caches: the utterance table, feature-set parts from parallel jobs, and the merge.

Stage 1 never writes into the cache from parallel jobs. Each job writes its own *part*
(a small Zarr group outside the cache), and one merge step streams the parts, in row
order, into a staging group inside the cache and renames it into place. A rename is
atomic on a POSIX file system, so readers see either the old feature set or the new one,
never half of one. Every mutation of a cache holds an exclusive file lock, so two
extraction runs on one cache serialise instead of interleaving.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import zarr

from . import layout as L
from .direct import DirectValues, write_shard
from .errors import CacheError, NotACacheError
from .ragged import lengths_to_offsets
from .root import read_root_attrs
from .store import require_local
from .table import STRING_COLUMNS, UtteranceTable


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def cache_lock(path: str | os.PathLike, wait: bool = True) -> Iterator[None]:
    """Exclusive lock on a cache for the duration of a mutation.

    Waits for other writers; with `wait=False` raises CacheError at once if one holds it.
    Every mutation takes this lock, so a URL (object storage is read-only) is refused here.
    """
    path = require_local(path, "writing a cache")
    path.mkdir(parents=True, exist_ok=True)
    with open(path / L.LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheError(f"{path}: another process is writing this cache (it holds {L.LOCK_FILE}); try again when it has finished") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _string_array(group: zarr.Group, name: str, values: np.ndarray) -> None:
    arr = group.create_array(name, shape=(len(values),), dtype=str, chunks=(max(1, min(len(values), 65536)),))
    if len(values):
        arr[:] = np.asarray(values, dtype=object)


def _write_table_group(group: zarr.Group, table: UtteranceTable) -> None:
    n = len(table)
    for name, column in table.columns.items():
        if column.dtype == object or name in STRING_COLUMNS:
            _string_array(group, name, column)
        else:
            chunks = (max(1, min(n, 65536)),) + column.shape[1:]
            arr = group.create_array(name, shape=column.shape, dtype=column.dtype, chunks=chunks)
            if column.size:
                arr[...] = column
    group.attrs.update(
        {
            "n": n,
            "label_names": list(table.label_names),
            "labels_multi_names": list(table.labels_multi_names),
            "metadata_columns": table.metadata_columns,
        }
    )


def read_table(group: zarr.Group) -> UtteranceTable:
    attrs = dict(group.attrs)
    cols: dict[str, np.ndarray] = {}
    for name, arr in group.arrays():
        data = arr[...]
        if data.dtype.kind in "UTO":
            data = np.asarray(data, dtype=object)
        cols[name] = data
    return UtteranceTable(cols, list(attrs.get("label_names", [])), list(attrs.get("labels_multi_names", [])))


def _touch_root(root: zarr.Group) -> None:
    meta = dict(root.attrs.get(L.ROOT_ATTR, {}))
    meta["updated"] = _now()
    meta["producer_version"] = L.producer_version()
    minor = meta.get("schema_minor", 0)
    meta["schema_minor"] = max(minor if isinstance(minor, int) else 0, L.SCHEMA_MINOR)
    root.attrs[L.ROOT_ATTR] = meta


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # file system without exchange support
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(staging: Path, target: Path, trash_dir: Path) -> None:
    """Make `staging` the content of `target` in one atomic step.

    A new target is one rename. An existing target is exchanged with the staging folder in
    one renameat2 call, so there is no moment without a `target`; the old content, now at
    the staging path, is deleted afterwards. On file systems without RENAME_EXCHANGE the
    old target is first renamed into `trash_dir` (a short window without a target, which
    the next writer repairs if the process died in it; see `_remove_stale`).
    """
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)
        return
    trash_dir.mkdir(parents=True, exist_ok=True)
    old = trash_dir / f"{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def _staging_name(label: str) -> str:
    """Staging entries carry their writer's pid, so leftovers of dead writers can be removed."""
    return f"{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


_STAGING_PID = re.compile(r"-(\d+)-[0-9a-f]{8}(\.tmp-[0-9a-f]{8})?$")  # see _staging_name, FeaturePartWriter


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(cache: Path) -> None:
    """Tidy up after writers that died (call with the lock held, so no writer is mid-swap).

    Staging entries of dead processes are deleted (live ones may be parts still being
    written). A trash entry whose target is missing is a swap interrupted between its two
    renames: it is renamed back. Any other trash entry is deleted.
    """
    staging = cache / L.STAGING
    if staging.is_dir():
        for entry in staging.iterdir():
            match = _STAGING_PID.search(entry.name)
            if match is None or not _pid_alive(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
    trash = cache / L.TRASH
    if trash.is_dir():
        for entry in trash.iterdir():
            label = entry.name.rsplit("-", 2)[0]
            target = cache / L.UTTERANCES if label == L.UTTERANCES else cache / L.FEATURES / label
            if not target.exists() and (entry / "zarr.json").is_file():
                os.rename(entry, target)
            else:
                shutil.rmtree(entry, ignore_errors=True)


def _check_writable(path: Path) -> None:
    """Refuse to write into a cache of a schema version this code does not know."""
    if is_cache(path):
        read_root_attrs(path)


def is_cache(path: str | os.PathLike) -> bool:
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return L.ROOT_ATTR in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def create_cache(path: str | os.PathLike, table: UtteranceTable) -> None:
    """Create a cache holding `table`, or update the table of an existing cache.

    Updating keeps existing rows where they are and appends new utterances; an existing
    id whose text or labels changed is refused, naming the ids (see `write_utterances`).
    """
    path = require_local(path, "writing a cache")
    if path.exists() and any(path.iterdir()) and not is_cache(path):
        raise NotACacheError(f"{path}: exists and is not an emofuse cache; refusing to write into it")
    _check_writable(path)
    with cache_lock(path):
        _remove_stale(path)
        if not is_cache(path):
            root = zarr.open_group(str(path), mode="a")
            root.attrs[L.ROOT_ATTR] = {
                "schema_version": L.SCHEMA_VERSION,
                "schema_minor": L.SCHEMA_MINOR,
                "producer_version": L.producer_version(),
                "created": _now(),
                "updated": _now(),
            }
            root.require_group(L.FEATURES)
        _write_utterances_locked(path, table)


def write_utterances(path: str | os.PathLike, table: UtteranceTable) -> None:
    path = require_local(path, "writing a cache")
    _check_writable(Path(path))
    with cache_lock(path):
        _write_utterances_locked(Path(path), table)


def merged_table(old: UtteranceTable, new: UtteranceTable) -> UtteranceTable:
    """Old rows in their order, then utterances only `new` has. Conflicts raise CacheError."""
    if old.label_names != new.label_names and len(old) and len(new):
        raise CacheError(f"label names differ: cache has {old.label_names}, new table has {new.label_names}")
    old_index = {uid: i for i, uid in enumerate(old.ids)}
    conflicts = []
    checked = ("text", "label", "split", "labels_multi", "sentiment")
    for j, uid in enumerate(new.ids):
        i = old_index.get(uid)
        if i is None:
            continue
        for col in checked:
            a, b = old.columns[col][i], new.columns[col][j]
            if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=np.asarray(a).dtype.kind == "f"):
                conflicts.append(f"{uid} ({col}: {a!r} != {b!r})")
                break
    if conflicts:
        shown = "; ".join(conflicts[:10]) + (f"; and {len(conflicts) - 10} more" if len(conflicts) > 10 else "")
        raise CacheError(f"utterance tables disagree for {len(conflicts)} id(s): {shown}")
    old = _refresh_media_columns(old, new, old_index)
    added = np.array([uid not in old_index for uid in new.ids], dtype=bool)
    if not added.any():
        return old
    extra = new.select(added)
    cols = {}
    for name in set(old.columns) | set(extra.columns):
        a, b = old.columns.get(name), extra.columns.get(name)
        if a is None or b is None:
            raise CacheError(f"cannot add utterances: column {name!r} exists in only one of the tables")
        cols[name] = np.concatenate([a, b])
    return UtteranceTable(cols, old.label_names or new.label_names, old.labels_multi_names or new.labels_multi_names)


# Where an utterance's media is (or why it is missing) describes the corpus on disk now, not
# the utterance: a clip added or moved since the cache was built updates these in place (the
# extraction workflow then re-extracts that row's shard). Other columns of existing rows never change.
MEDIA_COLUMNS = ("audio_path", "video_path", "media_missing_reason")


def _refresh_media_columns(old: UtteranceTable, new: UtteranceTable, old_index: dict) -> UtteranceTable:
    """`old` with MEDIA_COLUMNS of rows `new` also has taken from `new` (the same object if unchanged)."""
    names = [c for c in MEDIA_COLUMNS if c in old.columns and c in new.columns]
    if not names:
        return old
    cols = dict(old.columns)
    changed = False
    for name in names:
        column = np.array(old.columns[name], dtype=object, copy=True)
        for j, uid in enumerate(new.ids):
            i = old_index.get(uid)
            if i is not None and column[i] != new.columns[name][j]:
                column[i] = new.columns[name][j]
                changed = True
        cols[name] = column
    if not changed:
        return old
    return UtteranceTable(cols, old.label_names, old.labels_multi_names)


def _write_utterances_locked(path: Path, table: UtteranceTable) -> None:
    root = zarr.open_group(str(path), mode="a")
    if L.UTTERANCES in root:
        old = read_table(root[L.UTTERANCES])
        table = merged_table(old, table)
        if table is old:
            return  # nothing new: leave the files (and their mtimes) alone
    staging = path / L.STAGING / _staging_name(L.UTTERANCES)
    _write_table_group(zarr.open_group(str(staging), mode="w"), table)
    _swap_in(staging, path / L.UTTERANCES, path / L.TRASH)
    _touch_root(zarr.open_group(str(path), mode="a"))


class FeaturePartWriter:
    """Writes one job's per-utterance arrays into a part as they arrive, in bounded memory.

    Rows are absolute indices into the utterance table and must lie in [row_start, row_stop).
    They may arrive in any order (length-bucketed batches do that); values are stored in row
    order, so a row is held until every row before it has arrived (`put` or `fail`), then
    written with its neighbours in whole chunks of about `flush_bytes`. Memory held is the
    rows that arrived ahead of an earlier one plus one chunk: with batches bucketed inside
    windows of rows (extract.batching), one window. The part appears atomically (written
    beside its final path, then renamed at `close()`), so a killed job leaves no part and the
    workflow simply runs it again; `abort()` removes the unfinished one.
    """

    FLUSH_BYTES = 8 << 20  # one values chunk; big enough that a chunk write is a plain large write

    def __init__(self, path: str | os.PathLike, row_start: int, row_stop: int, dim: int, dtype: str = "float16",
                 flush_bytes: int | None = None):
        if dtype not in L.VALUE_DTYPES:
            raise CacheError(f"dtype must be one of {L.VALUE_DTYPES}, got {dtype!r}")
        self.path = Path(path)
        self.row_start, self.row_stop, self.dim, self.dtype = int(row_start), int(row_stop), int(dim), dtype
        self.failures: list[dict[str, Any]] = []
        n = self.row_stop - self.row_start
        self._lengths = np.zeros(n, dtype=np.int64)
        self._present = np.zeros(n, dtype=bool)
        self._arrived = np.zeros(n, dtype=bool)
        self._waiting: dict[int, np.ndarray] = {}  # arrived ahead of an earlier row (relative index)
        self._next = 0  # first relative row not yet handed to the chunk buffer
        self._buffer: list[np.ndarray] = []
        self._buffer_rows = 0
        self.held_bytes = 0  # bytes of values in memory now; peak_held_bytes: the most at once
        self.peak_held_bytes = 0
        itemsize = np.dtype(dtype).itemsize
        self._chunk_rows = max(1, int(flush_bytes or self.FLUSH_BYTES) // (self.dim * itemsize))
        self._tmp = self.path.with_name(self.path.name + f".tmp-{uuid.uuid4().hex[:8]}")
        self._group = zarr.open_group(str(self._tmp), mode="w")
        # Uncompressed: a part is read once by the merge, where decoding zstd cost 75-84% of the
        # merge's time (bench/cache_io.py); fp16 embeddings barely compress anyway.
        self._values = self._group.create_array(L.VALUES, shape=(0, self.dim), dtype=dtype, chunks=(self._chunk_rows, self.dim), compressors=None)
        self._written = 0  # value rows (frames) on disk

    def put(self, row: int, array: np.ndarray) -> None:
        self._check_row(row)
        array = np.asarray(array)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise CacheError(f"row {row}: expected a (T, {self.dim}) array, got shape {array.shape}")
        if array.shape[0] == 0:
            raise CacheError(f"row {row}: empty array; record a failure instead")
        if not np.isfinite(array).all():
            raise CacheError(f"row {row}: array has NaN or infinite values")
        with np.errstate(over="ignore"):
            stored = array.astype(self.dtype, copy=False)
        if not np.isfinite(stored).all():  # finite in float32, overflowed in float16
            raise CacheError(f"row {row}: values exceed the {self.dtype} range (max {np.finfo(self.dtype).max:g}); store as float32")
        i = self._arrive(row)
        if i in self._waiting:  # a second put replaces the first (not yet written)
            self.held_bytes -= self._waiting[i].nbytes
        self._waiting[i] = np.array(stored, copy=True) if stored is array else stored
        self._lengths[i], self._present[i] = stored.shape[0], True
        self._hold(stored.nbytes)
        self._advance()

    def fail(self, row: int, utterance_id: str, file: str, reason: str) -> None:
        self._check_row(row)
        i = self._arrive(row)
        dropped = self._waiting.pop(i, None)
        if dropped is not None:
            self.held_bytes -= dropped.nbytes
        self._lengths[i], self._present[i] = 0, False
        self.failures.append({"row": int(row), "utterance_id": str(utterance_id), "file": str(file or ""), "reason": str(reason)})
        self._advance()

    def _check_row(self, row: int) -> None:
        if not self.row_start <= row < self.row_stop:
            raise CacheError(f"row {row} outside this part's range [{self.row_start}, {self.row_stop})")

    def _arrive(self, row: int) -> int:
        i = row - self.row_start
        if i < self._next:
            raise CacheError(f"row {row} was already written to the part; each row is put or failed once")
        self._arrived[i] = True
        return i

    def _hold(self, nbytes: int) -> None:
        self.held_bytes += nbytes
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)

    def _advance(self, final: bool = False) -> None:
        """Move the rows that are now in order into the buffer; write its whole chunks."""
        n = len(self._arrived)
        while self._next < n and (final or self._arrived[self._next]):
            array = self._waiting.pop(self._next, None)
            if array is not None:
                self._buffer.append(array)
                self._buffer_rows += array.shape[0]
            self._next += 1
        if self._buffer_rows >= self._chunk_rows or (final and self._buffer_rows):
            block = np.concatenate(self._buffer, axis=0)
            keep = len(block) if final else len(block) // self._chunk_rows * self._chunk_rows
            self._values.resize((self._written + keep, self.dim))
            self._values[self._written : self._written + keep] = block[:keep]
            self._written += keep
            rest = block[keep:]  # less than one chunk: copied once more, so each value is copied O(1) times
            self._buffer = [rest] if len(rest) else []
            self._buffer_rows = len(rest)
            self.held_bytes -= block[:keep].nbytes

    def close(self, attrs: dict[str, Any] | None = None) -> Path:
        self._advance(final=True)  # rows never put nor failed are absent (present False)
        n = self.row_stop - self.row_start
        group = self._group
        group.create_array("lengths", shape=(n,), dtype="int64", chunks=(max(1, n),))[...] = self._lengths
        group.create_array(L.PRESENT, shape=(n,), dtype="bool", chunks=(max(1, n),))[...] = self._present
        group.attrs.update(
            {
                "row_start": self.row_start,
                "row_stop": self.row_stop,
                "dim": self.dim,
                "dtype": self.dtype,
                "failures": sorted(self.failures, key=lambda f: f["row"]),  # table order, however rows arrived
                "attrs": attrs or {},
            }
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            shutil.rmtree(self.path)
        os.rename(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Remove the unfinished part (a failed job); the final path is never touched."""
        shutil.rmtree(self._tmp, ignore_errors=True)


class _ShardAlignedAppender:
    """Appends rows to a sharded array, writing whole shards so no shard is rewritten.

    Rows are copied once, into a reused shard-sized buffer that is written when full: the
    merge is linear in the data (concatenating the leftover rows on every flush, as before
    1.2, copied them O(parts) times).
    """

    def __init__(self, array: zarr.Array, shard_rows: int, folder: Path | None = None):
        self.array, self.shard_rows = array, shard_rows
        self.written = 0
        self._buffer = np.empty((min(shard_rows, max(1, array.shape[0])), array.shape[1]), dtype=array.dtype)
        self._filled = 0
        # Uncompressed sets are written shard by shard without zarr's per-chunk encode path
        # (direct.write_shard: the same bytes); compressed ones through zarr.
        self._direct = DirectValues.eligible(folder) if folder is not None else None

    def append(self, rows: np.ndarray) -> None:
        pos = 0
        while pos < len(rows):
            take = min(len(rows) - pos, len(self._buffer) - self._filled)
            self._buffer[self._filled : self._filled + take] = rows[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == len(self._buffer):
                self._flush()

    def _flush(self) -> None:
        if self._direct is not None:
            write_shard(self._direct, self.written // self.shard_rows, self._buffer[: self._filled])
        else:
            self.array[self.written : self.written + self._filled] = self._buffer[: self._filled]
        self.written += self._filled
        self._filled = 0

    def finish(self) -> None:
        if self._filled:
            self._flush()
        if self.written != self.array.shape[0]:
            raise CacheError(f"merge wrote {self.written} rows, expected {self.array.shape[0]}")


def _create_values(
    group: zarr.Group, total_rows: int, dim: int, dtype: str, compression: str | None, minor: int = L.SCHEMA_MINOR
) -> tuple[zarr.Array, int]:
    inner, shard = L.chunk_rows(dim, dtype, minor)
    shard = max(inner, min(shard, -(-max(total_rows, 1) // inner) * inner))  # no shard larger than the data
    # Every inner chunk carries a CRC32C, so a flipped bit is an error rather than a new value;
    # NaN as the fill value makes a missing shard file visible instead of reading as zeros.
    compressors: list = [zarr.codecs.Crc32cCodec()]
    if compression == "zstd":
        compressors.insert(0, zarr.codecs.ZstdCodec(level=1))
    elif compression not in (None, "none"):
        raise CacheError(f"unknown compression {compression!r} (use 'none' or 'zstd')")
    arr = group.create_array(
        L.VALUES,
        shape=(total_rows, dim),
        dtype=dtype,
        chunks=(inner, dim),
        shards=(shard, dim),
        compressors=compressors,
        fill_value=np.nan,
    )
    return arr, shard


def values_layout_is_current(values: zarr.Array) -> bool:
    """Whether a feature set's `values` has the inner chunking this version writes."""
    inner, _ = L.chunk_rows(int(values.shape[1]), str(values.dtype))
    return getattr(values, "shards", None) is not None and int(values.chunks[0]) == inner


def _write_failures(group: zarr.Group, failures: Sequence[dict[str, Any]]) -> None:
    fg = group.create_group(L.FAILURES)
    n = len(failures)
    fg.create_array("row", shape=(n,), dtype="int64", chunks=(max(1, n),))[...] = np.array(
        [f["row"] for f in failures], dtype=np.int64
    )
    for col in L.FAILURE_COLUMNS[1:]:
        _string_array(fg, col, np.array([f[col] for f in failures], dtype=object))


def merge_parts(
    cache: str | os.PathLike,
    name: str,
    parts: Iterable[str | os.PathLike],
    attrs: dict[str, Any],
    compression: str | None = None,
    layout_minor: int = L.SCHEMA_MINOR,
) -> None:
    """Combine job parts covering every utterance into `features/<name>`, atomically.

    `attrs` is the provenance (see layout.FEATURE_ATTR_KEYS); `dim`/`dtype` come from the
    parts. Replaces an existing feature set of that name; never touches other sets.
    `layout_minor` writes the values chunking of an older layout (tests and benchmarks of
    `fuse cache upgrade`; see layout.chunk_rows).
    """
    cache = require_local(cache, "writing a cache")
    if not L.FEATURE_NAME_RE.match(name):
        raise CacheError(f"invalid feature-set name {name!r}")
    if not is_cache(cache):
        raise NotACacheError(f"{cache}: not an emofuse cache (create it with the utterance table first)")
    _check_writable(cache)
    groups = sorted((zarr.open_group(str(p), mode="r") for p in parts), key=lambda g: g.attrs["row_start"])
    n = int(zarr.open_group(str(cache / L.UTTERANCES), mode="r").attrs["n"])
    _check_coverage(groups, n, name)
    if not groups:
        raise CacheError(f"feature set {name!r}: no parts to merge")
    dims = {int(g.attrs["dim"]) for g in groups}
    dtypes = {g.attrs["dtype"] for g in groups}
    if len(dims) != 1 or len(dtypes) != 1:
        raise CacheError(f"feature set {name!r}: parts disagree on dim/dtype: {sorted(dims)} / {sorted(dtypes)}")
    dim, dtype = dims.pop(), dtypes.pop()
    lengths = np.concatenate([g["lengths"][...] for g in groups])
    present = np.concatenate([g[L.PRESENT][...] for g in groups])
    failures = [f for g in groups for f in g.attrs["failures"]]
    meta = {k: attrs.get(k) for k in L.FEATURE_ATTR_KEYS}
    meta.update({k: v for k, v in attrs.items() if k not in meta})
    meta.update(
        {
            "dim": dim,
            "dtype": dtype,
            "code_version": attrs.get("code_version") or L.producer_version(),
            "created": _now(),
            "n_present": int(present.sum()),
            "n_failures": len(failures),
            "compression": compression or "none",
        }
    )

    def part_rows() -> Iterator[np.ndarray]:
        for g in groups:
            values = g[L.VALUES]
            step = max(1, int(values.chunks[0]))  # one part chunk at a time: bounded memory
            for lo in range(0, values.shape[0], step):
                yield values[lo : lo + step]

    with cache_lock(cache):
        _remove_stale(cache)
        _write_feature_set_locked(
            cache, name, part_rows(), lengths_to_offsets(lengths), present, failures, meta, dim, dtype, compression, layout_minor
        )


def _write_feature_set_locked(
    cache: Path,
    name: str,
    rows: Iterable[np.ndarray],
    offsets: np.ndarray,
    present: np.ndarray,
    failures: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    dim: int,
    dtype: str,
    compression: str | None,
    layout_minor: int = L.SCHEMA_MINOR,
) -> None:
    """Stream `rows` (in order) into a staging group and swap it in as `features/<name>`.

    Call with the cache lock held. A failure leaves the existing set as it was and removes
    the staging group.
    """
    staging = cache / L.STAGING / _staging_name(name)
    try:
        group = zarr.open_group(str(staging), mode="w")
        values, shard_rows = _create_values(group, int(offsets[-1]), dim, dtype, compression, layout_minor)
        appender = _ShardAlignedAppender(values, shard_rows, staging / L.VALUES)
        for block in rows:
            appender.append(block)
        appender.finish()
        group.create_array(L.OFFSETS, shape=offsets.shape, dtype="int64", chunks=(max(1, min(len(offsets), 1 << 20)),))[
            ...
        ] = offsets
        n = len(present)
        group.create_array(L.PRESENT, shape=present.shape, dtype="bool", chunks=(max(1, min(n, 1 << 20)),))[...] = present
        _write_failures(group, failures)
        group.attrs.update(meta)
        (cache / L.FEATURES).mkdir(exist_ok=True)
        _swap_in(staging, cache / L.FEATURES / name, cache / L.TRASH)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful swap
    _touch_root(zarr.open_group(str(cache), mode="a"))


def _check_coverage(groups: list[zarr.Group], n: int, name: str) -> None:
    expected = 0
    for g in groups:
        start, stop = int(g.attrs["row_start"]), int(g.attrs["row_stop"])
        if start != expected:
            kind = "overlap" if start < expected else "gap"
            raise CacheError(f"feature set {name!r}: parts {kind} at row {min(start, expected)} (part starts at {start})")
        expected = stop
    if expected != n:
        raise CacheError(f"feature set {name!r}: parts cover rows 0..{expected} but the cache has {n} utterances")


def write_feature_set(
    cache: str | os.PathLike,
    name: str,
    arrays: Sequence[np.ndarray | None],
    attrs: dict[str, Any],
    dim: int | None = None,
    dtype: str = "float16",
    failures: Sequence[dict[str, Any]] = (),
    compression: str | None = None,
) -> None:
    """Write a whole feature set in one call (one array or None per utterance, in table order)."""
    cache = require_local(cache, "writing a cache")
    if dim is None:
        first = next((a for a in arrays if a is not None), None)
        if first is None:
            raise CacheError(f"feature set {name!r}: every utterance is missing; pass dim explicitly")
        dim = int(np.asarray(first).reshape(len(first), -1).shape[1])
    _check_writable(cache)
    part_path = cache / L.STAGING / _staging_name(f"part-{name}")
    writer = FeaturePartWriter(part_path, 0, len(arrays), dim, dtype)
    for row, arr in enumerate(arrays):
        if arr is not None:
            writer.put(row, arr)
    for f in failures:
        writer.fail(f["row"], f["utterance_id"], f.get("file", ""), f["reason"])
    writer.close()
    try:
        merge_parts(cache, name, [part_path], attrs, compression=compression)
    finally:
        shutil.rmtree(part_path, ignore_errors=True)


def delete_feature_set(cache: str | os.PathLike, name: str) -> None:
    cache = require_local(cache, "writing a cache")
    _check_writable(cache)
    with cache_lock(cache):
        target = cache / L.FEATURES / name
        if not target.exists():
            raise CacheError(f"{cache}: no feature set {name!r}")
        trash = cache / L.TRASH / _staging_name(name)
        trash.parent.mkdir(exist_ok=True)
        os.rename(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
        _touch_root(zarr.open_group(str(cache), mode="a"))
