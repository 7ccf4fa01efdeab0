"""`validate(path)`: check the whole contract and report every problem at once.

Shallow checks read only metadata and the small per-utterance arrays (offsets, present,
the utterance table), so validating a 10 GB cache takes a moment. `deep=True` also scans
every value for NaN/inf, shard by shard.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import layout as L
from .errors import CacheError, CacheValidationError
from .fingerprint import compute_fingerprint
from .reader import Cache, FeatureSet
from .table import REQUIRED_COLUMNS


def validate(path: str | os.PathLike, deep: bool = False) -> Cache:
    """Return the opened cache, or raise CacheValidationError listing every problem.

    A path that is not a cache, or a cache of an unknown schema version, raises
    NotACacheError / SchemaVersionError straight away (nothing else can be checked).
    """
    cache = Cache(path)  # raises the one-line errors for non-caches and versions
    problems: list[str] = []
    try:
        n = _check_table(cache, problems)
    except Exception as exc:  # an unreadable file is a problem to list, not a crash
        problems.append(f"utterances: cannot be read ({type(exc).__name__}: {exc})")
        n = None
    for name in cache.feature_names():
        try:
            _check_feature_set(cache[name], n, problems, deep)
        except Exception as exc:
            problems.append(f"feature set {name!r}: cannot be read ({exc})")
    if problems:
        raise CacheValidationError(str(cache.path), problems)  # a folder, or the URL as given
    return cache


def _check_table(cache: Cache, problems: list[str]) -> int | None:
    root = cache.root
    if L.UTTERANCES not in root:
        problems.append("no utterances/ group")
        return None
    group = root[L.UTTERANCES]
    attrs = dict(group.attrs)
    n = attrs.get("n")
    if not isinstance(n, int):
        problems.append(f"utterances: attribute n is {n!r}, expected an integer")
        return None
    present = set(group.array_keys())
    for col in REQUIRED_COLUMNS:
        if col not in present:
            problems.append(f"utterances: missing column {col!r}")
    for col in sorted(present):
        length = group[col].shape[0]
        if length != n:
            problems.append(f"utterances/{col}: length {length} != n ({n})")
    if "id" in present and group["id"].shape[0] == n:
        ids = group["id"][...]
        uniq, counts = np.unique(np.asarray(ids, dtype=object).astype(str), return_counts=True)
        if (counts > 1).any():
            problems.append(f"utterances/id: duplicate ids {uniq[counts > 1][:10].tolist()}")
        if n and (np.asarray(ids, dtype=object) == "").any():
            problems.append("utterances/id: empty id")
    label_names = attrs.get("label_names", [])
    if "label" in present and group["label"].shape[0] == n and n:
        labels = group["label"][...]
        bad = (labels < -1) | (labels >= len(label_names))
        if bad.any():
            problems.append(
                f"utterances/label: {int(bad.sum())} value(s) outside -1..{len(label_names) - 1} "
                f"(label_names has {len(label_names)}), first at row {int(np.argmax(bad))}"
            )
    if "labels_multi" in present:
        shape = group["labels_multi"].shape
        names = attrs.get("labels_multi_names", [])
        if len(shape) != 2 or shape[1] != len(names):
            problems.append(f"utterances/labels_multi: shape {shape} does not match labels_multi_names ({len(names)})")
    return n


def _check_feature_set(fs: FeatureSet, n: int | None, problems: list[str], deep: bool) -> None:
    where = f"feature set {fs.name!r}"
    attrs: dict[str, Any] = fs.attrs
    missing = [k for k in L.FEATURE_ATTR_KEYS if k not in attrs]
    if missing:
        problems.append(f"{where}: attributes missing {missing}")
    _check_fingerprint(attrs, where, problems)
    for arr in (L.VALUES, L.OFFSETS, L.PRESENT):
        if arr not in fs.group:
            problems.append(f"{where}: missing array {arr!r}")
            return
    if fs.values.ndim != 2:
        problems.append(f"{where}: values has {fs.values.ndim} dimensions, expected 2")
        return
    if attrs.get("dim") != fs.dim:
        problems.append(f"{where}: values has dim {fs.dim} but attributes say {attrs.get('dim')}")
    if fs.dtype not in L.VALUE_DTYPES:
        problems.append(f"{where}: values dtype {fs.dtype} not one of {L.VALUE_DTYPES}")
    if attrs.get("dtype") != fs.dtype:
        problems.append(f"{where}: values dtype {fs.dtype} but attributes say {attrs.get('dtype')}")
    offsets = fs.offsets
    if n is not None and offsets.shape != (n + 1,):
        problems.append(
            f"{where}: offsets has {offsets.shape[0]} entries, expected {n + 1} (utterances + 1)"
            + ("; the utterance table grew since it was extracted: re-run extraction" if offsets.shape[0] < n + 1 else "")
        )
    if offsets.dtype != np.int64:
        problems.append(f"{where}: offsets dtype {offsets.dtype}, expected int64")
    if len(offsets):
        if offsets[0] != 0:
            problems.append(f"{where}: offsets start at {offsets[0]}, expected 0")
        steps = np.diff(offsets)
        if (steps < 0).any():
            first = int(np.argmax(steps < 0))
            problems.append(f"{where}: offsets decrease at utterance {first} ({offsets[first]} -> {offsets[first + 1]})")
        if offsets[-1] != fs.values.shape[0]:
            problems.append(f"{where}: offsets end at {offsets[-1]} but values has {fs.values.shape[0]} rows")
    present = fs.present
    if present.dtype != bool:
        problems.append(f"{where}: present dtype {present.dtype}, expected bool")
    if present.shape != (len(offsets) - 1,):
        problems.append(f"{where}: present has {present.shape[0]} entries, offsets describe {len(offsets) - 1} utterances")
    elif len(offsets) > 1:
        lengths = np.diff(offsets)
        absent_with_rows = (~present) & (lengths != 0)
        if absent_with_rows.any():
            problems.append(f"{where}: {int(absent_with_rows.sum())} utterance(s) marked absent have rows, first at {int(np.argmax(absent_with_rows))}")
        present_empty = present & (lengths == 0)
        if present_empty.any():
            problems.append(f"{where}: {int(present_empty.sum())} utterance(s) marked present have no rows, first at {int(np.argmax(present_empty))}")
    if L.FAILURES in fs.group:
        fg = fs.group[L.FAILURES]
        lens = {c: fg[c].shape[0] for c in L.FAILURE_COLUMNS if c in fg}
        if len(lens) != len(L.FAILURE_COLUMNS) or len(set(lens.values())) > 1:
            problems.append(f"{where}: failures columns inconsistent: {lens}")
    _check_shard_files(fs, problems)
    if deep and not problems:
        _scan_values(fs, problems)


def _check_fingerprint(attrs: dict[str, Any], where: str, problems: list[str]) -> None:
    """Schema 1.1: a fingerprint, when present, must be the hash of its parameters."""
    fingerprint, params = attrs.get("fingerprint"), attrs.get("fingerprint_params")
    if fingerprint is None and params is None:
        return  # written before 1.1 (or without a fingerprint): unknown, not wrong
    if not isinstance(fingerprint, str) or not isinstance(params, dict):
        problems.append(f"{where}: fingerprint {fingerprint!r} / fingerprint_params of type {type(params).__name__}: need a string and an object")
        return
    try:
        expected = compute_fingerprint(params)
    except ValueError as exc:  # NaN/inf in the parameters
        problems.append(f"{where}: fingerprint_params cannot be hashed ({exc})")
        return
    if fingerprint != expected:
        problems.append(f"{where}: fingerprint {fingerprint} is not the hash of fingerprint_params ({expected}); the attributes were edited")


def _check_shard_files(fs: FeatureSet, problems: list[str]) -> None:
    """Every shard holding rows must exist on disk: a missing one would read as fill values."""
    rows = fs.values.shape[0]
    if rows == 0:
        return
    folder = fs.directory / L.VALUES / "c"
    for k in range(-(-rows // fs.shard_rows)):
        shard = folder / str(k) / "0"
        if not shard.is_file() or shard.stat().st_size == 0:
            problems.append(f"feature set {fs.name!r}: values shard file {shard} is missing or empty (rows {k * fs.shard_rows}..)")


def _scan_values(fs: FeatureSet, problems: list[str]) -> None:
    step = fs.shard_rows
    for lo in range(0, fs.values.shape[0], step):
        block = fs.block_rows(lo, lo + step)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            row = lo + int(np.argmax(bad))
            utt = int(np.searchsorted(fs.offsets, row, side="right")) - 1
            problems.append(f"feature set {fs.name!r}: non-finite values at row {row} (utterance {utt})")
            return


def check_feature_sets(cache: Cache, names: list[str]) -> list[FeatureSet]:
    """Open the named sets, raising one CacheError that lists all missing names."""
    missing = [n for n in names if n not in cache]
    if missing:
        raise CacheError(
            f"{cache.path}: feature set(s) {', '.join(map(repr, missing))} not in cache (available: {', '.join(cache.feature_names()) or 'none'})"
        )
    return [cache[n] for n in names]
