"""JSON for stage 2: one way to make values JSON-safe and one atomic write.

Run folders, sweep records and ablation results are read by people and by later commands;
a file half-written by a killed process must never be read back, so every write goes to a
temporary file that replaces the target in one rename.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def to_jsonable(value: Any) -> Any:
    """`value` with numpy scalars/arrays as JSON types, tuples as lists, anything else as str."""
    return json.loads(json.dumps(value, default=_default))


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write `payload` as indented JSON atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_default))
    tmp.replace(path)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())
