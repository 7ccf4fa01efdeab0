"""Provenance: the feature sets a run was trained on, and the check that a cache still has them.

A checkpoint records the cache schema version and, per feature set, the attributes that
decide what its numbers mean (checkpoint, revision, weights_sha256, dim, encoder_kind) and
the set's provenance fingerprint with the parameters it hashes (cache schema 1.1: every
encoder parameter after defaults, decoding and sampling settings, code version, the
utterances and their media identities; cache_schema/LAYOUT.md). Evaluating, predicting,
explaining or resuming with a cache whose feature set differs is refused, naming the feature
set and each differing parameter (`layers: [-1] -> [-2]`): a model trained on one layer's
features must never silently score another's.

* The utterance part of the fingerprint is compared only on the run's own cache (another
  cache, e.g. another corpus extracted the same way, naturally holds other utterances).
* A fingerprint unknown on either side (a cache written before schema 1.1) is not a refusal;
  the attribute check above still applies.
* `allow_changed=True` (`--allow-changed-features`) accepts differences other than the
  dimension; they are returned, and recorded in what the command writes.
"""
from __future__ import annotations

from typing import Any

from cache_schema import Cache, diff_params
from cache_schema.store import identity as cache_identity  # a resolved path, or the URL
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
    sets = {}
    for modality, name in feature_sets.items():
        fs = cache[name]
        sets[name] = {
            "modality": modality,
            **_attributes(cache, name),
            "fingerprint": fs.fingerprint,
            "fingerprint_params": to_jsonable(fs.fingerprint_params),
        }
    return {"schema_version": cache.schema_version, "cache": cache_identity(cache.path), "feature_sets": sets}


def check_provenance(saved: dict[str, Any], cache: Cache, allow_changed: bool = False) -> list[str]:
    """Raise ProvenanceMismatch naming the differing feature set and parameters.

    With `allow_changed`, return the differences instead (dimension changes still raise).
    """
    if int(saved["schema_version"]) != cache.schema_version:
        raise ProvenanceMismatch(
            f"{cache.path}: cache schema version {cache.schema_version} differs from the run's ({saved['schema_version']})"
        )
    own_cache = saved.get("cache") == cache_identity(cache.path)
    accepted = []
    for name, expected in saved["feature_sets"].items():
        if name not in cache:
            raise ProvenanceMismatch(
                f"{cache.path}: no feature set {name!r}, which the run was trained on (available: {', '.join(cache.feature_names()) or 'none'})"
            )
        actual = _attributes(cache, name)
        if actual["dim"] != expected.get("dim"):
            raise ProvenanceMismatch(f"{cache.path}: feature set {name!r} has dim {actual['dim']}, the run was trained with {expected.get('dim')!r}")
        diffs = [f"{f}: {expected.get(f)!r} -> {actual[f]!r}" for f in PROVENANCE_FIELDS if actual[f] != expected.get(f)]
        diffs += _fingerprint_differences(expected, cache[name], own_cache)
        if not diffs:
            continue
        if not allow_changed:
            raise ProvenanceMismatch(
                f"{cache.path}: feature set {name!r} differs from the one the run was trained on: " + "; ".join(diffs)
                + " (re-extract it as it was, or pass --allow-changed-features if you mean to use it)"
            )
        accepted += [f"{name}: {d}" for d in diffs]
    return accepted


def _fingerprint_differences(expected: dict[str, Any], fs, own_cache: bool) -> list[str]:
    if not expected.get("fingerprint") or fs.fingerprint is None or expected["fingerprint"] == fs.fingerprint:
        return []
    before, after = dict(expected.get("fingerprint_params") or {}), dict(fs.fingerprint_params or {})
    if not own_cache:
        before.pop("utterances", None), after.pop("utterances", None)
    return diff_params(before, after)
