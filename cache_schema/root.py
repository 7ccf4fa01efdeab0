"""Reading the root attributes: what makes a folder an emofuse cache, and of which version."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import layout as L
from .errors import NotACacheError, SchemaVersionError


def read_root_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The cache's root attributes, with clear errors for non-caches and unknown versions."""
    path = Path(path)
    meta_file = path / "zarr.json"
    if not path.exists():
        raise NotACacheError(f"{path}: no such cache (path does not exist)")
    if not meta_file.is_file():
        raise NotACacheError(f"{path}: not an emofuse cache (no zarr.json; is this the right path?)")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as exc:
        raise NotACacheError(f"{path}: zarr.json is not valid JSON ({exc})") from None
    attrs = meta.get("attributes", {}).get(L.ROOT_ATTR)
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
