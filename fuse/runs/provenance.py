"""Provenance: the feature sets a run was trained on, and the check that a cache still has them.

A checkpoint records the cache schema version and, per feature set, the attributes that
decide what its numbers mean (checkpoint, revision, weights_sha256, dim, encoder_kind).
Evaluating, predicting or resuming with a cache whose feature set differs in any of them is
refused, naming the feature set and the field: a model trained on BERT-base features must
never silently score BERT-large ones.
"""
from __future__ import annotations

from typing import Any

from cache_schema import Cache
from fuse.jsonio import to_jsonable
from fuse.runs.folders import RunError

PROVENANCE_FIELDS = ("checkpoint", "revision", "weights_sha256", "dim", "encoder_kind")


class ProvenanceMismatch(RunError):
    """The cache's feature sets are not the ones the run was trained on."""


def _attributes(cache: Cache, name: str) -> dict[str, Any]:
    fs = cache[name]
    actual = {f: to_jsonable(fs.attrs.get(f)) for f in PROVENANCE_FIELDS}
    actual["dim"] = int(fs.dim)
    return actual


def provenance(cache: Cache, feature_sets: dict[str, str]) -> dict[str, Any]:
    """What the run must find again in any cache it is used with."""
    sets = {name: {"modality": modality, **_attributes(cache, name)} for modality, name in feature_sets.items()}
    return {"schema_version": cache.schema_version, "feature_sets": sets}


def check_provenance(saved: dict[str, Any], cache: Cache) -> None:
    """Raise ProvenanceMismatch naming the first differing feature set and field(s)."""
    if int(saved["schema_version"]) != cache.schema_version:
        raise ProvenanceMismatch(
            f"{cache.path}: cache schema version {cache.schema_version} differs from the run's ({saved['schema_version']})"
        )
    for name, expected in saved["feature_sets"].items():
        if name not in cache:
            raise ProvenanceMismatch(
                f"{cache.path}: no feature set {name!r}, which the run was trained on (available: {', '.join(cache.feature_names()) or 'none'})"
            )
        actual = _attributes(cache, name)
        diffs = [f"{f} is {actual[f]!r}, the run was trained with {expected[f]!r}" for f in PROVENANCE_FIELDS if actual[f] != expected.get(f)]
        if diffs:
            raise ProvenanceMismatch(f"{cache.path}: feature set {name!r} differs from the run's: " + "; ".join(diffs))
