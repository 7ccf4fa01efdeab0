"""Per-utterance metadata as model inputs (`Batch.metadata_categorical` / `metadata_numeric`).

Categorical columns (strings) get a vocabulary from the training rows, 1..V, with 0 for
unknown/empty values; numeric columns are standardised with training mean/std, missing values
become 0 (the mean). Default: `speaker`, when that column is non-empty.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fuse.batch import MetadataSpec
from fuse.data.spec import DataError


@dataclass
class MetadataEncoding:
    """Vocabularies and statistics of the chosen metadata columns, fit on training rows."""

    categorical: dict[str, list[str]] = field(default_factory=dict)  # column -> values (index i+1)
    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)  # column -> (mean, std)

    @classmethod
    def fit(cls, columns: dict[str, np.ndarray], train_rows: np.ndarray, names: list[str]) -> "MetadataEncoding":
        enc = cls()
        for name in names:
            if name not in columns:
                raise DataError(f"no metadata column {name!r} in the utterance table (columns: {', '.join(sorted(columns))})")
            column = columns[name]
            if column.dtype == object or column.dtype.kind in "UST":
                values = np.asarray(column[train_rows], dtype=object).astype(str)
                enc.categorical[name] = sorted({v for v in values if v != ""})
            elif column.ndim == 1 and column.dtype.kind in "iuf":
                values = column[train_rows].astype(np.float64)
                values = values[np.isfinite(values)]
                mean = float(values.mean()) if len(values) else 0.0
                std = float(values.std()) if len(values) else 1.0
                enc.numeric[name] = (mean, std if std > 1e-12 else 1.0)
            else:
                raise DataError(f"metadata column {name!r} has shape {column.shape} / dtype {column.dtype}; only 1-D columns can be used")
        return enc

    def encode(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(N, n_cat) int64 codes (0 = unknown) and (N, n_num) float32, for every row."""
        n = len(columns["id"])
        categorical = None
        if self.categorical:
            categorical = np.zeros((n, len(self.categorical)), dtype=np.int64)
            for j, (name, vocab) in enumerate(self.categorical.items()):
                index = {v: i + 1 for i, v in enumerate(vocab)}
                categorical[:, j] = [index.get(v, 0) for v in np.asarray(columns[name], dtype=object).astype(str)]
        numeric = None
        if self.numeric:
            numeric = np.zeros((n, len(self.numeric)), dtype=np.float32)
            for j, (name, (mean, std)) in enumerate(self.numeric.items()):
                values = (columns[name].astype(np.float64) - mean) / std
                numeric[:, j] = np.where(np.isfinite(values), values, 0.0)
        return categorical, numeric

    def spec(self) -> MetadataSpec | None:
        if not self.categorical and not self.numeric:
            return None
        return MetadataSpec(tuple((name, len(vocab)) for name, vocab in self.categorical.items()), len(self.numeric))

    def state(self) -> dict[str, Any]:
        return {"categorical": self.categorical, "numeric": {k: list(v) for k, v in self.numeric.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "MetadataEncoding":
        return cls(dict(state["categorical"]), {k: (float(v[0]), float(v[1])) for k, v in state["numeric"].items()})


def default_metadata_columns(columns: dict[str, np.ndarray]) -> list[str]:
    speaker = np.asarray(columns["speaker"], dtype=object).astype(str)
    return ["speaker"] if (speaker != "").any() else []
