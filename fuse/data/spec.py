"""What a run fixes about its data (`DataSpec`), the data layer's error, and the block size.

A `DataSpec` is saved in every checkpoint, so a trained run reads any cache exactly as it
was trained: the same feature sets, classes, frame limits, normalisation mode, metadata
columns, dialogue window and streaming blocks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cache_schema import FeatureSet

DEFAULT_MAX_LEN = {"text": 512, "audio": 1500, "video": 1500}
DEFAULT_BLOCK_MB = 16.0  # streaming block size
DEFAULT_POOL_BLOCKS = 4  # blocks shuffled together
TASKS = ("single_label", "multi_label")


class DataError(ValueError):
    """A problem with the data a user asked for; the message is meant to be shown as is."""


@dataclass
class DataSpec:
    """Everything about the data a run fixes at training time (saved with the run)."""

    feature_sets: dict[str, str]  # modality -> feature set
    task: str
    class_names: list[str]
    max_len: dict[str, int]
    normalisation: str = "global"
    metadata: list[str] = field(default_factory=list)
    context_turns: int = 0  # preceding turns in Batch.context; 0: no context
    context_future_turns: int | None = None  # following turns ("<modality>_future"); None: = context_turns
    block_mb: float = DEFAULT_BLOCK_MB
    pool_blocks: int = DEFAULT_POOL_BLOCKS
    block_rows: int | None = None  # overrides block_mb (tests use tiny blocks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        return cls(**d)

    @property
    def n_future_turns(self) -> int:
        """Following turns in Batch.context (0 without context)."""
        if self.context_turns <= 0:
            return 0
        return int(self.context_turns if self.context_future_turns is None else self.context_future_turns)


def primary_feature_set(sets: dict[str, FeatureSet]) -> FeatureSet:
    """The feature set with the most bytes: streaming blocks are cut along its rows."""
    return max(sets.values(), key=lambda fs: fs.values.shape[0] * fs.dim * np.dtype(fs.dtype).itemsize)


def rows_per_block(spec: DataSpec, sets: dict[str, FeatureSet]) -> int:
    """Frames of the primary feature set per streaming block: `block_rows`, else ~`block_mb` MB.

    Never more than one shard, the unit the cache stores (and reads) at once.
    """
    if spec.block_rows:
        return int(spec.block_rows)
    primary = primary_feature_set(sets)
    row_bytes = primary.dim * np.dtype(primary.dtype).itemsize
    return int(max(1, min(primary.shard_rows, spec.block_mb * 2**20 // row_bytes)))
