"""Moving a finished cache between a local folder and object storage (`fuse cache push/pull`).

Caches are written locally (writing needs POSIX renames and locks) and read from anywhere,
so the only remote write is a whole-cache copy, done with fsspec's `put`/`get`:

* **push** validates the local cache, uploads every file except the root `zarr.json`, then
  the root `zarr.json` last: an interrupted push leaves a prefix that no reader takes for a
  cache. It then validates the remote copy and compares it with the source.
* **pull** validates the remote cache, downloads into a hidden staging folder beside the
  destination, validates that copy and compares it, then renames it into place (one rename
  when the destination is new; with `force`, the old cache is renamed aside first, then
  removed).

"Compares" means: the same files with the same sizes, the same utterance count, the same
feature sets and the same provenance fingerprints. Neither side is replaced without `force`,
and `force` replaces only an emofuse cache, never another folder or prefix.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import CacheError, NotACacheError
from .reader import Cache
from .root import read_root_attrs
from .store import cache_path, is_url, require_local
from .validate import validate

ROOT_META = "zarr.json"


@dataclass
class TransferReport:
    source: str
    destination: str
    files: int
    bytes: int
    n_utterances: int
    feature_sets: dict[str, str | None]  # name -> fingerprint (None: unknown, schema < 1.1)


def _local_files(folder: Path) -> dict[str, int]:
    """Relative POSIX path -> size of every file of a cache, leaving out what no reader reads
    (`.staging`, `.trash`, the lock file: any name starting with a dot)."""
    files = {}
    for file in folder.rglob("*"):
        rel = file.relative_to(folder)
        if file.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = file.stat().st_size
    return files


def _remote_files(path) -> dict[str, int]:
    root = path.path.rstrip("/")
    listing = path.fs.find(root, detail=True)
    return {name[len(root) + 1 :]: int(info["size"]) for name, info in listing.items() if info.get("type") != "directory"}


def _summary(cache: Cache) -> tuple[int, dict[str, str | None]]:
    return cache.n_utterances, {name: fs.fingerprint for name, fs in cache.feature_sets().items()}


def _compare(source: Cache, source_files: dict[str, int], copy: Cache, copy_files: dict[str, int]) -> None:
    problems = []
    missing = sorted(set(source_files) - set(copy_files))
    if missing:
        problems.append(f"{len(missing)} file(s) missing, first {missing[0]}")
    resized = sorted(f for f in set(source_files) & set(copy_files) if source_files[f] != copy_files[f])
    if resized:
        problems.append(f"{len(resized)} file(s) of another size, first {resized[0]} ({source_files[resized[0]]} -> {copy_files[resized[0]]} bytes)")
    if _summary(source) != _summary(copy):
        problems.append(f"utterances/fingerprints {_summary(source)} -> {_summary(copy)}")
    if problems:
        raise CacheError(f"{copy.path}: the copy of {source.path} differs: " + "; ".join(problems))


@contextlib.contextmanager
def _talking_to(url) -> Iterator[None]:
    """Name the URL in any failure of the object store (unreachable, credentials, denied)."""
    try:
        yield
    except CacheError:
        raise
    except Exception as exc:
        raise CacheError(f"{url}: {type(exc).__name__}: {exc}") from exc


def _is_emofuse_cache(path) -> bool:
    try:
        read_root_attrs(path)
    except NotACacheError:
        return False
    return True


def push(local: str | os.PathLike, url: str, force: bool = False, storage_options: Mapping[str, Any] | None = None) -> TransferReport:
    """Copy the finished cache at `local` to `url` (e.g. `s3://bucket/feats.zarr`)."""
    folder = require_local(local, "pushing from it")
    if not is_url(url):
        raise CacheError(f"{url}: push copies to a URL (s3://, gs://, memory://, ...); for a local copy use cp -r")
    source = validate(folder)
    files = _local_files(folder)
    target = cache_path(url, storage_options)
    with _talking_to(url):
        fs, root = target.fs, target.path.rstrip("/")
        if fs.exists(root):
            if not force:
                raise CacheError(f"{url}: already exists; refusing to overwrite it (--force replaces an existing cache)")
            if not _is_emofuse_cache(target):
                raise CacheError(f"{url}: exists and is not an emofuse cache; refusing to replace it, even with --force")
            fs.rm(root, recursive=True)
        later = [f for f in files if f != ROOT_META]
        fs.put([str(folder / f) for f in later], [f"{root}/{f}" for f in later])
        fs.put([str(folder / ROOT_META)], [f"{root}/{ROOT_META}"])  # last: the prefix is a cache only once complete
        fs.invalidate_cache(root)
        copy = validate(target)
        _compare(source, files, copy, _remote_files(target))
    n, sets = _summary(copy)
    return TransferReport(str(folder), str(target), len(files), sum(files.values()), n, sets)


def pull(url: str, local: str | os.PathLike, force: bool = False, storage_options: Mapping[str, Any] | None = None) -> TransferReport:
    """Copy the cache at `url` into the local folder `local`, swapping it in when complete."""
    if not is_url(url):
        raise CacheError(f"{url}: pull copies from a URL (s3://, gs://, memory://, ...); for a local copy use cp -r")
    dest = require_local(local, "pulling into it")
    if dest.exists() or dest.is_symlink():
        if not force:
            raise CacheError(f"{dest}: already exists; refusing to overwrite it (--force replaces an existing cache)")
        if not _is_emofuse_cache(dest):
            raise CacheError(f"{dest}: exists and is not an emofuse cache; refusing to replace it, even with --force")
    if not dest.parent.is_dir():
        raise CacheError(f"{dest}: folder {dest.parent} does not exist")
    remote_path = cache_path(url, storage_options)
    source = validate(remote_path)
    with _talking_to(url):
        files = _remote_files(remote_path)
    root = remote_path.path.rstrip("/")
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pull-", dir=dest.parent))
    try:
        names = sorted(files)
        for parent in {str(Path(f).parent) for f in names}:
            (staging / parent).mkdir(parents=True, exist_ok=True)
        with _talking_to(url):
            remote_path.fs.get([f"{root}/{f}" for f in names], [str(staging / f) for f in names])
        copy = validate(staging)
        _compare(source, files, copy, _local_files(staging))
        del copy  # its handles name the staging folder
        _swap_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    n, sets = _summary(Cache(dest))
    return TransferReport(str(remote_path), str(dest), len(files), sum(files.values()), n, sets)


def _swap_into_place(staging: Path, dest: Path) -> None:
    if not (dest.exists() or dest.is_symlink()):
        os.rename(staging, dest)  # atomic; fails rather than merge if dest appeared meanwhile
        return
    aside = dest.parent / f".{dest.name}.replaced-{uuid.uuid4().hex[:8]}"
    os.rename(dest, aside)
    try:
        os.rename(staging, dest)
    except BaseException:
        os.rename(aside, dest)  # put the old cache back
        raise
    shutil.rmtree(aside) if aside.is_dir() and not aside.is_symlink() else aside.unlink()
