"""Where a cache lives: a local folder, or any fsspec URL (read-only).

Every reader opens a cache through `cache_path` and `zarr_store`, so the rest of the code
sees one path-like object either way: a `pathlib.Path` for a local folder, a
`upath.UPath` (pathlib's API over fsspec) for `s3://`, `gs://`, `https://`, `memory://`,
... URLs. A `file://` URL is a local folder.

Remote caches are read-only: writing (extraction, merge, upgrade) needs POSIX semantics
(renames, locks) that object stores lack, so writers call `require_local` and a finished
cache is moved with `fuse cache push/pull` (cache_schema/transfer.py).

Connection settings are fsspec's own (nothing of ours to learn):

* credentials from the backend's standard sources (S3: `AWS_ACCESS_KEY_ID`,
  `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, ~/.aws; GCS: `GOOGLE_APPLICATION_CREDENTIALS`);
* per-protocol defaults from `FSSPEC_<PROTOCOL>_<KWARG>` environment variables or
  ~/.config/fsspec/*.json (e.g. `FSSPEC_S3_ENDPOINT_URL=http://localhost:9000`), read by
  fsspec when it is imported;
* `--storage-option KEY=VALUE` on the `fuse` commands, which `configure` adds to
  `fsspec.config.conf` for the URL's protocol (so every filesystem the process creates for
  that protocol, zarr's included, uses it).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from .errors import CacheError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

CachePath = Any  # pathlib.Path (local) or upath.UPath (remote)


def is_url(where: str | os.PathLike | Any) -> bool:
    """True for a remote location (`s3://...`, `memory://...`); False for local paths and file://."""
    if isinstance(where, Path):
        return False
    text = str(where)
    return bool(_URL.match(text)) and not text.lower().startswith("file://")


def _local(where: str | os.PathLike) -> Path:
    text = os.fspath(where) if not isinstance(where, str) else where
    return Path(text[len("file://") :]) if text.lower().startswith("file://") else Path(text)


def cache_path(where: str | os.PathLike | Any, storage_options: Mapping[str, Any] | None = None) -> CachePath:
    """`where` as a path-like object: Path for a local folder, UPath for a URL."""
    if not is_url(where):
        if storage_options:
            raise CacheError(f"{where}: storage options given for a local path (they apply to URLs only)")
        return _local(where)
    from upath import UPath

    if isinstance(where, UPath) and not storage_options:
        return where
    return UPath(str(where).rstrip("/"), **dict(storage_options or {}))


def zarr_store(path: CachePath, read_only: bool = True):
    """What `zarr.open_group` opens: the folder name for a local path, a read-only
    `zarr.storage.FsspecStore` for a remote one (zarr 3 wraps non-async fsspec backends)."""
    if not is_url(path):
        return str(path)
    if not read_only:
        raise CacheError(f"{path}: caches on object storage are read-only")
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(str(path), storage_options=dict(path.storage_options), read_only=True)


def identity(path: str | os.PathLike | Any) -> str:
    """What names a cache in run records: the resolved absolute path, or the URL as given."""
    return str(path).rstrip("/") if is_url(path) else os.path.realpath(_local(path))


def absolute(where: str) -> str:
    """The form of a cache location saved in options: absolute path, or the URL unchanged."""
    return str(where).rstrip("/") if is_url(where) else str(_local(where).resolve())


def require_local(where: str | os.PathLike | Any, action: str = "writing") -> Path:
    """Refuse a URL where a POSIX folder is needed (writers call this first)."""
    if is_url(where):
        raise CacheError(
            f"{where}: {action} needs a local folder; caches on object storage are read-only "
            "(write it locally, then `fuse cache push LOCAL URL`)"
        )
    return _local(where)


def parse_storage_options(pairs: Mapping[str, Any]) -> dict[str, Any]:
    """KEY=VALUE pairs as fsspec kwargs; `client_kwargs.region_name=x` style keys nest."""
    options: dict[str, Any] = {}
    for key, value in pairs.items():
        target = options
        *parents, leaf = str(key).split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return options


def configure(url: str, options: Mapping[str, Any]) -> None:
    """Make `options` the process-wide fsspec defaults for `url`'s protocol."""
    if not options:
        return
    if not is_url(url):
        raise CacheError(f"{url}: --storage-option applies to a URL cache (s3://, gs://, ...), not a local path")
    import fsspec.config

    protocol = str(url).split("://", 1)[0].lower()
    current = fsspec.config.conf.setdefault(protocol, {})
    for key, value in options.items():
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            current[key] = {**current[key], **value}
        else:
            current[key] = value
