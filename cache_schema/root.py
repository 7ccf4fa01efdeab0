"""Reading the root attributes: what makes a folder an emofuse cache, and of which version."""
from __future__ import annotations

import json
import os
from typing import Any

from . import layout as L
from .errors import NotACacheError, SchemaVersionError
from .store import cache_path, is_url


def read_root_attrs(path: str | os.PathLike | Any) -> dict[str, Any]:
    """The cache's root attributes, with clear errors for non-caches and unknown versions.

    `path` is a local folder or a URL (see cache_schema.store)."""
    path = cache_path(path)
    if is_url(path):
        return _check_attrs(path, _remote_root_meta(path))
    meta_file = path / "zarr.json"
    if not path.exists():
        raise NotACacheError(f"{path}: no such cache (path does not exist)")
    if not meta_file.is_file():
        raise NotACacheError(f"{path}: not an emofuse cache (no zarr.json; is this the right path?)")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as exc:
        raise NotACacheError(f"{path}: zarr.json is not valid JSON ({exc})") from None
    return _check_attrs(path, meta)


def _remote_root_meta(path) -> dict[str, Any]:
    """The root zarr.json of a remote cache: one GET (object stores have no folders to test)."""
    try:
        text = (path / "zarr.json").read_text()
    except FileNotFoundError:
        raise NotACacheError(f"{path}: no such cache (no zarr.json at this URL; is this the right path?)") from None
    except Exception as exc:  # unreachable endpoint, missing credentials, access denied: say which
        raise NotACacheError(f"{path}: cannot read the cache ({type(exc).__name__}: {exc})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise NotACacheError(f"{path}: zarr.json is not valid JSON ({exc})") from None


def _check_attrs(path, meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):  # valid JSON, but not a metadata object (e.g. a damaged file reading `0`)
        raise NotACacheError(f"{path}: zarr.json is not a Zarr metadata object (found {type(meta).__name__})")
    attributes = meta.get("attributes", {})
    attrs = attributes.get(L.ROOT_ATTR) if isinstance(attributes, dict) else None
    if not isinstance(attrs, dict):
        raise NotACacheError(f"{path}: a Zarr group but not an emofuse cache (no '{L.ROOT_ATTR}' attribute)")
    version = attrs.get("schema_version")
    if not isinstance(version, int):
        raise NotACacheError(f"{path}: schema_version {version!r} is not an integer")
    if version not in L.KNOWN_SCHEMA_VERSIONS:
        newer = version > max(L.KNOWN_SCHEMA_VERSIONS)
        hint = "upgrade emofuse to read it" if newer else "it predates this emofuse"
        raise SchemaVersionError(
            f"{path}: cache schema version {version} is not supported (this emofuse reads {list(L.KNOWN_SCHEMA_VERSIONS)}); {hint}"
        )
    return attrs
