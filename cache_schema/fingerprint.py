"""Provenance fingerprints of feature sets (schema 1.1).

A feature set written by stage 1 carries two attributes:

* ``fingerprint_params``: a JSON object of everything that determines its values (see
  LAYOUT.md, "Fingerprint"), written by the extraction workflow (extract/fingerprint.py);
* ``fingerprint``: ``"sha256:" + sha256(canonical JSON of fingerprint_params)``, canonical JSON
  being ``json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``.

Stage 2 records the fingerprint a run was trained on and compares it with the cache's;
:func:`diff_params` names what differs. Both functions are pure (no I/O).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

FINGERPRINT_PREFIX = "sha256:"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def compute_fingerprint(params: dict) -> str:
    """``"sha256:<64 hex>"`` over the canonical JSON of ``params``."""
    return FINGERPRINT_PREFIX + hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False) if not isinstance(value, str) else value


_ABSENT = object()


def diff_params(expected: dict | None, actual: dict | None) -> list[str]:
    """Human-readable differences between two ``fingerprint_params`` objects, one line each.

    Nested objects are walked and named with dotted keys; any other value (lists included) is
    compared whole: ``["encoder.layers: [-1] -> [-2]", "dtype: float16 -> float32",
    "encoder.max_length: (absent) -> 128"]``. Sorted by key; ``[]`` when equal. ``None`` for
    either side (a feature set written before schema 1.1) gives one line saying so.
    """
    if expected is None or actual is None:
        if expected is None and actual is None:
            return ["fingerprint parameters unknown on both sides (written before cache schema 1.1)"]
        side = "expected" if expected is None else "actual"
        return [f"fingerprint parameters unknown ({side} side written before cache schema 1.1)"]
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key, _ABSENT), b.get(key, _ABSENT), f"{prefix}.{key}" if prefix else str(key))
            return
        if a is _ABSENT and b is _ABSENT:
            return
        if a is _ABSENT or b is _ABSENT or canonical_json(a) != canonical_json(b):  # as hashed: 1 and 1.0 differ
            left = "(absent)" if a is _ABSENT else _show(a)
            right = "(absent)" if b is _ABSENT else _show(b)
            out.append(f"{prefix or '(top level)'}: {left} -> {right}")

    walk(expected, actual, "")
    return out
