"""The utterance table: one row per utterance, shared by every feature set in a cache.

Corpus adapters build an `UtteranceTable` from records; the writer stores its columns as
1-D arrays under `utterances/` (see LAYOUT.md). Row order is the cache's order: feature-set
offsets index into it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from .errors import CacheError

# Required columns with their numpy kind and the value used when a record omits them.
STRING_COLUMNS = ("id", "split", "dataset", "dialogue_id", "speaker", "text")
REQUIRED_COLUMNS = STRING_COLUMNS + ("turn", "start", "end", "label", "labels_multi", "sentiment")
NO_LABEL = -1


@dataclass
class UtteranceTable:
    """Columns of equal length N; `label` holds indices into `label_names` (-1 = absent).

    `labels_multi` is (N, C) float32 intensities for `labels_multi_names` (NaN = absent).
    Every column not in REQUIRED_COLUMNS is a free metadata column (string or numeric),
    e.g. `audio_path`, `video_path`, `season`.
    """

    columns: dict[str, np.ndarray]
    label_names: list[str] = field(default_factory=list)
    labels_multi_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in self.columns]
        if missing:
            raise CacheError(f"utterance table is missing columns: {', '.join(missing)}")
        n = len(self.columns["id"])
        bad = {k: len(v) for k, v in self.columns.items() if len(v) != n}
        if bad:
            raise CacheError(f"utterance table columns differ in length from id ({n}): {bad}")
        ids = self.columns["id"]
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dupes = uniq[counts > 1][:10].tolist()
            raise CacheError(f"duplicate utterance ids: {dupes}")
        if self.columns["labels_multi"].ndim != 2 or self.columns["labels_multi"].shape[1] != len(
            self.labels_multi_names
        ):
            raise CacheError(
                f"labels_multi has shape {self.columns['labels_multi'].shape}, expected (N, {len(self.labels_multi_names)})"
            )
        labels = self.columns["label"]
        if len(labels) and (labels.max(initial=NO_LABEL) >= len(self.label_names) or labels.min(initial=0) < NO_LABEL):
            raise CacheError(f"label indices outside 0..{len(self.label_names) - 1} (and -1 for absent)")

    def __len__(self) -> int:
        return len(self.columns["id"])

    @property
    def ids(self) -> np.ndarray:
        return self.columns["id"]

    @property
    def metadata_columns(self) -> list[str]:
        return [c for c in self.columns if c not in REQUIRED_COLUMNS]

    def select(self, rows: np.ndarray | slice) -> "UtteranceTable":
        return UtteranceTable({k: v[rows] for k, v in self.columns.items()}, list(self.label_names), list(self.labels_multi_names))

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        label_names: Iterable[str] = (),
        labels_multi_names: Iterable[str] = (),
    ) -> "UtteranceTable":
        """Build a table from dicts. `label` may be a class name, an index or None.

        Keys beyond the required columns become metadata columns; a metadata column is
        numeric (float64) when every value is a number or None, else string ("" for None).
        """
        records = list(records)
        label_names = list(label_names)
        labels_multi_names = list(labels_multi_names)
        label_index = {name: i for i, name in enumerate(label_names)}
        n = len(records)
        cols: dict[str, np.ndarray] = {}
        for name in STRING_COLUMNS:
            cols[name] = np.array([_str(r.get(name)) for r in records], dtype=object)
        if n and any(not s for s in cols["id"]):
            raise CacheError("every utterance needs a non-empty id")
        cols["turn"] = np.array([_int(r.get("turn"), -1) for r in records], dtype=np.int32)
        cols["start"] = np.array([_float(r.get("start")) for r in records], dtype=np.float64)
        cols["end"] = np.array([_float(r.get("end")) for r in records], dtype=np.float64)
        cols["sentiment"] = np.array([_float(r.get("sentiment")) for r in records], dtype=np.float32)
        labels = np.full(n, NO_LABEL, dtype=np.int32)
        for i, r in enumerate(records):
            lab = r.get("label")
            if lab is None or (isinstance(lab, float) and math.isnan(lab)) or lab == "":
                continue
            if isinstance(lab, str):
                if lab not in label_index:
                    raise CacheError(f"utterance {r.get('id')!r}: label {lab!r} is not one of {label_names}")
                labels[i] = label_index[lab]
            else:
                if not 0 <= int(lab) < len(label_names):
                    raise CacheError(f"utterance {r.get('id')!r}: label index {lab} outside 0..{len(label_names) - 1}")
                labels[i] = int(lab)
        cols["label"] = labels
        multi = np.full((n, len(labels_multi_names)), np.nan, dtype=np.float32)
        for i, r in enumerate(records):
            vals = r.get("labels_multi")
            if vals is not None:
                if len(vals) != len(labels_multi_names):
                    raise CacheError(
                        f"utterance {r.get('id')!r}: labels_multi has {len(vals)} values, expected {len(labels_multi_names)}"
                    )
                multi[i] = np.asarray(vals, dtype=np.float32)
        cols["labels_multi"] = multi
        extra_keys: list[str] = []
        for r in records:
            extra_keys.extend(k for k in r if k not in REQUIRED_COLUMNS and k not in extra_keys)
        for key in extra_keys:
            values = [r.get(key) for r in records]
            if all(v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool)) for v in values):
                cols[key] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            else:
                cols[key] = np.array([_str(v) for v in values], dtype=object)
        return cls(cols, label_names, labels_multi_names)


def _str(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


def _int(v: Any, default: int) -> int:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return default
    return int(v)


def _float(v: Any) -> float:
    if v is None or v == "":
        return math.nan
    return float(v)
